import { type ByteSource, clampRead, clampStatus, type Extent, pushExtent } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import { memoryBudget } from '../util/memory.js';
import {
  decodeLayoutPart,
  decodeLayoutV2Head,
  decodeManifest,
  isLayoutHead,
  LAYOUT_KIND,
  type LayoutHead,
  type LayoutManifest,
  type LayoutManifestHead,
  type LayoutPart,
} from './manifest.js';

/** Chunk reads one fill keeps in flight. */
const READS_IN_FLIGHT = 8;

/**
 * Where a version's chunks come from: the store, or a library service (serve/http/client.ts).
 * `diskOffset`: where on the version's disk the read wants the chunk (a deploy's errors name it).
 */
export interface BlobReader {
  withBlob<T>(digest: string, use: (plain: Uint8Array) => T, diskOffset?: number): Promise<T>;
}

/**
 * A slice of a layout's columns, as its parts hold them: chunks [firstChunk, firstChunk +
 * chunks.length) of the chunk list, and ranges in disk order (their chunk numbers layout-wide).
 */
export interface LayoutSlice {
  firstChunk: number;
  chunks: string[];
  chunkLengths: number[];
  ranges: { disk: number[]; length: number[]; chunk: number[]; at: number[] };
}

/** Ranges of a layout in disk order, each with its chunk's digest (RangedSource.placedRanges). */
export interface PlacedRanges {
  disk: number[];
  length: number[];
  at: number[];
  digest: string[];
}

/**
 * What both version sources share: reads and status over the version's ranges, which a
 * subclass lists in disk order (`ranges`) with the digest of each chunk (`chunkDigest`),
 * and a walk of the layout's columns a slice at a time (`slices`: the whole layout for
 * version 1, one part at a time for version 2) for what visits every chunk or range
 * (checkout's plan, gc, verify).
 */
export abstract class RangedSource implements ByteSource {
  abstract readonly size: number;
  abstract readonly name: string;
  /** The layout's scalars and volumes (a version 1 layout is its own head). */
  abstract readonly layout: LayoutHead;
  abstract readonly chunkCount: number;
  abstract readonly rangeCount: number;
  /** The layout's columns in order, a slice at a time (one decoded at once). */
  abstract slices(): AsyncGenerator<LayoutSlice>;

  /** Every range overlapping [offset, end), in disk order: (disk, length, chunk number, offset in chunk). */
  protected abstract ranges(
    offset: number,
    end: number,
    visit: (d: number, n: number, c: number, a: number) => void,
  ): void | Promise<void>;
  /** The digests of chunks `cs` (layout-wide numbers), in that order. */
  protected abstract chunkDigests(cs: number[]): string[] | Promise<string[]>;

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
    const cs = [...byChunk.keys()];
    const ds = await this.chunkDigests(cs);
    const todo = cs.map((c, j): [string, number[]] => [ds[j], byChunk.get(c) as number[]]);
    await copyChunks(this.store, todo, out, offset);
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

  private summed?: Promise<number>;

  /** Bytes the ranges cover (the layout walked once, then kept). */
  dataBytes(): Promise<number> {
    this.summed ??= (async () => {
      let n = 0;
      for await (const sl of this.slices()) for (const x of sl.ranges.length) n += x;
      return n;
    })();
    return this.summed;
  }

  /**
   * The layout's ranges in disk order with their chunks' digests, a slice at a time (a range
   * naming a chunk of an earlier slice, a duplicate file's, is looked up part by part).
   */
  async *placedRanges(): AsyncGenerator<PlacedRanges> {
    for await (const sl of this.slices()) {
      const { disk, length, chunk, at } = sl.ranges;
      const n = sl.chunks.length;
      const digest = new Array<string>(chunk.length);
      const others: number[] = [];
      for (let i = 0; i < chunk.length; i++) {
        const k = chunk[i] - sl.firstChunk;
        if (k >= 0 && k < n) digest[i] = sl.chunks[k];
        else others.push(i);
      }
      if (others.length > 0) {
        const ds = await this.chunkDigests(others.map((i) => chunk[i]));
        for (let j = 0; j < others.length; j++) digest[others[j]] = ds[j];
      }
      yield { disk, length, at, digest };
    }
  }

