import type { BlockMap } from '../blockmap/block-map.js';
import { BlockMapIntrospector, MAP_PREFETCHERS } from '../blockmap/introspector.js';
import { classOf, KINDS, type KindClass } from '../blockmap/kinds.js';
import type { ByteSource } from '../io/byte-source.js';
import {
  IntrospectiveCache,
  type IntrospectiveCacheOptions,
  type IntrospectiveCacheStats,
  type LiveCachePolicy,
} from '../io/introspective-cache.js';
import { StrataError } from '../util/errors.js';

/**
 * Issue 27, as a simulation on a recorded trace: what a server cache of a fixed size in
 * front of a slow source would have had to fetch, under three policies, for the same reads.
 *
 * - `lru`: a block LRU (what `strata nbd`'s cache is today): a miss fetches the blocks read.
 * - `readahead`: the same LRU, and a miss also fetches the next `readahead` blocks of the
 *   disk (what a block server does).
 * - `introspective`: every request classified once through the block map. Metadata
 *   (superblocks, group descriptors, bitmaps, inode tables, directories, extent trees,
 *   journal ...) lives in a protected segment (a share of the cache data cannot evict); file
 *   data in an LRU segment. A miss fetches by meaning (each prefetcher switchable): in a
 *   file, the file's next `fileAhead` bytes following its own extents (across
 *   fragmentation, not the disk's next blocks) and, when the file is small, the next files
 *   of its directory in disk order (`siblingsAhead` bytes); in a directory, the whole
 *   directory and its subdirectories' blocks (`dirAhead` bytes each) and the inode-table
 *   blocks of its entries (`metaAhead` blocks); elsewhere, the blocks read.
 *
 * Counted per policy: requests, requests that had to wait for the source (`waits`: a
 * block of theirs was neither cached nor fetched before), source fetches and bytes fetched,
 * by class. A wait is what costs a guest a round trip to the source; a fetch made ahead
 * (prefetch) is counted in bytes and fetches but makes no one wait. The simulation assumes
 * a prefetch has landed before the next request (a source fast enough in bandwidth, slow in
 * latency: the regime of seed 000). The live cache is io/introspective-cache.ts with the
 * block map's prefetchers in blockmap/introspector.ts (`strata nbd --cache-policy`); the
 * introspective plans here are that introspector's, cut to each bound in blocks as the live
 * cache cuts them (one implementation). This measures what a policy would change, on
 * recorded traces, without the wall clock.
 */
export type CachePolicy = 'lru' | 'readahead' | 'introspective';
export const CACHE_POLICIES: readonly CachePolicy[] = ['lru', 'readahead', 'introspective'];

export interface CacheSimOptions {
  /** Cache size in bytes (a multiple of the block size is used). */
  cacheBytes: number;
  /** Cache block in bytes (default 4096). */
  blockSize?: number;
  /** readahead: blocks fetched past a miss (default 32: 128 KiB at 4 KiB, Linux's default read_ahead_kb). */
  readahead?: number;
  /** introspective: bytes of a file fetched from the missed offset on, along its extents (default 1 MiB). */
  fileAhead?: number;
  /** introspective: bytes of a directory fetched on a miss in it (default 256 KiB). */
  dirAhead?: number;
  /** introspective: share of the cache kept for metadata (default 0.25). */
  metaShare?: number;
  /**
   * introspective: which prefetchers run (default all): `file` a file's next bytes along its
   * extents; `dir` a whole directory on a miss in it; `meta` with a directory, the inode-table
   * blocks of its entries (up to `metaAhead` blocks); `siblings` after a small file, the next
   * files of its directory in disk order (up to `siblingsAhead` bytes).
   */
  prefetch?: { file?: boolean; dir?: boolean; meta?: boolean; siblings?: boolean; disk?: boolean };
  /** introspective: inode-table blocks fetched with a directory (default 64). */
  metaAhead?: number;
  /** introspective: bytes of sibling files fetched after a small file (default 256 KiB). */
  siblingsAhead?: number;
  /** Keep the list of fetches (disk block runs, in order) in the result: for tests. */
  log?: boolean;
}

export interface CacheSimResult {
  policy: CachePolicy;
  cacheBytes: number;
  blockSize: number;
  requests: number;
  /** Requests served wholly from the cache. */
  hits: number;
  /** Requests that waited for the source. */
  waits: number;
  /** Source fetches (a wait's own fetch, and each prefetch run). */
  fetches: number;
  fetchedBytes: number;
  /** Bytes requested (whole blocks). */
  requestedBytes: number;
  byClass: Record<KindClass, { requests: number; waits: number; bytes: number }>;
  /** With `log`: each fetch as [first block, blocks]. */
  log?: Array<[number, number]>;
}

