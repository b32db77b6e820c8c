import type { ByteRun, CacheIntrospector, Classified } from '../io/introspective-cache.js';
import type { BlockMap } from './block-map.js';
import { NO_INODE, NO_NAME, NO_VOLUME } from './claims.js';
import { classOf, KIND_CODE, KINDS } from './kinds.js';

/** The prefetchers a block map offers (issue 27), in the order their plans come back. */
export const MAP_PREFETCHERS = ['meta', 'dir', 'file', 'siblings', 'disk'] as const;

const DATA = KIND_CODE.file;
const DIR = KIND_CODE.directory;
const TABLE = KIND_CODE['inode-table'];
const CLASS = KINDS.map((k) => classOf(k));
const META = new Uint8Array(KINDS.length);
for (let k = 0; k < KINDS.length; k++) META[k] = CLASS[k] === 'metadata' ? 1 : 0;

interface Entry {
  /** A record of the object (for its kind and key). */
  rec: number;
  ino: number;
  /** Bytes the map holds for it. */
  size: number;
  /** Disk byte where its data starts. */
  disk: number;
}

/**
 * What the live cache (io/introspective-cache.ts) asks of a disk, answered from its block
 * map: one source of truth with `strata trace resolve` (a request is classified by the
 * record holding its first byte, as TraceResolver's first owner) and with the simulator
 * (src/analytics/cache-sim.ts), whose prefetchers these are, in bytes:
 *
 * - `meta`: a directory read fetches the inode-table bytes of its entries (the records a
 *   lookup or a stat of them reads next): each entry's inode record, in directory disk order;
 *   an inode-table read fetches the table's next bytes (the next inodes, in inode order).
 * - `dir`: a directory read fetches the whole directory, then its subdirectories' blocks.
 * - `file`: a file read fetches the file's next bytes from where the read entered it,
 *   following the file's own extents (across fragmentation, not the disk's next blocks).
 * - `siblings`: a read of a small file (at most the cap) fetches the next files of its
 *   directory in disk order, whole, while they fit in the cap.
 * - `disk`: the disk's next bytes after the request (the live cache refills it at half and
 *   grows it while a reader consumes it, as the kernel's on-demand read-ahead does): a block
 *   server's read-ahead, so that the policy is a superset of it. File systems made in one
 *   pass (mkfs -d, an installer) lay files and their metadata out in the order a walk reads
 *   them, so the disk's next bytes are often the next step too; the other prefetchers fetch
 *   what it cannot reach (a file's next extent elsewhere, the inode records of a directory's
 *   entries, subdirectories across groups).
 *
 * Entries are what the map knows: files and directories that own bytes (an empty file or a
 * fast symlink has no record, so no inode of theirs is prefetched).
 */
export class BlockMapIntrospector implements CacheIntrospector {
  readonly prefetchers: readonly string[] = MAP_PREFETCHERS;
  private objects?: Map<number, number[]>;
  private children?: Map<string, Entry[]>;
  private tables?: Map<number, number[]>;

  constructor(
    readonly map: BlockMap,
    /** `diskAlways: false`: `disk` only where no other prefetcher has a plan (default: after every request). */
    private readonly opts: { diskAlways?: boolean } = {},
  ) {}

  classify(offset: number, _length: number): Classified {
    const i = this.map.indexOf(Math.min(offset, this.map.diskSize - 1));
    const k = i < 0 ? KIND_CODE.unpartitioned : this.map.kind[i];
    return { class: CLASS[k], kind: KINDS[k], ref: i };
  }

  isMetadata(offset: number, length: number): boolean {
    const m = this.map;
    const end = Math.min(offset + length, m.diskSize);
    for (let i = m.indexOf(offset); i >= 0 && i < m.count && m.start[i] < end; i++) if (META[m.kind[i]]) return true;
    return false;
  }

  /** The first owner of the request, clipped to it: what `trace resolve` lists first. */
  owner(offset: number, length: number, c: Classified): unknown {
    if (c.ref < 0) return undefined;
    return this.map.owner(c.ref, offset, Math.min(offset + length, this.map.diskSize));
  }

