import type { FileType } from '../fs/types.js';
import { StrataError } from '../util/errors.js';
import { comparePaths, type FileRecord, type FileTree } from './file-manifest.js';

export interface DiffItem {
  path: string;
  type: FileType;
  size: number;
}

export interface ContentChange {
  path: string;
  /** "file" for changed content, "a->b" when the type itself changed. */
  type: string;
  sizeA: number;
  sizeB: number;
}

export interface MetadataChange {
  path: string;
  type: FileType;
  size: number;
  /** Which of mode, uid, gid, mtime, xattrs, target differ. */
  fields: string[];
}

export interface TreeDiff {
  added: DiffItem[];
  removed: DiffItem[];
  changed: ContentChange[];
  metadata: MetadataChange[];
  summary: {
    added: number;
    removed: number;
    changed: number;
    metadata: number;
    bytesAdded: number;
    bytesRemoved: number;
    /** Size in B of the files whose content changed. */
    bytesChanged: number;
  };
  warnings: string[];
}

const sameTime = (a: FileRecord, b: FileRecord) =>
  a.mtime === undefined || b.mtime === undefined || (a.mtime.sec === b.mtime.sec && a.mtime.nsec === b.mtime.nsec);

function metadataFields(a: FileRecord, b: FileRecord): string[] {
  const f: string[] = [];
  if (a.mode !== b.mode) f.push('mode');
  if (a.uid !== b.uid) f.push('uid');
  if (a.gid !== b.gid) f.push('gid');
  if (!sameTime(a, b)) f.push('mtime');
  if (JSON.stringify(a.xattrs ?? {}) !== JSON.stringify(b.xattrs ?? {})) f.push('xattrs');
  if (a.type === 'symlink' && a.target !== b.target) f.push('target');
  return f;
}

const byPath = <T extends { path: string }>(x: T[]) =>
  x.sort((p, q) => (p.path < q.path ? -1 : p.path > q.path ? 1 : 0));

/**
 * What turns tree A into tree B: paths only in B (added), only in A (removed), regular files
 * whose content differs or whose type changed (changed), and paths whose content is the same
 * but mode, owner, mtime, xattrs or symlink target differ (metadata). Content is compared by
 * digest, and only for regular files of equal size (a size change is a content change).
 * Holds one record per path of A in memory, unless both trees come in walk order (then it
 * holds only the files being compared).
 */
export async function diffTrees(a: FileTree, b: FileTree): Promise<TreeDiff> {
  if (a.walkOrder && b.walkOrder) return mergeTrees(a, b);
  const inA = new Map<string, FileRecord>();
  for await (const r of a.records()) inA.set(r.path, r);
  const d = new Comparer(a, b);
  for await (const rb of b.records()) {
    const ra = inA.get(rb.path);
    if (!ra) {
      d.added.push({ path: rb.path, type: rb.type, size: rb.size });
      continue;
    }
    inA.delete(rb.path);
    await d.both(ra, rb);
  }
  for (const ra of inA.values()) d.removed.push({ path: ra.path, type: ra.type, size: ra.size });
  return d.finish();
}

/**
 * diffTrees of two trees in walk order: both walked at once, each path taken from the tree
 * whose next one comes first (comparePaths), so memory holds the files being hashed, not a
 * tree (issue 22: two images of a million files each). The same lists as the Map's way.
 */
async function mergeTrees(a: FileTree, b: FileTree): Promise<TreeDiff> {
  const d = new Comparer(a, b);
  const ia = a.records()[Symbol.asyncIterator]();
  const ib = b.records()[Symbol.asyncIterator]();
  const next = async (it: AsyncIterator<FileRecord>, last: FileRecord | undefined, side: string) => {
    const r = await it.next();
    if (r.done) return undefined;
    if (last && comparePaths(last.path, r.value.path) >= 0) {
      throw new StrataError('CORRUPT', `tree ${side} is not in walk order: ${r.value.path} after ${last.path}`);
    }
    return r.value;
  };
  let ra = await next(ia, undefined, 'A');
  let rb = await next(ib, undefined, 'B');
  while (ra || rb) {
    const c = !ra ? 1 : !rb ? -1 : comparePaths(ra.path, rb.path);
    if (c < 0 && ra) {
      d.removed.push({ path: ra.path, type: ra.type, size: ra.size });
      ra = await next(ia, ra, 'A');
    } else if (c > 0 && rb) {
      d.added.push({ path: rb.path, type: rb.type, size: rb.size });
      rb = await next(ib, rb, 'B');
    } else if (ra && rb) {
      await d.both(ra, rb);
      [ra, rb] = await Promise.all([next(ia, ra, 'A'), next(ib, rb, 'B')]);
    }
  }
  return d.finish();
}

/** The lists of a diff being made: paths in both compared (content hashed a few files at a time). */
class Comparer {
  readonly added: DiffItem[] = [];
  readonly removed: DiffItem[] = [];
  readonly changed: ContentChange[] = [];
  readonly metadata: MetadataChange[] = [];
  private readonly pending: Array<Promise<void>> = [];

  constructor(
    private readonly a: FileTree,
    private readonly b: FileTree,
  ) {}

  /** A path in both trees. */
  async both(ra: FileRecord, rb: FileRecord): Promise<void> {
    if (ra.type !== rb.type) {
      this.changed.push({ path: rb.path, type: `${ra.type}->${rb.type}`, sizeA: ra.size, sizeB: rb.size });
      return;
    }
    const meta = metadataFields(ra, rb);
    const compare = async () => {
      let same = true;
      if (ra.type === 'file' && ra.size !== rb.size) same = false;
      else if (ra.type === 'file') {
        const [da, db] = await Promise.all([this.a.digest(ra), this.b.digest(rb)]);
        same = da === db;
      }
      if (!same) this.changed.push({ path: rb.path, type: rb.type, sizeA: ra.size, sizeB: rb.size });
      else if (meta.length > 0) this.metadata.push({ path: rb.path, type: rb.type, size: rb.size, fields: meta });
    };
    this.pending.push(compare());
    if (this.pending.length >= LIMIT) await Promise.all(this.pending.splice(0));
  }

  async finish(): Promise<TreeDiff> {
    await Promise.all(this.pending.splice(0));
    const w = [...this.a.warnings, ...this.b.warnings];
    return finishTreeDiff(this.added, this.removed, this.changed, this.metadata, w);
  }
}

/** Files hashed at once: keeps the I/O thread pool busy on small files. */
const LIMIT = 32;

/**
 * The TreeDiff of these lists (any order; sorted by path here, in place), with its summary:
 * every diff of two trees (an image's, a stored manifest's) ends here, so all print alike.
 */
export function finishTreeDiff(
  added: DiffItem[],
  removed: DiffItem[],
  changed: ContentChange[],
  metadata: MetadataChange[],
  warnings: string[],
): TreeDiff {
  byPath(added);
  byPath(removed);
  byPath(changed);
  byPath(metadata);
  const sum = (x: Array<{ size: number }>) => x.reduce((s, i) => s + i.size, 0);
  return {
    added,
    removed,
    changed,
    metadata,
    summary: {
      added: added.length,
      removed: removed.length,
      changed: changed.length,
      metadata: metadata.length,
      bytesAdded: sum(added),
      bytesRemoved: sum(removed),
      bytesChanged: changed.reduce((s, c) => s + c.sizeB, 0),
    },
    warnings,
  };
}
