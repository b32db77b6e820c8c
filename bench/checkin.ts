/**
 * bench:checkin — Strata's library (check-in of a base and a derived Debian image, then a
 * checkout) against `casync make` of both raw images into one store, and against a
 * fixed 64 KiB block dedup computed here, in one run. JSON on stdout.
 *
 * Inputs (built once, cached under .cache/bench):
 * - base: `debootstrap --variant=minbase bookworm` (the tree bench:ls uses), `mkfs.ext4 -d`
 *   into a 1200 MiB image;
 * - derived: a copy of that tree with packages added (curl, openssh-client, tzdata,
 *   python3.11-minimal, perl-modules ... unpacked with dpkg-deb -x from apt's cache, or
 *   fetched with `apt-get download`) and files changed (/etc/hostname, /etc/passwd,
 *   /var/lib/dpkg/status), `mkfs.ext4 -d` into another 1200 MiB image (so file placement
 *   differs from the base).
 *
 * Figures per tool: check-in throughput (virtual MB / wall s, both images), bytes stored
 * after the base, new bytes for the derived image, total stored and dedup ratio (non-zero
 * bytes of both images / total stored); for Strata also checkout throughput (virtual and
 * data MB/s) and whether the checkout equals the original (sha256).
 *
 * Options: --out DIR (stores and checkouts; default /dev/shm/strata-bench-checkin),
 * --base FILE --derived FILE (other images), --sweep (also check both in with 64 KiB,
 * 256 KiB and 1 MiB file chunks, in-process, to choose the file chunk size).
 *
 * --cross-fs (issue 19): instead, the same tree in ext4, XFS and btrfs images (the ones
 * bench:ls makes, .cache/bench/bookworm-minbase.{ext4,xfs,btrfs}; run it first) checked in
 * one after the other into one library, and `casync make` of the same three into one store:
 * what each later file system adds after ext4 (Strata cuts file data by file, so it should
 * add almost nothing), with the ratio to casync's.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { checkin } from '../src/library/checkin.js';
import { Library } from '../src/library/library.js';
import { zstdCompress } from '../src/util/zstd.js';
import { benchBaseImage, benchChildEnv, benchDerivedImage, CLI, need, opt, ROOT, sh } from './common.js';
import { CORPUS_NAMES, corpus } from './corpora.js';

const BENCH = process.env.STRATA_BENCH ?? path.join(ROOT, '.cache', 'bench');
const OUT = opt('--out') ?? '/dev/shm/strata-bench-checkin';
const MB = 1e6;

const log = (m: string) => process.stderr.write(`bench:checkin: ${m}\n`);
function duBytes(dir: string): number {
  return Number(sh('du', ['-sb', dir]).split(/\s/)[0]);
}

/** User + system CPU seconds of this process's finished children (/proc/self/stat cutime + cstime). */
function childCpuS(): number {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[13]) + Number(f[14])) / 100; // fields 16 and 17, in USER_HZ (100)
  } catch {
    return Number.NaN;
  }
}

function timed(cmd: string, argv: string[]): Promise<{ s: number; cpuS: number; out: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const cpu0 = childCpuS();
    const c = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    c.stdout.on('data', (b: Buffer) => out.push(b));
    c.stderr.on('data', (b: Buffer) => {
      if (err.length < 4000) err += b;
    });
    c.on('error', reject);
    c.on('close', (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code !== 0) reject(new Error(`${cmd} ${argv.join(' ')} exited ${code}: ${err}`));
      else resolve({ s, cpuS: round(childCpuS() - cpu0, 2), out: Buffer.concat(out).toString('utf8') });
    });
  });
}

function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 << 20);
  for (let n: number; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  closeSync(fd);
  return h.digest('hex');
}

