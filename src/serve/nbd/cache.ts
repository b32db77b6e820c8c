import type { BlockMap } from '../../blockmap/block-map.js';
import { buildBlockMap } from '../../blockmap/build.js';
import { BlockMapIntrospector } from '../../blockmap/introspector.js';
import type { FsOpenOptions } from '../../fs/types.js';
import type { ByteSource } from '../../io/byte-source.js';
import {
  IntrospectiveCache,
  type IntrospectiveCacheOptions,
  type IntrospectiveCacheStats,
  type LiveCachePolicy,
} from '../../io/introspective-cache.js';
import { StrataError } from '../../util/errors.js';
import type { TraceRecord } from './trace.js';

/** How an export's cache is chosen (`strata nbd --cache-policy --prefetch --cache-size`). */
export interface ExportCacheOptions {
  policy: LiveCachePolicy;
  /** introspective: prefetchers on (default all; [] for none). */
  prefetch?: readonly string[];
  /** Bytes (default 64 MiB). */
  cacheSize?: number;
  /** Cache block (default 4096). */
  blockSize?: number;
  /** introspective: the map to use (default: built from the source on first use, before serving). */
  map?: BlockMap;
  /** More knobs for tests and benchmarks (bounds, concurrency, metadata share). */
  tuning?: Partial<IntrospectiveCacheOptions>;
  /** introspective: what the map's file systems are opened with (a btrfs RAID's other devices). */
  fsOptions?: FsOpenOptions;
}

/**
 * The live cache of an export over `source`: for `introspective`, the block map is built
 * from the source itself (a library version's chunks or an image's chain, read straight,
 * not through the cache: a map built through it would warm it) unless one is given.
 */
export async function openExportCache(source: ByteSource, o: ExportCacheOptions): Promise<IntrospectiveCache> {
  let introspector: BlockMapIntrospector | undefined;
  if (o.policy === 'introspective') {
    const map = o.map ?? (await buildBlockMap(source, { fsOptions: o.fsOptions }));
    if (map.diskSize !== source.size) {
      throw new StrataError(
        'USAGE',
        `the block map is of a ${map.diskSize}-byte disk, not this ${source.size}-byte one`,
        {
          file: source.name,
        },
      );
    }
    introspector = new BlockMapIntrospector(map);
  }
  return new IntrospectiveCache(source, {
    ...o.tuning,
    policy: o.policy,
    capacity: o.cacheSize ?? 64 << 20,
    blockSize: o.blockSize ?? o.tuning?.blockSize,
    prefetch: o.prefetch,
    introspector,
  });
}

/** Hit counts of one class of requests, as `strata cache stats` shows them. */
export interface ClassHits {
  requests: number;
  hits: number;
  prefetched: number;
  misses: number;
  /** (hits + prefetched) / requests. */
  hitRate: number;
}

/** One export's cache figures read back from a `--cache-stats` file or a `--trace` file. */
export interface CacheReport {
  /** Where they come from: the server's counters, or its trace records counted. */
  from: 'stats' | 'trace';
  policy?: string;
  requests: number;
  byClass: Record<string, ClassHits>;
  /** By kind of structure (trace only: a superblock, an inode table, a file ...). */
  byKind?: Record<string, ClassHits>;
  /** stats only: each prefetcher's plans, bytes fetched and bytes of those a request used. */
  prefetchers?: Record<string, { plans: number; dropped: number; fetchedBytes: number; usedBytes: number }>;
  /** stats only: reads of the source behind the cache. */
  source?: { reads: number; bytes: number; demandReads: number; demandBytes: number };
}

const rate = (c: Omit<ClassHits, 'hitRate'>) => (c.requests ? +((c.hits + c.prefetched) / c.requests).toFixed(4) : 0);

/**
 * The cache figures in `text`: a JSON object `strata nbd --cache-stats` wrote ({time, exports:
 * {name: counters}}), or the JSON lines of `strata nbd --trace` (reads carrying `cache`,
 * counted by export, class and kind). `file` names it in errors.
 */
