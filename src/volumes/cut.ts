import type { ByteSource } from '../io/byte-source.js';
import { SliceSource } from '../io/slice-source.js';
import type { Volume } from './types.js';

/** A partition as a table describes it, before it is cut out of the disk. */
export interface PartitionSpec extends Omit<Volume, 'source'> {}

/** Slice a partition out of the disk, clamping it to the disk end with a warning (flag 'truncated'). */
export function cutVolume(disk: ByteSource, warnings: string[], spec: PartitionSpec): Volume {
  const flags = spec.flags ?? [];
  let size = spec.size;
  if (spec.start >= disk.size) {
    warnings.push(
      `partition ${spec.id} starts at byte ${spec.start}, past the disk end (${disk.size}); it is empty here`,
    );
    flags.push('truncated');
    size = 0;
  } else if (spec.start + spec.size > disk.size) {
    warnings.push(
      `partition ${spec.id} (${spec.start}+${spec.size}) runs past the disk end (${disk.size}); clamped to ${disk.size - spec.start} bytes`,
    );
    flags.push('truncated');
    size = disk.size - spec.start;
  }
  const start = Math.min(spec.start, disk.size);
  const source = new SliceSource(disk, start, size, `${disk.name}[part ${spec.id}]`);
  return { ...spec, start, size, flags, source };
}
