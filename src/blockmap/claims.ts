import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { StrataError } from '../util/errors.js';
import { KIND_CODE, type Kind } from './kinds.js';

/** No volume / no inode / no name in the packed columns. */
export const NO_VOLUME = 0xffff;
export const NO_NAME = -1;
export const NO_INODE = -1;

/** Most volumes one map describes (the column is 16-bit). */
export const MAX_VOLUMES = NO_VOLUME;

export interface ClaimFields {
  volume?: number;
  ino?: number;
  /** Path (file, directory) or detail (everything else). */
  name?: string;
  /** The id of a name stored in `Claims.names`, asked for only when the claim is kept (one id for all of a tree item's claims); wins over `name`. */
  nameOf?: () => number;
  /**
   * Offset inside the owning object at `start`: file offset for file, directory and
   * journal; byte offset inside the inode table for inode-table; 0 otherwise.
   */
  objectOffset?: number;
  /** The file system says other files may map the same bytes (reflinks, snapshots): not an overlap to report. */
  shared?: boolean;
}

/** Bytes of one spilled claim: start, end, ino, objectOffset, seq (f64), name (f64), kind, shared (u8), volume (u16). */
export const CLAIM_BYTES = 52;

/**
 * The names of a map's records, as UTF-8 in 1 MiB chunks with an offset table (a few bytes
 * per name more than the name itself; a JS string, its Map entry and its array slot take
 * ~100 bytes more). Past `memoryCap` bytes the chunks go to a scratch file and names are
 * read back from it (through a small read-ahead window), so a tree of millions of paths
 * does not live in memory. Only details (the names of metadata, repeated per group) are
 * interned; tree paths are unique (each inode is walked once) and stored once per item.
 */
export class StringStore {
  count = 0;
  private offsets = new Float64Array(1025);
  private chunks: Buffer[] = [];
  private cur = Buffer.allocUnsafe(1 << 20);
  private curAt = 0;
  /** Bytes before `cur` (in `chunks` or the file). */
  private before = 0;
  private fd: number | undefined;
  private window = Buffer.allocUnsafe(0);
  private windowAt = -1;
  private readonly ids = new Map<string, number>();

  constructor(
    private readonly memoryCap: number,
    private readonly scratch: () => string,
  ) {}

  /** A detail's id (the same string, the same id). */
  intern(s: string): number {
    let id = this.ids.get(s);
    if (id === undefined) {
      id = this.add(s);
      this.ids.set(s, id);
    }
    return id;
  }

  /** A new id for `s` (not interned: for a path that is stored once). */
  add(s: string): number {
    const max = s.length * 3;
    if (this.curAt + max > this.cur.length) this.roll(max);
    this.curAt += this.cur.write(s, this.curAt, 'utf8');
    if (this.count + 2 > this.offsets.length) {
      const o = new Float64Array(this.offsets.length * 2);
      o.set(this.offsets);
      this.offsets = o;
    }
    const id = this.count++;
    this.offsets[id + 1] = this.before + this.curAt;
    return id;
  }

  private roll(need: number): void {
    const full = this.cur.subarray(0, this.curAt);
    if (this.fd === undefined && this.before + this.curAt > this.memoryCap) {
      this.fd = openSync(path.join(this.scratch(), 'names'), 'w+');
      for (const c of this.chunks) writeAll(this.fd, c, this.offsetOf(c));
      this.chunks = [];
    }
    if (this.fd !== undefined) writeAll(this.fd, full, this.before);
    else this.chunks.push(Buffer.from(full));
    this.before += this.curAt;
    this.curAt = 0;
    if (need > this.cur.length) this.cur = Buffer.allocUnsafe(need);
  }

  private offsetOf(c: Buffer): number {
    let at = 0;
    for (const x of this.chunks) {
      if (x === c) return at;
      at += x.length;
    }
    return at;
  }

