import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BlockMap } from '../../src/blockmap/block-map.js';
import { BlockMapIntrospector } from '../../src/blockmap/introspector.js';
import { classOf, type Kind } from '../../src/blockmap/kinds.js';
import { blockMapOfImage } from '../../src/blockmap/of-image.js';
import type { ByteSource } from '../../src/io/byte-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { FilterSource, type Unwrapped } from '../../src/io/filter-source.js';
import { IntrospectiveCache, type IntrospectiveCacheOptions } from '../../src/io/introspective-cache.js';
import { debugfsBlocks, profileLibrary, qemuIoReads, strataNbd } from '../deploy/profile-helpers.js';
import { strata } from '../helpers/cli.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { fixture, ROOT, run } from '../helpers/tools.js';

/**
 * The live introspective cache (issue 27, src/io/introspective-cache.ts with the block
 * map's prefetchers, src/blockmap/introspector.ts): each prefetcher, on an ext4 made by
 * mkfs.ext4 -d from a generated tree, fetches exactly the blocks debugfs says the next step
 * needs and never more than its bound, in the background; `strata nbd --cache-policy
 * introspective` classifies every traced request as `strata trace resolve` does, and serves
 * the image's bytes (nbdcopy, qemu-img compare) with every prefetcher on, through an overlay
 * taking writes, and for a library version.
 */
const BS = 4096;
const CLI = path.join(ROOT, 'dist/cli/strata.cjs');
/** /d: 60 small files (1-11 KiB, every entry owns data), two subdirectories; /big: 3 MiB. */
const SMALL = 60;

async function tree(): Promise<string> {
  return fixture('livecache-tree-v1', async (out) => {
    const put = (p: string, n: number) => {
      const f = path.join(out, p);
      mkdirSync(path.dirname(f), { recursive: true });
      writeFileSync(f, bytesOf(`livecache:${p}`, n));
    };
    for (let i = 0; i < SMALL; i++)
      put(`d/file-${String(i).padStart(3, '0')}-with-a-longer-name`, 1000 + ((i * 997) % 10) * 1024);
    for (let i = 0; i < 5; i++) put(`d/sub1/s${i}`, 5000);
    for (let i = 0; i < 5; i++) put(`d/sub2/t${i}`, 7000);
    put('big', 3 << 20);
  });
}

async function image(): Promise<string> {
  const t = await tree();
  return fixture('livecache-ext4-v1.img', async (out) => {
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', t, out, '32M']);
  });
}

/** Reads of the source under the cache, as blocks; reads may be held until released. */
class Recorder extends FilterSource {
  readonly name: string;
  readonly size: number;
  blocks: number[] = [];
  bytes = 0;
  reads = 0;
  running = 0;
  peak = 0;
  /** Reads at these offsets are held until release(). */
  hold?: (offset: number) => boolean;
  private held: Array<() => void> = [];
  constructor(private readonly inner: ByteSource) {
    super();
    this.name = inner.name;
    this.size = inner.size;
  }
  unwrap(): Unwrapped {
    return { source: this.inner, offset: 0 };
  }
  release(): void {
    this.hold = undefined;
    for (const r of this.held.splice(0)) r();
  }
  protected override async readRange(offset: number, n: number): Promise<Uint8Array> {
    this.reads++;
    this.bytes += n;
    for (let b = Math.floor(offset / BS); b * BS < offset + n; b++) this.blocks.push(b);
    this.running++;
    this.peak = Math.max(this.peak, this.running);
    try {
      if (this.hold?.(offset)) await new Promise<void>((r) => this.held.push(r));
      return await super.readRange(offset, n);
    } finally {
      this.running--;
    }
  }
}

let img: string;
let map: BlockMap;
let file: FileSource;
let tmp: string;

before(async () => {
  img = await image();
  map = await blockMapOfImage(img);
  file = await FileSource.open(img);
  tmp = mkdtempSync(path.join(tmpdir(), 'strata-livecache-'));
});
after(async () => {
  await file.close();
  rmSync(tmp, { recursive: true, force: true });
});

