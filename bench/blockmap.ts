/**
 * bench:blockmap — the block map of a >= 1 GiB ext4 image of a debootstrapped Debian tree,
 * against The Sleuth Kit answering the same question one block at a time, in one run.
 *
 * Set-up (cached under .cache/bench, or BENCH_DIR): the tree of bench/ls.ts
 * (`debootstrap --variant=minbase bookworm` into rootfs/, or `--rootfs DIR`), then
 * `mkfs.ext4 -b 4096 -d rootfs` into a 1200 MiB image. `--image FILE` benches another image.
 *
 * Figures (JSON lines on stdout):
 * - build: full map in-process (first build of the process, then best of --runs), and
 *   `strata blockmap IMAGE --summary` as a child process (Node start-up included);
 * - lookups: 100,000 random `whatis` (one byte each, Owner objects built) and raw indexOf;
 * - trace: 1,000,000 CSV records (offset,length,time,op) parsed from a file and resolved
 *   into the per-kind/class/file summary;
 * - tsk: 100 random blocks, `ifind -d BLOCK` then `ffind INODE` when one is found, per block,
 *   next to Strata's per-lookup time on the same blocks, and how many answers agree.
 */
import { spawn } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { buildBlockMap } from '../src/blockmap/build.js';
import { readTraceBatches, TraceResolver } from '../src/blockmap/trace.js';
import { openImage } from '../src/formats/open.js';
import { xorshift32 } from '../src/util/prng.js';
import { benchChildEnv, benchRootfs, CLI, need, opt, ROOT, sh } from './common.js';

const BENCH = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const RUNS = Number(opt('--runs') ?? 3);
const LOOKUPS = 100_000;
const TRACE = 1_000_000;
const TSK_BLOCKS = 100;

const log = (m: string) => process.stderr.write(`bench:blockmap: ${m}\n`);
const emit = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);

function setup(): string {
  const given = opt('--image') ?? process.env.BLOCKMAP_IMAGE;
  if (given) return path.resolve(given);
  mkdirSync(BENCH, { recursive: true });
  const image = path.join(BENCH, 'bookworm-minbase-1200m.ext4');
  if (existsSync(image)) return image;
  const rootfsGiven = opt('--rootfs');
  const rootfs = rootfsGiven && existsSync(rootfsGiven) ? rootfsGiven : benchRootfs(BENCH, log);
  need('mkfs.ext4', 'e2fsprogs');
  log(`mkfs.ext4 -d ${rootfs} into 1200 MiB (once)`);
  sh('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', 'bench-root', '-d', rootfs, `${image}.tmp`, '1200M']);
  renameSync(`${image}.tmp`, image);
  return image;
}

async function buildOnce(image: string) {
  const img = await openImage(image);
  try {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const map = await buildBlockMap(img);
    const c = process.cpuUsage(c0);
    return { map, ms: performance.now() - t0, cpuMs: (c.user + c.system) / 1000 };
  } finally {
    await img.close();
  }
}

