/**
 * `strata mount` against the kernel's own read-only loop mount of the same ext4 image (the
 * Debian tree of the other benches) and against libguestfs's `guestmount` (its appliance
 * boots under TCG here): time until the mount answers, a cold read of 100 MB of files
 * (the image's regular files in walk order until 100 MiB, `cat` to `wc -c` right after the
 * mount), `find /` over the whole tree, and `tar c /usr | wc -c`. Each run mounts afresh
 * (Strata's block cache and the kernel's FUSE caches start empty). The host's page cache is
 * the same for both sides before each mount: BENCH_CACHE=drop (the default) drops it (`sync;
 * echo 3 > /proc/sys/vm/drop_caches`: the image is read from the disk by both, a cold read),
 * BENCH_CACHE=warm reads the whole image file first (both read the image from memory). Best of
 * BENCH_RUNS (default 3) for Strata and the kernel; guestmount runs once (BENCH_GUESTMOUNT=0
 * leaves it out; BENCH_PEER_TIMEOUT seconds, default 1200, bounds it). Prints one JSON line
 * per metric {metric, strataMs, kernelMs, ratio = strata / kernel, guestmountMs,
 * ratioGuestmount = strata / guestmount}.
 *
 * An optional third side, the floor of a FUSE file system on this kernel: BENCH_PASSTHROUGH
 * names one or more of libfuse's example servers (`;` between them, each `BINARY [ARGS]`; built
 * by scripts/build-fuse-passthrough.sh) that serve a fresh read-only kernel loop mount of the
 * same image, mounted each run (ready counts the loop mount too). passthrough_hp runs as
 * `BINARY --foreground ARGS LOWER MNT` (its defaults: 86400 s timeouts, kept page cache and
 * directory listings, splice, multi-threaded; `--single` for one thread), passthrough_ll as
 * `BINARY -f -o source=LOWER,cache=always,ro ARGS MNT` (`-s` for one thread), anything else as
 * `BINARY ARGS LOWER MNT`, in the foreground; ready is when MNT is a fuse mount and answers.
 * Each metric's line then holds `passthrough`: per server {server, ms, ratioKernel = ms /
 * kernel, strataOverIt = strata / ms, serverCpuMs, clientCpuMs}. serverCpuMs (Strata's too,
 * strataServerCpuMs) is the server process's user + system CPU over the step (every thread;
 * /proc/PID/stat; for ready, all it used until then); clientCpuMs (strataClientCpuMs,
 * kernelClientCpuMs) the walking tools' (bash, find or tar or cat, wc), their system calls and so
 * the kernel's own FUSE or ext4 work for them included. CPU moves less with the load than wall.
 *
 *   npm run bench:mount
 *   BENCH_IMAGE=/path/to/root.ext4 BENCH_RUNS=5 npm run bench:mount
 *   BENCH_PASSTHROUGH='.cache/fuse-passthrough/passthrough_hp;.cache/fuse-passthrough/passthrough_hp --single' npm run bench:mount
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { benchBaseImage, benchChildEnv, CLI, childCpuMs, ROOT } from './common.js';

const DIR = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const PEER_TIMEOUT = Number(process.env.BENCH_PEER_TIMEOUT ?? 1200);
const COLD_BYTES = 100 << 20;
const CACHE = process.env.BENCH_CACHE ?? 'drop';
if (CACHE !== 'drop' && CACHE !== 'warm') throw new Error(`BENCH_CACHE is drop or warm, not ${CACHE}`);

/** The image's pages: none in the page cache (drop) or all of them (warm), before each side mounts. */
function settleCache(image: string): void {
  if (CACHE === 'drop') timed('sync; echo 3 > /proc/sys/vm/drop_caches');
  else timed(`cat '${image}' > /dev/null`);
}
const log = (m: string) => process.stderr.write(`bench:mount: ${m}\n`);

function timed(script: string): { ms: number; out: string } {
  const t = process.hrtime.bigint();
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', script], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`${script} failed (${r.status}): ${r.stderr}`);
  return { ms, out: r.stdout.trim() };
}

const METRICS = ['ready', 'cold', 'find', 'tar'] as const;
type Metric = (typeof METRICS)[number];

interface Side extends Record<Metric, number> {
  coldBytes: string;
  entries: string;
  tarBytes: string;
  /** The server process's CPU ms over each step (Strata and passthrough servers; none for the kernel). */
  cpu?: Record<Metric, number>;
  /** The walking tools' CPU ms over each step (find, tar, cat ... with the kernel's work in their system calls); ready has none. */
  client: Record<Metric, number>;
}

