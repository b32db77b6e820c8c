import { PromiseLru } from '../util/promise-lru.js';
import type { ByteSource } from './byte-source.js';
import { FilterSource, type Unwrapped } from './filter-source.js';

export interface CacheOptions {
  /** Cache block size in bytes (power of two; default 1 MiB). */
  blockSize?: number;
  /** Total bytes the cache may hold (default 64 MiB). */
  capacity?: number;
  /**
   * Reads of at least this many bytes go straight to the source (default: the capacity).
   * Sequential bulk readers (copies, extracts) gain nothing from the cache and would only
   * push out what small random readers share.
   */
  directFrom?: number;
}

/**
 * A bounded LRU cache of aligned blocks in front of a slow source (HTTP, object store,
 * a compressed image). Concurrent reads of the same block share one fetch. Reads larger
 * than `directFrom` bypass it. Status is the source's, unclamped by the read limit; the
 * source's `fd` shows through (a cache keeps offsets), and closing the cache closes the source.
 */
export class CachedSource extends FilterSource {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly capacity: number;
  private readonly directFrom: number;
  private readonly blocks: PromiseLru<Uint8Array>;

  constructor(
    private readonly inner: ByteSource,
    opts: CacheOptions = {},
  ) {
    super();
    this.name = inner.name;
    this.size = inner.size;
    this.blockSize = opts.blockSize ?? 1 << 20;
    if (this.blockSize <= 0 || (this.blockSize & (this.blockSize - 1)) !== 0) {
      throw new RangeError(`cache block size must be a power of two, got ${this.blockSize}`);
    }
    this.capacity = Math.max(this.blockSize, opts.capacity ?? 64 << 20);
    this.directFrom = Math.min(this.capacity, opts.directFrom ?? this.capacity);
    const blocks = Math.max(1, Math.floor(this.capacity / this.blockSize));
    this.blocks = new PromiseLru(blocks * this.blockSize);
  }

  /** Block reads served from the cache, and blocks fetched. */
  get hits(): number {
    return this.blocks.hits;
  }
  get misses(): number {
    return this.blocks.misses;
  }

  unwrap(): Unwrapped {
    return { source: this.inner, offset: 0 };
  }

  private block(index: number): Promise<Uint8Array> {
    return this.blocks.get(index, this.blockSize, () => this.inner.read(index * this.blockSize, this.blockSize));
  }

  protected override async readRange(offset: number, n: number): Promise<Uint8Array> {
    if (n >= this.directFrom) return super.readRange(offset, n);
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
    this.gather(got, first, offset, out);
    return out;
  }

  protected override async readIntoRange(offset: number, out: Uint8Array): Promise<void> {
    if (out.length >= this.directFrom) return super.readIntoRange(offset, out);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + out.length - 1) / bs);
    const parts: Promise<Uint8Array>[] = [];
    for (let i = first; i <= last; i++) parts.push(this.block(i));
    this.gather(await Promise.all(parts), first, offset, out);
  }

  /** Copy [offset, offset+out.length) out of the blocks `got` (block `first` onwards). */
  private gather(got: Uint8Array[], first: number, offset: number, out: Uint8Array): void {
    const bs = this.blockSize;
    const end = offset + out.length;
    let pos = 0;
    for (let i = 0; i < got.length; i++) {
      const blockStart = (first + i) * bs;
      const s = Math.max(offset, blockStart) - blockStart;
      const e = Math.min(end, blockStart + bs) - blockStart;
      out.set(got[i].subarray(s, e), pos);
      pos += e - s;
    }
  }

  override async close(): Promise<void> {
    this.blocks.clear();
    await this.inner.close?.();
  }
}
