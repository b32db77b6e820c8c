import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { siftDown } from '../util/heap.js';
import { checkMemory, memoryShare } from '../util/memory.js';
import { NO_INODE, NO_VOLUME } from './claims.js';
import { KINDS, type Kind } from './kinds.js';
import type { MapRecords } from './map-file.js';

/** One file or directory of a trace's summary. */
export interface FileRow {
  kind: Kind;
  volume?: string;
  inode?: number;
  path: string;
  accesses: number;
  bytes: number;
}

const CHUNK_BITS = 16;
const CHUNK = 1 << CHUNK_BITS;
/** Access numbers kept per file are taken modulo this (+1, so that 0 means none); all are cleared when it wraps. */
const EPOCH = 0xffffffff;

/** The counters of 2^16 consecutive name ids. */
interface Chunk {
  bytes: Float64Array;
  accesses: Uint32Array;
  /** The last access that counted (its number modulo EPOCH, + 1). */
  seen: Uint32Array;
  /** The record of the first touch (its kind, volume and inode are the row's). */
  record: Float64Array;
  /** 1 + the order of the first touch (0: not touched). */
  first: Uint32Array;
  volume: Uint16Array;
}

/** A (volume, name) pair met after the name was met in another volume (two file systems' same detail). */
interface Extra {
  name: number;
  volume: number;
  bytes: number;
  accesses: number;
  seen: number;
  record: number;
  first: number;
}

/**
 * Bytes and accesses per file or directory of a trace, in typed arrays indexed by the
 * name id of the map's records (a path is one id: each tree item is stored once), 26
 * bytes a name and only for the 2^16-name chunks a trace touches; no object per file
 * (issue 22: a trace over a tree of millions of files). A file is one (volume, name)
 * pair, as before: the rare name met in a second volume (a detail both file systems
 * give) is counted on its own, beside the arrays.
 */
export class FileCounters {
  private readonly chunks: Array<Chunk | undefined> = [];
  private readonly extras = new Map<number, Extra>();
  /** The high part of access counts past 2^32 - 1, by name id. */
  private readonly high = new Map<number, number>();
  private firsts = 0;
  private epochAt = EPOCH;

  /** Files touched so far. */
  get size(): number {
    return this.firsts;
  }

  /** Count `bytes` of access number `access` on record `record`, named `name`, of volume `volume`. */
  touch(name: number, volume: number, record: number, bytes: number, access: number): void {
    if (access >= this.epochAt) {
      for (const c of this.chunks) c?.seen.fill(0);
      this.epochAt += EPOCH;
    }
    const c = this.chunks[name >>> CHUNK_BITS] ?? this.grow(name >>> CHUNK_BITS);
    const j = name & (CHUNK - 1);
    if (c.first[j] === 0) {
      c.first[j] = ++this.firsts;
      c.volume[j] = volume;
      c.record[j] = record;
    } else if (c.volume[j] !== volume) {
      this.touchExtra(name, volume, record, bytes, access);
      return;
    }
    c.bytes[j] += bytes;
    const seen = (access % EPOCH) + 1;
    if (c.seen[j] !== seen) {
      c.seen[j] = seen;
      const a = c.accesses[j] + 1;
      if (a > 0xffffffff) {
        c.accesses[j] = 0;
        this.high.set(name, (this.high.get(name) ?? 0) + 2 ** 32);
      } else c.accesses[j] = a;
    }
  }

  private touchExtra(name: number, volume: number, record: number, bytes: number, access: number): void {
    const key = volume * 2 ** 31 + name;
    let x = this.extras.get(key);
    if (!x) {
      x = { name, volume, bytes: 0, accesses: 0, seen: -1, record, first: ++this.firsts };
      this.extras.set(key, x);
    }
    x.bytes += bytes;
    if (x.seen !== access) {
      x.seen = access;
      x.accesses++;
    }
  }

