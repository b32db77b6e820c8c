import { createHash } from 'node:crypto';
import type { Extent } from '../io/byte-source.js';
import { asUrgent, isUrgent } from '../io/urgency.js';
import { DigestSet } from '../library/digest-set.js';
import { type BlobReader, layoutSource, type RangedSource } from '../library/version-source.js';
import { StrataError } from '../util/errors.js';
import type { ChunkCache } from './chunk-cache.js';
import type { DeploySource } from './deployer.js';
import type { VersionRef } from './request-log.js';

/**
 * Where a deploy's chunks come from: a local store, a store over HTTP, the library
 * service. `get` returns a chunk's plain bytes already checked against its digest (the
 * store checks every blob; the service's answers are checked by remoteChunks).
 */
export interface ChunkGetter {
  readonly name: string;
  get(digest: string): Promise<Uint8Array>;
  close(): Promise<void>;
}

export interface ManifestSourceOptions {
  cache?: ChunkCache;
  /** Chunk fetches from the origin in flight at once (default 8). */
  concurrency?: number;
  /** Decoded chunks kept in memory, in bytes (default 64 MiB): neighbouring reads share them. */
  memoryBytes?: number;
  /** A layout blob's plain bytes (a version 2 layout's parts, another version's layout; default: the getter's). */
  meta?(digest: string): Promise<Uint8Array>;
}

/**
 * A library version as a deploy source over any ChunkGetter: reads map to chunks through
 * the layout (read a part at a time, see layoutSource), each chunk comes from memory, the cache
 * (`--cache`) or the origin, at most `concurrency` origin fetches at once; a chunk asked
 * for twice while in flight is fetched once. `originBytes` counts what came from the
 * origin, so a warm cache shows 0.
 */
export class ManifestSource implements DeploySource {
  readonly size: number;
  originBytes = 0;
  originChunks = 0;
  /** Which library version this is (set by the source that resolved it). */
  ref?: VersionRef;
  readonly layout: RangedSource;
  private readonly inflight = new Map<string, Promise<Uint8Array>>();
  private readonly memory = new Map<string, Uint8Array>();
  private memoryUsed = 0;
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly reader: BlobReader;
  private readonly meta: (digest: string) => Promise<Uint8Array>;

  /** `layoutPlain`: the plain bytes of the version's layout manifest (`manifestDigest`). */
  constructor(
    readonly name: string,
    layoutPlain: Uint8Array,
    readonly manifestDigest: string,
    private readonly getter: ChunkGetter,
    private readonly opts: ManifestSourceOptions = {},
  ) {
    this.reader = {
      withBlob: <T>(d: string, use: (plain: Uint8Array) => T, at?: number): Promise<T> => this.chunk(d, at).then(use),
    };
    this.meta = opts.meta ?? ((d) => getter.get(d));
    this.layout = layoutSource(this.reader, layoutPlain, `manifest ${manifestDigest}`, name, this.meta);
    this.size = this.layout.size;
  }

  /** Another version's layout (the one a TARGET's state says it holds), read a part at a time. */
  async layoutOf(digest: string): Promise<RangedSource> {
    return layoutSource(
      this.reader,
      await this.meta(digest),
      `manifest ${digest}`,
      `${this.name} (layout ${digest.slice(0, 16)}…)`,
      this.meta,
    );
  }

  get cache(): ChunkCache | undefined {
    return this.opts.cache;
  }

  /** `urgent`: a guest waits for it: it passes the background fetches queued here and below. */
  readInto(offset: number, out: Uint8Array, urgent = false): Promise<number> {
    if (urgent) return asUrgent(() => this.layout.readInto(offset, out));
    return this.layout.readInto(offset, out);
  }

  status(offset: number, length: number): Promise<Extent[]> {
    return this.layout.status(offset, length);
  }

  /**
   * A chunk's plain bytes: memory, then the cache, then the origin (checked, then cached).
   * `at`: where on the disk a read wants it (an error names it).
   */
  chunk(digest: string, at?: number): Promise<Uint8Array> {
    const m = this.memory.get(digest);
    if (m) {
      this.memory.delete(digest);
      this.memory.set(digest, m);
      return Promise.resolve(m);
    }
    let p = this.inflight.get(digest);
    if (!p) {
      p = this.load(digest, at).finally(() => this.inflight.delete(digest));
      this.inflight.set(digest, p);
    }
    return p;
  }

  /** `fill`: for the cache only (a preload that found it missing): not looked up there, not kept in memory. */
  private async load(digest: string, at?: number, fill = false): Promise<Uint8Array> {
    const cached = fill ? undefined : await this.opts.cache?.get(digest);
    if (cached) return this.remember(digest, cached);
    if (!isUrgent())
      while (this.running >= (this.opts.concurrency ?? 8)) await new Promise<void>((r) => this.waiting.push(r));
    this.running++;
    let b: Uint8Array;
    try {
      b = await this.getter.get(digest);
    } catch (e) {
      throw new StrataError(
        (e as StrataError).code ?? 'IO',
        `chunk ${digest.slice(0, 16)}… (disk offset ${at ?? '?'}) from ${this.getter.name}: ${(e as Error).message}`,
        { file: this.getter.name, structure: `chunk ${digest}`, offset: at },
        { cause: e },
      );
    } finally {
      this.running--;
      this.waiting.shift()?.();
    }
    this.originBytes += b.length;
    this.originChunks++;
    await this.opts.cache?.put(digest, b);
    return fill ? b : this.remember(digest, b);
  }

