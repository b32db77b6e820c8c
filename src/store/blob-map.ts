import { closeSync, mkdtempSync, openSync, readSync, rmdirSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { StrataError } from '../util/errors.js';
import type { BlobType } from './pack.js';
import { digestKey, digestPrefix, SortedDigestIndex } from './sorted-index.js';

export interface IndexEntry {
  pack: string;
  type: BlobType;
  /** Frame flags (FLAG_ZSTD). */
  flags: number;
  /** The frame's offset and encoded length in the pack. */
  offset: number;
  encLength: number;
  /** Plain length of the frame, the blob's offset in it, and the blob's length. */
  framePlain: number;
  at: number;
  plainLength: number;
}

const TYPES: BlobType[] = ['data', 'tree'];

/**
 * One blob's record: digest (32 bytes), offset and flags (f64), pack number, encoded length,
 * frame plain length, offset in frame and plain length (u32), type and a deleted mark (u8).
 */
const REC = 72;
const R_OFFSET = 32;
const R_FLAGS = 40;
const R_PACK = 48;
const R_ENC = 52;
const R_FRAME = 56;
const R_AT = 60;
const R_PLAIN = 64;
const R_TYPE = 68;
const R_DEAD = 69;
/** Records per block (a block is the unit of reading from the spill file: 4,032 bytes). */
const PER_BLOCK = 56;
const BLOCK = PER_BLOCK * REC;
/** Blocks of the spill file kept in memory (direct-mapped by block number): 1 MiB. */
const CACHED_BLOCKS = 256;
/** Blocks read at once when iterating the spill file (~1 MiB). */
const SCAN_BLOCKS = 256;

/**
 * Records of this many blobs stay in memory (~4.7 MB); past that they move to a spill file.
 * The test of the spill path lowers it (BlobMap's constructor).
 */
export const SPILL_AFTER = 65_536;

/**
 * Live entries in the slot table at most (the newest): past it they move to a sorted index
 * file (SortedDigestIndex) and the table starts again, so a store of 5,000,000 blobs holds
 * about what one of 1,000,000 does (~7 MiB of slots at most, ~0.06 bytes a blob of fences).
 * Lookups of the older entries read a 1 KiB block of that file. The tests lower it.
 */
export const TABLE_ENTRIES = 1 << 20;
/** Entries sorted and merged into the index at once when the table is full (8 bytes each). */
const MERGE_BATCH = 1 << 17;

/** Slot values: 0 empty, 1 deleted, else (entry number + 1) << 6 | 6 bits of fingerprint. */
const EMPTY = 0;
const TOMBSTONE = 1;
const FP_BITS = 6;
const FP_MASK = (1 << FP_BITS) - 1;
/** Entry numbers must fit the slot's 26 bits. */
const MAX_ENTRIES = 2 ** (32 - FP_BITS) - 2;
/** Grow the slot table past this load; size it to this load over the live entries when growing. */
const MAX_LOAD = 0.75;
const GROW_LOAD = 0.6;

const release = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
});

/**
 * The blob records, numbered in insertion order: in one growing Buffer up to `spillAfter`
 * blobs, then in an unlinked scratch file (nothing is left behind by a kill) read a block at
 * a time through a small direct-mapped cache, the block being filled kept in memory. A
 * store's index is random access by digest, so the page cache of a bigger cache would hit
 * little; records written in order (a check-in of a version like the last) are read in order,
 * a block per 56 lookups.
 */
class Records {
  /** In memory (before spilling): every record. */
  private mem: Buffer | undefined = Buffer.alloc(0);
  private fd = -1;
  /** Records in the file (whole blocks); the rest are in `tail`. */
  private flushed = 0;
  private tail = Buffer.alloc(BLOCK);
  /** Allocated at the spill (small stores, as in a server holding many, never need it). */
  private cache = Buffer.alloc(0);
  private readonly cached = new Float64Array(CACHED_BLOCKS).fill(-1);
  private readonly token = {};
  count = 0;

  constructor(private readonly spillAfter: number) {}

