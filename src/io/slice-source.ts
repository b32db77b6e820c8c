import { StrataError } from '../util/errors.js';
import { type ByteSource, clampRead, clampStatus, type Extent } from './byte-source.js';

/** A window [start, start+size) of another source: a partition, an LV segment, an extent file. */
export class SliceSource implements ByteSource {
  constructor(
    readonly parent: ByteSource,
    readonly start: number,
    readonly size: number,
    readonly name = `${parent.name}[${start}+${size}]`,
  ) {
    if (start < 0 || size < 0 || !Number.isSafeInteger(start + size)) {
      throw new StrataError('USAGE', `bad slice ${start}+${size}`, { file: parent.name });
    }
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    if (n === 0) return new Uint8Array(0);
    const b = await this.parent.read(this.start + offset, n);
    if (b.length === n) return b;
    // The slice extends past the parent's end: the missing tail reads as zeros.
    const out = new Uint8Array(n);
    out.set(b);
    return out;
  }
  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    if (n === 0) return [];
    if (!this.parent.status) return [{ offset, length: n, kind: 'data' }];
    const inner = await this.parent.status(this.start + offset, n);
    return inner.map((e) => ({ offset: e.offset - this.start, length: e.length, kind: e.kind }));
  }
}
