import { StrataError } from '../util/errors.js';
import { LIMITS } from '../util/limits.js';

/**
 * What a range of a source holds:
 * - `data`: bytes stored at this layer;
 * - `zero`: known to read as zeros at this layer (zero cluster, discarded block, hole);
 * - `unallocated`: not stored here; reads fall through to the backing layer (or zeros if
 *   there is none).
 */
export type ExtentKind = 'data' | 'zero' | 'unallocated';

export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
}

/** Size plus positional reads: the one shape every layer passes upward. */
export interface ByteSource {
  /** A human name for errors: a path, URL or "name[part 2]". */
  readonly name: string;
  readonly size: number;
  /** Returns exactly `length` bytes, or fewer only when the range crosses the end. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Allocation status of [offset, offset+length), covering it without gaps, in order. */
  status?(offset: number, length: number): Promise<Extent[]>;
  /**
   * Optional: read up to `out.length` bytes at `offset` into `out` and return how many were
   * read (fewer only at the end). Bulk readers (convert) use it to reuse their buffers
   * instead of faulting in fresh memory on every read.
   */
  readInto?(offset: number, out: Uint8Array): Promise<number>;
  /**
   * Optional: the descriptor of the local file this source reads, byte for byte (offset N of
   * the source is offset N of the file). Bulk copiers read it with positional reads from a
   * worker thread. Plain files have one, and filters that keep offsets (see FilterSource).
   */
  readonly fd?: number;
  /**
   * Optional: `read` always returns a fresh buffer that no one else holds, which the caller
   * may rearrange in place (a plain file does; memory sources and caches hand out views of
   * bytes they keep).
   */
  readonly freshReads?: boolean;
  /**
   * Optional, on filters (see FilterSource): the source this one reads through and where its
   * offset 0 lies there, so callers see through wrappers (fileView, offsetIn) without
   * knowing their classes.
   */
  unwrap?(): { source: ByteSource; offset: number } | undefined;
  close?(): Promise<void>;
}

/** Clamp a read request against the source size and reject nonsense early. */
export function clampRead(src: { name: string; size: number }, offset: number, length: number): number {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new StrataError('USAGE', `bad read request (${offset}, ${length})`, { file: src.name });
  }
  if (length > LIMITS.maxReadBytes) {
    throw new StrataError('LIMIT', `read of ${length} bytes exceeds the ${LIMITS.maxReadBytes}-byte limit`, {
      file: src.name,
      offset,
    });
  }
  if (offset >= src.size) return 0;
  return Math.min(length, src.size - offset);
}

/**
 * Clamp a status request to the source. Unlike reads, status ranges are not limited to
 * LIMITS.maxReadBytes (a map walks a disk in 1 GiB steps); they only have to make sense.
 */
export function clampStatus(src: { name: string; size: number }, offset: number, length: number): number {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new StrataError('USAGE', `bad status request (${offset}, ${length})`, { file: src.name });
  }
  return Math.max(0, Math.min(length, src.size - offset));
}

/**
 * Read into `out` (from `offset`): through `readInto` where the source has it, else `read`
 * and a copy. Returns how many bytes arrived (fewer at the source's end); the rest of `out`
 * is left as it was.
 */
export async function readIntoOrCopy(src: ByteSource, offset: number, out: Uint8Array): Promise<number> {
  if (src.readInto) return src.readInto(offset, out);
  const b = await src.read(offset, out.length);
  const n = Math.min(out.length, b.length);
  out.set(b.subarray(0, n));
  return n;
}

/** Read exactly `length` bytes or fail with TRUNCATED naming the structure. */
export async function readExact(
  src: ByteSource,
  offset: number,
  length: number,
  structure: string,
): Promise<Uint8Array> {
  if (offset < 0 || offset + length > src.size) {
    throw new StrataError(
      offset >= src.size ? 'CORRUPT' : 'TRUNCATED',
      `${length} bytes at ${offset} lie past the end (size ${src.size})`,
      { file: src.name, structure, offset },
    );
  }
  const b = await src.read(offset, length);
  if (b.length !== length) {
    throw new StrataError('TRUNCATED', `short read: wanted ${length} bytes, got ${b.length}`, {
      file: src.name,
      structure,
      offset,
    });
  }
  return b;
}

/** Push an extent, merging with the previous one when contiguous and of the same kind. */
export function pushExtent(out: Extent[], offset: number, length: number, kind: ExtentKind): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.kind === kind && last.offset + last.length === offset) last.length += length;
  else out.push({ offset, length, kind });
}

/** Status of a source that has none of its own: everything is data. */
export async function statusOf(src: ByteSource, offset: number, length: number): Promise<Extent[]> {
  const n = Math.max(0, Math.min(length, src.size - offset));
  if (src.status) return src.status(offset, n);
  return n > 0 ? [{ offset, length: n, kind: 'data' }] : [];
}

/** True when every byte is zero (word-at-a-time where aligned). */
export function isZero(b: Uint8Array): boolean {
  let i = 0;
  const n = b.length;
  if ((b.byteOffset & 7) === 0) {
    const w = new BigUint64Array(b.buffer, b.byteOffset, n >>> 3);
    for (let k = 0; k < w.length; k++) if (w[k] !== 0n) return false;
    i = w.length << 3;
  } else if ((b.byteOffset & 3) === 0) {
    const w = new Uint32Array(b.buffer, b.byteOffset, n >>> 2);
    for (let k = 0; k < w.length; k++) if (w[k] !== 0) return false;
    i = w.length << 2;
  }
  for (; i < n; i++) if (b[i] !== 0) return false;
  return true;
}