  private grow(k: number): Chunk {
    checkMemory('counting the files of a trace');
    const c: Chunk = {
      bytes: new Float64Array(CHUNK),
      accesses: new Uint32Array(CHUNK),
      seen: new Uint32Array(CHUNK),
      record: new Float64Array(CHUNK),
      first: new Uint32Array(CHUNK),
      volume: new Uint16Array(CHUNK),
    };
    this.chunks[k] = c;
    return c;
  }

  /**
   * Every file touched, in name id order, with its row: `m` gives the names (read in id
   * order: one pass over a saved map's string table) and the kind, volume and inode of
   * the record of its first touch.
   */
  *entries(m: MapRecords): Generator<Entry> {
    const extras = [...this.extras.values()].sort((a, b) => a.name - b.name || a.first - b.first);
    let x = 0;
    for (let k = 0; k < this.chunks.length; k++) {
      const c = this.chunks[k];
      if (!c) continue;
      for (let j = 0; j < CHUNK; j++) {
        if (c.first[j] === 0) continue;
        const name = k * CHUNK + j;
        const path = m.name(name);
        const rec = c.record[j];
        yield entry(m, rec, path, c.bytes[j], c.accesses[j] + (this.high.get(name) ?? 0), c.first[j]);
        for (; x < extras.length && extras[x].name <= name; x++) {
          const e = extras[x];
          yield entry(m, e.record, m.name(e.name), e.bytes, e.accesses, e.first);
        }
      }
    }
  }
}

/** A summary row before its volume is named, with the order of its first touch. */
export interface Entry {
  bytes: number;
  accesses: number;
  first: number;
  ino: number;
  kind: number;
  volume: number;
  path: string;
}

function entry(m: MapRecords, rec: number, path: string, bytes: number, accesses: number, first: number): Entry {
  return { bytes, accesses, first, ino: m.inoOf(rec), kind: m.kindOf(rec), volume: m.volumeOf(rec), path };
}

/** Most bytes first, then by path, then in the order the trace first touched them. */
function before(a: Entry, b: Entry): number {
  return b.bytes - a.bytes || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0) || a.first - b.first;
}

export function rowOf(m: MapRecords, e: Entry): FileRow {
  const row: FileRow = { kind: KINDS[e.kind], path: e.path, accesses: e.accesses, bytes: e.bytes };
  if (e.volume !== NO_VOLUME) row.volume = m.volumes[e.volume].id;
  if (e.ino !== NO_INODE) row.inode = e.ino;
  return row;
}

/** Bytes of a spilled entry before its path: bytes, accesses, first, ino (f64), volume (u16), kind (u8), path length (u32). */
const FIXED = 39;

/**
 * The files of a summary sorted (most bytes first, then by path), with memory bounded by
 * the budget: entries are gathered in name order, sorted in runs of `maxHeld` (a tenth of
 * the budget at ~200 bytes an entry), spilled to a scratch file and merged; when they all
 * fit, sorted in memory.
 */
