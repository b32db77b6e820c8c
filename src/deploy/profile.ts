import type { BlockMap } from '../blockmap/block-map.js';
import { NO_INODE, NO_NAME, NO_VOLUME } from '../blockmap/claims.js';
import { KIND_CODE, KINDS } from '../blockmap/kinds.js';
import type { BootProfile, ProfileEntry } from '../catalog/profiles.js';
import { PATHED, RangeSet } from '../library/profile-record.js';

/**
 * Applying boot working-set profiles (issue 16 item 4) to the version a deploy copies; their
 * shape is the catalog's (catalog/profiles.ts), recording one from a trace the library's
 * (library/profile-record.ts).
 */
export {
  type BootProfile,
  checkProfile,
  PROFILE_KIND,
  type ProfileEntry,
} from '../catalog/profiles.js';
export { ProfileRecorder, RangeSet } from '../library/profile-record.js';

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
