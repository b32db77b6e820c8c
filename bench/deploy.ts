/**
 * Deploy (issue 16): time from "give me this machine" to a marker printed when a real Debian
 * reaches multi-user.target, booted by qemu-system-x86_64, for:
 *   (a) copy-then-boot: a full raw copy over HTTP (curl, what seed 001 measured) and
 *       `qemu-img convert` of the qcow2 over HTTP (qemu's curl driver: the best standard tool),
 *       then boot from the local disk;
 *   (b) `strata deploy` streaming the qcow2 by URL (Strata's HTTP image reader);
 *   (b') `strata deploy debian@1 --library URL`: the library folder (strata export-index)
 *       served over plain HTTP, boot from the NBD export at once;
 *   (c) (b') with the boot profile (recorded once with `strata profile record` from the
 *       trace of the first (b') run, the deploy's own --trace), prefetched first;
 *   (d) differential: TARGET holds a complete deploy of version N (made before the clock
 *       starts), `strata deploy debian@2` (N+1: N with files added and changed through a kernel
 *       mount) onto it, boot at once; bytes fetched against the bytes that differ (the two raw
 *       images compared block by block, 64 KiB blocks: the deploy's granularity);
 *   (e) boot from a local copy (the floor).
 *
 * Image (cached in BENCH_DIR/deploy): Debian bookworm by debootstrap (minbase + linux-image-amd64,
 * systemd, systemd-sysv, udev), a unit that prints STRATA-MULTI-USER on ttyS0 when
 * multi-user.target is reached, ext4 root (mkfs.ext4 -d) in a GPT partition (sgdisk), 8 GiB
 * virtual (BENCH_DISK_GIB), sparse; its qcow2 (qemu-img convert); N+1; both checked into a
 * library (strata checkin) with a static index (strata export-index).
 * The kernel and initrd are read out of the image with `strata cat` and passed to -kernel/-initrd.
 *
 * Network: images and the library folder are served by a small range-capable HTTP server (this
 * file, --serve) in a network namespace behind a veth pair shaped with tc tbf to 1 Gbit/s in both
 * directions (root needed; no delay added: this kernel has no netem).
 *
 *   npm run bench:deploy                    # 3 runs of each
 *   npm run bench:deploy -- --quick         # 1 run of each
 *   BENCH_DISK_GIB=32 npm run bench:deploy  # the 32 GiB case (sparse: takes no more disk than 8)
 *   BENCH_CASES=local,library,profile       # only these (local rawCopy convert url library profile differential)
 *   BENCH_PREPARE_ONLY=1                    # make the images and the library, boot nothing
 *
 * Prints one JSON object: each scenario's times (s) to the marker, bytes fetched before the
 * marker and time to a complete TARGET for the deploys, the differential's bytes against the
 * bytes that differ, and the ratios against (e) and (a).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  createReadStream,
  existsSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
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
/** Cache key of the image recipe: v2 is the trimmed boot (see tune()); bump when the recipe changes. */
const IMG = `${GIB}g-v2`;
const log = (m: string) => process.stderr.write(`bench:deploy: ${m}\n`);

