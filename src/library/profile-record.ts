import type { BlockMap } from '../blockmap/block-map.js';
import { buildBlockMap } from '../blockmap/build.js';
import { NO_INODE, NO_NAME, NO_VOLUME } from '../blockmap/claims.js';
import { KIND_CODE, KINDS } from '../blockmap/kinds.js';
import { readTraceBatches, type TraceBatch } from '../blockmap/trace.js';
import { type BootProfile, PROFILE_KIND, type ProfileEntry, saveProfile } from '../catalog/profiles.js';
import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';

/**
 * Boot working-set profiles (issue 16 item 4): recording one from a trace. Here, in the
 * library layer, so that the library service records one from a trace it is sent (POST
 * .../profile) as the CLI does on a local library; applying one is deploy/profile.ts.
 *
 * A profile is what a boot read, in the order it first read it, said in the words of the
 * block map of the version it was recorded on:
 *
 * - `file` / `directory`: a path (and volume) and a range of offsets inside it;
 * - `extent-tree`: the extent-tree blocks of the file at `path`;
 * - another metadata kind (superblock, group-desc, bitmap, inode-table, journal, boot,
 *   partition-table, lvm-metadata, xattr, reserved): that structure at its disk range;
 * - `unowned`: bytes no file or structure owns (free space, unpartitioned, a volume we do
 *   not read, allocated blocks without an owner), by disk range; `detail` keeps the kind.
 *
 * Every entry keeps the disk range it had on the recorded version (`disk`, `length`), so
 * the profile of version N replays exactly on N. Applied to another version (planProfile),
 * files and directories are found again by path through that version's block map (their
 * new extents, wherever the update put them), extent trees through the file's new inode,
 * fixed structures where that version's map has the same kind at the same place; what is
 * gone is counted, not fetched.
 */

/** Ops of a trace that make a working set: reads (and NBD_CMD_CACHE, a read ahead of need). */
const READ_OPS = new Set(['read', 'R', 'r', 'cache', 'READ']);

export const UNOWNED = new Set<number>([
  KIND_CODE.free,
  KIND_CODE.unpartitioned,
  KIND_CODE.allocated,
  KIND_CODE.volume,
]);
export const PATHED = new Set<number>([KIND_CODE.file, KIND_CODE.directory]);

/** Disk byte ranges already taken, as sorted disjoint [start, end) pairs; add returns what was new. */
export class RangeSet {
  private s: number[] = [];
  private e: number[] = [];

  /** Index of the first range ending after `x`. */
  private after(x: number): number {
    let lo = 0;
    let hi = this.e.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.e[mid] <= x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Add [a, b); return the pieces of it that were not in the set, in order. */
  add(a: number, b: number): Array<[number, number]> {
    if (b <= a) return [];
    const fresh: Array<[number, number]> = [];
    let i = this.after(a);
    let pos = a;
    const first = i;
    while (i < this.s.length && this.s[i] < b) {
      if (this.s[i] > pos) fresh.push([pos, this.s[i]]);
      pos = Math.max(pos, this.e[i]);
      i++;
    }
    if (pos < b) fresh.push([pos, b]);
    // merge [a, b) with ranges first..i-1 (they overlap it) and with touching neighbours
    let ns = Math.min(a, first < this.s.length ? this.s[first] : a);
    let ne = Math.max(b, i > first ? this.e[i - 1] : b);
    let lo = first;
    let hi = i;
    if (lo > 0 && this.e[lo - 1] === ns) {
      lo--;
      ns = this.s[lo];
    }
    if (hi < this.s.length && this.s[hi] === ne) {
      ne = this.e[hi];
      hi++;
    }
    this.s.splice(lo, hi - lo, ns);
    this.e.splice(lo, hi - lo, ne);
    return fresh;
  }

  get bytes(): number {
    let n = 0;
    for (let i = 0; i < this.s.length; i++) n += this.e[i] - this.s[i];
    return n;
  }
}

/** Builds a profile from trace reads, in order, against the map of the version traced. */
export class ProfileRecorder {
  readonly entries: ProfileEntry[] = [];
  records = 0;
  reads = 0;
  private readonly seen = new RangeSet();
  /** (volume, inode) -> path of a file or directory, for extent-tree entries. */
  private inodePaths?: Map<number, string>;

  constructor(readonly map: BlockMap) {}

  addBatch(b: TraceBatch): void {
    for (let i = 0; i < b.count; i++) {
      const a = b.access(i);
      this.records++;
      if (a.op !== undefined && !READ_OPS.has(a.op)) continue;
      this.reads++;
      this.addRead(a.offset, a.length);
    }
  }

