import {
  type CacheClassStats,
  fillHitRates,
  type LiveCacheStats,
  newClassStats,
  newPrefetcherCounters,
  type PrefetcherCounters,
} from '../io/cache-stats.js';
import type { PrefetchBound } from '../io/introspective-cache.js';
import { PrefetchQueue } from '../io/prefetch-queue.js';
import { SegmentedLru } from '../io/segmented-lru.js';
import { StrataError } from '../util/errors.js';

/**
 * Issue 27 on the library service's file routes: the introspective cache policy for reads
 * that go through manifests rather than a disk. There the map is the manifest itself: a
 * layout manifest, a file manifest's head and its parts are metadata; a file's chunks are
 * data, and a file's own chunk list says what is read next. So, as the disk cache
 * (io/introspective-cache.ts) does with a block map:
 *
 * - metadata blobs live in a protected segment (`metaShare` of the capacity) that data
 *   cannot evict;
 * - data blobs live in a segmented LRU (probation + protected: a blob used twice is
 *   promoted, so one pass over a big file cannot flush what is used again);
 * - each request is classified once, by the caller that knows what it reads (the manifest
 *   reader, the file reader), and counted by class as a hit, a use of a prefetched blob, or
 *   a miss;
 * - prefetch by meaning, each prefetcher bounded (bytes per request, bytes queued or in
 *   flight) and switchable: `file` fetches the next chunks of the file being read, in the
 *   file's order (its chunk list, wherever those chunks sit in the packs); `meta` fetches
 *   the manifests a manifest names (a layout's file manifests, a file manifest's parts).
 *
 * Blobs are immutable (named by their digest), so a cached blob is never stale. The policy
 * `lru` is one plain LRU of blobs, no classes kept apart and no prefetch: what a blob cache
 * that knows nothing of manifests would do (the baseline the counters compare against).
 */
export type BlobClass = 'metadata' | 'data';
export type BlobCachePolicy = 'lru' | 'introspective';
export const BLOB_PREFETCHERS: readonly string[] = ['meta', 'file'];

/** Bytes per request and bytes queued or in flight, as the disk cache bounds its prefetchers. */
export type BlobPrefetchBound = PrefetchBound;

export const DEFAULT_BLOB_BOUNDS: Readonly<Record<string, BlobPrefetchBound>> = {
  file: { perRequest: 4 << 20, inFlight: 16 << 20 },
  meta: { perRequest: 4 << 20, inFlight: 16 << 20 },
};

export interface BlobCacheOptions {
  policy?: BlobCachePolicy;
  /** Bytes the cache holds (default 64 MiB). */
  capacity?: number;
  /** introspective: share of the capacity kept for metadata (default 0.25). */
  metaShare?: number;
  /** introspective: the prefetchers on (default all: meta, file). */
  prefetch?: readonly string[];
  bounds?: Record<string, Partial<BlobPrefetchBound>>;
  /** Blob fetches prefetches may have running at once (default 4). */
  concurrency?: number;
}

/** What one request reads: its class and kind, and (data) what follows it in the file. */
export interface BlobRequest {
  class: BlobClass;
  /** layout, files, files-part, file ... */
  kind: string;
  /** The blobs the reader will want next, in order (a file's following chunks): the `file` prefetcher's plan. */
  next?: readonly string[];
}

export type BlobOutcome = 'hit' | 'prefetched' | 'miss';

export type BlobClassStats = CacheClassStats;

export interface BlobPrefetcherStats extends PrefetcherCounters {
  /** Blobs a plan named that the per-request bound cut. */
  cutBlobs: number;
}

export interface BlobCacheStats extends LiveCacheStats<BlobPrefetcherStats> {
  policy: BlobCachePolicy;
  /** Blobs larger than their segment's quarter: served, not kept. */
  uncached: number;
  byClass: Record<BlobClass, BlobClassStats>;
  /** The most bytes each segment may hold. */
  limits: { metadata: number; data: number };
}

interface Job {
  digest: string;
  cls: BlobClass;
  by: string;
  size: number;
}

