import type { BlockMap } from '../blockmap/block-map.js';
import { buildBlockMap, type StreamedMap, streamBlockMap } from '../blockmap/build.js';
import { CLAIM_BYTES } from '../blockmap/claims.js';
import type { RecordSink } from '../blockmap/resolve.js';
import type { OpenOptions } from '../formats/types.js';
import type { FsOpenOptions } from '../fs/types.js';
import type { DiskInspection } from '../inspect/inspect.js';
import { inspectVolumes } from '../inspect/inspect.js';
import { memoryShare } from '../util/memory.js';
import { discoverVolumes } from '../volumes/discover.js';
import {
  closeTarget,
  type OpenedTarget,
  openTargetImage,
  type Target,
  type TargetOptions,
  versionPassOptions,
} from './target.js';

/** The block map of a target (image file, URL or library version); `onTarget` hears what it was understood as. */
export async function blockMapOfTarget(
  arg: string,
  openOptions: OpenOptions = {},
  opts: TargetOptions & { onTarget?: (t: Target) => void } = {},
): Promise<BlockMap> {
  const t = await openTargetImage(arg, openOptions, { ...opts, ...versionPassOptions() });
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
  const t = await openTargetImage(arg, openOptions, { ...opts, ...versionPassOptions() });
  try {
    opts.onTarget?.(t.target);
    return await streamBlockMap(t.image, begin, sink, { drain, end, ...mapOptions(t) });
  } finally {
    await closeTarget(t);
  }
}

/**
 * How a target's block map is built. An image file: the defaults. A library version is read
 * through the store, whose read caches take their own shares of the budget beside the map's
 * and the file system's (the file system's small: versionPassOptions); the claims and names
 * held before a spill are a 40th of the budget each, not a tenth (the 1,000,000-entry
 * version's summary at a twentieth: 257 MiB peak RSS at load 23).
 */
function mapOptions(t: OpenedTarget): { fsOptions: FsOpenOptions; maxClaims?: number; maxNameBytes?: number } {
  if (t.target.kind !== 'ref') return { fsOptions: t.fsOptions };
  const spill = memoryShare(1 / 40, 1 << 20, 1 << 28);
  return { fsOptions: t.fsOptions, maxClaims: Math.floor(spill / CLAIM_BYTES), maxNameBytes: spill };
}
