import { AsyncLocalStorage } from 'node:async_hooks';
import { StrataError } from '../util/errors.js';
import type { ByteSource } from './byte-source.js';
import {
  fillHitRates,
  type LiveCacheStats,
  newClassStats,
  newPrefetcherCounters,
  type PrefetcherCounters,
} from './cache-stats.js';
import { FilterSource, type Unwrapped } from './filter-source.js';
import { PrefetchQueue } from './prefetch-queue.js';
import { SegmentedLru } from './segmented-lru.js';

/**
 * Issue 27: a live cache in front of a slow source that knows what each request hits.
 *
 * The mechanism lives here (io); what a request *means* comes from a pluggable
 * {@link CacheIntrospector} built higher up (blockmap/introspector.ts builds one from a
 * block map: io cannot know file systems). Three policies share the mechanism:
 *
 * - `lru`: one LRU of blocks; a miss fetches the blocks read (what `strata nbd` had).
 * - `readahead`: the same, and a miss (or the first use of a read-ahead block) also fetches
 *   the next `readahead` bytes of the disk in the background (what a block server does).
 * - `introspective`: every request classified once through the introspector. Metadata
 *   blocks live in a protected segment (`metaShare` of the cache, which data cannot evict);
 *   data blocks in a segmented LRU (probation + protected: a block used twice is promoted,
 *   so one sequential pass cannot flush what is used again). A miss, or the first use of a
 *   prefetched block, asks the introspector's prefetchers for what comes next by meaning.
 *
 * Prefetches run in the background: the request that triggered them is answered without
 * waiting. Each prefetcher is bounded (bytes per request `perRequest`, bytes queued or in
 * flight `inFlight`; a plan over the bound is cut, one that finds the bound full is dropped)
 * and all share `concurrency` source reads at a time. Demand reads never queue behind them.
 */
export type LiveCachePolicy = 'lru' | 'readahead' | 'introspective';
export const LIVE_CACHE_POLICIES: readonly LiveCachePolicy[] = ['lru', 'readahead', 'introspective'];

/** What a request (or a block) is, by the map: its class, its kind, and a handle for owner(). */
export interface Classified {
  class: 'data' | 'metadata' | 'unused';
  kind: string;
  /** Opaque to the cache (the introspector's record index, say). */
  ref: number;
}

/** A byte range of the source. */
export interface ByteRun {
  offset: number;
  length: number;
}

/** What the cache asks of whoever knows the disk's layout. */
export interface CacheIntrospector {
  /** Classify a request by the owner of its first byte. */
  classify(offset: number, length: number): Classified;
  /** Whether a cache block belongs in the protected metadata segment. */
  isMetadata(offset: number, length: number): boolean;
  /** The owner of a classified request, for trace records (a JSON-able object). */
  owner(offset: number, length: number, c: Classified): unknown;
  /** Names of the prefetchers it offers, in the order plans come back. */
  readonly prefetchers: readonly string[];
  /**
   * What to fetch next after this request, per enabled prefetcher, each plan in priority
   * order and already within `cap` bytes (the cache cuts again past cached blocks).
   */
  plan(
    offset: number,
    length: number,
    c: Classified,
    enabled: ReadonlySet<string>,
    cap: (prefetcher: string) => number,
  ): Array<{ prefetcher: string; runs: ByteRun[] }>;
}

export interface PrefetchBound {
  /** Bytes one request may make this prefetcher fetch. */
  perRequest: number;
  /** Bytes of this prefetcher queued or being fetched at once. */
  inFlight: number;
}