/**
 * One read through a fresh introspective cache with only `prefetch` on; the blocks prefetched
 * (not the read's own). No gap bridging: a plan's blocks exactly (see the coalescing test).
 */
async function prefetchOf(
  block: number,
  prefetch: string[],
  opts: Partial<IntrospectiveCacheOptions> = {},
): Promise<{ got: number[]; rec: Recorder; cache: IntrospectiveCache }> {
  const rec = new Recorder(file);
  const cache = new IntrospectiveCache(rec, {
    policy: 'introspective',
    introspector: new BlockMapIntrospector(map),
    prefetch,
    capacity: 16 << 20,
    coalesceGap: 0,
    ...opts,
  });
  const want = new Uint8Array(readFileSync(img).subarray(block * BS, (block + 1) * BS));
  assert.deepEqual(await cache.read(block * BS, BS), want);
  await cache.idle();
  assert.equal(rec.blocks[0], block, 'the demand read comes first');
  return { got: rec.blocks.slice(1), rec, cache };
}

/** debugfs `ls -l DIR`: entries (not . and ..) as name, inode, size. */
async function lsDir(dir: string): Promise<Array<{ name: string; ino: number; size: number }>> {
  const out = await run('debugfs', ['-R', `ls -l ${dir}`, img]);
  const rows: Array<{ name: string; ino: number; size: number }> = [];
  for (const m of out.matchAll(/^\s*(\d+)\s+\d+\s+\(\d+\)\s+\d+\s+\d+\s+(\d+)\s+\S+\s+\S+\s+(\S+)\s*$/gm)) {
    if (m[3] === '.' || m[3] === '..') continue;
    rows.push({ ino: Number(m[1]), size: Number(m[2]), name: m[3] });
  }
  assert.ok(rows.length > 0, `debugfs ls -l ${dir}: ${out}`);
  return rows;
}

/** debugfs imap: the block holding each inode's record. */
async function imap(inos: number[]): Promise<Map<number, number>> {
  const cmds = path.join(tmp, 'imap.cmds');
  writeFileSync(cmds, `${inos.map((i) => `imap <${i}>`).join('\n')}\n`);
  const out = await run('debugfs', ['-f', cmds, img]);
  const blocks = [...out.matchAll(/located at block (\d+)/g)].map((m) => Number(m[1]));
  assert.equal(blocks.length, inos.length, out);
  return new Map(inos.map((ino, i) => [ino, blocks[i]]));
}

const sorted = (xs: Iterable<number>) => [...new Set(xs)].sort((a, b) => a - b);

