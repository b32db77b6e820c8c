import { getSystemErrorName } from 'node:util';
import type { FileExtent, Inode } from '../../fs/types.js';
import type { ByteSource } from '../../io/byte-source.js';
import { fileView } from '../../io/filter-source.js';
import {
  type NativeWriteFiles,
  nativeWriteFiles,
  WF,
  WF_CHMOD,
  WF_CHOWN,
  WF_TIMES,
  WRITE_FIELDS,
  WRITE_STEPS,
} from '../../io/native.js';
import { StrataError } from '../../util/errors.js';
import type { Destination } from './destination.js';
import { isPlain } from './file-data.js';

/**
 * Regular files of an extraction written in batches by native/extract.c on libuv's pool:
 * the walk hands over a file (its path, plain extents and attributes) and goes on parsing;
 * open, the reads of the image, the writes, fchown/fchmod/futimens and close of a few
 * hundred files run as one call beside it. Without this (no addon, an image that is not a
 * local file at a fixed offset) every file is written by the main thread (walk.ts).
 *
 * What a file gets is what walk.ts's own path gives it (destination.ts's creation, owner
 * and mode policy: O_EXCL|O_NOFOLLOW, mode at open when the umask leaves it whole, times
 * to the microsecond); a file this cannot take as it is (data not plainly on the volume,
 * a time before 1970) is left to that path.
 */

/** Files per call, and file bytes per call: large enough that the hop is noise. */
const BATCH_FILES = 256;
const BATCH_BYTES = 8 << 20;
/** Calls in flight: the two cores, plus one queued so the pool never waits for the walk. */
const IN_FLIGHT = 3;

/** One file handed to the native writer. */
export interface QueuedFile {
  /** The image path (for messages). */
  path: string;
  target: string;
  inode: Inode;
}

/**
 * What happened to a batch's files when it is done: how many were written and their bytes,
 * and each one that failed (its paths decoded again only then) with the error to report.
 */
export interface WriteOutcomes {
  written(files: number, bytes: number): void;
  failed(f: { path: string; target: string }, error: Error): void;
}

export class NativeWriter {
  // The batch being filled (a fresh one once it is sent: the call copies it when made,
  // which may be after more files were queued).
  private meta = new Float64Array(BATCH_FILES * WRITE_FIELDS);
  private ext = new Float64Array(BATCH_FILES * 3);
  private paths: Buffer = Buffer.allocUnsafe(BATCH_FILES * 128);
  // A queued file keeps no object of its own until its batch is done (they would outlive many
  // young-generation collections): its bytes, and its image path in UTF-8 (for a failure's
  // message; DEST's path is read back from `paths`).
  private bytes = new Float64Array(BATCH_FILES);
  private srcPaths: Buffer = Buffer.allocUnsafe(BATCH_FILES * 128);
  private srcAt = new Uint32Array(BATCH_FILES + 1);
  private count = 0;
  private nExt = 0;
  private pathBytes = 0;
  private dataBytes = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;

  private constructor(
    private readonly write: NativeWriteFiles,
    private readonly fd: number,
    /** Where byte 0 of the volume lies in `fd`. */
    private readonly base: number,
    private readonly volumeSize: number,
    private readonly out: Destination,
    private readonly done: WriteOutcomes,
  ) {}

  /** A writer for files of `volume`, or undefined when the addon is missing or the volume is not a plain window of a local file. */
  static for(volume: ByteSource, out: Destination, done: WriteOutcomes): NativeWriter | undefined {
    const write = nativeWriteFiles();
    if (!write) return undefined;
    const view = fileView(volume);
    if (!view) return undefined;
    return new NativeWriter(write, view.fd, view.offset, volume.size, out, done);
  }

  /**
   * Queue `f` with its extents (extentsToCopy's); false when this writer cannot take it (the
   * caller writes it). A full batch is sent; when IN_FLIGHT calls are running this waits for one.
   */
  async add(f: QueuedFile, extents: FileExtent[] | undefined): Promise<boolean> {
    if (!this.queue(f, extents)) return false;
    if (this.full) await this.send();
    return true;
  }

  /** A call of the writer itself failed (the next add throws it). */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** The batch being filled is due to be sent (`send`). */
  get full(): boolean {
    return this.count >= BATCH_FILES || this.dataBytes >= BATCH_BYTES;
  }