export function readCacheReport(text: string, file: string): { time?: string; exports: Record<string, CacheReport> } {
  const trimmed = text.trimStart();
  if (trimmed === '')
    throw new StrataError('USAGE', 'empty: neither a --cache-stats file nor a --trace file', { file });
  // a stats file is one JSON object over several lines; a trace is one object a line
  let whole: unknown;
  try {
    whole = JSON.parse(trimmed);
  } catch {}
  if (whole && typeof whole === 'object' && 'exports' in whole) {
    const w = whole as { time?: unknown; exports: unknown };
    if (!w.exports || typeof w.exports !== 'object')
      throw new StrataError('CORRUPT', "'exports' is not an object", { file, structure: 'cache stats' });
    const exports: Record<string, CacheReport> = {};
    for (const [name, s] of Object.entries(w.exports as Record<string, unknown>)) {
      if (s === null) continue; // an export without a live cache
      const st = s as Partial<IntrospectiveCacheStats>;
      if (!st.byClass || typeof st.byClass !== 'object' || typeof st.requests !== 'number')
        throw new StrataError('CORRUPT', `export '${name}' has no counters by class`, {
          file,
          structure: 'cache stats',
        });
      const byClass: Record<string, ClassHits> = {};
      for (const [c, v] of Object.entries(st.byClass)) {
        if (!v.requests) continue;
        const h = { requests: v.requests, hits: v.hits, prefetched: v.prefetched, misses: v.misses };
        byClass[c] = { ...h, hitRate: rate(h) };
      }
      const prefetchers: CacheReport['prefetchers'] = {};
      for (const [p, v] of Object.entries(st.prefetchers ?? {}))
        prefetchers[p] = { plans: v.plans, dropped: v.dropped, fetchedBytes: v.fetchedBytes, usedBytes: v.usedBytes };
      exports[name] = {
        from: 'stats',
        policy: st.policy,
        requests: st.requests,
        byClass,
        prefetchers,
        source: st.source,
      };
    }
    return { time: typeof w.time === 'string' ? w.time : undefined, exports };
  }
  const exports: Record<string, CacheReport> = {};
  const count = (m: Record<string, ClassHits>, k: string, outcome: string) => {
    const c = (m[k] ??= { requests: 0, hits: 0, prefetched: 0, misses: 0, hitRate: 0 });
    c.requests++;
    if (outcome === 'hit') c.hits++;
    else if (outcome === 'prefetched') c.prefetched++;
    else c.misses++;
  };
  let lineNo = 0;
  let offset = 0;
  for (const line of text.split('\n')) {
    lineNo++;
    const at = offset;
    offset += Buffer.byteLength(line) + 1;
    if (line.trim() === '') continue;
    let r: Partial<TraceRecord>;
    try {
      r = JSON.parse(line);
    } catch {
      throw new StrataError('CORRUPT', `line ${lineNo} is not JSON: neither a --cache-stats file nor a --trace file`, {
        file,
        structure: 'trace record',
        offset: at,
      });
    }
    if (r.op !== 'read' || typeof r.cache !== 'string') continue;
    const name = typeof r.export === 'string' ? r.export : '';
    const e = (exports[name] ??= { from: 'trace', requests: 0, byClass: {}, byKind: {} });
    e.requests++;
    count(e.byClass, r.class ?? 'unknown', r.cache);
    count(e.byKind!, r.kind ?? 'unknown', r.cache);
  }
  if (Object.keys(exports).length === 0)
    throw new StrataError('USAGE', 'no read carries a cache outcome (was the server run with --cache-policy?)', {
      file,
      structure: 'trace',
    });
  for (const e of Object.values(exports))
    for (const m of [e.byClass, e.byKind!]) for (const c of Object.values(m)) c.hitRate = rate(c);
  return { exports };
}
