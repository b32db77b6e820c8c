import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { type ByteSource, clampRead, clampStatus, type Extent } from '../../src/io/byte-source.js';
import { CachedSource } from '../../src/io/cached-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { FilterSource, fileView, offsetIn } from '../../src/io/filter-source.js';
import { HttpSource } from '../../src/io/http-source.js';
import { PlannedSource } from '../../src/io/planned-source.js';
import { SliceSource } from '../../src/io/slice-source.js';
import { BufferPool } from '../../src/util/buffer-pool.js';
import { StrataError } from '../../src/util/errors.js';
import { LIMITS } from '../../src/util/limits.js';
import { ConcatSource } from '../../src/volumes/concat-source.js';
import { startRangeServer } from '../helpers/range-server.js';
import { scratch } from '../helpers/tools.js';

/**
 * The model every filter is checked against: bytes in memory plus a status map written
 * out by hand (data, zero and unallocated runs), with `read` only (no readInto), so the
 * filters' own readInto paths are exercised; counts closes.
 */
class Model implements ByteSource {
  closed = 0;
  readonly size: number;
  constructor(
    readonly bytes: Uint8Array,
    readonly map: Extent[],
    readonly name = 'model',
  ) {
    this.size = bytes.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    return this.bytes.slice(offset, offset + n);
  }
  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    const out: Extent[] = [];
    for (const e of this.map) {
      const s = Math.max(offset, e.offset);
      const t = Math.min(offset + n, e.offset + e.length);
      if (t > s) out.push({ offset: s, length: t - s, kind: e.kind });
    }
    return out;
  }
  async close(): Promise<void> {
    this.closed++;
  }
}

const SIZE = 100_000;
const bytes = new Uint8Array(SIZE).map((_, i) => (i * 31 + (i >> 8)) & 0xff);
const MAP: Extent[] = [
  { offset: 0, length: 30_000, kind: 'data' },
  { offset: 30_000, length: 20_000, kind: 'zero' },
  { offset: 50_000, length: 40_000, kind: 'unallocated' },
  { offset: 90_000, length: 10_000, kind: 'data' },
];
for (const e of MAP) if (e.kind !== 'data') bytes.fill(0, e.offset, e.offset + e.length);

/** The expected bytes and status of a window [start, start+size) of the model: zeros past its end. */
function window(start: number, size: number): { bytes: Uint8Array; map: Extent[] } {
  const b = new Uint8Array(size);
  b.set(bytes.subarray(start, Math.min(SIZE, start + size)));
  const map: Extent[] = [];
  for (const e of MAP) {
    const s = Math.max(start, e.offset);
    const t = Math.min(start + size, e.offset + e.length);
    if (t > s) map.push({ offset: s - start, length: t - s, kind: e.kind });
  }
  if (start + size > SIZE)
    map.push({ offset: Math.max(0, SIZE - start), length: start + size - Math.max(SIZE, start), kind: 'zero' });
  return { bytes: b, map };
}

/** Cut a status answer to [offset, offset+length) in the model's terms, merging neighbours. */
function cut(map: Extent[], offset: number, length: number): Extent[] {
  const out: Extent[] = [];
  for (const e of map) {
    const s = Math.max(offset, e.offset);
    const t = Math.min(offset + length, e.offset + e.length);
    if (t <= s) continue;
    const last = out[out.length - 1];
    if (last && last.kind === e.kind && last.offset + last.length === s) last.length += t - s;
    else out.push({ offset: s, length: t - s, kind: e.kind });
  }
  return out;
}

function merged(map: Extent[]): Extent[] {
  return cut(map, 0, Number.MAX_SAFE_INTEGER);
}

