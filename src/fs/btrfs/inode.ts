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

const ts = (dv: DataView, at: number): Timestamp => ({
  sec: Number(dv.getBigInt64(at, true)),
  nsec: dv.getUint32(at + 8, true) % 1_000_000_000,
});

export function parseInodeItem(b: Uint8Array, where: ErrorWhere): InodeItem {
  if (b.length < INODE_ITEM_SIZE) throw corrupt(`inode item of ${b.length} bytes`, where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const size = dv.getBigUint64(16, true);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`inode size ${size} too large`, where);
  return {
    generation: Number(dv.getBigUint64(0, true)),
    size: Number(size),
    nbytes: Number(dv.getBigUint64(24, true)),
    nlink: dv.getUint32(40, true),
    uid: dv.getUint32(44, true),
    gid: dv.getUint32(48, true),
    mode: dv.getUint32(52, true),
    rdev: Number(dv.getBigUint64(56, true)),
    flags: Number(dv.getBigUint64(64, true) & 0xffffffffn),
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
