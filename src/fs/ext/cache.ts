/**
 * A bounded cache in two generations: hits in the old generation move to the new one; when
 * the new one fills, the old one is dropped whole. No per-entry deletes, so no Map tombstones
 * for iteration to skip (delete-plus-reinsert LRUs degrade badly in V8).
 */
export class GenCache<K, V> {
  private cur = new Map<K, V>();
  private old = new Map<K, V>();
  constructor(private readonly half: number) {}
  get(k: K): V | undefined {
    const v = this.cur.get(k);
    if (v !== undefined) return v;
    const o = this.old.get(k);
    if (o !== undefined) this.set(k, o);
    return o;
  }
  set(k: K, v: V): void {
    if (this.cur.size >= this.half) {
      this.old = this.cur;
      this.cur = new Map();
    }
    this.cur.set(k, v);
  }
  clear(): void {
    this.cur.clear();
    this.old.clear();
  }
}

/**
 * Inode copies are carved from shared slabs: one ArrayBuffer per 256 inodes instead of one
 * per inode (small off-heap buffers are slow to allocate and to collect).
 */
export class Slab {
  private buf = new Uint8Array(0);
  private used = 0;
  constructor(private readonly piece: number) {}
  copy(src: Uint8Array): Uint8Array {
    if (this.used + this.piece > this.buf.length) {
      this.buf = new Uint8Array(this.piece * 256);
      this.used = 0;
    }
    const out = this.buf.subarray(this.used, this.used + this.piece);
    this.used += this.piece;
    out.set(src.subarray(0, this.piece));
    return out;
  }
}
