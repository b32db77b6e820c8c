import type { Library } from '../library/library.js';
import { diffLayouts } from '../library/version-diff.js';
import type { RangedSource } from '../library/version-source.js';
import { StrataError } from '../util/errors.js';
import type { DedupReport } from './reports.js';

/**
 * The reports that need a library's manifests rather than its request log: block-level
 * similarity of every version to its most similar base (the Emulab study's "share of blocks
 * to write", computed from the layout manifests exactly as `strata diff --blocks` does:
 * src/library/version-diff.ts diffLayouts), and the dedup the store's deltas achieved.
 */
export interface SimilarityReport {
  /** Version references, in catalog order (image name, then number). */
  versions: string[];
  /** matrix[b][a]: share of B's used blocks that must be written to turn A into B (null on the diagonal). */
  matrix: Array<Array<number | null>>;
  /** Each version's most similar base (least share to write; ties: the earlier version). */
  best: Array<{ version: string; base: string | null; writeShare: number | null; usedBlocks: number }>;
  /** Best write shares by tenth: [0,0.1), [0.1,0.2) ... [0.9,1]. */
  histogram: number[];
  /** Versions left out past `max`. */
  omitted: number;
}

export async function similarity(lib: Library, opts: { max?: number } = {}): Promise<SimilarityReport> {
  const max = opts.max ?? 64;
  if (!Number.isInteger(max) || max < 1) throw new StrataError('USAGE', '--max must be a positive integer');
  const all = (await lib.catalog.activeVersions()).sort((a, b) =>
    a.image === b.image ? a.number - b.number : a.image < b.image ? -1 : 1,
  );
  const vs = all.slice(0, max);
  const names = vs.map((v) => `${v.image}@${v.number}`);
  const n = vs.length;
  // each layout opened a part at a time (a million-file layout is ~250 MB decoded whole, and
  // this held every version's at once); each pair walks both, their caches dropped after
  const layouts: RangedSource[] = [];
  try {
    for (let i = 0; i < n; i++) layouts.push(await lib.versionSource(vs[i].manifest, names[i]));
    return await similarityOf(layouts, names, all.length - n);
  } finally {
    for (const l of layouts) await l.close();
  }
}

async function similarityOf(layouts: RangedSource[], names: string[], omitted: number): Promise<SimilarityReport> {
  const n = layouts.length;
  const matrix: Array<Array<number | null>> = [];
  const best: SimilarityReport['best'] = [];
  const histogram = new Array(10).fill(0);
  for (let b = 0; b < n; b++) {
    const row: Array<number | null> = [];
    let bi = -1;
    let bs = Number.POSITIVE_INFINITY;
    let used = 0;
    for (let a = 0; a < n; a++) {
      if (a === b) {
        row.push(null);
        continue;
      }
      const d = await diffLayouts(layouts[a], layouts[b]);
      await layouts[a].close();
      await layouts[b].close();
      used = d.usedBlocks;
      row.push(d.writeShare);
      if (d.writeShare < bs) {
        bs = d.writeShare;
        bi = a;
      }
    }
    matrix.push(row);
    if (bi < 0) best.push({ version: names[b], base: null, writeShare: null, usedBlocks: used });
    else {
      best.push({ version: names[b], base: names[bi], writeShare: bs, usedBlocks: used });
      histogram[Math.min(9, Math.floor(bs * 10))]++;
    }
  }
  return { versions: names, matrix, best, histogram, omitted };
}

/**
 * What the store's deltas saved: every version's stored bytes alone (its distinct chunks and
 * manifests, encoded: what a store holding each version whole would keep) against the bytes
 * each version added to the store when it was checked in (only its chunks no earlier
 * version had). Both are encoded bytes, so compression cancels out: the saving is dedup's.
 */
export async function dedupFromLibrary(lib: Library): Promise<DedupReport> {
  let full = 0;
  let delta = 0;
  let derived = 0;
  let versions = 0;
  for (const img of await lib.catalog.images()) {
    for (const v of await lib.catalog.versions(img.name)) {
      versions++;
      full += v.storedBytes;
      delta += Math.min(v.newBytes, v.storedBytes);
      if (v.newBytes < v.storedBytes) derived++;
    }
  }
  return {
    source: 'library',
    versions,
    fullBytes: full,
    deltaBytes: delta,
    savedBytes: full - delta,
    savedShare: full ? (full - delta) / full : 0,
    derived,
  };
}
