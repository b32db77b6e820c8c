import { StrataError } from '../../util/errors.js';
import type { ByteRange } from '../types.js';
import type { FatGeometry } from './boot.js';

/** A run of contiguous clusters: `count` clusters starting at cluster `first`. */
export interface ClusterRun {
  first: number;
  count: number;
}

/**
 * The file allocation table (one copy, loaded whole: at most 4 bytes per cluster). Entries
 * are widened to 32 bits; end-of-chain and bad-cluster marks are normalised to the FAT32
 * values so one set of constants serves FAT12, FAT16, FAT32 and exFAT.
 */
export class FatTable {
  private readonly next: Uint32Array;
  readonly maxCluster: number;

  constructor(
    raw: Uint8Array,
    readonly geo: FatGeometry,
    private readonly file: string,
    /** Byte offset of this FAT copy in the volume, for errors. */
    readonly offset: number,
  ) {
    const n = geo.clusterCount + 2;
    this.maxCluster = geo.clusterCount + 1;
    this.next = new Uint32Array(n);
    if (geo.variant === 'fat12') {
      for (let c = 0; c < n; c++) {
        const o = (c * 3) >> 1;
        const v = raw[o] | (raw[o + 1] << 8);
        let e = c & 1 ? v >> 4 : v & 0xfff;
        if (e >= 0xff7) e += 0x0ffff000;
        this.next[c] = e;
      }
    } else if (geo.variant === 'fat16') {
      for (let c = 0; c < n; c++) {
        let e = raw[2 * c] | (raw[2 * c + 1] << 8);
        if (e >= 0xfff7) e += 0x0fff0000;
        this.next[c] = e;
      }
    } else {
      const dv = new DataView(raw.buffer, raw.byteOffset, raw.length);
      const mask = geo.variant === 'fat32' ? 0x0fffffff : 0xffffffff;
      for (let c = 0; c < n; c++) {
        let e = dv.getUint32(4 * c, true) & mask;
        if (geo.variant === 'exfat' && e >= 0xfffffff7) e &= 0x0fffffff;
        this.next[c] = e;
      }
    }
  }

  /** The raw (normalised) entry of a cluster: 0 free, 0x0ffffff7 bad, >= 0x0ffffff8 end of chain. */
  entry(c: number): number {
    return this.next[c];
  }

  isFree(c: number): boolean {
    return this.next[c] === 0;
  }

  freeClusters(): number {
    let free = 0;
    for (let c = 2; c <= this.maxCluster; c++) if (this.next[c] === 0) free++;
    return free;
  }

  /**
   * Follow a chain from `start` into runs. `limit` bounds the clusters taken (the file's size
   * in clusters, or a directory's maximum); a chain that revisits a cluster fails with LOOP,
   * one that leaves the heap or hits a free or bad cluster fails with CORRUPT.
   */
  chain(start: number, limit: number, what: string): { runs: ClusterRun[]; clusters: number; ended: boolean } {
    const runs: ClusterRun[] = [];
    if (start === 0 || limit <= 0) return { runs, clusters: 0, ended: true };
    const cap = Math.min(limit, this.geo.clusterCount + 1);
    let c = start;
    let taken = 0;
    let ended = false;
    while (taken < cap) {
      if (c < 2 || c > this.maxCluster) {
        throw this.error('CORRUPT', `${what}: cluster ${c} lies outside the heap (2..${this.maxCluster})`, c);
      }
      const last = runs[runs.length - 1];
      if (last && last.first + last.count === c) last.count++;
      else runs.push({ first: c, count: 1 });
      taken++;
      const e = this.next[c];
      if (e >= 0x0ffffff8) {
        ended = true;
        break;
      }
      if (e === 0x0ffffff7) throw this.error('CORRUPT', `${what}: chain runs into bad cluster ${c}`, c);
      if (e === 0) throw this.error('CORRUPT', `${what}: chain runs into free cluster ${c}`, c);
      c = e;
    }
    this.checkNoCycle(runs, what);
    return { runs, clusters: taken, ended };
  }

  /** A chain that revisits a cluster has two runs that overlap. */
  private checkNoCycle(runs: ClusterRun[], what: string): void {
    if (runs.length <= 1) return;
    const sorted = runs.slice().sort((a, b) => a.first - b.first);
    for (let i = 1; i < sorted.length; i++) {
      const p = sorted[i - 1];
      if (sorted[i].first < p.first + p.count) {
        throw this.error('LOOP', `${what}: the cluster chain revisits cluster ${sorted[i].first}`, sorted[i].first);
      }
    }
  }

  /** Byte ranges of the heap whose clusters are in use per this FAT. */
  usedRanges(): ByteRange[] {
    const out: ByteRange[] = [];
    const { heapOffset, clusterSize } = this.geo;
    let runStart = -1;
    for (let c = 2; c <= this.maxCluster + 1; c++) {
      const used = c <= this.maxCluster && this.next[c] !== 0;
      if (used && runStart < 0) runStart = c;
      else if (!used && runStart >= 0) {
        out.push({ offset: heapOffset + (runStart - 2) * clusterSize, length: (c - runStart) * clusterSize });
        runStart = -1;
      }
    }
    return out;
  }

  private error(code: 'CORRUPT' | 'LOOP', message: string, cluster: number): StrataError {
    const width = this.geo.variant === 'fat12' ? 1.5 : this.geo.variant === 'fat16' ? 2 : 4;
    return new StrataError(code, message, {
      file: this.file,
      structure: `${this.geo.variant} FAT entry of cluster ${cluster}`,
      offset: this.offset + Math.floor(cluster * width),
    });
  }
}