/** User + system CPU ms of a process, every thread (/proc/PID/stat), or NaN once it is gone. */
function processCpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // fields 14 and 15, in USER_HZ (100)
  } catch {
    return Number.NaN;
  }
}

/** The cold-read list: regular files (paths relative to the root) in walk order until COLD_BYTES. */
let coldList = '';

/**
 * Mount with `start` (resolves when ready), measure, unmount with `stop`. `server` gives the
 * serving process's pid, if any, for its CPU per step.
 */
async function measure(
  mnt: string,
  start: () => Promise<void>,
  stop: () => Promise<void>,
  server?: () => number | undefined,
): Promise<Side> {
  const t = process.hrtime.bigint();
  await start();
  // ready = the root answers
  timed(`stat ${mnt}/ > /dev/null`);
  const ready = Number(process.hrtime.bigint() - t) / 1e6;
  const pid = server?.();
  let cpuAt = processCpuMs(pid);
  const cpu = { ready: cpuAt } as Record<Metric, number>;
  const client = { ready: Number.NaN } as Record<Metric, number>;
  const step = (m: Metric, script: string) => {
    const c0 = childCpuMs();
    const r = timed(script);
    client[m] = childCpuMs() - c0;
    const now = processCpuMs(pid);
    cpu[m] = now - cpuAt;
    cpuAt = now;
    return r;
  };
  try {
    const cold = step('cold', `cd ${mnt} && xargs -d '\\n' -a ${coldList} cat | wc -c`);
    const find = step('find', `find ${mnt}/ | wc -l`);
    const tar = step('tar', `tar c -C ${mnt} usr | wc -c`);
    return {
      ready,
      cold: cold.ms,
      find: find.ms,
      tar: tar.ms,
      coldBytes: cold.out,
      entries: find.out,
      tarBytes: tar.out,
      client,
      ...(pid === undefined ? {} : { cpu }),
    };
  } finally {
    await stop();
  }
}

function strataSide(image: string, mnt: string): Promise<Side> {
  let child: ReturnType<typeof spawn> | undefined;
  let exited: Promise<void> = Promise.resolve();
  return measure(
    mnt,
    () =>
      new Promise((resolve, reject) => {
        child = spawn(process.execPath, [CLI, 'mount', image, mnt], { stdio: ['ignore', 'pipe', 'inherit'] });
        exited = new Promise((r) => child?.on('close', () => r()));
        let out = '';
        child.stdout?.on('data', (d) => {
          out += d;
          if (out.includes('mounted ')) resolve();
        });
        child.on('close', (c) => reject(new Error(`strata mount exited ${c}`)));
      }),
    async () => {
      child?.kill('SIGTERM');
      await exited;
    },
    () => child?.pid,
  );
}

/** The command line of a libfuse example server (BENCH_PASSTHROUGH's entry) serving `lower` at `mnt`, in the foreground. */
function passthroughArgs(entry: string, lower: string, mnt: string): { bin: string; args: string[] } {
  const [bin, ...extra] = entry.split(/\s+/);
  const base = path.basename(bin);
  if (base.startsWith('passthrough_hp')) return { bin, args: ['--foreground', ...extra, lower, mnt] };
  if (base.startsWith('passthrough_ll'))
    return { bin, args: ['-f', '-o', `source=${lower},cache=always,ro`, ...extra, mnt] };
  return { bin, args: [...extra, lower, mnt] };
}

/** A BENCH_PASSTHROUGH entry as the JSON names it: the binary's file name and its arguments. */
function serverLabel(entry: string): string {
  const [bin, ...extra] = entry.split(/\s+/);
  return [path.basename(bin), ...extra].join(' ');
}

/** True once `mnt` is a FUSE mount (/proc/self/mountinfo: its file system type). */
function fuseMounted(mnt: string): boolean {
  const at = realpathSync(mnt);
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (f[4] === at && dash > 0 && f[dash + 1]?.startsWith('fuse')) return true;
  }
  return false;
}

/**
 * A libfuse example server over a fresh read-only kernel loop mount of the image at `lower`
 * (mounted here: ready includes it), the server in the foreground as our child.
 */
