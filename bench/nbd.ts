/**
 * NBD serving: Strata's `strata nbd` against qemu-nbd (and nbdkit's file plugin for raw)
 * on the same images, in the same run. For each server: sequential read of the whole
 * disk with `nbdcopy URI null:` (MB/s), 4 KiB random reads with fio's nbd engine at
 * queue depth 1 and 16 (IOPS, p99 latency), and the server's peak RSS (VmHWM).
 * Prints one JSON line per image and metric, with each server's figure and the ratio
 * Strata / qemu-nbd.
 *
 *   npm run bench:nbd
 *   BENCH_DIR=/work/main/.cache/bench BENCH_RUNS=3 BENCH_FIO_SECONDS=10 npm run bench:nbd
 *   BENCH_NODE_FLAGS=--cpu-prof npm run bench:nbd      # profile the Strata server
 *   BENCH_CASES=library BENCH_SIZE_MIB=256 npm run bench:nbd   # only the library-version case
 *
 * Library case (BENCH_CASES=image,library, both by default): the raw image checked in
 * (default check-in, cached in BENCH_DIR) and served as `strata nbd --library L NAME@1`
 * (default 64 MiB block cache, BENCH_LIB_CACHE to change). Cold: a fresh server (empty
 * block cache; the store's files may sit in the page cache, which is not dropped on a
 * shared machine); warm: a second pass on the same server. Beside it, in the same run,
 * `strata nbd` and qemu-nbd on the raw image file, one pass each.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { CLI as BIN, benchChildEnv, ROOT } from './common.js';
import { makeMixedRaw } from './mixed-disk.js';

const pexec = promisify(execFile);
const DIR = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const SIZE = Number(process.env.BENCH_SIZE_MIB ?? 1024) * 1024 * 1024;
const RUNS = Number(process.env.BENCH_RUNS ?? 2);
const FIO_SECONDS = Number(process.env.BENCH_FIO_SECONDS ?? 5);
const NODE_FLAGS = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);

async function cached(name: string, make: (out: string) => Promise<void> | void): Promise<string> {
  const f = path.join(DIR, name);
  if (existsSync(f)) return f;
  mkdirSync(DIR, { recursive: true });
  const tmp = `${f}.tmp-${process.pid}`;
  rmSync(tmp, { force: true });
  await make(tmp);
  renameSync(tmp, f);
  return f;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

interface Running {
  proc: ChildProcess;
  uri: string;
}

/** Start a server and wait until a client can connect. */
async function start(kind: string, image: string, format: string, extra: string[] = []): Promise<Running> {
  const port = await freePort();
  let proc: ChildProcess;
  if (kind === 'strata-library') {
    proc = spawn(process.execPath, [...NODE_FLAGS, BIN, 'nbd', ...extra, image, '--port', String(port)], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  } else if (kind === 'strata') {
    proc = spawn(process.execPath, [...NODE_FLAGS, BIN, 'nbd', image, '--port', String(port)], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  } else if (kind === 'qemu-nbd') {
    proc = spawn('qemu-nbd', ['-r', '-t', '-f', format, '-x', '', '-b', '127.0.0.1', '-p', String(port), image], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  } else {
    proc = spawn('nbdkit', ['-f', '-r', '-i', '127.0.0.1', '-p', String(port), 'file', image], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
  const uri = `nbd://127.0.0.1:${port}/`;
  for (let i = 0; i < 200; i++) {
    try {
      await pexec('nbdinfo', ['--size', uri]);
      return { proc, uri };
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  proc.kill('SIGKILL');
  throw new Error(`${kind} did not come up on ${uri}`);
}

async function stop(r: Running): Promise<void> {
  const exited = new Promise((resolve) => r.proc.once('exit', resolve));
  r.proc.kill('SIGTERM');
  await exited;
}

function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : Number.NaN;
}

/**
 * MB/s of one `nbdcopy URI null:`. With extents nbdcopy asks block status first and skips
 * holes (qemu-nbd and nbdkit find a raw file's holes with SEEK_HOLE, which Node cannot
 * call, so Strata reads them); `--no-extents` reads every byte from every server.
 */
async function sequential(uri: string, size: number, extents = true): Promise<number> {
  const t0 = process.hrtime.bigint();
  await pexec('nbdcopy', [...(extents ? [] : ['--no-extents']), uri, 'null:']);
  return size / 1e6 / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function random(uri: string, depth: number): Promise<{ iops: number; p99us: number }> {
  const { stdout } = await pexec(
    'fio',
    [
      '--name=rand',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randread',
      '--bs=4k',
      `--iodepth=${depth}`,
      `--runtime=${FIO_SECONDS}`,
      '--time_based',
      '--randseed=42',
      '--output-format=json',
    ],
    { maxBuffer: 64 << 20 },
  );
  const j = JSON.parse(stdout.slice(stdout.indexOf('{')));
  const r = j.jobs[0].read;
  return { iops: Math.round(r.iops), p99us: Math.round(r.clat_ns.percentile['99.000000'] / 1000) };
}

interface Figures {
  seqMBs: number;
  seqAllMBs: number;
  qd1: { iops: number; p99us: number };
  qd16: { iops: number; p99us: number };
  peakRssMiB: number;
}

/**
 * All servers run at once and every measurement goes round them in turn, RUNS times, keeping
 * each one's best: on a shared machine the load drifts, and taking turns spreads that drift
 * over all of them instead of charging it to whichever ran last.
 */
async function measureAll(kinds: string[], image: string, format: string): Promise<Record<string, Figures>> {
  const running: Record<string, Running> = {};
  try {
    for (const k of kinds) running[k] = await start(k, image, format);
    const got: Record<string, Figures> = {};
    for (const k of kinds)
      got[k] = {
        seqMBs: 0,
        seqAllMBs: 0,
        qd1: { iops: 0, p99us: 0 },
        qd16: { iops: 0, p99us: 0 },
        peakRssMiB: 0,
      };
    const better = (a: { iops: number; p99us: number }, b: { iops: number; p99us: number }) =>
      b.iops > a.iops ? b : a;
    for (let i = 0; i < RUNS; i++) {
      for (const k of kinds)
        got[k].seqMBs = Math.max(got[k].seqMBs, Math.round(await sequential(running[k].uri, SIZE)));
      for (const k of kinds) {
        got[k].seqAllMBs = Math.max(got[k].seqAllMBs, Math.round(await sequential(running[k].uri, SIZE, false)));
      }
      for (const k of kinds) got[k].qd1 = better(got[k].qd1, await random(running[k].uri, 1));
      for (const k of kinds) got[k].qd16 = better(got[k].qd16, await random(running[k].uri, 16));
    }
    for (const k of kinds) got[k].peakRssMiB = peakRssMiB(running[k].proc.pid!);
    return got;
  } finally {
    for (const r of Object.values(running)) await stop(r);
  }
}

const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;

/**
 * A library version next to its image file: cold (fresh server) and warm (second pass)
 * figures for the version, one pass each for `strata nbd` and qemu-nbd on the raw file.
 */
async function libraryCase(raw: string): Promise<void> {
  const lib = await cached(`nbd-lib-${path.basename(raw, '.raw')}`, async (out) => {
    const t0 = process.hrtime.bigint();
    await pexec(process.execPath, [BIN, 'checkin', '--library', out, '--name', 'mixed', raw], { maxBuffer: 64 << 20 });
    console.error(`checked in ${raw} in ${Number(process.hrtime.bigint() - t0) / 1e9} s`);
  });
  const extra = [
    '--library',
    lib,
    ...(process.env.BENCH_LIB_CACHE ? ['--cache-size', process.env.BENCH_LIB_CACHE] : []),
  ];
  const rows: Record<string, Record<string, number>> = {};
  const seq = async (k: string, r: Running, pass: string) => {
    (rows[k] ??= {})[`seqMBs${pass}`] = Math.round(await sequential(r.uri, SIZE));
  };
  const rnd = async (k: string, r: Running, pass: string) => {
    const f = await random(r.uri, 16);
    rows[k][`qd16Iops${pass}`] = f.iops;
    rows[k][`qd16P99us${pass}`] = f.p99us;
  };
  // sequential: fresh server, cold pass then warm pass
  let r = await start('strata-library', 'mixed@1', 'raw', extra);
  try {
    await seq('strata-library', r, 'Cold');
    await seq('strata-library', r, 'Warm');
  } finally {
    await stop(r);
  }
  // random: another fresh server, so the random reads start cold too
  r = await start('strata-library', 'mixed@1', 'raw', extra);
  try {
    await rnd('strata-library', r, 'Cold');
    await rnd('strata-library', r, 'Warm');
    rows['strata-library'].peakRssMiB = peakRssMiB(r.proc.pid!);
  } finally {
    await stop(r);
  }
  await pexec('dd', [`if=${raw}`, 'of=/dev/null', 'bs=8M']);
  for (const k of ['strata', 'qemu-nbd']) {
    const s = await start(k, raw, 'raw');
    try {
      await seq(k, s, '');
      rows[k] ??= {};
      await rnd(k, s, '');
      rows[k].peakRssMiB = peakRssMiB(s.proc.pid!);
    } finally {
      await stop(s);
    }
  }
  const lf = rows['strata-library'];
  const q = rows['qemu-nbd'];
  console.log(
    JSON.stringify({
      bench: 'nbd',
      case: 'library version vs image file',
      image: path.basename(raw),
      cacheSize: process.env.BENCH_LIB_CACHE ?? '64M',
      ...rows,
      ratios: {
        seqColdVsQemu: ratio(lf.seqMBsCold, q.seqMBs),
        seqWarmVsQemu: ratio(lf.seqMBsWarm, q.seqMBs),
        iopsColdVsQemu: ratio(lf.qd16IopsCold, q.qd16Iops),
        iopsWarmVsQemu: ratio(lf.qd16IopsWarm, q.qd16Iops),
      },
      loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    }),
  );
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  console.log(JSON.stringify(env));
  const cases = (process.env.BENCH_CASES ?? 'image,library').split(',');
  const gib = (SIZE / 2 ** 30).toString().replace('.', '_');
  const raw = await cached(`mixed-${gib}g-v1.raw`, (out) => makeMixedRaw(out, SIZE));
  const qcow2 = await cached(`mixed-${gib}g-v1.qcow2`, async (out) => {
    await pexec('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, out]);
  });
  const haveNbdkit = await pexec('nbdkit', ['--version']).then(
    () => true,
    () => false,
  );
  if (cases.includes('library')) await libraryCase(raw);
  if (!cases.includes('image')) return;
  const summary: Record<string, unknown> = {};
  for (const [format, image] of [
    ['raw', raw],
    ['qcow2', qcow2],
  ] as const) {
    await pexec('dd', [`if=${image}`, 'of=/dev/null', 'bs=8M']); // warm the page cache for every server alike
    const servers = ['strata', 'qemu-nbd', ...(format === 'raw' && haveNbdkit ? ['nbdkit'] : [])];
    const got = await measureAll(servers, image, format);
    const line = (metric: string, pick: (f: Figures) => number, higherIsBetter = true) => {
      const row: Record<string, unknown> = { bench: 'nbd', image: path.basename(image), metric };
      for (const s of servers) row[s] = pick(got[s]);
      row.ratio = higherIsBetter
        ? ratio(pick(got.strata), pick(got['qemu-nbd']))
        : ratio(pick(got['qemu-nbd']), pick(got.strata));
      console.log(JSON.stringify(row));
      return row.ratio;
    };
    summary[format] = {
      seqRatio: line('sequential MB/s (nbdcopy to null:)', (f) => f.seqMBs),
      seqAllRatio: line('sequential MB/s, every byte (nbdcopy --no-extents)', (f) => f.seqAllMBs),
      qd1Ratio: line('4K random read IOPS, qd1 (fio nbd)', (f) => f.qd1.iops),
      qd1P99: line('4K random read p99 us, qd1 (ratio qemu/strata)', (f) => f.qd1.p99us, false),
      qd16Ratio: line('4K random read IOPS, qd16 (fio nbd)', (f) => f.qd16.iops),
      qd16P99: line('4K random read p99 us, qd16 (ratio qemu/strata)', (f) => f.qd16.p99us, false),
      strataPeakRssMiB: got.strata.peakRssMiB,
      rssLine: line('server peak RSS MiB (ratio qemu/strata)', (f) => f.peakRssMiB, false),
    };
  }
  console.log(
    JSON.stringify({
      bench: 'nbd',
      summary,
      targets: { seqRatio: 0.8, iopsRatio: 0.7, strataPeakRssMiB: 200 },
      loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
      cpus: (await import('node:os')).cpus().length,
    }),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
