import { closeSync, constants, openSync, read, write } from 'node:fs';
import { totalmem } from 'node:os';
import { promisify } from 'node:util';
import type { DirectPiece, DiskImage } from '../../formats/types.js';
import type { DirectTarget } from '../../formats/writers/index.js';
import { readIntoOrCopy } from '../../io/byte-source.js';
import {
  COPY_ALLDATA,
  COPY_CLONE,
  COPY_HOLES,
  COPY_KERNEL,
  COPY_PREALLOC,
  COPY_PROBE,
  type NativeCopyRange,
  nativeCopyRange,
  nativeScanClusters,
} from '../../io/native.js';
import { pageAlignedBuffer } from '../../util/aligned.js';
import { StrataError } from '../../util/errors.js';
import { firstNonZeroBlock, isZeroRange } from '../../util/zero.js';

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
/** Reader-produced ('other') bytes read at once, and the reads of them in flight. */
const OTHER_BYTES = 1024 * 1024;
const OTHER_SLOTS = 4;
/** cloneErrno that only says this range was misaligned: keep trying reflinks on the others. */
const EINVAL = 22;

const writeP = promisify(write);

/**
 * COPY_KERNEL unless STRATA_NO_KERNEL_COPY=1 (bench: the user-space copy, for comparison).
 * copy_file_range moves the bytes page cache to page cache: on this VM's ext4 it took
 * 0.26-0.32 s of system time for 800 MB where pread + pwrite took 0.5-1.3 s.
 */
function kernelCopy(): number {
  return process.env.STRATA_NO_KERNEL_COPY === '1' ? 0 : COPY_KERNEL;
}

/**
 * COPY_PREALLOC unless STRATA_NO_PREALLOC=1 (bench: without it, for comparison). Allocating
 * each written range first (as qemu-img's qcow2 driver does) spares ext4 its block-by-block
 * delayed allocation: 1 GiB mixed disk, CPU median of 8 interleaved rounds, raw -> qcow2
 * 0.47 -> 0.39 s, raw -> raw 0.40 -> 0.32 s (native/copy.c).
 */
function prealloc(): number {
  return process.env.STRATA_NO_PREALLOC === '1' ? 0 : COPY_PREALLOC;
}

/**
 * COPY_PROBE unless STRATA_NO_PROBE=1 (bench: every byte read, for comparison). Whether a
 * cluster holds data is known from its first non-zero word, so the scan of a qcow2 output's
 * clusters reads 4 KiB of each and the rest only of those that start with zeros.
 */
function probe(): number {
  return process.env.STRATA_NO_PROBE === '1' ? 0 : COPY_PROBE;
}

/**
 * The output opened again with O_DIRECT for the native copier's writes of a large disk, or
 * -1 (STRATA_DIRECT_WRITE=1 always, =0 never). A disk larger than an eighth of the memory
 * (where the kernel starts writing dirty pages back, dirty_background_ratio 10%) is written
 * past the page cache: buffered, its pages are allocated (reclaiming others), copied into,
 * throttled and written back anyway, and the writer pays for all of it. Smaller disks fit
 * the page cache and are written there (a fresh page costs less than waiting for the disk).
 */
function openDirect(fd: number, size: number): number {
  const want = process.env.STRATA_DIRECT_WRITE;
  if (want === '0' || (want !== '1' && size < totalmem() / 8) || constants.O_DIRECT === undefined) return -1;
  try {
    return openSync(`/proc/self/fd/${fd}`, constants.O_WRONLY | constants.O_DIRECT);
  } catch {
    return -1; // no /proc, or a file system without O_DIRECT: the page cache it is
  }
}

