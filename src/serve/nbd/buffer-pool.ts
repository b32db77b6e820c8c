/**
 * Reply buffers reused across requests: a reply of N bytes takes a buffer of N rounded up
 * to 64 KiB (from 64 KiB; clients use a few request sizes, so a few sizes are pooled), and
 * gives it back once the socket has sent it. Reuse spares the
 * allocator and the garbage collector a fresh large buffer per request, which keeps both
 * CPU time and resident memory down; the pool itself keeps at most `maxBytes`.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private kept = 0;

  constructor(private readonly maxBytes = 16 << 20) {}

  /** A buffer of at least `n` bytes (its contents are garbage). */
  take(n: number): Buffer {
    if (n < 65536) return Buffer.allocUnsafe(n);
    const size = Math.ceil(n / 65536) * 65536;
    const list = this.free.get(size);
    const b = list?.pop();
    if (b) {
      this.kept -= size;
      return b;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  /** Give back a buffer from `take` (small ones are left to the collector). */
  give(b: Buffer): void {
    const size = b.length;
    if (size < 65536 || size % 65536 !== 0 || this.kept + size > this.maxBytes) return;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(b);
    this.kept += size;
  }
}
