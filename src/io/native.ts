import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Extent, pushExtent } from './byte-source.js';

/** native/seek.c: lseek(2), which Node does not bind. */
interface Native {
  seek(fd: number, offset: number, whence: number): number;
  SEEK_DATA?: number;
  SEEK_HOLE?: number;
  ENXIO: number;
  /** native/copy.c: see NativeCopyRange. */
  copyRange?: NativeCopyRange;
  /** native/copy.c: see NativeScanClusters. */
  scanClusters?: NativeScanClusters;
  /** native/extract.c: see NativeWriteFiles. */
  writeFiles?: NativeWriteFiles;
  /** native/inflate.c: see NativeInflateGrains. */
  inflateGrains?: NativeInflateGrains;
  /** native/dirplus.c: see NativeExtDirPlus. */
  extDirPlus?: NativeExtDirPlus;
  /** native/dirplus.c: see NativeExtDirPlusFd. */
  extDirPlusFd?: NativeExtDirPlusFd;
  /** native/fuseread.c: see NativeFuseRead. */
  fuseRead?: NativeFuseRead;
  /** native/heap.c: see trimHeap. */
  trimHeap?: () => number;
  /** native/heap.c: see mmapLargeAllocations. */
  mmapFrom?: (bytes: number) => number;
  /** native/heap.c: see releaseBuffer. */
  release?: (b: ArrayBuffer) => number;
  /** native/zstd.c (built where zstd-napi's zstd sources are): see NativeZstd. */
  zstdCompress?: NativeZstd['compress'];
  zstdRelease?: () => void;
  zstdVersion?: number;
}

/**
 * zstd on a thread of libuv's pool (native/zstd.c), the same zstd as zstd-napi's (the frames
 * are byte for byte zstd-napi's): `compress(src, level, windowLog)` (windowLog 0: the level's
 * own) resolves with the frame, or null when it is not smaller than `src`, which must stay
 * untouched until then; `release()` frees the contexts kept for reuse.
 */
export interface NativeZstd {
  compress(src: Uint8Array, level: number, windowLog: number): Promise<ArrayBuffer | null>;
  release(): void;
  version: number;
}

/**
 * The READDIRPLUS reply (offset 0) of one ext directory, built natively (native/dirplus.c,
 * where the arguments and results are described; src/serve/fuse/ext-plus.ts calls it).
 * Returns the reply's length, -1 (fall back to the TypeScript reader: res[0] says why) or
 * -2 (res[0] = n inode-table pieces to load, res[1..n] their numbers).
 */
export type NativeExtDirPlus = (
  cfg: Float64Array,
  groups: Float64Array,
  dir: Uint8Array,
  pieces: Array<Uint8Array | undefined>,
  out: Uint8Array,
  res: Float64Array,
) => number;

/**
 * The same reply as NativeExtDirPlus with nothing handed in: the volume is a plain window of
 * a local file (named in `cfg`, with the directory's inode), which the call reads itself with
 * pread: the directory's inode and map, its blocks, and its children's inode-table pieces
 * (kept in `cache`, tagged in `tags`). Returns the reply's length or -1 (fall back: res[0]
 * says why); see native/dirplus.c.
 */
export type NativeExtDirPlusFd = (
  cfg: Float64Array,
  groups: Float64Array,
  cache: Uint8Array,
  tags: Float64Array,
  out: Uint8Array,
  res: Float64Array,
) => number;

/**
 * Read the next FUSE request from `fd` into `buf`, answering the READDIRs past a known
 * listing end on the way (native/fuseread.c; the table is ListingEndsView's). Returns the
 * request's length, 0 at end of file, or -errno.
 */
export type NativeFuseRead = (fd: number, buf: Uint8Array, ends: BigInt64Array, stats: Int32Array) => number;