/** A bounded, segmented cache of store blobs with classification and background prefetch (see above). */
export class BlobCache {
  readonly policy: BlobCachePolicy;
  readonly capacity: number;
  private readonly enabled: ReadonlySet<string>;
  private readonly bounds: Record<string, BlobPrefetchBound>;
  private readonly metaCap: number;
  private readonly dataCap: number;
  /** The blobs held, by digest: metadata apart, data as probation + protected. */
  private readonly blobs: SegmentedLru<string>;
  /** Blobs a prefetcher brought in that no request has used yet, and by whom. */
  private readonly fresh = new Map<string, string>();
  private readonly inflight = new Map<string, { p: Promise<Uint8Array>; by?: string }>();
  /** Prefetch jobs, queued and running. */
  private readonly prefetches: PrefetchQueue<Job>;
  private readonly queuedSet = new Set<string>();
  private readonly queued = new Map<string, number>();
  private readonly stats: BlobCacheStats;

  /**
   * `fetch`: a blob's plain bytes (checked against its digest by the store); `sizeOf`: its
   * plain length when known before fetching (the store index), for the prefetch bounds.
   */
  constructor(
    private readonly fetch: (digest: string) => Promise<Uint8Array>,
    private readonly sizeOf: (digest: string) => number | undefined,
    opts: BlobCacheOptions = {},
  ) {
    this.policy = opts.policy ?? 'introspective';
    if (this.policy !== 'lru' && this.policy !== 'introspective')
      throw new StrataError('USAGE', `no blob cache policy '${String(this.policy)}' (lru, introspective)`);
    const cap = opts.capacity ?? 64 << 20;
    if (!(cap >= 1 << 16)) throw new StrataError('USAGE', `blob cache of ${cap} bytes: at least 64 KiB`);
    this.capacity = cap;
    const intro = this.policy === 'introspective';
    const share = intro ? (opts.metaShare ?? 0.25) : 0;
    if (!(share >= 0 && share < 1)) throw new StrataError('USAGE', `metadata share ${share} is not in [0, 1)`);
    this.metaCap = Math.floor(cap * share);
    this.dataCap = cap - this.metaCap;
    this.blobs = new SegmentedLru<string>(
      { metadata: this.metaCap, data: this.dataCap, protected: intro ? Math.floor(this.dataCap * 0.8) : 0 },
      (d) => this.fresh.delete(d),
    );
    const want = intro ? (opts.prefetch ?? BLOB_PREFETCHERS) : [];
    for (const p of want)
      if (!BLOB_PREFETCHERS.includes(p))
        throw new StrataError('USAGE', `no blob prefetcher '${p}' (${BLOB_PREFETCHERS.join(', ')})`);
    this.enabled = new Set(want);
    this.bounds = {};
    for (const p of BLOB_PREFETCHERS) this.bounds[p] = { ...DEFAULT_BLOB_BOUNDS[p], ...opts.bounds?.[p] };
    this.prefetches = new PrefetchQueue<Job>(
      Math.max(1, opts.concurrency ?? 4),
      (job) => this.startJob(job),
      (job) => {
        this.stats.prefetchers[job.by].errors++;
      },
      (job) => this.queued.set(job.by, (this.queued.get(job.by) ?? 0) - job.size),
    );
    const pfs: Record<string, BlobPrefetcherStats> = {};
    for (const p of this.enabled) pfs[p] = { ...newPrefetcherCounters(), cutBlobs: 0 };
    this.stats = {
      policy: this.policy,
      capacity: cap,
      prefetch: [...this.enabled],
      requests: 0,
      uncached: 0,
      byClass: { metadata: newClassStats(), data: newClassStats() },
      source: { reads: 0, bytes: 0, demandReads: 0, demandBytes: 0 },
      waited: { requests: 0, ms: 0 },
      prefetchers: pfs,
      segments: { metadata: 0, probation: 0, protected: 0 },
      limits: { metadata: this.metaCap, data: this.dataCap },
    };
  }

