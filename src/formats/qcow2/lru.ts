/**
 * A small LRU of promises keyed by number, bounded by a total cost. Concurrent readers
 * asking for the same key share one load; a failed load is forgotten so it is retried
 * (and fails again, cleanly) rather than cached.
 */
export class PromiseLru<V> {
  private readonly map = new Map<number, { p: Promise<V>; cost: number }>();
  private total = 0;

  constructor(private readonly maxCost: number) {}

  get(key: number, cost: number, load: () => Promise<V>): Promise<V> {
    const hit = this.map.get(key);
    if (hit) {
      this.map.delete(key);
      this.map.set(key, hit);
      return hit.p;
    }
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
