import type { FileType } from '../fs/types.js';
import type { FileRecord, FileTree } from './file-manifest.js';

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
 * Holds one record per path of A in memory.
 */
export async function diffTrees(a: FileTree, b: FileTree): Promise<TreeDiff> {
  const inA = new Map<string, FileRecord>();
  for await (const r of a.records()) inA.set(r.path, r);
  const d = { added: [] as DiffItem[], removed: [] as DiffItem[], changed: [] as ContentChange[] };
  const metadata: MetadataChange[] = [];
  const pending: Array<Promise<void>> = [];
  const LIMIT = 32; // files hashed at once: keeps the I/O thread pool busy on small files
  for await (const rb of b.records()) {
    const ra = inA.get(rb.path);
    if (!ra) {
      d.added.push({ path: rb.path, type: rb.type, size: rb.size });
      continue;
    }
    inA.delete(rb.path);
    if (ra.type !== rb.type) {
      d.changed.push({ path: rb.path, type: `${ra.type}->${rb.type}`, sizeA: ra.size, sizeB: rb.size });
      continue;
    }
    const meta = metadataFields(ra, rb);
    const compare = async () => {
      let same = true;
      if (ra.type === 'file' && ra.size !== rb.size) same = false;
      else if (ra.type === 'file') {
        const [da, db] = await Promise.all([a.digest(ra), b.digest(rb)]);
        same = da === db;
      }
      if (!same) d.changed.push({ path: rb.path, type: rb.type, sizeA: ra.size, sizeB: rb.size });
      else if (meta.length > 0) metadata.push({ path: rb.path, type: rb.type, size: rb.size, fields: meta });
    };
    pending.push(compare());
    if (pending.length >= LIMIT) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  for (const ra of inA.values()) d.removed.push({ path: ra.path, type: ra.type, size: ra.size });
  return finishTreeDiff(d.added, d.removed, d.changed, metadata, [...a.warnings, ...b.warnings]);
}

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
