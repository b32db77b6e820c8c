/**
 * What every benchmark needs once: the repository root, the CLI, running a tool, and the
 * debootstrapped Debian tree several benches measure.
 */
import { spawnSync } from 'node:child_process';
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (benches run from dist/bench, sources live in bench/). */
export const ROOT = (() => {
  let d = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(d, 'package.json'))) d = path.dirname(d);
  return d;
})();
export const CLI = path.join(ROOT, 'dist', 'cli', 'strata.cjs');

/**
 * The environment the measured children get. This sandbox sets NODE_EXTRA_CA_CERTS to the
 * system CA bundle, and Node parses that file at every start-up, before any of our code runs:
 * `node -e 0` takes ~29 ms without it and ~83 ms with it here (user CPU 21 vs 66 ms). A
 * user's machine does not normally set it, none of the peer tools reads it, and Strata needs
 * it only for HTTPS sources signed by an extra CA. So the benchmarks drop it for every child
 * (peers included) unless BENCH_KEEP_ENV=1; call this first in main() and print what it
 * returns with the results.
 */
export function benchChildEnv(): { childEnv: string } {
  const extra = process.env.NODE_EXTRA_CA_CERTS;
  if (extra === undefined) return { childEnv: 'as given' };
  if (process.env.BENCH_KEEP_ENV === '1') return { childEnv: `as given (NODE_EXTRA_CA_CERTS=${extra} kept)` };
  delete process.env.NODE_EXTRA_CA_CERTS;
  return { childEnv: `NODE_EXTRA_CA_CERTS=${extra} dropped (BENCH_KEEP_ENV=1 keeps it)` };
}

/** `--name VALUE` from the command line. */
export function opt(name: string): string | undefined {
  const args = process.argv.slice(2);
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** User + system CPU ms of this process's finished children (/proc/self/stat cutime + cstime), or NaN. */
export function childCpuMs(): number {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[13]) + Number(f[14])) * 1000) / 100; // fields 16 and 17, in USER_HZ (100)
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU seconds (user + system) so far of the processes whose command line names `dir` (the
 * S3 and PostgreSQL servers scripts/test-services.sh started with their state in `dir`), by
 * kind: Swift's proxy / object / container / account servers, memcached, postgres. A
 * process that exited since the last call is not counted (its time is gone with it).
 */
export function serviceCpuS(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  if (!dir) return out;
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let cmd: string;
    let stat: string;
    try {
      cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (!cmd.includes(dir)) continue;
      stat = readFileSync(`/proc/${p}/stat`, 'utf8');
    } catch {
      continue;
    }
    const kind =
      /swift-(\w+)-server/.exec(cmd)?.[1] ??
      (cmd.includes('memcached') ? 'memcached' : cmd.includes('postgres') ? 'postgres' : 'other');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out[kind] = (out[kind] ?? 0) + (Number(f[11]) + Number(f[12])) / 100; // utime, stime (fields 14, 15) in USER_HZ
  }
  return out;
}

/** CPU seconds the services spent between two serviceCpuS readings, by kind and in all. */
export function serviceCpuDelta(
  a: Record<string, number>,
  b: Record<string, number>,
): { total: number; by: Record<string, number> } {
  const by: Record<string, number> = {};
  let total = 0;
  for (const k of Object.keys(b)) {
    const d = b[k] - (a[k] ?? 0);
    if (d <= 0) continue;
    by[k] = +d.toFixed(2);
    total += d;
  }
  return { total: +total.toFixed(2), by };
}

/** Run a tool and return its stdout; throws with its stderr on a non-zero exit. */
export function sh(cmd: string, argv: string[], opts: { cwd?: string; input?: string } = {}): string {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 1 << 30, cwd: opts.cwd, input: opts.input });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

export function need(cmd: string, pkg: string): void {
  if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0)
    throw new Error(`${cmd} not found: apt-get install ${pkg}`);
}

/** The Debian mirror apt uses here (deb822 URIs: or one-line deb entries), else deb.debian.org. */
export function aptMirror(): string {
  const files = ['/etc/apt/sources.list'];
  const d = '/etc/apt/sources.list.d';
  if (existsSync(d)) for (const f of readdirSync(d)) files.push(path.join(d, f));
  for (const f of files) {
    if (!existsSync(f)) continue;
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(/^\s*URIs:\s*(\S+)/gm)) if (/\/debian\/?$/.test(m[1])) return m[1];
    for (const m of text.matchAll(/^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/gm)) {
      if (/\/debian\/?$/.test(m[1])) return m[1];
    }
  }
  return 'http://deb.debian.org/debian';
}

/** `BENCH/rootfs`: `debootstrap --variant=minbase bookworm`, made once and kept. */
export function benchRootfs(bench: string, log: (m: string) => void): string {
  const dir = path.join(bench, 'rootfs');
  if (!existsSync(dir)) {
    need('debootstrap', 'debootstrap');
    mkdirSync(bench, { recursive: true });
    const tmp = `${dir}.tmp`;
    rmSync(tmp, { recursive: true, force: true });
    const mirror = aptMirror();
    log(`debootstrap --variant=minbase bookworm from ${mirror} (once)`);
    sh('debootstrap', ['--variant=minbase', 'bookworm', tmp, mirror]);
    renameSync(tmp, dir);
  }
  return dir;
}

/** Size of the bench:checkin base and derived images (>= 1 GiB: the issues' targets are for 1 GiB images). */
export const PAIR_IMAGE_MIB = 1200;

