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

/** Back references of an extent: who points at it. */
export interface ExtentRefs {
  /** (root, inode) pairs of EXTENT_DATA_REF refs (inline or keyed). */
  owners: Set<string>;
  /** SHARED_DATA_REF / SHARED_BLOCK_REF parents (full backrefs: reached through a shared leaf). */
  sharedParents: number;
}

const REF = { TREE_BLOCK: 176, EXTENT_DATA: 178, SHARED_BLOCK: 182, SHARED_DATA: 184, EXTENT_OWNER: 172 } as const;

/** Inline refs after the extent item head (and the tree-block info of tree blocks). */
export function parseInlineRefs(b: Uint8Array, into: ExtentRefs, where: ErrorWhere, treeBlockInfo: boolean): void {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let p = 24 + (treeBlockInfo ? 18 : 0);
  while (p < b.length) {
    const t = b[p];
    let size: number;
    if (t === REF.EXTENT_DATA) size = 1 + 28;
    else if (t === REF.SHARED_DATA) size = 1 + 8 + 4;
    else if (t === REF.TREE_BLOCK || t === REF.EXTENT_OWNER || t === REF.SHARED_BLOCK) size = 9;
    else throw corrupt(`inline ref type ${t}`, where);
    if (p + size > b.length) throw corrupt('inline ref cut short', where);
    if (t === REF.EXTENT_DATA) into.owners.add(`${dv.getBigUint64(p + 1, true)}:${dv.getBigUint64(p + 9, true)}`);
    if (t === REF.SHARED_DATA || t === REF.SHARED_BLOCK) into.sharedParents++;
    p += size;
  }
}

/** A keyed EXTENT_DATA_REF item (root, objectid, offset, count): its (root, inode). */
export function dataRefOwner(b: Uint8Array, where: ErrorWhere): string {
  if (b.length < 28) throw corrupt('extent data ref cut short', where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return `${dv.getBigUint64(0, true)}:${dv.getBigUint64(8, true)}`;
}
