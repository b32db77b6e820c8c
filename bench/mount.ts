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
 *   npm run bench:mount
 *   BENCH_IMAGE=/path/to/root.ext4 BENCH_RUNS=5 npm run bench:mount
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { benchBaseImage, benchChildEnv, CLI, ROOT } from './common.js';

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

interface Side {
  ready: number;
  cold: number;
  find: number;
  tar: number;
  coldBytes: string;
  entries: string;
  tarBytes: string;
}

/** The cold-read list: regular files (paths relative to the root) in walk order until COLD_BYTES. */
let coldList = '';

/** Mount with `start` (resolves when ready), measure, unmount with `stop`. */
async function measure(mnt: string, start: () => Promise<void>, stop: () => Promise<void>): Promise<Side> {
  const t = process.hrtime.bigint();
  await start();
  // ready = the root answers
  timed(`stat ${mnt}/ > /dev/null`);
  const ready = Number(process.hrtime.bigint() - t) / 1e6;
  try {
    const cold = timed(`cd ${mnt} && xargs -d '\\n' -a ${coldList} cat | wc -c`);
    const find = timed(`find ${mnt}/ | wc -l`);
    const tar = timed(`tar c -C ${mnt} usr | wc -c`);
    return {
      ready,
      cold: cold.ms,
      find: find.ms,
      tar: tar.ms,
      coldBytes: cold.out,
      entries: find.out,
      tarBytes: tar.out,
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

async function main(): Promise<void> {
  const env = benchChildEnv();
  const image = process.env.BENCH_IMAGE ?? benchBaseImage(DIR, log);
  mkdirSync(tmpdir(), { recursive: true });
  const mnt = mkdtempSync(path.join(tmpdir(), 'strata-bench-mount-'));
  coldList = path.join(path.dirname(mnt), `${path.basename(mnt)}.cold-list`);
  const best: Record<'strata' | 'kernel', Side | undefined> = { strata: undefined, kernel: undefined };
  const keep = (k: 'strata' | 'kernel', s: Side) => {
    const b = best[k];
    best[k] = b
      ? {
          ...b,
          ready: Math.min(b.ready, s.ready),
          cold: Math.min(b.cold, s.cold),
          find: Math.min(b.find, s.find),
          tar: Math.min(b.tar, s.tar),
        }
      : s;
  };
  let guest: Side | undefined;
  let guestError: string | undefined;
  try {
    makeColdList(image, mnt, coldList);
    for (let i = 0; i < RUNS; i++) {
      // alternate who goes first
      const order: Array<'strata' | 'kernel'> = i % 2 === 0 ? ['strata', 'kernel'] : ['kernel', 'strata'];
      for (const k of order) {
        settleCache(image);
        keep(k, await (k === 'strata' ? strataSide(image, mnt) : kernelSide(image, mnt)));
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
    rmSync(coldList, { force: true });
  }
  const s = best.strata as Side;
  const k = best.kernel as Side;
  if (s.entries !== k.entries || s.tarBytes !== k.tarBytes || s.coldBytes !== k.coldBytes) {
    throw new Error(
      `the two mounts differ: find ${s.entries} vs ${k.entries}, tar ${s.tarBytes} vs ${k.tarBytes}, cold read ${s.coldBytes} vs ${k.coldBytes}`,
    );
  }
  if (guest && (guest.entries !== k.entries || guest.coldBytes !== k.coldBytes)) {
    guestError = `guestmount differs: find ${guest.entries} vs ${k.entries}, cold read ${guest.coldBytes} vs ${k.coldBytes}`;
  }
  const load1 = loadavg()[0];
  const g = guest;
  for (const [metric, a, b, c] of [
    ['mount-ready', s.ready, k.ready, g?.ready],
    ['cold read 100 MB', s.cold, k.cold, g?.cold],
    ['find /', s.find, k.find, g?.find],
    ['tar c /usr | wc -c', s.tar, k.tar, g?.tar],
  ] as Array<[string, number, number, number | undefined]>) {
    process.stdout.write(
      `${JSON.stringify({
        metric,
        strataMs: Math.round(a),
        kernelMs: Math.round(b),
        ratio: Number((a / b).toFixed(2)),
        guestmountMs: c === undefined ? null : Math.round(c),
        ratioGuestmount: c === undefined ? null : Number((a / c).toFixed(4)),
        ...(guestError ? { guestmountError: guestError } : {}),
        image: path.basename(image),
        entries: Number(s.entries),
        coldBytes: Number(s.coldBytes),
        tarBytes: Number(s.tarBytes),
        runs: RUNS,
        pageCache: CACHE,
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
