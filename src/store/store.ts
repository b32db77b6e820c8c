import { releaseBuffer } from '../io/native.js';
import { StrataError } from '../util/errors.js';
import { checkMemory, shareOf } from '../util/memory.js';
import type { Backend } from './backend.js';
import { BlobIndex, type IndexEntry, type IndexFile, sha256hex, tuple } from './blob-index.js';
import { BlobMarks } from './blob-map.js';
import { BlobReader, checked } from './blob-reader.js';
import { checkStore, type VerifyReport } from './check.js';
import type { BlobType } from './pack.js';
import { packKey } from './pack.js';
import { Packer, type PutResult } from './packer.js';
import { type PackFile, type PruneHooks, type PrunePlan, type PruneResult, planMarked } from './prune.js';
import { BufferPool } from './zstd-into.js';

export { type IndexEntry, MAX_BLOB, sha256hex } from './blob-index.js';
export {
  describeFinding,
  harmless,
  readPackEntries,
  type StoreFinding,
  type StoreFindingKind,
  type VerifyReport,
} from './check.js';

/** Blobs in each index file a prune writes (~7 MB of JSON; see Store.prune). */
const PRUNE_INDEX_BLOBS = 16_384;

/** Index refreshes on misses at most this often (see Store.refresh). */
const REFRESH_MS = 250;

export { BlobMarks } from './blob-map.js';
export { FRAME_BYTES, PACK_TARGET, type PutResult, SOLO_BLOB } from './packer.js';
export {
  type PackFile,
  type PackTally,
  type PruneHooks,
  type PrunePlan,
  type PruneResult,
  type PruneStep,
  planFromTally,
  planMarked,
  planPrune,
} from './prune.js';

/**
 * The content-addressed store: blobs named by the sha256 of their plain bytes, encoded
 * with zstd (or kept plain when zstd does not help), written into packs, and found through
 * index files. Every read re-hashes the blob. This class is the facade over its parts:
 *
 * - blob-index.ts: the index files and the in-memory index (digest -> pack, frame, place);
 * - packer.ts: the write side (shared frames of small blobs, the zstd thread, packs of about
 *   PACK_TARGET bytes, each followed by its index file);
 * - blob-reader.ts: reads (ranged frame reads, the decoded-frame cache, digest checks);
 * - check.ts: `verify`, with typed findings;
 * - prune.ts: the prune plan and the order its execute (here) follows.
 *
 * Write order keeps a killed writer harmless: a pack is put (atomically) first, then an
 * index file naming it; a pack that no index names is an orphan that gc removes and that
 * no reader ever sees. Index files are named by the sha256 of their content and checked
 * against it when loaded.
 *
 * Formats: packs "STRPACK2" and index files of version 2 are written; packs "STRPACK1"
 * and index version 1 (one blob per frame, before shared frames) are still read.
 */
export class Store {
  private readonly ix: BlobIndex;
  /**
   * Read scratch (and inline compression's frames). Bounded in bytes: a check-in's inspection
   * reads its layout manifest back, one frame of ~100 MB at a million files, and the pool kept
   * that scratch and its encoded input (pow2 classes: 128 + 64 MiB) for the rest of the process.
   * Its bytes are memory.ts SHARES.storePool (3/32 of the budget, 8-64 MiB: ~15 MiB at the CLI's
   * default; 1/8 kept two 8 MiB frames idle beside the six cached). What it does not
   * keep is freed at once (an evicted 8 MiB frame was garbage until the next collection).
   */
  private readonly pool = new BufferPool(32, false, { maxBytes: shareOf('storePool'), release: releaseBuffer });
  private readonly packer: Packer;
  private readonly reader: BlobReader;

  private constructor(
    readonly backend: Backend,
    compressInline: boolean,
  ) {
    this.ix = new BlobIndex(backend);
    // frames being compressed on the zstd thread live in the shared pool (shared memory, nothing
    // copied), every one kept for reuse (how many there are is bounded by the frames in flight):
    // a SharedArrayBuffer dropped is garbage V8 does not count, and may stay resident for long
    this.packer = new Packer(backend, this.ix, this.pool, new BufferPool(64, true), compressInline);
    this.reader = new BlobReader(backend, this.pool);
  }

