import assert from 'node:assert/strict';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { simulateCache } from '../../src/analytics/cache-sim.js';
import type { BlockMap } from '../../src/blockmap/block-map.js';
import { blockMapOfImage } from '../../src/blockmap/of-image.js';
import { TraceResolver } from '../../src/blockmap/trace.js';
import { debugfsBlocks, runsOf, versionN } from '../deploy/profile-helpers.js';
import { bytesOf, canLoopMount, withRwMount } from '../helpers/ext-tree.js';
import { fixture, run } from '../helpers/tools.js';

/**
 * Issue 27's policies simulated on traces (src/analytics/cache-sim.ts): each prefetch
 * fetches exactly the blocks debugfs says the next step needs (a file's next bytes along its
 * own extents, a whole directory) and never more than its bound; the block LRU and
 * read-ahead fetch what a block server would; requests are classified as `trace resolve`
 * classifies them.
 */
const BS = 4096;
let n: string;
let map: BlockMap;
let frag: string;
let fragMap: BlockMap;

/** An ext4 filled with 4 KiB files through a kernel mount, every other one removed, then a 1 MiB file written into the holes. */
async function fragmented(): Promise<string> {
  return fixture('cachesim-frag-ext4-v1.img', async (out) => {
    assert.ok(canLoopMount(), 'root and a loop driver are needed');
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-O', '^has_journal', out, '16M']);
    await withRwMount(out, async (mnt) => {
      const d = path.join(mnt, 'fill');
      await run('mkdir', [d]);
      const block = bytesOf('fill', BS);
      try {
        for (let i = 0; i < 100000; i++) writeFileSync(path.join(d, `f${i}`), block);
      } catch {} // ENOSPC: full
      await run('sync', []);
      const names = readdirSync(d).filter((x) => Number(x.slice(1)) % 2 === 1);
      for (const x of names) rmSync(path.join(d, x));
      await run('sync', []);
      writeFileSync(path.join(mnt, 'big.bin'), bytesOf('big', 1 << 20));
      await run('sync', []);
    });
  });
}

before(async () => {
  n = await versionN();
  map = await blockMapOfImage(n);
  frag = await fragmented();
  fragMap = await blockMapOfImage(frag);
});

const fetched = (log: Array<[number, number]> | undefined) =>
  (log ?? []).flatMap(([b, k]) => Array.from({ length: k }, (_, i) => b + i));

describe('cache policies on traces', () => {
  test('a read of a file’s first block: LRU fetches it, read-ahead the disk’s next blocks, introspective the file’s next MiB', async () => {
    const blocks = await debugfsBlocks(n, '/boot/vmlinuz');
    const read = [{ offset: blocks[0] * BS, length: BS }];
    const opts = { cacheBytes: 64 << 20, log: true };
    assert.deepEqual(fetched(simulateCache(map, read, 'lru', opts).log), [blocks[0]]);
    assert.deepEqual(
      fetched(simulateCache(map, read, 'readahead', { ...opts, readahead: 32 }).log),
      Array.from({ length: 33 }, (_, i) => blocks[0] + i),
    );
    const intro = simulateCache(map, read, 'introspective', opts);
    assert.deepEqual(new Set(fetched(intro.log)), new Set(blocks.slice(0, 256)));
    assert.equal(intro.fetchedBytes, 1 << 20);
    // the bound holds: 64 KiB ahead is 16 blocks
    const small = simulateCache(map, read, 'introspective', { ...opts, fileAhead: 64 << 10 });
    assert.deepEqual(new Set(fetched(small.log)), new Set(blocks.slice(0, 16)));
    // the rest of the file then hits: a whole-file read waits once
    const whole = runsOf(blocks).map(([b, k]) => ({ offset: b * BS, length: k * BS }));
    const r = simulateCache(map, [...read, ...whole], 'introspective', { cacheBytes: 64 << 20, fileAhead: 2 << 20 });
    assert.equal(r.waits, 1);
  });

  test('across fragmentation: the file’s own extents (debugfs), not the disk’s next blocks', async () => {
    const blocks = await debugfsBlocks(frag, '/big.bin');
    const runs = runsOf(blocks);
    assert.ok(runs.length >= 8, `big.bin lies in ${runs.length} pieces`);
    const read = [{ offset: blocks[0] * BS, length: BS }];
    const intro = simulateCache(fragMap, read, 'introspective', {
      cacheBytes: 64 << 20,
      fileAhead: 128 << 10,
      log: true,
    });
    assert.deepEqual(new Set(fetched(intro.log)), new Set(blocks.slice(0, 32)));
    const ra = simulateCache(fragMap, read, 'readahead', { cacheBytes: 64 << 20, readahead: 31, log: true });
    const hitByRa = fetched(ra.log).filter((b) => blocks.slice(0, 32).includes(b)).length;
    assert.ok(hitByRa < 32, `read-ahead got ${hitByRa} of the file's next 32 blocks`);
  });

  test('a directory block read fetches the whole directory (debugfs blocks), bounded', async () => {
    const dir = await debugfsBlocks(frag, '/fill');
    assert.ok(dir.length > 4, `/fill has ${dir.length} blocks`);
    const read = [{ offset: dir[2] * BS, length: BS }];
    const r = simulateCache(fragMap, read, 'introspective', { cacheBytes: 64 << 20, log: true });
    assert.deepEqual(new Set(fetched(r.log)), new Set(dir.slice(0, 64)));
    const b = simulateCache(fragMap, read, 'introspective', { cacheBytes: 64 << 20, dirAhead: 2 * BS, log: true });
    assert.deepEqual(new Set(fetched(b.log)), new Set([dir[0], dir[1], dir[2]]));
  });

  test('requests are classified as trace resolve classifies them', () => {
    const reads: Array<{ offset: number; length: number }> = [];
    for (let o = 0; o < map.diskSize; o += 37 * 1024 + 512) reads.push({ offset: o, length: 1 });
    const resolver = new TraceResolver(map);
    for (const a of reads) resolver.count(a);
    const s = resolver.summary();
    const r = simulateCache(map, reads, 'introspective', { cacheBytes: 1 << 20 });
    for (const c of ['data', 'metadata', 'unused'] as const) {
      assert.equal(r.byClass[c].requests, s.byClass[c].accesses, c);
      assert.equal(r.byClass[c].bytes, s.byClass[c].bytes, c);
    }
    assert.equal(r.requests, reads.length);
  });

  test('bad sizes are refused', () => {
    assert.throws(() => simulateCache(map, [], 'lru', { cacheBytes: 100 }), /holds no block/);
    assert.throws(() => simulateCache(map, [], 'lru', { cacheBytes: 1 << 20, blockSize: 1000 }), /multiple of 512/);
  });
});