/** An LRU set of block numbers with a capacity in blocks. */
class Lru {
  private readonly m = new Map<number, true>();
  constructor(readonly capacity: number) {}
  has(b: number): boolean {
    return this.m.has(b);
  }
  touch(b: number): void {
    this.m.delete(b);
    this.m.set(b, true);
  }
  add(b: number): void {
    this.m.delete(b);
    this.m.set(b, true);
    while (this.m.size > this.capacity) this.m.delete(this.m.keys().next().value as number);
  }
}

/** Simulate one policy over `accesses` (disk byte ranges, in order) against `map`. */
export function simulateCache(
  map: BlockMap,
  accesses: Iterable<{ offset: number; length: number }>,
  policy: CachePolicy,
  opts: CacheSimOptions,
): CacheSimResult {
  const bs = opts.blockSize ?? 4096;
  if (!Number.isInteger(bs) || bs < 512 || bs % 512 !== 0) {
    throw new StrataError('USAGE', `cache block size ${bs} is not a multiple of 512`);
  }
  const capacity = Math.floor(opts.cacheBytes / bs);
  if (!(capacity >= 1)) throw new StrataError('USAGE', `a cache of ${opts.cacheBytes} bytes holds no block of ${bs}`);
  const ra = opts.readahead ?? 32;
  const fileAhead = opts.fileAhead ?? 1 << 20;
  const dirAhead = opts.dirAhead ?? 256 << 10;
  const metaAhead = opts.metaAhead ?? 64;
  const siblingsAhead = opts.siblingsAhead ?? 256 << 10;
  const pf = { file: true, dir: true, meta: true, siblings: true, disk: false, ...opts.prefetch };
  const metaCap = policy === 'introspective' ? Math.max(1, Math.floor(capacity * (opts.metaShare ?? 0.25))) : 0;
  const data = new Lru(capacity - metaCap || 1);
  const meta = new Lru(metaCap);
  const blocks = Math.ceil(map.diskSize / bs);
  const r: CacheSimResult = {
    policy,
    cacheBytes: capacity * bs,
    blockSize: bs,
    requests: 0,
    hits: 0,
    waits: 0,
    fetches: 0,
    fetchedBytes: 0,
    requestedBytes: 0,
    byClass: {
      data: { requests: 0, waits: 0, bytes: 0 },
      metadata: { requests: 0, waits: 0, bytes: 0 },
      unused: { requests: 0, waits: 0, bytes: 0 },
    },
  };
  if (opts.log) r.log = [];

  /** Where a block lives: metadata blocks in the protected segment (introspective only). */
  const isMeta = (b: number): boolean => {
    if (policy !== 'introspective') return false;
    const i = map.indexOf(Math.min(b * bs, map.diskSize - 1));
    return i >= 0 && classOf(KINDS[map.kind[i]]) === 'metadata';
  };
  const cached = (b: number) => data.has(b) || meta.has(b);
  const insert = (b: number) => (isMeta(b) ? meta.add(b) : data.add(b));
  /** Fetch the missing blocks among `list` (sorted or not), as runs; returns the fetches made. */
  const fetch = (list: number[]): number => {
    const miss = [...new Set(list.filter((b) => b >= 0 && b < blocks && !cached(b)))].sort((x, y) => x - y);
    let n = 0;
    for (let i = 0; i < miss.length; ) {
      let j = i + 1;
      while (j < miss.length && miss[j] === miss[j - 1] + 1) j++;
      r.fetches++;
      n++;
      r.fetchedBytes += (j - i) * bs;
      r.log?.push([miss[i], j - i]);
      i = j;
    }
    for (const b of miss) insert(b);
    return n;
  };

  // the prefetch plans are the live cache's (blockmap/introspector.ts): one implementation
  const introspector = policy === 'introspective' ? new BlockMapIntrospector(map) : undefined;
  const enabled = new Set(MAP_PREFETCHERS.filter((p) => pf[p]));
  const caps: Record<string, number> = {
    file: fileAhead,
    dir: dirAhead,
    meta: metaAhead * bs,
    siblings: siblingsAhead,
    disk: ra * bs,
  };
  const cap = (p: string) => caps[p] ?? 0;
  /** A plan's blocks in plan order, not cached, cut to the prefetcher's bound in blocks (as the live cache cuts). */
  const planBlocks = (prefetcher: string, runs: Array<{ offset: number; length: number }>): number[] => {
    const keep = Math.floor(cap(prefetcher) / bs);
    const out: number[] = [];
    const seen = new Set<number>();
    for (const run of runs) {
      for (let b = Math.floor(run.offset / bs); b * bs < run.offset + run.length; b++) {
        if (seen.has(b) || cached(b)) continue;
        if (out.length >= keep) return out;
        seen.add(b);
        out.push(b);
      }
    }
    return out;
  };

  for (const a of accesses) {
    if (!(a.offset >= 0) || a.offset >= map.diskSize || !(a.length > 0)) continue;
    const end = Math.min(map.diskSize, a.offset + a.length);
    const first = Math.floor(a.offset / bs);
    const last = Math.ceil(end / bs);
    r.requests++;
    r.requestedBytes += (last - first) * bs;
    const i0 = map.indexOf(a.offset);
    const cls = classOf(KINDS[map.kind[i0]]);
    r.byClass[cls].requests++;
    r.byClass[cls].bytes += end - a.offset;
    const want: number[] = [];
    for (let b = first; b < last; b++) want.push(b);
    const missing = want.filter((b) => !cached(b));
    for (const b of want) if (cached(b)) (meta.has(b) ? meta : data).touch(b);
    if (missing.length === 0) {
      r.hits++;
      continue;
    }
    r.waits++;
    r.byClass[cls].waits++;
    if (policy === 'lru') {
      fetch(missing);
    } else if (policy === 'readahead') {
      // the request's blocks and the next `ra` blocks of the disk, one sequential fetch
      const list = [...missing];
      for (let b = last; b < last + ra; b++) list.push(b);
      fetch(list);
    } else {
      const list = [...missing];
      const c = introspector!.classify(a.offset, end - a.offset);
      for (const plan of introspector!.plan(a.offset, end - a.offset, c, enabled, cap))
        list.push(...planBlocks(plan.prefetcher, plan.runs));
      fetch(list);
    }
  }
  return r;
}

