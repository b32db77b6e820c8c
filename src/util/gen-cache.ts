/**
 * A bounded cache in two generations: hits in the old generation move to the new one; when
 * the new one fills, the old one is dropped whole. No per-entry deletes, so no Map tombstones
 * for iteration to skip (delete-plus-reinsert LRUs degrade badly in V8). For many small
 * entries looked up very often (a file system's inodes and block maps); PromiseLru is the
 * one for loads that are shared while in flight and bounded by cost.
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