/**
 * Read [lo, hi) of file `fd` and inflate the stream-optimized VMDK grains it holds into
 * `out` on a thread of libuv's pool (native/inflate.c, Node's own zlib). `spec` holds 5
 * numbers per grain: its marker's file offset, the lba (sectors) the marker should name,
 * where its bytes go in `out`, the offset inside the grain and the byte count. Resolves with
 * [failedJob, reason, mismatchJob, mismatchLba]: failedJob -1 when every grain inflated,
 * else the first that did not (reason 1: the marker's size is 0 or above maxCompressed,
 * 2: the payload runs past `hi`, 3: zlib refused it); mismatchJob the first grain whose
 * marker names another lba (-1: none). A read failure rejects like NativeCopyRange.
 */
export type NativeInflateGrains = (
  fd: number,
  lo: number,
  hi: number,
  spec: Float64Array,
  out: Uint8Array,
  grainBytes: number,
  maxCompressed: number,
) => Promise<Float64Array>;

/**
 * Create, fill and finish a batch of new regular files on a thread of libuv's pool
 * (native/extract.c). `meta` holds WRITE_FIELDS numbers per file (the WF_* indexes),
 * `extents` 3 per extent (offset in `imgFd`, length, offset in the file), `paths` the
 * NUL-terminated paths. Resolves with 2 int32 per file: errno (0: written) and the WS_* step
 * that failed.
 */
export type NativeWriteFiles = (
  imgFd: number,
  meta: Float64Array,
  extents: Float64Array,
  paths: Uint8Array,
) => Promise<Int32Array>;
/** The fields of one file in writeFiles's `meta` (the enum of native/extract.c). */
export enum WF {
  path = 0,
  extStart = 1,
  extCount = 2,
  size = 3,
  openMode = 4,
  flags = 5,
  mode = 6,
  uid = 7,
  gid = 8,
  atimeSec = 9,
  atimeNsec = 10,
  mtimeSec = 11,
  mtimeNsec = 12,
}
export const WRITE_FIELDS = 13;
/** writeFiles flags: fchmod after the data (the mode was not given to open), fchown, futimens. */
export const WF_CHMOD = 1;
export const WF_CHOWN = 2;
export const WF_TIMES = 4;
/** The step of a file that failed (writeFiles's second number). */
export const WRITE_STEPS = [
  '',
  'open',
  'read',
  'write',
  'ftruncate',
  'fchown',
  'fchmod',
  'futimens',
  'close',
  'short read',
];

/**
 * Copy [inOff, inOff+len) of file `inFd` to `outFd` at `outOff` on a thread of libuv's
 * pool (native/copy.c). flags: COPY_HOLES skips the source's holes without reading them;
 * COPY_CLONE first tries a reflink (FICLONERANGE) and reports in `cloneErrno` why not;
 * COPY_KERNEL moves the bytes with copy_file_range(2) (page cache to page cache) and
 * reports in `cfrErrno` why not when the kernel refuses (the range is then written from
 * the buffer); COPY_ALLDATA (with COPY_KERNEL) skips the read and the zero check;
 * COPY_PREALLOC allocates each range of the output before writing it (ignored where the
 * file system refuses); COPY_PROBE (scanClusters only) reads the first 4 KiB of each cluster
 * and the rest only where those are zeros.
 * Otherwise all-zero granules of `gran` bytes are not written. `directFd` (>= 0): the
 * output opened again with O_DIRECT, which the bytes are written through (read into the
 * buffer first) instead of the page cache; a write it refuses goes through outFd. Rejects with an Error
 * carrying `code`, `side` ('read' | 'write') and `offset` (the file offset on that side).
 */
export type NativeCopyRange = (
  inFd: number,
  inOff: number,
  outFd: number,
  outOff: number,
  len: number,
  gran: number,
  flags: number,
  directFd?: number,
) => Promise<{ written: number; cloneErrno: number; cfrErrno: number }>;
export const COPY_HOLES = 1;
export const COPY_CLONE = 2;
export const COPY_KERNEL = 4;
export const COPY_ALLDATA = 8;
/** Allocate each output range with fallocate(2) before writing it (see native/copy.c). */
export const COPY_PREALLOC = 16;
/** scanClusters: a cluster's first 4 KiB read, the rest only where those are zeros (native/copy.c). */
export const COPY_PROBE = 32;

