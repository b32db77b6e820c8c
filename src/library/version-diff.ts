import type { FileType, Timestamp } from '../fs/types.js';
import type { BlockDiff } from '../inspect/block-diff.js';
import type { FileRecord, FileTree } from '../inspect/file-manifest.js';
import type { PackageDiff } from '../inspect/package-diff.js';
import {
  type ContentChange,
  type DiffItem,
  finishTreeDiff,
  type MetadataChange,
  type TreeDiff,
} from '../inspect/tree-diff.js';
import type { OsInspection } from '../inspect/types.js';
import { xattrDigest } from './inspection.js';
import type { Library } from './library.js';
import { layoutFiles } from './library-verbs.js';
import type { FileEntry, FilesManifest, LayoutManifest } from './manifest.js';

/**
 * `strata diff A B` for two library versions, straight from their manifests (no
 * checkout): files from the file manifests (content compared by stored digest), packages
 * from the stored inspections, blocks from the layout manifests' ranges. Same shapes as
 * the image-file diff (src/inspect), so both print alike.
 */
function parseTime(s: string | null | undefined): Timestamp | undefined {
  if (!s) return undefined;
  const m = /^(.*)\.(\d{9})Z$/.exec(s);
  const ms = Date.parse(m ? `${m[1]}Z` : s);
  if (Number.isNaN(ms)) return undefined;
  return { sec: Math.floor(ms / 1000), nsec: m ? Number(m[2]) : 0 };
}

/** A FileTree over a stored file manifest: every record and digest is already there. */
export function manifestTree(files: FilesManifest): FileTree {
  return {
    warnings: [],
    async *records() {
      for (const e of files.entries) {
        if (e.path === '/') continue;
        const r: FileRecord = {
          path: e.path,
          type: e.type as FileType,
          mode: e.mode,
          uid: e.uid,
          gid: e.gid,
          size: e.type === 'dir' ? 0 : e.size,
        };
        const t = parseTime(e.mtime);
        if (t) r.mtime = t;
        if (e.target !== undefined) r.target = e.target;
        if (e.xattrs && Object.keys(e.xattrs).length > 0) {
          r.xattrs = {};
          for (const k of Object.keys(e.xattrs).sort()) r.xattrs[k] = xattrDigest(e.xattrs[k]);
        }
        if (e.digest) r.digest = e.digest;
        yield r;
      }
    },
    async digest(r: FileRecord): Promise<string> {
      // a file with no stored digest (none recorded) compares unequal to anything but itself
      return r.digest ?? `none:${r.path}`;
    },
  };
}

const entrySize = (e: FileEntry) => (e.type === 'dir' ? 0 : e.size);

/** Same mtime as diffTrees sees it: equal, or either side has none (or none that parses). */
function sameMtime(a: string | null | undefined, b: string | null | undefined): boolean {
  if (a === b) return true;
  const ta = parseTime(a);
  const tb = parseTime(b);
  return ta === undefined || tb === undefined || (ta.sec === tb.sec && ta.nsec === tb.nsec);
}

/** Same xattrs as diffTrees sees them (names and the sha256 of each value; none = empty). */
function sameXattrs(a: Record<string, string> | undefined, b: Record<string, string> | undefined): boolean {
  const ka = a ? Object.keys(a) : [];
  const kb = b ? Object.keys(b) : [];
  if (ka.length !== kb.length) return false;
  if (ka.length === 0) return true;
  ka.sort();
  kb.sort();
  for (let i = 0; i < ka.length; i++) {
    if (ka[i] !== kb[i]) return false;
    const va = (a as Record<string, string>)[ka[i]];
    const vb = (b as Record<string, string>)[kb[i]];
    // equal base64 is equal bytes; different text may still decode alike (padding, whitespace)
    if (va !== vb && xattrDigest(va) !== xattrDigest(vb)) return false;
  }
  return true;
}

/**
 * diffTrees(manifestTree(a), manifestTree(b)), the same answer without its generality: the
 * entries are compared where they lie (no FileRecord per entry, no promise per file, a
 * time parsed only when the two stored strings differ). The tests hold the two equal.
 */
export function diffManifests(a: FilesManifest, b: FilesManifest): TreeDiff {
  const inA = new Map<string, FileEntry>();
  for (const e of a.entries) if (e.path !== '/') inA.set(e.path, e);
  const added: DiffItem[] = [];
  const removed: DiffItem[] = [];
  const changed: ContentChange[] = [];
  const metadata: MetadataChange[] = [];
  for (const eb of b.entries) {
    const p = eb.path;
    if (p === '/') continue;
    const ea = inA.get(p);
    if (!ea) {
      added.push({ path: p, type: eb.type as FileType, size: entrySize(eb) });
      continue;
    }
    inA.delete(p);
    const sizeA = entrySize(ea);
    const sizeB = entrySize(eb);
    if (ea.type !== eb.type) {
      changed.push({ path: p, type: `${ea.type}->${eb.type}`, sizeA, sizeB });
      continue;
    }
    if (ea.type === 'file') {
      // a file with no stored digest compares unequal to anything but itself (as manifestTree's digest())
      const same = sizeA === sizeB && (ea.digest || `none:${p}`) === (eb.digest || `none:${p}`);
      if (!same) {
        changed.push({ path: p, type: eb.type, sizeA, sizeB });
        continue;
      }
    }
    if (
      ea.mode === eb.mode &&
      ea.uid === eb.uid &&
      ea.gid === eb.gid &&
      ea.mtime === eb.mtime &&
      ea.xattrs === undefined &&
      eb.xattrs === undefined &&
      (ea.type !== 'symlink' || ea.target === eb.target)
    )
      continue; // the common case: nothing differs
    const fields: string[] = [];
    if (ea.mode !== eb.mode) fields.push('mode');
    if (ea.uid !== eb.uid) fields.push('uid');
    if (ea.gid !== eb.gid) fields.push('gid');
    if (!sameMtime(ea.mtime, eb.mtime)) fields.push('mtime');
    if (!sameXattrs(ea.xattrs, eb.xattrs)) fields.push('xattrs');
    if (ea.type === 'symlink' && ea.target !== eb.target) fields.push('target');
    if (fields.length > 0) metadata.push({ path: p, type: eb.type as FileType, size: sizeB, fields });
  }
  for (const ea of inA.values()) removed.push({ path: ea.path, type: ea.type as FileType, size: entrySize(ea) });
  return finishTreeDiff(added, removed, changed, metadata, []);
}

