import { type ByteSource, clampRead, clampStatus, type Extent, pushExtent } from '../io/byte-source.js';
import type { Store } from '../store/store.js';
import type { LayoutManifest, LayoutManifestHead, LayoutPart } from './manifest.js';

/** Chunk reads one fill keeps in flight. */
const READS_IN_FLIGHT = 8;

/** Where a version's chunks come from: the store, or a library service (serve/http/client.ts). */
export type BlobReader = Pick<Store, 'withBlob'>;

/**
 * What both version sources share: reads and status over the version's ranges, which a
 * subclass lists in disk order (`ranges`) with the digest of each chunk (`chunkDigest`).
 */
abstract class RangedSource implements ByteSource {
  abstract readonly size: number;
  abstract readonly name: string;

  /** Every range overlapping [offset, end), in disk order: (disk, length, chunk number, offset in chunk). */
  protected abstract ranges(
    offset: number,
    end: number,
    visit: (d: number, n: number, c: number, a: number) => void,
  ): void | Promise<void>;
  protected abstract chunkDigest(c: number): string | Promise<string>;

  constructor(protected readonly store: BlobReader) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = Buffer.allocUnsafe(clampRead(this, offset, length));
    await this.fill(offset, out);
    return out;
  }

  async readInto(offset: number, out: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, out.length);
    await this.fill(offset, out.subarray(0, n));
    return n;
  }

  /** Copy every range overlapping [offset, offset+out.length) into `out`, zeros in the gaps. */
  private async fill(offset: number, out: Uint8Array): Promise<void> {
    const end = offset + out.length;
    // ranges of one chunk are served by one decode: chunk -> [offset in chunk, length, offset in out]
    const byChunk = new Map<number, number[]>();
    let pos = offset;
    await this.ranges(offset, end, (d, n, c, a) => {
      const s = Math.max(offset, d);
      const t = Math.min(end, d + n);
      if (s > pos) out.fill(0, pos - offset, s - offset);
      pos = t;
      let l = byChunk.get(c);
      if (!l) byChunk.set(c, (l = []));
      l.push(a + (s - d), t - s, s - offset);
    });
    if (pos < end) out.fill(0, pos - offset);
    const todo: Array<[string, number[]]> = [];
    for (const [c, l] of byChunk) todo.push([await this.chunkDigest(c), l]);
    await copyChunks(this.store, todo, out);
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const end = offset + clampStatus(this, offset, length);
    const out: Extent[] = [];
    let pos = offset;
    await this.ranges(offset, end, (d, n) => {
      const s = Math.max(pos, d);
      const t = Math.min(end, d + n);
      pushExtent(out, pos, s - pos, 'zero');
      pushExtent(out, s, t - s, 'data');
      pos = t;
    });
    pushExtent(out, pos, end - pos, 'zero');
    return out;
  }

  abstract close(): Promise<void>;
}

/**
 * A stored version as a ByteSource of its virtual disk: reads fetch the chunks they need
 * from the store on demand (each checked against its digest), status() says which ranges
 * hold data. Checkout, and later the NBD server and FUSE mounts, read through this.
 */
export class VersionSource extends RangedSource {
  readonly size: number;
  private readonly disk: Float64Array;
  private readonly len: Float64Array;
  private readonly chunk: Uint32Array;
  private readonly at: Float64Array;

  constructor(
    store: BlobReader,
    readonly manifest: LayoutManifest,
    readonly name: string,
  ) {
    super(store);
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

  protected ranges(offset: number, end: number, visit: (d: number, n: number, c: number, a: number) => void): void {
    for (let i = this.first(offset); i < this.disk.length && this.disk[i] < end; i++) {
      visit(this.disk[i], this.len[i], this.chunk[i], this.at[i]);
    }
  }

  protected chunkDigest(c: number): string {
    return this.manifest.chunks[c];
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

  async close(): Promise<void> {}
}

/**
 * Copy pieces of chunks into `out`: per chunk digest, [offset in chunk, length, offset in
 * out] triples; a few chunk reads in flight (not one per chunk: each holds pooled buffers).
 */
async function copyChunks(store: BlobReader, todo: Array<[string, number[]]>, out: Uint8Array): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < todo.length) {
      const [digest, l] = todo[next++];
      await store.withBlob(digest, (c) => {
        for (let k = 0; k < l.length; k += 3) out.set(c.subarray(l[k], l[k] + l[k + 1]), l[k + 2]);
      });
    }
  };
  await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, todo.length) }, worker));
}

/** Decoded parts a PartedVersionSource keeps (each LAYOUT_PART_ENTRIES chunks and ranges: ~2-3 MB). */
const PARTS_KEPT = 8;

/**
 * A stored version whose layout manifest is in parts (version 2) as a ByteSource that loads
 * only the parts its reads touch (the last PARTS_KEPT kept): what the inspection after a
 * check-in reads (a partition table, a superblock, /etc) without the whole layout of a
 * million-file version in memory.
 */
export class PartedVersionSource extends RangedSource {
  readonly size: number;
  private readonly kept = new Map<number, Promise<LayoutPart>>();

  constructor(
    store: BlobReader,
    readonly head: LayoutManifestHead,
    private readonly loadPart: (i: number) => Promise<LayoutPart>,
    readonly name: string,
  ) {
    super(store);
    this.size = head.virtualSize;
  }

  private part(i: number): Promise<LayoutPart> {
    let p = this.kept.get(i);
    if (p) this.kept.delete(i);
    else p = this.loadPart(i);
    this.kept.set(i, p);
    p.catch(() => this.kept.delete(i));
    while (this.kept.size > PARTS_KEPT) this.kept.delete(this.kept.keys().next().value as number);
    return p;
  }

  protected async chunkDigest(k: number): Promise<string> {
    const P = this.head.partEntries;
    return (await this.part(Math.floor(k / P))).chunks[k % P];
  }

  protected async ranges(offset: number, end: number, visit: (d: number, n: number, c: number, a: number) => void) {
    const { partDisk, partEntries: P, rangeCount } = this.head;
    // the last part starting at or before offset (the ranges before it end before its first)
    let lo = 0;
    let hi = partDisk.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (partDisk[mid] <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = Math.max(0, lo - 1); i < partDisk.length && i * P < rangeCount && partDisk[i] < end; i++) {
      const r = (await this.part(i)).ranges;
      for (let j = 0; j < r.disk.length && r.disk[j] < end; j++) {
        if (r.disk[j] + r.length[j] <= offset) continue;
        visit(r.disk[j], r.length[j], r.chunk[j], r.at[j]);
      }
    }
  }

  async close(): Promise<void> {
    this.kept.clear();
  }
}
