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
 * The Emulab measure from two layout manifests: B's stored bytes (its ranges) that differ
 * from A at the same disk offset (must be written to turn A into B), and B's bytes whose
 * chunk A holds too (shared). Granularity is the manifest's chunks (a file's 1 MiB pieces,
 * 64 KiB of metadata); block counts are in units of B's file-system block size.
 */
export function diffLayouts(a: LayoutManifest, b: LayoutManifest): BlockDiff {
  const pa = pieces(a);
  const pb = pieces(b);
  const chunksA = new Set(a.chunks);
  let used = 0;
  let same = 0;
  let shared = 0;
  let j = 0;
  for (const x of pb) {
    used += x.length;
    if (chunksA.has(x.chunk)) shared += x.length;
    const end = x.disk + x.length;
    while (j < pa.length && pa[j].disk + pa[j].length <= x.disk) j++;
    for (let k = j; k < pa.length && pa[k].disk < end; k++) {
      const y = pa[k];
      if (y.chunk !== x.chunk || y.at - y.disk !== x.at - x.disk) continue;
      same += Math.min(end, y.disk + y.length) - Math.max(x.disk, y.disk);
    }
  }
  const blockSize = b.volumes.find((v) => v.fs)?.fs?.blockSize ?? 4096;
  const write = used - same;
  return {
    blockSize,
    usedBlocks: Math.ceil(used / blockSize),
    usedBytes: used,
    writeBlocks: Math.ceil(write / blockSize),
    writeBytes: write,
    writeShare: used === 0 ? 0 : write / used,
    sharedBytes: shared,
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
