export interface BufferPoolOptions {
  /**
   * Size classes: `pow2` rounds a request up to a power of two from 64 KiB (few classes,
   * for readers whose sizes vary: the store's frames and chunks); `step` rounds up to a
   * multiple of 64 KiB (a tighter fit where clients use a few fixed sizes: NBD replies).
   */
  classes?: 'pow2' | 'step';
  /** Requests below this many bytes get an exact, unpooled buffer (default 0: all pooled). */
  poolFrom?: number;
  /**
   * Total bytes kept for reuse (default: unbounded; `keepPerClass` still holds). A buffer
   * given back past it makes room by dropping the buffers kept longest unused, of any class.
   */
  maxBytes?: number;
  /**
   * Called with a buffer given back that is not kept (past the bounds): io/native.ts
   * releaseBuffer frees it now. Without it the buffer is garbage awaiting a collection, and V8
   * lets megabytes of those pile up (8 MiB decoded frames, under a whole-disk read).
   */
  release?: (b: Buffer) => void;
}

const MIN_CLASS = 65536;

/**
 * Reusable buffers by size class: the one buffer pool of Strata (the store's frames, check-in
 * windows, NBD replies). Reuse spares the allocator and the garbage collector a fresh large
 * buffer per request, which keeps CPU time and resident memory down. `take` hands out a
 * buffer of the request's class (at least the asked size; contents are garbage), `give`
 * takes back buffers of a class size and drops the rest (and anything past the bounds).
 */
export class BufferPool {
  /** Free buffers by class, each stack oldest first (take reuses the newest). */
  private readonly free = new Map<number, Array<{ b: Buffer; at: number }>>();
  private kept = 0;
  /** Gives so far: when each kept buffer came back. */
  private gives = 0;
  private readonly classes: 'pow2' | 'step';
  private readonly poolFrom: number;
  private readonly maxBytes: number;
  private readonly release?: (b: Buffer) => void;

  /**
   * @param keepPerClass buffers kept per size class
   * @param shared buffers live in SharedArrayBuffers (another thread may read them)
   */
  constructor(
    private readonly keepPerClass = 8,
    private readonly shared = false,
    opts: BufferPoolOptions = {},
  ) {
    this.classes = opts.classes ?? 'pow2';
    this.poolFrom = opts.poolFrom ?? 0;
    this.maxBytes = opts.maxBytes ?? Number.POSITIVE_INFINITY;
    this.release = opts.release;
  }

  /** The class (buffer size) a request of `n` bytes gets. */
  classOf(n: number): number {
    if (this.classes === 'step') return Math.max(MIN_CLASS, Math.ceil(n / MIN_CLASS) * MIN_CLASS);
    let c = MIN_CLASS;
    while (c < n) c *= 2;
    return c;
  }

  /** A buffer of at least `n` bytes (its contents are garbage). */
  take(n: number): Buffer {
    if (n < this.poolFrom) return this.alloc(n);
    const c = this.classOf(n);
    const f = this.free.get(c)?.pop();
    if (f) {
      this.kept -= c;
      return f.b;
    }
    return this.alloc(c);
  }

  /**
   * Give back a buffer from `take` (one that is not of a class size is left to the collector);
   * the caller holds no view on it any more (it is reused, or freed at once: see `release`).
   */
  give(b: Buffer): void {
    const c = b.length;
    if (c < this.poolFrom || c < MIN_CLASS || this.classOf(c) !== c) return;
    if (c > this.maxBytes) {
      this.release?.(b);
      return;
    }
    let l = this.free.get(c);
    if (!l) this.free.set(c, (l = []));
    if (l.length >= this.keepPerClass) {
      this.release?.(b);
      return;
    }
    // past the bound, the buffers kept longest unused go (not the one given back): a reader
    // whose 8 MiB frames came back while smaller classes sat unused had every frame dropped
    // and made anew (bench/README, dlpool)
    while (this.kept + c > this.maxBytes) {
      if (!this.dropOldest()) {
        this.release?.(b);
        return;
      }
    }
    l.push({ b, at: this.gives++ });
    this.kept += c;
  }

  /** Drop the kept buffer given back longest ago (false: none kept). */
  private dropOldest(): boolean {
    let oldest: number | undefined;
    let at = Number.POSITIVE_INFINITY;
    for (const [c, l] of this.free) {
      if (l.length > 0 && l[0].at < at) {
        at = l[0].at;
        oldest = c;
      }
    }
    if (oldest === undefined) return false;
    const dropped = this.free.get(oldest)?.shift();
    this.kept -= oldest;
    if (dropped) this.release?.(dropped.b);
    return true;
  }

  /** Drop every kept buffer (after a burst of work whose buffers would otherwise stay resident). */
  clear(): void {
    this.free.clear();
    this.kept = 0;
  }

  private alloc(n: number): Buffer {
    return this.shared ? Buffer.from(new SharedArrayBuffer(n)) : Buffer.allocUnsafe(n);
  }
}
