import { writeSync } from 'node:fs';
import type { FileExtent, FileSystem, Inode } from '../../fs/types.js';
import type { ByteSource } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { StrataError } from '../../util/errors.js';
import { memoryShare } from '../../util/memory.js';

/**
 * The reading side of an extraction: a file's bytes from the volume to an open file
 * descriptor of the destination, at their offsets, holes left unwritten. Small files are
 * read through a cache of 1 MiB blocks (neighbours on the volume cost one read), large runs
 * straight into pooled buffers.
 */

/**
 * The extents of a file to copy: in file order, unwritten and empty ones and those past its
 * size dropped. Undefined when the file system has no extent map (then everything is copied
 * through read()).
 */
export async function extentsToCopy(fs: FileSystem, ino: Inode): Promise<FileExtent[] | undefined> {
  const now = extentsToCopyNow(fs, ino);
  if (now) return now;
  const extents: FileExtent[] = [];
  try {
    for await (const e of fs.extents(ino, { shared: false })) extents.push(e);
  } catch (e) {
    if (!(e instanceof StrataError) || e.code !== 'UNSUPPORTED') throw e;
    return undefined;
  }
  return toCopy(extents, ino.size);
}

/** extentsToCopy's answer when the reader has the extents without I/O (fs.extentsNow), else undefined. */
export function extentsToCopyNow(fs: FileSystem, ino: Inode): FileExtent[] | undefined {
  const now = fs.extentsNow?.(ino);
  return now ? toCopy(now, ino.size) : undefined;
}

/** extentsToCopy's filter and order on an array (in place). */
function toCopy(extents: FileExtent[], size: number): FileExtent[] {
  let k = 0;
  for (const e of extents) if (!(e.unwritten || e.length <= 0 || e.fileOffset >= size)) extents[k++] = e;
  extents.length = k;
  return k > 1 ? extents.sort((a, b) => a.fileOffset - b.fileOffset) : extents;
}

/** An extent whose bytes lie as they are on the volume (not compressed, inline or on another device). */
export function isPlain(e: FileExtent): boolean {
  return !(e.encoded || e.inline || e.diskLength !== undefined || e.device !== undefined);
}

/** CORRUPT when a plain run of `length` bytes at `volStart` does not lie inside the volume. */
export function checkOnVolume(
  fs: FileSystem,
  volume: ByteSource,
  ino: Inode,
  path: string,
  fileOffset: number,
  volStart: number,
  length: number,
): void {
  if (volStart < 0 || volStart + length > volume.size) {
    throw new StrataError('CORRUPT', `extent at file offset ${fileOffset} lies past the end of the volume`, {
      file: volume.name,
      structure: `${fs.kind} inode ${ino.ino} (${path}) extent`,
      offset: volStart,
    });
  }
}

/**
 * Write a file's bytes at their offsets, leaving holes unwritten. `extents` are
 * extentsToCopy's: plain ones are read straight from the volume in large chunks (adjacent
 * extents merged), encoded or inline ones through the file system; without them
 * (undefined) everything goes through read().
 */
export async function copyData(
  fs: FileSystem,
  volume: ByteSource,
  bulk: BulkReader | undefined,
  slots: BlockSlots | undefined,
  ino: Inode,
  path: string,
  fd: number,
  chunk: number,
  extents: FileExtent[] | undefined,
): Promise<{ bytes: number; end: number }> {
  const size = ino.size;
  if (!extents) {
    // No extent map from this file system: copy everything through read().
    let written = 0;
    for (let off = 0; off < size; off += chunk) {
      const b = await fs.read(ino, off, Math.min(chunk, size - off));
      writeAll(fd, b, off);
      written += b.length;
    }
    return { bytes: written, end: written };
  }
  let written = 0;
  let last = 0;
  let i = 0;
  while (i < extents.length) {
    const e = extents[i];
    const end = Math.min(size, e.fileOffset + e.length);
    if (!isPlain(e)) {
      for (let off = e.fileOffset; off < end; off += chunk) {
        const b = await fs.read(ino, off, Math.min(chunk, end - off));
        writeAll(fd, b, off);
        written += b.length;
      }
      last = Math.max(last, end);
      i++;
      continue;
    }
    // Merge following plain extents contiguous both in the file and on the volume.
    let runEnd = end;
    let j = i + 1;
    while (j < extents.length) {
      const n = extents[j];
      if (!isPlain(n)) break;
      if (n.fileOffset !== runEnd || n.volumeOffset !== e.volumeOffset + (runEnd - e.fileOffset)) break;
      runEnd = Math.min(size, n.fileOffset + n.length);
      j++;
    }
    const volStart = e.volumeOffset;
    checkOnVolume(fs, volume, ino, path, e.fileOffset, volStart, runEnd - e.fileOffset);
    if (runEnd - e.fileOffset >= BIG_READ && bulk) {
      // Large runs: reuse one pooled buffer instead of faulting in fresh memory per chunk.
      const buf = takeBuffer(chunk);
      try {
        for (let off = e.fileOffset; off < runEnd; off += chunk) {
          const n = Math.min(chunk, runEnd - off);
          const got = await bulk(volStart + (off - e.fileOffset), buf.subarray(0, n));
          if (got < n) buf.fill(0, got, n);
          writeAll(fd, buf.subarray(0, n), off);
          written += n;
        }
      } finally {
        giveBuffer(buf);
      }
    } else {
      for (let off = e.fileOffset; off < runEnd; off += chunk) {
        const n = Math.min(chunk, runEnd - off);
        const at = volStart + (off - e.fileOffset);
        if (slots) await slots.use(at, n, (view) => writeAll(fd, view, off));
        else writeAll(fd, await volume.read(at, n), off);
        written += n;
      }
    }
    last = Math.max(last, runEnd);
    i = j;
  }
  return { bytes: written, end: last };
}