export function* sortedRows(m: MapRecords, entries: Iterable<Entry>, maxHeld = defaultHeld()): Generator<FileRow> {
  let held: Entry[] = [];
  let dir: string | undefined;
  let fd: number | undefined;
  const runs: Array<[number, number]> = [];
  let at = 0;
  try {
    for (const e of entries) {
      held.push(e);
      if (held.length >= maxHeld) {
        checkMemory('sorting the files of a trace');
        if (fd === undefined) {
          dir = mkdtempSync(path.join(tmpdir(), 'strata-trace-'));
          fd = openSync(path.join(dir, 'runs'), 'w+');
        }
        const n = writeRun(fd, at, held.sort(before));
        runs.push([at, n]);
        at += n;
        held = [];
      }
    }
    held.sort(before);
    if (fd === undefined) {
      for (const e of held) yield rowOf(m, e);
      return;
    }
    const readers = runs.map(([from, n]) => new RunReader(fd as number, from, n));
    yield* merge(m, readers, held);
  } finally {
    if (fd !== undefined) closeSync(fd);
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
}

function defaultHeld(): number {
  return Math.floor(memoryShare(0.1, 1 << 20, 1 << 28) / 200);
}

function writeRun(fd: number, at0: number, entries: Entry[]): number {
  let buf = Buffer.allocUnsafe(1 << 20);
  let n = 0;
  let at = at0;
  const flush = () => {
    for (let done = 0; done < n; ) done += writeSync(fd, buf, done, n - done, at + done);
    at += n;
    n = 0;
  };
  for (const e of entries) {
    const need = FIXED + e.path.length * 3;
    if (n + need > buf.length) {
      flush();
      if (need > buf.length) buf = Buffer.allocUnsafe(need);
    }
    buf.writeDoubleLE(e.bytes, n);
    buf.writeDoubleLE(e.accesses, n + 8);
    buf.writeDoubleLE(e.first, n + 16);
    buf.writeDoubleLE(e.ino, n + 24);
    buf.writeUInt16LE(e.volume, n + 32);
    buf[n + 34] = e.kind;
    const len = buf.write(e.path, n + FIXED, 'utf8');
    buf.writeUInt32LE(len, n + 35);
    n += FIXED + len;
  }
  flush();
  return at - at0;
}

/** Entries of one spilled run, read through a buffer. */
class RunReader {
  private buf = Buffer.allocUnsafe(1 << 16);
  private pos = 0;
  private have = 0;
  head: Entry | undefined;

  constructor(
    private readonly fd: number,
    private at: number,
    private left: number,
  ) {
    this.next();
  }

  /** Make `need` bytes available at pos (false at the run's end). */
  private fill(need: number): boolean {
    if (this.have - this.pos >= need) return true;
    const rest = this.have - this.pos;
    if (rest + this.left < need) return false;
    if (need > this.buf.length) {
      const b = Buffer.allocUnsafe(need * 2);
      this.buf.copy(b, 0, this.pos, this.have);
      this.buf = b;
    } else this.buf.copy(this.buf, 0, this.pos, this.have);
    this.pos = 0;
    this.have = rest;
    while (this.have < need || (this.left > 0 && this.have < this.buf.length)) {
      const n = readSync(this.fd, this.buf, this.have, Math.min(this.buf.length - this.have, this.left), this.at);
      if (n <= 0) throw new Error('trace scratch run ended early');
      this.have += n;
      this.at += n;
      this.left -= n;
      if (this.left === 0) break;
    }
    return this.have - this.pos >= need;
  }

  next(): void {
    if (!this.fill(FIXED)) {
      this.head = undefined;
      return;
    }
    const len = this.buf.readUInt32LE(this.pos + 35);
    if (!this.fill(FIXED + len)) throw new Error('trace scratch run ended early');
    const b = this.buf;
    const q = this.pos;
    this.head = {
      bytes: b.readDoubleLE(q),
      accesses: b.readDoubleLE(q + 8),
      first: b.readDoubleLE(q + 16),
      ino: b.readDoubleLE(q + 24),
      volume: b.readUInt16LE(q + 32),
      kind: b[q + 34],
      path: b.toString('utf8', q + FIXED, q + FIXED + len),
    };
    this.pos = q + FIXED + len;
  }
}

/** The runs and the last held entries merged (a heap of their heads). */
function* merge(m: MapRecords, readers: RunReader[], last: Entry[]): Generator<FileRow> {
  let k = 0;
  const tail = {
    head: last[0] as Entry | undefined,
    next() {
      this.head = last[++k];
    },
  };
  const heap = [...readers, tail].filter((r) => r.head !== undefined);
  const less = (a: { head?: Entry }, b: { head?: Entry }) => before(a.head as Entry, b.head as Entry) < 0;
  const down = (i: number) => siftDown(heap, i, less);
  for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
  while (heap.length > 0) {
    const top = heap[0];
    yield rowOf(m, top.head as Entry);
    top.next();
    if (top.head === undefined) {
      const end = heap.pop() as (typeof heap)[number];
      if (heap.length > 0) heap[0] = end;
    }
    if (heap.length > 0) down(0);
  }
}
