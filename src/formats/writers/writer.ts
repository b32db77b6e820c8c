import { write as writeCb } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { StrataError } from '../../util/errors.js';

// What every image writer shares: the writer and direct-copy shapes, and the positional write.

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
  /** A target for bulk copies from worker threads, when this writer's layout allows one. */
  directTarget?(): DirectTarget | undefined;
}

/**
 * The output side of a bulk copy done outside the writer (src/library/convert/direct-copy.ts): the
 * copier writes data into `fd` itself, from worker threads, then hands back what it wrote.
 * Only plain layouts offer one: raw, and qcow2 without compression or a backing file.
 */
export interface DirectTarget {
  readonly fd: number;
  /**
   * 'raw': bytes go to their virtual offset, zero granules skipped (holes). 'qcow2': each
   * non-zero cluster goes to the next free host cluster from `head`, in virtual order.
   */
  readonly layout: 'raw' | 'qcow2';
  /** The zero-skip granule (raw) or the cluster size (qcow2); copies are aligned to it. */
  readonly granularity: number;
  /** qcow2: host offset of the next data cluster. */
  readonly head: number;
  /**
   * qcow2: the clusters of the range at `virt` whose `flags[i]` is 1 (i < `count`) were
   * written, in order, to consecutive host clusters from `host`.
   */
  adopt(virt: number, host: number, flags: Uint8Array, count: number): void;
  /** The copy is over: the next free host offset (qcow2) and the bytes it wrote. */
  done(head: number, bytesWritten: number): void;
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
