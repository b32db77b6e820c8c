import { StrataError } from '../util/errors.js';
import type { ByteSource } from './byte-source.js';
import { FilterSource, type Unwrapped } from './filter-source.js';

/**
 * A window [start, start+size) of another source: a partition, an LV segment, an extent
 * file. Bytes past the parent's end read as zeros (a partition table may claim more than a
 * truncated image holds). It exposes `fd` only at start 0 (see FilterSource) and does not
 * close its parent, which other slices share.
 */
export class SliceSource extends FilterSource {
  readonly name: string;
  constructor(
    readonly parent: ByteSource,
    readonly start: number,
    readonly size: number,
    name?: string,
  ) {
    super();
    this.name = name ?? `${parent.name}[${start}+${size}]`;
    if (start < 0 || size < 0 || !Number.isSafeInteger(start + size)) {
      throw new StrataError('USAGE', `bad slice ${start}+${size}`, { file: parent.name });
    }
  }

  /** A slice hands out its parent's buffers (or a fresh one where it pads with zeros). */
  override get freshReads(): boolean {
    return this.parent.freshReads === true;
  }

  unwrap(): Unwrapped {
    return { source: this.parent, offset: this.start };
  }
}
