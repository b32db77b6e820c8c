import { StrataError } from '../../util/errors.js';
import {
  DEFAULT_REFCOUNT_ORDER,
  EXT_BACKING_FORMAT,
  EXT_FEATURE_NAMES,
  EXT_HEADER_SIZE,
  encodeFeatureNames,
  FEATURE_COMPATIBLE,
  FEATURE_INCOMPATIBLE,
  HDR,
  INCOMPAT_DIRTY,
  L2_ENTRY_SIZE,
  MAX_BACKING_NAME,
  OFLAG_COPIED,
  OFLAG_ZERO,
  QCOW2_MAGIC,
  TWO32,
  V3_HEADER_LENGTH_WITH_COMPRESSION,
} from '../qcow2/layout.js';

/**
 * The on-disk layout of Strata's qcow2 overlays (version 3, 64 KiB clusters, 16-bit
 * refcounts): constants, the header, and the encoders of L1, L2 and refcount tables.
 */

/** What the overlay records as its backing file (qemu resolves a relative path from the overlay's folder). */
export interface OverlayBackingRef {
  path: string;
  /** qemu's format name: raw, qcow2, vmdk, vpc, vhdx, vdi. */
  format?: string;
}

export const CLUSTER_BITS = 16;
export const CS = 1 << CLUSTER_BITS;
export const L2_ENTRIES = CS / L2_ENTRY_SIZE;
export const REFCOUNT_ORDER = DEFAULT_REFCOUNT_ORDER; // 16-bit refcounts
export const RC_PER_BLOCK = CS / 2;
const HEADER_LENGTH = V3_HEADER_LENGTH_WITH_COMPRESSION;

/** One L2 table in memory: host offset per cluster (0: none) and the reads-as-zero flag. */
export interface L2 {
  host: Float64Array;
  zero: Uint8Array;
}

export function u64(dv: DataView, at: number): number {
  return dv.getUint32(at) * TWO32 + dv.getUint32(at + 4);
}

export function setU64(dv: DataView, at: number, n: number): void {
  dv.setUint32(at, Math.floor(n / TWO32));
  dv.setUint32(at + 4, n % TWO32);
}

export function encodeL2(t: L2): Uint8Array {
  const b = new Uint8Array(CS);
  const dv = new DataView(b.buffer);
  for (let k = 0; k < L2_ENTRIES; k++) {
    const h = t.host[k];
    if (h) {
      dv.setUint32(k * L2_ENTRY_SIZE, OFLAG_COPIED + Math.floor(h / TWO32));
      dv.setUint32(k * L2_ENTRY_SIZE + 4, (h % TWO32) + t.zero[k] * OFLAG_ZERO);
    } else if (t.zero[k]) dv.setUint32(k * L2_ENTRY_SIZE + 4, OFLAG_ZERO);
  }
  return b;
}

export function encodeRefBlock(blk: Uint16Array): Uint8Array {
  const b = new Uint8Array(CS);
  const dv = new DataView(b.buffer);
  for (let k = 0; k < RC_PER_BLOCK; k++) if (blk[k]) dv.setUint16(k * 2, blk[k]);
  return b;
}

/** A table of host offsets (L1 or refcount table), padded to whole clusters. */
export function encodeOffsets(table: Float64Array, flag: number, cs: number): Uint8Array {
  const b = new Uint8Array(Math.max(cs, Math.ceil((table.length * L2_ENTRY_SIZE) / cs) * cs));
  const dv = new DataView(b.buffer);
  for (let i = 0; i < table.length; i++) {
    const h = table[i];
    if (h) {
      dv.setUint32(i * L2_ENTRY_SIZE, flag + Math.floor(h / TWO32));
      dv.setUint32(i * L2_ENTRY_SIZE + 4, h % TWO32);
    }
  }
  return b;
}

export function buildHeader(
  file: string,
  virtualSize: number,
  ref: OverlayBackingRef,
  l1Size: number,
  l1Offset: number,
  rtOffset: number,
  rtClusters: number,
): Uint8Array {
  const enc = new TextEncoder();
  const name = enc.encode(ref.path);
  if (name.length === 0 || name.length > MAX_BACKING_NAME) {
    throw new StrataError('USAGE', `backing file name must be 1 to 1023 bytes, not ${name.length}`, {
      file,
      structure: 'qcow2 backing file name',
    });
  }
  const exts: Array<{ type: number; data: Uint8Array }> = [];
  if (ref.format) exts.push({ type: EXT_BACKING_FORMAT, data: enc.encode(ref.format) });
  exts.push({ type: EXT_FEATURE_NAMES, data: featureNames() });
  const buf = new Uint8Array(CS);
  const v = new DataView(buf.buffer);
  v.setUint32(HDR.magic, QCOW2_MAGIC);
  v.setUint32(HDR.version, 3);
  v.setUint32(HDR.clusterBits, CLUSTER_BITS);
  setU64(v, HDR.size, virtualSize);
  v.setUint32(HDR.l1Size, l1Size);
  setU64(v, HDR.l1TableOffset, l1Offset);
  setU64(v, HDR.refcountTableOffset, rtOffset);
  v.setUint32(HDR.refcountTableClusters, rtClusters);
  setU64(v, HDR.incompatibleFeatures, INCOMPAT_DIRTY); // until a clean close
  v.setUint32(HDR.refcountOrder, REFCOUNT_ORDER);
  v.setUint32(HDR.headerLength, HEADER_LENGTH);
  let at = HEADER_LENGTH;
  for (const e of exts) {
    v.setUint32(at, e.type);
    v.setUint32(at + 4, e.data.length);
    buf.set(e.data, at + EXT_HEADER_SIZE);
    at += EXT_HEADER_SIZE + Math.ceil(e.data.length / 8) * 8;
  }
  at += EXT_HEADER_SIZE; // end-of-extensions marker (zeros)
  setU64(v, HDR.backingFileOffset, at);
  v.setUint32(HDR.backingFileSize, name.length);
  buf.set(name, at);
  at += name.length;
  return buf.subarray(0, Math.ceil(at / 512) * 512);
}

function featureNames(): Uint8Array {
  return encodeFeatureNames([
    [FEATURE_INCOMPATIBLE, 0, 'dirty'],
    [FEATURE_INCOMPATIBLE, 1, 'corrupt'],
    [FEATURE_COMPATIBLE, 0, 'lazy refcounts'],
  ]);
}
