import type { FileType, Timestamp } from '../fs/types.js';
import type { BlockDiff } from '../inspect/block-diff.js';
import type { FileRecord, FileTree } from '../inspect/file-manifest.js';
import { diffPackages, type PackageDiff } from '../inspect/package-diff.js';
import { diffTrees, type TreeDiff } from '../inspect/tree-diff.js';
import type { OsInspection } from '../inspect/types.js';
import { versionInspection, xattrDigest } from './inspection.js';
import type { Library } from './library.js';
import { versionFiles } from './library-verbs.js';
import type { FilesManifest, LayoutManifest } from './manifest.js';

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
  const [fa, fb] = [await versionFiles(lib, refA, opts.part), await versionFiles(lib, refB, opts.part)];
  const files = await diffTrees(manifestTree(fa), manifestTree(fb));
  const out: VersionDiff = {
    a: `${va.image}@${va.number}`,
    b: `${vb.image}@${vb.number}`,
    files,
    warnings: [...files.warnings],
  };
  if (opts.packages) {
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
  if (opts.blocks) out.blocks = diffLayouts(await lib.layout(va.manifest), await lib.layout(vb.manifest));
  return out;
}
