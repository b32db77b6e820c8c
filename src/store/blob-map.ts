import type { BlobType } from './pack.js';

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

const EMPTY = 0;
const TOMBSTONE = -1;
const TYPES: BlobType[] = ['data', 'tree'];

/**
 * The store's in-memory index (digest -> IndexEntry) in columns instead of one Map entry,
 * key string and object per blob (~210 bytes each; a million-file check-in's store holds a
 * million blobs): digests as 32 raw bytes, the numbers in typed arrays, the pack as a
 * number into a table of pack ids, found through an open-addressing hash table keyed by
 * the digest's first bytes (digests are uniform). About 80 bytes per blob. It behaves as a
 * Map for what the store does with it: get/has/set/delete, size, and iteration in
 * insertion order (prune copies blobs in index order).
 */
export class BlobMap implements ReadonlyMap<string, IndexEntry> {
  private n = 0;
  private live = 0;
  private digests = Buffer.alloc(0);
  private pack = new Uint32Array(0);
  private type = new Uint8Array(0);
  private dead = new Uint8Array(0);
  private offset = new Float64Array(0);
  private flags = new Float64Array(0);
  private encLength = new Uint32Array(0);
  private framePlain = new Uint32Array(0);
  private at = new Uint32Array(0);
  private plainLength = new Uint32Array(0);
  /** Slot -> entry number + 1 (0 empty, -1 deleted). */
  private table = new Int32Array(16);
  private used = 0;
  private readonly packIds: string[] = [];
  private readonly packNo = new Map<string, number>();
  private readonly key = Buffer.alloc(32);

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

  /** The slot holding `k`, or -1 - (the first free slot seen) when absent. */
  private find(k: Buffer): number {
    const mask = this.table.length - 1;
    let i = k.readUInt32LE(0) & mask;
    let free = -1;
    for (;;) {
      const t = this.table[i];
      if (t === EMPTY) return -1 - (free >= 0 ? free : i);
      if (t === TOMBSTONE) {
        if (free < 0) free = i;
      } else if (this.digests.compare(k, 0, 32, (t - 1) * 32, t * 32) === 0) return i;
      i = (i + 1) & mask;
    }
  }

  private grow(): void {
    const cap = Math.max(1024, this.n * 2);
    const up = <T extends Uint8Array | Uint32Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap);
      b.set(a.subarray(0, this.n) as never);
      return b;
    };
    const d = Buffer.alloc(cap * 32);
    this.digests.copy(d, 0, 0, this.n * 32);
    this.digests = d;
    this.pack = up(this.pack, (c) => new Uint32Array(c));
    this.type = up(this.type, (c) => new Uint8Array(c));
    this.dead = up(this.dead, (c) => new Uint8Array(c));
    this.offset = up(this.offset, (c) => new Float64Array(c));
    this.flags = up(this.flags, (c) => new Float64Array(c));
    this.encLength = up(this.encLength, (c) => new Uint32Array(c));
    this.framePlain = up(this.framePlain, (c) => new Uint32Array(c));
    this.at = up(this.at, (c) => new Uint32Array(c));
    this.plainLength = up(this.plainLength, (c) => new Uint32Array(c));
  }

  /** Rebuild the hash table for the live entries (grown, or cleared of tombstones). */
  private rehash(): void {
    let size = 16;
    while (size < this.live * 2 + 2) size *= 2;
    this.table = new Int32Array(size);
    this.used = 0;
    const mask = size - 1;
    for (let e = 0; e < this.n; e++) {
      if (this.dead[e]) continue;
      let i = this.digests.readUInt32LE(e * 32) & mask;
      while (this.table[i] !== EMPTY) i = (i + 1) & mask;
      this.table[i] = e + 1;
      this.used++;
    }
  }

  private entryAt(e: number): IndexEntry {
    return {
      pack: this.packIds[this.pack[e]],
      type: TYPES[this.type[e]],
      flags: this.flags[e],
      offset: this.offset[e],
      encLength: this.encLength[e],
      framePlain: this.framePlain[e],
      at: this.at[e],
      plainLength: this.plainLength[e],
    };
  }

  private write(e: number, v: IndexEntry): void {
    let p = this.packNo.get(v.pack);
    if (p === undefined) {
      p = this.packIds.length;
      this.packIds.push(v.pack);
      this.packNo.set(v.pack, p);
    }
    this.pack[e] = p;
    this.type[e] = v.type === 'tree' ? 1 : 0;
    this.flags[e] = v.flags;
    this.offset[e] = v.offset;
    // lengths are checked against MAX_BLOB (256 MiB) where entries come from index files
    this.encLength[e] = v.encLength;
    this.framePlain[e] = v.framePlain;
    this.at[e] = v.at;
    this.plainLength[e] = v.plainLength;
  }

  get(digest: string): IndexEntry | undefined {
    const k = this.parse(digest);
    if (!k) return undefined;
    const s = this.find(k);
    return s < 0 ? undefined : this.entryAt(this.table[s] - 1);
  }

  has(digest: string): boolean {
    const k = this.parse(digest);
    return k !== undefined && this.find(k) >= 0;
  }

  set(digest: string, v: IndexEntry): this {
    const k = this.parse(digest);
    if (!k || digest !== digest.toLowerCase()) throw new Error(`BlobMap: not a sha256 digest: ${digest}`);
    const s = this.find(k);
    if (s >= 0) {
      this.write(this.table[s] - 1, v);
      return this;
    }
    if (this.n === this.dead.length) this.grow();
    const e = this.n++;
    k.copy(this.digests, e * 32);
    this.dead[e] = 0;
    this.write(e, v);
    this.table[-1 - s] = e + 1;
    this.live++;
    this.used++;
    if (this.used * 2 > this.table.length) this.rehash();
    return this;
  }

  delete(digest: string): boolean {
    const k = this.parse(digest);
    if (!k) return false;
    const s = this.find(k);
    if (s < 0) return false;
    this.dead[this.table[s] - 1] = 1;
    this.table[s] = TOMBSTONE;
    this.live--;
    return true;
  }

  clear(): void {
    this.n = 0;
    this.live = 0;
    this.used = 0;
    this.digests = Buffer.alloc(0);
    this.dead = new Uint8Array(0);
    this.table = new Int32Array(16);
    this.packIds.length = 0;
    this.packNo.clear();
  }

  *entries(): MapIterator<[string, IndexEntry]> {
    for (let e = 0; e < this.n; e++) {
      if (!this.dead[e]) yield [this.digests.toString('hex', e * 32, e * 32 + 32), this.entryAt(e)];
    }
  }

  *keys(): MapIterator<string> {
    for (let e = 0; e < this.n; e++) if (!this.dead[e]) yield this.digests.toString('hex', e * 32, e * 32 + 32);
  }

  *values(): MapIterator<IndexEntry> {
    for (let e = 0; e < this.n; e++) if (!this.dead[e]) yield this.entryAt(e);
  }

  [Symbol.iterator](): MapIterator<[string, IndexEntry]> {
    return this.entries();
  }

  forEach(cb: (value: IndexEntry, key: string, map: ReadonlyMap<string, IndexEntry>) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) cb.call(thisArg, v, k, this);
  }
}