/**
 * Read [off, off+len) of file `fd`, which holds the virtual bytes [virt, virt+len), on a
 * thread of libuv's pool (native/copy.c); one byte per `cs`-byte virtual cluster the range
 * touches (the first is floor(virt / cs)): 1 where its bytes here are not all zeros.
 * flags: COPY_PROBE reads the rest of a cluster only where its first 4 KiB are zeros.
 * Rejects like NativeCopyRange (side 'read').
 */
export type NativeScanClusters = (
  fd: number,
  off: number,
  len: number,
  virt: number,
  cs: number,
  flags?: number,
) => Promise<Uint8Array>;

const SEEK_END = 2;
const ADDON = path.join('native', 'build', 'Release', 'strata_native.node');
let loaded: Native | null | undefined;

/**
 * The addon built by scripts/build-native.mjs at install, found by walking up from this
 * module (dist/src/io or the bundle in dist/cli) to the package root; null when it was not
 * built (no compiler): callers then report no holes, as Strata did before it.
 */
function native(): Native | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (process.env.STRATA_NO_NATIVE === '1') return loaded;
  try {
    let dir = path.dirname(fileURLToPath(import.meta.url));
    for (let i = 0; i < 6; i++) {
      const p = path.join(dir, ADDON);
      if (existsSync(p)) {
        loaded = createRequire(import.meta.url)(p) as Native;
        break;
      }
      dir = path.dirname(dir);
    }
  } catch {
    loaded = null;
  }
  return loaded;
}

/** The native range copier, or undefined when the addon is not built (or STRATA_NO_NATIVE_COPY=1). */
export function nativeCopyRange(): NativeCopyRange | undefined {
  if (process.env.STRATA_NO_NATIVE_COPY === '1') return undefined;
  return native()?.copyRange;
}

/** The native cluster scanner (for qcow2 outputs), undefined like nativeCopyRange. */
export function nativeScanClusters(): NativeScanClusters | undefined {
  if (process.env.STRATA_NO_NATIVE_COPY === '1') return undefined;
  return native()?.scanClusters;
}

/** The native grain inflater (stream-optimized VMDK), or undefined when the addon is not built (or STRATA_NO_NATIVE_INFLATE=1). */
export function nativeInflateGrains(): NativeInflateGrains | undefined {
  if (process.env.STRATA_NO_NATIVE_INFLATE === '1') return undefined;
  return native()?.inflateGrains;
}

/** The native batch file writer of `extract`, or undefined when the addon is not built (or STRATA_NO_NATIVE_EXTRACT=1). */
export function nativeWriteFiles(): NativeWriteFiles | undefined {
  if (process.env.STRATA_NO_NATIVE_EXTRACT === '1') return undefined;
  return native()?.writeFiles;
}

/** The native ext READDIRPLUS builder, or undefined when the addon is not built (or STRATA_NO_NATIVE_DIRPLUS=1). */
export function nativeExtDirPlus(): NativeExtDirPlus | undefined {
  if (process.env.STRATA_NO_NATIVE_DIRPLUS === '1') return undefined;
  return native()?.extDirPlus;
}

/** The native ext READDIRPLUS builder that reads a local file itself, or undefined (also with STRATA_NO_NATIVE_DIRPLUS=1 or STRATA_NO_FD_DIRPLUS=1). */
export function nativeExtDirPlusFd(): NativeExtDirPlusFd | undefined {
  if (process.env.STRATA_NO_NATIVE_DIRPLUS === '1' || process.env.STRATA_NO_FD_DIRPLUS === '1') return undefined;
  return native()?.extDirPlusFd;
}

/** The native /dev/fuse read that answers listing ends itself, or undefined when the addon is not built (or STRATA_NO_NATIVE_FUSEREAD=1). */
export function nativeFuseRead(): NativeFuseRead | undefined {
  if (process.env.STRATA_NO_NATIVE_FUSEREAD === '1') return undefined;
  return native()?.fuseRead;
}

