/**
 * Deploy (issue 16): time from "give me this machine" to a marker printed when a real Debian
 * reaches multi-user.target, booted by qemu-system-x86_64, for:
 *   (a) copy-then-boot: a full raw copy over HTTP (curl, what seed 001 measured) and
 *       `qemu-img convert` of the qcow2 over HTTP (qemu's curl driver: the best standard tool),
 *       then boot from the local disk;
 *   (b) `strata deploy` streaming: boot from its NBD export at once;
 *   (e) boot from a local copy (the floor).
 * (c) profile and (d) differential are not measured yet (see the closing note of issue 16).
 *
 * Image (cached in BENCH_DIR/deploy): Debian bookworm by debootstrap (minbase + linux-image-amd64,
 * systemd, systemd-sysv, udev), a unit that prints STRATA-MULTI-USER on ttyS0 when
 * multi-user.target is reached, ext4 root (mkfs.ext4 -d) in a GPT partition (sgdisk), 8 GiB
 * virtual (BENCH_DISK_GIB), sparse; its qcow2 (qemu-img convert). Not yet checked into a library:
 * the deploy streams the qcow2 by URL until a library over plain HTTP can be deployed from.
 * The kernel and initrd are read out of the image with `strata cat` and passed to -kernel/-initrd.
 *
 * Network: the images are served by a small range-capable HTTP server (this file, --serve) in a
 * network namespace behind a veth pair shaped with tc tbf to 1 Gbit/s in both directions (root
 * needed; no delay added). The deploy streams the qcow2 by URL (Strata's HTTP image reader):
 * the plain-HTTP library source is another engineer's work; until it lands, a library over HTTP
 * is not measured.
 *
 *   npm run bench:deploy                    # 3 runs of each
 *   npm run bench:deploy -- --quick         # 1 run of each
 *   BENCH_DISK_GIB=32 npm run bench:deploy  # the 32 GiB case
 *
 * Prints one JSON object: each scenario's times (s) to the marker, bytes fetched before the
 * marker and time to a complete TARGET for (b), and the ratios against (e) and (a).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import * as path from 'node:path';
import { bootQemu, chooseAccel } from '../test/helpers/qemu.js';
import { aptMirror, benchChildEnv, CLI, need, ROOT, sh } from './common.js';

const BENCH = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const DIR = path.join(BENCH, 'deploy');
const GIB = Number(process.env.BENCH_DISK_GIB ?? 8);
const QUICK = process.argv.includes('--quick');
const RUNS = Number(process.env.BENCH_RUNS ?? (QUICK ? 1 : 3));
const MARKER = 'STRATA-MULTI-USER';
const log = (m: string) => process.stderr.write(`bench:deploy: ${m}\n`);

/** --serve DIR HOST PORT: a static file server with single byte ranges (what the deploy and curl need). */
function serve(dir: string, host: string, port: number): void {
  createServer((req, res) => {
    const file = path.join(dir, path.basename(decodeURIComponent((req.url ?? '/').split('?')[0])));
    if (!existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const size = statSync(file).size;
    const m = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
    let start = 0;
    let end = size;
    if (m) {
      if (m[1] === '') start = Math.max(0, size - Number(m[2]));
      else {
        start = Number(m[1]);
        if (m[2] !== '') end = Math.min(size, Number(m[2]) + 1);
      }
      if (start >= size || end <= start) {
        res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        return;
      }
    }
    const headers: Record<string, string> = {
      'accept-ranges': 'bytes',
      'content-length': String(end - start),
      'content-type': 'application/octet-stream',
      'last-modified': statSync(file).mtime.toUTCString(),
    };
    if (m) headers['content-range'] = `bytes ${start}-${end - 1}/${size}`;
    res.writeHead(m ? 206 : 200, headers);
    if (req.method === 'HEAD' || end === start) {
      res.end();
      return;
    }
    createReadStream(file, { start, end: end - 1, highWaterMark: 1 << 20 }).pipe(res);
  }).listen(port, host, () => process.stdout.write('serving\n'));
}

/** The Debian tree: debootstrap once, then the marker unit, fstab and hostname. */
function rootfs(): string {
  const dir = path.join(DIR, 'rootfs');
  if (existsSync(dir)) return dir;
  need('debootstrap', 'debootstrap');
  mkdirSync(DIR, { recursive: true });
  const tmp = `${dir}.tmp`;
  if (!existsSync(path.join(tmp, 'usr/lib/systemd/systemd'))) {
    rmSync(tmp, { recursive: true, force: true });
    const mirror = aptMirror();
    log(`debootstrap bookworm (minbase + linux-image-amd64 systemd systemd-sysv udev) from ${mirror} (once)`);
    sh('debootstrap', [
      '--variant=minbase',
      '--include=linux-image-amd64,systemd,systemd-sysv,udev',
      'bookworm',
      tmp,
      mirror,
    ]);
  }
  writeFileSync(
    path.join(tmp, 'etc/systemd/system/strata-marker.service'),
    [
      '[Unit]',
      'Description=print a marker on the serial console once multi-user.target is reached',
      'After=multi-user.target',
      '',
      '[Service]',
      'Type=oneshot',
      `ExecStart=/bin/sh -c 'echo ${MARKER} > /dev/ttyS0'`,
      '',
      '[Install]',
      'WantedBy=multi-user.target',
      '',
    ].join('\n'),
  );
  mkdirSync(path.join(tmp, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
  const link = path.join(tmp, 'etc/systemd/system/multi-user.target.wants/strata-marker.service');
  rmSync(link, { force: true });
  sh('ln', ['-s', '/etc/systemd/system/strata-marker.service', link]);
  writeFileSync(path.join(tmp, 'etc/fstab'), '/dev/vda1 / ext4 errors=remount-ro 0 1\n');
  writeFileSync(path.join(tmp, 'etc/hostname'), 'strata-bench\n');
  renameSync(tmp, dir);
  return dir;
}

/** GPT disk, ext4 root from the tree in partition 1, sparse; its qcow2. (No library yet: see the header.) */
function images(): { raw: string; qcow2: string } {
  const raw = path.join(DIR, `debian-${GIB}g.raw`);
  const qcow2 = path.join(DIR, `debian-${GIB}g.qcow2`);
  if (!existsSync(raw)) {
    const tree = rootfs();
    const tmp = `${raw}.tmp`;
    rmSync(tmp, { force: true });
    sh('truncate', ['-s', `${GIB}G`, tmp]);
    sh('sgdisk', ['-o', '-n', '1:2048:0', '-t', '1:8300', tmp]);
    const last = Number(/Last sector: (\d+)/.exec(sh('sgdisk', ['-i', '1', tmp]))?.[1]);
    const kib = Math.floor(((last - 2048 + 1) * 512) / 4096) * 4;
    log(`mkfs.ext4 -d into a ${GIB} GiB GPT disk`);
    sh('mkfs.ext4', ['-q', '-F', '-L', 'root', '-E', `offset=${2048 * 512}`, '-d', tree, tmp, `${kib}k`]);
    renameSync(tmp, raw);
  }
  if (!existsSync(qcow2)) {
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, `${qcow2}.tmp`]);
    renameSync(`${qcow2}.tmp`, qcow2);
  }
  return { raw, qcow2 };
}

/** The kernel and initrd, read out of the image with Strata (the symlinks /vmlinuz, /initrd.img followed inside). */
function bootFiles(raw: string): { kernel: string; initrd: string } {
  const kernel = path.join(DIR, `vmlinuz-${GIB}g`);
  const initrd = path.join(DIR, `initrd-${GIB}g`);
  for (const [inImage, out] of [
    ['/vmlinuz', kernel],
    ['/initrd.img', initrd],
  ]) {
    if (existsSync(out)) continue;
    const r = spawnSync(process.execPath, [CLI, 'cat', raw, inImage], { maxBuffer: 1 << 30 });
    if (r.status !== 0) throw new Error(`strata cat ${raw} ${inImage} failed: ${r.stderr}`);
    writeFileSync(out, r.stdout);
  }
  return { kernel, initrd };
}

/** A network namespace behind a veth pair, tbf 1 Gbit/s both ways, the file server inside. */
async function shapedServer(dir: string): Promise<{ base: string; stop: () => void }> {
  need('ip', 'iproute2');
  need('tc', 'iproute2');
  const ns = `strata-bench-${process.pid}`;
  const host = `sbh${process.pid % 100000}`;
  const peer = `sbn${process.pid % 100000}`;
  const net = `10.${77 + (process.pid % 100)}.${process.pid % 250}`;
  sh('ip', ['netns', 'add', ns]);
  const stopNet = () => {
    spawnSync('ip', ['link', 'del', host]);
    spawnSync('ip', ['netns', 'del', ns]);
  };
  try {
    sh('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', peer]);
    sh('ip', ['link', 'set', peer, 'netns', ns]);
    sh('ip', ['addr', 'add', `${net}.1/24`, 'dev', host]);
    sh('ip', ['link', 'set', host, 'up']);
    sh('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `${net}.2/24`, 'dev', peer]);
    sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', peer, 'up']);
    sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    const tbf = ['root', 'tbf', 'rate', '1gbit', 'burst', '256kb', 'latency', '50ms'];
    sh('tc', ['qdisc', 'add', 'dev', host, ...tbf]);
    sh('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', peer, ...tbf]);
  } catch (e) {
    stopNet();
    throw e;
  }
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      path.join(ROOT, 'dist/bench/deploy.js'),
      '--serve',
      dir,
      `${net}.2`,
      '8080',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (c) => reject(new Error(`the file server exited (${c})`)));
  });
  return {
    base: `http://${net}.2:8080`,
    stop: () => {
      child.kill('SIGKILL');
      stopNet();
    },
  };
}

