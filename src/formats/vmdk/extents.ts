import { type ByteSource, type Extent, pushExtent, readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { pushHostStatus } from '../layer.js';
import { readHost } from '../read-plan.js';

/** Fill `out[at, at+len)` with what lies below this layer at virtual offset `virt`. */
export type Below = (virt: number, len: number, at: number) => Promise<void>;

/** One extent of a VMDK disk: bytes [start, start+bytes) of the virtual disk. */
export interface VmdkExtent {
  readonly kind: string;
  readonly start: number;
  readonly bytes: number;
  /**
   * Fill out[at, at+len) with extent bytes [off, off+len) (offsets relative to the extent).
   * Unless `dirty`, `out` arrives zero-filled and ranges that read as zeros may be left
   * alone; a dirty buffer (readInto) must have them zeroed.
   */
  read(off: number, len: number, out: Uint8Array, at: number, below: Below, dirty?: boolean): Promise<void>;
  /** Push this extent's status of [off, off+len) (virtual offsets) onto `out`. */
  status(off: number, len: number, out: Extent[]): Promise<void>;
  /** The bytes of [off, off+len) as one host read when they are stored contiguously (else undefined). */
  readDirect?(off: number, len: number): Promise<Uint8Array | undefined>;
  close(): Promise<void>;
}

/** FLAT / VMFS / VMFSRAW extents: a plain window of a host file. */
export class FlatExtent implements VmdkExtent {
  readonly kind = 'FLAT';
  constructor(
    private readonly src: ByteSource,
    readonly start: number,
    readonly bytes: number,
    private readonly fileOffset: number,
  ) {
    if (fileOffset + bytes > src.size) {
      throw new StrataError(
        fileOffset >= src.size && bytes > 0 ? 'CORRUPT' : 'TRUNCATED',
        `flat extent of ${bytes} bytes at ${fileOffset} needs more than the file's ${src.size} bytes`,
        { file: src.name, structure: 'vmdk flat extent', offset: fileOffset },
      );
    }
  }
  async read(off: number, len: number, out: Uint8Array, at: number): Promise<void> {
    await readHost(this.src, this.fileOffset + off, len, out, at, 'vmdk flat extent');
  }
  async status(off: number, len: number, out: Extent[]): Promise<void> {
    await pushHostStatus(out, this.src, this.fileOffset + off, len, this.start + off);
  }
  readDirect(off: number, len: number): Promise<Uint8Array> {
    return readExact(this.src, this.fileOffset + off, len, 'vmdk flat extent');
  }
  async close(): Promise<void> {}
}

/** ZERO extents: no file, reads as zeros. */
export class ZeroExtent implements VmdkExtent {
  readonly kind = 'ZERO';
  constructor(
    readonly start: number,
    readonly bytes: number,
  ) {}
  async read(_off: number, len: number, out: Uint8Array, at: number, _below: Below, dirty?: boolean): Promise<void> {
    if (dirty) out.fill(0, at, at + len); // else `out` is zero-filled already
  }
  async status(off: number, len: number, out: Extent[]): Promise<void> {
    pushExtent(out, this.start + off, len, 'zero');
  }
  async close(): Promise<void> {}
}
