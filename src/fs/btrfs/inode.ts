import { corrupt, type ErrorWhere } from '../../util/errors.js';
import type { FileType, Timestamp } from '../types.js';

export const INODE_ITEM_SIZE = 160;

/** struct btrfs_inode_item, decoded. */
export interface InodeItem {
  generation: number;
  size: number;
  nbytes: number;
  nlink: number;
  uid: number;
  gid: number;
  mode: number;
  rdev: number;
  flags: number;
  atime: Timestamp;
  ctime: Timestamp;
  mtime: Timestamp;
  otime: Timestamp;
}

/**
 * Little-endian 64-bit fields as numbers, rounded like Number(BigInt) beyond 2^53 (one
 * rounding of an exact sum): a BigInt per field was most of an inode item's parse cost.
 */
const u64 = (dv: DataView, at: number): number => dv.getUint32(at + 4, true) * 2 ** 32 + dv.getUint32(at, true);
const s64 = (dv: DataView, at: number): number => dv.getInt32(at + 4, true) * 2 ** 32 + dv.getUint32(at, true);

const ts = (dv: DataView, at: number): Timestamp => ({
  sec: s64(dv, at),
  nsec: dv.getUint32(at + 8, true) % 1_000_000_000,
});

/** `where` may be a function: a walk parses thousands of items and names one only on an error. */
export function parseInodeItem(b: Uint8Array, whereOf: ErrorWhere | (() => ErrorWhere)): InodeItem {
  const where = () => (typeof whereOf === 'function' ? whereOf() : whereOf);
  if (b.length < INODE_ITEM_SIZE) throw corrupt(`inode item of ${b.length} bytes`, where());
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  // above 2^53 - 1 exactly when the high word reaches 2^21
  if (dv.getUint32(20, true) >= 2 ** 21) throw corrupt(`inode size ${dv.getBigUint64(16, true)} too large`, where());
  return {
    generation: u64(dv, 0),
    size: u64(dv, 16),
    nbytes: u64(dv, 24),
    nlink: dv.getUint32(40, true),
    uid: dv.getUint32(44, true),
    gid: dv.getUint32(48, true),
    mode: dv.getUint32(52, true),
    rdev: u64(dv, 56),
    flags: dv.getUint32(64, true),
    atime: ts(dv, 112),
    ctime: ts(dv, 124),
    mtime: ts(dv, 136),
    otime: ts(dv, 148),
  };
}

export function typeOfMode(mode: number): FileType {
  switch (mode & 0o170000) {
    case 0o100000:
      return 'file';
    case 0o040000:
      return 'dir';
    case 0o120000:
      return 'symlink';
    case 0o020000:
      return 'char';
    case 0o060000:
      return 'block';
    case 0o010000:
      return 'fifo';
    case 0o140000:
      return 'socket';
    default:
      return 'unknown';
  }
}

/** Linux's new_encode_dev split: 12-bit major, 20-bit minor. */
export function splitRdev(rdev: number): { major: number; minor: number } {
  const d = BigInt(rdev);
  return { major: Number((d >> 20n) & 0xfffn), minor: Number((d & 0xfffffn) | ((d >> 12n) & 0xfff00000n)) };
}
