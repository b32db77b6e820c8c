import type { IndexEntry } from './blob-index.js';

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

export interface PrunePlan {
  /** Packs every one of whose blobs is live: they stay, with their index entries as they are. */
  keep: string[];
  /** Packs with live and dead blobs: their live blobs are copied to new packs, then they go. */
  rewrite: string[];
  /** Packs with no live blob: they go. */
  drop: string[];
  /** Packs no index names (a killed writer's, a cut prune's): they go. */
  orphans: string[];
  /** Live blobs to copy out of the rewritten packs, in index order. */
  copy: string[];
  /** Index entries that are live (in `live` of the caller), and those that are not (second copies included). */
  liveBlobs: number;
  deadBlobs: number;
  /** Bytes of the packs that go (rewritten, dropped, orphans). */
  freedBytes: number;
}

/**
 * Plan a prune that keeps the blobs in `live` and removes the rest. Pure: it reads only its
 * arguments. `index` is the store's index, `packs` every pack in the store, `duplicates`
 * the index entries of second copies (BlobIndex.duplicates): a second copy is never live,
 * so the pack holding it is rewritten or dropped rather than kept with unindexed bytes.
 */
export function planPrune(
  index: ReadonlyMap<string, IndexEntry>,
  packs: readonly PackFile[],
  live: ReadonlySet<string>,
  duplicates: ReadonlyArray<readonly [string, IndexEntry]> = [],
): PrunePlan {
  /** The blobs each indexed pack holds: [digest, live]. */
  const byPack = new Map<string, Array<[string, boolean]>>();
  const add = (d: string, pack: string, isLive: boolean) => {
    let l = byPack.get(pack);
    if (!l) byPack.set(pack, (l = []));
    l.push([d, isLive]);
  };
  for (const [d, e] of index) add(d, e.pack, live.has(d));
  for (const [d, e] of duplicates) add(d, e.pack, false);
  const sizeOf = new Map(packs.map((p) => [p.id, p.size]));
  const plan: PrunePlan = {
    keep: [],
    rewrite: [],
    drop: [],
    orphans: [],
    copy: [],
    liveBlobs: 0,
    deadBlobs: 0,
    freedBytes: 0,
  };
  for (const [pack, blobs] of byPack) {
    const liveHere = blobs.filter(([, l]) => l).map(([d]) => d);
    plan.liveBlobs += liveHere.length;
    plan.deadBlobs += blobs.length - liveHere.length;
    if (liveHere.length === blobs.length) plan.keep.push(pack);
    else if (liveHere.length === 0) plan.drop.push(pack);
    else {
      plan.rewrite.push(pack);
      plan.copy.push(...liveHere);
    }
  }
  for (const p of packs) if (!byPack.has(p.id)) plan.orphans.push(p.id);
  for (const id of [...plan.rewrite, ...plan.drop, ...plan.orphans]) plan.freedBytes += sizeOf.get(id) ?? 0;
  return plan;
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
}
