import type { BlockMap } from '../../blockmap/block-map.js';
import { buildBlockMap } from '../../blockmap/build.js';
import { BlockMapIntrospector } from '../../blockmap/introspector.js';
import type { ByteSource } from '../../io/byte-source.js';
import {
  IntrospectiveCache,
  type IntrospectiveCacheOptions,
  type LiveCachePolicy,
} from '../../io/introspective-cache.js';
import { StrataError } from '../../util/errors.js';

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
}

/**
 * The live cache of an export over `source`: for `introspective`, the block map is built
 * from the source itself (a library version's chunks or an image's chain, read straight,
 * not through the cache: a map built through it would warm it) unless one is given.
 */
export async function openExportCache(source: ByteSource, o: ExportCacheOptions): Promise<IntrospectiveCache> {
  let introspector: BlockMapIntrospector | undefined;
  if (o.policy === 'introspective') {
    const map = o.map ?? (await buildBlockMap(source));
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