function passthroughSide(entry: string, image: string, lower: string, mnt: string): Promise<Side> {
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let loop = false;
  const stop = async () => {
    if (fuseMounted(mnt)) timed(`umount ${mnt} || umount -l ${mnt}`);
    // libfuse's loop ends when its mount goes; a server that lingers is ended
    const t = setTimeout(() => child?.kill('SIGTERM'), 5000);
    await exited;
    clearTimeout(t);
    if (loop) timed(`umount ${lower}`);
    loop = false;
  };
  return measure(
    mnt,
    async () => {
      timed(`mount -o ro,loop,noload '${image}' ${lower}`);
      loop = true;
      const { bin, args } = passthroughArgs(entry, lower, mnt);
      child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'inherit'] });
      let gone: string | undefined;
      exited = new Promise((r) =>
        child?.on('close', (c) => {
          gone = `${entry} exited ${c}`;
          r();
        }),
      );
      child.on('error', (e) => {
        gone = `${entry}: ${e.message}`;
      });
      const t0 = Date.now();
      try {
        while (!fuseMounted(mnt)) {
          if (gone) throw new Error(gone);
          if (Date.now() - t0 > 30_000) throw new Error(`${entry} did not mount within 30 s`);
          await new Promise((r) => setTimeout(r, 1));
        }
      } catch (e) {
        await stop();
        throw e;
      }
    },
    stop,
    () => child?.pid,
  );
}

function kernelSide(image: string, mnt: string): Promise<Side> {
  return measure(
    mnt,
    async () => {
      timed(`mount -o ro,loop,noload '${image}' ${mnt}`);
    },
    async () => {
      timed(`umount ${mnt}`);
    },
  );
}

/** guestmount (libguestfs's appliance, TCG here) of the image's only file system, read-only. */
function guestmountSide(image: string, mnt: string): Promise<Side> {
  return measure(
    mnt,
    async () => {
      timed(`timeout ${PEER_TIMEOUT} guestmount -a '${image}' -m /dev/sda --ro ${mnt}`);
    },
    async () => {
      timed(`guestunmount ${mnt} || umount -l ${mnt}`);
    },
  );
}

/** The cold-read list from a kernel mount of the image (written once to a temporary file). */
function makeColdList(image: string, mnt: string, file: string): void {
  timed(`mount -o ro,loop,noload '${image}' ${mnt}`);
  try {
    const out = timed(`cd ${mnt} && find . -xdev -type f -printf '%s %P\\n'`).out;
    const picked: string[] = [];
    let total = 0;
    for (const line of out.split('\n')) {
      const sp = line.indexOf(' ');
      if (sp < 0) continue;
      picked.push(line.slice(sp + 1));
      total += Number(line.slice(0, sp));
      if (total >= COLD_BYTES) break;
    }
    if (total < COLD_BYTES) log(`the image holds only ${total} bytes of files: the cold read takes them all`);
    writeFileSync(file, `${picked.join('\n')}\n`);
  } finally {
    timed(`umount ${mnt}`);
  }
}

const cpuOf = (ms: number) => (Number.isNaN(ms) ? null : Math.round(ms));

