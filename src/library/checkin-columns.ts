import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

/**
 * The check-in's columns that grow with the image (issue 22), kept off the heap: every chunk's
 * digest and length as a 36-byte record in a scratch file (what stays in memory is an 8-byte
 * fingerprint, an "added" flag and a hash-table slot), and the ranges in sorted runs, spilled
 * to the same scratch directory once a run is full and merged when the layout is written.
 * Before, a chunk held ~45 bytes and a range ~24 bytes in memory (typed arrays doubled as they
 * grew, and the sorted copy at the end on top): ~130 MB at 1,000,000 files, which the CLI's
 * default budget of ~160 MiB stopped with a LIMIT error.
 */

/** Bytes of a chunk record: its sha256, then its length (uint32 LE). */
const CHUNK_RECORD = 36;
/** Bytes of a range record in a spilled run: disk offset (float64), length, chunk, offset in the chunk (uint32 each). */
const RANGE_RECORD = 20;

/**
 * Scratch files, unlinked (and their directory removed) as soon as they are open: read and
 * written by descriptor only, so a killed check-in leaves nothing behind in the temp dir
 * (before, each kill left a /tmp/strata-checkin-* of up to ~50 MB at 1,000,000 files).
 * close() closes them, which frees their space.
 */
class Scratch {
  private readonly fds: number[] = [];

