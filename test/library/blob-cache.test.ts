import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { BlobCache, type BlobCacheOptions } from '../../src/library/blob-cache.js';

/**
 * The file routes' blob cache (issue 27, src/library/blob-cache.ts) on a known access
 * pattern: hits, prefetched uses and misses by class; each blob fetched once; the metadata
 * segment and blobs used twice survive a one-time scan that an LRU does not survive; the
 * prefetch bounds and the segment sizes hold.
 */
const MiB = 1 << 20;

/** Blobs by name: bytes derived from the name; every fetch counted. */
function store(sizes: Record<string, number>) {
  const fetched: string[] = [];
  const bytes = (d: string) => {
    const out = new Uint8Array(sizes[d]);
    const h = createHash('sha256').update(d).digest();
    for (let i = 0; i < out.length; i++) out[i] = h[i % 32] ^ (i >> 8);
    return out;
  };
  let fail = new Set<string>();
  const fetch = async (d: string) => {
    await new Promise((r) => setTimeout(r, 1));
    fetched.push(d);
    if (fail.has(d)) throw new Error(`no ${d}`);
    if (!(d in sizes)) throw new Error(`unknown ${d}`);
    return bytes(d);
  };
  return {
    fetched,
    bytes,
    failOn: (s: string[]) => (fail = new Set(s)),
    cache: (o: BlobCacheOptions) => new BlobCache(fetch, (d) => sizes[d], o),
  };
}

/** c0..c(n-1): one file's chunks, 1 MiB each; d0..: another file's. */
function chunks(prefix: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `${prefix}${i}`);
}

