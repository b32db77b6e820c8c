import type { BlockMap } from '../blockmap/block-map.js';
import { NO_INODE, NO_NAME, NO_VOLUME } from '../blockmap/claims.js';
import { KIND_CODE, KINDS } from '../blockmap/kinds.js';
import type { TraceBatch } from '../blockmap/trace.js';
import { StrataError } from '../util/errors.js';

/**
 * Boot working-set profiles (issue 16 item 4).
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
export const PROFILE_KIND = 'strata.profile';

export interface ProfileEntry {
  kind: string;
  volume?: string;
  path?: string;
  inode?: number;
  /** file, directory, journal: offset inside the object where the range starts. */
  fileOffset?: number;
  detail?: string;
  /** Disk offset on the recorded version. */
  disk: number;
  length: number;
}

export interface BootProfile {
  kind: typeof PROFILE_KIND;
  version: 1;
  /** The version it was recorded on. */
  image: string;
  number: number;
  manifest: string;
  recorded: string;
  /** Name of the trace file it was made from. */
  trace: string;
  /** Trace records read, and of them the reads that counted (others: writes, flushes ...). */
  records: number;
  reads: number;
  diskSize: number;
  entries: ProfileEntry[];
}

/** Ops of a trace that make a working set: reads (and NBD_CMD_CACHE, a read ahead of need). */
const READ_OPS = new Set(['read', 'R', 'r', 'cache', 'READ']);

const UNOWNED = new Set<number>([KIND_CODE.free, KIND_CODE.unpartitioned, KIND_CODE.allocated, KIND_CODE.volume]);
const PATHED = new Set<number>([KIND_CODE.file, KIND_CODE.directory]);

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

/** A working set as disk ranges in the order to fetch them, and how the profile's entries landed. */
export interface ProfilePlan {
  ranges: Array<{ offset: number; length: number }>;
  bytes: number;
  /** Entries found at the same disk place, found elsewhere (moved files), and not found. */
  same: number;
  moved: number;
  missing: number;
  /** Paths the profile names that the version does not hold. */
  missingPaths: string[];
}

/**
 * The disk ranges of `map`'s version that a profile names, in the profile's order: files
 * and directories by path and file offset (their extents in this version), extent trees by
 * the file's inode here, fixed structures where this version has the same kind at the same
 * place, unowned ranges where they were. A range fetched once is not listed again.
 */
export function planProfile(profile: BootProfile, map: BlockMap): ProfilePlan {
  const m = map;
  const volIndex = new Map(m.volumes.map((v, i) => [v.id, i]));
  let byPath: Map<string, number[]> | undefined;
  let trees: Map<number, number[]> | undefined;
  const pathRecords = (vol: number, p: string): number[] | undefined => {
    if (!byPath) {
      byPath = new Map();
      for (let i = 0; i < m.count; i++) {
        if (!PATHED.has(m.kind[i]) || m.name[i] === NO_NAME) continue;
        const key = `${m.volume[i]}\0${m.strings[m.name[i]]}`;
        let l = byPath.get(key);
        if (!l) byPath.set(key, (l = []));
        l.push(i);
      }
      for (const l of byPath.values()) l.sort((x, y) => m.objectOffset[x] - m.objectOffset[y]);
    }
    return byPath.get(`${vol}\0${p}`);
  };
  const treeRecords = (vol: number, ino: number): number[] => {
    if (!trees) {
      trees = new Map();
      const code = KIND_CODE['extent-tree'];
      for (let i = 0; i < m.count; i++) {
        if (m.kind[i] !== code || m.ino[i] === NO_INODE) continue;
        const key = m.volume[i] * 2 ** 32 + m.ino[i];
        let l = trees.get(key);
        if (!l) trees.set(key, (l = []));
        l.push(i);
      }
    }
    return trees.get(vol * 2 ** 32 + ino) ?? [];
  };

  const taken = new RangeSet();
  const plan: ProfilePlan = { ranges: [], bytes: 0, same: 0, moved: 0, missing: 0, missingPaths: [] };
  const missingPaths = new Set<string>();
  const emit = (a: number, b: number): void => {
    for (const [s, e] of taken.add(a, Math.min(b, m.diskSize))) {
      const last = plan.ranges[plan.ranges.length - 1];
      if (last && last.offset + last.length === s) last.length += e - s;
      else plan.ranges.push({ offset: s, length: e - s });
      plan.bytes += e - s;
    }
  };
  const count = (where: Array<[number, number]>, x: ProfileEntry): void => {
    if (where.length === 0) {
      plan.missing++;
      if (x.path !== undefined) missingPaths.add(x.path);
      return;
    }
    if (where.length === 1 && where[0][0] === x.disk && where[0][1] === x.disk + x.length) plan.same++;
    else plan.moved++;
    for (const [a, b] of where) emit(a, b);
  };

  for (const x of profile.entries) {
    const vol = x.volume === undefined ? NO_VOLUME : (volIndex.get(x.volume) ?? -1);
    const where: Array<[number, number]> = [];
    if (x.kind === 'unowned') {
      if (x.disk < m.diskSize) where.push([x.disk, Math.min(m.diskSize, x.disk + x.length)]);
    } else if ((x.kind === 'file' || x.kind === 'directory') && x.path !== undefined && vol >= 0) {
      const from = x.fileOffset ?? 0;
      const to = from + x.length;
      for (const i of pathRecords(vol, x.path) ?? []) {
        if (KINDS[m.kind[i]] !== x.kind) continue;
        const o = m.objectOffset[i];
        const len = m.end(i) - m.start[i];
        const s = Math.max(from, o);
        const e = Math.min(to, o + len);
        if (s >= e) continue;
        const d = m.start[i] + (s - o);
        const last = where[where.length - 1];
        if (last && last[1] === d) last[1] = d + (e - s);
        else where.push([d, d + (e - s)]);
      }
    } else if (x.kind === 'extent-tree' && x.path !== undefined && vol >= 0) {
      const recs = pathRecords(vol, x.path);
      const ino = recs?.length ? m.ino[recs[0]] : NO_INODE;
      if (ino !== NO_INODE) for (const i of treeRecords(vol, ino)) where.push([m.start[i], m.end(i)]);
    } else {
      // a structure at a fixed place: kept where this version's map has the same kind there
      const code = (KIND_CODE as Record<string, number>)[x.kind];
      const end = Math.min(m.diskSize, x.disk + x.length);
      if (code !== undefined && x.disk < m.diskSize) {
        for (let i = m.indexOf(x.disk); i >= 0 && i < m.count && m.start[i] < end; i++) {
          if (m.kind[i] !== code) continue;
          const s = Math.max(x.disk, m.start[i]);
          const e = Math.min(end, m.end(i));
          const last = where[where.length - 1];
          if (last && last[1] === s) last[1] = e;
          else where.push([s, e]);
        }
      }
    }
    count(where, x);
  }
  plan.missingPaths = [...missingPaths];
  return plan;
}