  /** `compressInline`: compress on the calling thread (no zstd thread), as where none can start. */
  static async open(backend: Backend, opts: { compressInline?: boolean } = {}): Promise<Store> {
    const s = new Store(backend, opts.compressInline === true);
    const config = await s.backend.get('config').catch(() => undefined);
    if (!config) {
      await s.backend.putIfAbsent('config', Buffer.from(JSON.stringify({ version: 1, kind: 'strata-store' })));
    } else if (!/"kind":"strata-store"/.test(Buffer.from(config).toString('utf8'))) {
      throw new StrataError('CORRUPT', 'not a Strata store (config)', {
        file: backend.name,
        structure: 'store config',
      });
    }
    // from the cache's remembered listing when the backend has one (a read-only open: see
    // cache-backend.ts Remembered); the first miss, or any write, lists for real
    await s.ix.load({ remembered: true });
    return s;
  }

  /** Keep at most `bytes` of decoded shared frames (BlobReader.limitFrames). */
  limitFrames(bytes: number): void {
    this.reader.limitFrames(bytes);
  }

  /** Whether the index may be stale (loaded from a remembered listing, not listed since). */
  get indexFromRemembered(): boolean {
    return this.ix.fromRemembered;
  }

  /** A write, or what decides one, sees the store as listed now: never a remembered listing's index. */
  private async current(): Promise<void> {
    if (this.ix.fromRemembered) await this.refresh(true);
  }

  get name(): string {
    return this.backend.name;
  }

  /**
   * Start the write side's zstd thread now, not on the first put: a server calls it when a
   * client asks which chunks it lacks, so the thread's start-up (tens of ms) runs while the
   * client prepares its upload instead of inside the upload.
   */
  warmWriter(): void {
    this.packer.warm();
  }

  /** Size the write side's buffers (frames, the zstd thread's queue, the pack cut) for a memory budget. */
  setWriteBudget(bytes: number): void {
    this.packer.setBudget(bytes);
  }

  /** Drop the write side's spare buffers (pack arenas, frames) after a flush: a burst of writing is over. */
  async releaseWriteBuffers(): Promise<void> {
    await this.packer.releaseBuffers();
  }

  /** Re-read every index file (after another process wrote some). */
  async loadIndex(): Promise<void> {
    await this.ix.load();
  }

  /** Whether the index knows `digest` (after a read-only open: as the cache's remembered listing had it until the first refresh). */
  has(digest: string): boolean {
    return this.packer.has(digest);
  }

  private refreshing?: Promise<boolean>;
  private queued?: { urgent: boolean; promise: Promise<boolean> };
  private refreshedAt = 0;

