import { type ByteSource, clampRead, clampStatus, type Extent, pushExtent } from '../io/byte-source.js';
import type { Store } from '../store/store.js';
import type { LayoutManifest } from './manifest.js';

/** Decoded chunks kept for reuse (bytes): consecutive ranges usually share a chunk. */
const CACHE_BYTES = 64 * 1024 * 1024;

/**
 * A stored version as a ByteSource of its virtual disk: reads fetch the chunks they need
 * from the store on demand (each checked against its digest), status() says which ranges
 * hold data. Checkout, and later the NBD server and FUSE mounts, read through this.
 */
export class VersionSource implements ByteSource {
  readonly size: number;
  private readonly disk: Float64Array;
  private readonly len: Float64Array;
  private readonly chunk: Uint32Array;
  private readonly at: Float64Array;
  private readonly cache = new Map<number, Promise<Uint8Array>>();
  private cached = 0;

  constructor(
    private readonly store: Store,
    readonly manifest: LayoutManifest,
    readonly name: string,
  ) {
    this.size = manifest.virtualSize;
    const r = manifest.ranges;
    this.disk = Float64Array.from(r.disk);
    this.len = Float64Array.from(r.length);
    this.chunk = Uint32Array.from(r.chunk);
    this.at = Float64Array.from(r.at);
  }

  get rangeCount(): number {
    return this.disk.length;
  }

  /** Index of the first range that ends after `offset`. */
  private first(offset: number): number {
    let lo = 0;
    let hi = this.disk.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.disk[mid] + this.len[mid] <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private getChunk(i: number): Promise<Uint8Array> {
    let p = this.cache.get(i);
    if (p) {
      this.cache.delete(i);
      this.cache.set(i, p);
      return p;
    }
    p = this.store.get(this.manifest.chunks[i]);
    this.cache.set(i, p);
    this.cached += this.manifest.chunkLengths[i];
    p.catch(() => this.cache.delete(i));
    while (this.cached > CACHE_BYTES && this.cache.size > 1) {
      const oldest = this.cache.keys().next().value as number;
      this.cache.delete(oldest);
      this.cached -= this.manifest.chunkLengths[oldest];
    }
    return p;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    const out = new Uint8Array(n);
    await this.fill(offset, out);
    return out;
  }

  async readInto(offset: number, out: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, out.length);
    const view = out.subarray(0, n);
    view.fill(0);
    await this.fill(offset, view, true);
    return n;
  }

  /** Copy every range overlapping [offset, offset+out.length) into `out` (zeros elsewhere). */
  private async fill(offset: number, out: Uint8Array, zeroed = true): Promise<void> {
    if (!zeroed) out.fill(0);
    const end = offset + out.length;
    const jobs: Array<Promise<void>> = [];
    for (let i = this.first(offset); i < this.disk.length && this.disk[i] < end; i++) {
      const d = this.disk[i];
      const s = Math.max(offset, d);
      const t = Math.min(end, d + this.len[i]);
      const from = this.at[i] + (s - d);
      const idx = this.chunk[i];
      jobs.push(
        this.getChunk(idx).then((c) => {
          out.set(c.subarray(from, from + (t - s)), s - offset);
        }),
      );
    }
    await Promise.all(jobs);
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    const end = offset + n;
    const out: Extent[] = [];
    let pos = offset;
    for (let i = this.first(offset); i < this.disk.length && this.disk[i] < end; i++) {
      const s = Math.max(pos, this.disk[i]);
      const t = Math.min(end, this.disk[i] + this.len[i]);
      pushExtent(out, pos, s - pos, 'zero');
      pushExtent(out, s, t - s, 'data');
      pos = t;
    }
    pushExtent(out, pos, end - pos, 'zero');
    return out;
  }

  /** Data spans in disk order, merged: [start, end) pairs. */
  *dataSpans(): Generator<[number, number]> {
    let cur: [number, number] | undefined;
    for (let i = 0; i < this.disk.length; i++) {
      const s = this.disk[i];
      const e = s + this.len[i];
      if (cur && s <= cur[1]) cur[1] = Math.max(cur[1], e);
      else {
        if (cur) yield cur;
        cur = [s, e];
      }
    }
    if (cur) yield cur;
  }

  async close(): Promise<void> {
    this.cache.clear();
    this.cached = 0;
  }
}
