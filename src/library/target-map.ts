import type { BlockMap } from '../blockmap/block-map.js';
import { buildBlockMap, type StreamedMap, streamBlockMap } from '../blockmap/build.js';
import { CLAIM_BYTES } from '../blockmap/claims.js';
import type { RecordSink } from '../blockmap/resolve.js';
import type { OpenOptions } from '../formats/types.js';
import type { FsOpenOptions } from '../fs/types.js';
import type { DiskInspection } from '../inspect/inspect.js';
import { inspectVolumes } from '../inspect/inspect.js';
import { memoryBudget, memoryShare, SMALL_BUDGET } from '../util/memory.js';
import { discoverVolumes } from '../volumes/discover.js';
import { closeTarget, type OpenedTarget, openTargetImage, type Target, type TargetOptions } from './target.js';

/**
 * Decoded store frames a library version's block map keeps (Store.limitFrames). At a budget
 * of 128 MiB and more, the frames' share (a third, up to 48 MiB): the map's walk goes back
 * and forth between directory blocks and inode tables, and fewer frames thrash at scale (the
 * 1,000,000-entry version with 16 MiB of frames: 183 MiB peak RSS, but 22 GB read from the
 * packs and over 10 minutes, load 15-20, where the share took ~3). In a smaller budget, where
 * memory is what was asked for, a quarter of it (8-16 MiB): at the 200,000-entry version and
 * the default budget, 191 frame decodes with the share, 591 with 16 MiB, 3,170 with 8 MiB.
 */
const MAP_FRAMES = () =>
  memoryBudget() <= SMALL_BUDGET ? memoryShare(1 / 4, 8 << 20, 16 << 20) : Number.POSITIVE_INFINITY;

/** The block map of a target (image file, URL or library version); `onTarget` hears what it was understood as. */
export async function blockMapOfTarget(
  arg: string,
  openOptions: OpenOptions = {},
  opts: TargetOptions & { onTarget?: (t: Target) => void } = {},
): Promise<BlockMap> {
  const t = await openTargetImage(arg, openOptions, { ...opts, storeFrameBytes: MAP_FRAMES() });
  try {
    opts.onTarget?.(t.target);
    return await buildBlockMap(t.image, { fsOptions: mapOptions(t).fsOptions });
  } finally {
    await closeTarget(t);
  }
}

/** Inspect the disk of a target (every OS root), as inspectImage does for an image file. */
export async function inspectTarget(
  arg: string,
  openOptions: OpenOptions = {},
  opts: TargetOptions & { onTarget?: (t: Target) => void } = {},
): Promise<DiskInspection> {
  const t = await openTargetImage(arg, openOptions, opts);
  try {
    opts.onTarget?.(t.target);
    const found = await discoverVolumes(t.image);
    const r = await inspectVolumes(found.volumes, t.name, { diskId: found.diskId, fsOptions: t.fsOptions });
    return { roots: r.roots, warnings: [...t.image.warnings, ...found.warnings, ...r.warnings] };
  } finally {
    await closeTarget(t);
  }
}

/**
 * The block map of a target streamed record by record in disk order (streamBlockMap):
 * memory bounded by the budget whatever the tree, for `blockmap --summary` and the listing.
 */
export async function streamBlockMapOfTarget(
  arg: string,
  openOptions: OpenOptions,
  opts: TargetOptions & { onTarget?: (t: Target) => void },
  begin: (m: StreamedMap) => void,
  sink: RecordSink,
  drain?: () => Promise<void>,
  end?: (m: StreamedMap) => void | Promise<void>,
): Promise<StreamedMap> {
  const t = await openTargetImage(arg, openOptions, { ...opts, storeFrameBytes: MAP_FRAMES() });
  try {
    opts.onTarget?.(t.target);
    return await streamBlockMap(t.image, begin, sink, { drain, end, ...mapOptions(t) });
  } finally {
    await closeTarget(t);
  }
}

/**
 * How a target's block map is built. An image file: the defaults. A library version is read
 * through the store, whose read caches take their own shares of the budget (decoded frames
 * a third, read scratch an eighth, spare buffers 3/32: memory.ts SHARES) beside the map's and
 * the file system's, which together asked for more than the budget (issue 22: the
 * 1,000,000-entry version's map stopped at 160 MiB of data, the image's took ~125). So for
 * a version the file system's caches are small (the walk reads each directory block and
 * each inode once, and a miss is served from the decoded frames behind them) and the claims
 * and names held before a spill are a 40th of the budget each, not a tenth (the 1,000,000-entry
 * version's summary at a twentieth: 257 MiB peak RSS at load 23).
 */
function mapOptions(t: OpenedTarget): { fsOptions: FsOpenOptions; maxClaims?: number; maxNameBytes?: number } {
  if (t.target.kind !== 'ref') return { fsOptions: t.fsOptions };
  const spill = memoryShare(1 / 40, 1 << 20, 1 << 28);
  return {
    fsOptions: {
      metadataCacheBytes: memoryShare(1 / 64, 1 << 20, 8 << 20),
      inodeCacheBytes: memoryShare(1 / 64, 1 << 20, 4 << 20),
      ...t.fsOptions,
    },
    maxClaims: Math.floor(spill / CLAIM_BYTES),
    maxNameBytes: spill,
  };
}
