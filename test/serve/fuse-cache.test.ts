/**
 * The FUSE session's block cache (src/serve/fuse/cache.ts) bounded by the bytes it holds: a
 * small file's one block costs its size, not a whole block (it was counted as 128 KiB, so a
 * cache of small files held far fewer than its bound and its bound said nothing of its bytes),
 * and its default size is the memory budget's share (util/memory.ts SHARES.fuseBlocks). The
 * bytes read are checked against the file's own (made here, not by the cache).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockCache, newReadAhead } from '../../src/serve/fuse/cache.js';
import type { MountNode, MountTree } from '../../src/serve/fuse/tree.js';
import { memoryShare, resetMemoryBudget, SHARES, setMemoryBudget, shareOf } from '../../src/util/memory.js';

const BLOCK = 128 << 10;

/** A file's byte at `i`: from its key and offset, so each file's bytes are its own. */
const byteOf = (key: number, i: number) => (key * 31 + i * 7) & 0xff;

function fakeTree(): { tree: MountTree; reads: () => number } {
  let reads = 0;
  const no = () => Promise.reject(new Error('not in this test'));
  const tree: MountTree = {
    name: 'fake',
    readBlock: BLOCK,
    root: no,
    lookup: no,
    list: no,
    nodes: no,
    readlink: no,
    xattrs: no,
    statfs: no,
    close: async () => {},
    async read(node, offset, length) {
      reads++;
      const end = Math.min(node.attr.size, offset + length);
      const out = new Uint8Array(Math.max(0, end - offset));
      for (let i = 0; i < out.length; i++) out[i] = byteOf(node.key, offset + i);
      return out;
    },
  };
  return { tree, reads: () => reads };
}

function file(key: number, size: number): MountNode {
  const t = { sec: 0, nsec: 0 };
  return {
    key,
    type: 'file',
    attr: {
      ino: key,
      size,
      blocks: 0,
      atime: t,
      mtime: t,
      ctime: t,
      mode: 0o644,
      nlink: 1,
      uid: 0,
      gid: 0,
      rdev: 0,
      blksize: 4096,
    },
  };
}

test('block cache: small files cost their size, so a 1 MiB cache keeps 200 files of 4 KiB', async () => {
  const { tree, reads } = fakeTree();
  const cache = new BlockCache(tree, 1 << 20);
  const files = Array.from({ length: 200 }, (_, k) => file(k + 1, 4096));
  for (const f of files) await cache.read(f, 0, 4096);
  assert.equal(reads(), 200);
  for (const f of files) {
    const b = await cache.read(f, 0, 4096);
    assert.equal(b.length, 4096);
    for (const i of [0, 1, 4095]) assert.equal(b[i], byteOf(f.key, i));
  }
  // 200 x 4 KiB = 800 KiB: all kept (counted as 128 KiB blocks, 8 of them were)
  assert.equal(reads(), 200, 'every file read again came from the cache');
  assert.equal(cache.hits, 200);
});

test('block cache: whole blocks still bound it (a 1 MiB cache keeps at most 8 blocks of a large file)', async () => {
  const { tree, reads } = fakeTree();
  const cache = new BlockCache(tree, 1 << 20, 0);
  const big = file(7, 64 * BLOCK);
  for (let b = 0; b < 64; b++) await cache.read(big, b * BLOCK, BLOCK);
  assert.equal(reads(), 64);
  await cache.read(big, 0, BLOCK);
  assert.equal(reads(), 65, 'the first block was evicted');
  await cache.read(big, 63 * BLOCK, BLOCK);
  assert.equal(reads(), 65, 'the last one was kept');
});

test('block cache: a read across blocks is copied into the given buffer when it fits, with the file`s bytes', async () => {
  const { tree } = fakeTree();
  const cache = new BlockCache(tree, 8 << 20);
  const big = file(9, 10 * BLOCK);
  const into = new Uint8Array(1 << 20);
  const offset = BLOCK - 100;
  const got = await cache.read(big, offset, 3 * BLOCK, newReadAhead(), into);
  assert.equal(got.buffer, into.buffer, 'the given buffer');
  assert.equal(got.length, 3 * BLOCK);
  for (const i of [0, 99, 100, 2 * BLOCK, 3 * BLOCK - 1]) assert.equal(got[i], byteOf(9, offset + i));
  const small = new Uint8Array(1000);
  const other = await cache.read(big, offset, 3 * BLOCK, undefined, small);
  assert.notEqual(other.buffer, small.buffer, 'too small: a buffer of its own');
  assert.deepEqual(other, got);
});

test('block cache: its default size is the budget`s share (a sixteenth, 8 MiB to 64 MiB)', () => {
  try {
    setMemoryBudget(64 << 20, false);
    assert.equal(shareOf('fuseBlocks'), 8 << 20);
    setMemoryBudget(1 << 30, false);
    assert.equal(shareOf('fuseBlocks'), 64 << 20);
    setMemoryBudget(256 << 20, false);
    assert.equal(shareOf('fuseBlocks'), memoryShare(...SHARES.fuseBlocks));
    assert.equal(shareOf('fuseBlocks'), 16 << 20);
  } finally {
    resetMemoryBudget();
  }
});