  /** Counters so far (a copy), with hit rates: (hits + prefetched) / requests per class. */
  snapshot(): BlobCacheStats {
    const s = structuredClone(this.stats);
    fillHitRates(s.byClass);
    s.segments = this.blobs.bytes();
    return s;
  }

  /** Resolves when no prefetch is queued or running (tests). */
  idle(): Promise<void> {
    return this.prefetches.idle();
  }

  /** Whether the blob is held now. */
  has(digest: string): boolean {
    return this.blobs.get(digest) !== undefined;
  }

  /**
   * The blob's plain bytes (shared with the cache: read them, never change them), counted as
   * `req.class`; with `req.next`, the `file` prefetcher fetches what follows in the background.
   */
  async get(digest: string, req: BlobRequest): Promise<Uint8Array> {
    this.stats.requests++;
    const cs = this.stats.byClass[req.class];
    cs.requests++;
    // the plan is queued first: its fetches start while this request waits for its own
    if (req.next && this.enabled.has('file')) this.plan('file', 'data', req.next, digest);
    let outcome: BlobOutcome;
    let data = this.blobs.get(digest);
    if (data) {
      const by = this.fresh.get(digest);
      if (by !== undefined) {
        outcome = 'prefetched';
        this.fresh.delete(digest);
        this.stats.prefetchers[by].usedBytes += data.length;
        this.blobs.touch(digest, false);
      } else {
        outcome = 'hit';
        this.blobs.touch(digest, true);
      }
      this.prefetches.pump();
    } else {
      const t0 = performance.now();
      const f = this.inflight.get(digest);
      let p: Promise<Uint8Array>;
      if (f) {
        p = f.p;
        outcome = f.by ? 'prefetched' : 'miss';
      } else {
        p = this.fetchBlob(digest, req.class);
        outcome = 'miss';
      }
      this.prefetches.pump();
      data = await p;
      this.stats.waited.requests++;
      this.stats.waited.ms += performance.now() - t0;
      if (f?.by) {
        this.stats.prefetchers[f.by].usedBytes += data.length;
        if (this.fresh.delete(digest)) this.blobs.touch(digest, false);
      }
    }
    cs.bytes += data.length;
    if (outcome === 'hit') cs.hits++;
    else if (outcome === 'prefetched') cs.prefetched++;
    else cs.misses++;
    return data;
  }

  /** The `meta` prefetcher: manifests a manifest just read names (its parts, a layout's file manifests). */
  hint(digests: readonly string[]): void {
    if (!this.enabled.has('meta') || digests.length === 0) return;
    this.plan('meta', 'metadata', digests);
    this.prefetches.pump();
  }

  private insert(d: string, data: Uint8Array, cls: BlobClass, by?: string): void {
    if (this.blobs.get(d)) return;
    const meta = this.metaCap > 0 && cls === 'metadata';
    // a blob bigger than a quarter of its segment is served, not kept (one would flush the rest)
    if (data.length > (meta ? this.metaCap : this.dataCap) / 4) {
      this.stats.uncached++;
      return;
    }
    this.blobs.insert(d, data, meta);
    if (by !== undefined && this.blobs.get(d)) this.fresh.set(d, by);
  }

  private fetchBlob(d: string, cls: BlobClass, by?: string): Promise<Uint8Array> {
    const p = this.fetch(d).then(
      (data) => {
        if (this.inflight.get(d)?.p === p) this.inflight.delete(d);
        this.stats.source.reads++;
        this.stats.source.bytes += data.length;
        if (by === undefined) {
          this.stats.source.demandReads++;
          this.stats.source.demandBytes += data.length;
        } else {
          const s = this.stats.prefetchers[by];
          s.fetches++;
          s.fetchedBytes += data.length;
        }
        if (!this.prefetches.closed) this.insert(d, data, cls, by);
        return data;
      },
      (e) => {
        if (this.inflight.get(d)?.p === p) this.inflight.delete(d);
        throw e;
      },
    );
    this.inflight.set(d, { p, by });
    return p;
  }

