/** B-tree keys, leaf items and decoded tree blocks: the shapes the tree reader and the context share. */

/** A B-tree key: objectid, type, offset (u64s kept as bigint: ids such as -9 and hashes use all 64 bits). */
export interface Key {
  oid: bigint;
  type: number;
  off: bigint;
}

export const key = (oid: bigint | number, type: number, off: bigint | number): Key => ({
  oid: BigInt(oid),
  type,
  off: BigInt(off),
});
export const MAX_U64 = 0xffffffffffffffffn;

export function cmpKey(a: Key, b: Key): number {
  if (a.oid !== b.oid) return a.oid < b.oid ? -1 : 1;
  if (a.type !== b.type) return a.type < b.type ? -1 : 1;
  if (a.off !== b.off) return a.off < b.off ? -1 : 1;
  return 0;
}

/** A leaf item: its key and its data (a view into the node). */
export interface Item {
  key: Key;
  data: Uint8Array;
  /** Logical address of the item's data (node address + offset), for metadata regions. */
  logical: number;
  /** Tree blocks from the root down to the leaf holding the item. */
  path: readonly number[];
}

/** A decoded tree block (struct btrfs_header plus items or key pointers). */
export interface Node {
  logical: number;
  level: number;
  owner: bigint;
  generation: number;
  keys: Key[];
  /** Leaves: item data ranges; nodes: child block pointers. */
  ptrs: number[];
  sizes: number[];
  raw: Uint8Array;
}