  /**
   * Catch up with index files other processes wrote (servers sharing one store) or
   * replaced (their gc). The refresh a caller gets starts after its call (so it sees what
   * was there when it asked); callers meanwhile share it, and refreshes start at most every
   * REFRESH_MS (a stream of misses costs a listing per REFRESH_MS, not one each). An
   * `urgent` refresh (a commit or an upload that must see what a gc or another server just
   * did) does not wait out REFRESH_MS: it starts as soon as the one in flight ends, shared
   * by the urgent callers meanwhile (a check-in's upload and commit, a few ms apart, each
   * waited up to 250 ms here). Refreshes never overlap. Returns whether the index changed.
   */
  refresh(urgent = false): Promise<boolean> {
    const pending = this.queued;
    if (pending && (pending.urgent || !urgent)) return pending.promise;
    const entry = { urgent, promise: Promise.resolve(false) };
    entry.promise = (async () => {
      await this.refreshing?.catch(() => {});
      if (!urgent) {
        const wait = REFRESH_MS - (Date.now() - this.refreshedAt);
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      if (this.queued === entry) this.queued = undefined;
      // an urgent refresh may have started while this one waited out REFRESH_MS
      while (this.refreshing) await this.refreshing.catch(() => {});
      const run = this.ix.refresh().finally(() => {
        this.refreshedAt = Date.now();
        if (this.refreshing === run) this.refreshing = undefined;
      });
      this.refreshing = run;
      const changed = await run;
      if (changed) this.reader.clearCache();
      return changed;
    })();
    this.queued = entry;
    return entry.promise;
  }

  /** `has` for each digest, after a refresh when some are not known here. */
  async hasAll(digests: readonly string[]): Promise<boolean[]> {
    await this.current();
    if (digests.some((d) => !this.has(d))) await this.refresh();
    return digests.map((d) => this.has(d));
  }

  entry(digest: string): IndexEntry | undefined {
    return this.ix.entries.get(digest);
  }

  /** Every blob the index knows (digest -> where). */
  entries(): ReadonlyMap<string, IndexEntry> {
    return this.ix.entries;
  }

  /**
   * Encoded size of a known, flushed blob (0 when unknown): a blob that shares a frame
   * counts for the frame's encoded bytes in proportion to its plain bytes.
   */
  storedSize(digest: string): number {
    const e = this.ix.entries.get(digest);
    if (!e) return 0;
    if (e.framePlain === e.plainLength) return e.encLength;
    return Math.round((e.encLength * e.plainLength) / Math.max(1, e.framePlain));
  }

  /**
   * Store a blob (no-op when the digest is known). Returns once it is queued; it is
   * durable after `flush()`. `digest`, when given, must be the sha256 of `plain`
   * (callers that hashed already skip a second hash). The store copies what it keeps.
   */
  put(type: BlobType, plain: Uint8Array, digest = sha256hex(plain), opts: { solo?: boolean } = {}): Promise<PutResult> {
    if (this.ix.fromRemembered) return this.current().then(() => this.packer.put(type, plain, digest, opts));
    return this.packer.put(type, plain, digest, opts);
  }

  /** Write everything queued: packs, then their index. */
  flush(): Promise<void> {
    return this.packer.flush();
  }

  /** A blob's plain bytes (a fresh copy), checked against its digest. */
  async get(digest: string): Promise<Uint8Array> {
    return this.withBlob(digest, (plain) => Buffer.from(plain));
  }

  /**
   * Hand a blob's plain bytes, checked against its digest, to `use` — synchronously, in a
   * pooled buffer that is reused once `use` returns (copy what you keep).
   */
  async withBlob<T>(digest: string, use: (plain: Uint8Array) => T): Promise<T> {
    const u = this.packer.unflushedBlob(digest);
    if (u) return this.packer.readUnflushed(u, use);
    let e = this.ix.entries.get(digest);
    if (!e && (await this.refresh())) e = this.ix.entries.get(digest);
    if (!e) {
      throw new StrataError('NOT_FOUND', `blob ${digest} is not in the store`, {
        file: this.name,
        structure: 'store index',
      });
    }
    try {
      return await this.reader.withBlob(digest, e, use);
    } catch (err) {
      // its pack is gone: another process's gc rewrote it; the index says where it went
      if ((err as { code?: string }).code !== 'NOT_FOUND') throw err;
      await this.refresh();
      const moved = this.ix.entries.get(digest);
      if (!moved || (moved.pack === e.pack && moved.offset === e.offset)) throw err;
      return this.reader.withBlob(digest, moved, use);
    }
  }

  /**
   * These blobs will be read in this order soon (a checkout): their packs, in the order
   * first needed, go to the backend's prefetch (a remote store's cache fetches them ahead).
   */
  prefetch(digests: Iterable<string>): void {
    const b = this.backend;
    if (!b.prefetch) return;
    const keys: string[] = [];
    const seen = new Set<string>();
    for (const d of digests) {
      const e = this.ix.entries.get(d);
      if (!e || seen.has(e.pack)) continue;
      seen.add(e.pack);
      keys.push(packKey(e.pack));
    }
    b.prefetch(keys);
  }

  /**
   * Re-read every pack: its name is the sha256 of its bytes, its header parses, every frame
   * decodes, every blob in it hashes to its digest, and every index entry points at a
   * pack that holds that blob where the index says. Findings are typed (check.ts).
   */
  async verify(onPack?: (done: number, total: number) => void): Promise<VerifyReport> {
    await this.current();
    return checkStore(this.backend, this.ix.entries, this.pool, onPack);
  }

  /** The packs in the store, as prune plans with them. */
  async packFiles(): Promise<PackFile[]> {
    return (await this.backend.list('packs/')).map((f) => ({ id: f.key.split('/').pop() as string, size: f.size }));
  }

  /**
   * Marks of the blobs of this load of the index (a bit each): gc marks what is reachable
   * into them and prunes the rest. A reload of the index (loadIndex, a refresh that found
   * index files gone) makes them unusable.
   */
  marks(): BlobMarks {
    return new BlobMarks(this.ix.entries);
  }

  /** The digests `marks` holds, in the index's order (pack by pack, as they were written). */
  *entriesMarked(marks: BlobMarks): Generator<string> {
    marks.current();
    for (const [d] of this.ix.entries.entriesWhere((n) => marks.hasEntry(n))) yield d;
  }

  /** `live` as marks of the index as it is now (a Set is looked up blob by blob). */
  private marked(live: ReadonlySet<string> | BlobMarks): BlobMarks {
    if (live instanceof BlobMarks) return live;
    const m = this.marks();
    for (const d of live) m.mark(d);
    return m;
  }

  /** What `prune(live)` would do now (reads the index and the pack listing, changes nothing). */
  async planPrune(live: ReadonlySet<string> | BlobMarks): Promise<PrunePlan> {
    if (!(live instanceof BlobMarks)) await this.current();
    return planMarked(this.ix.entries, await this.packFiles(), this.marked(live), this.ix.duplicates);
  }

  /**
   * Keep only the blobs in `keep`: packs with nothing to keep are deleted, packs with some
   * garbage are rewritten, and new index files replace all old ones. Call it only under an
   * exclusive lock. The plan is prune.ts's `planMarked`; this executes it in the order
   * prune.ts documents (new packs, new index, old index files, old packs), so a kill at any
   * point leaves every kept blob reachable (at worst twice, or orphans for the next gc).
   * `keep` as a Set: the index is loaded again first; as marks (gc's): of the index as
   * loaded now. What it holds grows with the packs, not the blobs (the marks are a bit a
   * blob, each new index file at most `indexBlobs` blobs).
   * `indexBlobs`: blobs in each new index file (default PRUNE_INDEX_BLOBS; tests lower it).
   */
  async prune(
    keep: ReadonlySet<string> | BlobMarks,
    hooks: PruneHooks = {},
    opts: { indexBlobs?: number } = {},
  ): Promise<PruneResult> {
    const indexBlobs = opts.indexBlobs ?? PRUNE_INDEX_BLOBS;
    await this.flush();
    if (!(keep instanceof BlobMarks)) await this.loadIndex();
    const marks = this.marked(keep);
    const files = await this.packFiles();
    const index = this.ix.entries;
    const plan = planMarked(index, files, marks, this.ix.duplicates);
    // 1. new packs: the live blobs of rewritten packs, frame by frame in index order, each
    // read and checked; what is copied is appended to the index, numbered from `end` on
    const rewrite = new Uint8Array(index.packCount);
    for (const id of plan.rewrite) rewrite[index.packNumber(id) as number] = 1;
    const end = index.numbered;
    const copied = { wholeFrames: 0, repackedFrames: 0 };
    let frame: Array<[string, IndexEntry]> = [];
    for (const [d, e] of index.entriesWhere((n, p) => rewrite[p] === 1 && marks.hasEntry(n), end)) {
      const head = frame[0]?.[1];
      if (head && (head.pack !== e.pack || head.offset !== e.offset)) {
        await this.copyFrame(frame, copied);
        frame = [];
      }
      frame.push([d, e]);
    }
    if (frame.length > 0) await this.copyFrame(frame, copied);
    await this.flush();
    // the copying is over: its zstd thread and pooled frames (~35 MiB outside the heap at
    // 1,000,000 blobs) would otherwise stay through the index writing and reload below
    await this.packer.releaseBuffers();
    await hooks.after?.({ step: 'packs-written', packs: plan.rewrite.length });
    // 2. an index for everything that stays: the kept packs (their entries as loaded: the
    // copies above came from rewritten packs) and the packs just written. In files of at most
    // PRUNE_INDEX_BLOBS blobs: one file of every blob was read whole by each later open (at
    // 1,000,000 blobs ~110 MB of JSON, parsed into ~300 MB of heap). Several files are as safe
    // as one: until the old ones go, every blob is reachable through them too.
    const stays = new Uint8Array(index.packCount);
    for (const id of plan.keep) stays[index.packNumber(id) as number] = 1;
    /** The packs just written (a copy may make a pack of an old one's name: see step 4). */
    const fresh = new Set<string>();
    index.eachPackEntry((_, p) => {
      stays[p] = 1;
      fresh.add(index.packId(p));
    }, end);
    const oldIndexFiles = this.ix.files.slice();
    const newKeys = new Set<string>();
    let batch = new Map<string, IndexFile['packs'][number]>();
    let inBatch = 0;
    const writeBatch = async () => {
      const key = await this.ix.write({ version: 2, packs: [...batch.values()] });
      newKeys.add(key);
      batch = new Map();
      inBatch = 0;
      await hooks.after?.({ step: 'index-written', key });
    };
    for (const [d, e] of index.entriesWhere((_, p) => stays[p] === 1)) {
      let p = batch.get(e.pack);
      if (!p) batch.set(e.pack, (p = { id: e.pack, blobs: [] }));
      p.blobs.push(tuple(d, e));
      if (++inBatch >= indexBlobs) {
        checkMemory('writing the index of a pruned store');
        await writeBatch();
      }
    }
    if (inBatch > 0 || newKeys.size === 0) await writeBatch();
    // 3. the old index files: from here no index names a pack that goes
    for (const k of oldIndexFiles) {
      if (newKeys.has(k)) continue;
      await this.backend.delete(k);
      await hooks.after?.({ step: 'index-deleted', key: k });
    }
    // 4. the old packs, but never one the new index names: packs are named by their content,
    // so copying the same blobs in the same order makes a pack of the same name as an old
    // one (as a prune re-run after one killed past step 1 does)
    const sizeOf = new Map(files.map((f) => [f.id, f.size]));
    let deletedPacks = 0;
    let freedBytes = 0;
    for (const id of [...plan.rewrite, ...plan.drop, ...plan.orphans]) {
      if (fresh.has(id)) continue;
      await this.backend.delete(packKey(id));
      deletedPacks++;
      freedBytes += sizeOf.get(id) ?? 0;
      await hooks.after?.({ step: 'pack-deleted', pack: id });
    }
    this.reader.clearCache();
    await this.loadIndex();
    return { deletedPacks, rewrittenPacks: plan.rewrite.length, freedBytes, ...copied };
  }

  /**
   * Copy the live blobs of one frame of a pack a prune rewrites (`live`: its index entries that
   * stay, in order): the frame is read and decoded once and each live blob checked against its
   * digest. When they are the whole frame, its encoded bytes go into the new pack as they are
   * (no compression: at 1,000,000 files re-encoding every copied frame was most of a prune's
   * CPU, and the zstd thread and its frames most of its memory); otherwise the live blobs are
   * put again, as a check-in puts them.
   */
  private async copyFrame(live: Array<[string, IndexEntry]>, copied: { wholeFrames: number; repackedFrames: number }) {
    const index = this.ix.entries;
    const e = live[0][1];
    const { enc, plain } = await this.reader.wholeFrame(e);
    let owned = true;
    try {
      let bytes = 0;
      for (const [d, b] of live) {
        checked(plain.subarray(b.at, b.at + b.plainLength), d, `${this.name}/${packKey(e.pack)}`, e.offset, () => {});
        bytes += b.plainLength;
      }
      for (const [d] of live) index.delete(d);
      if (bytes === e.framePlain) {
        owned = false;
        const blobs = live.map(([digest, b]) => ({ digest, type: b.type, at: b.at, plainLength: b.plainLength }));
        await this.packer.putFrame(enc, e.encLength, e.flags, e.framePlain, blobs);
        copied.wholeFrames++;
      } else {
        for (const [d, b] of live) await this.packer.put(b.type, plain.subarray(b.at, b.at + b.plainLength), d);
        copied.repackedFrames++;
      }
      checkMemory('copying the live blobs of the packs a prune rewrites');
    } finally {
      if (plain !== enc) this.pool.give(plain);
      if (owned) this.pool.give(enc);
    }
  }

  async close(): Promise<void> {
    await this.packer.close();
    this.ix.entries.close();
    await this.backend.close();
  }
}