/** The best (least) of two runs of one side, metric by metric (CPU too). */
function better(b: Side | undefined, s: Side): Side {
  if (!b) return s;
  const out: Side = { ...b };
  for (const m of METRICS) {
    out[m] = Math.min(b[m], s[m]);
    if (out.cpu && s.cpu) out.cpu = { ...out.cpu, [m]: Math.min(out.cpu[m], s.cpu[m]) };
    out.client = { ...out.client, [m]: Math.min(out.client[m], s.client[m]) };
  }
  return out;
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  const image = process.env.BENCH_IMAGE ?? benchBaseImage(DIR, log);
  const passthroughs = (process.env.BENCH_PASSTHROUGH ?? '')
    .split(';')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  for (const e of passthroughs) {
    const bin = e.split(/\s+/)[0];
    if (!existsSync(bin))
      throw new Error(`BENCH_PASSTHROUGH: ${bin} is missing (scripts/build-fuse-passthrough.sh builds it)`);
  }
  mkdirSync(tmpdir(), { recursive: true });
  const mnt = mkdtempSync(path.join(tmpdir(), 'strata-bench-mount-'));
  const lower = passthroughs.length > 0 ? mkdtempSync(path.join(tmpdir(), 'strata-bench-lower-')) : '';
  coldList = path.join(path.dirname(mnt), `${path.basename(mnt)}.cold-list`);
  const best = new Map<string, Side>();
  const sides = ['strata', 'kernel', ...passthroughs];
  const load0 = loadavg()[0];
  let guest: Side | undefined;
  let guestError: string | undefined;
  try {
    makeColdList(image, mnt, coldList);
    for (let i = 0; i < RUNS; i++) {
      // each run starts with the next side: who goes first rotates
      for (let j = 0; j < sides.length; j++) {
        const k = sides[(i + j) % sides.length];
        settleCache(image);
        const side =
          k === 'strata'
            ? await strataSide(image, mnt)
            : k === 'kernel'
              ? await kernelSide(image, mnt)
              : await passthroughSide(k, image, lower, mnt);
        best.set(k, better(best.get(k), side));
      }
    }
    if (process.env.BENCH_GUESTMOUNT !== '0') {
      if (!existsSync('/usr/bin/guestmount')) throw new Error('guestmount is missing (apt-get install guestmount)');
      log(`guestmount (its appliance under ${process.env.LIBGUESTFS_BACKEND_SETTINGS ?? 'the default backend'}) ...`);
      try {
        settleCache(image);
        guest = await guestmountSide(image, mnt);
      } catch (e) {
        guestError = (e as Error).message.slice(0, 300);
        log(`guestmount failed: ${guestError}`);
      }
    }
  } finally {
    rmdirSync(mnt);
    if (lower) rmdirSync(lower);
    rmSync(coldList, { force: true });
  }
  const s = best.get('strata') as Side;
  const k = best.get('kernel') as Side;
  if (s.entries !== k.entries || s.tarBytes !== k.tarBytes || s.coldBytes !== k.coldBytes) {
    throw new Error(
      `the two mounts differ: find ${s.entries} vs ${k.entries}, tar ${s.tarBytes} vs ${k.tarBytes}, cold read ${s.coldBytes} vs ${k.coldBytes}`,
    );
  }
  for (const p of passthroughs) {
    const x = best.get(p) as Side;
    if (x.entries !== k.entries || x.tarBytes !== k.tarBytes || x.coldBytes !== k.coldBytes) {
      throw new Error(
        `${p} differs from the kernel's mount: find ${x.entries} vs ${k.entries}, tar ${x.tarBytes} vs ${k.tarBytes}, cold read ${x.coldBytes} vs ${k.coldBytes}`,
      );
    }
  }
  if (guest && (guest.entries !== k.entries || guest.coldBytes !== k.coldBytes)) {
    guestError = `guestmount differs: find ${guest.entries} vs ${k.entries}, cold read ${guest.coldBytes} vs ${k.coldBytes}`;
  }
  const load1 = loadavg()[0];
  const g = guest;
  const names: Record<Metric, string> = {
    ready: 'mount-ready',
    cold: 'cold read 100 MB',
    find: 'find /',
    tar: 'tar c /usr | wc -c',
  };
  for (const m of METRICS) {
    const a = s[m];
    const b = k[m];
    const c = g?.[m];
    const pt = passthroughs.map((p) => {
      const x = best.get(p) as Side;
      return {
        server: serverLabel(p),
        ms: Math.round(x[m]),
        ratioKernel: Number((x[m] / b).toFixed(2)),
        strataOverIt: Number((a / x[m]).toFixed(2)),
        serverCpuMs: x.cpu ? Math.round(x.cpu[m]) : null,
        clientCpuMs: cpuOf(x.client[m]),
      };
    });
    process.stdout.write(
      `${JSON.stringify({
        metric: names[m],
        strataMs: Math.round(a),
        kernelMs: Math.round(b),
        ratio: Number((a / b).toFixed(2)),
        strataServerCpuMs: s.cpu ? Math.round(s.cpu[m]) : null,
        strataClientCpuMs: cpuOf(s.client[m]),
        kernelClientCpuMs: cpuOf(k.client[m]),
        ...(pt.length > 0 ? { passthrough: pt } : {}),
        guestmountMs: c === undefined ? null : Math.round(c),
        ratioGuestmount: c === undefined ? null : Number((a / c).toFixed(4)),
        ...(guestError ? { guestmountError: guestError } : {}),
        image: path.basename(image),
        entries: Number(s.entries),
        coldBytes: Number(s.coldBytes),
        tarBytes: Number(s.tarBytes),
        runs: RUNS,
        pageCache: CACHE,
        load0,
        load1,
        ...env,
      })}\n`,
    );
  }
}

main().catch((e) => {
  process.stderr.write(`bench:mount: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