interface Piece {
  disk: number;
  length: number;
  chunk: string;
  at: number;
}

function pieces(m: LayoutManifest): Piece[] {
  const r = m.ranges;
  const out: Piece[] = new Array(r.disk.length);
  for (let i = 0; i < r.disk.length; i++) {
    out[i] = { disk: r.disk[i], length: r.length[i], chunk: m.chunks[r.chunk[i]], at: r.at[i] };
  }
  return out;
}

/**
 * The Emulab measure from two layout manifests, in blocks of B's file-system block size
 * (by disk offset): B's used blocks are those its ranges touch (what it stores: allocated,
 * non-zero); a block must be written to turn A into B unless every byte B stores in it is
 * the same chunk at the same place in A (equal chunk digest means equal bytes, so a
 * changed block is never missed; a block inside a changed 1 MiB file chunk or 64 KiB
 * metadata chunk counts as written even when its own bytes are equal). Shared: B's used
 * blocks whose every piece's chunk A holds too.
 */
export function diffLayouts(a: LayoutManifest, b: LayoutManifest): BlockDiff {
  const pa = pieces(a);
  const pb = pieces(b);
  const chunksA = new Set(a.chunks);
  const bs = b.volumes.find((v) => v.fs)?.fs?.blockSize ?? 4096;
  const used = new Set<number>();
  const write = new Set<number>();
  const notShared = new Set<number>();
  const mark = (set: Set<number>, from: number, to: number) => {
    for (let k = Math.floor(from / bs); k * bs < to; k++) set.add(k);
  };
  let j = 0;
  for (const x of pb) {
    const end = x.disk + x.length;
    mark(used, x.disk, end);
    if (!chunksA.has(x.chunk)) mark(notShared, x.disk, end);
    while (j < pa.length && pa[j].disk + pa[j].length <= x.disk) j++;
    // the parts of x that A holds identically; the gaps between them must be written
    let at = x.disk;
    for (let k = j; k < pa.length && pa[k].disk < end; k++) {
      const y = pa[k];
      if (y.chunk !== x.chunk || y.at - y.disk !== x.at - x.disk) continue;
      const s = Math.max(x.disk, y.disk);
      if (s > at) mark(write, at, s);
      at = Math.max(at, Math.min(end, y.disk + y.length));
    }
    if (at < end) mark(write, at, end);
  }
  let shared = 0;
  for (const k of used) if (!notShared.has(k)) shared++;
  return {
    blockSize: bs,
    usedBlocks: used.size,
    usedBytes: used.size * bs,
    writeBlocks: write.size,
    writeBytes: write.size * bs,
    writeShare: used.size === 0 ? 0 : write.size / used.size,
    sharedBytes: shared * bs,
  };
}

export interface VersionDiff {
  a: string;
  b: string;
  files: TreeDiff;
  packages?: PackageDiff | null;
  blocks?: BlockDiff;
  warnings: string[];
}

export async function diffVersions(
  lib: Library,
  refA: string,
  refB: string,
  opts: { part?: string; packages?: boolean; blocks?: boolean } = {},
): Promise<VersionDiff> {
  const [va, vb] = [await lib.catalog.resolve(refA), await lib.catalog.resolve(refB)];
  // each layout and file manifest read and decoded once (the two versions' at once)
  const [la, lb] = await Promise.all([lib.layout(va.manifest), lib.layout(vb.manifest)]);
  const [fa, fb] = await Promise.all([layoutFiles(lib, va, la, opts.part), layoutFiles(lib, vb, lb, opts.part)]);
  const files = diffManifests(fa, fb);
  const out: VersionDiff = {
    a: `${va.image}@${va.number}`,
    b: `${vb.image}@${vb.number}`,
    files,
    warnings: [...files.warnings],
  };
  if (opts.packages) {
    const [{ versionInspection }, { diffPackages }] = await Promise.all([
      import('./inspection.js'),
      import('../inspect/package-diff.js'),
    ]);
    const pick = (roots: OsInspection[], volume: string) => roots.find((r) => r.root === volume) ?? roots[0];
    const ra = pick((await versionInspection(lib, out.a)).roots, fa.volume);
    const rb = pick((await versionInspection(lib, out.b)).roots, fb.volume);
    if (!ra?.packageFormat || !rb?.packageFormat || ra.packageFormat !== rb.packageFormat) {
      out.warnings.push(
        `packages: not comparable (A: ${ra?.packageFormat ?? 'no package database'}, B: ${rb?.packageFormat ?? 'no package database'})`,
      );
      out.packages = null;
    } else out.packages = diffPackages(ra.packageFormat, ra.packages, rb.packages);
  }
  if (opts.blocks) out.blocks = diffLayouts(la, lb);
  return out;
}