function writeAll(fd: number, b: Uint8Array, position: number): void {
  let done = 0;
  while (done < b.length) {
    const bytesWritten = writeSync(fd, b, done, b.length - done, position + done);
    if (bytesWritten <= 0) throw new StrataError('IO', 'write made no progress', { offset: position + done });
    done += bytesWritten;
  }
}

/**
 * Reads under 256 KiB go through a cache of 1 MiB blocks (1/8 of the memory budget: 32 MiB at
 * the default 256 MiB); larger ones straight to the source.
 */
export function smallReadCache(v: ByteSource): ByteSource {
  return new CachedSource(v, {
    blockSize: 1 << 20,
    capacity: memoryShare(1 / 8, 4 << 20, 32 << 20),
    directFrom: 256 << 10,
  });
}

/** Runs at least this long are read with pooled buffers. */
const BIG_READ = 256 << 10;

export type BulkReader = (offset: number, out: Uint8Array) => Promise<number>;

/** `readInto` of the volume (partition slices forward it to the disk); undefined when there is none. */
export function bulkReader(src: ByteSource): BulkReader | undefined {
  if (src.readInto) return (offset, out) => src.readInto!(offset, out);
  return undefined;
}

const pool: Uint8Array[] = [];
function takeBuffer(size: number): Uint8Array {
  const b = pool.pop();
  return b && b.length === size ? b : new Uint8Array(size);
}
function giveBuffer(b: Uint8Array): void {
  if (pool.length < 32) pool.push(b);
}

interface Slot {
  block: number;
  buf: Uint8Array;
  loading: Promise<number>;
  pins: number;
}

/**
 * A small cache of 1 MiB blocks read with readInto into buffers that are reused, for the
 * many small files of a tree: neighbours on the volume cost one read, and no fresh memory
 * is faulted in per file. A block is pinned while a caller waits for it and while its
 * callback (synchronous) runs, so a slot is never refilled under a reader.
 */
export class BlockSlots {
  private readonly slots: Slot[] = [];
  private readonly byBlock = new Map<number, Slot>();
  private static readonly BS = 1 << 20;

  constructor(
    private readonly read: BulkReader,
    private readonly size: number,
    private readonly max: number,
  ) {}

  async use(offset: number, length: number, fn: (view: Uint8Array) => void): Promise<void> {
    const bs = BlockSlots.BS;
    const idx = Math.floor(offset / bs);
    if (length === 0) return fn(new Uint8Array(0));
    if (Math.floor((offset + length - 1) / bs) !== idx) {
      // crosses a block boundary (rare for small files): read it on its own
      const b = new Uint8Array(length);
      const got = await this.read(offset, b);
      if (got < length) b.fill(0, got);
      return fn(b);
    }
    let s = this.byBlock.get(idx);
    if (!s) {
      s = this.slots.find((x) => x.pins === 0);
      if (s) this.byBlock.delete(s.block);
      else {
        s = { block: -1, buf: new Uint8Array(bs), loading: Promise.resolve(0), pins: 0 };
        if (this.slots.length < this.max) this.slots.push(s);
      }
      const slot = s;
      const start = idx * bs;
      const want = Math.max(0, Math.min(bs, this.size - start));
      slot.block = idx;
      slot.loading = this.read(start, slot.buf.subarray(0, want));
      slot.loading.catch(() => {
        if (this.byBlock.get(idx) === slot) this.byBlock.delete(idx);
      });
      this.byBlock.set(idx, slot);
    }
    // most recently used at the end: reuse scans from the front
    const at = this.slots.indexOf(s);
    if (at >= 0 && at !== this.slots.length - 1) {
      this.slots.splice(at, 1);
      this.slots.push(s);
    }
    s.pins++;
    try {
      const got = await s.loading;
      const from = offset - idx * BlockSlots.BS;
      if (from + length > got) {
        throw new StrataError('TRUNCATED', `read of ${length} bytes at ${offset} past the end of the volume`, {
          offset,
        });
      }
      fn(s.buf.subarray(from, from + length));
    } finally {
      s.pins--;
      if (s.pins === 0 && !this.slots.includes(s) && this.byBlock.get(idx) === s) this.byBlock.delete(idx);
    }
  }
}
