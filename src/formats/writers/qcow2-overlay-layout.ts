import { StrataError } from '../../util/errors.js';
import { encodeFeatureNames } from './qcow2-writer.js';

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
export const L2_ENTRIES = CS / 8;
export const REFCOUNT_ORDER = 4; // 16-bit refcounts
export const RC_PER_BLOCK = CS / 2;
export const HEADER_LENGTH = 112;
export const INCOMPAT_DIRTY = 1;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_NAMES = 0x6803f857;
export const COPIED = 0x80000000;
export const COMPRESSED = 0x40000000;
export const TWO32 = 2 ** 32;
export const OFFSET_MASK_HI = 0x00ffffff;

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
      dv.setUint32(k * 8, COPIED + Math.floor(h / TWO32));
      dv.setUint32(k * 8 + 4, (h % TWO32) + t.zero[k]);
    } else if (t.zero[k]) dv.setUint32(k * 8 + 4, 1);
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
  const b = new Uint8Array(Math.max(cs, Math.ceil((table.length * 8) / cs) * cs));
  const dv = new DataView(b.buffer);
  for (let i = 0; i < table.length; i++) {
    const h = table[i];
    if (h) {
      dv.setUint32(i * 8, flag + Math.floor(h / TWO32));
      dv.setUint32(i * 8 + 4, h % TWO32);
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
  if (name.length === 0 || name.length > 1023) {
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
  v.setUint32(0, 0x514649fb);
  v.setUint32(4, 3);
  v.setUint32(20, CLUSTER_BITS);
  setU64(v, 24, virtualSize);
  v.setUint32(36, l1Size);
  setU64(v, 40, l1Offset);
  setU64(v, 48, rtOffset);
  v.setUint32(56, rtClusters);
  setU64(v, 72, INCOMPAT_DIRTY); // until a clean close
  v.setUint32(96, REFCOUNT_ORDER);
  v.setUint32(100, HEADER_LENGTH);
  let at = HEADER_LENGTH;
  for (const e of exts) {
    v.setUint32(at, e.type);
    v.setUint32(at + 4, e.data.length);
    buf.set(e.data, at + 8);
    at += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  at += 8; // end-of-extensions marker (zeros)
  setU64(v, 8, at);
  v.setUint32(16, name.length);
  buf.set(name, at);
  at += name.length;
  return buf.subarray(0, Math.ceil(at / 512) * 512);
}

function featureNames(): Uint8Array {
  return encodeFeatureNames([
    [0, 0, 'dirty'],
    [0, 1, 'corrupt'],
    [1, 0, 'lazy refcounts'],
  ]);
}