/** The native zstd compressor, or undefined when the addon is built without it (or STRATA_NO_NATIVE_ZSTD=1). */
export function nativeZstd(): NativeZstd | undefined {
  if (process.env.STRATA_NO_NATIVE_ZSTD === '1') return undefined;
  const n = native();
  if (!n?.zstdCompress || !n.zstdRelease) return undefined;
  return { compress: n.zstdCompress, release: n.zstdRelease, version: n.zstdVersion ?? 0 };
}

/**
 * Hand the C heap's free pages back to the system (native/heap.c: glibc's malloc_trim), for
 * long runs whose large buffers come and go: false when the addon is not built or the C
 * library has no such call. Takes ~1 ms on a heap of a few hundred MiB: call it now and then.
 */
export function trimHeap(): boolean {
  const t = native()?.trimHeap;
  return t !== undefined && t() >= 0;
}

/**
 * From now on every C allocation of at least `bytes` (Node's large ArrayBuffers) gets its own
 * mapping, handed back to the system when freed (native/heap.c: glibc's M_MMAP_THRESHOLD, which
 * otherwise rises to the largest buffer freed, up to 32 MiB, so that later buffers fill holes
 * in the main heap that only a trim returns). Process-wide and kept; false when not set here.
 */
export function mmapLargeAllocations(bytes: number): boolean {
  const f = native()?.mmapFrom;
  return f !== undefined && f(bytes) === 1;
}

/**
 * Free a pooled buffer's memory now instead of at the next collection (native/heap.c:
 * detaches its ArrayBuffer): for a buffer a pool drops past its bound. Only a buffer that is
 * the whole of its own ArrayBuffer (not a slice of Node's small-buffer pool, not shared) is
 * released; any view left on it reads as empty afterwards. False when it was left to the
 * collector.
 */
export function releaseBuffer(b: Uint8Array): boolean {
  const ab = b.buffer;
  if (b.byteOffset !== 0 || ab.byteLength !== b.byteLength || !(ab instanceof ArrayBuffer)) return false;
  const f = native()?.release;
  return f !== undefined && f(ab) === 1;
}

/** Whether local files can report their holes here (the addon is built and the OS has SEEK_DATA). */
export function holesSupported(): boolean {
  const n = native();
  return n?.SEEK_DATA !== undefined;
}

/**
 * Allocation of [offset, offset+n) of an open file from SEEK_DATA/SEEK_HOLE: holes are
 * `zero` (they read as zeros), the rest `data`. Undefined when the addon is missing, so
 * the caller says `data` as before; a file system that does not support the whence values
 * answers EINVAL, and then the rest of the range is `data`.
 */
export function seekStatus(fd: number, offset: number, n: number): Extent[] | undefined {
  const nat = native();
  if (!nat || nat.SEEK_DATA === undefined || nat.SEEK_HOLE === undefined) return undefined;
  // A file that shrank since it was opened: what lies past its end now stays `data`, so
  // readers still read it and fail TRUNCATED as before, instead of taking it for a hole.
  const eof = nat.seek(fd, 0, SEEK_END);
  if (eof < 0) return undefined;
  const want = offset + n;
  const end = Math.min(want, Math.max(offset, eof));
  const out: Extent[] = [];
  let pos = offset;
  while (pos < end) {
    let d = nat.seek(fd, pos, nat.SEEK_DATA);
    if (d === -nat.ENXIO)
      d = end; // no data at or after pos: a hole to the end of the file
    else if (d < 0) {
      pushExtent(out, pos, end - pos, 'data');
      break;
    }
    if (d > pos) pushExtent(out, pos, Math.min(d, end) - pos, 'zero');
    if (d >= end) break;
    let h = nat.seek(fd, d, nat.SEEK_HOLE);
    if (h < 0 || h <= d) h = end;
    pushExtent(out, d, Math.min(h, end) - d, 'data');
    pos = h;
  }
  pushExtent(out, end, want - end, 'data');
  return out;
}
