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

export interface BlobPrefetchBound {
  /** Bytes one request may make this prefetcher fetch. */
  perRequest: number;
  /** Bytes of this prefetcher queued or being fetched at once. */
  inFlight: number;
}

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

export interface BlobClassStats {
  requests: number;
  hits: number;
  prefetched: number;
  misses: number;
  bytes: number;
  hitRate: number;
}

export interface BlobPrefetcherStats {
  plans: number;
  dropped: number;
  /** Blobs a plan named that the per-request bound cut. */
  cutBlobs: number;
  fetches: number;
  fetchedBytes: number;
  usedBytes: number;
  peakInFlight: number;
  errors: number;
}

export interface BlobCacheStats {
  policy: BlobCachePolicy;
  capacity: number;
  prefetch: string[];
  requests: number;
  /** Blobs larger than their segment's quarter: served, not kept. */
  uncached: number;
  byClass: Record<BlobClass, BlobClassStats>;
  source: { reads: number; bytes: number; demandReads: number; demandBytes: number };
  waited: { requests: number; ms: number };
  prefetchers: Record<string, BlobPrefetcherStats>;
  /** Bytes held per segment now, and the most each may hold. */
  segments: { metadata: number; probation: number; protected: number };
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
  private readonly concurrency: number;
  private readonly metaCap: number;
  private readonly dataCap: number;
  private readonly protectCap: number;
  // segments: Map insertion order is recency (first = least recent)
  private readonly meta = new Map<string, Uint8Array>();
  private readonly probation = new Map<string, Uint8Array>();
  private readonly protect = new Map<string, Uint8Array>();
  private metaBytes = 0;
  private probationBytes = 0;
  private protectBytes = 0;
  /** Blobs a prefetcher brought in that no request has used yet, and by whom. */
  private readonly fresh = new Map<string, string>();
  private readonly inflight = new Map<string, { p: Promise<Uint8Array>; by?: string }>();
  private readonly queue: Job[] = [];
  private readonly queuedSet = new Set<string>();
  private readonly queued = new Map<string, number>();
  private active = 0;
  private idleWaiters: Array<() => void> = [];
  private closed = false;
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
    this.protectCap = intro ? Math.floor(this.dataCap * 0.8) : 0;
    const want = intro ? (opts.prefetch ?? BLOB_PREFETCHERS) : [];
    for (const p of want)
      if (!BLOB_PREFETCHERS.includes(p))
        throw new StrataError('USAGE', `no blob prefetcher '${p}' (${BLOB_PREFETCHERS.join(', ')})`);
    this.enabled = new Set(want);
    this.bounds = {};
    for (const p of BLOB_PREFETCHERS) this.bounds[p] = { ...DEFAULT_BLOB_BOUNDS[p], ...opts.bounds?.[p] };
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    const cls = (): BlobClassStats => ({ requests: 0, hits: 0, prefetched: 0, misses: 0, bytes: 0, hitRate: 0 });
    const pfs: Record<string, BlobPrefetcherStats> = {};
    for (const p of this.enabled)
      pfs[p] = {
        plans: 0,
        dropped: 0,
        cutBlobs: 0,
        fetches: 0,
        fetchedBytes: 0,
        usedBytes: 0,
        peakInFlight: 0,
        errors: 0,
      };
    this.stats = {
      policy: this.policy,
      capacity: cap,
      prefetch: [...this.enabled],
      requests: 0,
      uncached: 0,
      byClass: { metadata: cls(), data: cls() },
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
    for (const c of Object.values(s.byClass))
      c.hitRate = c.requests ? +((c.hits + c.prefetched) / c.requests).toFixed(4) : 0;
    s.segments = { metadata: this.metaBytes, probation: this.probationBytes, protected: this.protectBytes };
    return s;
  }

