import { corrupt, type ErrorWhere } from '../../util/errors.js';
import type { FileType } from '../types.js';
import type { Key } from './tree.js';

/** One struct btrfs_dir_item (DIR_ITEM, DIR_INDEX and XATTR_ITEM all use it). */
export interface DirItem {
  location: Key;
  type: number;
  name: Uint8Array;
  data: Uint8Array;
}

const HEAD = 30;

/**
 * Decode the dir items packed in one item's data (hash collisions share an item). `where` may
 * be a function, called only to name an error (a listing parses one item per entry).
 */
export function parseDirItems(b: Uint8Array, whereOf: ErrorWhere | (() => ErrorWhere)): DirItem[] {
  const where = () => (typeof whereOf === 'function' ? whereOf() : whereOf);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: DirItem[] = [];
  let p = 0;
  while (p < b.length) {
    if (p + HEAD > b.length) throw corrupt('dir item header cut short', where());
    const dataLen = dv.getUint16(p + 25, true);
    const nameLen = dv.getUint16(p + 27, true);
    if (p + HEAD + nameLen + dataLen > b.length) throw corrupt('dir item name/data overrun the item', where());
    out.push({
      location: { oid: dv.getBigUint64(p, true), type: b[p + 8], off: dv.getBigUint64(p + 9, true) },
      type: b[p + 29],
      name: b.subarray(p + HEAD, p + HEAD + nameLen),
      data: b.subarray(p + HEAD + nameLen, p + HEAD + nameLen + dataLen),
    });
    p += HEAD + nameLen + dataLen;
  }
  return out;
}

const FT: FileType[] = ['unknown', 'file', 'dir', 'char', 'block', 'fifo', 'socket', 'symlink'];
export const dirType = (t: number): FileType => FT[t] ?? 'unknown';
