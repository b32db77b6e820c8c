import { write as writeCb } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { StrataError } from '../../util/errors.js';

export { Qcow2Writer, type Qcow2WriterOptions } from './qcow2-writer.js';
export { RawWriter } from './raw-writer.js';

export interface WriterResult {
  /** Bytes written to the output file (data, padding and metadata). */
  bytesWritten: number;
}

/**
 * An image writer: it is told what the virtual disk holds, range by range, and picks the
 * cheapest faithful representation (holes, unallocated or zero clusters, compression).
 * Ranges it is never told about read as zeros (or as the backing file, if any).
 */
export interface ImageWriter {
  readonly format: string;
  readonly path: string;
  readonly virtualSize: number;
  /** Offsets passed to `writeData` must be multiples of this. */
  readonly granularity: number;
  /**
   * The disk holds `data` at `offset` (a multiple of `granularity`). Bytes past the
   * virtual size are ignored. The writer is done with the buffer when the promise settles
   * (the caller may then reuse it). Calls may overlap (several writes in flight).
   */
  writeData(offset: number, data: Uint8Array): Promise<void>;
  /** The disk reads as zeros here, even where a backing file holds data (granularity aligned). */
  zero(offset: number, length: number): void;
  /** Flush everything (metadata last) and report the output size. */
  finish(): Promise<WriterResult>;
}

const ZEROS = Buffer.alloc(2 * 1024 * 1024);

/** True when `b[from, to)` is all zeros (native memcmp against a zero page). */
export function isZeroRange(b: Uint8Array, from: number, to: number): boolean {
  // Data blocks nearly always have a non-zero first or last byte: answer those without a native call.
  if (to > from && (b[from] !== 0 || b[to - 1] !== 0)) return false;
  let p = from;
  while (p < to) {
    const n = Math.min(to - p, ZEROS.length);
    if (Buffer.compare(b.subarray(p, p + n), ZEROS.subarray(0, n)) !== 0) return false;
    p += n;
  }
  return true;
}

/**
 * Scan blocks of `granule` bytes (aligned to the start of `b`) from `from` (aligned) up
 * to `end`: return the start of the first block that is zero (`wantZero`) or not zero
 * (`!wantZero`), or `end` when there is none.
 */
export function firstNonZeroBlock(
  b: Uint8Array,
  from: number,
  end: number,
  granule: number,
  wantZero: boolean,
): number {
  for (let p = from; p < end; p += granule) {
    const q = Math.min(end, p + granule);
    if (isZeroRange(b, p, q) === wantZero) return p;
  }
  return end;
}

/** Positional write of the whole buffer (loops on short writes), errors naming the file. */
export async function writeAll(
  fh: FileHandle,
  buf: Uint8Array,
  at: number,
  file: string,
  structure: string,
): Promise<void> {
  let done = 0;
  try {
    while (done < buf.length) {
      const n = await pwrite(fh.fd, buf, done, buf.length - done, at + done);
      if (n <= 0) throw new Error('write returned 0 bytes');
      done += n;
    }
  } catch (e) {
    throw new StrataError(
      'IO',
      `write failed: ${(e as Error).message}`,
      { file, structure, offset: at + done },
      { cause: e },
    );
  }
}

/**
 * One positional write through fs.write's callback form: FileHandle.write's promise form
 * costs about twice the main-thread CPU per call (a convert issues one per MiB).
 */
function pwrite(fd: number, buf: Uint8Array, from: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    writeCb(fd, buf, from, length, position, (err, written) => (err ? reject(err) : resolve(written)));
  });
}
