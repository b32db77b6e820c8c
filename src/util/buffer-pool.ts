export interface BufferPoolOptions {
  /**
   * Size classes: `pow2` rounds a request up to a power of two from 64 KiB (few classes,
   * for readers whose sizes vary: the store's frames and chunks); `step` rounds up to a
   * multiple of 64 KiB (a tighter fit where clients use a few fixed sizes: NBD replies).
   */
  classes?: 'pow2' | 'step';
  /** Requests below this many bytes get an exact, unpooled buffer (default 0: all pooled). */
  poolFrom?: number;
  /** Total bytes kept for reuse (default: unbounded; `keepPerClass` still holds). */
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
  private readonly free = new Map<number, Buffer[]>();
  private kept = 0;
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
    const b = this.free.get(c)?.pop();
    if (b) {
      this.kept -= c;
      return b;
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
    let l = this.free.get(c);
    if (this.kept + c > this.maxBytes || (l !== undefined && l.length >= this.keepPerClass)) {
      this.release?.(b);
      return;
    }
    if (!l) this.free.set(c, (l = []));
    l.push(b);
    this.kept += c;
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