export interface IntrospectiveCacheOptions {
  policy?: LiveCachePolicy;
  /** Cache block in bytes (power of two, at least 512; default 4096). */
  blockSize?: number;
  /** Bytes the cache holds (default 64 MiB). */
  capacity?: number;
  /** introspective: share of the capacity kept for metadata (default 0.25). */
  metaShare?: number;
  /** Needed for `introspective`. */
  introspector?: CacheIntrospector;
  /** introspective: the prefetchers on (default all the introspector offers). */
  prefetch?: readonly string[];
  /** Bounds per prefetcher (by name; `readahead` for the readahead policy). */
  bounds?: Record<string, Partial<PrefetchBound>>;
  /** readahead: bytes fetched past a miss (default 128 KiB, Linux's read_ahead_kb). */
  readahead?: number;
  /** Source reads prefetches may have running at once (default 4). */
  concurrency?: number;
  /** Reads of at least this many bytes go straight to the source, uncounted by class (default 8 MiB). */
  directFrom?: number;
  /** Longest single source read a fetch is cut into (default 1 MiB). */
  maxRun?: number;
  /**
   * introspective: blocks of a plan at most this many bytes apart are read in one source
   * read, the blocks between included (counted against the prefetcher's bound): on a slow
   * link a round trip costs more than the bytes (default 64 KiB; 0: only adjacent blocks).
   */
  coalesceGap?: number;
  /**
   * introspective: a demand read that misses carries the prefetch queued right after it (within
   * `coalesceGap`) in the same source read, up to `maxRun` bytes, instead of a second round
   * trip (default true; false: the request never waits for a prefetched byte).
   */
  mergeDemand?: boolean;
  /** introspective: how much a streaming prefetcher's window grows while a reader consumes it (default 8). */
  growth?: number;
}

/** Default bounds: the simulator's budgets (src/analytics/cache-sim.ts), in flight four times that. */
export const DEFAULT_PREFETCH_BOUNDS: Readonly<Record<string, PrefetchBound>> = {
  readahead: { perRequest: 128 << 10, inFlight: 1 << 20 },
  file: { perRequest: 1 << 20, inFlight: 8 << 20 },
  disk: { perRequest: 128 << 10, inFlight: 1 << 20 },
  dir: { perRequest: 1 << 20, inFlight: 4 << 20 },
  meta: { perRequest: 256 << 10, inFlight: 1 << 20 },
  siblings: { perRequest: 256 << 10, inFlight: 1 << 20 },
};

/** How a request was served: every block cached and used before; some block there by a prefetch; a fetch waited for. */
export type CacheOutcome = 'hit' | 'prefetched' | 'miss';

/**
 * Per-request notes a server reads back for its trace: the cache fills them in when the
 * read runs inside `requestNotes.run(note, ...)` (see serve/nbd/connection.ts).
 */
export interface RequestNote {
  class?: string;
  kind?: string;
  owner?: unknown;
  cache?: CacheOutcome;
}
export const requestNotes = new AsyncLocalStorage<RequestNote>();

interface PrefetcherStats extends PrefetcherCounters {
  /** Bytes cut by the per-request cap. */
  cutBytes: number;
}

export interface IntrospectiveCacheStats extends LiveCacheStats<PrefetcherStats> {
  policy: LiveCachePolicy;
  blockSize: number;
  /** Reads of `directFrom` bytes or more, sent straight to the source. */
  direct: number;
}

interface Job {
  prefetcher: string;
  /** First block and blocks (a span: the plan's blocks and the gaps between them). */
  offset: number;
  length: number;
}

/** Blocks [from, to) of a source read that a prefetcher asked for (the rest is the demand's). */
interface Tag {
  from: number;
  to: number;
  by: string;
}

/** Prefetchers that follow a reader (a window ahead of it): refilled at half, grown while consumed. */
const STREAMS = new Set(['file', 'disk']);

/** A bounded, segmented cache of aligned blocks with classification and background prefetch (see above). */
export class IntrospectiveCache extends FilterSource {
  readonly name: string;
  readonly size: number;
  readonly policy: LiveCachePolicy;
  readonly blockSize: number;
  readonly capacity: number;
  private readonly introspector?: CacheIntrospector;
  private readonly enabled: ReadonlySet<string>;
  private readonly bounds: Record<string, PrefetchBound>;
  private readonly readahead: number;
  private readonly directFrom: number;
  private readonly maxRun: number;
  private readonly gapBlocks: number;
  private readonly mergeDemand: boolean;
  private readonly growth: number;
  /** The blocks held, by index: metadata apart, data as probation + protected (limits in bytes). */
  private readonly blocks: SegmentedLru<number>;
  private readonly metaCap: number;
  /** Blocks being fetched: by demand or by a prefetcher (named). */
  private readonly inflight = new Map<number, { p: Promise<void>; by?: string }>();
  /** Blocks a prefetcher brought in that no request has used yet, and by whom. */
  private readonly fresh = new Map<number, string>();
  /** Prefetch jobs, queued and running. */
  private readonly prefetches: PrefetchQueue<Job>;
  /** Blocks of queued jobs (not yet fetching): a later plan does not queue them twice. */
  private readonly queuedBlocks = new Set<number>();
  private readonly queued = new Map<string, number>();
  private readonly stats: IntrospectiveCacheStats;