function bootArgs(kernel: string, initrd: string, drive: string): string[] {
  return [
    '-m',
    '1024',
    '-kernel',
    kernel,
    '-initrd',
    initrd,
    '-append',
    'root=/dev/vda1 console=ttyS0 ro quiet panic=-1 systemd.show_status=false',
    '-drive',
    `${drive},format=raw,if=virtio,cache=none`,
  ];
}

/** Boot to the marker (qemu is killed once it shows); seconds from `t0`. */
async function bootToMarker(kernel: string, initrd: string, drive: string, t0: number): Promise<number> {
  const accel = chooseAccel();
  let at = 0;
  const r = await bootQemu(bootArgs(kernel, initrd, drive), {
    accel,
    timeoutMs: 30 * 60_000,
    marker: MARKER,
    stopAtMarker: true,
    onLine: (l) => {
      if (!at && l.includes(MARKER)) at = (Date.now() - t0) / 1000;
    },
  });
  if (!at) throw new Error(`no ${MARKER} on the console (${accel.accel}):\n${r.console.slice(-3000)}`);
  return at;
}

function freshCopy(raw: string, out: string): void {
  rmSync(out, { force: true });
  sh('cp', ['--sparse=always', raw, out]);
}

interface DeployRun {
  marker: number;
  fetchedBeforeMarker: number;
  complete: number;
  fetchedTotal: number;
}

