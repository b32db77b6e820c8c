/**
 * `strata analytics similarity` and `dedup` on a real library: three ext4 images made by
 * mkfs.ext4 -d from trees of FILES files of 64 KiB (same names, sizes and times, mkfs run
 * with a fixed UUID, hash seed and clock, so it lays them out alike): a base, a derived
 * tree where every CHANGE_EVERY-th file has new contents (a known changed share: those
 * files' blocks) and an unrelated tree (every file's contents new). The oracle is a
 * test-side count over the versions checked out again (`strata checkout`), block by block
 * (a cmp of the two disks in 4 KiB blocks), on the blocks dumpe2fs says B uses.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, openSync, readSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { strata } from '../helpers/cli.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { usedBlocks } from '../helpers/inspect-pair.js';
import { fixture, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

const FILES = 240;
const CHANGE_EVERY = 8;
const FILE_BYTES = 64 * 1024;

/** FILES files in 4 folders; file i's bytes from `seed` when `changed(i)`, else from 'base'. */
function makeTree(dir: string, seed: string, changed: (i: number) => boolean): void {
  const when = new Date('2026-01-01T00:00:00Z');
  for (let d = 0; d < 4; d++) mkdirSync(path.join(dir, `d${d}`), { recursive: true });
  for (let i = 0; i < FILES; i++) {
    const f = path.join(dir, `d${i % 4}`, `f${String(i).padStart(3, '0')}.bin`);
    writeFileSync(f, bytesOf(`${changed(i) ? seed : 'base'}:${i}`, FILE_BYTES));
    utimesSync(f, when, when);
  }
  for (let d = 0; d < 4; d++) utimesSync(path.join(dir, `d${d}`), when, when);
  utimesSync(dir, when, when);
}

async function image(name: string, changed: (i: number) => boolean): Promise<string> {
  return fixture(`analytics-sim-${name}-v1.img`, async (out) => {
    const tree = `${out}.tree`;
    try {
      makeTree(tree, name, changed);
      const id = '5b2e4c1a-7d3f-4e8a-9c0b-1f2e3d4c5b6a';
      await run('env', [
        'E2FSPROGS_FAKE_TIME=1767225600',
        'mkfs.ext4',
        '-q',
        '-F',
        '-b',
        '4096',
        '-U',
        id,
        '-E',
        `hash_seed=${id},root_owner=0:0`,
        '-d',
        tree,
        out,
        '32M',
      ]);
    } finally {
      rmSync(tree, { recursive: true, force: true });
    }
  });
}

let dir: string;
let libDir: string;
const disks: Record<string, string> = {};

function block(fd: number, i: number, bs: number): Buffer {
  const b = Buffer.alloc(bs);
  readSync(fd, b, 0, bs, i * bs);
  return b;
}

