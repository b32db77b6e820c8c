import type { ByteRange } from '../fs/types.js';
import { StrataError } from '../util/errors.js';
import { NO_INODE, NO_NAME, NO_VOLUME } from './claims.js';
import { classOf, isUnused, KIND_CODE, KINDS, type Kind, type KindClass } from './kinds.js';
import type { MapColumns } from './resolve.js';

/** A volume the map refers to (records hold its index). */
export interface MapVolume {
  /** As discoverVolumes names it: "1", "5", "vg/lv", "" for the whole disk. */
  id: string;
  scheme: string;
  type: string;
  content?: string;
  /** File-system kind when one was read ('ext4', ...). */
  fs?: string;
  blockSize?: number;
  /** Bytes per inode record, for inode-table ranges. */
  inodeSize?: number;
}

/** One owner of a byte range, as `whatis` and `blockmap --json` print it (absent fields do not apply). */
export interface Owner {
  start: number;
  length: number;
  kind: Kind;
  volume?: string;
  fs?: string;
  inode?: number;
  /** inode-table: the last inode the range touches (`inode` is the first). */
  lastInode?: number;
  path?: string;
  fileOffset?: number;
  detail?: string;
}

export interface KindSummary {
  kind: Kind;
  class: KindClass;
  bytes: number;
  records: number;
}

const PATH_KINDS = new Uint8Array(KINDS.length);
for (const k of ['file', 'directory'] as const) PATH_KINDS[KIND_CODE[k]] = 1;
const FILE_OFFSET_KINDS = new Uint8Array(KINDS.length);
for (const k of ['file', 'directory', 'journal'] as const) FILE_OFFSET_KINDS[KIND_CODE[k]] = 1;
const INODE_TABLE = KIND_CODE['inode-table'];

/**
 * The owner of disk bytes [s, e) of one record: kind code `k`, volume index `v`, inode, name
 * id `nm` (read through `name`) and the offset inside the owning object at `s`.
 */
export function ownerOf(
  volumes: readonly MapVolume[],
  name: (id: number) => string,
  s: number,
  e: number,
  k: number,
  v: number,
  ino: number,
  nm: number,
  into: number,
): Owner {
  const o: Owner = { start: s, length: e - s, kind: KINDS[k] };
  if (v !== NO_VOLUME) {
    const vol = volumes[v];
    o.volume = vol.id;
    if (vol.fs && k !== KIND_CODE.volume) o.fs = vol.fs;
  }
  if (k === INODE_TABLE && ino !== NO_INODE) {
    const size = (v !== NO_VOLUME && volumes[v].inodeSize) || 0;
    if (size > 0) {
      o.inode = ino + Math.floor(into / size);
      o.lastInode = ino + Math.floor((into + (e - s) - 1) / size);
    }
  } else if (ino !== NO_INODE) o.inode = ino;
  if (nm !== NO_NAME) {
    if (PATH_KINDS[k]) o.path = name(nm);
    else o.detail = name(nm);
  }
  if (FILE_OFFSET_KINDS[k]) o.fileOffset = into;
  return o;
}

