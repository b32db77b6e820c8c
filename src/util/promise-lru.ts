/**
 * An LRU of promises keyed by number, bounded by a total cost: the one cache of loaded
 * things in Strata (qcow2 L2 tables and compressed clusters, CachedSource's blocks).
 * Concurrent readers asking for the same key share one load; a failed load is forgotten
 * so it is retried (and fails again, cleanly) rather than cached. The entry just added is
 * never evicted by its own insertion, so one entry costlier than the bound still works.
 */
export class PromiseLru<V> {
  private readonly map = new Map<number, { p: Promise<V>; cost: number }>();
  private total = 0;
  /** Lookups served from the cache, and loads started (for tests and benchmarks). */
  hits = 0;
  misses = 0;

  constructor(private readonly maxCost: number) {}

  /** Entries held (loaded or loading). */
  get size(): number {
    return this.map.size;
  }

  get(key: number, cost: number, load: () => Promise<V>): Promise<V> {
    const hit = this.map.get(key);
    if (hit) {
      this.hits++;
      this.map.delete(key);
      this.map.set(key, hit);
      return hit.p;
    }
    this.misses++;
    const p = load();
    const entry = { p, cost };
    this.map.set(key, entry);
    this.total += cost;
    p.catch(() => {
      if (this.map.get(key) === entry) {
        this.map.delete(key);
        this.total -= cost;
      }
    });
    while (this.total > this.maxCost && this.map.size > 1) {
      const [k, v] = this.map.entries().next().value as [number, { p: Promise<V>; cost: number }];
      this.map.delete(k);
      this.total -= v.cost;
    }
    return p;
  }

  /** The cached promise for `key`, if any (refreshes its place). */
  peek(key: number): Promise<V> | undefined {
    const hit = this.map.get(key);
    if (!hit) return undefined;
    this.map.delete(key);
    this.map.set(key, hit);
    return hit.p;
  }

  clear(): void {
    this.map.clear();
    this.total = 0;
  }
}