  /** The buffer and offset holding record `e` (valid until the next call). */
  at(e: number): [Buffer, number] {
    if (this.mem) return [this.mem, e * REC];
    if (e >= this.flushed) return [this.tail, (e - this.flushed) * REC];
    const b = Math.floor(e / PER_BLOCK);
    const slot = b % CACHED_BLOCKS;
    if (this.cached[slot] !== b) {
      this.cached[slot] = -1;
      this.readFully(this.cache, slot * BLOCK, BLOCK, b * BLOCK);
      this.cached[slot] = b;
    }
    return [this.cache, slot * BLOCK + (e - b * PER_BLOCK) * REC];
  }

  private readFully(into: Buffer, at: number, length: number, position: number): void {
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, into, at + done, length - done, position + done);
      if (n === 0) throw new StrataError('IO', 'store index spill file ends early', { structure: 'store index' });
      done += n;
    }
  }

  /** Record `e` changed in `buf` at `at` (as returned by `at(e)`): write it through to the file. */
  written(e: number, buf: Buffer, at: number): void {
    if (this.mem || e >= this.flushed) return;
    writeSync(this.fd, buf, at, REC, e * REC);
  }

  /** A new record, zeroed, at the end: its buffer and offset. */
  append(): [Buffer, number] {
    if (this.mem && this.count >= this.spillAfter) this.spill();
    const e = this.count++;
    if (this.mem) {
      if (this.mem.length < this.count * REC) {
        const grown = Buffer.alloc(Math.max(64 * REC, this.mem.length * 2));
        this.mem.copy(grown);
        this.mem = grown;
      }
      this.mem.fill(0, e * REC, e * REC + REC);
      return [this.mem, e * REC];
    }
    if (e - this.flushed === PER_BLOCK) {
      writeSync(this.fd, this.tail, 0, BLOCK, this.flushed * REC);
      this.flushed += PER_BLOCK;
      this.tail.fill(0);
    }
    return [this.tail, (e - this.flushed) * REC];
  }

  private spill(): void {
    const mem = this.mem as Buffer;
    const dir = mkdtempSync(path.join(tmpdir(), 'strata-index-'));
    const file = path.join(dir, 'records');
    this.fd = openSync(file, 'w+', 0o600);
    this.cache = Buffer.alloc(CACHED_BLOCKS * BLOCK);
    release.register(this, this.fd, this.token);
    unlinkSync(file);
    rmdirSync(dir);
    const whole = this.count - (this.count % PER_BLOCK);
    writeSync(this.fd, mem, 0, whole * REC, 0);
    this.flushed = whole;
    mem.copy(this.tail, 0, whole * REC, this.count * REC);
    this.mem = undefined;
  }

  /**
   * Every record (numbered below `end`, when given) in order: [buffer, offset, number], valid
   * until the next step; each step looks at the records anew (a caller may add meanwhile). Runs of the
   * file are read SCAN_BLOCKS blocks at a time, past the cache (a scan would only evict what
   * lookups use).
   */
  *scan(end?: number): Generator<[Buffer, number, number]> {
    let run: Buffer | undefined;
    for (let e = 0; e < Math.min(end ?? this.count, this.count); ) {
      if (this.mem || e >= this.flushed) {
        const [buf, at] = this.at(e);
        yield [buf, at, e++];
        continue;
      }
      run ??= Buffer.alloc(SCAN_BLOCKS * BLOCK);
      const to = Math.min(this.flushed, e + SCAN_BLOCKS * PER_BLOCK, end ?? this.count);
      this.readFully(run, 0, (to - e) * REC, e * REC);
      const from = e;
      for (; e < to; e++) yield [run, (e - from) * REC, e];
    }
  }

  /** `fn(buffer, offset, number)` for every record from `from` on in order, as `scan` without its allocations (the rehash). */
  each(fn: (buf: Buffer, at: number, e: number) => void, from = 0): void {
    let run: Buffer | undefined;
    for (let e = from; e < this.count; ) {
      if (this.mem || e >= this.flushed) {
        const [buf, at] = this.at(e);
        fn(buf, at, e++);
        continue;
      }
      run ??= Buffer.alloc(SCAN_BLOCKS * BLOCK);
      const to = Math.min(this.flushed, e + SCAN_BLOCKS * PER_BLOCK);
      this.readFully(run, 0, (to - e) * REC, e * REC);
      for (let at = 0; e < to; e++, at += REC) fn(run, at, e);
    }
  }

  /** Bytes of records held in memory. */
  get memBytes(): number {
    return (this.mem?.length ?? BLOCK) + (this.mem ? 0 : this.cache.length);
  }

  close(): void {
    if (this.fd >= 0) {
      release.unregister(this.token);
      closeSync(this.fd);
    }
    this.fd = -1;
    this.mem = Buffer.alloc(0);
    this.cache = Buffer.alloc(0);
    this.flushed = 0;
    this.count = 0;
    this.cached.fill(-1);
    this.tail.fill(0);
  }
}