  constructor(
    private readonly inner: ByteSource,
    opts: IntrospectiveCacheOptions = {},
  ) {
    super();
    this.name = inner.name;
    this.size = inner.size;
    this.policy = opts.policy ?? 'lru';
    const bs = opts.blockSize ?? 4096;
    if (!(bs >= 512) || (bs & (bs - 1)) !== 0) {
      throw new StrataError('USAGE', `cache block size must be a power of two of at least 512, got ${bs}`);
    }
    this.blockSize = bs;
    const blocks = Math.max(2, Math.floor((opts.capacity ?? 64 << 20) / bs));
    this.capacity = blocks * bs;
    if (this.policy === 'introspective') {
      if (!opts.introspector) throw new StrataError('USAGE', 'the introspective cache policy needs a block map');
      this.introspector = opts.introspector;
      const share = opts.metaShare ?? 0.25;
      if (!(share >= 0 && share < 1)) throw new StrataError('USAGE', `metadata share ${share} is not in [0, 1)`);
      this.metaCap = Math.floor(blocks * share);
    } else this.metaCap = 0;
    const dataCap = Math.max(1, blocks - this.metaCap);
    const protectCap = this.policy === 'introspective' ? Math.floor(dataCap * 0.8) : 0;
    this.blocks = new SegmentedLru<number>(
      { metadata: this.metaCap * bs, data: dataCap * bs, protected: protectCap * bs },
      (b) => this.fresh.delete(b),
    );
    const offered = this.policy === 'introspective' ? this.introspector!.prefetchers : [];
    const want = opts.prefetch ?? offered;
    for (const p of want) {
      if (!offered.includes(p)) {
        throw new StrataError(
          'USAGE',
          `no prefetcher '${p}' for the ${this.policy} policy${offered.length ? ` (${offered.join(', ')})` : ''}`,
        );
      }
    }
    this.enabled = new Set(want);
    this.bounds = {};
    for (const p of [...offered, 'readahead']) {
      this.bounds[p] = {
        ...(DEFAULT_PREFETCH_BOUNDS[p] ?? { perRequest: 256 << 10, inFlight: 1 << 20 }),
        ...opts.bounds?.[p],
      };
    }
    this.readahead = opts.readahead ?? this.bounds.readahead.perRequest;
    this.prefetches = new PrefetchQueue<Job>(
      Math.max(1, opts.concurrency ?? 4),
      (job) => this.startJob(job),
      (job) => {
        this.stats.prefetchers[job.prefetcher].errors++;
      },
      (job) => this.release(job),
    );
    this.directFrom = opts.directFrom ?? 8 << 20;
    this.maxRun = Math.max(bs, opts.maxRun ?? 1 << 20);
    this.gapBlocks = Math.max(0, Math.floor((opts.coalesceGap ?? 64 << 10) / bs));
    this.mergeDemand = opts.mergeDemand ?? true;
    this.growth = Math.max(1, opts.growth ?? 8);
    const pfs: Record<string, PrefetcherStats> = {};
    const names = this.policy === 'readahead' ? ['readahead'] : [...this.enabled];
    for (const p of names) pfs[p] = { ...newPrefetcherCounters(), cutBytes: 0 };
    this.stats = {
      policy: this.policy,
      blockSize: bs,
      capacity: this.capacity,
      prefetch: names,
      requests: 0,
      direct: 0,
      byClass: { data: newClassStats(), metadata: newClassStats(), unused: newClassStats(), unknown: newClassStats() },
      source: { reads: 0, bytes: 0, demandReads: 0, demandBytes: 0 },
      waited: { requests: 0, ms: 0 },
      prefetchers: pfs,
      segments: { metadata: 0, probation: 0, protected: 0 },
    };
  }

  unwrap(): Unwrapped {
    return { source: this.inner, offset: 0 };
  }