/** What a replay through the live cache made of its source: reads (round trips) and bytes. */
export interface LiveReplayResult {
  policy: LiveCachePolicy;
  prefetch?: readonly string[];
  requests: number;
  /** Source reads, and those a request waited for (its own blocks were in none). */
  sourceReads: number;
  demandReads: number;
  sourceBytes: number;
  /** With `cuts`: source reads and bytes made before the request of each index. */
  at?: Array<{ request: number; sourceReads: number; sourceBytes: number }>;
  stats: IntrospectiveCacheStats;
}

/**
 * Replay `accesses` through the LIVE cache (io/introspective-cache.ts, the code `strata nbd`
 * runs) over a source of `size` bytes that answers at once and counts its reads: one
 * request at a time, each prefetch landed before the next request (the simulator's
 * assumption above: a link slow in latency, fast enough in bandwidth). Round trips per
 * policy, by the real mechanism (its coalescing, merging and windows included), without a
 * guest.
 */
export async function replayLiveCache(
  map: BlockMap,
  accesses: Iterable<{ offset: number; length: number }>,
  policy: LiveCachePolicy,
  opts: Partial<IntrospectiveCacheOptions> & { diskAlways?: boolean } = {},
  cuts: readonly number[] = [],
): Promise<LiveReplayResult> {
  const size = map.diskSize;
  const counted = { reads: 0, bytes: 0 };
  const source: ByteSource = {
    name: 'replay',
    size,
    async read(offset: number, length: number): Promise<Uint8Array> {
      counted.reads++;
      const n = Math.max(0, Math.min(length, size - offset));
      counted.bytes += n;
      return new Uint8Array(n);
    },
  };
  const cache = new IntrospectiveCache(source, {
    ...opts,
    policy,
    introspector:
      policy === 'introspective' ? new BlockMapIntrospector(map, { diskAlways: opts.diskAlways }) : undefined,
  });
  let requests = 0;
  let index = 0;
  const at: NonNullable<LiveReplayResult['at']> = [];
  for (const a of accesses) {
    if (cuts.includes(index)) at.push({ request: index, sourceReads: counted.reads, sourceBytes: counted.bytes });
    index++;
    if (!(a.offset >= 0) || a.offset >= size || !(a.length > 0)) continue;
    requests++;
    await cache.read(a.offset, Math.min(a.length, size - a.offset));
    await cache.idle();
  }
  const stats = cache.snapshot();
  await cache.close();
  return {
    policy,
    prefetch: opts.prefetch,
    requests,
    sourceReads: counted.reads,
    demandReads: stats.source.demandReads,
    sourceBytes: counted.bytes,
    ...(cuts.length ? { at } : {}),
    stats,
  };
}