/** Every call of a filter against what the model says its bytes and status are. */
async function checkFilter(
  f: FilterSource,
  want: { bytes: Uint8Array; map: Extent[] },
  label: string,
  opts: { zerosPastEnd?: boolean } = {},
): Promise<void> {
  const size = want.bytes.length;
  assert.equal(f.size, size, `${label}: size`);
  const ranges: Array<[number, number]> = [
    [0, 1],
    [0, size],
    [17, 4096],
    [29_990, 30],
    [Math.max(0, size - 100), 100],
    [Math.max(0, size - 5), 4096], // short at the end
    [size, 10], // at the end: nothing
    [size + 1000, 10], // past the end: nothing
  ];
  for (const [o, l] of ranges) {
    const n = Math.max(0, Math.min(l, size - o));
    const r = await f.read(o, l);
    assert.equal(r.length, n, `${label}: read ${o}+${l} length`);
    assert.deepEqual(Buffer.from(r), Buffer.from(want.bytes.subarray(o, o + n)), `${label}: read ${o}+${l}`);
    const out = Buffer.alloc(l, 0xee);
    const got = await f.readInto(o, out);
    assert.equal(got, n, `${label}: readInto ${o}+${l} count`);
    assert.deepEqual(out.subarray(0, n), Buffer.from(want.bytes.subarray(o, o + n)), `${label}: readInto ${o}+${l}`);
    const rest = opts.zerosPastEnd ? 0 : 0xee;
    assert.ok(
      out.subarray(n).every((x) => x === rest),
      `${label}: readInto ${o}+${l} leaves the rest ${opts.zerosPastEnd ? 'zeroed' : 'alone'}`,
    );
    const st = merged(await f.status(o, l));
    assert.deepEqual(st, cut(want.map, o, n), `${label}: status ${o}+${l}`);
  }
  // out of range and nonsense requests fail as a StrataError of their kind
  await assert.rejects(f.read(-1, 4), (e: StrataError) => e.code === 'USAGE', `${label}: negative read`);
  await assert.rejects(f.read(0.5, 4), (e: StrataError) => e.code === 'USAGE', `${label}: fractional read`);
  await assert.rejects(f.readInto(-1, new Uint8Array(4)), (e: StrataError) => e.code === 'USAGE');
  await assert.rejects(f.status(-1, 4), (e: StrataError) => e.code === 'USAGE', `${label}: negative status`);
  await assert.rejects(
    f.read(0, LIMITS.maxReadBytes + 1),
    (e: StrataError) => e.code === 'LIMIT',
    `${label}: read over the limit`,
  );
  // status is clamped as status: a range far over the read limit is answered
  assert.deepEqual(merged(await f.status(0, 2 ** 40)), merged(want.map), `${label}: status over 1 TiB`);
}

test('slice: bytes, readInto and status of the window, zeros past the parent, fd only at offset 0', async () => {
  const m = new Model(bytes, MAP);
  await checkFilter(new SliceSource(m, 0, SIZE), window(0, SIZE), 'slice 0+all');
  await checkFilter(new SliceSource(m, 12_345, 60_000), window(12_345, 60_000), 'slice inside');
  await checkFilter(new SliceSource(m, 70_000, 50_000), window(70_000, 50_000), 'slice past the end');
  await checkFilter(new SliceSource(m, 200_000, 5000), window(200_000, 5000), 'slice wholly past the end');
  assert.throws(() => new SliceSource(m, -1, 10), StrataError);
  const s = new SliceSource(m, 100, 200);
  await s.close();
  assert.equal(m.closed, 0, 'a slice leaves its parent open (other partitions share it)');
  assert.deepEqual(s.unwrap(), { source: m, offset: 100 });
});

test('cache: the model through blocks, small and large reads, status unclamped by the read limit', async () => {
  const m = new Model(bytes, MAP);
  const c = new CachedSource(m, { blockSize: 4096, capacity: 16384 });
  await checkFilter(c, window(0, SIZE), 'cache');
  assert.ok(c.hits > 0 && c.misses > 0);
  const d = new CachedSource(m, { blockSize: 4096, capacity: 65536, directFrom: 8192 });
  await checkFilter(d, window(0, SIZE), 'cache with directFrom');
  await c.close();
  assert.equal(m.closed, 1, 'a cache closes the source it was made for');
});