describe('blob cache (file routes, issue 27)', () => {
  const file = chunks('c', 10);
  const scan = chunks('s', 20);
  const sizes: Record<string, number> = { m1: 100_000, p1: 50_000, p2: 60_000, huge: 5 * MiB };
  for (const d of [...file, ...scan]) sizes[d] = MiB;

  /** Read a file's chunks in order, as the routes do (its own list as the plan), waiting for prefetches between reads. */
  async function readFile(c: BlobCache, list: string[], s: ReturnType<typeof store>) {
    for (let i = 0; i < list.length; i++) {
      const b = await c.get(list[i], { class: 'data', kind: 'file', next: list.slice(i + 1) });
      assert.deepEqual(b, s.bytes(list[i]), `${list[i]}: the bytes fetched`);
      await c.idle();
    }
  }

  test('introspective: a file read in its order is fetched once (one miss, the rest prefetched), then hits', async () => {
    const s = store(sizes);
    const c = s.cache({
      capacity: 16 * MiB,
      prefetch: ['file'],
      bounds: { file: { perRequest: 2 * MiB, inFlight: 2 * MiB } },
    });
    await readFile(c, file, s);
    let st = c.snapshot();
    assert.deepEqual(
      {
        requests: st.byClass.data.requests,
        hits: st.byClass.data.hits,
        prefetched: st.byClass.data.prefetched,
        misses: st.byClass.data.misses,
      },
      { requests: 10, hits: 0, prefetched: 9, misses: 1 },
    );
    assert.deepEqual([...s.fetched].sort(), [...file].sort(), 'each chunk fetched once');
    assert.equal(st.source.demandReads, 1);
    assert.equal(st.prefetchers.file.fetches, 9);
    assert.equal(st.prefetchers.file.usedBytes, 9 * MiB, 'every prefetched chunk was used');
    assert.ok(st.prefetchers.file.peakInFlight <= 2 * MiB, `in flight ${st.prefetchers.file.peakInFlight}`);
    await readFile(c, file, s);
    st = c.snapshot();
    assert.equal(st.byClass.data.hits, 10);
    assert.equal(s.fetched.length, 10, 'the second pass fetched nothing');
    assert.equal(st.byClass.data.hitRate, 1 - 1 / 20);
  });

  test('the per-request bound cuts a plan, and no more than the in-flight bound is queued or fetching', async () => {
    const s = store(sizes);
    const c = s.cache({
      capacity: 32 * MiB,
      prefetch: ['file'],
      bounds: { file: { perRequest: 3 * MiB, inFlight: 2 * MiB } },
    });
    // no waiting: the first plan (c1..c3 by the window) is cut to 2 MiB in flight, the next finds the bound full
    await c.get('c0', { class: 'data', kind: 'file', next: file.slice(1) });
    await c.get('s0', { class: 'data', kind: 'file', next: ['s1', 's2'] });
    await c.idle();
    const st = c.snapshot();
    assert.ok(st.prefetchers.file.cutBlobs > 0, JSON.stringify(st.prefetchers.file));
    assert.ok(st.prefetchers.file.peakInFlight <= 2 * MiB, JSON.stringify(st.prefetchers.file));
    assert.ok(st.prefetchers.file.fetchedBytes <= 4 * MiB, JSON.stringify(st.prefetchers.file));
    for (const d of ['c4', 'c5', 'c9']) assert.ok(!c.has(d), `${d}: outside every plan's window`);
  });

  test('metadata and blobs used twice survive a one-time scan under introspective, not under lru', async () => {
    for (const policy of ['introspective', 'lru'] as const) {
      const s = store(sizes);
      const c = s.cache({ policy, capacity: 16 * MiB, prefetch: [] });
      const meta = await c.get('m1', { class: 'metadata', kind: 'layout' });
      assert.deepEqual(meta, s.bytes('m1'));
      // c0..c4 used twice (promoted under introspective), then 20 MiB read once
      for (let k = 0; k < 2; k++) for (const d of file.slice(0, 5)) await c.get(d, { class: 'data', kind: 'file' });
      for (const d of scan) await c.get(d, { class: 'data', kind: 'file' });
      const before = s.fetched.length;
      await c.get('m1', { class: 'metadata', kind: 'layout' });
      await c.get('c2', { class: 'data', kind: 'file' });
      const st = c.snapshot();
      if (policy === 'introspective') {
        assert.equal(s.fetched.length, before, 'm1 and c2 still held');
        assert.deepEqual(
          [st.byClass.metadata.hits, st.byClass.metadata.misses],
          [1, 1],
          JSON.stringify(st.byClass.metadata),
        );
        assert.equal(st.byClass.data.misses, 25);
        assert.equal(st.byClass.data.hits, 6);
        assert.ok(st.segments.metadata <= st.limits.metadata && st.segments.metadata === 100_000);
      } else {
        assert.equal(s.fetched.length, before + 2, 'the scan flushed m1 and c2');
        assert.deepEqual([st.byClass.metadata.hits, st.byClass.metadata.misses], [0, 2]);
        assert.equal(st.segments.metadata, 0);
      }
      assert.ok(st.segments.probation + st.segments.protected <= st.limits.data, JSON.stringify(st.segments));
      assert.ok(st.segments.metadata + st.segments.probation + st.segments.protected <= 16 * MiB);
    }
  });

  test('meta: a manifest names its parts, which come in the background; none: nothing', async () => {
    const s = store(sizes);
    const c = s.cache({ capacity: 16 * MiB });
    c.hint(['p1', 'p2']);
    await c.idle();
    assert.deepEqual([...s.fetched].sort(), ['p1', 'p2']);
    await c.get('p1', { class: 'metadata', kind: 'files-part' });
    await c.get('p1', { class: 'metadata', kind: 'files-part' });
    const st = c.snapshot();
    assert.deepEqual([st.byClass.metadata.prefetched, st.byClass.metadata.hits, st.byClass.metadata.misses], [1, 1, 0]);
    assert.equal(st.prefetchers.meta.fetches, 2);

    const s2 = store(sizes);
    const none = s2.cache({ capacity: 16 * MiB, prefetch: [] });
    none.hint(['p1']);
    await none.get('c0', { class: 'data', kind: 'file', next: ['c1'] });
    await none.idle();
    assert.deepEqual(s2.fetched, ['c0']);
  });

  test('a blob bigger than a quarter of its segment is served, not kept; a failed fetch is not kept either', async () => {
    const s = store(sizes);
    const c = s.cache({ capacity: 16 * MiB, prefetch: ['file'] });
    assert.deepEqual(await c.get('huge', { class: 'data', kind: 'file' }), s.bytes('huge'));
    assert.ok(!c.has('huge'));
    assert.equal(c.snapshot().uncached, 1);
    s.failOn(['c1', 'c0']);
    await assert.rejects(c.get('c0', { class: 'data', kind: 'file', next: ['c1'] }), /no c0/);
    await c.idle();
    assert.equal(c.snapshot().prefetchers.file.errors, 1);
    s.failOn([]);
    assert.deepEqual(await c.get('c0', { class: 'data', kind: 'file' }), s.bytes('c0'), 'fetched again');
    assert.deepEqual(await c.get('c1', { class: 'data', kind: 'file' }), s.bytes('c1'));
  });

  test('bad options are refused', () => {
    const s = store(sizes);
    assert.throws(() => s.cache({ prefetch: ['dir'] }), /no blob prefetcher 'dir'/);
    assert.throws(() => s.cache({ metaShare: 1 }), /metadata share/);
    assert.throws(() => s.cache({ capacity: 100 }), /at least 64 KiB/);
    assert.throws(() => s.cache({ policy: 'mru' as never }), /no blob cache policy/);
  });
});