/**
 * The store's index (digest -> IndexEntry). Held as records of 72 bytes (the digest's 32 raw
 * bytes and the numbers; the pack as a number into a table of pack ids) in insertion order,
 * and one Uint32Array of slots (open addressing, linear probing; digests are uniform, so
 * their first bytes place them) holding the record's number and 6 more bits of the digest.
 * Past SPILL_AFTER blobs the records move to a scratch file (see Records): what stays
 * resident is the slots, 4 bytes a slot at a load of 0.6-0.75, ~5.3-6.7 bytes a blob, for the
 * newest TABLE_ENTRIES blobs; older ones are in a sorted index file (SortedDigestIndex, ~0.06
 * bytes a blob resident), so a store of 5,000,000 blobs holds ~7 MiB here, not ~32 MB (and
 * before the records spilled, ~80 bytes a blob, ~400 MB). A lookup compares the fingerprint in
 * memory, and reads a record only where it matches: a miss (check-in's "is this chunk new?")
 * reads one for ~1 probe in 64, a hit one; past TABLE_ENTRIES blobs a miss in the table reads
 * one 1 KiB block of the index file too.
 *
 * It behaves as a Map for what the store does with it: get/has/set/delete, size, and
 * iteration in insertion order (prune copies blobs in index order).
 */
export class BlobMap implements ReadonlyMap<string, IndexEntry> {
  private live = 0;
  private readonly recs: Records;
  private table = new Uint32Array(16);
  /** Slots not empty (live or deleted). */
  private used = 0;
  /** Entries numbered below this are in `older`, not in the table. */
  private tableFrom = 0;
  /** Live entries in the table. */
  private tableLive = 0;
  private readonly tableEntries: number;
  /** The entries numbered below `tableFrom` (deleted ones too: their records say so), sorted by digest. */
  private readonly older = new SortedDigestIndex();
  private readonly packIds: string[] = [];
  private readonly packNo = new Map<string, number>();
  private readonly key = Buffer.alloc(32);
  private gen = 0;

  /** The spill point of maps made without one (tests lower it to run a store's paths on the spill file). */
  static spillAfter = SPILL_AFTER;
  /** The table's most entries for maps made without one (tests lower it to run a store's paths on the sorted index). */
  static tableEntries = TABLE_ENTRIES;

  constructor(opts: { spillAfter?: number; tableEntries?: number } = {}) {
    this.recs = new Records(opts.spillAfter ?? BlobMap.spillAfter);
    this.tableEntries = Math.max(1, opts.tableEntries ?? BlobMap.tableEntries);
  }

  get size(): number {
    return this.live;
  }

  get [Symbol.toStringTag](): string {
    return 'BlobMap';
  }

  private parse(digest: string): Buffer | undefined {
    if (digest.length !== 64) return undefined;
    const w = this.key.write(digest, 'hex');
    return w === 32 ? this.key : undefined;
  }

  /** First slot to probe for a digest (any table size: the top 21 bits scaled, exact in a double). */
  private home(k: Buffer, size: number): number {
    return Math.floor(((k.readUInt32BE(0) >>> 11) * size) / 2097152);
  }

  /** The slot holding `k`, or -1 - (the first free slot seen) when absent. */
  private find(k: Buffer): number {
    const table = this.table;
    const size = table.length;
    const fp = k[4] & FP_MASK;
    let i = this.home(k, size);
    let free = -1;
    for (;;) {
      const t = table[i];
      if (t === EMPTY) return -1 - (free >= 0 ? free : i);
      if (t === TOMBSTONE) {
        if (free < 0) free = i;
      } else if ((t & FP_MASK) === fp) {
        const [buf, at] = this.recs.at((t >>> FP_BITS) - 1);
        if (buf.compare(k, 0, 32, at, at + 32) === 0) return i;
      }
      i = i + 1 === size ? 0 : i + 1;
    }
  }