  plan(
    offset: number,
    length: number,
    _c: Classified,
    enabled: ReadonlySet<string>,
    cap: (prefetcher: string) => number,
  ): Array<{ prefetcher: string; runs: ByteRun[] }> {
    const m = this.map;
    const end = Math.min(m.diskSize, offset + length);
    const out: Array<{ prefetcher: string; runs: ByteRun[] }> = [];
    const add = (prefetcher: string, runs: ByteRun[]) => {
      if (runs.length === 0) return;
      const have = out.find((p) => p.prefetcher === prefetcher);
      if (have) have.runs.push(...runs);
      else out.push({ prefetcher, runs });
    };
    for (let i = m.indexOf(offset); i >= 0 && i < m.count && m.start[i] < end; i++) {
      const k = m.kind[i];
      if (k === TABLE && enabled.has('meta')) add('meta', this.tableAfter(i, end, cap('meta')));
      if (k !== DATA && k !== DIR) continue;
      const into = m.objectOffset[i] + Math.max(0, offset - m.start[i]);
      const named = m.name[i] !== NO_NAME && m.volume[i] !== NO_VOLUME;
      if (k === DIR) {
        if (enabled.has('meta') && named) add('meta', this.entryInodes(i, cap('meta')));
        if (enabled.has('dir')) {
          const budget = cap('dir');
          const runs = this.objectRuns(i, 0, budget);
          let left = budget - sum(runs);
          if (named) {
            for (const c of this.childrenOf(m.volume[i], m.strings[m.name[i]])) {
              if (left <= 0) break;
              if (m.kind[c.rec] !== DIR) continue;
              const n = Math.min(c.size, left);
              runs.push(...this.objectRuns(c.rec, 0, n));
              left -= n;
            }
          }
          add('dir', runs);
        }
      } else {
        if (enabled.has('file')) add('file', this.objectRuns(i, into, cap('file')));
        if (enabled.has('siblings') && named) add('siblings', this.siblingRuns(i, cap('siblings')));
      }
    }
    if ((out.length === 0 || this.opts.diskAlways !== false) && enabled.has('disk') && end < m.diskSize)
      add('disk', [{ offset: end, length: Math.min(cap('disk'), m.diskSize - end) }]);
    return out;
  }

  /**
   * The inode-table bytes after `end` in the table record i starts (and the records that
   * continue it on the disk), within `cap`: a walk that stats inodes reads the table in
   * inode order (find, ls -l, a mount's orphan scan), so the next inodes are its next step.
   */
  private tableAfter(i: number, end: number, cap: number): ByteRun[] {
    const m = this.map;
    const out: ByteRun[] = [];
    let left = cap;
    for (let j = i; j < m.count && left > 0 && m.kind[j] === TABLE && m.volume[j] === m.volume[i]; j++) {
      if (j > i && m.start[j] !== m.end(j - 1)) break;
      const s = Math.max(end, m.start[j]);
      const e = Math.min(m.end(j), s + left);
      if (s < e) {
        out.push({ offset: s, length: e - s });
        left -= e - s;
      }
    }
    return out;
  }

  /** Disk runs of object bytes [from, from+len) of the object record i belongs to, in object order. */
  objectRuns(i: number, from: number, len: number): ByteRun[] {
    const m = this.map;
    const out: ByteRun[] = [];
    const to = from + len;
    for (const k of this.recordsOf(i)) {
      const o = m.objectOffset[k];
      const n = m.end(k) - m.start[k];
      const s = Math.max(from, o);
      const e = Math.min(to, o + n);
      if (s < e) out.push({ offset: m.start[k] + (s - o), length: e - s });
    }
    return out;
  }

  /** The inode records of directory record i's entries, in the directory's disk order, within `cap` bytes. */
  private entryInodes(i: number, cap: number): ByteRun[] {
    const m = this.map;
    const vol = m.volume[i];
    const size = m.volumes[vol]?.inodeSize ?? 0;
    if (!size) return [];
    const out: ByteRun[] = [];
    let bytes = 0;
    for (const c of this.childrenOf(vol, m.strings[m.name[i]])) {
      const at = this.inodeAt(vol, c.ino, size);
      if (at === undefined) continue;
      if (bytes + size > cap) break;
      out.push({ offset: at, length: size });
      bytes += size;
    }
    return out;
  }

