import type { BlockMap } from '../blockmap/block-map.js';
import { buildBlockMap, type StreamedMap, streamBlockMap } from '../blockmap/build.js';
import type { RecordSink } from '../blockmap/resolve.js';
import type { OpenOptions } from '../formats/types.js';
import type { DiskInspection } from '../inspect/inspect.js';
import { inspectVolumes } from '../inspect/inspect.js';
import { discoverVolumes } from '../volumes/discover.js';
import { closeTarget, openTargetImage, type Target, type TargetOptions } from './target.js';

/** The block map of a target (image file, URL or library version); `onTarget` hears what it was understood as. */
export async function blockMapOfTarget(
  arg: string,
  openOptions: OpenOptions = {},
  opts: TargetOptions & { onTarget?: (t: Target) => void } = {},
): Promise<BlockMap> {
  const t = await openTargetImage(arg, openOptions, opts);
  try {
    opts.onTarget?.(t.target);
    return await buildBlockMap(t.image, { fsOptions: t.fsOptions });
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
  const t = await openTargetImage(arg, openOptions, opts);
  try {
    opts.onTarget?.(t.target);
    return await streamBlockMap(t.image, begin, sink, { drain, end, fsOptions: t.fsOptions });
  } finally {
    await closeTarget(t);
  }
}
