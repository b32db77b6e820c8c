import { createHash } from 'node:crypto';
import { versionFileSets } from '../catalog/inspection.js';
import type { FileType, Timestamp } from '../fs/types.js';
import type { BlockDiff } from '../inspect/block-diff.js';
import type { FileRecord, FileTree } from '../inspect/file-manifest.js';
import type { PackageDiff } from '../inspect/package-diff.js';
import {
  type ContentChange,
  type DiffItem,
  diffTrees,
  finishTreeDiff,
  type MetadataChange,
  type TreeDiff,
} from '../inspect/tree-diff.js';
import type { OsInspection } from '../inspect/types.js';
import { DigestSet } from './digest-set.js';
import { xattrDigest } from './inspection.js';
import type { Library } from './library.js';
import { fileContent, layoutFilesDigest } from './library-verbs.js';
import {
  compareTreePaths,
  type FileEntry,
  type FilesManifest,
  type LayoutManifest,
  type LayoutVolume,
} from './manifest.js';
import type { StoredFiles } from './stored-listing.js';
import type { PlacedRanges, RangedSource } from './version-source.js';

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

/** A stored entry as the FileRecord an image's walk gives for the same file (fileSystemTree). */
function entryFileRecord(e: FileEntry): FileRecord {
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
  return r;
}

/**
 * A FileTree over a stored file manifest: every record and digest is already there. It lets
 * diffTrees compare a stored version with anything else that is a FileTree (an image's file
 * system), and it defines what diffManifests must answer for two stored versions.
 */
export function manifestTree(files: FilesManifest): FileTree {
  return {
    warnings: [],
    async *records() {
      for (const e of files.entries) if (e.path !== '/') yield entryFileRecord(e);
    },
    async digest(r: FileRecord): Promise<string> {
      // a file with no stored digest (none recorded) compares unequal to anything but itself
      return r.digest ?? `none:${r.path}`;
    },
  };
}

/**
 * manifestTree over a stored manifest read a part at a time, in walk order (as check-in
 * writes it), so that diffTrees merges it with an image's walk holding neither (issue 22:
 * `diff NAME@N IMAGE` of a million files). Throws NotInOrder before the first entry out of
 * walk order. A file with no stored digest is hashed from its chunks, as the walk of the
 * version's disk would.
 */
function streamedManifestTree(sf: StoredFiles): FileTree {
  const entries = new WeakMap<FileRecord, FileEntry>();
  return {
    warnings: [],
    walkOrder: true,
    async *records() {
      for await (const e of ordered(sf.lib.fileEntries(sf.digest, sf.head))) {
        const r = entryFileRecord(e);
        if (!r.digest && e.type === 'file') entries.set(r, e);
        yield r;
      }
    },
    async digest(r: FileRecord): Promise<string> {
      if (r.digest) return r.digest;
      const e = entries.get(r);
      if (!e) return `none:${r.path}`;
      const h = createHash('sha256');
      for await (const b of fileContent(sf.lib, sf.files, e)) h.update(b);
      r.digest = h.digest('hex');
      return r.digest;
    },
  };
}

/**
 * diffTrees of a stored version and another tree (an image's file system), the version A
 * (`versionFirst`) or B: the version's manifest streamed and merged with the other's walk
 * (no block of the version's disk read, no list of either held); a manifest not in walk
 * order is held whole instead.
 */
export async function diffStoredTree(sf: StoredFiles, other: FileTree, versionFirst: boolean): Promise<TreeDiff> {
  const pair = (t: FileTree) => (versionFirst ? diffTrees(t, other) : diffTrees(other, t));
  try {
    return await pair(streamedManifestTree(sf));
  } catch (e) {
    if (!(e instanceof NotInOrder)) throw e;
    return pair(manifestTree(await sf.lib.files(sf.digest)));
  }
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
  const out = new DiffLists();
  for (const eb of b.entries) {
    const p = eb.path;
    if (p === '/') continue;
    const ea = inA.get(p);
    if (!ea) {
      out.added.push({ path: p, type: eb.type as FileType, size: entrySize(eb) });
      continue;
    }
    inA.delete(p);
    out.pair(ea, eb);
  }
  for (const ea of inA.values()) out.removed.push({ path: ea.path, type: ea.type as FileType, size: entrySize(ea) });
  return finishTreeDiff(out.added, out.removed, out.changed, out.metadata, []);
}

/** The lists a diff of two manifests fills, and how one path present in both is compared. */
class DiffLists {
  readonly added: DiffItem[] = [];
  readonly removed: DiffItem[] = [];
  readonly changed: ContentChange[] = [];
  readonly metadata: MetadataChange[] = [];