  private siblingRuns(i: number, cap: number): ByteRun[] {
    const m = this.map;
    const p = m.strings[m.name[i]];
    const sib = this.childrenOf(m.volume[i], parentOf(p));
    const me = sib.findIndex((c) => this.keyOf(c.rec) === this.keyOf(i));
    if (me < 0 || sib[me].size > cap) return [];
    const out: ByteRun[] = [];
    let budget = cap;
    for (let j = me + 1; j < sib.length && budget > 0; j++) {
      const c = sib[j];
      if (m.kind[c.rec] !== DATA || c.size > budget) continue;
      out.push(...this.objectRuns(c.rec, 0, c.size));
      budget -= c.size;
    }
    return out;
  }

  private keyOf(k: number): number {
    const m = this.map;
    return (
      (m.volume[k] === NO_VOLUME ? 0 : m.volume[k] + 1) * 2 ** 32 +
      (m.ino[k] !== NO_INODE ? m.ino[k] : 2 ** 31 + m.name[k])
    );
  }

  private recordsOf(i: number): number[] {
    const m = this.map;
    if (!this.objects) {
      const objects = new Map<number, number[]>();
      for (let k = 0; k < m.count; k++) {
        const kind = m.kind[k];
        if ((kind !== DATA && kind !== DIR) || m.name[k] === NO_NAME) continue;
        const key = this.keyOf(k);
        let l = objects.get(key);
        if (!l) objects.set(key, (l = []));
        l.push(k);
      }
      for (const l of objects.values()) l.sort((x, y) => m.objectOffset[x] - m.objectOffset[y]);
      this.objects = objects;
    }
    return m.name[i] === NO_NAME ? [i] : (this.objects.get(this.keyOf(i)) ?? [i]);
  }

  /** The entries of directory (volume, path) that own bytes, in the disk order of their first byte. */
  childrenOf(vol: number, dirPath: string): readonly Entry[] {
    const m = this.map;
    if (!this.children) {
      const children = new Map<string, Entry[]>();
      const objs = new Map<string, Entry & { vol: number; path: string }>();
      for (let k = 0; k < m.count; k++) {
        const kind = m.kind[k];
        if ((kind !== DATA && kind !== DIR) || m.name[k] === NO_NAME) continue;
        const path = m.strings[m.name[k]];
        const key = `${m.volume[k]}\0${path}`;
        const len = m.end(k) - m.start[k];
        const o = objs.get(key);
        if (!o) objs.set(key, { rec: k, ino: m.ino[k], size: len, disk: m.start[k], vol: m.volume[k], path });
        else {
          o.size += len;
          if (m.objectOffset[k] === 0) o.disk = m.start[k];
        }
      }
      for (const o of objs.values()) {
        if (o.path === '/') continue;
        const key = `${o.vol}\0${parentOf(o.path)}`;
        let l = children.get(key);
        if (!l) children.set(key, (l = []));
        l.push(o);
      }
      for (const l of children.values()) l.sort((x, y) => x.disk - y.disk);
      this.children = children;
    }
    return this.children.get(`${vol}\0${dirPath}`) ?? [];
  }

  /** Disk byte of inode `ino`'s record in volume `vol`, from the inode-table records. */
  private inodeAt(vol: number, ino: number, size: number): number | undefined {
    const m = this.map;
    if (ino === NO_INODE) return undefined;
    if (!this.tables) {
      const tables = new Map<number, number[]>();
      for (let k = 0; k < m.count; k++) {
        if (m.kind[k] !== TABLE || m.ino[k] === NO_INODE || m.volume[k] === NO_VOLUME) continue;
        let l = tables.get(m.volume[k]);
        if (!l) tables.set(m.volume[k], (l = []));
        l.push(k);
      }
      this.tables = tables;
    }
    for (const k of this.tables.get(vol) ?? []) {
      const n = Math.floor((m.end(k) - m.start[k]) / size);
      const first = m.ino[k] + Math.floor(m.objectOffset[k] / size);
      if (ino >= first && ino < first + n) return m.start[k] + (ino - first) * size;
    }
    return undefined;
  }
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

function sum(runs: ByteRun[]): number {
  let n = 0;
  for (const r of runs) n += r.length;
  return n;
}