/** Fixed 64 KiB block dedup of both images: unique non-zero blocks, each zstd -3 compressed. */
function fixedBlocks(images: string[]): Record<string, number> {
  const B = 64 * 1024;
  const seen = new Set<string>();
  const zero = Buffer.alloc(B);
  const buf = Buffer.allocUnsafe(16 << 20);
  const stored: number[] = [];
  let nonZero = 0;
  const t0 = process.hrtime.bigint();
  for (const img of images) {
    let bytes = 0;
    const fd = openSync(img, 'r');
    for (let n: number; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) {
      for (let o = 0; o < n; o += B) {
        const blk = buf.subarray(o, Math.min(n, o + B));
        if (blk.equals(zero.subarray(0, blk.length))) continue;
        nonZero += blk.length;
        const d = createHash('sha256').update(blk).digest('hex');
        if (seen.has(d)) continue;
        seen.add(d);
        bytes += Math.min(blk.length, zstdCompress(blk, 3).length);
      }
    }
    closeSync(fd);
    stored.push(bytes);
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const total = stored[0] + stored[1];
  return {
    seconds: round(s, 2),
    storedAfterBaseBytes: stored[0],
    newBytesDerived: stored[1],
    totalStoredBytes: total,
    dedupRatio: round(nonZero / total, 2),
  };
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

async function sweep(base: string, derived: string): Promise<unknown[]> {
  const rows = [];
  for (const size of [64 * 1024, 256 * 1024, 1024 * 1024]) {
    const dir = path.join(OUT, `sweep-${size}`);
    rmSync(dir, { recursive: true, force: true });
    const lib = await Library.open(dir);
    const t0 = process.hrtime.bigint();
    const a = await checkin(lib, base, { name: 'base', fileChunkSize: size });
    const b = await checkin(lib, derived, { name: 'derived', fileChunkSize: size });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    await lib.close();
    rows.push({
      fileChunkKiB: size / 1024,
      seconds: round(s, 2),
      storedAfterBaseBytes: a.newBytes,
      newBytesDerived: b.newBytes,
      totalStoredBytes: duBytes(path.join(dir, 'store')),
      chunks: a.chunks + b.newChunks,
    });
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

/** The same tree in ext4, XFS and btrfs, checked in one after the other: what each adds. */
async function crossFs(): Promise<void> {
  const kinds = ['ext4', 'xfs', 'btrfs'];
  const images = kinds.map((k) => path.join(BENCH, `bookworm-minbase.${k}`));
  const { existsSync, statSync } = await import('node:fs');
  for (const i of images)
    if (!existsSync(i)) throw new Error(`${i} is missing: run bench:ls first (it makes all three)`);
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const lib = path.join(OUT, 'strata-lib');
  const store = path.join(OUT, 'casync-store');
  const rows: Array<Record<string, unknown>> = [];
  let strataBefore = 0;
  let casyncBefore = 0;
  for (const [i, image] of images.entries()) {
    const s = await timed(process.execPath, [CLI, 'checkin', image, '--name', kinds[i], '--library', lib, '--json']);
    const r = JSON.parse(s.out);
    const strataNow = duBytes(path.join(lib, 'store'));
    const c = await timed('casync', [
      'make',
      '--compression=zstd',
      `--store=${store}`,
      path.join(OUT, `${kinds[i]}.caibx`),
      image,
    ]);
    const casyncNow = duBytes(store);
    const fileData = r.volumes?.[0]?.fs?.fileDataBytes as number | undefined;
    rows.push({
      fs: kinds[i],
      imageBytes: statSync(image).size,
      fileDataBytes: fileData,
      strataNewBytes: strataNow - strataBefore,
      strataNewBytesReported: r.newBytes,
      casyncNewBytes: casyncNow - casyncBefore,
      strataSeconds: round(s.s, 2),
      casyncSeconds: round(c.s, 2),
      newOverFileData: fileData ? round((strataNow - strataBefore) / fileData, 4) : undefined,
      strataNewOverCasyncNew: round((strataNow - strataBefore) / (casyncNow - casyncBefore), 3),
    });
    strataBefore = strataNow;
    casyncBefore = casyncNow;
  }
  process.stdout.write(
    `${JSON.stringify({ bench: 'checkin --cross-fs', loadavg1: round(loadavg()[0], 2), rows }, null, 2)}\n`,
  );
  rmSync(OUT, { recursive: true, force: true });
}

/**
 * --corpora [NAMES] (issue 26): each corpus of bench/corpora.ts (default all, else a comma list)
 * checked in, image after image, into a fresh library, and `casync make` of the same images into a
 * fresh store; per corpus the bytes stored by each (du -sb), Strata's over casync's, and the
 * check-in seconds of each. The last line sums up the ratios.
 */
async function corporaMode(): Promise<void> {
  const arg = opt('--corpora');
  const names = arg && !arg.startsWith('--') ? arg.split(',') : CORPUS_NAMES;
  const corpora = names.map((n) => corpus(n, BENCH, log));
  const rows: Array<Record<string, unknown>> = [];
  for (const c of corpora) {
    rmSync(OUT, { recursive: true, force: true });
    mkdirSync(OUT, { recursive: true });
    const lib = path.join(OUT, 'strata-lib');
    const store = path.join(OUT, 'casync-store');
    let strataS = 0;
    let casyncS = 0;
    let strataCpu = 0;
    let casyncCpu = 0;
    const strataNew: number[] = [];
    const casyncNew: number[] = [];
    for (const [i, image] of c.images.entries()) {
      log(`${c.name}: ${path.basename(image)}`);
      const before = i === 0 ? 0 : duBytes(path.join(lib, 'store'));
      const s = await timed(process.execPath, [CLI, 'checkin', image, '--name', c.name, '--library', lib, '--json']);
      strataNew.push(duBytes(path.join(lib, 'store')) - before);
      const cBefore = i === 0 ? 0 : duBytes(store);
      const k = await timed('casync', [
        'make',
        '--compression=zstd',
        `--store=${store}`,
        path.join(OUT, `${i}.caibx`),
        image,
      ]);
      casyncNew.push(duBytes(store) - cBefore);
      strataS += s.s;
      casyncS += k.s;
      strataCpu += s.cpuS;
      casyncCpu += k.cpuS;
    }
    const ours = duBytes(path.join(lib, 'store'));
    const theirs = duBytes(store);
    const row = {
      corpus: c.name,
      images: c.images.map((i) => path.basename(i)),
      strataBytes: ours,
      casyncBytes: theirs,
      ratio: round(ours / theirs, 3),
      strataNewBytes: strataNew,
      casyncNewBytes: casyncNew,
      strataSeconds: round(strataS, 2),
      casyncSeconds: round(casyncS, 2),
      speedStrataOverCasync: round(casyncS / strataS, 2),
      cpuStrataOverCasync: round(casyncCpu / strataCpu, 2),
      loadavg1: round(loadavg()[0], 2),
    };
    rows.push(row);
    process.stdout.write(`${JSON.stringify(row)}\n`);
  }
  const ratios = Object.fromEntries(rows.map((r) => [r.corpus, r.ratio]));
  const worst = Math.max(...rows.map((r) => r.ratio as number));
  process.stdout.write(
    `${JSON.stringify({ bench: 'checkin --corpora', ratios, worstRatio: worst, allAtMost0_8: worst <= 0.8 })}\n`,
  );
  rmSync(OUT, { recursive: true, force: true });
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  console.log(JSON.stringify(env));
  need('casync', 'casync');
  if (process.argv.includes('--cross-fs')) return crossFs();
  if (process.argv.includes('--corpora')) return corporaMode();
  const base = opt('--base') ?? benchBaseImage(BENCH, log);
  const derived = opt('--derived') ?? benchDerivedImage(BENCH, log);
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const { statSync } = await import('node:fs');
  const sizes = [statSync(base).size, statSync(derived).size];
  const virtualMB = (sizes[0] + sizes[1]) / MB;
  const load0 = loadavg()[0];

  // Strata
  const lib = path.join(OUT, 'strata-lib');
  const s1 = await timed(process.execPath, [CLI, 'checkin', base, '--name', 'debian', '--library', lib, '--json']);
  const storedAfterBase = duBytes(path.join(lib, 'store'));
  const s2 = await timed(process.execPath, [CLI, 'checkin', derived, '--name', 'debian', '--library', lib, '--json']);
  const storedTotal = duBytes(path.join(lib, 'store'));
  const r1 = JSON.parse(s1.out);
  const r2 = JSON.parse(s2.out);
  const outRaw = path.join(OUT, 'checkout.raw');
  const co = await timed(process.execPath, [
    CLI,
    'checkout',
    'debian@2',
    outRaw,
    '--library',
    lib,
    '--force',
    '--json',
  ]);
  const coData = JSON.parse(co.out).dataBytes as number;
  const identical = sha256File(outRaw) === sha256File(derived);
  rmSync(outRaw, { force: true });

  // casync (zstd, its default 64 KiB average chunks)
  const store = path.join(OUT, 'casync-store');
  const c1 = await timed('casync', [
    'make',
    '--compression=zstd',
    `--store=${store}`,
    path.join(OUT, 'base.caibx'),
    base,
  ]);
  const casyncAfterBase = duBytes(store);
  const c2 = await timed('casync', [
    'make',
    '--compression=zstd',
    `--store=${store}`,
    path.join(OUT, 'derived.caibx'),
    derived,
  ]);
  const casyncTotal = duBytes(store);

  const fixed = fixedBlocks([base, derived]);
  const nonZero = fixed.totalStoredBytes * fixed.dedupRatio;
  const strataS = s1.s + s2.s;
  const casyncS = c1.s + c2.s;
  const result = {
    bench: 'checkin',
    images: { base, derived, bytes: sizes },
    loadavg1: [round(load0, 2), round(loadavg()[0], 2)],
    strata: {
      seconds: [round(s1.s, 2), round(s2.s, 2)],
      cpuSeconds: [s1.cpuS, s2.cpuS],
      throughputMBps: round(virtualMB / strataS),
      cpuThroughputMBps: round(virtualMB / (s1.cpuS + s2.cpuS)),
      storedAfterBaseBytes: storedAfterBase,
      newBytesDerived: storedTotal - storedAfterBase,
      newBytesDerivedReported: r2.newBytes,
      totalStoredBytes: storedTotal,
      dedupRatio: round(nonZero / storedTotal, 2),
      usedBytes: [r1.usedBytes, r2.usedBytes],
      checkoutSeconds: round(co.s, 2),
      checkoutCpuSeconds: co.cpuS,
      checkoutMBps: round(sizes[1] / MB / co.s),
      checkoutDataMBps: round(coData / MB / co.s),
      checkoutIdentical: identical,
    },
    casync: {
      seconds: [round(c1.s, 2), round(c2.s, 2)],
      cpuSeconds: [c1.cpuS, c2.cpuS],
      throughputMBps: round(virtualMB / casyncS),
      cpuThroughputMBps: round(virtualMB / (c1.cpuS + c2.cpuS)),
      storedAfterBaseBytes: casyncAfterBase,
      newBytesDerived: casyncTotal - casyncAfterBase,
      totalStoredBytes: casyncTotal,
      dedupRatio: round(nonZero / casyncTotal, 2),
    },
    fixed64k: fixed,
    ratios: {
      throughputStrataOverCasync: round(casyncS / strataS, 2),
      cpuStrataOverCasync: round((c1.cpuS + c2.cpuS) / (s1.cpuS + s2.cpuS), 2),
      storedStrataOverCasync: round(storedTotal / casyncTotal, 3),
      newDerivedStrataOverCasync: round((storedTotal - storedAfterBase) / (casyncTotal - casyncAfterBase), 3),
      storedStrataOverFixed64k: round(storedTotal / fixed.totalStoredBytes, 3),
    },
    sweep: process.argv.includes('--sweep') ? await sweep(base, derived) : undefined,
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  rmSync(OUT, { recursive: true, force: true });
}

main().catch((e) => {
  process.stderr.write(`bench:checkin: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