describe('live introspective cache: prefetchers against debugfs', () => {
  test('file: a read of a file’s first block fetches its next MiB along its extents (debugfs dump_extents), bounded', async () => {
    const blocks = await debugfsBlocks(img, '/big');
    assert.equal(blocks.length, 768);
    const { got, rec } = await prefetchOf(blocks[0], ['file']);
    assert.deepEqual(sorted(got), sorted(blocks.slice(1, 256)));
    assert.equal(rec.bytes, 256 * BS);
    const small = await prefetchOf(blocks[0], ['file'], { bounds: { file: { perRequest: 64 << 10 } } });
    assert.deepEqual(sorted(small.got), sorted(blocks.slice(1, 16)));
    assert.ok(small.rec.bytes - BS <= 64 << 10);
    const snap = small.cache.snapshot();
    assert.equal(snap.prefetchers.file.fetchedBytes, 15 * BS);
    assert.equal(snap.byClass.data.misses, 1);
  });

  test('dir: a directory read fetches the directory and its subdirectories (debugfs blocks)', async () => {
    const d = await debugfsBlocks(img, '/d');
    const want = [...d, ...(await debugfsBlocks(img, '/d/sub1')), ...(await debugfsBlocks(img, '/d/sub2'))];
    const { got } = await prefetchOf(d[0], ['dir']);
    assert.deepEqual(sorted(got), sorted(want.filter((b) => b !== d[0])));
    // bounded: two blocks' worth, the directory's own (already read) and one more
    assert.equal(d.length, 1);
    const b = await prefetchOf(d[0], ['dir'], { bounds: { dir: { perRequest: 2 * BS } } });
    assert.equal(b.got.length, 1);
    assert.ok(want.includes(b.got[0]));
  });

  test('meta: a directory read fetches the inode-table blocks of its entries (debugfs ls + imap), bounded', async () => {
    const entries = await lsDir('/d');
    assert.equal(entries.length, SMALL + 2);
    const where = await imap(entries.map((e) => e.ino));
    const d = await debugfsBlocks(img, '/d');
    const { got } = await prefetchOf(d[0], ['meta']);
    assert.deepEqual(sorted(got), sorted(where.values()));
    const b = await prefetchOf(d[0], ['meta'], { bounds: { meta: { perRequest: BS } } });
    assert.equal(b.got.length, 1);
    assert.ok([...where.values()].includes(b.got[0]));
  });

  test('meta: an inode-table read fetches the table’s next blocks (debugfs stats: the group’s inode table), bounded', async () => {
    const stats = await run('debugfs', ['-R', 'stats', img]);
    const ipg = Number(/Inodes per group:\s+(\d+)/.exec(stats)?.[1]);
    const isz = Number(/Inode size:\s+(\d+)/.exec(stats)?.[1]);
    const tables = [...stats.matchAll(/inode table at (\d+)/g)].map((x) => Number(x[1]));
    assert.ok(ipg > 0 && isz > 0 && tables.length > 0, stats);
    const len = (ipg * isz) / BS;
    const first = tables[0];
    const last = Math.max(...tables) + len - 1;
    assert.ok(len >= 8, `an inode table is ${len} blocks`);
    const { got } = await prefetchOf(first + 1, ['meta'], { bounds: { meta: { perRequest: 4 * BS } } });
    assert.deepEqual(got, [first + 2, first + 3, first + 4, first + 5]);
    // at the table's end: nothing past it
    const end = await prefetchOf(last, ['meta']);
    assert.deepEqual(end.got, []);
  });

  test('siblings: a small file read fetches the next files of its directory in disk order, whole, within the cap', async () => {
    const files = (await lsDir('/d')).filter((e) => e.name.startsWith('file-'));
    const layout = [];
    for (const f of files) layout.push({ ...f, blocks: await debugfsBlocks(img, `/d/${f.name}`) });
    layout.sort((a, b) => a.blocks[0] - b.blocks[0]);
    const cap = 24 << 10;
    const me = layout[3];
    // the oracle's order and sizes, the rule of the prefetcher: every later file that still fits, whole
    const want: number[] = [];
    let budget = cap;
    // (sizes in whole blocks: what the map, and the cache, hold of a file)
    for (const f of layout.slice(4)) {
      const size = f.blocks.length * BS;
      if (size > budget) continue;
      want.push(...f.blocks);
      budget -= size;
    }
    assert.ok(want.length >= 3, `${want.length} blocks`);
    const { got, rec } = await prefetchOf(me.blocks[0], ['siblings'], { bounds: { siblings: { perRequest: cap } } });
    assert.deepEqual(sorted(got), sorted(want));
    assert.ok(rec.bytes - BS <= cap);
  });

  test('bounds in flight, concurrency, and the request that triggered a prefetch never waits for it', async () => {
    const blocks = await debugfsBlocks(img, '/big');
    const rec = new Recorder(file);
    const cache = new IntrospectiveCache(rec, {
      policy: 'introspective',
      introspector: new BlockMapIntrospector(map),
      prefetch: ['file'],
      capacity: 16 << 20,
      concurrency: 2,
      maxRun: 16 << 10,
      // the background bound alone: the demand read carries no prefetch
      mergeDemand: false,
      coalesceGap: 0,
      bounds: { file: { perRequest: 1 << 20, inFlight: 128 << 10 } },
    });
    const demand = new Set([blocks[0] * BS, blocks[600] * BS]);
    rec.hold = (o) => !demand.has(o);
    // answered while every prefetch read is still held at the source
    await cache.read(blocks[0] * BS, BS);
    assert.equal(rec.reads, 3, 'two prefetch reads started, the rest queued');
    // a second miss elsewhere in the file finds the in-flight bound full: its plan is dropped
    await cache.read(blocks[600] * BS, BS);
    assert.equal(rec.reads, 4);
    rec.release();
    await cache.idle();
    const s = cache.snapshot().prefetchers.file;
    assert.ok(s.peakInFlight <= 128 << 10, `${s.peakInFlight}`);
    assert.equal(s.fetchedBytes, 128 << 10);
    assert.equal(s.dropped, 1);
    assert.ok(rec.peak <= 3, `${rec.peak} reads at once (2 prefetches + 1 demand)`);
  });
});