/** Blocks B's file system uses (dumpe2fs), and of them those whose bytes differ from A's (cmp). */
async function count(
  a: string,
  b: string,
): Promise<{ used: number; differ: number; differNonZero: number; nonZero: number }> {
  const ub = await usedBlocks(b);
  // cmp's own answer first: the disks differ, and in how many bytes
  const cmp = await run('sh', ['-c', `cmp -l "${a}" "${b}" | wc -l`]);
  assert.ok(Number(cmp.trim()) > 0);
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const zero = Buffer.alloc(ub.bs);
  let differ = 0;
  let differNonZero = 0;
  let nonZero = 0;
  try {
    for (const i of ub.blocks) {
      const x = block(fa, i, ub.bs);
      const y = block(fb, i, ub.bs);
      const nz = !y.equals(zero);
      if (nz) nonZero++;
      if (!x.equals(y)) {
        differ++;
        if (nz) differNonZero++;
      }
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return { used: ub.blocks.length, differ, differNonZero, nonZero };
}

interface Sim {
  versions: string[];
  matrix: Array<Array<number | null>>;
  best: Array<{ version: string; base: string | null; writeShare: number | null; usedBlocks: number }>;
  histogram: number[];
}

describe('strata analytics similarity and dedup on a library', { timeout: 900_000 }, () => {
  let sim: Sim;
  before(async () => {
    dir = tempDir('analytics-sim-lib');
    libDir = path.join(dir, 'lib');
    const images = {
      base: await image('base', () => false),
      derived: await image('derived', (i) => i % CHANGE_EVERY === 0),
      other: await image('other', () => true),
    };
    const lib = await Library.open(libDir);
    try {
      for (const [name, img] of Object.entries(images)) await checkin(lib, img, { name });
    } finally {
      await lib.close();
    }
    for (const name of Object.keys(images)) {
      disks[name] = path.join(dir, `${name}.raw`);
      const r = await strata(['checkout', `${name}@1`, disks[name], '--library', libDir]);
      assert.equal(r.code, 0, r.stderr);
    }
    const r = await strata([
      'analytics',
      'similarity',
      '--library',
      libDir,
      '--json',
      '--svg',
      path.join(dir, 's.svg'),
    ]);
    assert.equal(r.code, 0, r.stderr);
    sim = JSON.parse(r.stdout);
  });

  test('the derived version’s closest base is the base, its share to write bounded by the block count of the disks', async () => {
    assert.deepEqual(sim.versions, ['base@1', 'derived@1', 'other@1']);
    const d = sim.best.find((b) => b.version === 'derived@1');
    assert.equal(d?.base, 'base@1');
    const c = await count(disks.base, disks.derived);
    // B stores its allocated non-zero blocks
    assert.ok((d?.usedBlocks as number) >= c.nonZero && (d?.usedBlocks as number) <= c.used, JSON.stringify({ d, c }));
    const write = Math.round((d?.writeShare as number) * (d?.usedBlocks as number));
    // by construction: the changed files' blocks, and the inode-table blocks of the tree's inodes
    // (mkfs -d copies each file's ctime from the host, which no one can set: every inode differs)
    const d2 = await run('dumpe2fs', ['-h', disks.derived]);
    const inodeSize = Number(/^Inode size:\s+(\d+)/m.exec(d2)?.[1]);
    const firstInode = Number(/^First inode:\s+(\d+)/m.exec(d2)?.[1]);
    const lastInode = firstInode + 4 + FILES; // lost+found is firstInode, then 4 folders and the files
    const changedBlocks =
      Math.ceil(FILES / CHANGE_EVERY) * (FILE_BYTES / 4096) + Math.ceil((lastInode * inodeSize) / 4096);
    assert.equal(c.differ, changedBlocks, JSON.stringify(c));
    // every stored block that differs is written; whole 64 KiB files are whole chunks, so no equal data
    // block is; metadata is stored in 64 KiB chunks (16 blocks) not aligned to the inode table, so its one
    // changed run may carry up to a chunk's worth of equal blocks at each end (diffLayouts says so)
    assert.ok(write >= c.differNonZero, JSON.stringify({ write, c }));
    assert.ok(write <= c.differ + 2 * 16, JSON.stringify({ write, c }));
    console.log(JSON.stringify({ write, usedBlocks: d?.usedBlocks, ...c }));
  });

  test('the unrelated image shares much less with either than the derived one with its base', async () => {
    const i = sim.versions.indexOf('other@1');
    const d = sim.versions.indexOf('derived@1');
    const b = sim.versions.indexOf('base@1');
    const otherFromBase = sim.matrix[i][b] as number;
    const derivedFromBase = sim.matrix[d][b] as number;
    assert.ok(otherFromBase > derivedFromBase + 0.3, JSON.stringify(sim.matrix));
    const c = await count(disks.base, disks.other);
    assert.ok(Math.round(otherFromBase * (sim.best[i].usedBlocks as number)) >= c.differNonZero);
    for (let k = 0; k < 3; k++) assert.equal(sim.matrix[k][k], null);
    assert.equal(
      sim.histogram.reduce((s, n) => s + n, 0),
      3,
    );
    const svg = await run('python3', [
      '-c',
      'import sys, xml.etree.ElementTree as ET; print(sum(1 for e in ET.parse(sys.argv[1]).getroot().iter() if e.get("class") == "cell"))',
      path.join(dir, 's.svg'),
    ]);
    assert.equal(Number(svg.trim()), 9);
  });

  test('the same share as `strata diff --blocks`', async () => {
    const r = await strata(['diff', 'base@1', 'derived@1', '--blocks', '--json', '--library', libDir]);
    assert.ok(r.code === 0 || r.code === 1, r.stderr);
    const d = sim.best.find((b) => b.version === 'derived@1');
    assert.equal(JSON.parse(r.stdout).blocks.writeShare, d?.writeShare);
  });

  test('dedup: what each version added against what it stores alone; the derived one added its changed files', async () => {
    const r = await strata(['analytics', 'dedup', '--library', libDir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    let stored = 0;
    let added = 0;
    const by: Record<string, { storedBytes: number; newBytes: number }> = {};
    for (const name of ['base', 'derived', 'other']) {
      const v = JSON.parse((await strata(['versions', name, '--json', '--library', libDir])).stdout.split('\n')[0]);
      by[name] = v;
      stored += v.storedBytes;
      added += v.newBytes;
    }
    assert.equal(j.versions, 3);
    assert.equal(j.fullBytes, stored);
    assert.equal(j.deltaBytes, added);
    assert.ok(Math.abs(j.savedShare - (1 - added / stored)) < 1e-12);
    // by construction: the derived tree's new contents are its changed files (random, so incompressible)
    // plus metadata chunks; the base shared nothing with an empty store
    const changed = Math.ceil(FILES / CHANGE_EVERY) * FILE_BYTES;
    assert.ok(by.derived.newBytes >= changed && by.derived.newBytes <= changed + 512 * 1024, JSON.stringify(by));
    assert.equal(by.base.newBytes, by.base.storedBytes);
  });
});