function timedChild(cmd: string, argv: string[]): Promise<{ ms: number; out: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const c = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b));
    c.on('error', reject);
    c.on('close', (code) =>
      code === 0 ? resolve({ ms: performance.now() - t0, out }) : reject(new Error(`${cmd} exited ${code}`)),
    );
  });
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  console.log(JSON.stringify(env));
  need('ifind', 'sleuthkit');
  const image = setup();
  const first = await buildOnce(image);
  let best = first.ms;
  let bestCpu = first.cpuMs;
  for (let i = 1; i < RUNS; i++) {
    const b = await buildOnce(image);
    best = Math.min(best, b.ms);
    bestCpu = Math.min(bestCpu, b.cpuMs);
  }
  const map = first.map;
  let cliMs = Number.POSITIVE_INFINITY;
  for (let i = 0; i < RUNS; i++)
    cliMs = Math.min(cliMs, (await timedChild('node', [CLI, 'blockmap', image, '--summary'])).ms);
  emit({
    case: 'build',
    image,
    diskBytes: map.diskSize,
    records: map.count,
    firstBuildMs: Math.round(first.ms),
    bestBuildMs: Math.round(best),
    firstBuildCpuMs: Math.round(first.cpuMs),
    bestBuildCpuMs: Math.round(bestCpu),
    cliMs: Math.round(cliMs),
    targetMs: 2000,
    load1: loadavg()[0],
  });

  // lookups
  const rnd = xorshift32(12345);
  const offsets = new Float64Array(LOOKUPS);
  for (let i = 0; i < LOOKUPS; i++) offsets[i] = Math.floor((rnd() / 2 ** 32) * map.diskSize);
  let sink = 0;
  let t0 = performance.now();
  for (let i = 0; i < LOOKUPS; i++) sink += map.whatis(offsets[i], 1).length;
  const whatisMs = performance.now() - t0;
  t0 = performance.now();
  for (let r = 0; r < 10; r++) for (let i = 0; i < LOOKUPS; i++) sink += map.indexOf(offsets[i]);
  const indexMs = (performance.now() - t0) / 10;
  emit({
    case: 'lookups',
    lookups: LOOKUPS,
    whatisPerSec: Math.round(LOOKUPS / (whatisMs / 1000)),
    indexOfPerSec: Math.round(LOOKUPS / (indexMs / 1000)),
    target: 1_000_000,
    sink: sink % 7,
  });

  // trace: 1M records, 4 KiB-aligned, 4..64 KiB long, in CSV
  const traceFile = path.join(BENCH, 'blockmap-trace-1m.csv');
  if (!existsSync(traceFile)) {
    const lines: string[] = ['offset,length,time,op'];
    const r2 = xorshift32(777);
    for (let i = 0; i < TRACE; i++) {
      const off = Math.floor((r2() / 2 ** 32) * (map.diskSize / 4096)) * 4096;
      const len = 4096 * (1 + (r2() % 16));
      lines.push(`${off},${Math.min(len, map.diskSize - off)},${i},${r2() % 4 === 0 ? 'W' : 'R'}`);
    }
    writeFileSync(`${traceFile}.tmp`, `${lines.join('\n')}\n`);
    renameSync(`${traceFile}.tmp`, traceFile);
  }
  const tc0 = process.cpuUsage();
  t0 = performance.now();
  const resolver = new TraceResolver(map);
  for await (const batch of readTraceBatches(createReadStream(traceFile, { highWaterMark: 1 << 20 }), traceFile)) {
    resolver.countBatch(batch);
  }
  const summary = resolver.summary();
  const traceMs = performance.now() - t0;
  const tc = process.cpuUsage(tc0);
  emit({
    case: 'trace',
    records: summary.accesses,
    traceMs: Math.round(traceMs),
    traceCpuMs: Math.round((tc.user + tc.system) / 1000),
    targetMs: 2000,
    files: summary.byFile.length,
    dataBytes: summary.byClass.data.bytes,
    metadataBytes: summary.byClass.metadata.bytes,
  });

  // The Sleuth Kit, one block at a time
  const bs = 4096;
  const r3 = xorshift32(99);
  const blocks: number[] = [];
  for (let i = 0; i < TSK_BLOCKS; i++) blocks.push(Math.floor((r3() / 2 ** 32) * (map.diskSize / bs)));
  let agree = 0;
  let tskMs = 0;
  for (const b of blocks) {
    const f = await timedChild('ifind', ['-d', String(b), image]);
    tskMs += f.ms;
    const ino = /^\d+$/.test(f.out.trim()) ? Number(f.out.trim()) : undefined;
    let names: string[] = [];
    if (ino !== undefined) {
      const n = await timedChild('ffind', ['-a', image, String(ino)]);
      tskMs += n.ms;
      names = n.out.split('\n').filter((l) => l.startsWith('/'));
    }
    const o = map.whatis(b * bs, 1)[0];
    const mine =
      o.kind === 'file' || o.kind === 'directory' || o.kind === 'journal' || o.kind === 'extent-tree'
        ? o.inode
        : undefined;
    if (mine === ino && (names.length === 0 || o.path === undefined || names.includes(o.path))) agree++;
  }
  t0 = performance.now();
  for (let r = 0; r < 1000; r++) for (const b of blocks) sink += map.whatis(b * bs, 1).length;
  const strataPerBlockMs = (performance.now() - t0) / (1000 * blocks.length);
  const tskPerBlockMs = tskMs / blocks.length;
  emit({
    case: 'tsk-per-block',
    blocks: blocks.length,
    tskPerBlockMs: Number(tskPerBlockMs.toFixed(2)),
    strataPerBlockMs: Number(strataPerBlockMs.toFixed(6)),
    ratio: Math.round(tskPerBlockMs / strataPerBlockMs),
    agree,
    strataBuildPlusAllMs: Math.round(first.ms + strataPerBlockMs * blocks.length),
    tskAllMs: Math.round(tskMs),
    load1: loadavg()[0],
  });
}

main().catch((e) => {
  process.stderr.write(`bench:blockmap: ${e?.stack ?? e}\n`);
  process.exit(1);
});