  /** Counters so far (a copy), with hit rates: (hits + prefetched) / requests per class. */
  snapshot(): IntrospectiveCacheStats {
    const s = structuredClone(this.stats);
    fillHitRates(s.byClass);
    s.segments = this.blocks.bytes();
    return s;
  }

  /** Resolves when no prefetch is queued or running (for tests and benchmarks). */
  idle(): Promise<void> {
    return this.prefetches.idle();
  }

  private insert(b: number, data: Uint8Array, by?: string): void {
    if (this.blocks.get(b)) return;
    const off = b * this.blockSize;
    const meta = this.metaCap > 0 && this.introspector!.isMetadata(off, Math.min(this.blockSize, this.size - off));
    this.blocks.insert(b, data, meta);
    if (by) this.fresh.set(b, by);
  }

  /** Read [offset, offset+length) from the source and cache its blocks (block-aligned, inside the source). */
  private fetchRun(first: number, count: number, by?: string, tags: readonly Tag[] = []): Promise<void> {
    const bs = this.blockSize;
    const offset = first * bs;
    const length = Math.min(count * bs, this.size - offset);
    this.stats.source.reads++;
    this.stats.source.bytes += length;
    const byOf = (b: number): string | undefined => {
      for (const t of tags) if (b >= t.from && b < t.to) return t.by;
      return by;
    };
    let tagged = 0;
    for (const t of tags) {
      const n = Math.max(0, Math.min(t.to * bs, offset + length) - Math.max(t.from * bs, offset));
      const s = this.stats.prefetchers[t.by];
      if (s) s.fetchedBytes += n;
      tagged += n;
    }
    if (!by) {
      this.stats.source.demandReads++;
      this.stats.source.demandBytes += length - tagged;
    } else {
      const s = this.stats.prefetchers[by];
      s.fetches++;
      s.fetchedBytes += length - tagged;
    }
    const p = this.inner.read(offset, length).then(
      (buf) => {
        if (buf.length < length) {
          throw new StrataError('IO', `short read: ${buf.length} of ${length} bytes at ${offset}`, { file: this.name });
        }
        for (let i = 0; i < count; i++) {
          const b = first + i;
          if (this.inflight.get(b)?.p === p) this.inflight.delete(b);
          if (this.prefetches.closed) continue;
          const s = i * bs;
          const e = Math.min(length, s + bs);
          const block = new Uint8Array(bs);
          block.set(buf.subarray(s, e));
          this.insert(b, block, byOf(b));
        }
      },
      (err) => {
        for (let i = 0; i < count; i++) if (this.inflight.get(first + i)?.p === p) this.inflight.delete(first + i);
        throw err;
      },
    );
    for (let i = 0; i < count; i++) this.inflight.set(first + i, { p, by: byOf(first + i) });
    return p;
  }

  /** Fetch the blocks in [first, last] neither cached nor in flight, as runs; wait for all. */
  private async demand(
    first: number,
    last: number,
  ): Promise<{ fetched: boolean; prefetched: boolean; waited: boolean }> {
    const waits: Promise<void>[] = [];
    let fetched = false;
    let prefetched = false;
    let runStart = -1;
    const most = Math.floor(this.maxRun / this.blockSize);
    const flush = (end: number) => {
      if (runStart < 0) return;
      for (let s = runStart; s < end; s += most) {
        const n = Math.min(end - s, most);
        if (s + n < end) {
          waits.push(this.fetchRun(s, n));
          continue;
        }
        // the last piece carries the prefetches queued right after it: one round trip, not two
        const merged = this.mergeInto(s, s + n);
        waits.push(this.fetchRun(s, merged.end - s, undefined, merged.tags));
        if (merged.jobs.length) {
          const p = waits[waits.length - 1];
          const done = () => {
            for (const j of merged.jobs) this.release(j);
            this.prefetches.pump();
          };
          p.then(done, done);
        }
      }
      runStart = -1;
      fetched = true;
    };
    /** Blocks that were cached and used before: a reuse (promoted); the others are a first use. */
    const reused: number[] = [];
    for (let b = first; b <= last; b++) {
      if (this.blocks.get(b)) {
        flush(b);
        const by = this.fresh.get(b);
        if (by) {
          prefetched = true;
          const s = this.stats.prefetchers[by];
          if (s) s.usedBytes += this.blockSize;
        } else reused.push(b);
        continue;
      }
      const f = this.inflight.get(b);
      if (f) {
        flush(b);
        waits.push(f.p);
        if (f.by) {
          prefetched = true;
          const s = this.stats.prefetchers[f.by];
          if (s) s.usedBytes += this.blockSize;
        } else fetched = true; // another request's fetch: this one waits for the source too
        continue;
      }
      if (runStart < 0) runStart = b;
    }
    flush(last + 1);
    if (waits.length) await Promise.all(waits);
    for (const b of reused) this.blocks.touch(b, true);
    for (let b = first; b <= last; b++) {
      if (this.fresh.delete(b)) this.blocks.touch(b, false);
    }
    return { fetched, prefetched, waited: waits.length > 0 };
  }

