import type { BlockMap } from '../blockmap/block-map.js';
import type { ByteSource } from '../io/byte-source.js';
import type { IntrospectiveCache, IntrospectiveCacheStats, LiveCachePolicy } from '../io/introspective-cache.js';
import { type ExportCacheOptions, openExportCache } from '../serve/nbd/cache.js';
import type { DeploySource } from './deployer.js';

/** How a deploy's source cache is chosen (`strata deploy --source-cache --source-prefetch --source-cache-size`). */
export interface DeploySourceCacheOptions {
  policy: LiveCachePolicy;
  /** introspective: prefetchers on (default all; [] for none). */
  prefetch?: readonly string[];
  /** Bytes (default 64 MiB). */
  cacheSize?: number;
  /** introspective: the source's block map (default: built from the source before the deploy serves). */
  map?: BlockMap;
  tuning?: ExportCacheOptions['tuning'];
}

/** A deploy source with the live cache in front of it, and the cache's counters. */
export type CachedDeploySource = DeploySource & {
  readonly sourceCache: IntrospectiveCache;
  cacheStats(): IntrospectiveCacheStats;
};

/**
 * Issue 27 on deploy's source side: the same live cache `strata nbd` has (io/introspective-cache.ts,
 * the block map's classes and prefetchers) in front of what a deploy reads a version or an
 * image from. A guest's read (urgent) is a request of the cache: classified once through the
 * map (so a `--trace` record gains its class, owner and outcome), answered from the cache or
 * fetched, and what the map says comes next (the file's next extents, the inode table blocks
 * of a directory's entries ...) is fetched in the background within its bounds, so the guest's
 * next reads find it. The background copy (not urgent) takes what the cache holds and reads
 * the rest straight from the source: it neither counts as a request nor flushes the cache.
 */
export async function cachedDeploySource(src: DeploySource, o: DeploySourceCacheOptions): Promise<CachedDeploySource> {
  // the cache's reads are for a guest that waits (a demand, or what it reads next): urgent
  const inner: ByteSource = {
    name: src.name,
    size: src.size,
    read: async (offset, length) => {
      const b = new Uint8Array(Math.max(0, Math.min(length, src.size - offset)));
      const n = await src.readInto(offset, b, true);
      return n < b.length ? b.subarray(0, n) : b;
    },
    readInto: (offset, out) => src.readInto(offset, out, true),
    status: (offset, length) => src.status(offset, length),
  };
  const cache = await openExportCache(inner, {
    policy: o.policy,
    prefetch: o.prefetch,
    cacheSize: o.cacheSize,
    map: o.map,
    tuning: o.tuning,
  });
  const out: CachedDeploySource = {
    name: src.name,
    size: src.size,
    layout: src.layout,
    manifestDigest: src.manifestDigest,
    ref: src.ref,
    layoutOf: src.layoutOf?.bind(src),
    sourceCache: cache,
    cacheStats: () => cache.snapshot(),
    readInto: async (offset, buf, urgent) => {
      const n = Math.max(0, Math.min(buf.length, src.size - offset));
      const view = buf.subarray(0, n);
      if (urgent) await cache.readInto(offset, view);
      else if (!cache.peekInto(offset, view)) return src.readInto(offset, buf, false);
      return n;
    },
    status: (offset, length) => src.status(offset, length),
    close: async () => {
      await cache.stop();
      await src.close();
    },
  };
  // what the deploy reads are the source's, not the wrapper's (a request log names the version)
  Object.defineProperty(out, 'ref', { get: () => src.ref, set: (v) => (src.ref = v), enumerable: true });
  return out;
}