/** The last index in [lo, hi] of sorted `a` whose value is at most `x` (lo when none is). */
export function lastAtMost(a: Float64Array, x: number, lo0: number, hi0: number): number {
  let lo = lo0;
  let hi = hi0;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (a[mid] <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * The block map of a virtual disk: sorted, non-overlapping records that cover
 * [0, diskSize) exactly once, in columns (typed arrays). Record i spans
 * [start[i], start[i+1]) (the last one ends at diskSize) and says who owns it: a kind
 * (see kinds.ts), a volume index, an inode, a name (path for files and directories,
 * detail otherwise) and the offset inside the owning object at start[i].
 * Lookups are a binary search over `start`.
 */
export class BlockMap {
  readonly count: number;
  readonly start: Float64Array;
  readonly kind: Uint8Array;
  readonly volume: Uint16Array;
  readonly ino: Float64Array;
  readonly name: Int32Array;
  readonly objectOffset: Float64Array;

  constructor(
    readonly diskSize: number,
    cols: MapColumns,
    readonly strings: readonly string[],
    readonly volumes: readonly MapVolume[],
    readonly warnings: string[] = [],
  ) {
    this.count = cols.count;
    this.start = cols.start;
    this.kind = cols.kind;
    this.volume = cols.volume;
    this.ino = cols.ino;
    this.name = cols.name;
    this.objectOffset = cols.objectOffset;
  }

  /** End of record i (exclusive). */
  end(i: number): number {
    return i + 1 < this.count ? this.start[i + 1] : this.diskSize;
  }

  /** Index of the record holding disk byte `offset` (-1 outside the disk). */
  indexOf(offset: number): number {
    if (!(offset >= 0 && offset < this.diskSize)) return -1;
    return lastAtMost(this.start, offset, 0, this.count - 1);
  }

  /** The kind of the record holding `offset` (undefined outside the disk). */
  kindAt(offset: number): Kind | undefined {
    const i = this.indexOf(offset);
    return i < 0 ? undefined : KINDS[this.kind[i]];
  }

  /** Record i, clipped to [from, to) (whole record by default). */
  owner(i: number, from = this.start[i], to = this.end(i)): Owner {
    const s = Math.max(from, this.start[i]);
    const e = Math.min(to, this.end(i));
    const into = this.objectOffset[i] + (s - this.start[i]);
    return ownerOf(
      this.volumes,
      (id) => this.strings[id],
      s,
      e,
      this.kind[i],
      this.volume[i],
      this.ino[i],
      this.name[i],
      into,
    );
  }

  /** Every owner of disk bytes [offset, offset+length), clipped to that range. */
  whatis(offset: number, length = 1): Owner[] {
    const to = rangeEnd(offset, length, this.diskSize);
    const out: Owner[] = [];
    for (let i = this.indexOf(offset); i < this.count && this.start[i] < to; i++) out.push(this.owner(i, offset, to));
    return out;
  }

  /** Every record, in disk order. */
  *records(): Generator<Owner> {
    for (let i = 0; i < this.count; i++) yield this.owner(i);
  }

  /** The used-space view: every byte that is neither free nor unpartitioned, as merged ranges. */
  used(): ByteRange[] {
    const out: ByteRange[] = [];
    for (let i = 0; i < this.count; i++) {
      if (isUnused(this.kind[i])) continue;
      const s = this.start[i];
      const e = this.end(i);
      const last = out[out.length - 1];
      if (last && last.offset + last.length === s) last.length += e - s;
      else out.push({ offset: s, length: e - s });
    }
    return out;
  }

  /** Bytes and records per kind (kinds with none left out), in vocabulary order. */
  summary(): KindSummary[] {
    const bytes = new Float64Array(KINDS.length);
    const recs = new Float64Array(KINDS.length);
    for (let i = 0; i < this.count; i++) {
      bytes[this.kind[i]] += this.end(i) - this.start[i];
      recs[this.kind[i]]++;
    }
    return kindRows(bytes, recs);
  }
}

/** The end of a whatis range [offset, offset + length) on a disk of `diskSize` bytes (clipped to it), or a USAGE error. */
export function rangeEnd(offset: number, length: number, diskSize: number): number {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 1) {
    throw new StrataError('USAGE', `bad range ${offset}+${length}`);
  }
  if (offset >= diskSize) {
    throw new StrataError('USAGE', `offset ${offset} lies past the disk end (${diskSize})`);
  }
  return Math.min(offset + length, diskSize);
}

/** Bytes and records per kind code as KindSummary rows (kinds with none left out), in vocabulary order. */
export function kindRows(bytes: Float64Array, recs: Float64Array): KindSummary[] {
  const out: KindSummary[] = [];
  for (let k = 0; k < KINDS.length; k++) {
    if (recs[k] > 0) out.push({ kind: KINDS[k], class: classOf(KINDS[k]), bytes: bytes[k], records: recs[k] });
  }
  return out;
}
