import { write } from 'node:fs';
import { promisify } from 'node:util';
import type { DirectPiece, DiskImage } from '../../formats/types.js';
import type { DirectTarget } from '../../formats/writers/index.js';
import { readIntoOrCopy } from '../../io/byte-source.js';
import { COPY_CLONE, COPY_HOLES, type NativeCopyRange, nativeCopyRange } from '../../io/native.js';
import { pageAlignedBuffer } from '../../util/aligned.js';
import { StrataError } from '../../util/errors.js';
import { firstNonZeroBlock } from '../../util/zero.js';

/**
 * The bulk copy into a raw output without worker threads: file-backed pieces of the disk
 * (raw data, uncompressed qcow2 clusters, vhdx/vhd/vdi blocks) are copied by native/copy.c
 * on libuv's thread pool, a few ranges in flight; holes inside them are found with
 * SEEK_DATA, zero granules are not written, and where the file system can share extents
 * (btrfs, xfs) a range is reflinked instead of copied. Pieces only the reader can produce
 * (compressed clusters, remote files) are read on the main thread and written like the rest.
 *
 * Against direct-copy.ts's two worker isolates this costs nothing to start (each isolate
 * took ~25 ms of a core before copying its first byte) and copies with the same two cores.
 */

/** A range handed to the pool at once: large enough that the hop (~0.1 ms) is noise. */
const RANGE_BYTES = 4 * 1024 * 1024;
/** Ranges in flight: the two cores, plus one queued so neither waits for the main thread. */
const IN_FLIGHT = 3;
/** The disk is mapped this much at a time. */
const WINDOW = 64 * 1024 * 1024;
/** Reader-produced ('other') bytes read at once. */
const OTHER_BYTES = 1024 * 1024;
/** cloneErrno that only says this range was misaligned: keep trying reflinks on the others. */
const EINVAL = 22;

const writeP = promisify(write);

export interface NativeCopyOptions {
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
  outName: string;
}

/** Whether nativeCopy can run here (the addon is built) for this target. */
export function canCopyNatively(target: DirectTarget): boolean {
  return target.layout === 'raw' && nativeCopyRange() !== undefined;
}

/** Copy the whole virtual disk of `src` into the raw `target`; returns the bytes read from the source. */
export async function nativeCopy(src: DiskImage, target: DirectTarget, opts: NativeCopyOptions): Promise<number> {
  const copy: NativeCopyRange | undefined = nativeCopyRange();
  const direct = src.direct?.bind(src);
  if (!copy || !direct || target.layout !== 'raw') {
    throw new StrataError('USAGE', 'this image cannot be copied natively', { file: src.name });
  }
  const total = src.size;
  const gran = target.granularity;
  let flags = COPY_HOLES | COPY_CLONE;
  let bytesRead = 0;
  let written = 0;
  let done = 0;
  let failure: Error | undefined;
  const inFlight = new Set<Promise<void>>();
  const otherBuf = pageAlignedBuffer(OTHER_BYTES);

  const check = () => {
    if (failure) throw failure;
    if (opts.signal?.aborted) throw new StrataError('USAGE', 'conversion interrupted', { file: src.name });
  };
  const track = (p: Promise<void>) => {
    const q = p.then(
      () => {
        inFlight.delete(q);
      },
      (e: Error) => {
        inFlight.delete(q);
        failure ??= e;
      },
    );
    inFlight.add(q);
  };
  const room = async () => {
    while (inFlight.size >= IN_FLIGHT) await Promise.race(inFlight);
    check();
  };

  const copyFile = (p: Extract<DirectPiece, { kind: 'file' }>, at: number, len: number): Promise<void> => {
    const host = p.host + (at - p.offset);
    return copy(p.fd, host, target.fd, at, len, gran, flags).then(
      (r) => {
        if (r.cloneErrno !== 0 && r.cloneErrno !== EINVAL) flags &= ~COPY_CLONE;
        written += r.written;
        done += len;
        opts.onProgress?.(done, total);
      },
      (e: NodeJS.ErrnoException & { side?: string; offset?: number }) => {
        const where =
          e.side === 'write'
            ? { file: opts.outName, structure: 'raw data', offset: e.offset ?? at }
            : { file: p.file, structure: 'image data', offset: e.offset ?? host };
        throw new StrataError(e.message.startsWith('short read') ? 'TRUNCATED' : 'IO', e.message, where);
      },
    );
  };

  /** Bytes only the reader can produce: read here, write what is not zero. */
  const copyOther = async (at: number, len: number): Promise<void> => {
    for (let o = at; o < at + len; o += OTHER_BYTES) {
      const n = Math.min(OTHER_BYTES, at + len - o);
      const view = otherBuf.subarray(0, n);
      const got = await readIntoOrCopy(src, o, view);
      if (got !== n) {
        throw new StrataError('TRUNCATED', `short read: wanted ${n} bytes, got ${got}`, {
          file: src.name,
          structure: 'virtual disk',
          offset: o,
        });
      }
      bytesRead += n;
      // The buffer is reused: this range's writes finish before the next read.
      let pos = 0;
      while (pos < n) {
        const s = firstNonZeroBlock(view, pos, n, gran, false);
        if (s >= n) break;
        const e = firstNonZeroBlock(view, s, n, gran, true);
        await writeFully(target.fd, view, s, e, o, opts.outName);
        written += e - s;
        pos = e;
      }
      done += n;
      opts.onProgress?.(done, total);
      check();
    }
  };

  try {
    for (let w = 0; w < total; w += WINDOW) {
      check();
      const pieces = await direct(w, Math.min(WINDOW, total - w));
      for (const p of pieces) {
        if (p.kind !== 'file') {
          if (p.kind === 'other') {
            // Read and written on this thread while the pool copies (ranges never overlap).
            await room();
            await copyOther(p.offset, p.length);
          } else done += p.length;
          continue;
        }
        bytesRead += p.length;
        for (let at = p.offset; at < p.offset + p.length; ) {
          const len = Math.min(RANGE_BYTES - (at % RANGE_BYTES), p.offset + p.length - at);
          await room();
          track(copyFile(p, at, len));
          at += len;
        }
      }
    }
    while (inFlight.size > 0) await Promise.race(inFlight);
    check();
  } catch (e) {
    // Nothing of ours may still write into the output once the caller removes it.
    await Promise.allSettled([...inFlight]);
    throw failure ?? e;
  }
  target.done(target.head, written);
  opts.onProgress?.(total, total);
  return bytesRead;
}

async function writeFully(fd: number, buf: Uint8Array, from: number, to: number, base: number, name: string) {
  let at = from;
  while (at < to) {
    let n: number;
    try {
      n = (await writeP(fd, buf, at, to - at, base + at)).bytesWritten;
    } catch (e) {
      throw new StrataError('IO', `write failed: ${(e as Error).message}`, {
        file: name,
        structure: 'raw data',
        offset: base + at,
      });
    }
    if (n <= 0)
      throw new StrataError('IO', 'write returned 0 bytes', { file: name, structure: 'raw data', offset: base + at });
    at += n;
  }
}
