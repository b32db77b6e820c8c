import { StrataError } from '../util/errors.js';
import { KIND_CODE, type Kind } from './kinds.js';

/** No volume / no inode / no name in the packed columns. */
export const NO_VOLUME = 0xffff;
export const NO_NAME = -1;
export const NO_INODE = -1;

/** Most volumes one map describes (the column is 16-bit). */
export const MAX_VOLUMES = NO_VOLUME;

export interface ClaimFields {
  volume?: number;
  ino?: number;
  /** Path (file, directory) or detail (everything else). */
  name?: string;
  /**
   * Offset inside the owning object at `start`: file offset for file, directory and
   * journal; byte offset inside the inode table for inode-table; 0 otherwise.
   */
  objectOffset?: number;
  /** The file system says other files may map the same bytes (reflinks, snapshots): not an overlap to report. */
  shared?: boolean;
}

/**
 * Claims on disk bytes, in the order they were made, packed in growable typed arrays
 * (a 1 GiB Debian image makes ~10^4..10^5 of them). They may overlap; `resolveClaims`
 * turns them into the map.
 */
export class Claims {
  count = 0;
  start = new Float64Array(1024);
  end = new Float64Array(1024);
  kind = new Uint8Array(1024);
  volume = new Uint16Array(1024);
  ino = new Float64Array(1024);
  name = new Int32Array(1024);
  objectOffset = new Float64Array(1024);
  /** 1 where the claim is a shared extent (see ClaimFields.shared). */
  shared = new Uint8Array(1024);
  readonly strings: string[] = [];
  private readonly stringIds = new Map<string, number>();

  constructor(readonly diskSize: number) {}

  intern(s: string): number {
    let id = this.stringIds.get(s);
    if (id === undefined) {
      id = this.strings.length;
      this.strings.push(s);
      this.stringIds.set(s, id);
    }
    return id;
  }

  /** Claim disk bytes [start, start+length) (clipped to the disk; empty claims are dropped). */
  add(start: number, length: number, kind: Kind, f: ClaimFields = {}): void {
    if (!Number.isFinite(start) || !Number.isFinite(length)) {
      throw new StrataError('CORRUPT', `claim ${start}+${length} is not a finite range`, { structure: kind });
    }
    let s = start;
    let off = f.objectOffset ?? 0;
    if (s < 0) {
      off -= s;
      s = 0;
    }
    const e = Math.min(start + length, this.diskSize);
    if (e <= s) return;
    if (this.count === this.start.length) this.grow();
    const i = this.count++;
    this.start[i] = s;
    this.end[i] = e;
    this.kind[i] = KIND_CODE[kind];
    this.volume[i] = f.volume ?? NO_VOLUME;
    this.ino[i] = f.ino ?? NO_INODE;
    this.name[i] = f.name === undefined ? NO_NAME : this.intern(f.name);
    this.objectOffset[i] = off;
    this.shared[i] = f.shared ? 1 : 0;
  }

  private grow(): void {
    const n = this.start.length * 2;
    const g = <T extends Float64Array | Uint8Array | Uint16Array | Int32Array>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a as never);
      return b;
    };
    this.start = g(this.start, (k) => new Float64Array(k));
    this.end = g(this.end, (k) => new Float64Array(k));
    this.kind = g(this.kind, (k) => new Uint8Array(k));
    this.volume = g(this.volume, (k) => new Uint16Array(k));
    this.ino = g(this.ino, (k) => new Float64Array(k));
    this.name = g(this.name, (k) => new Int32Array(k));
    this.objectOffset = g(this.objectOffset, (k) => new Float64Array(k));
    this.shared = g(this.shared, (k) => new Uint8Array(k));
  }
}

/** A window of a volume that is a contiguous range of the disk. */
export interface DiskRun {
  /** Offset inside the volume. */
  volumeOffset: number;
  diskOffset: number;
  length: number;
}

/**
 * Map volume bytes [offset, offset+length) onto the disk through the volume's runs
 * (sorted by volumeOffset, non-overlapping), calling `emit` once per contiguous piece
 * with how far into the range the piece starts. Bytes outside every run are dropped.
 */
export function translate(
  runs: readonly DiskRun[],
  offset: number,
  length: number,
  emit: (diskOffset: number, length: number, skip: number) => void,
): void {
  if (runs.length === 1) {
    const r = runs[0];
    const s = Math.max(offset, r.volumeOffset);
    const e = Math.min(offset + length, r.volumeOffset + r.length);
    if (e > s) emit(r.diskOffset + (s - r.volumeOffset), e - s, s - offset);
    return;
  }
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (runs[mid].volumeOffset + runs[mid].length <= offset) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < runs.length; i++) {
    const r = runs[i];
    if (r.volumeOffset >= offset + length) break;
    const s = Math.max(offset, r.volumeOffset);
    const e = Math.min(offset + length, r.volumeOffset + r.length);
    if (e > s) emit(r.diskOffset + (s - r.volumeOffset), e - s, s - offset);
  }
}