describe('live introspective cache: round trips (a superset of read-ahead)', () => {
  test('a miss carries the prefetch that follows it in one source read, tagged as prefetched', async () => {
    const blocks = await debugfsBlocks(img, '/big');
    // /big is one extent here (mkfs -d of a 3 MiB file): the file's next MiB follows the miss
    assert.deepEqual(
      blocks.slice(0, 256),
      Array.from({ length: 256 }, (_, i) => blocks[0] + i),
    );
    const rec = new Recorder(file);
    const cache = new IntrospectiveCache(rec, {
      policy: 'introspective',
      introspector: new BlockMapIntrospector(map),
      prefetch: ['file'],
      capacity: 16 << 20,
    });
    await cache.read(blocks[0] * BS, BS);
    await cache.idle();
    assert.equal(rec.reads, 1, 'one round trip for the miss and its prefetch');
    assert.deepEqual(rec.blocks, blocks.slice(0, 256));
    const s = cache.snapshot();
    assert.equal(s.source.demandReads, 1);
    assert.equal(s.source.demandBytes, BS);
    assert.equal(s.prefetchers.file.fetchedBytes, 255 * BS);
    // the next block was brought by the prefetch: a use of it is 'prefetched', not a miss
    const want = new Uint8Array(readFileSync(img).subarray(blocks[1] * BS, blocks[2] * BS));
    assert.deepEqual(await cache.read(blocks[1] * BS, BS), want);
    assert.equal(cache.snapshot().byClass.data.prefetched, 1);
  });

  test('a plan’s blocks a small gap apart are read in one source read, within the bound (dir, debugfs)', async () => {
    const d = await debugfsBlocks(img, '/d');
    const want = sorted([...(await debugfsBlocks(img, '/d/sub1')), ...(await debugfsBlocks(img, '/d/sub2'))]);
    const runs = want.filter((b, i, a) => i === 0 || b !== a[i - 1] + 1).length;
    const span = want[want.length - 1] - want[0] + 1;
    assert.ok(runs >= 2 && span <= 16, `the subdirectories are ${runs} runs over ${span} blocks: no small gap`);
    const once = async (perRequest: number) => {
      const rec = new Recorder(file);
      const cache = new IntrospectiveCache(rec, {
        policy: 'introspective',
        introspector: new BlockMapIntrospector(map),
        prefetch: ['dir'],
        capacity: 16 << 20,
        mergeDemand: false,
        bounds: { dir: { perRequest } },
      });
      await cache.read(d[0] * BS, BS);
      await cache.idle();
      return rec;
    };
    // room for the gap: one read from the first subdirectory block to the last
    const wide = await once(1 << 20);
    assert.equal(wide.reads, 2, 'the demand read and one prefetch read');
    assert.deepEqual(
      wide.blocks.slice(1),
      Array.from({ length: span }, (_, i) => want[0] + i),
    );
    // a bound smaller than the span (the plan's blocks and the directory's own, which the dir
    // plan counts): no gap bridged, the plan's blocks alone
    const narrow = await once((want.length + 1) * BS);
    assert.equal(narrow.reads, 1 + runs);
    assert.deepEqual(sorted(narrow.blocks.slice(1)), want);
  });

  test('disk: a sequential reader gets windows that grow and refill at half: few round trips, the image’s bytes', async () => {
    const blocks = await debugfsBlocks(img, '/big');
    const start = blocks[0] * BS;
    const size = 3 << 20;
    const rec = new Recorder(file);
    const cache = new IntrospectiveCache(rec, {
      policy: 'introspective',
      introspector: new BlockMapIntrospector(map),
      prefetch: ['disk'],
      capacity: 16 << 20,
    });
    const whole = readFileSync(img);
    const step = 32 << 10;
    for (let o = 0; o < size; o += step) {
      assert.deepEqual(
        await cache.read(start + o, step),
        new Uint8Array(whole.subarray(start + o, start + o + step)),
        `bytes at ${start + o}`,
      );
      await cache.idle();
    }
    // 96 requests; 128 KiB windows (the bound) that grow 8x while consumed, read at most 1 MiB at a time
    assert.ok(rec.reads <= 10, `${rec.reads} source reads for ${size / step} requests`);
    assert.ok(rec.reads >= Math.ceil(size / (1 << 20)), `${rec.reads} source reads of at most 1 MiB`);
    const s = cache.snapshot();
    assert.equal(s.source.demandReads, 1, 'only the first request waited');
    assert.ok(s.prefetchers.disk.peakInFlight <= 1 << 20, `${s.prefetchers.disk.peakInFlight} bytes in flight`);
  });
});

