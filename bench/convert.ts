/**
 * Convert throughput: Strata's CLI against `qemu-img convert` on the same inputs, in the
 * same run. Prints one JSON line per case and a summary line.
 *
 *   npm run bench:convert            # 1 GiB disk, best of 3
 *   BENCH_SIZE_MIB=2048 BENCH_RUNS=2 npm run bench:convert
 *   BENCH_DIR=/dev/shm/strata-bench npm run bench:convert   # inputs and outputs on tmpfs
 *   BENCH_SIZE_MIB=4096 BENCH_OUT_DIR=/dev/shm/strata-out npm run bench:convert
 *
 * BENCH_OUT_DIR puts only the outputs elsewhere (tmpfs keeps the kernel's dirty-page
 * throttling of a slow disk out of both tools' figures; inputs are read from the page cache).
 *
 * Each run of either tool is a whole process, so Strata pays Node's start-up (~40 ms here
 * without NODE_EXTRA_CA_CERTS, see benchChildEnv; measured as `startupMs`: `strata info` of a
 * 1 MiB image) on every case. `strataMsLessStartup` and `ratioLessStartup` show the
 * conversion itself; the end-to-end `ratio` stays the headline figure.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { CLI as BIN, benchChildEnv, childCpuMs, ROOT } from './common.js';
import { makeMixedRaw } from './mixed-disk.js';

const pexec = promisify(execFile);
const DIR = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const OUT = process.env.BENCH_OUT_DIR ?? path.join(DIR, 'out');
const SIZE = Number(process.env.BENCH_SIZE_MIB ?? 1024) * 1024 * 1024;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
/** Extra node flags for the Strata child (e.g. BENCH_NODE_FLAGS=--cpu-prof). */
const NODE_FLAGS = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);
/**
 * Only the cases whose name contains one of these (comma-separated), e.g.
 * BENCH_CASES=qcow2->raw,raw->raw; `uncompressed` picks every case without -c (issue 26's set).
 */
const ONLY = (process.env.BENCH_CASES ?? '').split(',').filter(Boolean);
/**
 * BENCH_WORKERS=1: also time Strata with its worker-thread copier (STRATA_NO_NATIVE_COPY=1)
 * for uncompressed outputs, in the same rounds: `workersMs` and `ratioWorkers` (qemu-img's time / it).
 */
const WORKERS = process.env.BENCH_WORKERS === '1';
/**
 * BENCH_DROP_INPUTS=1: one input on disk at a time: the raw disk is deleted once a converted
 * input (qcow2, vmdk, vhdx) is made from it, and that input once its case is done (the raw
 * disk is made again for the raw cases). At BENCH_SIZE_MIB=8192 the four inputs take ~23 GB
 * of real disk; this way ~6 GB, plus one output (~6 GB).
 */
const DROP_INPUTS = process.env.BENCH_DROP_INPUTS === '1';

async function cached(name: string, make: (out: string) => Promise<void> | void): Promise<string> {
  const f = path.join(DIR, name);
  if (existsSync(f)) return f;
  const tmp = `${f}.tmp-${process.pid}`;
  rmSync(tmp, { force: true });
  await make(tmp);
  renameSync(tmp, f);
  return f;
}

/** Run a child; resolves with its wall time and its user + system CPU time (ms). */
function runChild(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ ms: number; cpuMs: number }> {
  const cpu0 = childCpuMs();
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: env ?? process.env });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (code === 0) resolve({ ms, cpuMs: childCpuMs() - cpu0 });
      else reject(new Error(`${path.basename(cmd)} ${args.join(' ')} exited ${code}: ${err.trim()}`));
    });
  });
}