/** (b): strata deploy URL --to TARGET, qemu boots from the export at once. */
async function streaming(url: string, kernel: string, initrd: string, target: string): Promise<DeployRun> {
  rmSync(target, { force: true });
  rmSync(`${target}.strata-deploy`, { force: true });
  const t0 = Date.now();
  const d: ChildProcess = spawn(process.execPath, [CLI, 'deploy', url, '--to', target, '--json', '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const events: Array<Record<string, unknown> & { t: number }> = [];
  let buf = '';
  let uriResolve!: (u: string) => void;
  const uri = new Promise<string>((r) => (uriResolve = r));
  let completeResolve!: () => void;
  const complete = new Promise<void>((r) => (completeResolve = r));
  d.stdout!.on('data', (c) => {
    buf += c;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const e = JSON.parse(buf.slice(0, nl)) as Record<string, unknown> & { t: number };
      e.t = (Date.now() - t0) / 1000;
      buf = buf.slice(nl + 1);
      events.push(e);
      if (e.event === 'listening') uriResolve(String(e.uri));
      if (e.event === 'complete') completeResolve();
    }
  });
  try {
    const marker = await bootToMarker(kernel, initrd, `file=${await uri}`, t0);
    const before = events.filter((e) => e.event === 'progress' && e.t <= marker).at(-1);
    await complete;
    const done = events.find((e) => e.event === 'complete')!;
    return {
      marker,
      fetchedBeforeMarker: Number(before?.fetchedBytes ?? 0),
      complete: done.t,
      fetchedTotal: Number(done.fetchedBytes),
    };
  } finally {
    d.kill('SIGTERM');
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main(): Promise<void> {
  const env = benchChildEnv();
  need('qemu-system-x86_64', 'qemu-system-x86');
  need('curl', 'curl');
  const accel = chooseAccel();
  const { raw, qcow2 } = images();
  const { kernel, initrd } = bootFiles(raw);
  const www = path.join(DIR, `www-${GIB}g`);
  mkdirSync(www, { recursive: true });
  for (const [f, name] of [
    [raw, 'disk.raw'],
    [qcow2, 'disk.qcow2'],
  ]) {
    if (!existsSync(path.join(www, name))) sh('ln', [f, path.join(www, name)]);
  }
  const work = path.join(DIR, 'work');
  mkdirSync(work, { recursive: true });
  const local = path.join(work, 'local.raw');
  const srv = await shapedServer(www);
  const res: Record<string, number[]> = { rawCopy: [], convert: [], streaming: [], local: [] };
  const deploys: DeployRun[] = [];
  try {
    for (let run = 0; run < RUNS; run++) {
      // (e) the floor: a local copy made before the clock starts
      freshCopy(raw, local);
      let t0 = Date.now();
      res.local.push(await bootToMarker(kernel, initrd, `file=${local}`, t0));
      log(`run ${run}: local ${res.local.at(-1)} s`);
      // (b) streaming
      const s = await streaming(`${srv.base}/disk.qcow2`, kernel, initrd, path.join(work, 'target.raw'));
      deploys.push(s);
      res.streaming.push(s.marker);
      log(`run ${run}: streaming ${s.marker} s (complete at ${s.complete} s)`);
      // (a) full raw copy over HTTP (holes dug on the way, so it takes no more disk than the image), then boot
      rmSync(local, { force: true });
      t0 = Date.now();
      sh('sh', ['-c', `curl -sSf '${srv.base}/disk.raw' | cp --sparse=always /dev/stdin '${local}'`]);
      res.rawCopy.push(await bootToMarker(kernel, initrd, `file=${local}`, t0));
      log(`run ${run}: raw copy then boot ${res.rawCopy.at(-1)} s`);
      // (a) qemu-img convert of the qcow2 over HTTP, then boot
      rmSync(local, { force: true });
      t0 = Date.now();
      const spec = `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'http', url: `${srv.base}/disk.qcow2` } })}`;
      sh('qemu-img', ['convert', '-O', 'raw', spec, local]);
      res.convert.push(await bootToMarker(kernel, initrd, `file=${local}`, t0));
      log(`run ${run}: convert then boot ${res.convert.at(-1)} s`);
    }
  } finally {
    srv.stop();
  }
  const m = Object.fromEntries(Object.entries(res).map(([k, v]) => [k, median(v)]));
  const r2 = (x: number) => Math.round(x * 100) / 100;
  process.stdout.write(
    `${JSON.stringify(
      {
        bench: 'deploy',
        quick: QUICK,
        runs: RUNS,
        accel,
        diskGiB: GIB,
        link: 'veth + tc tbf 1gbit both ways, no added delay',
        source: 'strata deploy of the qcow2 by HTTP URL (library over HTTP: not yet)',
        secondsToMarker: res,
        median: m,
        streaming: deploys,
        ratios: {
          streamingOverLocal: r2(m.streaming / m.local),
          rawCopyOverStreaming: r2(m.rawCopy / m.streaming),
          convertOverStreaming: r2(m.convert / m.streaming),
        },
        targets: {
          streamingOverLocal: '<= 1.3',
          streamingAheadOfBothCopies: true,
          rawCopyOverStreaming32GiB: '>= 8.6',
        },
        notMeasured: ['(c) streaming with a profile', '(d) differential deploy of N+1 over N'],
        env,
      },
      null,
      1,
    )}\n`,
  );
}

if (process.argv[2] === '--serve') serve(process.argv[3], process.argv[4], Number(process.argv[5]));
else
  main().catch((e) => {
    process.stderr.write(`bench:deploy: ${(e as Error).stack ?? e}\n`);
    process.exit(1);
  });
