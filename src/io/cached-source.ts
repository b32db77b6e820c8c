import { type ByteSource, clampRead, type Extent } from './byte-source.js';

export interface CacheOptions {
  /** Cache block size in bytes (power of two; default 1 MiB). */
  blockSize?: number;
  /** Total bytes the cache may hold (default 64 MiB). */
  capacity?: number;
}

/**
 * A bounded LRU cache of aligned blocks in front of a slow source (HTTP, object store,
 * a compressed image). Concurrent reads of the same block share one fetch. Reads larger
 * than the cache bypass it.
 */
export class CachedSource implements ByteSource {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly capacity: number;
  private readonly blocks = new Map<number, Promise<Uint8Array>>(); // insertion order = LRU order
  hits = 0;
  misses = 0;

  constructor(
    private readonly inner: ByteSource,
    opts: CacheOptions = {},
  ) {
    this.name = inner.name;
    this.size = inner.size;
    this.blockSize = opts.blockSize ?? 1 << 20;
    if (this.blockSize <= 0 || (this.blockSize & (this.blockSize - 1)) !== 0) {
      throw new RangeError(`cache block size must be a power of two, got ${this.blockSize}`);
    }
    this.capacity = Math.max(this.blockSize, opts.capacity ?? 64 << 20);
  }

  private maxBlocks(): number {
    return Math.max(1, Math.floor(this.capacity / this.blockSize));
  }

  private block(index: number): Promise<Uint8Array> {
    const hit = this.blocks.get(index);
    if (hit) {
      this.hits++;
      this.blocks.delete(index);
      this.blocks.set(index, hit);
      return hit;
    }
    this.misses++;
    const p = this.inner.read(index * this.blockSize, this.blockSize);
    this.blocks.set(index, p);
    p.catch(() => this.blocks.delete(index));
    while (this.blocks.size > this.maxBlocks()) {
      const oldest = this.blocks.keys().next().value as number;
      this.blocks.delete(oldest);
    }
    return p;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    if (n === 0) return new Uint8Array(0);
    if (n >= this.capacity) return this.inner.read(offset, n);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + n - 1) / bs);
    if (first === last) {
      const b = await this.block(first);
      const s = offset - first * bs;
      return b.subarray(s, s + n);
    }
    const parts: Promise<Uint8Array>[] = [];
    for (let i = first; i <= last; i++) parts.push(this.block(i));
    const got = await Promise.all(parts);
    const out = new Uint8Array(n);
    let pos = 0;
    for (let i = 0; i < got.length; i++) {
      const blockStart = (first + i) * bs;
      const s = Math.max(offset, blockStart) - blockStart;
      const e = Math.min(offset + n, blockStart + bs) - blockStart;
      out.set(got[i].subarray(s, e), pos);
      pos += e - s;
    }
    return out;
  }

  status(offset: number, length: number): Promise<Extent[]> {
    if (this.inner.status) return this.inner.status(offset, length);
    const n = clampRead(this, offset, length);
    return Promise.resolve(n > 0 ? [{ offset, length: n, kind: 'data' }] : []);
  }

  close(): Promise<void> {
    this.blocks.clear();
    return this.inner.close ? this.inner.close() : Promise.resolve();
  }
}