  open(name: string): number {
    const dir = mkdtempSync(path.join(tmpdir(), 'strata-checkin-'));
    const file = path.join(dir, name);
    try {
      const fd = openSync(file, 'w+', 0o600);
      this.fds.push(fd);
      return fd;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  close(): void {
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}

function readFully(fd: number, buf: Uint8Array, length: number, position: number): void {
  let n = 0;
  while (n < length) {
    const r = readSync(fd, buf, n, length - n, position + n);
    if (r === 0) throw new Error(`check-in scratch file: short read at ${position + n}`);
    n += r;
  }
}

function writeFully(fd: number, buf: Uint8Array, length: number, position: number): void {
  let n = 0;
  while (n < length) n += writeSync(fd, buf, n, length - n, position + n);
}

/** A growable typed array (doubling). */
export function grown<T extends Float64Array | Uint32Array | Int32Array | Uint8Array>(a: T, need: number): T {
  if (need <= a.length) return a;
  let n = Math.max(1, a.length);
  while (n < need) n *= 2;
  const b = Buffer.isBuffer(a) ? (Buffer.alloc(n) as unknown as T) : new (a.constructor as new (n: number) => T)(n);
  b.set(a);
  return b;
}

/**
 * Chunk records (digest and length) by chunk number, appended in order: the newest in a
 * buffer, the rest in the scratch file. `record(i)` reads through a window of records (for
 * readers that go roughly in order: the layout's chunk list, the stored-size sum);
 * `exact(i)` reads one record (the rare digest comparisons of dedup and of the range sort).
 */
export class ChunkRecords {
  private fd = -1;
  private readonly buf: Buffer;
  /** The first record in `buf`; records below it are in the file. */
  private bufFrom = 0;
  count = 0;
  private win = Buffer.alloc(0);
  private winFrom = 0;
  private winCount = 0;
  private readonly one = Buffer.alloc(CHUNK_RECORD);

  constructor(
    private readonly scratch: Scratch,
    private readonly perBuffer = 16384,
  ) {
    this.buf = Buffer.allocUnsafe(CHUNK_RECORD * perBuffer);
  }

  push(digest: Uint8Array, length: number): number {
    if (this.count - this.bufFrom === this.perBuffer) {
      if (this.fd < 0) this.fd = this.scratch.open('chunks');
      writeFully(this.fd, this.buf, this.buf.length, this.bufFrom * CHUNK_RECORD);
      this.bufFrom = this.count;
    }
    const at = (this.count - this.bufFrom) * CHUNK_RECORD;
    this.buf.set(digest, at);
    this.buf.writeUInt32LE(length, at + 32);
    return this.count++;
  }

  /** Record `i` (a view, valid until the next call), through the window. */
  record(i: number): Buffer {
    if (i >= this.bufFrom)
      return this.buf.subarray((i - this.bufFrom) * CHUNK_RECORD, (i - this.bufFrom + 1) * CHUNK_RECORD);
    if (i < this.winFrom || i >= this.winFrom + this.winCount) {
      if (this.win.length === 0) this.win = Buffer.allocUnsafe(CHUNK_RECORD * this.perBuffer);
      this.winFrom = i;
      this.winCount = Math.min(this.perBuffer, this.bufFrom - i);
      readFully(this.fd, this.win, this.winCount * CHUNK_RECORD, i * CHUNK_RECORD);
    }
    return this.win.subarray((i - this.winFrom) * CHUNK_RECORD, (i - this.winFrom + 1) * CHUNK_RECORD);
  }

  /** Record `i` (a view, valid until the next call), read alone. */
  exact(i: number): Buffer {
    if (i >= this.bufFrom) return this.record(i);
    if (i >= this.winFrom && i < this.winFrom + this.winCount) return this.record(i);
    readFully(this.fd, this.one, CHUNK_RECORD, i * CHUNK_RECORD);
    return this.one;
  }

  /** Drop the read window (its memory) once the ordered readers are done. */
  dropWindow(): void {
    this.win = Buffer.alloc(0);
    this.winCount = 0;
  }
}

/** A sorted stream of ranges. */
export interface RangeCursor {
  disk: number;
  length: number;
  chunk: number;
  at: number;
  /** Step to the next range; false at the end. */
  next(): boolean;
}

/** Order of two ranges: disk offset, then chunk (by digest), then offset in the chunk. */
type RangeOrder = (d1: number, c1: number, a1: number, d2: number, c2: number, a2: number) => number;

/** A run held in memory, in the order of `order`. */
class MemoryRun implements RangeCursor {
  disk = 0;
  length = 0;
  chunk = 0;
  at = 0;
  private i = -1;
  constructor(
    private readonly r: RangeRuns,
    private readonly order: Uint32Array,
  ) {}
  next(): boolean {
    if (++this.i >= this.order.length) return false;
    const k = this.order[this.i];
    this.disk = this.r.disk[k];
    this.length = this.r.length[k];
    this.chunk = this.r.chunk[k];
    this.at = this.r.at[k];
    return true;
  }
}

/** A spilled run, read back in blocks. */
class FileRun implements RangeCursor {
  disk = 0;
  length = 0;
  chunk = 0;
  at = 0;
  private readonly buf: Buffer;
  private inBuf = 0;
  private pos = 0;
  private read = 0;
  constructor(
    private readonly fd: number,
    private readonly offset: number,
    private readonly count: number,
    block: number,
  ) {
    this.buf = Buffer.allocUnsafe(Math.min(count, block) * RANGE_RECORD);
  }
  next(): boolean {
    if (this.pos === this.inBuf) {
      if (this.read === this.count) return false;
      const n = Math.min(this.count - this.read, this.buf.length / RANGE_RECORD);
      readFully(this.fd, this.buf, n * RANGE_RECORD, this.offset + this.read * RANGE_RECORD);
      this.read += n;
      this.inBuf = n;
      this.pos = 0;
    }
    const o = this.pos++ * RANGE_RECORD;
    this.disk = this.buf.readDoubleLE(o);
    this.length = this.buf.readUInt32LE(o + 8);
    this.chunk = this.buf.readUInt32LE(o + 12);
    this.at = this.buf.readUInt32LE(o + 16);
    return true;
  }
}

/** Sorted runs merged (ties: the earlier run first, so the merge is a stable sort of the whole). */
class MergedRuns implements RangeCursor {
  disk = 0;
  length = 0;
  chunk = 0;
  at = 0;
  private readonly live: RangeCursor[] = [];
  private started = false;
  constructor(
    runs: RangeCursor[],
    private readonly cmp: RangeOrder,
  ) {
    this.live = runs;
  }
  next(): boolean {
    if (!this.started) {
      this.started = true;
      for (let i = this.live.length - 1; i >= 0; i--) if (!this.live[i].next()) this.live.splice(i, 1);
    }
    if (this.live.length === 0) return false;
    let best = 0;
    for (let i = 1; i < this.live.length; i++) {
      const a = this.live[i];
      const b = this.live[best];
      if (this.cmp(a.disk, a.chunk, a.at, b.disk, b.chunk, b.at) < 0) best = i;
    }
    const c = this.live[best];
    this.disk = c.disk;
    this.length = c.length;
    this.chunk = c.chunk;
    this.at = c.at;
    if (!c.next()) this.live.splice(best, 1);
    return true;
  }
}

/**
 * Ranges as they are added, in runs of at most `runEntries`: a full run is sorted and written
 * to the scratch file; `sorted()` merges the runs (or sorts the one in memory).
 */
export class RangeRuns {
  disk = new Float64Array(1024);
  length = new Uint32Array(1024);
  chunk = new Uint32Array(1024);
  at = new Uint32Array(1024);
  /** Ranges in the run in memory. */
  n = 0;
  /** Ranges added in all. */
  count = 0;
  private fd = -1;
  private readonly spilled: Array<{ offset: number; count: number }> = [];
  private fileBytes = 0;

  constructor(
    private readonly scratch: Scratch,
    private readonly cmp: RangeOrder,
    readonly runEntries: number,
  ) {}

  add(disk: number, length: number, chunk: number, at: number): void {
    if (this.n === this.runEntries) this.spill();
    const i = this.n++;
    if (i >= this.disk.length) {
      this.disk = grown(this.disk, i + 1);
      this.length = grown(this.length, i + 1);
      this.chunk = grown(this.chunk, i + 1);
      this.at = grown(this.at, i + 1);
    }
    this.disk[i] = disk;
    this.length[i] = length;
    this.chunk[i] = chunk;
    this.at[i] = at;
    this.count++;
  }

  /** The run in memory, sorted (stable: ties keep the order they were added in). */
  private order(): Uint32Array {
    const { disk, chunk, at, cmp } = this;
    const order = new Uint32Array(this.n);
    for (let i = 0; i < this.n; i++) order[i] = i;
    order.sort((a, b) => cmp(disk[a], chunk[a], at[a], disk[b], chunk[b], at[b]) || a - b);
    return order;
  }

  private spill(): void {
    if (this.n === 0) return;
    const order = this.order();
    if (this.fd < 0) this.fd = this.scratch.open('ranges');
    const block = Buffer.allocUnsafe(Math.min(this.n, 16384) * RANGE_RECORD);
    const offset = this.fileBytes;
    for (let i = 0; i < this.n; ) {
      let o = 0;
      for (; i < this.n && o < block.length; i++, o += RANGE_RECORD) {
        const k = order[i];
        block.writeDoubleLE(this.disk[k], o);
        block.writeUInt32LE(this.length[k], o + 8);
        block.writeUInt32LE(this.chunk[k], o + 12);
        block.writeUInt32LE(this.at[k], o + 16);
      }
      writeFully(this.fd, block, o, this.fileBytes);
      this.fileBytes += o;
    }
    this.spilled.push({ offset, count: this.n });
    this.n = 0;
  }

  /** Whether some runs went to the scratch file. */
  get spills(): boolean {
    return this.spilled.length > 0;
  }

  /**
   * Every range in order. The first call of several spills the run in memory (when others
   * were spilled) and drops its columns; each call reads the runs anew.
   */
  sorted(): RangeCursor {
    if (this.spilled.length === 0) {
      this.memoryOrder ??= this.order();
      return new MemoryRun(this, this.memoryOrder);
    }
    if (this.n > 0) {
      this.spill();
      this.disk = new Float64Array(0);
      this.length = new Uint32Array(0);
      this.chunk = new Uint32Array(0);
      this.at = new Uint32Array(0);
    }
    // blocks of the merge: 1 MiB of records in all, at least 256 per run
    const block = Math.max(256, Math.floor((1 << 20) / RANGE_RECORD / this.spilled.length));
    return new MergedRuns(
      this.spilled.map((r) => new FileRun(this.fd, r.offset, r.count, block)),
      this.cmp,
    );
  }
  private memoryOrder?: Uint32Array;
}

/** Ranges of a sorted stream with overlaps clipped (two inodes claiming one block): what the layout holds. */
export class ClippedRanges implements RangeCursor {
  disk = 0;
  length = 0;
  chunk = 0;
  at = 0;
  private end = 0;
  constructor(private readonly src: RangeCursor) {}
  next(): boolean {
    const s = this.src;
    while (s.next()) {
      let d = s.disk;
      let len = s.length;
      let a = s.at;
      if (d < this.end) {
        const cut = this.end - d;
        if (cut >= len) continue;
        d += cut;
        a += cut;
        len -= cut;
      }
      this.disk = d;
      this.length = len;
      this.chunk = s.chunk;
      this.at = a;
      this.end = d + len;
      return true;
    }
    return false;
  }
}

/** Entries of a uint32 column read or written at once (64 KiB). */
const COLUMN_BLOCK = 16384;

/**
 * A column of uint32 values appended in order to a scratch file and read back in order: the
 * layout's chunk order (4 bytes a chunk on disk, a 64 KiB buffer in memory; before, a
 * Uint32Array of every chunk beside an Int32Array of the renumbering, 8 bytes a chunk in
 * memory: 37 MiB at 5,000,000 files).
 */
export class SpilledColumn {
  private fd = -1;
  private readonly buf = new Uint32Array(COLUMN_BLOCK);
  private n = 0;
  count = 0;

  constructor(
    private readonly scratch: Scratch,
    private readonly name: string,
  ) {}

  push(v: number): void {
    if (this.n === this.buf.length) this.flush();
    this.buf[this.n++] = v;
    this.count++;
  }

  /** Everything pushed to the file (before reading). */
  flush(): void {
    if (this.n === 0) return;
    if (this.fd < 0) this.fd = this.scratch.open(this.name);
    writeFully(this.fd, new Uint8Array(this.buf.buffer, 0, this.n * 4), this.n * 4, (this.count - this.n) * 4);
    this.n = 0;
  }

  /** Values [from, from + n) into `into` (pushed before: flush() first). */
  readInto(from: number, n: number, into: Uint32Array): void {
    readFully(this.fd, new Uint8Array(into.buffer, into.byteOffset, n * 4), n * 4, from * 4);
  }

  /** A reader from the first value. */
  reader(): ColumnReader {
    this.flush();
    return new ColumnReader(this);
  }
}

/** Reads a SpilledColumn in order, a block at a time. */
export class ColumnReader {
  private readonly buf: Uint32Array;
  private at = 0;
  private inBuf = 0;
  private read = 0;

  constructor(private readonly col: SpilledColumn) {
    this.buf = new Uint32Array(Math.min(COLUMN_BLOCK, Math.max(1, col.count)));
  }

  /** The next value (past the end: an error). */
  next(): number {
    if (this.at === this.inBuf) {
      const n = Math.min(this.buf.length, this.col.count - this.read);
      if (n <= 0) throw new Error('check-in scratch column: read past its end');
      this.col.readInto(this.read, n, this.buf);
      this.read += n;
      this.inBuf = n;
      this.at = 0;
    }
    return this.buf[this.at++];
  }

  /** The next `n` values. */
  take(n: number): Uint32Array {
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.next();
    return out;
  }
}

/** Entries of an InverseColumn built per pass over the column (1 MiB), and per cached block (4 KiB), and blocks cached. */
const INVERSE_SLICE = 1 << 18;
const INVERSE_BLOCK = 1024;
const INVERSE_CACHED = 64;

/**
 * The inverse of the first `upto` values of a column of distinct values below `size`: for a
 * value v, the k with column[k] = v (the layout number of a builder chunk). A file of int32
 * by value, built a slice of values at a time (a sequential pass over the column per 2^18
 * values: 20 passes of 20 MB of page cache at 5,000,000 chunks), read through a small
 * direct-mapped cache of 4 KiB blocks (256 KiB): what reads it asks only for the chunks a
 * range uses again (the first use of a chunk takes the next number, FirstUseNumbered).
 */
export class InverseColumn {
  private readonly fd: number;
  private readonly cache = new Int32Array(INVERSE_BLOCK * INVERSE_CACHED);
  private readonly cacheBytes = new Uint8Array(this.cache.buffer);
  private readonly cached = new Float64Array(INVERSE_CACHED).fill(-1);

  constructor(
    scratch: Scratch,
    col: SpilledColumn,
    private readonly size: number,
    upto: number,
  ) {
    this.fd = scratch.open('inverse');
    col.flush();
    const slice = new Int32Array(Math.min(INVERSE_SLICE, Math.max(1, size)));
    const block = new Uint32Array(Math.min(COLUMN_BLOCK, Math.max(1, upto)));
    for (let s = 0; s < size; s += slice.length) {
      const n = Math.min(slice.length, size - s);
      slice.fill(-1);
      for (let k0 = 0; k0 < upto; k0 += block.length) {
        const m = Math.min(block.length, upto - k0);
        col.readInto(k0, m, block);
        for (let j = 0; j < m; j++) {
          const v = block[j] - s;
          if (v >= 0 && v < n) slice[v] = k0 + j;
        }
      }
      writeFully(this.fd, new Uint8Array(slice.buffer, 0, n * 4), n * 4, s * 4);
    }
  }

  get(v: number): number {
    const b = Math.floor(v / INVERSE_BLOCK);
    const slot = b % INVERSE_CACHED;
    if (this.cached[slot] !== b) {
      this.cached[slot] = -1;
      const n = Math.min(INVERSE_BLOCK, this.size - b * INVERSE_BLOCK);
      readFully(this.fd, this.cacheBytes.subarray(slot * INVERSE_BLOCK * 4), n * 4, b * INVERSE_BLOCK * 4);
      this.cached[slot] = b;
    }
    const k = this.cache[slot * INVERSE_BLOCK + (v - b * INVERSE_BLOCK)];
    if (k < 0) throw new Error(`check-in scratch column: ${v} has no inverse`);
    return k;
  }
}

/**
 * A sorted range stream with its chunks renumbered by first use: a chunk's first range gives
 * it the next number, a later range the number it got (`numberOf`, asked only then). The
 * layout's numbering, as Builder.canonical's pass over the same stream counted it.
 */
export class FirstUseNumbered implements RangeCursor {
  private readonly seen: Uint8Array;
  private k = 0;
  /** The current range's chunk, renumbered (the rest is the source's). */
  private num = 0;

  constructor(
    private readonly src: RangeCursor,
    chunks: number,
    private readonly numberOf: (chunk: number) => number,
  ) {
    this.seen = new Uint8Array(Math.ceil(chunks / 8));
  }

  get disk(): number {
    return this.src.disk;
  }
  get length(): number {
    return this.src.length;
  }
  get at(): number {
    return this.src.at;
  }
  get chunk(): number {
    return this.num;
  }

  next(): boolean {
    const s = this.src;
    if (!s.next()) return false;
    const c = s.chunk;
    const bit = 1 << (c & 7);
    if ((this.seen[c >>> 3] & bit) === 0) {
      this.seen[c >>> 3] |= bit;
      this.num = this.k++;
    } else this.num = this.numberOf(c);
    return true;
  }
}

export { Scratch };