/** What the derived tree adds to the base one (unpacked with dpkg-deb -x). */
const DERIVED_PACKAGES = [
  'curl',
  'libcurl4',
  'openssh-client',
  'tzdata',
  'python3.11-minimal',
  'libpython3.11-minimal',
  'libpython3.11-stdlib',
  'perl-modules-5.36',
  'libperl5.36',
];

/** The .deb files of DERIVED_PACKAGES: apt's cache when it has them, else `apt-get download`. */
function derivedDebs(bench: string, log: (m: string) => void): string[] {
  const cache = '/var/cache/apt/archives';
  const dl = path.join(bench, 'checkin-debs');
  mkdirSync(dl, { recursive: true });
  const out: string[] = [];
  for (const p of DERIVED_PACKAGES) {
    const find = (d: string) =>
      existsSync(d) ? readdirSync(d).find((f) => f.startsWith(`${p}_`) && f.endsWith('.deb')) : undefined;
    let f = find(dl);
    if (f) out.push(path.join(dl, f));
    else if ((f = find(cache))) out.push(path.join(cache, f));
    else {
      log(`apt-get download ${p}`);
      sh('apt-get', ['download', p], { cwd: dl });
      out.push(path.join(dl, find(dl) as string));
    }
  }
  return out;
}

/**
 * `BENCH/rootfs-derived-v1`: a copy of the bench tree with DERIVED_PACKAGES unpacked (and
 * added to the dpkg status), /etc/hostname changed, a user added to /etc/passwd. Made once.
 */
export function benchDerivedRootfs(bench: string, log: (m: string) => void): string {
  const dir = path.join(bench, 'rootfs-derived-v1');
  if (existsSync(dir)) return dir;
  const base = realpathSync(benchRootfs(bench, log));
  const tmp = `${dir}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  log('derived tree: cp -a, dpkg-deb -x of the packages, edited /etc files (once)');
  mkdirSync(tmp);
  sh('cp', ['-a', `${base}/.`, tmp]);
  const status = path.join(tmp, 'var/lib/dpkg/status');
  for (const deb of derivedDebs(bench, log)) {
    sh('dpkg-deb', ['-x', deb, tmp]);
    appendFileSync(status, `\n${sh('dpkg-deb', ['-f', deb]).trim()}\nStatus: install ok installed\n`);
  }
  writeFileSync(path.join(tmp, 'etc/hostname'), 'strata-derived\n');
  appendFileSync(path.join(tmp, 'etc/passwd'), 'builder:x:1000:1000:Image builder:/home/builder:/bin/bash\n');
  mkdirSync(path.join(tmp, 'home/builder'), { recursive: true });
  renameSync(tmp, dir);
  return dir;
}

/** `mkfs.ext4 -d TREE` into BENCH/NAME (PAIR_IMAGE_MIB), once. */
function ext4Image(bench: string, tree: string, name: string, log: (m: string) => void): string {
  const file = path.join(bench, name);
  if (existsSync(file)) return file;
  need('mkfs.ext4', 'e2fsprogs');
  log(`mkfs.ext4 -d ${tree} (${PAIR_IMAGE_MIB} MiB, once)`);
  sh('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', 'bench-root', '-d', tree, `${file}.tmp`, `${PAIR_IMAGE_MIB}M`]);
  renameSync(`${file}.tmp`, file);
  return file;
}

/** The base image of bench:checkin and bench:inspect's libdiff: the bench tree as 1200 MiB ext4. */
export function benchBaseImage(bench: string, log: (m: string) => void): string {
  return ext4Image(bench, realpathSync(benchRootfs(bench, log)), `checkin-base-v1-${PAIR_IMAGE_MIB}m.ext4`, log);
}

/** The derived image: the derived tree (packages added, files changed) as 1200 MiB ext4. */
export function benchDerivedImage(bench: string, log: (m: string) => void): string {
  return ext4Image(bench, benchDerivedRootfs(bench, log), `checkin-derived-v1-${PAIR_IMAGE_MIB}m.ext4`, log);
}

const DIFF_BLOCK = 4096;

/**
 * Bytes in 4 KiB blocks that differ between two disks, and of those the ones that are not
 * all zeros in `b` (what a differential deploy writes: a block the edit freed reads as
 * zeros in a checkout, free space being restored as zeros, but is free on the target).
 * bench/edit.ts and bench/rebase.ts compare a new version's disk with its parent's.
 */
export function differing(a: string, b: string): { all: number; written: number } {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const W = 8 * 1024 * 1024;
  const ba = Buffer.alloc(W);
  const bb = Buffer.alloc(W);
  const zero = Buffer.alloc(DIFF_BLOCK);
  let n = 0;
  let w = 0;
  try {
    for (let off = 0; ; off += W) {
      const ra = readSync(fa, ba, 0, W, off);
      const rb = readSync(fb, bb, 0, W, off);
      if (ra === 0 && rb === 0) break;
      const m = Math.max(ra, rb);
      for (let o = 0; o < m; o += DIFF_BLOCK) {
        const x = bb.subarray(o, o + DIFF_BLOCK);
        if (ba.subarray(o, o + DIFF_BLOCK).equals(x)) continue;
        n++;
        if (!x.equals(zero)) w++;
      }
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return { all: n * DIFF_BLOCK, written: w * DIFF_BLOCK };
}