  /** Data spans in disk order, merged: [start, end) pairs (`onSlice` sees each slice first). */
  async *dataSpans(onSlice?: (s: LayoutSlice) => void): AsyncGenerator<[number, number]> {
    let cur: [number, number] | undefined;
    for await (const sl of this.slices()) {
      onSlice?.(sl);
      const { disk, length } = sl.ranges;
      for (let i = 0; i < disk.length; i++) {
        const s = disk[i];
        const e = s + length[i];
        if (cur && s <= cur[1]) cur[1] = Math.max(cur[1], e);
        else {
          if (cur) yield cur;
          cur = [s, e];
        }
      }
    }
    if (cur) yield cur;
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

  get layout(): LayoutHead {
    return this.manifest;
  }

  get chunkCount(): number {
    return this.manifest.chunks.length;
  }

  get rangeCount(): number {
    return this.disk.length;
  }

  async *slices(): AsyncGenerator<LayoutSlice> {
    const { chunks, chunkLengths, ranges } = this.manifest;
    yield { firstChunk: 0, chunks, chunkLengths, ranges };
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

  protected chunkDigests(cs: number[]): string[] {
    return cs.map((c) => this.manifest.chunks[c]);
  }

  async close(): Promise<void> {}
}

/**
 * Copy pieces of chunks into `out`: per chunk digest, [offset in chunk, length, offset in
 * out] triples; a few chunk reads in flight (not one per chunk: each holds pooled buffers).
 */
async function copyChunks(
  store: BlobReader,
  todo: Array<[string, number[]]>,
  out: Uint8Array,
  offset: number,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < todo.length) {
      const [digest, l] = todo[next++];
      await store.withBlob(
        digest,
        (c) => {
          for (let k = 0; k < l.length; k += 3) {
            if (l[k] + l[k + 1] > c.length) {
              // a layout's range that runs past its chunk (a version 2 part cannot check it alone)
              throw new StrataError(
                'CORRUPT',
                `a range reads bytes ${l[k]}-${l[k] + l[k + 1]} of chunk ${digest}, which holds ${c.length}`,
                { structure: 'layout manifest', offset: offset + l[k + 2] },
              );
            }
            out.set(c.subarray(l[k], l[k] + l[k + 1]), l[k + 2]);
          }
        },
        offset + l[2],
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, todo.length) }, worker));
}

/** Range columns of parts a PartedVersionSource keeps (24 bytes a range: ~384 KiB a part). */
const PARTS_KEPT = 8;
/**
 * Chunk lists of parts it keeps (32 bytes a chunk: 512 KiB a part, 8 MiB in all): a range
 * names chunks of earlier parts too (a duplicate file's), so more lists than range columns
 * (32 were 16 MiB of a server's ~330 MiB peak serving the 1,000,000-entry version).
 */
const CHUNK_LISTS_KEPT = 16;
/**
 * The lists kept under the present budget: CHUNK_LISTS_KEPT at the CLI's default, fewer in a
 * small one (a sixteenth of it: 8 at --memory 64M, where 16 lists were 8 of the 64 MiB the
 * block map of a 200,000-entry version stopped at).
 */
const chunkListsKept = () => Math.max(4, Math.min(CHUNK_LISTS_KEPT, Math.floor(memoryBudget() / 16 / (512 << 10))));

interface PartRanges {
  disk: Float64Array;
  length: Float64Array;
  chunk: Uint32Array;
  at: Float64Array;
}

/** A least recently used entry of `m` (moved last), or one made by `load` (the oldest past `max` dropped). */
function lru<T>(m: Map<number, Promise<T>>, i: number, max: number, load: () => Promise<T>): Promise<T> {
  let p = m.get(i);
  if (p) m.delete(i);
  else {
    p = load();
    p.catch(() => m.delete(i));
  }
  m.set(i, p);
  while (m.size > max) m.delete(m.keys().next().value as number);
  return p;
}

/**
 * A stored version whose layout manifest is in parts (version 2) as a ByteSource that loads
 * only the parts its reads touch, kept compact (typed range columns, binary chunk digests)
 * and few (PARTS_KEPT, CHUNK_LISTS_KEPT): checkout, NBD and HTTP reads, the inspection after
 * a check-in, gc and verify read a million-file version without its whole layout (~250 MB
 * decoded) in memory.
 */
export class PartedVersionSource extends RangedSource {
  readonly size: number;
  private readonly rangeParts = new Map<number, Promise<PartRanges>>();
  private readonly chunkLists = new Map<number, Promise<Buffer>>();
  /** Parts being decoded (a range read and a chunk lookup of one part share the load). */
  private readonly loading = new Map<number, Promise<LayoutPart>>();