  /** add() without sending: false when this writer cannot take `f`. */
  queue(f: QueuedFile, extents: FileExtent[] | undefined): boolean {
    const ino = f.inode;
    if (ino.size > 0 && !extents) return false;
    const attrs = this.out.newFileAttrs(ino);
    if (!attrs) return false;
    const size = ino.size;
    let bytes = 0;
    const ex = extents ?? [];
    for (const e of ex) {
      const len = Math.min(size, e.fileOffset + e.length) - e.fileOffset;
      if (!isPlain(e) || e.volumeOffset < 0 || e.volumeOffset + len > this.volumeSize) return false;
      bytes += len;
    }
    if (this.failure) throw this.failure;
    const i = this.count;
    const m = this.meta;
    const o = i * WRITE_FIELDS;
    // the path, NUL-terminated
    this.paths = room(this.paths, this.pathBytes, Buffer.byteLength(f.target) + 1);
    m[o + WF.path] = this.pathBytes;
    this.pathBytes += this.paths.write(f.target, this.pathBytes, 'utf8');
    this.paths[this.pathBytes++] = 0;
    // the image path, for messages
    const at = this.srcAt[i];
    this.srcPaths = room(this.srcPaths, at, Buffer.byteLength(f.path));
    this.srcAt[i + 1] = at + this.srcPaths.write(f.path, at, 'utf8');
    // the extents
    if ((this.nExt + ex.length) * 3 > this.ext.length) {
      const grown = new Float64Array(Math.max(this.ext.length * 2, (this.nExt + ex.length) * 3));
      grown.set(this.ext.subarray(0, this.nExt * 3));
      this.ext = grown;
    }
    m[o + WF.extStart] = this.nExt;
    m[o + WF.extCount] = ex.length;
    for (const e of ex) {
      const x = this.nExt++ * 3;
      this.ext[x] = this.base + e.volumeOffset;
      this.ext[x + 1] = Math.min(size, e.fileOffset + e.length) - e.fileOffset;
      this.ext[x + 2] = e.fileOffset;
    }
    m[o + WF.size] = size;
    m[o + WF.openMode] = attrs.openMode;
    m[o + WF.flags] = (attrs.chmod ? WF_CHMOD : 0) | (attrs.chown ? WF_CHOWN : 0) | (attrs.times ? WF_TIMES : 0);
    m[o + WF.mode] = ino.mode & 0o7777;
    m[o + WF.uid] = ino.uid;
    m[o + WF.gid] = ino.gid;
    if (attrs.times) {
      m[o + WF.atimeSec] = attrs.times[0];
      m[o + WF.atimeNsec] = attrs.times[1];
      m[o + WF.mtimeSec] = attrs.times[2];
      m[o + WF.mtimeNsec] = attrs.times[3];
    }
    this.bytes[i] = bytes;
    this.count = i + 1;
    this.dataBytes += bytes;
    return true;
  }

  /** Send what is queued and wait for every call; throws the first failure of the writer itself. */
  async finish(): Promise<void> {
    try {
      await this.send();
    } finally {
      await this.settle();
    }
    if (this.failure) throw this.failure;
  }

  /**
   * Wait for the calls already made, sending nothing more: after this no thread of the pool
   * reads the image's descriptor (which the caller may then close) or writes into DEST.
   */
  async settle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.race(this.inFlight);
  }

  /** Send the batch being filled (a new one takes its place at once), after waiting for a free call. */
  async send(): Promise<void> {
    const n = this.count;
    if (n === 0) return;
    const meta = this.meta.subarray(0, n * WRITE_FIELDS);
    const ext = this.ext.subarray(0, this.nExt * 3);
    const paths = this.paths.subarray(0, this.pathBytes);
    const { bytes, srcPaths, srcAt } = this;
    this.meta = new Float64Array(BATCH_FILES * WRITE_FIELDS);
    this.ext = new Float64Array(BATCH_FILES * 3);
    this.paths = Buffer.allocUnsafe(BATCH_FILES * 128);
    this.bytes = new Float64Array(BATCH_FILES);
    this.srcPaths = Buffer.allocUnsafe(BATCH_FILES * 128);
    this.srcAt = new Uint32Array(BATCH_FILES + 1);
    this.count = 0;
    this.nExt = 0;
    this.pathBytes = 0;
    this.dataBytes = 0;
    while (this.inFlight.size >= IN_FLIGHT) await Promise.race(this.inFlight);
    const p: Promise<void> = this.write(this.fd, meta, ext, paths)
      .then((res) => {
        let written = 0;
        let total = 0;
        for (let i = 0; i < n; i++) {
          const errno = res[2 * i];
          if (errno === 0) {
            written++;
            total += bytes[i];
            continue;
          }
          const at = meta[i * WRITE_FIELDS + WF.path];
          const f = {
            path: srcPaths.toString('utf8', srcAt[i], srcAt[i + 1]),
            target: paths.toString('utf8', at, paths.indexOf(0, at)),
          };
          this.done.failed(f, this.error(f, errno, res[2 * i + 1]));
        }
        this.done.written(written, total);
      })
      .catch((e) => {
        this.failure ??= e;
      })
      .finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  /** The error of one file, as the main thread's path would have met it. */
  private error(f: { path: string; target: string }, errno: number, step: number): Error {
    const what = WRITE_STEPS[step] ?? 'write';
    if (what === 'short read') {
      return new StrataError('TRUNCATED', 'read past the end of the image file', { file: f.path });
    }
    const code = getSystemErrorName(-errno);
    if (what === 'read') return new StrataError('IO', `cannot read the image (${code})`, { file: f.path });
    const e = new Error(`${code}: ${what} '${f.target}'`) as NodeJS.ErrnoException;
    e.code = code;
    e.errno = -errno;
    e.syscall = what;
    e.path = f.target;
    return e;
  }
}

/** `buf`, or a copy twice as large (its first `used` bytes kept) when `need` more bytes do not fit. */
function room(buf: Buffer, used: number, need: number): Buffer {
  if (used + need <= buf.length) return buf;
  const grown = Buffer.allocUnsafe(Math.max(buf.length * 2, used + need));
  buf.copy(grown, 0, 0, used);
  return grown;
}
