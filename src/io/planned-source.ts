import type { BufferPool } from '../util/buffer-pool.js';
import { type ByteSource, readIntoOrCopy } from './byte-source.js';
import { FilterSource, type Unwrapped } from './filter-source.js';

/**
 * Reads of a source whose caller knows in advance which ranges it will want (check-in:
 * every file extent and metadata window, in disk order). The known ranges are merged into
 * runs (gaps up to `gap` bytes are read through) and a request inside a run is served from
 * one large read of up to `window` bytes of that run, shared by every request that falls in
 * it, instead of one small read each: an image made by `mkfs -d` holds its files nearly
 * back to back, so thousands of 4-64 KiB reads (each a threadpool hop or io_uring call,
 * plus a buffer) become a few hundred large ones into reused buffers.
 *
 * Requests outside the plan, or as large as a window, go straight to the source. A few
 * windows are kept (least recently used goes first), each pinned while a request waits
 * for it, so requests that arrive a little out of order (concurrent files) still hit.
 *
 * A filter (see FilterSource): `read` and `readInto` go through the windows, `status` and
 * `fd` are the source's; closing it leaves the source open (the caller's image).
 *
 * With a `pool` the windows are taken from it and given back on `close` (a check-in makes a
 * planned source per batch of files: their fresh windows, 2 MiB each, were ~65% of the
 * buffers a check-in made and dropped, garbage until V8's next full collection).
 */
export class PlannedSource extends FilterSource {
  readonly name: string;
  readonly size: number;
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  private readonly cache = new Map<number, Win>();
  private readonly spare: Buffer[] = [];
  /** Closed: windows done with go back to the pool. */
  private closed = false;
  /** Large reads made, and requests served from them (for tests and benchmarks). */
  windowReads = 0;
  served = 0;

  constructor(
    private readonly src: ByteSource,
    spans: ReadonlyArray<readonly [number, number]>,
    private readonly window = 4 * 1024 * 1024,
    gap = 64 * 1024,
    private readonly keep = 4,
    private readonly pool?: BufferPool,
  ) {
    super();
    this.name = src.name;
    this.size = src.size;
    const sorted = spans.filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
    for (const [s, e] of sorted) {
      const last = this.ends.length - 1;
      if (last >= 0 && s <= this.ends[last] + gap) this.ends[last] = Math.max(this.ends[last], e);
      else {
        this.starts.push(s);
        this.ends.push(e);
      }
    }
  }

  unwrap(): Unwrapped {
    return { source: this.src, offset: 0 };
  }

  /** Fill `out` with the source's bytes at `offset`, zeros past its end; returns the bytes inside it. */
  override async readInto(offset: number, out: Uint8Array): Promise<number> {
    const n = await super.readInto(offset, out);
    if (n < out.length) out.fill(0, n);
    return n;
  }

  protected override async readRange(offset: number, n: number): Promise<Uint8Array> {
    const out = Buffer.allocUnsafe(n);
    await this.readIntoRange(offset, out);
    return out;
  }

  /** Fill `out` with the source's bytes at `offset`. */
  protected override async readIntoRange(offset: number, out: Uint8Array): Promise<void> {
    const end = offset + out.length;
    const r = this.runOf(offset);
    if (out.length >= this.window / 2 || r < 0 || end > this.ends[r]) return this.direct(offset, out);
    // windows are aligned to the window size inside the run, so every request maps to one key
    const runStart = this.starts[r];
    const wStart = runStart + Math.floor((offset - runStart) / this.window) * this.window;
    const wEnd = Math.min(this.ends[r], wStart + this.window, this.src.size);
    if (end > wEnd) return this.direct(offset, out); // crosses two windows
    let w = this.cache.get(wStart);
    if (w) this.cache.delete(wStart);
    else {
      const buf = this.spare.pop() ?? this.pool?.take(this.window) ?? Buffer.allocUnsafe(this.window);
      const nw: Win = { buf, pins: 0, end: wEnd, ready: Promise.resolve() };
      nw.ready = this.fill(wStart, buf.subarray(0, wEnd - wStart));
      this.windowReads++;
      w = nw;
    }
    this.cache.set(wStart, w);
    w.pins++;
    this.evict();
    try {
      await w.ready;
      out.set(w.buf.subarray(offset - wStart, end - wStart));
      this.served++;
    } finally {
      w.pins--;
      if (w.pins === 0 && this.cache.get(wStart) !== w && !w.freed) {
        w.freed = true;
        this.putSpare(w.buf);
      }
    }
  }

  private evict(): void {
    for (const [k, w] of this.cache) {
      if (this.cache.size <= this.keep) break;
      this.cache.delete(k);
      if (w.pins === 0 && !w.freed) {
        w.freed = true;
        w.ready.then(
          () => this.putSpare(w.buf),
          () => {},
        );
      }
    }
  }

  /** A window nobody reads any more: kept for the next one, or the pool's once closed. */
  private putSpare(b: Buffer): void {
    if (this.closed && this.pool) this.pool.give(b);
    else this.spare.push(b);
  }

  /**
   * Give the windows back to the pool (one still being read goes back when its read ends);
   * the source stays readable (new windows come from the pool again) but keeps none.
   */
  override async close(): Promise<void> {
    this.closed = true;
    if (!this.pool) return;
    for (const b of this.spare.splice(0)) this.pool.give(b);
    for (const [k, w] of this.cache) {
      if (w.pins > 0 || w.freed) continue;
      this.cache.delete(k);
      w.freed = true;
      w.ready.then(
        () => this.putSpare(w.buf),
        () => {},
      );
    }
  }

  private runOf(offset: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid] <= offset) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found >= 0 && offset < this.ends[found] ? found : -1;
  }

  private async fill(offset: number, out: Uint8Array): Promise<void> {
    const n = await readIntoOrCopy(this.src, offset, out);
    if (n < out.length) out.fill(0, n);
  }

  private async direct(offset: number, out: Uint8Array): Promise<void> {
    await this.fill(offset, out);
  }
}

interface Win {
  buf: Buffer;
  pins: number;
  end: number;
  ready: Promise<void>;
  freed?: boolean;
}