  /** The number of the live entry of `k` in the sorted index of older entries, or -1. */
  private findOlder(k: Buffer): number {
    if (this.older.count === 0) return -1;
    return this.older.find(digestPrefix(k), (e) => {
      const [b, at] = this.recs.at(e);
      return b[at + R_DEAD] === 0 && b.compare(k, 0, 32, at, at + 32) === 0;
    });
  }

  /** The number of `k`'s live entry (the table's, else the sorted index's), or -1. */
  private entryOf(k: Buffer): number {
    const s = this.find(k);
    return s >= 0 ? (this.table[s] >>> FP_BITS) - 1 : this.findOlder(k);
  }

  /** Rebuild the slots for the table's live entries (grown, or cleared of tombstones). */
  private rehash(): void {
    const size = Math.max(16, Math.ceil((this.tableLive + 1) / GROW_LOAD));
    const table = new Uint32Array(size);
    this.table = new Uint32Array(0); // the old one is garbage while the new one fills
    this.recs.each((buf, at, e) => {
      if (buf[at + R_DEAD]) return;
      let i = Math.floor(((buf.readUInt32BE(at) >>> 11) * size) / 2097152);
      while (table[i] !== EMPTY) i = i + 1 === size ? 0 : i + 1;
      table[i] = (((e + 1) << FP_BITS) | (buf[at + 4] & FP_MASK)) >>> 0;
    }, this.tableFrom);
    this.table = table;
    this.used = this.tableLive;
  }

  /** The table's live entries into the sorted index (in sorted batches), the table emptied. */
  private spillTable(): void {
    const keys = new Float64Array(Math.min(MERGE_BATCH, this.tableLive));
    let n = 0;
    const flush = () => {
      const batch = keys.subarray(0, n);
      batch.sort();
      this.older.merge(batch);
      n = 0;
    };
    this.recs.each((buf, at, e) => {
      if (buf[at + R_DEAD]) return;
      keys[n++] = digestKey(digestPrefix(buf, at), e);
      if (n === keys.length) flush();
    }, this.tableFrom);
    if (n > 0) flush();
    this.tableFrom = this.recs.count;
    this.table.fill(EMPTY);
    this.used = 0;
    this.tableLive = 0;
  }

  private entryAt(e: number): IndexEntry {
    const [b, at] = this.recs.at(e);
    return this.decode(b, at);
  }

  private decode(b: Buffer, at: number): IndexEntry {
    return {
      pack: this.packIds[b.readUInt32LE(at + R_PACK)],
      type: TYPES[b[at + R_TYPE]],
      flags: b.readDoubleLE(at + R_FLAGS),
      offset: b.readDoubleLE(at + R_OFFSET),
      encLength: b.readUInt32LE(at + R_ENC),
      framePlain: b.readUInt32LE(at + R_FRAME),
      at: b.readUInt32LE(at + R_AT),
      plainLength: b.readUInt32LE(at + R_PLAIN),
    };
  }

  private write(b: Buffer, at: number, v: IndexEntry): void {
    let p = this.packNo.get(v.pack);
    if (p === undefined) {
      p = this.packIds.length;
      this.packIds.push(v.pack);
      this.packNo.set(v.pack, p);
    }
    b.writeUInt32LE(p, at + R_PACK);
    b[at + R_TYPE] = v.type === 'tree' ? 1 : 0;
    b.writeDoubleLE(v.flags, at + R_FLAGS);
    b.writeDoubleLE(v.offset, at + R_OFFSET);
    // lengths are checked against MAX_BLOB (256 MiB) where entries come from index files
    b.writeUInt32LE(v.encLength, at + R_ENC);
    b.writeUInt32LE(v.framePlain, at + R_FRAME);
    b.writeUInt32LE(v.at, at + R_AT);
    b.writeUInt32LE(v.plainLength, at + R_PLAIN);
  }