  /** One read of disk bytes [offset, offset+length): what of it is new joins the working set. */
  addRead(offset: number, length: number): void {
    const m = this.map;
    const to = Math.min(offset + length, m.diskSize);
    for (const [a, b] of this.seen.add(offset, to)) {
      for (let i = m.indexOf(a); i >= 0 && i < m.count && m.start[i] < b; i++) {
        const s = Math.max(a, m.start[i]);
        const e = Math.min(b, m.end(i));
        this.push(this.entryOf(i, s, e));
      }
    }
  }

  private entryOf(i: number, s: number, e: number): ProfileEntry {
    const m = this.map;
    const k = m.kind[i];
    const v = m.volume[i];
    const out: ProfileEntry = { kind: UNOWNED.has(k) ? 'unowned' : KINDS[k], disk: s, length: e - s };
    if (UNOWNED.has(k)) {
      out.detail = KINDS[k];
      if (v !== NO_VOLUME) out.volume = m.volumes[v].id;
      return out;
    }
    const o = m.owner(i, s, e);
    if (o.volume !== undefined) out.volume = o.volume;
    if (o.inode !== undefined) out.inode = o.inode;
    if (o.fileOffset !== undefined) out.fileOffset = o.fileOffset;
    if (PATHED.has(k)) {
      if (o.path === undefined) {
        // a file or directory the map could not name: keep it by its place
        return { kind: 'unowned', detail: KINDS[k], disk: s, length: e - s, ...(o.volume ? { volume: o.volume } : {}) };
      }
      out.path = o.path;
    } else if (o.detail !== undefined) out.detail = o.detail;
    if (k === KIND_CODE['extent-tree'] && m.ino[i] !== NO_INODE && v !== NO_VOLUME) {
      const p = this.pathOfInode(v, m.ino[i]);
      if (p !== undefined) out.path = p;
    }
    return out;
  }

  private pathOfInode(volume: number, ino: number): string | undefined {
    if (!this.inodePaths) {
      const m = this.map;
      this.inodePaths = new Map();
      for (let i = 0; i < m.count; i++) {
        if (!PATHED.has(m.kind[i]) || m.name[i] === NO_NAME || m.ino[i] === NO_INODE) continue;
        this.inodePaths.set(m.volume[i] * 2 ** 32 + m.ino[i], m.strings[m.name[i]]);
      }
    }
    return this.inodePaths.get(volume * 2 ** 32 + ino);
  }

  /** Append, or extend the last entry when this one continues it (same owner, next bytes). */
  private push(x: ProfileEntry): void {
    const last = this.entries[this.entries.length - 1];
    if (
      last &&
      last.kind === x.kind &&
      last.volume === x.volume &&
      last.path === x.path &&
      last.detail === x.detail &&
      last.disk + last.length === x.disk &&
      (last.fileOffset === undefined
        ? x.fileOffset === undefined
        : x.fileOffset !== undefined && last.fileOffset + last.length === x.fileOffset)
    ) {
      // (an inode-table entry grown this way keeps its first inode)
      last.length += x.length;
      return;
    }
    this.entries.push(x);
  }

  get bytes(): number {
    return this.seen.bytes;
  }
}

/** The block map of a library version, built from the store (metadata read through its chunks). */
export async function versionBlockMap(lib: Library, manifest: string, name: string): Promise<BlockMap> {
  const src = await lib.versionSource(manifest, name);
  try {
    return await buildBlockMap(src);
  } finally {
    await src.close();
  }
}

/**
 * Resolve a trace's reads, in order, against the block map of version `v` of `lib`: the
 * profile (not stored). `trace`: the trace's text chunks; `name` names it in the profile and
 * in errors.
 */
export async function profileOfTrace(
  lib: Library,
  v: { image: string; number: number; manifest: string },
  trace: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  name: string,
  map?: BlockMap,
): Promise<BootProfile> {
  const m = map ?? (await versionBlockMap(lib, v.manifest, `${v.image}@${v.number}`));
  const rec = new ProfileRecorder(m);
  for await (const b of readTraceBatches(trace, name)) rec.addBatch(b);
  if (rec.reads === 0) {
    throw new StrataError('USAGE', `the trace holds no reads (${rec.records} records)`, { file: name });
  }
  return {
    kind: PROFILE_KIND,
    version: 1,
    image: v.image,
    number: v.number,
    manifest: v.manifest,
    recorded: new Date().toISOString(),
    trace: name,
    records: rec.records,
    reads: rec.reads,
    diskSize: m.diskSize,
    entries: rec.entries,
  };
}

/** Record and store with version `v` (replacing its profile) the working set of a trace. */
export async function recordVersionProfile(
  lib: Library,
  v: { image: string; number: number; manifest: string },
  trace: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  name: string,
  opts: { save?: boolean; map?: BlockMap } = {},
): Promise<BootProfile> {
  const p = await profileOfTrace(lib, v, trace, name, opts.map);
  if (opts.save !== false) await saveProfile(lib.catalog.db, p);
  return p;
}