  /** Resolves when no prefetch is queued or running (tests). */
  idle(): Promise<void> {
    if (this.active === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Whether the blob is held now. */
  has(digest: string): boolean {
    return this.lookup(digest) !== undefined;
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
    let data = this.lookup(digest);
    if (data) {
      const by = this.fresh.get(digest);
      if (by !== undefined) {
        outcome = 'prefetched';
        this.fresh.delete(digest);
        this.stats.prefetchers[by].usedBytes += data.length;
        this.touch(digest, false);
      } else {
        outcome = 'hit';
        this.touch(digest, true);
      }
      this.pump();
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
      this.pump();
      data = await p;
      this.stats.waited.requests++;
      this.stats.waited.ms += performance.now() - t0;
      if (f?.by) {
        this.stats.prefetchers[f.by].usedBytes += data.length;
        if (this.fresh.delete(digest)) this.touch(digest, false);
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
    this.pump();
  }

  private lookup(d: string): Uint8Array | undefined {
    return this.meta.get(d) ?? this.probation.get(d) ?? this.protect.get(d);
  }

  private touch(d: string, promote: boolean): void {
    let b = this.meta.get(d);
    if (b) {
      this.meta.delete(d);
      this.meta.set(d, b);
      return;
    }
    b = this.protect.get(d);
    if (b) {
      this.protect.delete(d);
      this.protect.set(d, b);
      return;
    }
    b = this.probation.get(d);
    if (!b) return;
    this.probation.delete(d);
    if (promote && this.protectCap > 0) {
      this.probationBytes -= b.length;
      this.protect.set(d, b);
      this.protectBytes += b.length;
      while (this.protectBytes > this.protectCap) {
        const k = this.protect.keys().next().value as string;
        const v = this.protect.get(k)!;
        this.protect.delete(k);
        this.protectBytes -= v.length;
        this.probation.set(k, v);
        this.probationBytes += v.length;
      }
    } else this.probation.set(d, b);
  }

  private insert(d: string, data: Uint8Array, cls: BlobClass, by?: string): void {
    if (this.lookup(d)) return;
    const meta = this.metaCap > 0 && cls === 'metadata';
    // a blob bigger than a quarter of its segment is served, not kept (one would flush the rest)
    if (data.length > (meta ? this.metaCap : this.dataCap) / 4) {
      this.stats.uncached++;
      return;
    }
    if (meta) {
      this.meta.set(d, data);
      this.metaBytes += data.length;
      while (this.metaBytes > this.metaCap) {
        const k = this.meta.keys().next().value as string;
        this.metaBytes -= this.meta.get(k)!.length;
        this.meta.delete(k);
        this.fresh.delete(k);
      }
    } else {
      this.probation.set(d, data);
      this.probationBytes += data.length;
      while (this.probationBytes + this.protectBytes > this.dataCap) {
        const from = this.probation.size > 0 ? this.probation : this.protect;
        const k = from.keys().next().value as string;
        const n = from.get(k)!.length;
        from.delete(k);
        if (from === this.probation) this.probationBytes -= n;
        else this.protectBytes -= n;
        this.fresh.delete(k);
      }
    }
    if (by !== undefined && this.lookup(d)) this.fresh.set(d, by);
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
        if (!this.closed) this.insert(d, data, cls, by);
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
    if (this.closed) return;
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
      if (this.lookup(d) || this.inflight.has(d) || this.queuedSet.has(d)) continue;
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
      this.queue.push({ digest: w.d, cls, by: prefetcher, size: w.size });
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

  private pump(): void {
    while (this.active < this.concurrency && this.queue.length > 0 && !this.closed) {
      const job = this.queue.shift()!;
      this.queuedSet.delete(job.digest);
      const release = () => this.queued.set(job.by, (this.queued.get(job.by) ?? 0) - job.size);
      if (this.lookup(job.digest) || this.inflight.has(job.digest)) {
        release();
        continue;
      }
      this.active++;
      this.fetchBlob(job.digest, job.cls, job.by)
        .catch(() => {
          this.stats.prefetchers[job.by].errors++;
        })
        .finally(() => {
          this.active--;
          release();
          this.pump();
        });
    }
    if (this.active === 0 && (this.queue.length === 0 || this.closed)) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const r of w) r();
    }
  }

  /** Stop prefetching and drop what is held (the service closing). */
  async close(): Promise<void> {
    this.closed = true;
    this.queue.length = 0;
    this.queuedSet.clear();
    await this.idle();
    this.meta.clear();
    this.probation.clear();
    this.protect.clear();
    this.fresh.clear();
    this.metaBytes = this.probationBytes = this.protectBytes = 0;
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
