/**
 * A set of sha256 digests (64 lowercase hex characters) in ~40 bytes each: 32 raw bytes in
 * one growing buffer, found through an open-addressing table keyed by their first bytes
 * (digests are uniform). A Set of the hex strings costs ~110-130 bytes each; gc's mark of
 * a library holding a million-file version holds a million of them. Anything that is not a
 * lowercase digest goes to a plain Set beside it, so it behaves as a Set<string> for what
 * gc, verify and prune do with it (add, has, size, iteration in insertion order per kind).
 */
export class DigestSet implements ReadonlySet<string> {
  private n = 0;
  private digests = Buffer.alloc(0);
  /** Slot -> entry number + 1 (0 empty). */
  private table = new Int32Array(1024);
  private readonly other = new Set<string>();
  private readonly key = Buffer.alloc(32);

  get size(): number {
    return this.n + this.other.size;
  }

  /**
   * Bytes this set holds (the digests' buffer, the table, ~100 for each other string): what
   * a cache of sets weighs them by.
   */
  get byteLength(): number {
    return this.digests.length + this.table.byteLength + this.other.size * 100;
  }

  /** What `byteLength` will be once trimmed: the bytes a growing set weighs as a cache's entry. */
  get usedBytes(): number {
    return this.n * 32 + this.table.byteLength + this.other.size * 100;
  }

  /** Give back the digests' buffer beyond what is used (a set done growing, kept for long). */
  trim(): this {
    if (this.digests.length > this.n * 32) this.digests = Buffer.from(this.digests.subarray(0, this.n * 32));
    return this;
  }

  get [Symbol.toStringTag](): string {
    return 'DigestSet';
  }

  private parse(d: string): Buffer | undefined {
    if (d.length !== 64 || !/^[0-9a-f]{64}$/.test(d)) return undefined;
    this.key.write(d, 'hex');
    return this.key;
  }

  /** The slot holding `k`, or -1 - (the empty slot where it would go). */
  private find(k: Buffer): number {
    const mask = this.table.length - 1;
    for (let i = k.readUInt32LE(0) & mask; ; i = (i + 1) & mask) {
      const t = this.table[i];
      if (t === 0) return -1 - i;
      if (this.digests.compare(k, 0, 32, (t - 1) * 32, t * 32) === 0) return i;
    }
  }

  has(d: string): boolean {
    const k = this.parse(d);
    return k ? this.find(k) >= 0 : this.other.has(d);
  }

  add(d: string): this {
    const k = this.parse(d);
    if (!k) {
      this.other.add(d);
      return this;
    }
    let s = this.find(k);
    if (s >= 0) return this;
    if ((this.n + 1) * 2 > this.table.length) {
      this.grow();
      s = this.find(k);
    }
    if ((this.n + 1) * 32 > this.digests.length) {
      const b = Buffer.allocUnsafe(Math.max(32 * 1024, this.digests.length * 2));
      this.digests.copy(b, 0, 0, this.n * 32);
      this.digests = b;
    }
    k.copy(this.digests, this.n * 32);
    this.table[-1 - s] = ++this.n;
    return this;
  }

  private grow(): void {
    const table = new Int32Array(this.table.length * 2);
    const mask = table.length - 1;
    for (let e = 0; e < this.n; e++) {
      let i = this.digests.readUInt32LE(e * 32) & mask;
      while (table[i] !== 0) i = (i + 1) & mask;
      table[i] = e + 1;
    }
    this.table = table;
  }

  *values(): SetIterator<string> {
    for (let e = 0; e < this.n; e++) yield this.digests.toString('hex', e * 32, e * 32 + 32);
    yield* this.other;
  }

  keys(): SetIterator<string> {
    return this.values();
  }

  *entries(): SetIterator<[string, string]> {
    for (const d of this.values()) yield [d, d];
  }

  [Symbol.iterator](): SetIterator<string> {
    return this.values();
  }

  forEach(f: (value: string, key: string, set: ReadonlySet<string>) => void, thisArg?: unknown): void {
    for (const d of this.values()) f.call(thisArg, d, d, this);
  }
}
