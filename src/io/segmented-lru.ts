/**
 * The segmented LRU of the live caches (issue 27): the disk's blocks (io/introspective-cache.ts)
 * and the library's blobs (library/blob-cache.ts) are kept the same way, by byte length:
 *
 * - `metadata`: a segment of its own, an LRU that data cannot evict;
 * - data: probation + protected. A new entry goes to probation; used again (`touch` with
 *   `promote`), it moves to protected, whose least recent entries go back to probation past
 *   its limit; past the data limit the least recent of probation goes (protected's when
 *   probation is empty). So one pass over much data cannot flush what is used again.
 *
 * A limit of 0 for `protected` makes the data segment one plain LRU. Map insertion order is
 * recency (first = least recent). `onEvict` hears of every key dropped for room.
 */
export interface SegmentedLruLimits {
  /** Bytes the metadata segment holds. */
  metadata: number;
  /** Bytes probation and protected hold together. */
  data: number;
  /** Bytes of the data that may be protected. */
  protected: number;
}

export class SegmentedLru<K> {
  private readonly meta = new Map<K, Uint8Array>();
  private readonly probation = new Map<K, Uint8Array>();
  private readonly protect = new Map<K, Uint8Array>();
  private metaBytes = 0;
  private probationBytes = 0;
  private protectBytes = 0;

  constructor(
    readonly limits: Readonly<SegmentedLruLimits>,
    private readonly onEvict?: (key: K) => void,
  ) {}

  /** The entry's bytes when held (recency unchanged). */
  get(key: K): Uint8Array | undefined {
    return this.meta.get(key) ?? this.probation.get(key) ?? this.protect.get(key);
  }

  /** Mark a held entry used: most recent in its segment; from probation, promoted when `promote`. */
  touch(key: K, promote: boolean): void {
    let v = this.meta.get(key);
    if (v) {
      this.meta.delete(key);
      this.meta.set(key, v);
      return;
    }
    v = this.protect.get(key);
    if (v) {
      this.protect.delete(key);
      this.protect.set(key, v);
      return;
    }
    v = this.probation.get(key);
    if (!v) return;
    this.probation.delete(key);
    if (promote && this.limits.protected > 0) {
      // a second use: promoted; the protected segment's least recent goes back to probation
      this.probationBytes -= v.length;
      this.protect.set(key, v);
      this.protectBytes += v.length;
      while (this.protectBytes > this.limits.protected) {
        const k = this.protect.keys().next().value as K;
        const d = this.protect.get(k)!;
        this.protect.delete(k);
        this.protectBytes -= d.length;
        this.probation.set(k, d);
        this.probationBytes += d.length;
      }
    } else this.probation.set(key, v);
  }

  /**
   * Hold a new entry (one held already is kept as it is): in the metadata segment when
   * `metadata` and it has room at all, else on probation; the least recent go past the limits
   * (the new entry itself, when the data that is protected leaves it no room).
   */
  insert(key: K, value: Uint8Array, metadata: boolean): void {
    if (this.get(key)) return;
    if (metadata && this.limits.metadata > 0) {
      this.meta.set(key, value);
      this.metaBytes += value.length;
      while (this.metaBytes > this.limits.metadata) this.metaBytes -= this.evict(this.meta);
    } else {
      this.probation.set(key, value);
      this.probationBytes += value.length;
      while (this.probationBytes + this.protectBytes > this.limits.data) {
        if (this.probation.size > 0) this.probationBytes -= this.evict(this.probation);
        else this.protectBytes -= this.evict(this.protect);
      }
    }
  }

  /** Bytes held now per segment. */
  bytes(): { metadata: number; probation: number; protected: number } {
    return { metadata: this.metaBytes, probation: this.probationBytes, protected: this.protectBytes };
  }

  clear(): void {
    this.meta.clear();
    this.probation.clear();
    this.protect.clear();
    this.metaBytes = this.probationBytes = this.protectBytes = 0;
  }

  /** Drop a segment's least recent entry: its length. */
  private evict(seg: Map<K, Uint8Array>): number {
    const k = seg.keys().next().value as K;
    const n = seg.get(k)!.length;
    seg.delete(k);
    this.onEvict?.(k);
    return n;
  }
}