interface Case {
  name: string;
  /** The cached input's file extension (mixed-Ng-v1.EXT). */
  ext: string;
  input: () => Promise<string>;
  inFmt: string;
  outFmt: 'raw' | 'qcow2';
  compress?: boolean;
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  console.log(JSON.stringify(env));
  mkdirSync(DIR, { recursive: true });
  mkdirSync(OUT, { recursive: true });
  const gib = (SIZE / 2 ** 30).toString().replace('.', '_');
  const raw = () => cached(`mixed-${gib}g-v1.raw`, (out) => makeMixedRaw(out, SIZE));
  const via = (ext: string, args: string[]) => () =>
    cached(`mixed-${gib}g-v1.${ext}`, async (out) => {
      const from = await raw();
      await pexec('qemu-img', ['convert', '-f', 'raw', ...args, from, out]);
      // one input on disk at a time: the raw disk is made again for the raw cases
      if (DROP_INPUTS) rmSync(from, { force: true });
    });
  const cases: Case[] = [
    { name: 'qcow2->raw', ext: 'qcow2', input: via('qcow2', ['-O', 'qcow2']), inFmt: 'qcow2', outFmt: 'raw' },
    {
      name: 'vmdk(streamOptimized)->raw',
      ext: 'stream.vmdk',
      input: via('stream.vmdk', ['-O', 'vmdk', '-o', 'subformat=streamOptimized']),
      inFmt: 'vmdk',
      outFmt: 'raw',
    },
    { name: 'vhdx->raw', ext: 'vhdx', input: via('vhdx', ['-O', 'vhdx']), inFmt: 'vhdx', outFmt: 'raw' },
    { name: 'raw->raw', ext: 'raw', input: raw, inFmt: 'raw', outFmt: 'raw' },
    { name: 'raw->qcow2', ext: 'raw', input: raw, inFmt: 'raw', outFmt: 'qcow2' },
    { name: 'raw->qcow2 -c (zlib)', ext: 'raw', input: raw, inFmt: 'raw', outFmt: 'qcow2', compress: true },
  ];
  const picked = (c: Case) => ONLY.some((o) => (o === 'uncompressed' ? !c.compress : c.name.includes(o)));
  if (ONLY.length) cases.splice(0, cases.length, ...cases.filter(picked));
  const startupMs = await measureStartup();
  const results: Array<Record<string, unknown>> = [];
  for (const c of cases) {
    try {
      const input = await c.input();
      const sOut = path.join(OUT, `strata.${c.outFmt}`);
      const qOut = path.join(OUT, `qemu.${c.outFmt}`);
      let bestS = Infinity;
      let bestQ = Infinity;
      let cpuS = Number.NaN;
      let cpuQ = Number.NaN;
      let bestW = Infinity;
      let sBytes = 0;
      let qBytes = 0;
      // every run's wall and CPU time: medians beside the best (CPU is the steadier figure on a busy machine)
      const sRuns: Array<{ ms: number; cpuMs: number }> = [];
      const qRuns: Array<{ ms: number; cpuMs: number }> = [];
      const load = loadavg()[0];
      for (let i = 0; i < RUNS; i++) {
        // Alternate who goes first so neither always meets a warmer page cache.
        const order = i % 2 === 0 ? ['strata', 'qemu'] : ['qemu', 'strata'];
        if (WORKERS && !c.compress) order.splice(1, 0, 'workers');
        for (const who of order) {
          // Only one output at a time: a 4 GiB output left on tmpfs by the other tool is memory
          // the running one does not have (the inputs' page cache gets reclaimed under it).
          rmSync(sOut, { force: true });
          rmSync(qOut, { force: true });
          if (who === 'workers') {
            const args = [...NODE_FLAGS, BIN, 'convert', '-f', c.inFmt, input, sOut, '-O', c.outFmt];
            const r = await runChild(process.execPath, args, { ...process.env, STRATA_NO_NATIVE_COPY: '1' });
            bestW = Math.min(bestW, r.ms);
          } else if (who === 'strata') {
            const args = [...NODE_FLAGS, BIN, 'convert', '-f', c.inFmt, input, sOut, '-O', c.outFmt];
            if (c.compress) args.push('-c');
            const r = await runChild(process.execPath, args);
            sRuns.push(r);
            if (r.ms < bestS) [bestS, cpuS] = [r.ms, r.cpuMs];
            sBytes = statSync(sOut).size;
            if (i === 0) await pexec('qemu-img', ['compare', '-f', c.inFmt, '-F', c.outFmt, input, sOut]);
          } else {
            const args = ['convert', '-f', c.inFmt, '-O', c.outFmt, ...(c.compress ? ['-c'] : []), input, qOut];
            const r = await runChild('qemu-img', args);
            qRuns.push(r);
            if (r.ms < bestQ) [bestQ, cpuQ] = [r.ms, r.cpuMs];
            qBytes = statSync(qOut).size;
          }
        }
      }
      const r = {
        case: c.name,
        bytes: SIZE,
        strataMBps: round((SIZE / 1e6 / bestS) * 1000),
        qemuMBps: round((SIZE / 1e6 / bestQ) * 1000),
        ratio: round(bestQ / bestS, 3),
        ratioLessStartup: round(bestQ / Math.max(1, bestS - startupMs), 3),
        strataMs: round(bestS),
        strataMsLessStartup: round(bestS - startupMs),
        qemuMs: round(bestQ),
        strataCpuMs: round(cpuS),
        qemuCpuMs: round(cpuQ),
        strataMedMs: round(median(sRuns.map((x) => x.ms))),
        qemuMedMs: round(median(qRuns.map((x) => x.ms))),
        ratioMed: round(median(qRuns.map((x) => x.ms)) / median(sRuns.map((x) => x.ms)), 3),
        strataCpuMedMs: round(median(sRuns.map((x) => x.cpuMs))),
        qemuCpuMedMs: round(median(qRuns.map((x) => x.cpuMs))),
        cpuRatioMed: round(median(qRuns.map((x) => x.cpuMs)) / median(sRuns.map((x) => x.cpuMs)), 3),
        load1: round(load, 2),
        load1End: round(loadavg()[0], 2),
        ...(Number.isFinite(bestW) ? { workersMs: round(bestW), ratioWorkers: round(bestQ / bestW, 3) } : {}),
        strataOutBytes: sBytes,
        qemuOutBytes: qBytes,
      };
      results.push(r);
      console.log(JSON.stringify(r));
    } catch (e) {
      const r = { case: c.name, error: ((e as Error).message ?? String(e)).split('\n')[0].slice(0, 400) };
      results.push(r);
      console.log(JSON.stringify(r));
    } finally {
      rmSync(path.join(OUT, 'strata.raw'), { force: true });
      rmSync(path.join(OUT, 'strata.qcow2'), { force: true });
      rmSync(path.join(OUT, 'qemu.raw'), { force: true });
      rmSync(path.join(OUT, 'qemu.qcow2'), { force: true });
      if (DROP_INPUTS && c.inFmt !== 'raw') rmSync(path.join(DIR, `mixed-${gib}g-v1.${c.ext}`), { force: true });
    }
  }
  const ok = results.filter((r) => typeof r.ratio === 'number');
  const uncompressed = ok.filter((r) => !String(r.case).includes('-c'));
  console.log(
    JSON.stringify({
      summary: true,
      bytes: SIZE,
      runs: RUNS,
      startupMs: round(startupMs),
      startupCpuMs: round(startupCpuMs),
      ...env,
      cases: results.length,
      failed: results.length - ok.length,
      minRatioUncompressed: uncompressed.length ? Math.min(...uncompressed.map((r) => r.ratio as number)) : null,
      minRatioLessStartupUncompressed: uncompressed.length
        ? Math.min(...uncompressed.map((r) => r.ratioLessStartup as number))
        : null,
      geomeanRatio: ok.length
        ? round(Math.exp(ok.reduce((s, r) => s + Math.log(r.ratio as number), 0) / ok.length), 3)
        : null,
    }),
  );
}

/** Strata's fixed cost per run: the best wall time of five `strata info` runs on a 1 MiB qcow2. */
async function measureStartup(): Promise<number> {
  const tiny = path.join(OUT, 'startup.qcow2');
  await pexec('qemu-img', ['create', '-q', '-f', 'qcow2', tiny, '1M']);
  let best = Infinity;
  let cpu = 0;
  for (let i = 0; i < 5; i++) {
    const r = await runChild(process.execPath, [BIN, 'info', tiny]);
    best = Math.min(best, r.ms);
    cpu += r.cpuMs;
  }
  rmSync(tiny, { force: true });
  startupCpuMs = cpu / 5;
  return best;
}

/** Mean CPU time (user + system) of those five runs. */
let startupCpuMs = Number.NaN;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
