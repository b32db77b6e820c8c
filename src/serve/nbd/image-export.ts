import * as path from 'node:path';
import { closeChain } from '../../formats/layer.js';
import { openImage } from '../../formats/open.js';
import type { DiskImage, OpenOptions } from '../../formats/types.js';
import { Qcow2Overlay } from '../../formats/writers/qcow2-overlay.js';
import type { ByteSource } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import type { IntrospectiveCache } from '../../io/introspective-cache.js';
import { openDeviceTargets } from '../../library/target.js';
import { type ExportCacheOptions, openExportCache } from './cache.js';
import { chainSource, type NbdExport } from './export.js';

export interface ImageExportOptions {
  /** Export name (default: the image's file name). */
  name?: string;
  /** Send writes to this qcow2 overlay (created, or reopened when it is ours and backs onto this image). */
  overlay?: string;
  /** Bytes of block cache in front of the image (0: none, the page cache serves local files). */
  cacheSize?: number;
  /** A live cache by policy (issue 27) instead of the plain block cache; its size is `cacheSize` (default 64 MiB). */
  cache?: ExportCacheOptions;
  open?: OpenOptions;
  /**
   * The other devices of a btrfs over several (`--device FILE`): the export serves the
   * image's bytes as ever; the introspective cache's block map reads the file system
   * through every device. (Serve each device as its own export for a kernel to mount them all.)
   */
  devices?: string[];
}

/** qemu's name for each of our formats, for the overlay's backing-format field. */
const QEMU_FORMAT: Record<string, string> = { vhd: 'vpc' };

/**
 * An image file (any format Strata reads, backing chain resolved) as an NBD export,
 * read-only or writable through a qcow2 overlay whose backing file is the image.
 */
export async function openImageExport(image: string, opts: ImageExportOptions = {}): Promise<NbdExport> {
  const img = await openImage(image, opts.open ?? {});
  try {
    let source: ByteSource = chainSource(img);
    let cache: CachedSource | IntrospectiveCache | undefined;
    if (opts.cache) {
      // the devices are read while the block map is built (here, before serving), not after
      const d = await openDeviceTargets(opts.devices ?? [], opts.open ?? {});
      try {
        cache = await openExportCache(source, {
          ...opts.cache,
          cacheSize: opts.cacheSize || opts.cache.cacheSize,
          fsOptions: { devices: d.devices },
        });
      } finally {
        for (const i of d.images) await closeChain(i).catch(() => {});
      }
      source = cache;
    } else if (opts.cacheSize && opts.cacheSize > 0) {
      const blockSize = opts.cacheSize >= 64 << 20 ? 1 << 20 : 64 << 10;
      cache = new CachedSource(source, { blockSize, capacity: opts.cacheSize });
      source = cache;
    }
    const name = opts.name ?? path.basename(image);
    if (!opts.overlay) return imageExport(name, img, source, cache);
    const overlay = await Qcow2Overlay.openOrCreate(opts.overlay, source, {
      path: backingPath(opts.overlay, image),
      format: QEMU_FORMAT[img.format] ?? img.format,
    });
    return {
      name,
      description: `${describe(img)} with overlay ${opts.overlay}`,
      source: overlay,
      writer: overlay,
      prefetch: cache ? (o, l) => warm(cache, o, l) : undefined,
      cacheStats: statsOf(cache),
      close: async () => {
        try {
          await overlay.close();
        } finally {
          await stopCache(cache);
          await closeChain(img);
        }
      },
    };
  } catch (e) {
    await closeChain(img);
    throw e;
  }
}

function imageExport(
  name: string,
  img: DiskImage,
  source: ByteSource,
  cache?: CachedSource | IntrospectiveCache,
): NbdExport {
  return {
    name,
    description: describe(img),
    source,
    prefetch: cache ? (o, l) => warm(cache, o, l) : undefined,
    cacheStats: statsOf(cache),
    close: async () => {
      await stopCache(cache);
      await closeChain(img);
    },
  };
}

function describe(img: DiskImage): string {
  return `${img.format}${img.subformat ? ` (${img.subformat})` : ''} ${img.name}`;
}

/** NBD_CMD_CACHE on a cached source: read the range through the cache, 1 MiB at a time. */
async function warm(cache: CachedSource | IntrospectiveCache, offset: number, length: number): Promise<void> {
  if (!(cache instanceof CachedSource)) return cache.warm(offset, length);
  const end = Math.min(cache.size, offset + Math.min(length, cache.capacity));
  for (let o = offset; o < end; o += 1 << 20) await cache.read(o, Math.min(1 << 20, end - o));
}

/** The backing path as the overlay records it: relative to the overlay's folder when it can be. */
function backingPath(overlay: string, image: string): string {
  const rel = path.relative(path.dirname(path.resolve(overlay)), path.resolve(image));
  return rel.startsWith('..') || path.isAbsolute(rel) ? path.resolve(image) : rel;
}

/** The live cache's counters, for `--cache-stats` (the plain block cache has none by class). */
export function statsOf(cache: unknown): (() => unknown) | undefined {
  return cache && typeof (cache as IntrospectiveCache).snapshot === 'function'
    ? () => (cache as IntrospectiveCache).snapshot()
    : undefined;
}

async function stopCache(cache: CachedSource | IntrospectiveCache | undefined): Promise<void> {
  if (cache && !(cache instanceof CachedSource)) await cache.stop();
}