  pair(ea: FileEntry, eb: FileEntry): void {
    const p = eb.path;
    const sizeA = entrySize(ea);
    const sizeB = entrySize(eb);
    if (ea.type !== eb.type) {
      this.changed.push({ path: p, type: `${ea.type}->${eb.type}`, sizeA, sizeB });
      return;
    }
    if (ea.type === 'file') {
      // a file with no stored digest compares unequal to anything but itself (as manifestTree's digest())
      const same = sizeA === sizeB && (ea.digest || `none:${p}`) === (eb.digest || `none:${p}`);
      if (!same) {
        this.changed.push({ path: p, type: eb.type, sizeA, sizeB });
        return;
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
      return; // the common case: nothing differs
    const fields: string[] = [];
    if (ea.mode !== eb.mode) fields.push('mode');
    if (ea.uid !== eb.uid) fields.push('uid');
    if (ea.gid !== eb.gid) fields.push('gid');
    if (!sameMtime(ea.mtime, eb.mtime)) fields.push('mtime');
    if (!sameXattrs(ea.xattrs, eb.xattrs)) fields.push('xattrs');
    if (ea.type === 'symlink' && ea.target !== eb.target) fields.push('target');
    if (fields.length > 0) this.metadata.push({ path: p, type: eb.type as FileType, size: sizeB, fields });
  }
}

/** Thrown inside diffEntryStreams when a manifest is not in walk order. */
class NotInOrder extends Error {}

/** The entries of a stream in strict walk order (compareTreePaths), the root left out; else NotInOrder. */
async function* ordered(entries: AsyncIterable<FileEntry>): AsyncGenerator<FileEntry> {
  let last: string | undefined;
  for await (const e of entries) {
    if (e.path === '/') continue;
    if (last !== undefined && compareTreePaths(last, e.path) >= 0) throw new NotInOrder();
    last = e.path;
    yield e;
  }
}

/**
 * diffManifests of two entry streams in walk order, as a merge join: one entry of each
 * side in memory (and a manifest part of each), whatever the number of files; only the
 * differences are kept. Throws NotInOrder when either stream is not in walk order.
 */
async function diffEntryStreams(a: AsyncIterable<FileEntry>, b: AsyncIterable<FileEntry>): Promise<TreeDiff> {
  const out = new DiffLists();
  const ia = ordered(a)[Symbol.asyncIterator]();
  const ib = ordered(b)[Symbol.asyncIterator]();
  let ra = await ia.next();
  let rb = await ib.next();
  while (!ra.done || !rb.done) {
    const c = ra.done ? 1 : rb.done ? -1 : compareTreePaths(ra.value.path, rb.value.path);
    if (c < 0) {
      const ea = ra.value as FileEntry;
      out.removed.push({ path: ea.path, type: ea.type as FileType, size: entrySize(ea) });
      ra = await ia.next();
    } else if (c > 0) {
      const eb = rb.value as FileEntry;
      out.added.push({ path: eb.path, type: eb.type as FileType, size: entrySize(eb) });
      rb = await ib.next();
    } else {
      out.pair(ra.value as FileEntry, rb.value as FileEntry);
      ra = await ia.next();
      rb = await ib.next();
    }
  }
  return finishTreeDiff(out.added, out.removed, out.changed, out.metadata, []);
}

/**
 * diffManifests of two stored file manifests, streamed (both in walk order, as check-in
 * writes them); a manifest in another order (written by other means) is diffed whole.
 */
export async function diffStoredFiles(lib: Library, a: string, b: string): Promise<TreeDiff> {
  try {
    return await diffEntryStreams(lib.fileEntries(a), lib.fileEntries(b));
  } catch (e) {
    if (!(e instanceof NotInOrder)) throw e;
    return diffManifests(await lib.files(a), await lib.files(b));
  }
}

/**
 * Counts the blocks that marks touch, for marks that come in disk order and do not overlap
 * (a block two neighbouring marks share is counted once): no set of block numbers, so the
 * cost is the number of marks, not of blocks.
 */
class BlockCounter {
  count = 0;
  private last = -1;
  constructor(private readonly bs: number) {}
  /** Blocks holding bytes [from, to). */
  mark(from: number, to: number): void {
    const first = Math.max(Math.floor(from / this.bs), this.last + 1);
    const end = Math.ceil(to / this.bs);
    if (end > first) {
      this.count += end - first;
      this.last = end - 1;
    }
  }
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
export async function diffLayouts(a: RangedSource, b: RangedSource): Promise<BlockDiff> {
  const chunksA = new DigestSet();
  for await (const sl of a.slices()) for (const d of sl.chunks) chunksA.add(d);
  const given = b.layout.volumes.find((v) => v.fs)?.fs?.blockSize;
  const bs = Number.isSafeInteger(given) && (given as number) > 0 ? (given as number) : 4096;
  // every mark below follows B's ranges, which are sorted and do not overlap (checked on decode)
  const used = new BlockCounter(bs);
  const write = new BlockCounter(bs);
  const notShared = new BlockCounter(bs);
  // A's ranges from the first that ends after B's range on, as far as past its end
  const ra = new RangeWindow(a.placedRanges());
  for await (const rb of b.placedRanges()) {
    for (let i = 0; i < rb.disk.length; i++) {
      const disk = rb.disk[i];
      const end = disk + rb.length[i];
      const digest = rb.digest[i];
      const shift = rb.at[i] - disk;
      used.mark(disk, end);
      if (!chunksA.has(digest)) notShared.mark(disk, end);
      if (!ra.reaches(end)) await ra.fill(end);
      ra.skipEnded(disk);
      // the parts of this range that A holds identically; the gaps between them must be written
      let at = disk;
      for (let k = ra.first; k < ra.disk.length && ra.disk[k] < end; k++) {
        const yd = ra.disk[k];
        if (ra.digest[k] !== digest || ra.at[k] - yd !== shift) continue;
        const s = Math.max(disk, yd);
        if (s > at) write.mark(at, s);
        at = Math.max(at, Math.min(end, yd + ra.length[k]));
      }
      if (at < end) write.mark(at, end);
    }
  }
  return {
    blockSize: bs,
    usedBlocks: used.count,
    usedBytes: used.count * bs,
    writeBlocks: write.count,
    writeBytes: write.count * bs,
    writeShare: used.count === 0 ? 0 : write.count / used.count,
    // every block a range of a chunk A lacks touches is a used block
    sharedBytes: (used.count - notShared.count) * bs,
  };
}

/**
 * A layout's placed ranges in disk order as a window that moves forward: from `first` (the
 * first range not yet passed) to as far as the reader asked (`fill`), a slice at a time, so
 * that a walk beside another layout's holds a part or two of it, not the whole layout.
 */
class RangeWindow {
  disk: number[] = [];
  length: number[] = [];
  at: number[] = [];
  digest: string[] = [];
  first = 0;
  private done = false;

  constructor(private readonly it: AsyncGenerator<PlacedRanges>) {}

  /** Whether every range starting before `end` is in the window. */
  reaches(end: number): boolean {
    return this.done || (this.disk.length > 0 && this.disk[this.disk.length - 1] >= end);
  }

  /** Take slices until a range starts at or after `end`, or none are left. */
  async fill(end: number): Promise<void> {
    while (!this.reaches(end)) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        break;
      }
      // what was passed goes before the next slice joins
      const f = this.first;
      this.disk = this.disk.slice(f).concat(r.value.disk);
      this.length = this.length.slice(f).concat(r.value.length);
      this.at = this.at.slice(f).concat(r.value.at);
      this.digest = this.digest.slice(f).concat(r.value.digest);
      this.first = 0;
    }
  }

  /** Pass the ranges that end at or before `offset`. */
  skipEnded(offset: number): void {
    while (this.first < this.disk.length && this.disk[this.first] + this.length[this.first] <= offset) this.first++;
  }
}

export interface VersionDiff {
  a: string;
  b: string;
  files: TreeDiff;
  packages?: PackageDiff | null;
  blocks?: BlockDiff;
  warnings: string[];
}

/**
 * The volumes of a version's layout that name a file manifest, for layoutFilesDigest: from
 * its stored inspection when that settles the choice (one file system, or the volume `part`
 * names), else from the head of its layout manifest. Not the layout itself: at 1,000,000
 * files its blob is ~100 MB of JSON (chunk digests and ranges the file diff never reads),
 * ~250 MB once decoded.
 */
async function fileVolumes(
  lib: Library,
  v: { image: string; number: number; manifest: string },
  part?: string,
): Promise<Pick<LayoutManifest, 'volumes'>> {
  const sets = await versionFileSets(lib.catalog.db, v.image, v.number);
  if (sets && (sets.length <= 1 || part !== undefined)) {
    const volumes = sets.map((s) => ({ id: s.volume, fs: { files: s.files } }) as LayoutVolume);
    return { volumes };
  }
  return lib.layoutHead(v.manifest);
}

export async function diffVersions(
  lib: Library,
  refA: string,
  refB: string,
  opts: { part?: string; packages?: boolean; blocks?: boolean } = {},
): Promise<VersionDiff> {
  const [va, vb] = [await lib.catalog.resolve(refA), await lib.catalog.resolve(refB)];
  // each file manifest read and decoded once, A's first (so A's problem is the one reported);
  // the layouts' volumes only (--blocks walks the layouts a part at a time below)
  const volumesOf = (v: typeof va) => fileVolumes(lib, v, opts.part);
  const la = await volumesOf(va);
  const da = await layoutFilesDigest(lib, va, la, opts.part);
  const lb = await volumesOf(vb);
  const db = await layoutFilesDigest(lib, vb, lb, opts.part);
  const files = await diffStoredFiles(lib, da, db);
  const fa = await lib.filesHead(da);
  const fb = await lib.filesHead(db);
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
  if (opts.blocks) {
    const [sa, sb] = [await lib.versionSource(va.manifest, out.a), await lib.versionSource(vb.manifest, out.b)];
    try {
      out.blocks = await diffLayouts(sa, sb);
    } finally {
      await sa.close();
      await sb.close();
    }
  }
  return out;
}
