import { corrupt, type ErrorWhere } from '../../util/errors.js';

export const EXTENT_FLAG_DATA = 1;
export const EXTENT_FLAG_TREE_BLOCK = 2;

/** struct btrfs_extent_item head: reference count, generation, flags. */
export interface ExtentItem {
  refs: number;
  generation: number;
  flags: number;
}

export function parseExtentItem(b: Uint8Array, where: ErrorWhere): ExtentItem {
  if (b.length < 24) throw corrupt('extent item cut short', where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    refs: Number(dv.getBigUint64(0, true)),
    generation: Number(dv.getBigUint64(8, true)),
    flags: Number(dv.getBigUint64(16, true)),
  };
}