  /** Queue the blobs of a plan not held, fetching or queued, within the prefetcher's bounds. */
  private plan(prefetcher: string, cls: BlobClass, digests: readonly string[], self?: string): void {
    if (this.prefetches.closed) return;
    const st = this.stats.prefetchers[prefetcher];
    const bound = this.bounds[prefetcher];
    const want: Array<{ d: string; size: number }> = [];
    const seen = new Set<string>();
    let planned = 0;
    for (let i = 0; i < digests.length; i++) {
      const d = digests[i];
      if (d === self || seen.has(d)) continue;
      seen.add(d);
      const size = this.sizeOf(d) ?? 0;
      // the window is measured from the reader: blobs already here or coming count against it
      if (planned + size > bound.perRequest) {
        st.cutBlobs += digests.length - i;
        break;
      }
      planned += size;
      if (this.blobs.get(d) || this.inflight.has(d) || this.queuedSet.has(d)) continue;
      want.push({ d, size });
    }
    if (want.length === 0) return;
    st.plans++;
    const room = bound.inFlight - (this.queued.get(prefetcher) ?? 0);
    let q = this.queued.get(prefetcher) ?? 0;
    let took = 0;
    for (const w of want) {
      if (w.size > room - took) break;
      took += w.size;
      this.prefetches.jobs.push({ digest: w.d, cls, by: prefetcher, size: w.size });
      this.queuedSet.add(w.d);
      q += w.size;
    }
    if (took === 0) {
      st.dropped++;
      return;
    }
    this.queued.set(prefetcher, q);
    st.peakInFlight = Math.max(st.peakInFlight, q);
  }

  /** A prefetch job off the queue: fetch its blob unless held or coming already. */
  private startJob(job: Job): Promise<unknown> | undefined {
    this.queuedSet.delete(job.digest);
    if (this.blobs.get(job.digest) || this.inflight.has(job.digest)) return undefined;
    return this.fetchBlob(job.digest, job.cls, job.by);
  }

  /** Stop prefetching and drop what is held (the service closing). */
  async close(): Promise<void> {
    const done = this.prefetches.stop();
    this.queuedSet.clear();
    await done;
    this.blobs.clear();
    this.fresh.clear();
  }

  /** Prometheus lines for the service's /metrics: requests by class and outcome, source reads, prefetched bytes. */
  metricLines(): string[] {
    const s = this.snapshot();
    const out = [
      '# HELP strata_blob_cache_requests_total Blob reads of the file routes through the live blob cache, by class and outcome.',
      '# TYPE strata_blob_cache_requests_total counter',
    ];
    for (const [c, k] of Object.entries(s.byClass))
      for (const [outcome, n] of [
        ['hit', k.hits],
        ['prefetched', k.prefetched],
        ['miss', k.misses],
      ] as const)
        out.push(`strata_blob_cache_requests_total{class="${c}",outcome="${outcome}"} ${n}`);
    out.push('# HELP strata_blob_cache_hit_ratio (hits + prefetched) / requests, by class.');
    out.push('# TYPE strata_blob_cache_hit_ratio gauge');
    for (const [c, k] of Object.entries(s.byClass)) out.push(`strata_blob_cache_hit_ratio{class="${c}"} ${k.hitRate}`);
    out.push('# TYPE strata_blob_cache_source_reads_total counter');
    out.push(`strata_blob_cache_source_reads_total ${s.source.reads}`);
    out.push('# TYPE strata_blob_cache_source_bytes_total counter');
    out.push(`strata_blob_cache_source_bytes_total ${s.source.bytes}`);
    out.push('# TYPE strata_blob_cache_prefetch_bytes_total counter');
    for (const [name, x] of Object.entries(s.prefetchers))
      out.push(`strata_blob_cache_prefetch_bytes_total{prefetcher="${name}"} ${x.fetchedBytes}`);
    out.push('# TYPE strata_blob_cache_bytes gauge');
    for (const [seg, n] of Object.entries(s.segments)) out.push(`strata_blob_cache_bytes{segment="${seg}"} ${n}`);
    return out;
  }
}
