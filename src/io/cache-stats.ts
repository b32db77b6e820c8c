/**
 * The counters the live caches share (issue 27: io/introspective-cache.ts for a disk's blocks,
 * library/blob-cache.ts for a library's blobs), as their snapshots report them.
 */

/** Requests of one class: served from what was held and used before, from a prefetch, or after a fetch. */
export interface CacheClassStats {
  requests: number;
  hits: number;
  prefetched: number;
  misses: number;
  bytes: number;
  /** (hits + prefetched) / requests: filled in by a snapshot. */
  hitRate: number;
}

export function newClassStats(): CacheClassStats {
  return { requests: 0, hits: 0, prefetched: 0, misses: 0, bytes: 0, hitRate: 0 };
}

/** Each class's hit rate, (hits + prefetched) / requests, into a snapshot's copy. */
export function fillHitRates(byClass: Record<string, CacheClassStats>): void {
  for (const c of Object.values(byClass))
    c.hitRate = c.requests ? +((c.hits + c.prefetched) / c.requests).toFixed(4) : 0;
}

/** What one prefetcher did (what its plans' per-request bound cut each cache counts in its own unit). */
export interface PrefetcherCounters {
  /** Plans made (requests that asked this prefetcher for something to fetch). */
  plans: number;
  /** Plans dropped because the in-flight bound was full. */
  dropped: number;
  /** Source reads and bytes fetched. */
  fetches: number;
  fetchedBytes: number;
  /** Bytes of what it fetched that a request used before it was evicted. */
  usedBytes: number;
  /** Most bytes it ever had queued or in flight. */
  peakInFlight: number;
  errors: number;
}

export function newPrefetcherCounters(): PrefetcherCounters {
  return { plans: 0, dropped: 0, fetches: 0, fetchedBytes: 0, usedBytes: 0, peakInFlight: 0, errors: 0 };
}

/** What both caches' snapshots hold (each adds its own). */
export interface LiveCacheStats<P extends PrefetcherCounters> {
  /** Bytes the cache holds at the most. */
  capacity: number;
  /** The prefetchers on. */
  prefetch: string[];
  requests: number;
  byClass: Record<string, CacheClassStats>;
  /** Source reads and bytes, and of them those a request asked for (the rest prefetched). */
  source: { reads: number; bytes: number; demandReads: number; demandBytes: number };
  /**
   * Requests that waited for the source (a fetch of their own, or another's still in flight),
   * and the milliseconds they spent waiting: the time a client spent on the link.
   */
  waited: { requests: number; ms: number };
  prefetchers: Record<string, P>;
  /** Bytes held per segment now. */
  segments: { metadata: number; probation: number; protected: number };
}
