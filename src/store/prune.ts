import type { IndexEntry } from './blob-index.js';
import type { BlobMap, BlobMarks } from './blob-map.js';

/**
 * Pruning a store, in two parts as restic's prune.go does: a plan computed from the index
 * and the list of packs alone (no reads of pack bodies, no writes), then an execute (in
 * store.ts, `Store.prune`) that carries it out in an order that keeps the store
 * consistent if it is killed at any point:
 *
 *   1. write new packs: the live blobs of the packs being rewritten are copied (each read
 *      and checked against its digest) into new packs, each indexed by a small index file
 *      of its own as any write is;
 *   2. write the new index: one index file naming every kept pack and every new pack;
 *   3. delete the old index files (every one but the new);
 *   4. delete the old packs: those rewritten, those with nothing live, and orphans, except
 *      one the new index names (packs are named by their content: copying the same blobs
 *      in the same order makes a pack of the same name as an old one, as re-running a
 *      prune killed after step 1 does).
 *
 * Why this order: a reader loads every index file it finds (the first entry for a digest
 * wins) and reads a blob from the pack its entry names, so an entry must never outlive its
 * pack, and a live blob must always have an entry whose pack exists. Until step 4 no
 * pack is deleted, so every entry of every index file, old or new, still points at its
 * pack: a store killed in steps 1-3 holds every live blob at least once (at worst twice,
 * in an old pack and a new one), plus orphan packs if step 1 was cut short. By the time a
 * pack is deleted in step 4, step 3 has removed every index file that named it, and step 2
 * has named a copy of each of its live blobs; a store killed in step 4 has only orphans
 * left, which `verify` reports as harmless and the next prune removes. Deleting packs
 * before the index files that name them would, if killed in between, leave entries that
 * point at nothing: "missing pack" for blobs that may be live. A blob copied twice (a
 * prune killed after step 1 leaves one copy in the old pack and one in the new) is read
 * from whichever entry loads first; the next plan counts the other as dead (`duplicates`).
 * test/store/prune.test.ts stops the execute after each step, and SIGKILLs it before each
 * change it makes to the store.
 */

/** A pack as the backend lists it. */
export interface PackFile {
  id: string;
  size: number;
}

/**
 * The plan. Bounded by the packs, not the blobs: which packs stay, go or are rewritten, and
 * counts. Which blobs a rewrite copies is decided again, pack by pack, as the execute goes
 * (its live blobs in index order); a list of them held ~100 bytes a blob (at a million blobs,
 * with the per-pack lists the plan was made from, ~140 MB).
 */
export interface PrunePlan {
  /** Packs every one of whose blobs is live: they stay, with their index entries as they are. */
  keep: string[];
  /** Packs with live and dead blobs: their live blobs are copied to new packs, then they go. */
  rewrite: string[];
  /** Packs with no live blob: they go. */
  drop: string[];
  /** Packs no index names (a killed writer's, a cut prune's): they go. */
  orphans: string[];
  /** Live blobs to copy out of the rewritten packs. */
  copyBlobs: number;
  /** Index entries that are live, and those that are not (second copies included). */
  liveBlobs: number;
  deadBlobs: number;
  /** Bytes of the packs that go (rewritten, dropped, orphans). */
  freedBytes: number;
}

/** What the index holds of one pack: live blobs, and dead ones (second copies included). */
export interface PackTally {
  live: number;
  dead: number;
}

/**
 * Plan a prune from what each indexed pack holds (`tally`) and every pack in the store
 * (`packs`). Pure.
 */
export function planFromTally(tally: ReadonlyMap<string, PackTally>, packs: readonly PackFile[]): PrunePlan {
  const plan: PrunePlan = {
    keep: [],
    rewrite: [],
    drop: [],
    orphans: [],
    copyBlobs: 0,
    liveBlobs: 0,
    deadBlobs: 0,
    freedBytes: 0,
  };
  for (const [pack, t] of tally) {
    plan.liveBlobs += t.live;
    plan.deadBlobs += t.dead;
    if (t.dead === 0) plan.keep.push(pack);
    else if (t.live === 0) plan.drop.push(pack);
    else {
      plan.rewrite.push(pack);
      plan.copyBlobs += t.live;
    }
  }
  for (const p of packs) if (!tally.has(p.id)) plan.orphans.push(p.id);
  const sizeOf = new Map(packs.map((p) => [p.id, p.size]));
  for (const id of [...plan.rewrite, ...plan.drop, ...plan.orphans]) plan.freedBytes += sizeOf.get(id) ?? 0;
  return plan;
}

/** Add second copies (pack -> how many it holds: BlobIndex.duplicates) to a tally: never live. */
function addDuplicates(tally: Map<string, PackTally>, duplicates: ReadonlyMap<string, number>): void {
  for (const [pack, n] of duplicates) {
    const t = tally.get(pack);
    if (t) t.dead += n;
    else tally.set(pack, { live: 0, dead: n });
  }
}

/**
 * Plan a prune that keeps the blobs in `live` and removes the rest. Pure: it reads only its
 * arguments. `index` is the store's index, `packs` every pack in the store, `duplicates`
 * how many second copies each pack holds (BlobIndex.duplicates): a second copy is never
 * live, so the pack holding it is rewritten or dropped rather than kept with unindexed bytes.
 */
export function planPrune(
  index: ReadonlyMap<string, IndexEntry>,
  packs: readonly PackFile[],
  live: ReadonlySet<string>,
  duplicates: ReadonlyMap<string, number> = new Map(),
): PrunePlan {
  const tally = new Map<string, PackTally>();
  for (const [d, e] of index) {
    let t = tally.get(e.pack);
    if (!t) tally.set(e.pack, (t = { live: 0, dead: 0 }));
    if (live.has(d)) t.live++;
    else t.dead++;
  }
  addDuplicates(tally, duplicates);
  return planFromTally(tally, packs);
}

/**
 * planPrune over the store's own index and gc's marks: one pass over the index's records
 * that counts, per pack, the marked entries and the rest (no string or object per blob).
 */
export function planMarked(
  index: BlobMap,
  packs: readonly PackFile[],
  live: BlobMarks,
  duplicates: ReadonlyMap<string, number>,
): PrunePlan {
  live.current();
  const all = new Uint32Array(index.packCount);
  const marked = new Uint32Array(index.packCount);
  index.eachPackEntry((e, p) => {
    all[p]++;
    if (live.hasEntry(e)) marked[p]++;
  });
  const tally = new Map<string, PackTally>();
  for (let p = 0; p < all.length; p++) {
    if (all[p] > 0) tally.set(index.packId(p), { live: marked[p], dead: all[p] - marked[p] });
  }
  addDuplicates(tally, duplicates);
  return planFromTally(tally, packs);
}

/** Where an execute stands: each step's end is a point where a test can stop it (see PruneHooks). */
export type PruneStep =
  | { step: 'packs-written'; packs: number }
  | { step: 'index-written'; key: string }
  | { step: 'index-deleted'; key: string }
  | { step: 'pack-deleted'; pack: string };

export interface PruneHooks {
  /** Called after each step of the execute; a throw stops it there (as a kill would). */
  after?(s: PruneStep): void | Promise<void>;
}

export interface PruneResult {
  /** Packs removed: rewritten, dropped and orphans. */
  deletedPacks: number;
  rewrittenPacks: number;
  freedBytes: number;
  /** Frames of the rewritten packs copied as they are (every blob live), and those whose live blobs were put again. */
  wholeFrames: number;
  repackedFrames: number;
}