  /** Copy bytes [offset, offset+out.length) out of the cache (after demand(); a block evicted meanwhile is read again). */
  private async gather(offset: number, out: Uint8Array): Promise<void> {
    const bs = this.blockSize;
    const end = offset + out.length;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const bStart = b * bs;
      const e = Math.min(end, bStart + bs);
      let d = this.blocks.get(b);
      if (!d) {
        await this.fetchRun(b, 1);
        d = this.blocks.get(b) ?? (await this.inner.read(bStart, Math.min(bs, this.size - bStart)));
      }
      out.set(d.subarray(pos - bStart, e - bStart), pos - offset);
      pos = e;
    }
  }

  private async serve(offset: number, out: Uint8Array): Promise<void> {
    const n = out.length;
    const note = requestNotes.getStore();
    this.stats.requests++;
    if (n >= this.directFrom) {
      this.stats.direct++;
      if (note) note.cache = 'miss';
      const t = performance.now();
      const b = await this.inner.read(offset, n);
      this.stats.waited.requests++;
      this.stats.waited.ms += performance.now() - t;
      out.set(b.subarray(0, n));
      return;
    }
    const c = this.introspector?.classify(offset, n);
    const cs = this.stats.byClass[c?.class ?? 'unknown'];
    cs.requests++;
    cs.bytes += n;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + n - 1) / this.blockSize);
    // plans are made (and queued) before the demand read, so that it can carry what follows it
    const streaming = this.consumesPrefetch(first, last);
    if (this.policy !== 'lru' && (streaming || this.misses(first, last)))
      requestNotes.exit(() => this.prefetchAfter(offset, n, c, first, last, streaming));
    const t0 = performance.now();
    const pending = this.demand(first, last);
    this.prefetches.pump();
    const { fetched, prefetched, waited } = await pending;
    if (waited) {
      this.stats.waited.requests++;
      this.stats.waited.ms += performance.now() - t0;
    }
    const outcome: CacheOutcome = fetched ? 'miss' : prefetched ? 'prefetched' : 'hit';
    if (outcome === 'miss') cs.misses++;
    else if (outcome === 'prefetched') cs.prefetched++;
    else cs.hits++;
    if (note) {
      note.cache = outcome;
      if (c) {
        note.class = c.class;
        note.kind = c.kind;
        note.owner = this.introspector!.owner(offset, n, c);
      }
    }
    await this.gather(offset, out);
  }

  /** Whether a block of [first, last] is neither cached nor being fetched. */
  private misses(first: number, last: number): boolean {
    for (let b = first; b <= last; b++) if (!this.blocks.get(b) && !this.inflight.has(b)) return true;
    return false;
  }

  /** Whether [first, last] uses a block a prefetcher brought (or is bringing) that no request used yet. */
  private consumesPrefetch(first: number, last: number): boolean {
    for (let b = first; b <= last; b++) if (this.fresh.has(b) || this.inflight.get(b)?.by) return true;
    return false;
  }

  /**
   * The queued prefetch jobs that start within the gap after demand blocks [start, end), merged
   * into its read while it stays within `maxRun`: the new end and which blocks are whose.
   */
  private mergeInto(start: number, end: number): { end: number; tags: Tag[]; jobs: Job[] } {
    const tags: Tag[] = [];
    const jobs: Job[] = [];
    if (!this.mergeDemand || this.policy !== 'introspective') return { end, tags, jobs };
    const most = Math.floor(this.maxRun / this.blockSize);
    for (let again = true; again; ) {
      again = false;
      for (let i = 0; i < this.prefetches.jobs.length; i++) {
        const j = this.prefetches.jobs[i];
        if (j.offset < end || j.offset > end + this.gapBlocks || j.offset + j.length - start > most) continue;
        // blocks a fetch got to meanwhile are read again: harmless (a cached block is kept as it is)
        this.prefetches.jobs.splice(i, 1);
        this.unqueue(j);
        jobs.push(j);
        if (j.offset > end) tags.push({ from: end, to: j.offset, by: j.prefetcher });
        tags.push({ from: j.offset, to: j.offset + j.length, by: j.prefetcher });
        end = j.offset + j.length;
        again = true;
        break;
      }
    }
    return { end, tags, jobs };
  }

  private unqueue(job: Job): void {
    for (let b = job.offset; b < job.offset + job.length; b++) this.queuedBlocks.delete(b);
  }

  private release(job: Job): void {
    this.queued.set(job.prefetcher, (this.queued.get(job.prefetcher) ?? 0) - job.length * this.blockSize);
  }

  /**
   * Plan and queue the prefetches a request for blocks [first, last] calls for (never awaited
   * by it; its demand read may carry the first of them). `streaming`: the request used
   * prefetched blocks, so a streaming prefetcher's window grows (`growth` times its bound).
   */
  private prefetchAfter(
    offset: number,
    n: number,
    c: Classified | undefined,
    first: number,
    last: number,
    streaming: boolean,
  ): void {
    if (this.prefetches.closed) return;
    if (this.policy === 'readahead') {
      const end = Math.ceil((offset + n) / this.blockSize) * this.blockSize;
      this.enqueue('readahead', [{ offset: end, length: this.readahead }], first, last, 1);
    } else if (this.policy === 'introspective' && c && this.enabled.size > 0) {
      const scale = (p: string) => (streaming && STREAMS.has(p) ? this.growth : 1);
      const plans = this.introspector!.plan(
        offset,
        n,
        c,
        this.enabled,
        (p) => (this.bounds[p]?.perRequest ?? 0) * scale(p),
      );
      for (const pl of plans)
        if (this.enabled.has(pl.prefetcher)) this.enqueue(pl.prefetcher, pl.runs, first, last, scale(pl.prefetcher));
    }
  }

  /**
   * Queue a plan's missing blocks (not the request's own, [first, last]) within the
   * prefetcher's bounds (its per-request bound times `scale`). introspective: a streaming
   * prefetcher whose first half of the window is there or coming waits (refilled at half, as
   * the kernel's readahead marks its window); the blocks are read as spans that bridge gaps up
   * to `coalesceGap`, the gaps counted against the bound. readahead: runs of adjacent blocks.
   */
  private enqueue(prefetcher: string, runs: ByteRun[], first: number, last: number, scale: number): void {
    const st = this.stats.prefetchers[prefetcher];
    const bound = this.bounds[prefetcher];
    if (!st || !bound) return;
    const bs = this.blockSize;
    const perRequest = bound.perRequest * scale;
    const blocks: number[] = [];
    const seen = new Set<number>();
    /** Where in the plan (blocks, in plan order) the first missing one is. */
    let at = 0;
    let firstMissing = -1;
    for (const r of runs) {
      const s = Math.max(0, r.offset);
      const e = Math.min(this.size, r.offset + r.length);
      for (let b = Math.floor(s / bs); b * bs < e; b++) {
        if (seen.has(b)) continue;
        seen.add(b);
        at++;
        if ((b >= first && b <= last) || this.blocks.get(b) || this.inflight.has(b) || this.queuedBlocks.has(b))
          continue;
        if (firstMissing < 0) firstMissing = at - 1;
        blocks.push(b);
      }
    }
    if (blocks.length === 0) return;
    const intro = this.policy === 'introspective';
    if (intro && STREAMS.has(prefetcher) && firstMissing >= Math.floor(perRequest / bs / 2)) return;
    st.plans++;
    const room = Math.min(perRequest, bound.inFlight - (this.queued.get(prefetcher) ?? 0));
    if (room < bs) {
      st.dropped++;
      return;
    }
    const keep = Math.floor(room / bs);
    if (blocks.length > keep) {
      st.cutBytes += (blocks.length - keep) * bs;
      blocks.length = keep;
    }
    const most = Math.max(1, Math.floor(this.maxRun / bs));
    let total = 0;
    if (intro) {
      // spans in disk order: a gap up to coalesceGap is read too, while the bound allows
      const sorted = [...blocks].sort((x, y) => x - y);
      let budget = keep - sorted.length;
      let s = sorted[0];
      let e = s + 1;
      const push = () => {
        this.prefetches.jobs.push({ prefetcher, offset: s, length: e - s });
        for (let b = s; b < e; b++) this.queuedBlocks.add(b);
        total += e - s;
      };
      for (let i = 1; i < sorted.length; i++) {
        const b = sorted[i];
        const gap = b - e;
        if (gap <= this.gapBlocks && gap <= budget && b + 1 - s <= most) {
          budget -= gap;
          e = b + 1;
        } else {
          push();
          s = b;
          e = b + 1;
        }
      }
      push();
    } else {
      // runs of consecutive blocks in plan order
      for (let i = 0; i < blocks.length; ) {
        let j = i + 1;
        while (j < blocks.length && blocks[j] === blocks[j - 1] + 1 && j - i < most) j++;
        this.prefetches.jobs.push({ prefetcher, offset: blocks[i], length: j - i });
        for (let b = blocks[i]; b < blocks[i] + j - i; b++) this.queuedBlocks.add(b);
        total += j - i;
        i = j;
      }
    }
    const q = (this.queued.get(prefetcher) ?? 0) + total * bs;
    this.queued.set(prefetcher, q);
    st.peakInFlight = Math.max(st.peakInFlight, q);
  }

  /** A prefetch job off the queue: fetch what is still missing of its blocks (a demand read may have got there first). */
  private startJob(job: Job): Promise<unknown> | undefined {
    this.unqueue(job);
    // introspective, one read from the first missing block to the last; else runs of missing blocks
    const todo: Array<[number, number]> = [];
    for (let b = job.offset; b < job.offset + job.length; b++) {
      if (this.blocks.get(b) || this.inflight.has(b)) continue;
      const last = todo[todo.length - 1];
      if (last && (last[0] + last[1] === b || this.policy === 'introspective')) last[1] = b - last[0] + 1;
      else todo.push([b, 1]);
    }
    if (todo.length === 0) return undefined;
    return Promise.all(todo.map(([b, n]) => this.fetchRun(b, n, job.prefetcher)));
  }

  protected override async readRange(offset: number, n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    await this.serve(offset, out);
    return out;
  }

  protected override async readIntoRange(offset: number, out: Uint8Array): Promise<void> {
    await this.serve(offset, out);
  }

  /**
   * Copy [offset, offset+out.length) into `out` when every block of it is held now (true),
   * else nothing (false): no fetch, no counters, no recency. For a reader beside the
   * clients (a deploy's background copy) that takes what the cache already has.
   */
  peekInto(offset: number, out: Uint8Array): boolean {
    const bs = this.blockSize;
    const end = offset + out.length;
    if (out.length === 0) return true;
    for (let b = Math.floor(offset / bs); b * bs < end; b++) if (!this.blocks.get(b)) return false;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const e = Math.min(end, (b + 1) * bs);
      out.set(this.blocks.get(b)!.subarray(pos - b * bs, e - b * bs), pos - offset);
      pos = e;
    }
    return true;
  }

  /** NBD_CMD_CACHE: bring a range in (up to the capacity), as demand reads. */
  async warm(offset: number, length: number): Promise<void> {
    const end = Math.min(this.size, offset + Math.min(length, this.capacity));
    if (end <= offset) return;
    await this.demand(Math.floor(offset / this.blockSize), Math.floor((end - 1) / this.blockSize));
  }

  /** Stop prefetching (queued plans dropped) and wait for running fetches: before the source closes. */
  async stop(): Promise<void> {
    const done = this.prefetches.stop();
    this.queuedBlocks.clear();
    await done;
  }

  override async close(): Promise<void> {
    await this.stop();
    this.blocks.clear();
    this.fresh.clear();
    await this.inner.close?.();
  }
}
