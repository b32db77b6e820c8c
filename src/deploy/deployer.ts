import { existsSync, readFileSync, readlinkSync, type Stats, statSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import type { Extent } from '../io/byte-source.js';
import type { RangedSource } from '../library/version-source.js';
import type { ExportWriter, NbdExport } from '../serve/nbd/export.js';
import { StrataError } from '../util/errors.js';
import { compareTarget } from './compare.js';
import { eachBlockPair } from './diff.js';
import type { VersionRef } from './request-log.js';
import {
  type DeployHeader,
  KIND_DIRTY,
  KIND_LOCAL,
  type LoadedState,
  loadState,
  runsOfList,
  STATE_SUFFIX,
  StateLog,
} from './state.js';

/** What a deploy copies from: a library version or an image, as a ByteSource with status. */
export interface DeploySource {
  readonly name: string;
  readonly size: number;
  /** `urgent`: a guest's read waits for this one (sources with a queue let it pass). */
  readInto(offset: number, out: Uint8Array, urgent?: boolean): Promise<number>;
  status(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
  /**
   * Library versions: the layout, read a part at a time (differential deploys and --compare
   * walk it), and its manifest's digest.
   */
  readonly layout?: RangedSource;
  readonly manifestDigest?: string;
  /** Library versions: which one (image, number, and its owner project and visibility when known): the request log names it. */
  ref?: VersionRef;
  /** The layout of another version, by digest (the one a TARGET's state says it holds); the caller closes it. */
  layoutOf?(digest: string): Promise<RangedSource>;
}

export type DeployEvent =
  | { event: 'start'; target: string; size: number; blocks: number; local: number; mode: string; dataBytes: number }
  | {
      event: 'progress';
      localBytes: number;
      neededBytes: number;
      fetchedBytes: number;
      guestFetches: number;
      rate: number;
    }
  | { event: 'retry'; offset: number; length: number; attempt: number; error: string }
  /** The background copy waits for a source it cannot reach (what is local was made durable first). */
  | { event: 'stalled'; offset: number; error: string; localBytes: number }
  /** The source answers again: the background copy goes on where it was. */
  | { event: 'resumed'; seconds: number }
  | { event: 'compared'; matched: number; mismatched: number; readBytes: number }
  | { event: 'error'; error: string }
  | { event: 'complete'; fetchedBytes: number; seconds: number };

export interface DeployOptions {
  /** Bytes per tracked block (default 64 KiB; a multiple of 4096). */
  blockSize?: number;
  /** Continue a deploy of the same source that TARGET's state records. */
  resume?: boolean;
  /** Bytes per second for the background copy (guest reads are not capped). */
  bandwidth?: number;
  /** Background fetches in flight (default 4). */
  concurrency?: number;
  /** Blocks per background fetch (default 16: neighbouring chunks coalesced into one read). */
  batchBlocks?: number;
  /**
   * How long a read waits for a failing source before it fails (default 120 s): a guest's
   * read, and the background copy of a chunk that comes back damaged or is not found.
   */
  fetchTimeout?: number;
  /**
   * How long the background copy waits for a source it cannot reach (refused, reset, timed
   * out, 5xx) before it stops, retrying with backoff (default 1 h; 0: no limit). It goes on
   * by itself when the source answers again; what is local is made durable when it stalls.
   */
  sourceWait?: number;
  /** The longest pause between two attempts of the background copy (default 30 s). */
  maxRetryDelay?: number;
  /** TARGET with no state: hash it along the version's chunks and fetch only what differs (compare.ts). */
  compare?: boolean;
  /** Do not start the background copier (tests drive it; guest reads still fetch). */
  noCopier?: boolean;
  /**
   * Ranges the background copier fetches first, in this order, before the disk-order pass (a
   * boot profile's plan, see profile.ts); guest reads still go ahead of them. A promise: the
   * export serves at once while the plan is worked out; the copier waits for it.
   */
  first?:
    | Promise<ReadonlyArray<{ offset: number; length: number }>>
    | ReadonlyArray<{ offset: number; length: number }>;
  onEvent?(e: DeployEvent): void;
}

/** Run buffers kept for reuse (the background copy's fetches in flight and a few guest reads). */
const POOLED_RUNS = 8;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * A failure that says the source cannot be reached now (refused, reset, timed out, a 5xx, a
 * 404 from a server that is coming back): worth waiting for. A chunk that comes back damaged
 * (CORRUPT), a REF or chunk the source says it does not have (NOT_FOUND), a bad request or
 * what a source cannot do are not: waiting longer would not change them.
 */
function unreachable(e: unknown): boolean {
  if (!(e instanceof StrataError)) return true;
  return e.code === 'IO';
}

/**
 * A deploy: TARGET (a raw file or block device) is served at once; what the guest reads
 * is fetched first, a background copier fills the rest in disk order, the guest's writes go
 * to TARGET and are never overwritten by a later fetch (a block is made local before the
 * guest writes it, and a local block is never fetched again). State beside TARGET says which
 * blocks are local; it is appended after the bytes are durable.
 */
export class Deployer {
  readonly blockSize: number;
  readonly blocks: number;
  readonly size: number;
  /** 1 where TARGET holds the block's final bytes. */
  readonly local: Uint8Array;
  /** 1 where the guest wrote. */
  readonly dirty: Uint8Array;
  /** 1 where the source has data in the block. */
  readonly hasData: Uint8Array;
  private readonly inflight = new Map<number, Promise<void>>();
  /** Buffers of a background batch's size, reused by the runs that fit one. */
  private readonly pool: Buffer[] = [];
  private get poolBytes(): number {
    return (this.opts.batchBlocks ?? 16) * this.blockSize;
  }
  private pendingLocal: number[] = [];
  private remaining = 0;
  private neededBytes = 0;
  private localNeeded = 0;
  fetchedBytes = 0;
  /** Blocks fetched (not zero-filled), for tests and reports. */
  readonly fetchedBlocks: number[] = [];
  guestFetches = 0;
  private sourceOpen = true;
  private closed = false;
  private copier: Promise<void> | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private committing: Promise<void> = Promise.resolve();
  private readonly started = Date.now();
  private completeResolve!: () => void;
  /** Resolves when every block is local and the source is dropped. */
  readonly complete: Promise<void>;
  private failure: unknown;
  /** When the background copy began waiting for an unreachable source (undefined: it is not). */
  private stalledAt: number | undefined;
  /** The background copy stopped for good (the source stayed away longer than sourceWait). */
  private copyStopped = false;
  /** Errors of background fetches that gave up waiting for an unreachable source. */
  private readonly gaveUpWaiting = new WeakSet<object>();
  /** Pauses between attempts, cut short by close(). */
  private readonly naps = new Set<() => void>();
  mode = 'new';

  private constructor(
    readonly target: string,
    private readonly fh: FileHandle,
    private readonly source: DeploySource,
    private log: StateLog,
    readonly header: DeployHeader,
    private readonly opts: DeployOptions,
  ) {
    this.size = header.size;
    this.blockSize = header.blockSize;
    this.blocks = Math.ceil(this.size / this.blockSize);
    this.local = new Uint8Array(this.blocks);
    this.dirty = new Uint8Array(this.blocks);
    this.hasData = new Uint8Array(this.blocks);
    this.complete = new Promise((r) => (this.completeResolve = r));
  }

  static async open(source: DeploySource, target: string, opts: DeployOptions = {}): Promise<Deployer> {
    const blockSize = opts.blockSize ?? 64 << 10;
    if (!Number.isInteger(blockSize) || blockSize < 4096 || blockSize % 4096 !== 0) {
      throw new StrataError('USAGE', `block size ${blockSize} is not a multiple of 4096`);
    }
    const stateFile = target + STATE_SUFFIX;
    const prior = loadState(stateFile);
    const sourceId = source.manifestDigest ? `manifest:${source.manifestDigest}` : `${source.name}#${source.size}`;
    let st: Stats | undefined;
    try {
      st = statSync(target);
    } catch {}
    const isBlock = st?.isBlockDevice() ?? false;
    if (st && !st.isFile() && !isBlock) {
      throw new StrataError('USAGE', 'TARGET is neither a regular file nor a block device', { file: target });
    }
    const fresh = !st;
    if (opts.resume && !prior)
      throw new StrataError('USAGE', 'nothing to resume: no deploy state', { file: stateFile });
    const fh = await open(target, fresh ? 'wx+' : 'r+');
    try {
      let tsize = isBlock ? await deviceSize(fh) : (st?.size ?? 0);
      if (isBlock && tsize < source.size) {
        throw new StrataError('USAGE', `block device holds ${tsize} bytes, the source ${source.size}`, {
          file: target,
        });
      }
      if (!isBlock && tsize < source.size) {
        await fh.truncate(source.size);
        tsize = source.size;
      }
      const header: DeployHeader = {
        kind: 'strata.deploy',
        version: 1,
        source: sourceId,
        manifest: source.manifestDigest,
        size: source.size,
        blockSize,
        zeroTarget: fresh,
      };
      let log: StateLog;
      let mode = 'new';
      let init: { local?: Uint8Array; dirty?: Uint8Array } = {};
      if (prior && prior.header.source === sourceId && prior.header.size === source.size) {
        if (!opts.resume) {
          throw new StrataError('USAGE', 'TARGET holds a deploy of this source already: add --resume', {
            file: stateFile,
          });
        }
        if (prior.header.blockSize !== blockSize) header.blockSize = prior.header.blockSize;
        header.zeroTarget = prior.header.zeroTarget;
        log = StateLog.reopen(stateFile, prior.end);
        init = { local: prior.local, dirty: prior.dirty };
        mode = 'resume';
      } else if (prior && !fresh) {
        if (opts.resume) {
          throw new StrataError('USAGE', `TARGET's state is of another source (${prior.header.source})`, {
            file: stateFile,
          });
        }
        init = await differential(prior, source, blockSize);
        mode = init.local ? 'differential' : 'new';
        log = StateLog.create(stateFile, header, init.local, init.dirty);
      } else if (opts.compare && !fresh) {
        // an unknown TARGET: what already matches the version (hashed along its chunks) is not fetched
        if (!source.layout) throw new StrataError('USAGE', '--compare needs a library version as SOURCE');
        const c = await compareTarget(fh, source.layout, blockSize, source.size);
        init = { local: c.local };
        mode = 'compare';
        opts.onEvent?.({ event: 'compared', matched: c.matched, mismatched: c.mismatched, readBytes: c.readBytes });
        log = StateLog.create(stateFile, header, init.local);
      } else {
        log = StateLog.create(stateFile, header);
      }
      const d = new Deployer(target, fh, source, log, header, opts);
      d.mode = mode;
      if (init.local) d.local.set(init.local.subarray(0, d.blocks));
      if (init.dirty) d.dirty.set(init.dirty.subarray(0, d.blocks));
      await d.scan();
      return d;
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  /** Which blocks hold data; free blocks of a zero TARGET are local from the start. */
  private async scan(): Promise<void> {
    // 64 MiB of status at a time: a GiB of a million-file disk is ~300,000 extents as objects
    const step = 64 << 20;
    let dataBytes = 0;
    for (let o = 0; o < this.size; o += step) {
      for (const e of await this.source.status(o, Math.min(step, this.size - o))) {
        if (e.kind !== 'data') continue;
        dataBytes += e.length;
        const a = Math.floor(e.offset / this.blockSize);
        const b = Math.ceil((e.offset + e.length) / this.blockSize);
        this.hasData.fill(1, a, b);
      }
    }
    for (let i = 0; i < this.blocks; i++) {
      // the guest wrote only blocks that were local (a dirty record follows the local one)
      if ((!this.hasData[i] && this.header.zeroTarget) || this.dirty[i]) this.local[i] = 1;
      if (!this.local[i]) this.remaining++;
      if (this.hasData[i]) {
        this.neededBytes += this.blockLen(i);
        if (this.local[i]) this.localNeeded += this.blockLen(i);
      }
    }
    this.emit({
      event: 'start',
      target: this.target,
      size: this.size,
      blocks: this.blocks,
      local: this.blocks - this.remaining,
      mode: this.mode,
      dataBytes,
    });
  }

  private blockLen(i: number): number {
    return Math.min(this.blockSize, this.size - i * this.blockSize);
  }

  private emit(e: DeployEvent): void {
    this.opts.onEvent?.(e);
  }

  get isComplete(): boolean {
    return this.remaining === 0;
  }

  progress(): DeployEvent {
    const secs = (Date.now() - this.started) / 1000;
    return {
      event: 'progress',
      localBytes: this.localNeeded,
      neededBytes: this.neededBytes,
      fetchedBytes: this.fetchedBytes,
      guestFetches: this.guestFetches,
      rate: secs > 0 ? Math.round(this.fetchedBytes / secs) : 0,
    };
  }

  /** Start the background copier (and finish at once if nothing is missing). */
  start(): void {
    if (this.remaining === 0) {
      this.finish().catch((e) => this.fail(e));
      return;
    }
    // what became local is recorded twice a second (and at every flush, and at 256 blocks)
    this.ticker ??= setInterval(() => this.commit().catch((e) => this.fail(e)), 500);
    this.ticker.unref();
    if (this.opts.noCopier || this.copier) return;
    this.copier = this.copy().catch((e) => this.fail(e));
  }

  private fail(e: unknown): void {
    this.failure ??= e;
    this.emit({ event: 'error', error: (e as Error)?.message ?? String(e) });
  }

  /** Fill every missing block in disk order, a batch of neighbours per fetch, a few fetches in flight. */
  private async copy(): Promise<void> {
    const batch = this.opts.batchBlocks ?? 16;
    let cursor = 0;
    const bw = this.opts.bandwidth;
    const t0 = Date.now();
    let scheduled = 0;
    // the profile's ranges first, in order, a batch at a time
    const queue: Array<[number, number]> = [];
    try {
      for (const r of (await this.opts.first) ?? []) {
        const a = Math.max(0, Math.floor(r.offset / this.blockSize));
        const b = Math.min(this.blocks, Math.ceil((r.offset + r.length) / this.blockSize));
        for (let s = a; s < b; s += batch) queue.push([s, Math.min(b, s + batch)]);
      }
    } catch (e) {
      // no plan: the copy goes on in disk order
      this.emit({ event: 'error', error: `no prefetch plan: ${(e as Error)?.message ?? String(e)}` });
    }
    let queued = 0;
    const nextRun = (): [number, number] | undefined => {
      if (queued < queue.length) return queue[queued++];
      while (cursor < this.blocks && (this.local[cursor] || this.inflight.has(cursor))) cursor++;
      if (cursor >= this.blocks) return undefined;
      const s = cursor;
      while (cursor < this.blocks && cursor - s < batch && !this.local[cursor] && !this.inflight.has(cursor)) cursor++;
      return [s, cursor];
    };
    const worker = async () => {
      for (let r = nextRun(); r && !this.closed && !this.copyStopped; r = nextRun()) {
        if (bw && bw > 0) {
          // this batch may start once the bytes scheduled before it fit the cap
          const wait = t0 + (scheduled / bw) * 1000 - Date.now();
          let bytes = 0;
          for (let i = r[0]; i < r[1]; i++) if (this.hasData[i]) bytes += this.blockLen(i);
          scheduled += bytes;
          if (wait > 0) await sleep(wait);
        }
        // a guest read may have fetched some of them meanwhile: never fetch a block twice
        for (let i = r[0]; i < r[1]; ) {
          if (this.local[i] || this.inflight.has(i)) {
            i++;
            continue;
          }
          const s = i;
          while (i < r[1] && !this.local[i] && !this.inflight.has(i)) i++;
          // a range that cannot be fetched (chunk corrupt, not found) stays missing: go on with the rest;
          // a source that stayed away past sourceWait stops the copy (--resume continues it)
          await this.fetchRun(s, i, false).catch((e) => {
            if (this.gaveUpWaiting.has(e as object)) {
              if (!this.copyStopped) {
                this.copyStopped = true;
                this.fail(
                  new StrataError(
                    'IO',
                    `the background copy stopped: ${(e as Error).message}; TARGET's state holds what is local (strata deploy --resume goes on)`,
                    { file: this.source.name },
                    { cause: e },
                  ),
                );
              }
            } else this.fail(e);
          });
          if (this.copyStopped) return;
        }
      }
    };
    await Promise.all(Array.from({ length: this.opts.concurrency ?? 4 }, worker));
    // a guest fetch may still be in flight for the last blocks
    await Promise.all([...this.inflight.values()].map((p) => p.catch(() => {})));
  }

  /** Resolves when the background copier has stopped (done, failed or closed). */
  async copying(): Promise<void> {
    await this.copier;
  }

  /** Make blocks [a, b) local: fetch what is neither local nor in flight, wait for what is in flight. */
  async ensureLocal(offset: number, length: number): Promise<void> {
    if (this.remaining === 0 || length <= 0) return;
    const a = Math.floor(offset / this.blockSize);
    const b = Math.min(this.blocks, Math.ceil((offset + length) / this.blockSize));
    const waits: Promise<unknown>[] = [];
    let i = a;
    while (i < b) {
      if (this.local[i]) {
        i++;
        continue;
      }
      const f = this.inflight.get(i);
      if (f) {
        waits.push(f);
        i++;
        continue;
      }
      const s = i;
      while (i < b && !this.local[i] && !this.inflight.has(i)) i++;
      this.guestFetches++;
      waits.push(this.fetchRun(s, i, true));
    }
    await Promise.all(waits);
  }

  /**
   * Fetch blocks [a, b) (none local, none in flight) and write them to TARGET; free blocks
   * are written as zeros (TARGET is not known to be zero there) without asking the source.
   * Returns the bytes fetched.
   */
  private async fetchRun(a: number, b: number, urgent: boolean): Promise<number> {
    let done!: () => void;
    let failed!: (e: unknown) => void;
    const p = new Promise<void>((res, rej) => {
      done = res;
      failed = rej;
    });
    p.catch(() => {});
    for (let i = a; i < b; i++) this.inflight.set(i, p);
    let pooled: Buffer | undefined;
    let reusable = false;
    try {
      const offset = a * this.blockSize;
      const length = Math.min(this.size, b * this.blockSize) - offset;
      // a pooled buffer when the run fits one (zeroed: free blocks are written as zeros); a
      // buffer a run dropped as garbage was ~5,600 MiB of ArrayBuffers awaiting collection at 1M
      pooled = length <= this.poolBytes ? (this.pool.pop()?.fill(0) ?? Buffer.alloc(this.poolBytes)) : undefined;
      const buf = pooled ?? Buffer.alloc(length);
      // only the stretches of blocks that hold data come from the source; free blocks in
      // between (a TARGET not known to be zero) stay zeros in the buffer, written, not fetched
      const reads: Promise<void>[] = [];
      let fetched = 0;
      for (let i = a; i < b; ) {
        if (!this.hasData[i]) {
          i++;
          continue;
        }
        const s = i;
        while (i < b && this.hasData[i]) i++;
        const from = (s - a) * this.blockSize;
        const to = Math.min(length, (i - a) * this.blockSize);
        fetched += to - from;
        reads.push(this.readSource(offset + from, buf.subarray(from, to), urgent));
      }
      // every read settled before the run fails or is written (none left running on `buf`)
      const settled = await Promise.allSettled(reads);
      reusable = true;
      for (const r of settled) if (r.status === 'rejected') throw r.reason;
      if (this.closed) throw new StrataError('IO', 'deploy closed', { file: this.target });
      await this.fh.write(buf, 0, length, offset);
      if (fetched > 0) {
        this.fetchedBytes += fetched;
        for (let i = a; i < b; i++) if (this.hasData[i]) this.fetchedBlocks.push(i);
      }
      for (let i = a; i < b; i++) this.markLocal(i);
      done();
      return fetched;
    } catch (e) {
      failed(e);
      throw e;
    } finally {
      for (let i = a; i < b; i++) if (this.inflight.get(i) === p) this.inflight.delete(i);
      if (pooled && reusable && this.pool.length < POOLED_RUNS) this.pool.push(pooled);
    }
  }

  /**
   * Read from the source, retrying with backoff. A guest's read (and any read of a chunk
   * that comes back damaged or not found) gives up after fetchTimeout; the background copy
   * waits for an unreachable source up to sourceWait, pauses growing to maxRetryDelay, and
   * goes on when it answers. The error names the range.
   */
  private async readSource(offset: number, out: Uint8Array, urgent: boolean): Promise<void> {
    if (!this.sourceOpen) throw new StrataError('IO', 'source already dropped', { file: this.source.name, offset });
    const t0 = Date.now();
    const fetchTimeout = this.opts.fetchTimeout ?? 120_000;
    const sourceWait = this.opts.sourceWait ?? 3_600_000;
    for (let attempt = 1; ; attempt++) {
      try {
        const n = await this.source.readInto(offset, out, urgent);
        if (n < out.length) out.fill(0, n);
        if (this.stalledAt !== undefined) {
          const seconds = (Date.now() - this.stalledAt) / 1000;
          this.stalledAt = undefined;
          this.emit({ event: 'resumed', seconds });
        }
        return;
      } catch (e) {
        // a corrupt chunk (digest mismatch) is never written: retry, it may have been a bad transfer
        const waitsLong = !urgent && unreachable(e);
        const budget = waitsLong ? (sourceWait > 0 ? sourceWait : Number.POSITIVE_INFINITY) : fetchTimeout;
        const cap = waitsLong ? (this.opts.maxRetryDelay ?? 30_000) : 5000;
        const wait = Math.min(cap, 100 * 2 ** Math.min(attempt - 1, 20));
        this.emit({ event: 'retry', offset, length: out.length, attempt, error: (e as Error).message });
        if (waitsLong && this.stalledAt === undefined && !this.closed) {
          this.stalledAt = Date.now();
          // what is local now is durable before the wait (a kill during it loses nothing)
          await this.commit(true).catch((x) => this.fail(x));
          this.emit({
            event: 'stalled',
            offset,
            error: (e as Error).message,
            localBytes: this.localNeeded,
          });
        }
        if (Date.now() + wait - t0 > budget || this.closed) {
          const what = urgent ? 'a guest read' : 'a background fetch';
          const err = new StrataError(
            'IO',
            `gave up ${what} of ${out.length} bytes at ${offset} after ${attempt} attempts in ${Math.round((Date.now() - t0) / 1000)} s: ${(e as Error).message}`,
            { file: this.source.name, offset },
            { cause: e },
          );
          if (waitsLong && !this.closed) this.gaveUpWaiting.add(err);
          throw err;
        }
        await this.nap(wait);
      }
    }
  }

  /** Sleep `ms`, or less when the deploy closes. */
  private nap(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.naps.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.naps.add(done);
    });
  }

  private markLocal(i: number): void {
    if (this.local[i]) return;
    this.local[i] = 1;
    this.remaining--;
    if (this.hasData[i]) this.localNeeded += this.blockLen(i);
    this.pendingLocal.push(i);
    if (this.pendingLocal.length >= 256) this.commit().catch((e) => this.fail(e));
    if (this.remaining === 0) this.finish().catch((e) => this.fail(e));
  }

  /**
   * Make what became local durable, then say so in the state: fdatasync TARGET first, then
   * append the records (and fdatasync the state when `syncState`). Serialised.
   */
  commit(syncState = false): Promise<void> {
    const run = async () => {
      const blocks = this.pendingLocal;
      this.pendingLocal = [];
      if (blocks.length === 0 && !syncState) return;
      await this.fh.datasync();
      blocks.sort((x, y) => x - y);
      this.log.append(KIND_LOCAL, runsOfList(blocks));
      if (syncState) this.log.sync();
    };
    this.committing = this.committing.then(run, run);
    return this.committing;
  }

  private async finish(): Promise<void> {
    clearInterval(this.ticker);
    await this.commit(true);
    if (!this.sourceOpen) return;
    this.sourceOpen = false;
    await this.source.close();
    this.emit({ event: 'complete', fetchedBytes: this.fetchedBytes, seconds: (Date.now() - this.started) / 1000 });
    this.completeResolve();
  }

  /** Before the guest's first write to a block lands, the state says the block is the guest's. */
  private async markDirty(offset: number, length: number): Promise<void> {
    const a = Math.floor(offset / this.blockSize);
    const b = Math.min(this.blocks, Math.ceil((offset + length) / this.blockSize));
    const fresh: number[] = [];
    for (let i = a; i < b; i++) {
      if (!this.dirty[i]) {
        this.dirty[i] = 1;
        fresh.push(i);
      }
    }
    if (fresh.length === 0) return;
    // the blocks' local records go first: a dirty block is always local
    await this.commit();
    this.log.append(KIND_DIRTY, runsOfList(fresh));
    this.log.sync();
  }

  async read(offset: number, out: Uint8Array): Promise<number> {
    const n = Math.max(0, Math.min(out.length, this.size - offset));
    await this.ensureLocal(offset, n);
    let got = 0;
    while (got < n) {
      const r = await this.fh.read(out, got, n - got, offset + got);
      if (r.bytesRead === 0) break;
      got += r.bytesRead;
    }
    if (got < n) out.fill(0, got, n);
    return n;
  }

  /** Status: data where the source or the guest put bytes, zero elsewhere (reads there give zeros). */
  async status(offset: number, length: number): Promise<Extent[]> {
    const end = Math.min(this.size, offset + length);
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end) {
      const i = Math.floor(pos / this.blockSize);
      const kind = this.hasData[i] || this.dirty[i] ? 'data' : 'zero';
      let j = i + 1;
      while (
        j < this.blocks &&
        j * this.blockSize < end &&
        (this.hasData[j] || this.dirty[j] ? 'data' : 'zero') === kind
      )
        j++;
      const stop = Math.min(end, j * this.blockSize);
      out.push({ offset: pos, length: stop - pos, kind });
      pos = stop;
    }
    return out;
  }

  private checkRange(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new StrataError('USAGE', `write of ${length} bytes at ${offset} runs past the disk (${this.size})`, {
        file: this.target,
        offset,
      });
    }
  }

  readonly writer: ExportWriter = {
    write: async (offset, data) => {
      this.checkRange(offset, data.length);
      await this.ensureLocal(offset, data.length);
      await this.markDirty(offset, data.length);
      let done = 0;
      while (done < data.length) {
        const r = await this.fh.write(data, done, data.length - done, offset + done);
        done += r.bytesWritten;
      }
    },
    writeZeroes: async (offset, length) => {
      this.checkRange(offset, length);
      await this.ensureLocal(offset, length);
      await this.markDirty(offset, length);
      const z = Buffer.alloc(Math.min(length, 1 << 20));
      for (let o = 0; o < length; o += z.length) {
        const n = Math.min(z.length, length - o);
        await this.fh.write(z, 0, n, offset + o);
      }
    },
    // the range may read as before: nothing to do
    trim: async () => {},
    flush: async () => {
      await this.commit(true);
      await this.fh.datasync();
    },
  };

  /** TARGET as an NBD export: reads go through ensureLocal, writes to TARGET. */
  export(name = ''): NbdExport {
    return {
      name,
      description: `deploy of ${this.source.name} to ${this.target}`,
      source: {
        name: this.target,
        size: this.size,
        read: async (o, l) => {
          const b = Buffer.allocUnsafe(Math.max(0, Math.min(l, this.size - o)));
          await this.read(o, b);
          return b;
        },
        readInto: (o, out) => this.read(o, out),
        status: (o, l) => this.status(o, l),
      },
      writer: this.writer,
      prefetch: (o, l) => this.ensureLocal(o, l),
      close: () => this.close(),
    };
  }

  /** Stop: wait for the copier, make everything durable, close TARGET and the state (the source too). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.ticker);
    for (const wake of [...this.naps]) wake();
    await this.copier;
    await Promise.all([...this.inflight.values()].map((p) => p.catch(() => {})));
    try {
      await this.commit(true);
    } finally {
      this.log.close();
      await this.fh.close();
      if (this.sourceOpen) {
        this.sourceOpen = false;
        await this.source.close();
      }
    }
  }
}

async function deviceSize(fh: FileHandle): Promise<number> {
  // a block device's size, from /sys (sectors of 512 bytes)
  const dev = readlinkSync(`/proc/self/fd/${fh.fd}`);
  const name = dev.replace(/^\/dev\//, '');
  const sys = `/sys/class/block/${name}/size`;
  if (!existsSync(sys)) throw new StrataError('USAGE', 'cannot tell the size of this block device', { file: dev });
  return Number(readFileSync(sys, 'utf8').trim()) * 512;
}

/**
 * TARGET holds (part of) a deploy of another library version: blocks whose content is the
 * same in both layouts (same ranges, same chunks, same offsets in them) and that TARGET holds
 * and the guest did not write are local already; the rest is fetched. TARGET is not read.
 * The two layouts are walked side by side, a part of each at a time.
 */
async function differential(
  prior: LoadedState,
  source: DeploySource,
  blockSize: number,
): Promise<{ local?: Uint8Array; dirty?: Uint8Array }> {
  const old = prior.header.manifest;
  if (!old || !source.layout || !source.layoutOf || prior.header.blockSize !== blockSize) return {};
  const oldLayout = await source.layoutOf(old);
  try {
    const blocks = Math.ceil(source.layout.size / blockSize);
    const local = new Uint8Array(blocks);
    const oldBlocks = prior.local.length;
    const decide = (i: number, a: string, b: string) => {
      // held: recorded local, or never written on a TARGET that started as zeros where the old version has nothing
      const held = i < oldBlocks && (prior.local[i] === 1 || (prior.header.zeroTarget && a === ''));
      const had = held && prior.dirty[i] !== 1;
      // beyond the old disk's end (TARGET grew), nothing is held
      local[i] = had && a === b ? 1 : 0;
    };
    // blocks neither layout places a range in, then those either does
    for (let i = 0; i < blocks; i++) decide(i, '', '');
    await eachBlockPair(oldLayout, source.layout, blockSize, blocks, decide);
    return { local };
  } finally {
    await oldLayout.close();
  }
}
