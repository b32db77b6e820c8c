/**
 * Issue 22: `strata trace resolve` of the 200,000-entry ext4 image (made by mkfs.ext4 -d)
 * within `--memory 64M`: the map built into a scratch file and read on demand, the files
 * counted in typed arrays and sorted in runs spilled to disk. Its output (every access's
 * owners, then the summary) equals an unbounded run's byte for byte, its peak RSS stays
 * under a bound the held map (~240 MiB here before) does not meet, and the file each
 * sampled block is attributed to is the one debugfs names (`icheck` block -> inode,
 * `ncheck` inode -> path).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { prng } from '../helpers/fuzz.js';
import { largeTreeImage } from '../helpers/large-tree-pair.js';
import { ROOT, run, scratch } from '../helpers/tools.js';

const MiB = 2 ** 20;
const CLI = path.join(ROOT, 'dist', 'cli', 'strata.cjs');
/**
 * Peak RSS allowed with --memory 64M. Measured here (load ~20, 2 cores): 130 MiB (--summary)
 * with the map read from its scratch file; main's build, which held the map (its names as JS
 * strings) and an object per file, took 234 MiB for that and 241 MiB for this test's run.
 */
const RSS_BOUND = 190 * MiB;

/** The CLI under GNU time: exit status, stdout, stderr, peak RSS in bytes. */
function cliMeasured(args: string[], dir: string): { code: number; stdout: Buffer; stderr: string; maxRSS: number } {
  const rssFile = path.join(dir, `rss-${Date.now()}`);
  const r = spawnSync('/usr/bin/time', ['-f', '%M', '-o', rssFile, process.execPath, CLI, ...args], {
    maxBuffer: 512 * MiB,
  });
  const kb = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop());
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString(), maxRSS: kb * 1024 };
}

interface Owner {
  kind: string;
  inode?: number;
  path?: string;
  start: number;
  length: number;
}

test("trace resolve of 200,000 files within --memory 64M: the unbounded run's output, files as debugfs names them", async () => {
  const image = await largeTreeImage(200_000);
  const size = statSync(image).size;
  const dir = scratch('large-trace');
  const rnd = prng(22);
  const blocks = Math.floor(size / 4096);
  // 80 sampled blocks, one access each (checked against debugfs below), then the whole disk
  // in 128 KiB reads, then 20,000 random 4 KiB reads
  const samples: number[] = [];
  for (let k = 0; k < 80; k++) samples.push(rnd() % blocks);
  const lines = ['offset,length,time,op'];
  let t = 0;
  for (const b of samples) lines.push(`${b * 4096},4096,${t++},R`);
  for (let o = 0; o < size; o += 131072) lines.push(`${o},${Math.min(131072, size - o)},${t++},R`);
  for (let k = 0; k < 20_000; k++) lines.push(`${(rnd() % blocks) * 4096},4096,${t++},R`);
  const trace = path.join(dir, 'trace.csv');
  writeFileSync(trace, `${lines.join('\n')}\n`);

  const small = cliMeasured(['--memory', '64M', 'trace', 'resolve', image, trace, '--json'], dir);
  assert.equal(small.code, 0, small.stderr);
  const big = cliMeasured(['--memory', '4G', 'trace', 'resolve', image, trace, '--json'], dir);
  assert.equal(big.code, 0, big.stderr);
  assert.ok(small.stdout.equals(big.stdout), '--memory 64M output differs from the unbounded run');
  assert.ok(
    small.maxRSS < RSS_BOUND,
    `--memory 64M peaked at ${Math.round(small.maxRSS / MiB)} MiB RSS (bound ${RSS_BOUND / MiB})`,
  );

  const out = small.stdout.toString().trimEnd().split('\n');
  assert.equal(out.length, lines.length); // one line per access, then the summary
  const summary = JSON.parse(out[out.length - 1]).summary;
  assert.equal(summary.accesses, lines.length - 1);
  assert.ok(summary.byFile.length > 190_000, `${summary.byFile.length} files in the summary`);
  for (let i = 1; i < summary.byFile.length; i++) {
    const [a, b] = [summary.byFile[i - 1], summary.byFile[i]];
    assert.ok(a.bytes > b.bytes || (a.bytes === b.bytes && a.path <= b.path), `order at ${i}`);
  }

  // each sampled block: the owner Strata names against debugfs's inode and path for it
  const owners = samples.map((_, k) => JSON.parse(out[k]).owners as Owner[]);
  const icheck = await run('debugfs', ['-R', `icheck ${samples.join(' ')}`, image]);
  const inodeOf = new Map<number, number>();
  for (const m of icheck.matchAll(/^(\d+)\s+(\d+)$/gm)) inodeOf.set(Number(m[1]), Number(m[2]));
  const inodes = [...new Set(inodeOf.values())];
  const ncheck = await run('debugfs', ['-R', `ncheck ${inodes.join(' ')}`, image]);
  const pathsOf = new Map<number, string[]>();
  for (const m of ncheck.matchAll(/^(\d+)\s+(.+)$/gm)) {
    const l = pathsOf.get(Number(m[1])) ?? [];
    l.push(m[2].replace(/^\/+/, '/'));
    pathsOf.set(Number(m[1]), l);
  }
  let checked = 0;
  for (const [k, b] of samples.entries()) {
    assert.equal(owners[k].length, 1, `block ${b}: ${JSON.stringify(owners[k])}`);
    const o = owners[k][0];
    const ino = inodeOf.get(b);
    if (o.kind !== 'file' && o.kind !== 'directory') continue;
    assert.equal(o.inode, ino, `block ${b}: Strata says inode ${o.inode}, debugfs icheck ${ino}`);
    const names = pathsOf.get(ino as number) ?? [];
    assert.ok(names.includes(o.path as string), `block ${b}: Strata says ${o.path}, debugfs ncheck ${names}`);
    checked++;
  }
  assert.ok(checked >= 40, `${checked} of ${samples.length} sampled blocks were file or directory data`);
});