/** What `profile show` prints: bytes per file or structure, in first-access order, and coverage. */
export interface ProfileSummary {
  image: string;
  number: number;
  recorded: string;
  trace: string;
  records: number;
  reads: number;
  entries: number;
  bytes: number;
  /** Share of the disk the working set is. */
  coverage: number;
  byKind: Array<{ kind: string; entries: number; bytes: number }>;
  /** Files and directories: bytes of each the boot read, and of its whole size in the map when given. */
  byFile: Array<{ kind: string; volume?: string; path: string; bytes: number; first: number }>;
}

export function summariseProfile(p: BootProfile): ProfileSummary {
  const kinds = new Map<string, { entries: number; bytes: number }>();
  const files = new Map<string, ProfileSummary['byFile'][number]>();
  let bytes = 0;
  p.entries.forEach((x, n) => {
    bytes += x.length;
    let k = kinds.get(x.kind);
    if (!k) kinds.set(x.kind, (k = { entries: 0, bytes: 0 }));
    k.entries++;
    k.bytes += x.length;
    if ((x.kind === 'file' || x.kind === 'directory') && x.path !== undefined) {
      const key = `${x.volume ?? ''}\0${x.path}`;
      let f = files.get(key);
      if (!f) {
        f = { kind: x.kind, path: x.path, bytes: 0, first: n };
        if (x.volume !== undefined) f.volume = x.volume;
        files.set(key, f);
      }
      f.bytes += x.length;
    }
  });
  return {
    image: p.image,
    number: p.number,
    recorded: p.recorded,
    trace: p.trace,
    records: p.records,
    reads: p.reads,
    entries: p.entries.length,
    bytes,
    coverage: p.diskSize > 0 ? bytes / p.diskSize : 0,
    byKind: [...kinds].map(([kind, v]) => ({ kind, ...v })).sort((a, b) => b.bytes - a.bytes),
    byFile: [...files.values()],
  };
}

/** Check a profile read back (from the catalog or a file): the shape planProfile relies on. */
export function checkProfile(p: unknown, where: string): BootProfile {
  const bad = (why: string) => new StrataError('CORRUPT', why, { file: where, structure: 'boot profile' });
  const x = p as BootProfile;
  if (!x || typeof x !== 'object' || x.kind !== PROFILE_KIND || x.version !== 1) {
    throw bad(`not a ${PROFILE_KIND} (version 1)`);
  }
  if (!Array.isArray(x.entries)) throw bad('no entries');
  x.entries.forEach((e, i) => {
    if (
      !e ||
      typeof e.kind !== 'string' ||
      !Number.isSafeInteger(e.disk) ||
      e.disk < 0 ||
      !Number.isSafeInteger(e.length) ||
      e.length <= 0 ||
      (e.fileOffset !== undefined && (!Number.isSafeInteger(e.fileOffset) || e.fileOffset < 0)) ||
      (e.path !== undefined && typeof e.path !== 'string') ||
      (e.volume !== undefined && typeof e.volume !== 'string')
    ) {
      throw bad(`entry ${i} is malformed`);
    }
  });
  return x;
}
