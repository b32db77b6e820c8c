/**
 * bench:ntfs-walk — in-process CPU time of opening an NTFS image and walking it as `strata ls -R
 * -l` does (walkBatches: every directory listed, every inode loaded), a fresh reader each round,
 * best of --runs N (default 5). CPU time (process.cpuUsage), so it holds still on a loaded
 * machine where wall times do not; bench:fat-iso gives the wall-time ratio against fls.
 *
 *     node dist/bench/ntfs-walk.js IMAGE [--runs N] [--profile FILE] [--cold-profile FILE]
 */

import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { NtfsFileSystem } from '../src/fs/ntfs/index.js';
import { FileSource } from '../src/io/file-source.js';
import { walkBatches } from '../src/library/listing.js';
import { opt } from './common.js';

const image = process.argv[2];
if (!image || image.startsWith('--')) throw new Error('usage: ntfs-walk IMAGE [--runs N] [--profile FILE]');
const RUNS = Number(opt('--runs') ?? 5);

async function once(): Promise<{ cpuMs: number; wallMs: number; entries: number }> {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const src = await FileSource.open(image);
  let entries = 0;
  try {
    const fs = await NtfsFileSystem.open(src);
    const root = await fs.root();
    for await (const batch of walkBatches(fs, '/', root, { recursive: true })) entries += batch.length;
  } finally {
    await src.close();
  }
  const c = process.cpuUsage(c0);
  return { cpuMs: (c.user + c.system) / 1000, wallMs: Number(process.hrtime.bigint() - t0) / 1e6, entries };
}

async function profiled<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const s = new Session();
  s.connect();
  await s.post('Profiler.enable');
  await s.post('Profiler.setSamplingInterval', { interval: 100 });
  await s.post('Profiler.start');
  const r = await fn();
  const { profile } = await s.post('Profiler.stop');
  writeFileSync(file, JSON.stringify(profile));
  return r;
}

async function main(): Promise<void> {
  // the first round is cold (as in the CLI, which walks once): its CPU time is reported apart
  const coldFile = opt('--cold-profile');
  const cold = coldFile ? await profiled(coldFile, once) : await once();
  let best = { cpuMs: Number.POSITIVE_INFINITY, wallMs: Number.POSITIVE_INFINITY, entries: 0 };
  for (let i = 0; i < RUNS; i++) {
    const r = await once();
    best = { cpuMs: Math.min(best.cpuMs, r.cpuMs), wallMs: Math.min(best.wallMs, r.wallMs), entries: r.entries };
  }
  const out = opt('--profile');
  if (out)
    await profiled(out, async () => {
      for (let i = 0; i < 3; i++) await once();
    });
  console.log(
    JSON.stringify({
      case: 'ntfs walk (ls -R -l, in process)',
      image,
      entries: best.entries,
      coldCpuMs: Math.round(cold.cpuMs * 10) / 10,
      cpuMs: Math.round(best.cpuMs * 10) / 10,
      wallMs: Math.round(best.wallMs * 10) / 10,
      runs: RUNS,
    }),
  );
}

main().catch((e) => {
  process.stderr.write(`bench:ntfs-walk: ${(e as Error).stack}\n`);
  process.exitCode = 1;
});
