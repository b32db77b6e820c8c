import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { fixture, run } from '../helpers/tools.js';

/** A small tree touching every structure: nested and indexed dirs, extents, xattrs, symlinks. */
async function fuzzTree(): Promise<string> {
  return fixture('ext-fuzz-tree-v1', async (d) => {
    mkdirSync(path.join(d, 'a', 'b', 'c'), { recursive: true });
    writeFileSync(path.join(d, 'a', 'b', 'c', 'deep.txt'), 'deep\n');
    mkdirSync(path.join(d, 'many'));
    for (let i = 0; i < 300; i++) writeFileSync(path.join(d, 'many', `file-${i}-${'n'.repeat(i % 30)}`), `${i}\n`);
    const f = path.join(d, 'fragmented');
    writeFileSync(f, '');
    const fd = openSync(f, 'r+');
    for (let i = 0; i < 400; i++) writeSync(fd, Buffer.from([i & 0xff]), 0, 1, i * 8192);
    closeSync(fd);
    writeFileSync(path.join(d, 'small'), 'tiny');
    writeFileSync(path.join(d, 'medium'), Buffer.alloc(70_000, 3));
    symlinkSync('small', path.join(d, 'fast-link'));
    symlinkSync('a/'.repeat(40) + 'x', path.join(d, 'slow-link'));
    spawnSync('setfattr', ['-n', 'user.k', '-v', 'v'.repeat(300), path.join(d, 'small')]);
  });
}

interface FuzzImage {
  name: string;
  mkfs: string;
  args: string[];
}

const IMAGES: FuzzImage[] = [
  { name: 'ext4-4k', mkfs: 'mkfs.ext4', args: ['-b', '4096'] },
  { name: 'ext4-1k-inline', mkfs: 'mkfs.ext4', args: ['-b', '1024', '-O', 'inline_data'] },
  { name: 'ext3-1k', mkfs: 'mkfs.ext3', args: ['-b', '1024'] },
  { name: 'ext2-4k', mkfs: 'mkfs.ext2', args: ['-b', '4096'] },
];
const CASES_PER_IMAGE = 110;

async function image(spec: FuzzImage): Promise<string> {
  const tree = await fuzzTree();
  return fixture(`ext-fuzz-${spec.name}-v1.img`, async (out) => {
    writeFileSync(out, '');
    truncateSync(out, 8 << 20);
    await run(spec.mkfs, ['-q', '-F', ...spec.args, '-d', tree, out]);
    // index the big directory (htree) the way e2fsck -D does
    const r = spawnSync('e2fsck', ['-fyD', out]);
    if (r.status !== 0 && r.status !== 1) throw new Error(`e2fsck -fyD failed: ${r.status}`);
  });
}

/** Interesting regions located with dumpe2fs and debugfs (not with the code under test). */
async function regions(img: string): Promise<Array<[number, number]>> {
  const dump = await run('dumpe2fs', [img]);
  const bs = Number(/Block size:\s+(\d+)/.exec(dump)![1]);
  const isz = Number(/Inode size:\s+(\d+)/.exec(dump)![1]);
  const out: Array<[number, number]> = [[1024, 2048]];
  const gd = /Group descriptors at (\d+)-(\d+)/.exec(dump)!;
  out.push([Number(gd[1]) * bs, (Number(gd[2]) + 1) * bs]);
  const it = /Inode table at (\d+)-(\d+)/.exec(dump)!;
  out.push([Number(it[1]) * bs, Number(it[1]) * bs + 40 * isz]);
  out.push([Number(it[1]) * bs + 300 * isz, Number(it[1]) * bs + 340 * isz]);
  for (const p of ['/', '/many', '/a/b', '/fragmented', '/slow-link']) {
    const blocks = (await run('debugfs', ['-R', `blocks ${p}`, img])).trim().split(/\s+/).filter(Boolean).map(Number);
    for (const b of blocks.slice(0, 4)) out.push([b * bs, (b + 1) * bs]);
  }
  return out;
}

async function exercise(fs: FileSystem): Promise<void> {
  await fs.info();
  for await (const it of walk(fs, await fs.root(), '/')) {
    const i = it.inode;
    if (i.type === 'file') {
      await fs.read(i, 0, Math.min(i.size, 1 << 20));
      for await (const _ of fs.extents(i)) {
        // drain
      }
    }
    if (i.type === 'symlink') await fs.readlink(i);
    await fs.xattrs(i);
  }
  await fs.allocation();
  for await (const _ of fs.metadataRegions()) {
    // drain
  }
}

for (const spec of IMAGES) {
  test(`ext fuzz ${spec.name}: ${CASES_PER_IMAGE} mutated images open, walk and read cleanly or fail with StrataError`, async (t) => {
    const img = await image(spec);
    const bytes = new Uint8Array(readFileSync(img));
    // the unmutated image must pass the same exercise without warnings
    const clean = await openFileSystem(new MemorySource(bytes, `${spec.name}.img`));
    await exercise(clean);
    assert.deepEqual(clean.warnings, []);
    const regs = await regions(img);
    const failures: string[] = [];
    let opened = 0;
    let completed = 0;
    for (let c = 0; c < CASES_PER_IMAGE; c++) {
      const seed = 0x5eed0000 + c * 7919 + spec.name.length;
      const m = mutate(bytes, regs, prng(seed));
      const src = new MemorySource(m, `${spec.name}-fuzz-${c}.img`);
      const outcome = await expectCleanOutcome(async () => {
        const fs = await openFileSystem(src);
        opened++;
        await exercise(fs);
        completed++;
      }, 5000);
      if (outcome) failures.push(`case ${c} (seed ${seed}): ${outcome}`);
    }
    t.diagnostic(`${opened} opened, ${completed} walked and read completely, ${CASES_PER_IMAGE - completed} refused`);
    assert.deepEqual(failures, []);
    assert.ok(opened > CASES_PER_IMAGE / 4, `most mutations still open (${opened})`);
  });
}