  get(id: number): string {
    const s = this.offsets[id];
    const e = this.offsets[id + 1];
    if (s >= this.before) return this.cur.toString('utf8', s - this.before, e - this.before);
    if (this.fd === undefined) {
      let at = 0;
      for (const c of this.chunks) {
        if (s < at + c.length) {
          if (e <= at + c.length) return c.toString('utf8', s - at, e - at);
          break;
        }
        at += c.length;
      }
      return this.slow(s, e);
    }
    if (this.windowAt < 0 || s < this.windowAt || e > this.windowAt + this.window.length) {
      const len = Math.max(e - s, 1 << 16);
      if (this.window.length < len) this.window = Buffer.allocUnsafe(len);
      const n = readSync(this.fd, this.window, 0, Math.min(len, this.before - s), s);
      this.window = this.window.subarray(0, Math.max(n, e - s));
      this.windowAt = s;
    }
    return this.window.toString('utf8', s - this.windowAt, e - this.windowAt);
  }

  /** A name that straddles two in-memory chunks (the chunks roll before a name is cut, so only when one was larger). */
  private slow(s: number, e: number): string {
    const all = Buffer.concat(this.chunks);
    return all.toString('utf8', s, e);
  }

  /** Every name, in id order (for an in-memory map). */
  all(): string[] {
    const out = new Array<string>(this.count);
    for (let i = 0; i < this.count; i++) out[i] = this.get(i);
    return out;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

function writeAll(fd: number, b: Buffer, at: number): void {
  for (let done = 0; done < b.length; ) done += writeSync(fd, b, done, b.length - done, at + done);
}

/**
 * Claims on disk bytes, in the order they were made, packed in growable typed arrays
 * (a 1 GiB Debian image makes ~10^4..10^5 of them). They may overlap; `resolveClaims`
 * turns them into the map. Past `cap` claims held (a share of the memory budget), the held
 * ones are sorted by start and written to a scratch file as one run; the resolution then
 * merges the runs, so a tree of millions of files takes disk, not memory. Each claim keeps
 * its order number (`seq`): ties go to the claim made first, spilled or not.
 */
export class Claims {
  count = 0;
  /** Order number of the first held claim (claims before it were spilled). */
  seq0 = 0;
  start = new Float64Array(1024);
  end = new Float64Array(1024);
  kind = new Uint8Array(1024);
  volume = new Uint16Array(1024);
  ino = new Float64Array(1024);
  name = new Float64Array(1024);
  objectOffset = new Float64Array(1024);
  /** 1 where the claim is a shared extent (see ClaimFields.shared). */
  shared = new Uint8Array(1024);
  readonly names: StringStore;
  /** Spilled runs: [byte offset, claim count] in the runs file. */
  readonly runs: Array<[number, number]> = [];
  runsFd: number | undefined;
  private runsAt = 0;
  private dir: string | undefined;
  private readonly cap: number;

  constructor(
    readonly diskSize: number,
    opts: { maxClaims?: number; maxNameBytes?: number } = {},
  ) {
    this.cap = Math.max(16, opts.maxClaims ?? Number.POSITIVE_INFINITY);
    this.names = new StringStore(opts.maxNameBytes ?? Number.POSITIVE_INFINITY, () => this.scratch());
  }

  private scratch(): string {
    if (this.dir === undefined) this.dir = mkdtempSync(path.join(tmpdir(), 'strata-blockmap-'));
    return this.dir;
  }

  /** Claims made so far (held and spilled). */
  get total(): number {
    return this.seq0 + this.count;
  }

  intern(s: string): number {
    return this.names.intern(s);
  }

  /** Claim disk bytes [start, start+length) (clipped to the disk; empty claims are dropped). */
  add(start: number, length: number, kind: Kind, f: ClaimFields = {}): void {
    if (!Number.isFinite(start) || !Number.isFinite(length)) {
      throw new StrataError('CORRUPT', `claim ${start}+${length} is not a finite range`, { structure: kind });
    }
    let s = start;
    let off = f.objectOffset ?? 0;
    if (s < 0) {
      off -= s;
      s = 0;
    }
    const e = Math.min(start + length, this.diskSize);
    if (e <= s) return;
    if (this.count === this.cap) this.spill();
    if (this.count === this.start.length) this.grow();
    const i = this.count++;
    this.start[i] = s;
    this.end[i] = e;
    this.kind[i] = KIND_CODE[kind];
    this.volume[i] = f.volume ?? NO_VOLUME;
    this.ino[i] = f.ino ?? NO_INODE;
    this.name[i] = f.nameOf ? f.nameOf() : f.name === undefined ? NO_NAME : this.intern(f.name);
    this.objectOffset[i] = off;
    this.shared[i] = f.shared ? 1 : 0;
  }

  /** The held claims' indexes sorted by start, then order. */
  sortedOrder(): Uint32Array {
    const n = this.count;
    const start = this.start;
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort((a, b) => start[a] - start[b] || a - b);
    return order;
  }

  /** Write the held claims as one sorted run and start afresh. */
  spill(): void {
    if (this.count === 0) return;
    if (this.runsFd === undefined) this.runsFd = openSync(path.join(this.scratch(), 'claims'), 'w+');
    const order = this.sortedOrder();
    const per = 4096;
    const buf = Buffer.allocUnsafe(per * CLAIM_BYTES);
    const at0 = this.runsAt;
    for (let k = 0; k < order.length; k += per) {
      const m = Math.min(per, order.length - k);
      for (let j = 0; j < m; j++) {
        const i = order[k + j];
        const o = j * CLAIM_BYTES;
        buf.writeDoubleLE(this.start[i], o);
        buf.writeDoubleLE(this.end[i], o + 8);
        buf.writeDoubleLE(this.ino[i], o + 16);
        buf.writeDoubleLE(this.objectOffset[i], o + 24);
        buf.writeDoubleLE(this.seq0 + i, o + 32);
        buf.writeDoubleLE(this.name[i], o + 40);
        buf[o + 48] = this.kind[i];
        buf[o + 49] = this.shared[i];
        buf.writeUInt16LE(this.volume[i], o + 50);
      }
      writeAll(this.runsFd, buf.subarray(0, m * CLAIM_BYTES), this.runsAt);
      this.runsAt += m * CLAIM_BYTES;
    }
    this.runs.push([at0, order.length]);
    this.seq0 += this.count;
    this.count = 0;
  }

  /** Remove the scratch files (idempotent). */
  dispose(): void {
    this.names.close();
    if (this.runsFd !== undefined) closeSync(this.runsFd);
    this.runsFd = undefined;
    if (this.dir !== undefined) rmSync(this.dir, { recursive: true, force: true });
    this.dir = undefined;
  }

  private grow(): void {
    const n = Math.min(this.start.length * 2, Math.max(this.cap, 1024));
    const g = <T extends Float64Array | Uint8Array | Uint16Array | Int32Array>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a as never);
      return b;
    };
    this.start = g(this.start, (k) => new Float64Array(k));
    this.end = g(this.end, (k) => new Float64Array(k));
    this.kind = g(this.kind, (k) => new Uint8Array(k));
    this.volume = g(this.volume, (k) => new Uint16Array(k));
    this.ino = g(this.ino, (k) => new Float64Array(k));
    this.name = g(this.name, (k) => new Float64Array(k));
    this.objectOffset = g(this.objectOffset, (k) => new Float64Array(k));
    this.shared = g(this.shared, (k) => new Uint8Array(k));
  }
}