  private remember(digest: string, b: Uint8Array): Uint8Array {
    const limit = this.opts.memoryBytes ?? 64 << 20;
    if (b.length > limit) return b;
    this.memory.set(digest, b);
    this.memoryUsed += b.length;
    for (const [k, v] of this.memory) {
      if (this.memoryUsed <= limit) break;
      this.memory.delete(k);
      this.memoryUsed -= v.length;
    }
    return b;
  }

  /**
   * Bytes of the version's data and those of them whose chunks the cache does not hold (what
   * a preload would fetch, give or take the bytes of a chunk other ranges share).
   */
  async cacheShortfall(): Promise<{ dataBytes: number; missingBytes: number }> {
    const cache = this.opts.cache;
    const held = new DigestSet();
    const lacking = new DigestSet();
    let dataBytes = 0;
    let missingBytes = 0;
    for await (const r of this.layout.placedRanges()) {
      for (let i = 0; i < r.disk.length; i++) {
        dataBytes += r.length[i];
        const d = r.digest[i];
        let h = held.has(d) ? true : lacking.has(d) ? false : undefined;
        if (h === undefined) {
          h = cache ? await cache.has(d) : false;
          (h ? held : lacking).add(d);
        }
        if (!h) missingBytes += r.length[i];
      }
    }
    return { dataBytes, missingBytes };
  }

  /**
   * Fetch every chunk of the version into the cache (strata preload); returns bytes fetched
   * from the origin. The chunks it finds there are marked used, and the cache is pinned
   * meanwhile (unless the caller pinned it already, for several versions): nothing this
   * preload holds is evicted for the rest of it, and a version that does not fit fails with
   * LIMIT once the cache is full of it, rather than evicting its own first chunks. Chunks go
   * straight to the cache, none is kept in memory.
   */
  async preload(onChunk?: (done: number, total: number) => void): Promise<{ chunks: number; originBytes: number }> {
    const cache = this.opts.cache;
    if (!cache) throw new StrataError('USAGE', 'preload needs a cache (--cache DIR)');
    const pinHere = !cache.pinned;
    if (pinHere) await cache.pin();
    const before = this.originBytes;
    const seen = new DigestSet();
    const total = this.layout.chunkCount;
    let done = 0;
    let failed: unknown;
    try {
      // the chunk list a part at a time, a few fetches in flight
      for await (const sl of this.layout.slices()) {
        const all = sl.chunks.filter((d) => !seen.has(d) && seen.add(d));
        let next = 0;
        const worker = async () => {
          while (next < all.length && failed === undefined) {
            const d = all[next++];
            try {
              if (!(await cache.touch(d))) await this.fill(d);
            } catch (e) {
              failed ??= e;
              return;
            }
            done++;
            onChunk?.(done, total);
          }
        };
        await Promise.all(Array.from({ length: Math.min(8, all.length) }, worker));
        if (failed !== undefined) break;
      }
    } finally {
      if (pinHere) cache.unpin();
    }
    if (failed !== undefined) {
      const e = failed as StrataError;
      if (e.code !== 'LIMIT') throw e;
      throw new StrataError(
        'LIMIT',
        `${this.name} does not fit in the chunk cache: ${done} of its ${seen.size}+ distinct chunks are there, the next would take ${cache.dir} past its bound of ${cache.maxBytes} bytes on disk (--cache-size) with nothing older left to evict`,
        { file: cache.dir },
        { cause: e },
      );
    }
    return { chunks: seen.size, originBytes: this.originBytes - before };
  }

  /** A chunk the cache lacks, from the origin into the cache (one fetch for concurrent asks). */
  private fill(digest: string): Promise<unknown> {
    if (this.memory.has(digest))
      return this.opts.cache?.put(digest, this.memory.get(digest) as Uint8Array) ?? Promise.resolve();
    let p = this.inflight.get(digest);
    if (!p) {
      p = this.load(digest, undefined, true).finally(() => this.inflight.delete(digest));
      this.inflight.set(digest, p);
    }
    return p;
  }

  async close(): Promise<void> {
    this.memory.clear();
    await this.layout.close();
    await this.getter.close();
  }
}

/** Check a chunk from somewhere we do not trust (the service, a proxy on the way) against its digest. */
export function checkChunk(digest: string, data: Uint8Array, from: string): Uint8Array {
  const got = createHash('sha256').update(data).digest('hex');
  if (got !== digest) {
    throw new StrataError('CORRUPT', `chunk bytes hash to ${got}, not ${digest} (refused, not written)`, {
      file: from,
      structure: `chunk ${digest}`,
    });
  }
  return data;
}