describe('strata nbd --cache-policy introspective', () => {
  test('every traced request is classified as `strata trace resolve` classifies it; hit, prefetched and miss', async () => {
    const trace = path.join(tmp, 'trace.jsonl');
    const stats = path.join(tmp, 'stats.json');
    const nbd = await strataNbd([img, '--cache-policy', 'introspective', '--trace', trace, '--cache-stats', stats]);
    const big = await debugfsBlocks(img, '/big');
    const d = await debugfsBlocks(img, '/d');
    const ranges: Array<[number, number]> = [
      [0, 4096],
      [1024, 1024],
      [d[0] * BS, BS],
      [big[0] * BS, BS],
      [big[1] * BS, 2 * BS],
      [big[0] * BS, BS],
    ];
    for (let o = 0; o < map.diskSize; o += 509 * BS + 512) ranges.push([o, 1536]);
    await qemuIoReads(nbd.uri, ranges);
    assert.equal(await nbd.stop(), 0);
    const recs = readFileSync(trace, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => r.op === 'read');
    assert.ok(recs.length >= ranges.length, `${recs.length} reads traced`);
    const resolved = (await run('node', [CLI, 'trace', 'resolve', img, trace, '--json']))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => r.op === 'read');
    assert.equal(resolved.length, recs.length);
    for (const [i, r] of recs.entries()) {
      const first = resolved[i].owners[0];
      assert.deepEqual(r.owner, first, `request ${i}`);
      assert.equal(r.kind, first.kind);
      assert.equal(r.class, classOf(first.kind as Kind));
      assert.ok(['hit', 'prefetched', 'miss'].includes(r.cache));
    }
    const at = (o: number) => recs.filter((r) => r.offset === o).map((r) => r.cache);
    assert.equal(at(big[0] * BS)[0], 'miss');
    assert.equal(at(big[1] * BS)[0], 'prefetched');
    assert.equal(at(big[0] * BS)[1], 'hit');
    const s = Object.values(JSON.parse(readFileSync(stats, 'utf8')).exports)[0] as {
      policy: string;
      byClass: Record<string, { requests: number; prefetched: number }>;
    };
    assert.equal(s.policy, 'introspective');
    const total = Object.values(s.byClass as Record<string, { requests: number }>).reduce((n, c) => n + c.requests, 0);
    assert.equal(total, recs.length);
    assert.equal(s.byClass.data.prefetched >= 1, true);
  });

  test('strata cache stats: hit rates by class from a trace (classes by trace resolve) and from the counters, on SIGUSR1 and at exit', async () => {
    const trace = path.join(tmp, 'stats-trace.jsonl');
    const stats = path.join(tmp, 'stats-live.json');
    const nbd = await strataNbd([img, '--cache-policy', 'introspective', '--trace', trace, '--cache-stats', stats]);
    const big = await debugfsBlocks(img, '/big');
    const d = await debugfsBlocks(img, '/d');
    const ranges: Array<[number, number]> = [
      [d[0] * BS, BS],
      [big[0] * BS, BS],
      [big[1] * BS, BS],
      [big[0] * BS, BS],
    ];
    for (let o = 0; o < map.diskSize; o += 301 * BS + 512) ranges.push([o, 2048]);
    await qemuIoReads(nbd.uri, ranges);
    // a running server: --pid makes it write its counters now
    const live = await run('node', [CLI, 'cache', 'stats', stats, '--pid', String(nbd.pid), '--json']);
    const during = JSON.parse(live).exports[path.basename(img)];
    assert.equal(during.from, 'stats');
    assert.ok(during.requests >= ranges.length, `${during.requests} requests counted while serving`);
    await qemuIoReads(nbd.uri, [[big[0] * BS, BS]]);
    assert.equal(await nbd.stop(), 0);
    // the oracle: each read's class by `strata trace resolve` (its first owner), its outcome from the trace
    const lines = readFileSync(trace, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const reads = lines.filter((r) => r.op === 'read');
    const resolved = (await run('node', [CLI, 'trace', 'resolve', img, trace, '--json']))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => r.op === 'read');
    assert.equal(resolved.length, reads.length);
    const want: Record<string, { requests: number; hits: number; prefetched: number; misses: number }> = {};
    for (const [i, r] of reads.entries()) {
      const c = classOf(resolved[i].owners[0].kind as Kind);
      const w = (want[c] ??= { requests: 0, hits: 0, prefetched: 0, misses: 0 });
      w.requests++;
      if (r.cache === 'hit') w.hits++;
      else if (r.cache === 'prefetched') w.prefetched++;
      else w.misses++;
    }
    assert.ok(want.data.hits >= 1 && want.data.prefetched >= 1 && want.metadata.misses >= 1, JSON.stringify(want));
    const fromTrace = JSON.parse(await run('node', [CLI, 'cache', 'stats', trace, '--json'])).exports[
      path.basename(img)
    ];
    assert.equal(fromTrace.from, 'trace');
    assert.equal(fromTrace.requests, reads.length);
    for (const [c, w] of Object.entries(want)) {
      const got = fromTrace.byClass[c];
      assert.deepEqual(
        { requests: got.requests, hits: got.hits, prefetched: got.prefetched, misses: got.misses },
        w,
        c,
      );
      assert.equal(got.hitRate, +((w.hits + w.prefetched) / w.requests).toFixed(4));
    }
    // the counters the server wrote at exit agree with its trace
    const atExit = JSON.parse(await run('node', [CLI, 'cache', 'stats', stats, '--json'])).exports[path.basename(img)];
    assert.equal(atExit.requests, reads.length);
    for (const [c, w] of Object.entries(want)) assert.equal(atExit.byClass[c].requests, w.requests, c);
    assert.ok(atExit.prefetchers.file.fetchedBytes > 0);
    // the table names every class the trace saw
    const text = await run('node', [CLI, 'cache', 'stats', trace, '--kinds']);
    for (const c of Object.keys(want)) assert.match(text, new RegExp(`^\\s+${c}\\s+${want[c].requests}\\s`, 'm'));
    assert.match(text, /^\s+file\s+\d+/m);
    // not a stats file nor a trace: a clear error naming the file and where
    const bad = path.join(tmp, 'bad-stats.txt');
    writeFileSync(bad, '{"op":"read"}\nnot json\n');
    const r = await strata(['cache', 'stats', bad]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /bad-stats\.txt: trace record: offset 14 \(0xe\): line 2 is not JSON/);
    writeFileSync(bad, '{"op":"read","offset":0,"length":1}\n');
    const none = await strata(['cache', 'stats', bad]);
    assert.match(none.stderr, /no read carries a cache outcome/);
  });

  test('reads equal the image with every prefetcher on, through a small cache (nbdcopy, qemu-img compare)', async () => {
    const nbd = await strataNbd([img, '--cache-policy', 'introspective', '--prefetch', 'all', '--cache-size', '1M']);
    try {
      const copy = path.join(tmp, 'copy.raw');
      await run('nbdcopy', ['--request-size=16384', '--connections=2', nbd.uri, copy]);
      assert.ok(readFileSync(copy).equals(readFileSync(img)));
      assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, nbd.uri]), /identical/);
    } finally {
      assert.equal(await nbd.stop(), 0);
    }
  });

  test('with a writable overlay changing blocks: reads are the image with the writes (qemu-io, nbdcopy, qemu-img compare of the overlay)', async () => {
    const overlay = path.join(tmp, 'over.qcow2');
    const big = await debugfsBlocks(img, '/big');
    const nbd = await strataNbd([img, '--overlay', overlay, '--cache-policy', 'introspective', '--cache-size', '2M']);
    const want = Buffer.from(readFileSync(img));
    try {
      // read the file (prefetches run), then overwrite blocks the prefetch brought in, and a directory block
      await qemuIoReads(nbd.uri, [[big[0] * BS, BS]]);
      const d = await debugfsBlocks(img, '/d');
      for (const [o, pat] of [
        [big[5] * BS, 0xab],
        [big[200] * BS + 512, 0xcd],
        [d[0] * BS, 0x11],
      ] as Array<[number, number]>) {
        await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pat} ${o} 8192`, nbd.uri]);
        want.fill(pat, o, o + 8192);
      }
      const copy = path.join(tmp, 'over-copy.raw');
      await run('nbdcopy', ['--request-size=4096', nbd.uri, copy]);
      assert.ok(readFileSync(copy).equals(want));
    } finally {
      assert.equal(await nbd.stop(), 0);
    }
    // qemu reads the overlay (backing: the image) as what the server served
    assert.match(
      await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', overlay, path.join(tmp, 'over-copy.raw')]),
      /identical/,
    );
  });

  test('a library version: the map built from the version, reads equal the image', async () => {
    const { lib, n } = await profileLibrary(path.join(tmp, 'lib-case'));
    const stats = path.join(tmp, 'lib-stats.json');
    const nbd = await strataNbd([
      '--library',
      lib,
      'ref:disk@1',
      '--cache-policy',
      'introspective',
      '--cache-size',
      '4M',
      '--cache-stats',
      stats,
    ]);
    try {
      assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', n, nbd.uri]), /identical/);
      const copy = path.join(tmp, 'lib-copy.raw');
      await run('nbdcopy', ['--request-size=65536', nbd.uri, copy]);
      assert.ok(readFileSync(copy).equals(readFileSync(n)));
    } finally {
      assert.equal(await nbd.stop(), 0);
    }
    const s = Object.values(JSON.parse(readFileSync(stats, 'utf8')).exports)[0] as {
      byClass: Record<string, { requests: number }>;
    };
    assert.ok(s.byClass.metadata.requests > 0 && s.byClass.data.requests > 0, JSON.stringify(s.byClass));
  });

  test('the library service: a version disk read by range (qemu curl driver) through the live cache, counters in /metrics', async () => {
    const { lib, n } = await profileLibrary(path.join(tmp, 'lib-http'));
    const child = spawn(
      process.execPath,
      [
        CLI,
        'serve',
        '--library',
        lib,
        '--listen',
        '127.0.0.1:0',
        '--default-visibility',
        'public',
        '--cache-policy',
        'introspective',
        '--cache-size',
        '4M',
        '--quiet',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let err = '';
        child.stderr.on('data', (b) => {
          err += b;
          const m = / at (http:\/\/\S+) /.exec(err);
          if (m) resolve(m[1]);
        });
        exited.then(() => reject(new Error(`strata serve exited: ${err}`)));
      });
      const disk = `${url}/v1/images/disk/versions/1/disk`;
      // qemu reads the version through its curl driver: ranges, each through the cache
      const spec = JSON.stringify({ driver: 'raw', file: { driver: 'http', url: disk } });
      const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', n, `json:${spec}`], { encoding: 'utf8' });
      assert.equal(cmp.status, 0, `${cmp.stdout}${cmp.stderr}`);
      assert.match(cmp.stdout, /identical/);
      const metrics = await (await fetch(`${url}/metrics`)).text();
      const counted = (re: RegExp) => [...metrics.matchAll(re)].reduce((sum, m) => sum + Number(m[1]), 0);
      const byClass = (c: string) =>
        counted(
          new RegExp(
            `^strata_disk_cache_requests_total\\{version="disk@1",class="${c}",outcome="\\w+"\\} (\\d+)$`,
            'gm',
          ),
        );
      assert.ok(byClass('metadata') > 0 && byClass('data') > 0, metrics);
      // every range GET of the disk (206, by the route's own counter) went through the cache, once
      const ranged = counted(
        /^strata_http_requests_total\{method="GET",route="\/v1\/images\/:name\/versions\/:version\/disk",status="206"\} (\d+)$/gm,
      );
      assert.ok(ranged > 0, metrics);
      assert.equal(byClass('metadata') + byClass('data') + byClass('unused') + byClass('unknown'), ranged);
      assert.match(metrics, /^strata_disk_cache_prefetch_bytes_total\{version="disk@1",prefetcher="file"\} [1-9]\d*$/m);
      // a whole-disk download (no Range) takes what the cache holds and reads the rest: the
      // same bytes as the image, and both kinds counted (cache warmed by qemu's reads above)
      const whole = Buffer.from(await (await fetch(disk)).arrayBuffer());
      assert.ok(whole.equals(readFileSync(n)), 'the downloaded disk equals the image');
      const after = await (await fetch(`${url}/metrics`)).text();
      const dl = (from: string) =>
        Number(
          new RegExp(`^strata_disk_cache_download_bytes_total\\{version="disk@1",from="${from}"\\} (\\d+)$`, 'm').exec(
            after,
          )?.[1] ?? Number.NaN,
        );
      assert.equal(dl('cache') + dl('store'), whole.length, after);
      assert.ok(dl('cache') > 0 && dl('store') > 0, `cache ${dl('cache')}, store ${dl('store')}`);
      // the download neither fetched nor counted: the cache's request counters did not move
      assert.equal(
        [...after.matchAll(/^strata_disk_cache_requests_total\{[^}]*\} (\d+)$/gm)].reduce(
          (a, m) => a + Number(m[1]),
          0,
        ),
        [...metrics.matchAll(/^strata_disk_cache_requests_total\{[^}]*\} (\d+)$/gm)].reduce(
          (a, m) => a + Number(m[1]),
          0,
        ),
      );
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });

  test('bad options are refused', async () => {
    await assert.rejects(run('node', [CLI, 'nbd', img, '--cache-policy', 'mru', '--port', '0']), /bad --cache-policy/);
    await assert.rejects(
      run('node', [CLI, 'nbd', img, '--cache-policy', 'lru', '--prefetch', 'file', '--port', '0']),
      /need --cache-policy introspective/,
    );
    await assert.rejects(
      run('node', [CLI, 'nbd', img, '--cache-policy', 'introspective', '--prefetch', 'inode', '--port', '0']),
      /bad prefetcher 'inode'/,
    );
  });
});