  get(digest: string): IndexEntry | undefined {
    const k = this.parse(digest);
    if (!k) return undefined;
    const e = this.entryOf(k);
    return e < 0 ? undefined : this.entryAt(e);
  }

  has(digest: string): boolean {
    const k = this.parse(digest);
    return k !== undefined && this.entryOf(k) >= 0;
  }

  set(digest: string, v: IndexEntry): this {
    this.put(digest, v, true);
    return this;
  }

  /** Add `digest` unless it is there (one lookup, not has + set); returns whether it was added. */
  setIfAbsent(digest: string, v: IndexEntry): boolean {
    return this.put(digest, v, false);
  }

  private put(digest: string, v: IndexEntry, replace: boolean): boolean {
    const k = this.parse(digest);
    if (!k || digest !== digest.toLowerCase()) throw new Error(`BlobMap: not a sha256 digest: ${digest}`);
    const s = this.find(k);
    const was = s >= 0 ? (this.table[s] >>> FP_BITS) - 1 : this.findOlder(k);
    if (was >= 0) {
      if (!replace) return false;
      const e = was;
      const [b, at] = this.recs.at(e);
      this.write(b, at, v);
      this.recs.written(e, b, at);
      return false;
    }
    if (this.recs.count >= MAX_ENTRIES) {
      throw new StrataError('LIMIT', `the store's index holds at most ${MAX_ENTRIES} blobs`, {
        structure: 'store index',
      });
    }
    const fp = k[4] & FP_MASK;
    const [b, at] = this.recs.append();
    const e = this.recs.count - 1;
    k.copy(b, at);
    this.write(b, at, v);
    const slot = -1 - s;
    if (this.table[slot] === EMPTY) this.used++;
    this.table[slot] = (((e + 1) << FP_BITS) | fp) >>> 0;
    this.live++;
    this.tableLive++;
    if (this.tableLive >= this.tableEntries) this.spillTable();
    else if (this.used > this.table.length * MAX_LOAD) this.rehash();
    return true;
  }

  delete(digest: string): boolean {
    const k = this.parse(digest);
    if (!k) return false;
    const s = this.find(k);
    const e = s >= 0 ? (this.table[s] >>> FP_BITS) - 1 : this.findOlder(k);
    if (e < 0) return false;
    const [b, at] = this.recs.at(e);
    b[at + R_DEAD] = 1;
    this.recs.written(e, b, at);
    if (s >= 0) {
      this.table[s] = TOMBSTONE;
      this.tableLive--;
    }
    this.live--;
    return true;
  }

  /**
   * Which load of the index this is: clear() (a reload) renumbers the entries, so what holds
   * entry numbers (BlobMarks) is valid only while this stays the same.
   */
  get generation(): number {
    return this.gen;
  }

  /** Entries numbered so far (deleted ones included): entry numbers are below it. */
  get numbered(): number {
    return this.recs.count;
  }

  /** The number of `digest`'s entry (insertion order, fixed until clear()), or -1 when absent. */
  numberOf(digest: string): number {
    const k = this.parse(digest);
    if (!k) return -1;
    return this.entryOf(k);
  }

  /** The pack id of a pack number (as eachPackEntry gives them). */
  packId(n: number): string {
    return this.packIds[n];
  }

  /** Pack numbers are below this. */
  get packCount(): number {
    return this.packIds.length;
  }

  /**
   * `fn(entry number, pack number)` for every live entry in order: a pass over the records
   * that makes no string or object per blob (a prune's plan over a million blobs). `from`:
   * start at this entry number.
   */
  eachPackEntry(fn: (e: number, pack: number) => void, from = 0): void {
    this.recs.each((b, at, e) => {
      if (!b[at + R_DEAD]) fn(e, b.readUInt32LE(at + R_PACK));
    }, from);
  }

  /** The number of a pack id (as eachPackEntry gives them), if any entry ever named it. */
  packNumber(id: string): number | undefined {
    return this.packNo.get(id);
  }