/** A window of a volume that is a contiguous range of the disk. */
export interface DiskRun {
  /** Offset inside the volume. */
  volumeOffset: number;
  diskOffset: number;
  length: number;
}

/**
 * Map volume bytes [offset, offset+length) onto the disk through the volume's runs
 * (sorted by volumeOffset, non-overlapping), calling `emit` once per contiguous piece
 * with how far into the range the piece starts. Bytes outside every run are dropped.
 */
export function translate(
  runs: readonly DiskRun[],
  offset: number,
  length: number,
  emit: (diskOffset: number, length: number, skip: number) => void,
): void {
  if (runs.length === 1) {
    const r = runs[0];
    const s = Math.max(offset, r.volumeOffset);
    const e = Math.min(offset + length, r.volumeOffset + r.length);
    if (e > s) emit(r.diskOffset + (s - r.volumeOffset), e - s, s - offset);
    return;
  }
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (runs[mid].volumeOffset + runs[mid].length <= offset) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < runs.length; i++) {
    const r = runs[i];
    if (r.volumeOffset >= offset + length) break;
    const s = Math.max(offset, r.volumeOffset);
    const e = Math.min(offset + length, r.volumeOffset + r.length);
    if (e > s) emit(r.diskOffset + (s - r.volumeOffset), e - s, s - offset);
  }
}