test('planned source: reads inside and outside the plan; status forwarded', async () => {
  const m = new Model(bytes, MAP);
  const p = new PlannedSource(
    m,
    [
      [0, 20_000],
      [25_000, 40_000],
      [95_000, 100_000],
    ],
    8192,
    1024,
  );
  // documented: a planned source zero-fills what lies past its end (check-in reads block tails)
  await checkFilter(p, window(0, SIZE), 'planned', { zerosPastEnd: true });
  assert.ok(p.windowReads > 0 && p.served > 0, 'some requests were served from windows');
  await p.close();
  assert.equal(m.closed, 0, 'a plan leaves the caller its source');
});

test('planned source with a pool: windows taken from it, given back on close, reused by the next plan', async () => {
  const m = new Model(bytes, MAP);
  const pool = new BufferPool(8);
  const given: Buffer[] = [];
  const give = pool.give.bind(pool);
  pool.give = (b: Buffer) => {
    given.push(b);
    give(b);
  };
  const read = async (p: PlannedSource) => {
    // small reads in two 64 KiB windows of the one planned run, each checked against the bytes
    for (const off of [0, 1000, 70_000, 5000, 90_000]) {
      const out = Buffer.alloc(4096);
      await p.readInto(off, out);
      assert.deepEqual(out, Buffer.from(bytes.subarray(off, off + 4096)), `bytes at ${off}`);
    }
  };
  const a = new PlannedSource(m, [[0, SIZE]], 65536, 1024, 4, pool);
  await read(a);
  assert.equal(a.windowReads, 2);
  assert.equal(given.length, 0, 'nothing given back while the plan is open');
  await a.close();
  await new Promise((r) => setImmediate(r));
  assert.equal(given.length, 2, 'both windows went back to the pool on close');
  const b = new PlannedSource(m, [[0, SIZE]], 65536, 1024, 4, pool);
  const taken: Buffer[] = [];
  const take = pool.take.bind(pool);
  pool.take = (n: number) => {
    const t = take(n);
    taken.push(t);
    return t;
  };
  await read(b);
  assert.equal(taken.length, 2);
  for (const t of taken) assert.ok(given.includes(t), 'the next plan reads into the windows given back');
  await b.close();
  assert.equal(m.closed, 0);
});

test('concat: parts back to back, short parts read as zeros, one part unwraps', async () => {
  const a = new Model(bytes.slice(0, 40_000), cut(MAP, 0, 40_000), 'a');
  const bMap = cut(MAP, 40_000, 60_000).map((e) => ({ ...e, offset: e.offset - 40_000 }));
  const b = new Model(bytes.slice(40_000), bMap, 'b');
  const c = new ConcatSource(
    [
      { source: a, length: 40_000 },
      { source: b, length: 60_000 },
    ],
    'lv',
  );
  await checkFilter(c, window(0, SIZE), 'concat');
  assert.equal(c.unwrap(), undefined);
  assert.equal(c.fd, undefined);
  // a part declared longer than its source reads as zeros past the source's end
  const short = new ConcatSource(
    [
      { source: a, length: 40_000 },
      { source: new SliceSource(b, 0, 30_000), length: 30_000 },
      { source: new Model(new Uint8Array(0), [], 'empty'), length: 30_000 },
    ],
    'lv2',
  );
  const want = window(0, SIZE);
  want.bytes.fill(0, 70_000);
  want.map = [...cut(MAP, 0, 70_000), { offset: 70_000, length: 30_000, kind: 'zero' }];
  await checkFilter(short, want, 'concat with a short part');
  const one = new ConcatSource([{ source: a, length: 40_000 }], 'one');
  assert.deepEqual(one.unwrap(), { source: a, offset: 0 });
});