/** --serve DIR HOST PORT: a static file server with single byte ranges (what the deploy and curl need). */
function serve(dir: string, host: string, port: number): void {
  const server = createServer((req, res) => {
    // any file under DIR (the library's store/ is nested); nothing outside it
    const rel = path.normalize(decodeURIComponent((req.url ?? '/').split('?')[0])).replace(/^(\/|\.\.\/)+/, '');
    const file = path.join(dir, rel);
    if (rel.split('/').includes('..') || !existsSync(file) || !statSync(file).isFile()) {
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
  });
  // Node closes an idle keep-alive connection after 5 s; web servers keep them far longer
  // (nginx 75 s). A client with a pool of connections (qemu's curl driver keeps up to 8) that
  // pauses while it writes can reuse one just as the server closes it: keep them open.
  server.keepAliveTimeout = 10 * 60_000;
  server.headersTimeout = 10 * 60_000 + 1000;
  server.listen(port, host, () => process.stdout.write('serving\n'));
}

/** The Debian tree: debootstrap once, then the marker unit, fstab and hostname. */
function rootfs(): string {
  const dir = path.join(DIR, 'rootfs-v2');
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
  tune(tmp);
  renameSync(tmp, dir);
  return dir;
}

/**
 * Trim the boot without changing what is measured (still Debian bookworm booted by systemd to
 * multi-user.target from the same disk): TCG makes every unit, every udev event and every byte
 * of initrd unpacked cost seconds.
 * - the initrd: initramfs-tools with MODULES=list and only the virtio disk and ext4 modules (the
 *   Debian default, MODULES=most, is a 35 MB gzip of 130 MB the kernel unpacks at every boot);
 *   made in the tree by its own mkinitramfs, so the kernel and initrd are still read out of
 *   the image with Strata;
 * - units a short-lived cloud machine does not run at boot are masked: the apt, dpkg-db-backup,
 *   e2scrub and fstrim timers, e2scrub_reap, systemd-pstore, getty@tty1 and getty-static
 *   (gettys on tty1-6: there is no VGA console, qemu runs with -nodefaults; serial-getty@ttyS0
 *   stays) and systemd-logind (minbase has no D-Bus, without which logind cannot serve).
 */
function tune(tree: string): void {
  const release = sh('ls', [path.join(tree, 'lib/modules')])
    .trim()
    .split('\n')[0];
  writeFileSync(path.join(tree, 'etc/initramfs-tools/conf.d/strata-bench.conf'), 'MODULES=list\nCOMPRESS=gzip\n');
  writeFileSync(
    path.join(tree, 'etc/initramfs-tools/modules'),
    ['virtio_pci', 'virtio_blk', 'crc32c_generic', 'ext4', ''].join('\n'),
  );
  log(`mkinitramfs ${release} in the tree (MODULES=list)`);
  sh('chroot', [tree, 'mkinitramfs', '-o', `/boot/initrd.img-${release}`, release]);
  const mask = [
    'apt-daily.timer',
    'apt-daily-upgrade.timer',
    'dpkg-db-backup.timer',
    'e2scrub_all.timer',
    'e2scrub_reap.service',
    'fstrim.timer',
    'systemd-pstore.service',
    'systemd-logind.service',
    'getty@tty1.service',
    'getty-static.service',
  ];
  for (const unit of mask) {
    const at = path.join(tree, 'etc/systemd/system', unit);
    rmSync(at, { force: true });
    sh('ln', ['-s', '/dev/null', at]);
  }
  for (const wants of ['multi-user.target.wants', 'timers.target.wants', 'getty.target.wants', 'sysinit.target.wants'])
    for (const unit of mask) rmSync(path.join(tree, 'etc/systemd/system', wants, unit), { force: true });
}

/** GPT disk, ext4 root from the tree in partition 1, sparse; its qcow2. (No library yet: see the header.) */
function images(): { raw: string; qcow2: string } {
  const raw = path.join(DIR, `debian-${IMG}.raw`);
  const qcow2 = path.join(DIR, `debian-${IMG}.qcow2`);
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

/**
 * N+1: N with a real change, made through a kernel mount of its root file system (a loop
 * device at the partition's offset): a tree of files added under /opt (the host's Python
 * library, tens of MB), /etc/motd rewritten, a file removed. Cached beside N.
 */
function nextImage(raw: string): string {
  const next = path.join(DIR, `debian-${IMG}-n1.raw`);
  if (existsSync(next)) return next;
  need('losetup', 'mount');
  const tmp = `${next}.tmp`;
  rmSync(tmp, { force: true });
  sh('cp', ['--sparse=always', raw, tmp]);
  const loop = sh('losetup', ['--find', '--show', '-o', String(2048 * 512), tmp]).trim();
  const mnt = path.join(DIR, `mnt-${process.pid}`);
  mkdirSync(mnt, { recursive: true });
  try {
    sh('mount', ['-t', 'ext4', loop, mnt]);
    try {
      const add = ['/usr/lib/python3.11', '/usr/share/zoneinfo'].filter((d) => existsSync(d));
      if (add.length === 0) throw new Error('no host tree to add to N+1 (/usr/lib/python3.11, /usr/share/zoneinfo)');
      mkdirSync(path.join(mnt, 'opt/strata-n1'), { recursive: true });
      for (const d of add) sh('cp', ['-a', d, path.join(mnt, 'opt/strata-n1/')]);
      writeFileSync(path.join(mnt, 'etc/motd'), 'Strata bench image, version N+1\n');
      rmSync(path.join(mnt, 'etc/issue.net'), { force: true });
    } finally {
      sh('umount', [mnt]);
    }
  } finally {
    spawnSync('losetup', ['-d', loop]);
    rmSync(mnt, { recursive: true, force: true });
  }
  renameSync(tmp, next);
  return next;
}

/** A library holding N (debian@1) and N+1 (debian@2), with its static index for plain HTTP. */
function library(raw: string, next: string): string {
  const lib = path.join(DIR, `lib-${IMG}`);
  if (existsSync(path.join(lib, 'strata-index.json'))) return lib;
  const tmp = `${lib}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  log(`checkin N and N+1 into a library (once)`);
  for (const img of [raw, next]) {
    const r = spawnSync(process.execPath, [CLI, 'checkin', img, '--name', 'debian', '--library', tmp], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    if (r.status !== 0) throw new Error(`strata checkin ${img} failed`);
  }
  const r = spawnSync(process.execPath, [CLI, 'export-index', '--library', tmp], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  if (r.status !== 0) throw new Error('strata export-index failed');
  renameSync(tmp, lib);
  return lib;
}

/** Bytes in 64 KiB blocks that differ between two raw images (a plain byte compare, holes read as zeros). */
function differingBytes(a: string, b: string, block = 64 << 10): number {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const step = 16 << 20;
  const ba = Buffer.alloc(step);
  const bb = Buffer.alloc(step);
  let bytes = 0;
  try {
    const size = Math.max(statSync(a).size, statSync(b).size);
    for (let o = 0; o < size; o += step) {
      const na = readSync(fa, ba, 0, step, o);
      const nb = readSync(fb, bb, 0, step, o);
      ba.fill(0, na);
      bb.fill(0, nb);
      const n = Math.min(step, size - o);
      for (let x = 0; x < n; x += block) {
        const e = Math.min(n, x + block);
        if (ba.compare(bb, x, e, x, e) !== 0) bytes += e - x;
      }
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return bytes;
}

/** The kernel and initrd, read out of the image with Strata (the symlinks /vmlinuz, /initrd.img followed inside). */
function bootFiles(raw: string): { kernel: string; initrd: string } {
  const kernel = path.join(DIR, `vmlinuz-${IMG}`);
  const initrd = path.join(DIR, `initrd-${IMG}`);
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
    // two vCPUs, each its own host thread under TCG (thread=multi); -cpu max: the guest kernel
    // sees the CPU features TCG emulates instead of qemu64's few
    '-smp',
    '2',
    '-cpu',
    'max',
    '-kernel',
    kernel,
    '-initrd',
    initrd,
    '-append',
    'root=/dev/vda1 console=ttyS0 ro quiet panic=-1 no_timer_check systemd.show_status=false mitigations=off',
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
    tcgProps: 'thread=multi',
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

const STALL_S = Number(process.env.BENCH_STALL_S ?? 180);

/**
 * (a'): `qemu-img convert` of the qcow2 through qemu's curl driver into a sparse raw file
 * (-n onto a fresh sparse file with --target-is-zero: nothing is written for zeros, as the
 * deploy writes none; -W: writes out of order, as the deploy's copier; the curl driver's
 * timeout raised from 5 to 60 s for a loaded machine). The driver's read-ahead stays at its
 * default (256 KiB): with `readahead: 4 MiB` qemu 7.2 wrote a raw image that `qemu-img compare`
 * found different from the qcow2 (from offset 0), so the copy is compared with the qcow2 before
 * the boot. Seconds, or undefined when the progress (-p) stood still for STALL_S s (it is then
 * killed, and the stall reported rather than hanging the bench).
 */
async function convertOverHttp(url: string, out: string): Promise<number | undefined> {
  const t0 = Date.now();
  rmSync(out, { force: true });
  sh('truncate', ['-s', `${GIB}G`, out]);
  const spec = `json:${JSON.stringify({
    driver: 'qcow2',
    file: { driver: 'http', url, timeout: 60 },
  })}`;
  const q = spawn('qemu-img', ['convert', '-p', '-W', '-n', '--target-is-zero', '-O', 'raw', spec, out], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let last = Date.now();
  let err = '';
  q.stdout!.on('data', () => {
    last = Date.now();
  });
  q.stderr!.on('data', (c) => {
    err += c;
  });
  let stalled = false;
  const watch = setInterval(() => {
    if (Date.now() - last > STALL_S * 1000) {
      stalled = true;
      q.kill('SIGKILL');
    }
  }, 1000);
  const code = await new Promise<number | null>((r) => q.once('exit', r));
  clearInterval(watch);
  if (stalled) return undefined;
  if (code !== 0) throw new Error(`qemu-img convert of ${url} failed (${code}): ${err}`);
  return (Date.now() - t0) / 1000;
}

interface DeployRun {
  marker: number;
  fetchedBeforeMarker: number;
  complete: number;
  fetchedTotal: number;
  mode?: string;
  profile?: Record<string, unknown>;
}

/** `strata deploy ARGS --json --port 0` in `cwd`; qemu boots from the export at once. */
async function streaming(
  args: string[],
  kernel: string,
  initrd: string,
  target: string,
  opts: { fresh?: boolean } = {},
): Promise<DeployRun> {
  if (opts.fresh !== false) {
    rmSync(target, { force: true });
    rmSync(`${target}.strata-deploy`, { force: true });
  }
  const t0 = Date.now();
  const d: ChildProcess = spawn(process.execPath, [CLI, 'deploy', ...args, '--to', target, '--json', '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    cwd: path.dirname(target),
  });
  const events: Array<Record<string, unknown> & { t: number }> = [];
  let buf = '';
  let uriResolve!: (u: string) => void;
  let failed!: (e: Error) => void;
  const uri = new Promise<string>((r, j) => {
    uriResolve = r;
    failed = j;
  });
  let completeResolve!: () => void;
  const complete = new Promise<void>((r) => (completeResolve = r));
  d.once('exit', (c) => failed(new Error(`strata deploy ${args.join(' ')} exited (${c})`)));
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
    const start = events.find((e) => e.event === 'start');
    const profile = events.find((e) => e.event === 'profile');
    return {
      marker,
      fetchedBeforeMarker: Number(before?.fetchedBytes ?? 0),
      complete: done.t,
      fetchedTotal: Number(done.fetchedBytes),
      mode: start ? String(start.mode) : undefined,
      profile: profile ? { ...profile, t: undefined, event: undefined } : undefined,
    };
  } finally {
    d.kill('SIGTERM');
    await new Promise((r) => (d.exitCode !== null ? r(null) : d.once('exit', r)));
  }
}

/** A complete deploy with no guest (`--exit-when-complete`): what TARGET holds before (d)'s clock starts. */
function deployQuietly(args: string[], target: string): void {
  rmSync(target, { force: true });
  rmSync(`${target}.strata-deploy`, { force: true });
  const r = spawnSync(
    process.execPath,
    [CLI, 'deploy', ...args, '--to', target, '--port', '0', '--exit-when-complete', '--profile', 'none'],
    { stdio: ['ignore', 'ignore', 'inherit'], cwd: path.dirname(target) },
  );
  if (r.status !== 0) throw new Error(`strata deploy ${args.join(' ')} (no guest) failed`);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const ALL_CASES = ['local', 'url', 'library', 'profile', 'differential', 'rawCopy', 'convert'];
const CASES = new Set((process.env.BENCH_CASES ?? ALL_CASES.join(',')).split(',').map((c) => c.trim()));
for (const c of CASES) if (!ALL_CASES.includes(c)) throw new Error(`unknown case ${c} (${ALL_CASES.join(' ')})`);

async function main(): Promise<void> {
  const env = benchChildEnv();
  need('qemu-system-x86_64', 'qemu-system-x86');
  need('curl', 'curl');
  const accel = chooseAccel();
  const { raw, qcow2 } = images();
  const next = nextImage(raw);
  const lib = library(raw, next);
  const { kernel, initrd } = bootFiles(raw);
  const www = path.join(DIR, `www-${IMG}`);
  mkdirSync(www, { recursive: true });
  for (const [f, name] of [
    [raw, 'disk.raw'],
    [qcow2, 'disk.qcow2'],
    [lib, 'library'],
  ]) {
    if (!existsSync(path.join(www, name))) sh('ln', ['-s', f, path.join(www, name)]);
  }
  if (process.env.BENCH_PREPARE_ONLY === '1') {
    log(`prepared: ${raw}, ${next}, ${lib}`);
    return;
  }
  const differing = CASES.has('differential') ? differingBytes(raw, next) : 0;
  const work = path.join(DIR, `work-${IMG}`);
  mkdirSync(work, { recursive: true });
  const local = path.join(work, 'local.raw');
  const target = path.join(work, 'target.raw');
  const trace = path.join(work, 'boot.trace');
  const profileFile = path.join(work, 'profile.json');
  const srv = await shapedServer(www);
  const libUrl = `${srv.base}/library`;
  const res: Record<string, number[]> = Object.fromEntries([...CASES].map((c) => [c, []]));
  const deploys: Record<string, DeployRun[]> = { url: [], library: [], profile: [], differential: [] };
  let profileSummary: unknown;
  const stalls: string[] = [];
  try {
    for (let run = 0; run < RUNS; run++) {
      let t0: number;
      if (CASES.has('local')) {
        // (e) the floor: a local copy made before the clock starts
        freshCopy(raw, local);
        t0 = Date.now();
        res.local.push(await bootToMarker(kernel, initrd, `file=${local}`, t0));
        log(`run ${run}: local ${res.local.at(-1)} s`);
      }
      if (CASES.has('url')) {
        // (b) streaming the qcow2 by URL
        const s = await streaming([`${srv.base}/disk.qcow2`], kernel, initrd, target);
        deploys.url.push(s);
        res.url.push(s.marker);
        log(`run ${run}: streaming the qcow2 ${s.marker} s (complete at ${s.complete} s)`);
      }
      if (CASES.has('library') || (CASES.has('profile') && !existsSync(profileFile))) {
        // (b') the library over plain HTTP; the first run's trace makes the profile
        const withTrace = !existsSync(profileFile);
        rmSync(trace, { force: true });
        const s = await streaming(
          ['debian@1', '--library', libUrl, '--profile', 'none', ...(withTrace ? ['--trace', trace] : [])],
          kernel,
          initrd,
          target,
        );
        if (CASES.has('library')) {
          deploys.library.push(s);
          res.library.push(s.marker);
        }
        log(`run ${run}: streaming from the library over HTTP ${s.marker} s (complete at ${s.complete} s)`);
        if (withTrace) {
          const rec = spawnSync(
            process.execPath,
            [CLI, 'profile', 'record', 'debian@1', '--trace', trace, '--library', lib, '--json'],
            { encoding: 'utf8' },
          );
          if (rec.status !== 0) throw new Error(`strata profile record failed: ${rec.stderr}`);
          profileSummary = JSON.parse(rec.stdout);
          const show = spawnSync(process.execPath, [CLI, 'profile', 'show', 'debian@1', '--library', lib, '--json'], {
            encoding: 'utf8',
            maxBuffer: 1 << 28,
          });
          if (show.status !== 0) throw new Error(`strata profile show failed: ${show.stderr}`);
          writeFileSync(profileFile, JSON.stringify((JSON.parse(show.stdout) as { profile: unknown }).profile));
        }
      }
      if (CASES.has('profile')) {
        // (c) the same with the recorded profile fetched first, in access order
        const s = await streaming(['debian@1', '--library', libUrl, '--profile', profileFile], kernel, initrd, target);
        deploys.profile.push(s);
        res.profile.push(s.marker);
        log(`run ${run}: streaming with the profile ${s.marker} s (complete at ${s.complete} s)`);
      }
      if (CASES.has('differential')) {
        // (d) TARGET holds N (a complete deploy, no guest, before the clock); N+1 deployed onto it
        deployQuietly(['debian@1', '--library', libUrl], target);
        const s = await streaming(['debian@2', '--library', libUrl, '--profile', 'none'], kernel, initrd, target, {
          fresh: false,
        });
        if (s.mode !== 'differential') throw new Error(`the deploy of N+1 over N ran as '${s.mode}', not differential`);
        deploys.differential.push(s);
        res.differential.push(s.marker);
        log(`run ${run}: differential ${s.marker} s, ${s.fetchedTotal} bytes fetched (${differing} differ)`);
      }
      if (CASES.has('rawCopy')) {
        // (a) full raw copy over HTTP (holes dug on the way, so it takes no more disk than the image), then boot
        rmSync(local, { force: true });
        t0 = Date.now();
        sh('sh', ['-c', `curl -sSf '${srv.base}/disk.raw' | cp --sparse=always /dev/stdin '${local}'`]);
        res.rawCopy.push(await bootToMarker(kernel, initrd, `file=${local}`, t0));
        log(`run ${run}: raw copy then boot ${res.rawCopy.at(-1)} s`);
      }
      if (CASES.has('convert')) {
        // (a') qemu-img convert of the qcow2 over HTTP, then boot
        const copied = await convertOverHttp(`${srv.base}/disk.qcow2`, local);
        if (copied === undefined) {
          stalls.push(`run ${run}: qemu-img convert made no progress for ${STALL_S} s`);
          log(stalls.at(-1)!);
          continue;
        }
        // the copy must be the image (off the clock: the time is the convert's plus the boot's)
        sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', local, qcow2]);
        res.convert.push(copied + (await bootToMarker(kernel, initrd, `file=${local}`, Date.now())));
        log(`run ${run}: convert ${copied} s, then boot: ${res.convert.at(-1)} s`);
      }
    }
  } finally {
    srv.stop();
  }
  const m: Record<string, number> = Object.fromEntries(
    Object.entries(res)
      .filter(([, v]) => v.length > 0)
      .map(([k, v]) => [k, median(v)]),
  );
  const r2 = (x: number) => Math.round(x * 100) / 100;
  const ratio = (a: string, b: string) => (m[a] && m[b] ? r2(m[a] / m[b]) : undefined);
  const diffFetched = deploys.differential.map((d) => d.fetchedTotal);
  process.stdout.write(
    `${JSON.stringify(
      {
        bench: 'deploy',
        quick: QUICK,
        runs: RUNS,
        accel,
        diskGiB: GIB,
        link: 'veth + tc tbf 1gbit both ways, no added delay',
        cases: {
          local: '(e) boot from a local copy',
          url: '(b) strata deploy of the qcow2 by HTTP URL',
          library: "(b') strata deploy debian@1 --library http://... (export-index, plain HTTP)",
          profile: "(c) (b') with the boot profile recorded from the first (b') run's trace",
          differential: '(d) strata deploy debian@2 onto a TARGET holding debian@1',
          rawCopy: '(a) curl of the raw image, then boot',
          convert: "(a') qemu-img convert of the qcow2 over HTTP, then boot",
        },
        secondsToMarker: res,
        median: m,
        deploys,
        profile: profileSummary,
        convertStalls: stalls,
        differential: {
          differingBytes: differing,
          fetchedBytes: diffFetched,
          fetchedOverDiffering: diffFetched.map((f) => (differing ? r2(f / differing) : undefined)),
        },
        ratios: {
          libraryOverLocal: ratio('library', 'local'),
          urlOverLocal: ratio('url', 'local'),
          profileOverLocal: ratio('profile', 'local'),
          differentialOverLocal: ratio('differential', 'local'),
          rawCopyOverLibrary: ratio('rawCopy', 'library'),
          convertOverLibrary: ratio('convert', 'library'),
          rawCopyOverProfile: ratio('rawCopy', 'profile'),
          convertOverProfile: ratio('convert', 'profile'),
        },
        targets: {
          libraryOverLocal: '<= 1.3',
          libraryAheadOfBothCopies: true,
          profileOverLocal: '<= 1.1',
          rawCopyOverLibrary32GiB: '>= 8.6 (seed 001)',
          differentialFetchedOverDiffering: '<= 1.2',
        },
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
