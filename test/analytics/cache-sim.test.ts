import assert from 'node:assert/strict';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { simulateCache } from '../../src/analytics/cache-sim.js';
import type { BlockMap } from '../../src/blockmap/block-map.js';
import { blockMapOfImage } from '../../src/blockmap/of-image.js';
import { TraceResolver } from '../../src/blockmap/trace.js';
import { debugfsBlocks, icheck, runsOf, versionN } from '../deploy/profile-helpers.js';
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
    const fileOnly = { file: true, dir: false, meta: false, siblings: false };
    const intro = simulateCache(map, read, 'introspective', { ...opts, prefetch: fileOnly });
    assert.deepEqual(new Set(fetched(intro.log)), new Set(blocks.slice(0, 256)));
    assert.equal(intro.fetchedBytes, 1 << 20);
    // the bound holds: 64 KiB ahead is 16 blocks
    const small = simulateCache(map, read, 'introspective', { ...opts, prefetch: fileOnly, fileAhead: 64 << 10 });
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
    // the dir prefetcher alone (/fill has no subdirectories)
    const prefetch = { file: false, dir: true, meta: false, siblings: false };
    const r = simulateCache(fragMap, read, 'introspective', { cacheBytes: 64 << 20, prefetch, log: true });
    assert.deepEqual(new Set(fetched(r.log)), new Set(dir.slice(0, 64)));
    const b = simulateCache(fragMap, read, 'introspective', {
      cacheBytes: 64 << 20,
      prefetch,
      dirAhead: 2 * BS,
      log: true,
    });
    assert.deepEqual(new Set(fetched(b.log)), new Set([dir[0], dir[1], dir[2]]));
  });

  test('meta: a directory block read fetches the inode-table blocks of its entries (debugfs imap)', async () => {
    const dir = await debugfsBlocks(n, '/boot');
    const want = new Set([dir[0]]);
    for (const f of ['/boot/vmlinuz', '/boot/initrd.img']) {
      const m = /located at block (\d+)/.exec(await run('debugfs', ['-R', `imap ${f}`, n]));
      assert.ok(m, `debugfs imap ${f}`);
      want.add(Number(m[1]));
    }
    const only = { file: false, dir: false, meta: true, siblings: false };
    const r = simulateCache(map, [{ offset: dir[0] * BS, length: BS }], 'introspective', {
      cacheBytes: 64 << 20,
      prefetch: only,
      log: true,
    });
    assert.deepEqual(new Set(fetched(r.log)), want);
    // bounded: one inode-table block at most
    const b = simulateCache(map, [{ offset: dir[0] * BS, length: BS }], 'introspective', {
      cacheBytes: 64 << 20,
      prefetch: only,
      metaAhead: 1,
      log: true,
    });
    assert.equal(fetched(b.log).length, 2);
  });

  test('siblings: a small file read fetches the next files of its directory in disk order, within the budget', async () => {
    const f0 = await debugfsBlocks(frag, '/fill/f0');
    const r = simulateCache(fragMap, [{ offset: f0[0] * BS, length: BS }], 'introspective', {
      cacheBytes: 64 << 20,
      prefetch: { file: false, dir: false, meta: false, siblings: true },
      siblingsAhead: 8 * BS,
      log: true,
    });
    const got = fetched(r.log);
    assert.equal(got.length, 9);
    // debugfs icheck + ncheck: every block fetched is the data of a distinct file of /fill, after f0 on the disk
    const owners = await icheck(frag, got);
    const inodes = new Set([...owners.values()]);
    assert.equal(inodes.size, 9);
    const names = await run('debugfs', ['-R', `ncheck ${[...inodes].join(' ')}`, frag]);
    const paths = [...names.matchAll(/^\d+\s+(\S+)$/gm)].map((m) => m[1]);
    assert.equal(paths.length, 9, names);
    for (const p of paths) assert.match(p, /^\/fill\/f\d*[02468]$/);
    for (const b of got) if (b !== f0[0]) assert.ok(b > f0[0], `block ${b} comes after f0's`);
    // read-ahead fetched big.bin's blocks in between instead
    const ra = simulateCache(fragMap, [{ offset: f0[0] * BS, length: BS }], 'readahead', {
      cacheBytes: 64 << 20,
      readahead: 8,
      log: true,
    });
    const raOwners = new Set((await icheck(frag, fetched(ra.log))).values());
    assert.ok(raOwners.size > 1);
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