  /**
   * The live entries numbered below `end` (default: every one now) that `pick(entry number,
   * pack number)` chooses, in order. Entries added meanwhile (numbered from `end` on) are not
   * visited; entries deleted meanwhile may still be.
   */
  *entriesWhere(pick: (e: number, pack: number) => boolean, end = this.recs.count): Generator<[string, IndexEntry]> {
    for (const [b, at, e] of this.recs.scan(end)) {
      if (!b[at + R_DEAD] && pick(e, b.readUInt32LE(at + R_PACK))) {
        yield [b.toString('hex', at, at + 32), this.decode(b, at)];
      }
    }
  }

  /** Forget every entry (and the spill file). */
  clear(): void {
    this.gen++;
    this.recs.close();
    this.older.close();
    this.live = 0;
    this.used = 0;
    this.tableFrom = 0;
    this.tableLive = 0;
    this.table = new Uint32Array(16);
    this.packIds.length = 0;
    this.packNo.clear();
  }

  /** Release the spill file now (else when the map is collected or the process ends). */
  close(): void {
    this.clear();
  }

  /** Resident bytes that grow with the blobs: the slots, and the records while in memory. */
  get residentBytes(): number {
    return this.table.byteLength + this.recs.memBytes + this.older.residentBytes;
  }

  *entries(): MapIterator<[string, IndexEntry]> {
    for (const [b, at] of this.recs.scan()) {
      if (!b[at + R_DEAD]) yield [b.toString('hex', at, at + 32), this.decode(b, at)];
    }
  }

  *keys(): MapIterator<string> {
    for (const [b, at] of this.recs.scan()) if (!b[at + R_DEAD]) yield b.toString('hex', at, at + 32);
  }

  *values(): MapIterator<IndexEntry> {
    for (const [b, at] of this.recs.scan()) if (!b[at + R_DEAD]) yield this.decode(b, at);
  }

  [Symbol.iterator](): MapIterator<[string, IndexEntry]> {
    return this.entries();
  }

  forEach(cb: (value: IndexEntry, key: string, map: ReadonlyMap<string, IndexEntry>) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) cb.call(thisArg, v, k, this);
  }
}

/**
 * Some of a BlobMap's entries, a bit each by entry number: what gc marks reachable (a
 * DigestSet of the same million blobs takes ~40 MB, a Set of their hex strings ~120 MB; these
 * bits 125 KB). Digests the map does not hold are not kept (a store cannot keep what it
 * lacks; verify reports them). Valid for the load of the index it was made on: a reload
 * renumbers the entries, and using marks across one is an error.
 */
export class BlobMarks {
  private bits: Uint8Array;
  private marked = 0;
  private readonly generation: number;

  constructor(readonly map: BlobMap) {
    this.generation = map.generation;
    this.bits = new Uint8Array((map.numbered + 7) >>> 3);
  }

  /** Throws unless the map is still the load these marks were made on. */
  current(): void {
    if (this.map.generation !== this.generation) {
      throw new StrataError(
        'IO',
        'the index was reloaded while in use (another process rewrote it: a gc?); run again',
        {
          structure: 'store index',
        },
      );
    }
  }

  /** Mark `digest` if the map holds it; returns whether it does. */
  mark(digest: string): boolean {
    this.current();
    const e = this.map.numberOf(digest);
    if (e < 0) return false;
    if (e >>> 3 >= this.bits.length) {
      const grown = new Uint8Array(Math.max(this.bits.length * 2, (this.map.numbered + 7) >>> 3));
      grown.set(this.bits);
      this.bits = grown;
    }
    const bit = 1 << (e & 7);
    if ((this.bits[e >>> 3] & bit) === 0) {
      this.bits[e >>> 3] |= bit;
      this.marked++;
    }
    return true;
  }

  /** `mark`, shaped as Set.add (reachable() gives its digests to an `add`). */
  add(digest: string): this {
    this.mark(digest);
    return this;
  }

  has(digest: string): boolean {
    this.current();
    const e = this.map.numberOf(digest);
    return e >= 0 && this.hasEntry(e);
  }

  /** Whether entry number `e` is marked. */
  hasEntry(e: number): boolean {
    return e >>> 3 < this.bits.length && (this.bits[e >>> 3] & (1 << (e & 7))) !== 0;
  }

  /** Entries marked. */
  get size(): number {
    return this.marked;
  }
}