  constructor(
    store: BlobReader,
    readonly head: LayoutManifestHead,
    private readonly loadPart: (i: number) => Promise<LayoutPart>,
    readonly name: string,
  ) {
    super(store);
    this.size = head.virtualSize;
  }

  get layout(): LayoutHead {
    return this.head;
  }

  get chunkCount(): number {
    return this.head.chunkCount;
  }

  get rangeCount(): number {
    return this.head.rangeCount;
  }

  private part(i: number): Promise<LayoutPart> {
    let p = this.loading.get(i);
    if (!p) {
      p = this.loadPart(i);
      this.loading.set(i, p);
      const done = () => this.loading.delete(i);
      p.then(done, done);
    }
    return p;
  }

  private partRanges(i: number): Promise<PartRanges> {
    return lru(this.rangeParts, i, PARTS_KEPT, async () => {
      const p = await this.part(i);
      // its chunk list too, while it is decoded (the reads of these ranges name its chunks)
      if (!this.chunkLists.has(i)) lru(this.chunkLists, i, chunkListsKept(), async () => this.digestsOf(p, i));
      const r = p.ranges;
      return {
        disk: Float64Array.from(r.disk),
        length: Float64Array.from(r.length),
        chunk: Uint32Array.from(r.chunk),
        at: Float64Array.from(r.at),
      };
    });
  }

  private chunkList(i: number): Promise<Buffer> {
    return lru(this.chunkLists, i, chunkListsKept(), async () => this.digestsOf(await this.part(i), i));
  }

  /** A part's chunk digests as 32 bytes each. */
  private digestsOf(p: LayoutPart, i: number): Buffer {
    const b = Buffer.allocUnsafe(p.chunks.length * 32);
    for (let j = 0; j < p.chunks.length; j++) {
      const d = p.chunks[j];
      if (typeof d !== 'string' || d.length !== 64 || b.write(d, j * 32, 32, 'hex') !== 32) {
        throw new StrataError('CORRUPT', `part ${i} chunk ${j} is not a sha256 digest`, {
          file: this.name,
          structure: 'strata.layout-part',
        });
      }
    }
    return b;
  }

  /** Each part's chunk list loaded once for all of `ks`. */
  protected async chunkDigests(ks: number[]): Promise<string[]> {
    const P = this.head.partEntries;
    const out = new Array<string>(ks.length);
    const byPart = new Map<number, number[]>();
    for (let j = 0; j < ks.length; j++) {
      const i = Math.floor(ks[j] / P);
      let l = byPart.get(i);
      if (!l) byPart.set(i, (l = []));
      l.push(j);
    }
    for (const [i, l] of byPart) {
      const list = await this.chunkList(i);
      for (const j of l) {
        const o = (ks[j] - i * P) * 32;
        out[j] = list.toString('hex', o, o + 32);
      }
    }
    return out;
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
      const r = await this.partRanges(i);
      for (let j = 0; j < r.disk.length && r.disk[j] < end; j++) {
        if (r.disk[j] + r.length[j] <= offset) continue;
        visit(r.disk[j], r.length[j], r.chunk[j], r.at[j]);
      }
    }
  }

  async *slices(): AsyncGenerator<LayoutSlice> {
    const P = this.head.partEntries;
    for (let i = 0; i < this.head.parts.length; i++) {
      const { chunks, chunkLengths, ranges } = await this.part(i);
      yield { firstChunk: i * P, chunks, chunkLengths, ranges };
    }
  }

  async close(): Promise<void> {
    this.rangeParts.clear();
    this.chunkLists.clear();
  }
}

/**
 * A version's layout from its blob's bytes as a source: version 1 decoded whole (a
 * VersionSource), version 2 read a part at a time (`part` fetches a part's bytes).
 */
export function layoutSource(
  store: BlobReader,
  plain: Uint8Array,
  where: string,
  name: string,
  part: (digest: string) => Promise<Uint8Array>,
): RangedSource {
  if (!isLayoutHead(plain))
    return new VersionSource(store, decodeManifest<LayoutManifest>(plain, LAYOUT_KIND, where), name);
  const head = decodeLayoutV2Head(plain, where);
  return new PartedVersionSource(
    store,
    head,
    async (i) => decodeLayoutPart(await part(head.parts[i]), head, i, `${where} part ${i} (${head.parts[i]})`),
    name,
  );
}