test('fd shows through filters only where offsets are kept; fileView and offsetIn look through all', async () => {
  const dir = scratch('io-filters');
  const f = path.join(dir, 'disk.raw');
  writeFileSync(f, Buffer.from(bytes));
  const file = await FileSource.open(f);
  try {
    const at0 = new SliceSource(file, 0, 50_000);
    const at7 = new SliceSource(file, 7000, 50_000);
    const past = new SliceSource(file, 0, SIZE + 10);
    const cache = new CachedSource(at7, { blockSize: 4096, capacity: 8192 });
    const nested = new SliceSource(cache, 3000, 1000);
    assert.equal(at0.fd, file.fd, 'a slice at offset 0 keeps the fd');
    assert.equal(at7.fd, undefined, 'a slice at a non-zero offset hides the raw fd');
    assert.equal(past.fd, undefined, 'a slice running past the file hides it (the file would read short)');
    assert.equal(new CachedSource(file).fd, file.fd, 'a cache keeps offsets');
    assert.deepEqual(fileView(nested), { fd: file.fd, name: f, offset: 10_000 });
    assert.deepEqual(fileView(at0), { fd: file.fd, name: f, offset: 0 });
    assert.equal(fileView(past), undefined);
    assert.equal(
      fileView(
        new ConcatSource(
          [
            { source: at7, length: 10 },
            { source: at0, length: 10 },
          ],
          'c',
        ),
      ),
      undefined,
    );
    assert.equal(offsetIn(nested, file), 10_000);
    assert.equal(offsetIn(nested, at7), 3000);
    assert.equal(offsetIn(at0, at7), null);
    // the bytes a bulk copier would read at the view's offset are the filter's bytes
    const view = fileView(nested);
    assert.ok(view);
    const direct = Buffer.alloc(1000);
    const { readSync } = await import('node:fs');
    readSync(view.fd, direct, 0, 1000, view.offset);
    assert.deepEqual(direct, Buffer.from(await nested.read(0, 1000)));
    assert.ok(nested instanceof FilterSource);
    // who may rearrange a read in place: a file and its slices yes, a cache (views of its blocks) no
    assert.equal(file.freshReads, true);
    assert.equal(at7.freshReads, true);
    assert.notEqual(cache.freshReads, true);
    assert.equal(nested.freshReads, false);
  } finally {
    await file.close();
  }
});

test('status of a sparse multi-GiB file over HTTP (through the cache openImage uses) covers it in one answer', async () => {
  const dir = scratch('io-http-sparse');
  const f = path.join(dir, 'big.raw');
  const size = 5 * 1024 ** 3 + 4096;
  execFileSync('truncate', ['-s', String(size), f]);
  const tail = Buffer.from('the end of a sparse file');
  writeFileSync(f, tail, { flag: 'r+' });
  const server = await startRangeServer({ 'big.raw': f });
  try {
    const h = await HttpSource.open(server.url('big.raw'));
    assert.equal(h.size, size);
    const c = new CachedSource(h, { blockSize: 1 << 20, capacity: 64 << 20 });
    const before = server.bytesSent;
    assert.deepEqual(await c.status(0, size), [{ offset: 0, length: size, kind: 'data' }]);
    assert.deepEqual(await c.status(size - 10, 2 ** 40), [{ offset: size - 10, length: 10, kind: 'data' }]);
    const s = new SliceSource(c, 1024 ** 3, 3 * 1024 ** 3);
    assert.deepEqual(await s.status(0, 2 ** 33), [{ offset: 0, length: 3 * 1024 ** 3, kind: 'data' }]);
    assert.equal(server.bytesSent, before, 'status reads nothing');
    assert.deepEqual(Buffer.from(await c.read(0, tail.length)), tail);
    assert.equal((await c.read(size - 3, 100)).length, 3);
    await assert.rejects(c.read(0, size), (e: StrataError) => e.code === 'LIMIT');
    await c.close();
  } finally {
    await server.close();
  }
});