function closeDirect(fd: number): void {
  if (fd >= 0) closeSync(fd);
}

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
  let flags = COPY_HOLES | COPY_CLONE | kernelCopy() | prealloc();
  const dio = openDirect(target.fd, total);
  let bytesRead = 0;
  let written = 0;
  let done = 0;
  let failure: Error | undefined;
  const inFlight = new Set<Promise<void>>();
  const slots = pageAlignedBuffer(OTHER_BYTES * OTHER_SLOTS);
  const free: Uint8Array[] = [];
  for (let i = 0; i < OTHER_SLOTS; i++) free.push(slots.subarray(i * OTHER_BYTES, (i + 1) * OTHER_BYTES));

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
    return copy(p.fd, host, target.fd, at, len, gran, flags, dio).then(
      (r) => {
        if (r.cloneErrno !== 0 && r.cloneErrno !== EINVAL) flags &= ~COPY_CLONE;
        if (r.cfrErrno !== 0) flags &= ~COPY_KERNEL; // e.g. EXDEV: another file system
        written += r.written;
        done += len;
        opts.onProgress?.(done, total);
      },
      (e: NodeJS.ErrnoException & { side?: string; offset?: number }) => {
        throw e.side === 'write'
          ? new StrataError('IO', e.message, { file: opts.outName, structure: 'raw data', offset: e.offset ?? at })
          : pieceError(e, p, host);
      },
    );
  };

  /**
   * Bytes only the reader can produce (inflated grains, compressed clusters): read through
   * the reader into one of OTHER_SLOTS buffers, then written where not zero, several in
   * flight so the reader (and its inflate workers) never waits for a write.
   */
  const copyOther = async (o: number, n: number): Promise<void> => {
    const buf = free.pop()!;
    const view = buf.subarray(0, n);
    try {
      const got = await readIntoOrCopy(src, o, view);
      if (got !== n) {
        throw new StrataError('TRUNCATED', `short read: wanted ${n} bytes, got ${got}`, {
          file: src.name,
          structure: 'virtual disk',
          offset: o,
        });
      }
      bytesRead += n;
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
    } finally {
      free.push(buf);
    }
  };
  const otherRoom = async () => {
    while (free.length === 0 || inFlight.size >= OTHER_SLOTS + IN_FLIGHT) await Promise.race(inFlight);
    check();
  };

  try {
    for (let w = 0; w < total; w += WINDOW) {
      check();
      const pieces = await direct(w, Math.min(WINDOW, total - w));
      for (const p of pieces) {
        if (p.kind !== 'file') {
          if (p.kind === 'other') {
            // Ranges never overlap: these go on while the pool copies the file pieces.
            for (let o = p.offset; o < p.offset + p.length; ) {
              const n = Math.min(OTHER_BYTES - (o % OTHER_BYTES), p.offset + p.length - o);
              await otherRoom();
              track(copyOther(o, n));
              o += n;
            }
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
  } finally {
    closeDirect(dio);
  }
  target.done(target.head, written);
  opts.onProgress?.(total, total);
  return bytesRead;
}

/** Write buf[from, to) at base + from. */
async function writeFully(
  fd: number,
  buf: Uint8Array,
  from: number,
  to: number,
  base: number,
  name: string,
  structure = 'raw data',
) {
  let at = from;
  while (at < to) {
    let n: number;
    try {
      n = (await writeP(fd, buf, at, to - at, base + at)).bytesWritten;
    } catch (e) {
      throw new StrataError('IO', `write failed: ${(e as Error).message}`, {
        file: name,
        structure,
        offset: base + at,
      });
    }
    if (n <= 0) throw new StrataError('IO', 'write returned 0 bytes', { file: name, structure, offset: base + at });
    at += n;
  }
}

/** Virtual bytes per qcow2-output job (a multiple of every cluster size up to 2 MiB). */
const QJOB_BYTES = 4 * 1024 * 1024;
/** qcow2-output jobs in flight (each holds one buffer). */
const QJOBS = 4;

const readP = promisify(read);

/**
 * The bulk copy into an uncompressed qcow2 output, without worker threads. Each job of
 * QJOB_BYTES finds its non-zero clusters: file pieces are scanned on libuv's pool
 * (native/copy.c scanClusters), pieces only the reader can produce are read through it and
 * checked here. Its non-zero clusters take the next host clusters in virtual order (jobs are
 * placed in the order they were started, whatever order their scans finish in), so the file
 * is the same as the single-threaded writer's. Then file pieces go into their host clusters
 * with copy_file_range on the pool (no copy through user memory), the rest from the buffer;
 * zero parts of a cluster are left as holes of the fresh file. Without the addon, file
 * pieces are read into the buffer too and everything is written from it.
 */
export async function poolCopyQcow2(src: DiskImage, target: DirectTarget, opts: NativeCopyOptions): Promise<number> {
  const direct = src.direct?.bind(src);
  if (!direct || target.layout !== 'qcow2') {
    throw new StrataError('USAGE', 'this image cannot be copied directly', { file: src.name });
  }
  const scan0 = nativeScanClusters();
  const copy = nativeCopyRange();
  const scan = copy ? scan0 : undefined; // both or neither: a file piece scanned is copied natively
  let kernel = kernelCopy();
  const pre = prealloc();
  const scanFlags = probe();
  const total = src.size;
  const cs = target.granularity;
  const dio = copy ? openDirect(target.fd, total) : -1;
  const J = Math.max(QJOB_BYTES, cs);
  const bufs = pageAlignedBuffer(J * QJOBS);
  const free: Uint8Array[] = [];
  for (let i = 0; i < QJOBS; i++) free.push(bufs.subarray(i * J, (i + 1) * J));
  let head = target.head;
  let written = 0;
  let bytesRead = 0;
  let done = 0;
  let failure: Error | undefined;
  const inFlight = new Set<Promise<void>>();
  /** Resolves when the previous job has taken its host clusters. */
  let placed: Promise<void> = Promise.resolve();
  const check = () => {
    if (failure) throw failure;
    if (opts.signal?.aborted) throw new StrataError('USAGE', 'conversion interrupted', { file: src.name });
  };
  const inBuffer = (p: DirectPiece) => p.kind === 'other' || (p.kind === 'file' && !scan);

  /** Mark the clusters (of the job at `a`) whose bytes of view[s-a, e-a) are not all zeros. */
  const markFrom = (view: Uint8Array, a: number, s: number, e: number, flags: Uint8Array) => {
    for (let v = s; v < e; ) {
      const k = Math.floor((v - a) / cs);
      const ce = Math.min(e, a + (k + 1) * cs);
      if (!flags[k] && !isZeroRange(view, v - a, ce - a)) flags[k] = 1;
      v = ce;
    }
  };

  const job = async (
    a: number,
    pieces: DirectPiece[],
    before: Promise<void>,
    buf: Uint8Array,
    onPlaced: () => void,
  ) => {
    const n = pieces.reduce((s, p) => s + p.length, 0);
    const view = buf.subarray(0, n);
    const count = Math.ceil(n / cs);
    const flags = new Uint8Array(count);
    try {
      await Promise.all(
        pieces.map(async (p) => {
          const at = p.offset - a;
          const part = view.subarray(at, at + p.length);
          if (p.kind === 'zero') return;
          if (p.kind === 'file' && scan) {
            const marks = await scan(p.fd, p.host, p.length, p.offset, cs, scanFlags).catch((e) => {
              throw pieceError(e, p, p.host);
            });
            const k0 = Math.floor(at / cs);
            for (let i = 0; i < marks.length; i++) if (marks[i]) flags[k0 + i] = 1;
            return;
          }
          if (p.kind === 'file') await readFully(p.fd, part, p.host, p.file);
          else {
            const got = await readIntoOrCopy(src, p.offset, part);
            if (got !== p.length) {
              throw new StrataError('TRUNCATED', `short read: wanted ${p.length} bytes, got ${got}`, {
                file: src.name,
                structure: 'virtual disk',
                offset: p.offset,
              });
            }
          }
          markFrom(view, a, p.offset, p.offset + p.length, flags);
        }),
      );
      let k = 0;
      for (let i = 0; i < count; i++) k += flags[i];
      await before; // the jobs before this one have their clusters
      check();
      const host = head;
      head += k * cs;
      if (k > 0) target.adopt(a, host, flags, count);
      onPlaced();
      let h = host;
      for (let i = 0; i < count; ) {
        if (!flags[i]) {
          i++;
          continue;
        }
        let j = i;
        while (j < count && flags[j]) j++;
        // virtual [rs, re) goes to host [h, h + re - rs), piece by piece
        const rs = a + i * cs;
        const re = Math.min(a + n, a + j * cs);
        const writes: Promise<void>[] = [];
        for (const p of pieces) {
          const s = Math.max(rs, p.offset);
          const e = Math.min(re, p.offset + p.length);
          if (e <= s || p.kind === 'zero') continue;
          const to = h + (s - rs);
          if (inBuffer(p)) {
            writes.push(writeFully(target.fd, view, s - a, e - a, to - (s - a), opts.outName, 'qcow2 data cluster'));
          } else if (p.kind === 'file' && copy) {
            // (inBuffer is false for file pieces only when scan, and so copy, exists)
            const from = p.host + (s - p.offset);
            writes.push(
              // (any zero-skip granule will do in a fresh file: copy.c takes at most 1 MiB)
              copy(p.fd, from, target.fd, to, e - s, Math.min(cs, OTHER_BYTES), kernel | pre | COPY_ALLDATA, dio).then(
                (r) => {
                  if (r.cfrErrno !== 0) kernel = 0; // e.g. EXDEV: another file system
                },
                (e: NodeJS.ErrnoException & { side?: string; offset?: number }) => {
                  throw e.side === 'write'
                    ? new StrataError('IO', e.message, {
                        file: opts.outName,
                        structure: 'qcow2 data cluster',
                        offset: e.offset ?? to,
                      })
                    : pieceError(e, p, from);
                },
              ),
            );
          }
          written += e - s;
        }
        await Promise.all(writes);
        h += (j - i) * cs;
        i = j;
      }
      done += n;
      opts.onProgress?.(done, total);
    } finally {
      onPlaced(); // on failure too, so no later job waits forever (it then sees `failure`)
      free.push(buf);
    }
  };

  try {
    for (let w = 0; w < total; w += WINDOW) {
      check();
      const wl = Math.min(WINDOW, total - w);
      const pieces = await direct(w, wl);
      let pi = 0;
      for (let a = w; a < w + wl; a += J) {
        const end = Math.min(a + J, w + wl);
        const mine: DirectPiece[] = [];
        let zero = true;
        for (let i = pi; i < pieces.length && pieces[i].offset < end; i++) {
          const p = pieces[i];
          const s = Math.max(a, p.offset);
          const e = Math.min(end, p.offset + p.length);
          if (e <= s) continue;
          if (p.kind !== 'zero') zero = false;
          if (p.kind === 'file') {
            mine.push({ ...p, offset: s, length: e - s, host: p.host + (s - p.offset) });
            bytesRead += e - s;
          } else mine.push({ kind: p.kind, offset: s, length: e - s });
        }
        while (pi < pieces.length && pieces[pi].offset + pieces[pi].length <= end) pi++;
        if (zero) {
          done += end - a;
          continue;
        }
        while (free.length === 0) await Promise.race(inFlight);
        check();
        let onPlaced!: () => void;
        const next = new Promise<void>((r) => {
          onPlaced = r;
        });
        const p = job(a, mine, placed, free.pop()!, onPlaced).then(
          () => {
            inFlight.delete(p);
          },
          (e: Error) => {
            inFlight.delete(p);
            failure ??= e;
          },
        );
        inFlight.add(p);
        placed = next;
      }
    }
    while (inFlight.size > 0) await Promise.race(inFlight);
    check();
  } catch (e) {
    await Promise.allSettled([...inFlight]);
    throw failure ?? e;
  } finally {
    closeDirect(dio);
  }
  target.done(head, written);
  opts.onProgress?.(total, total);
  return bytesRead;
}

async function readFully(fd: number, buf: Uint8Array, pos: number, name: string): Promise<void> {
  let at = 0;
  while (at < buf.length) {
    let n: number;
    try {
      n = (await readP(fd, buf, at, buf.length - at, pos + at)).bytesRead;
    } catch (e) {
      throw new StrataError('IO', `read failed: ${(e as Error).message}`, {
        file: name,
        structure: 'image data',
        offset: pos + at,
      });
    }
    if (n === 0) {
      throw new StrataError('TRUNCATED', `short read: the file ends at ${pos + at}`, {
        file: name,
        structure: 'image data',
        offset: pos + at,
      });
    }
    at += n;
  }
}

/** A native read of a file piece failed: name the image file and the offset in it. */
function pieceError(
  e: NodeJS.ErrnoException & { offset?: number },
  p: Extract<DirectPiece, { kind: 'file' }>,
  at: number,
): StrataError {
  return new StrataError(e.message.startsWith('short read') ? 'TRUNCATED' : 'IO', e.message, {
    file: p.file,
    structure: 'image data',
    offset: e.offset ?? at,
  });
}
