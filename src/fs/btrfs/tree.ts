import { crc32c } from '../../util/crc32c.js';
import { corrupt, StrataError } from '../../util/errors.js';
import type { BtrfsContext } from './context.js';
import { cmpKey, type Item, type Key, key, MAX_U64, type Node } from './node.js';
import { CSUM_NAMES } from './superblock.js';

/** struct btrfs_header is 101 bytes; leaf items are 25, key pointers 33. */
export const HEADER_SIZE = 101;
export const ITEM_SIZE = 25;
export const KEY_PTR_SIZE = 33;
const MAX_LEVEL = 7;

export { cmpKey, type Item, type Key, key, MAX_U64, type Node } from './node.js';

function readKey(dv: DataView, at: number): Key {
  return { oid: dv.getBigUint64(at, true), type: dv.getUint8(at + 8), off: dv.getBigUint64(at + 9, true) };
}

/**
 * Read and check one tree block at a logical address (cached). Concurrent readers of a block
 * not yet cached share one read and one checksum (a batch of inode lookups all descend
 * through the same few nodes at once).
 */
export async function readNode(
  ctx: BtrfsContext,
  logical: number,
  expectLevel: number | undefined,
  what: string,
): Promise<Node> {
  let n = ctx.nodes.get(logical);
  if (!n) {
    let p = ctx.loading.get(logical);
    if (!p) {
      p = loadNode(ctx, logical, what);
      ctx.loading.set(logical, p);
      p.then(
        () => ctx.loading.delete(logical),
        () => ctx.loading.delete(logical),
      );
    }
    n = await p;
  }
  if (expectLevel !== undefined && n.level !== expectLevel)
    throw corrupt(`tree block level ${n.level}, parent says ${expectLevel}`, ctx.where(`btrfs ${what} node`, logical));
  return n;
}

async function loadNode(ctx: BtrfsContext, logical: number, what: string): Promise<Node> {
  const ns = ctx.sb.nodeSize;
  const where = ctx.where(`btrfs ${what} node`, logical);
  if (!Number.isSafeInteger(logical) || logical <= 0 || logical % ctx.sb.sectorSize !== 0)
    throw corrupt('tree block address is not sector aligned', where);
  const structure = `btrfs ${what} node`;
  const copies = ctx.mirrors(logical, ns, structure);
  let raw: Uint8Array | undefined;
  let bad = '';
  for (let m = 0; m < copies; m++) {
    const b = await ctx.readLogical(logical, ns, structure, m, true);
    if (b.length < ns) throw new StrataError('TRUNCATED', 'tree block cut short', where);
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (ctx.sb.csumType === 0) {
      const want = dv.getUint32(0, true);
      const got = crc32c(b.subarray(0x20, ns));
      if (want !== got) {
        bad = `checksum mismatch in copy ${m + 1} of ${copies} (stored ${want.toString(16)}, computed ${got.toString(16)})`;
        continue;
      }
    } else ctx.csumNotVerified(CSUM_NAMES[ctx.sb.csumType]);
    if (m > 0) ctx.warn(`${ctx.name}: btrfs ${what} node at ${logical}: ${bad}; read copy ${m + 1}`);
    raw = b;
    break;
  }
  if (!raw) {
    ctx.warn(`${ctx.name}: btrfs ${what} node at ${logical}: ${bad}`);
    raw = await ctx.readLogical(logical, ns, structure, 0, true);
  }
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const bytenr = Number(dv.getBigUint64(0x30, true));
  if (bytenr !== logical) throw corrupt(`header says bytenr ${bytenr}`, where);
  const nritems = dv.getUint32(0x60, true);
  const level = raw[0x64];
  if (level > MAX_LEVEL) throw corrupt(`level ${level} > ${MAX_LEVEL}`, where);
  const per = level === 0 ? ITEM_SIZE : KEY_PTR_SIZE;
  if (HEADER_SIZE + nritems * per > ns) throw corrupt(`${nritems} items do not fit`, where);
  const keys: Key[] = [];
  const ptrs: number[] = [];
  const sizes: number[] = [];
  for (let i = 0; i < nritems; i++) {
    const at = HEADER_SIZE + i * per;
    const k = readKey(dv, at);
    if (i > 0 && cmpKey(keys[i - 1], k) >= 0) throw corrupt(`keys out of order at item ${i}`, where);
    keys.push(k);
    if (level === 0) {
      const off = dv.getUint32(at + 17, true);
      const size = dv.getUint32(at + 21, true);
      if (HEADER_SIZE + off + size > ns || HEADER_SIZE + off < HEADER_SIZE + nritems * ITEM_SIZE)
        throw corrupt(`item ${i} data [${off}, +${size}) outside the leaf`, where);
      ptrs.push(HEADER_SIZE + off);
      sizes.push(size);
    } else {
      ptrs.push(Number(dv.getBigUint64(at + 17, true)));
      sizes.push(0);
    }
  }
  const node: Node = {
    logical,
    level,
    owner: dv.getBigUint64(0x58, true),
    generation: Number(dv.getBigUint64(0x50, true)),
    keys,
    ptrs,
    sizes,
    raw,
  };
  ctx.nodes.set(logical, node);
  return node;
}

/** A tree root: address and level (from the superblock or a root item). */
export interface TreeRoot {
  logical: number;
  level: number;
  name: string;
}

/**
 * Items with lo <= key <= hi, in key order. Child levels must descend by one, so a
 * pointer loop is caught as a level mismatch; a visit budget bounds DAG blow-ups.
 */
export async function* items(ctx: BtrfsContext, root: TreeRoot, lo: Key, hi: Key): AsyncGenerator<Item> {
  let budget = 1_000_000;
  async function* walk(logical: number, level: number, up: readonly number[]): AsyncGenerator<Item> {
    if (--budget < 0)
      throw new StrataError('LOOP', 'tree walk visits too many blocks', ctx.where(`btrfs ${root.name}`, logical));
    const n = await readNode(ctx, logical, level, root.name);
    const path = [...up, logical];
    if (n.level === 0) {
      for (let i = firstAtLeast(n.keys, lo); i < n.keys.length; i++) {
        const k = n.keys[i];
        if (cmpKey(k, hi) > 0) return;
        yield { key: k, data: n.raw.subarray(n.ptrs[i], n.ptrs[i] + n.sizes[i]), logical: n.logical + n.ptrs[i], path };
      }
      return;
    }
    for (let i = Math.max(0, firstAtLeast(n.keys, lo) - 1); i < n.keys.length; i++) {
      if (cmpKey(n.keys[i], hi) > 0) return;
      if (i + 1 < n.keys.length && cmpKey(n.keys[i + 1], lo) <= 0) continue;
      yield* walk(n.ptrs[i], n.level - 1, path);
    }
  }
  yield* walk(root.logical, root.level, []);
}

/** Index of the first key >= k (keys.length when none): binary search, keys being sorted. */
function firstAtLeast(keys: readonly Key[], k: Key): number {
  let a = 0;
  let b = keys.length;
  while (a < b) {
    const m = (a + b) >> 1;
    if (cmpKey(keys[m], k) < 0) a = m + 1;
    else b = m;
  }
  return a;
}

/** All items of one objectid and type. */
export function collect(ctx: BtrfsContext, root: TreeRoot, oid: bigint, type: number): Promise<Item[]> {
  return itemRange(ctx, root, key(oid, type, 0n), key(oid, type, MAX_U64));
}

/** A tree block already in the cache (checked against the level its parent expects), else read. */
function nodeAt(ctx: BtrfsContext, logical: number, level: number, what: string): Node | Promise<Node> {
  const n = ctx.nodes.get(logical);
  if (n === undefined) return readNode(ctx, logical, level, what);
  if (n.level !== level)
    throw corrupt(`tree block level ${n.level}, parent says ${level}`, ctx.where(`btrfs ${what} node`, logical));
  return n;
}

/** The leaf where key `k` is or would be, and the tree blocks from the root to it. */
async function descend(ctx: BtrfsContext, root: TreeRoot, k: Key): Promise<{ leaf: Node; path: number[] } | undefined> {
  let logical = root.logical;
  let level = root.level;
  const path: number[] = [];
  for (;;) {
    const got = nodeAt(ctx, logical, level, root.name);
    const n = got instanceof Promise ? await got : got;
    path.push(logical);
    if (n.level === 0) return { leaf: n, path };
    const i = firstAtLeast(n.keys, k);
    // the child whose first key is the last one <= k
    const c = i < n.keys.length && cmpKey(n.keys[i], k) === 0 ? i : i - 1;
    if (c < 0) return undefined;
    if (path.length > MAX_LEVEL + 1)
      throw corrupt('tree deeper than 8 levels', ctx.where(`btrfs ${root.name}`, logical));
    logical = n.ptrs[c];
    level = n.level - 1;
  }
}

function itemOf(n: Node, i: number, path: readonly number[]): Item {
  return {
    key: n.keys[i],
    data: n.raw.subarray(n.ptrs[i], n.ptrs[i] + n.sizes[i]),
    logical: n.logical + n.ptrs[i],
    path,
  };
}

/**
 * The item with exactly this key, or undefined: one descent (no generator), the common
 * lookup (inode items, dir items by name hash, root refs).
 */
export async function findItem(ctx: BtrfsContext, root: TreeRoot, k: Key): Promise<Item | undefined> {
  const d = await descend(ctx, root, k);
  if (!d) return undefined;
  const i = firstAtLeast(d.leaf.keys, k);
  if (i >= d.leaf.keys.length || cmpKey(d.leaf.keys[i], k) !== 0) return undefined;
  return itemOf(d.leaf, i, d.path);
}

/**
 * Items with exactly these keys (undefined where absent), in the order asked: keys falling in
 * the leaf the previous one was found in are looked up there, without another descent (the
 * inode items of one directory's entries mostly share a few leaves).
 */
export async function findItems(
  ctx: BtrfsContext,
  root: TreeRoot,
  ks: readonly Key[],
): Promise<Array<Item | undefined>> {
  const order = ks.map((_, i) => i).sort((a, b) => cmpKey(ks[a], ks[b]));
  const out: Array<Item | undefined> = new Array(ks.length);
  let leaf: Node | undefined;
  let path: number[] = [];
  for (const j of order) {
    const k = ks[j];
    const n = leaf?.keys.length ?? 0;
    if (!leaf || n === 0 || cmpKey(k, leaf.keys[0]) < 0 || cmpKey(k, leaf.keys[n - 1]) > 0) {
      const d = await descend(ctx, root, k);
      if (!d) {
        out[j] = undefined;
        continue;
      }
      leaf = d.leaf;
      path = d.path;
    }
    const i = firstAtLeast(leaf.keys, k);
    out[j] = i < leaf.keys.length && cmpKey(leaf.keys[i], k) === 0 ? itemOf(leaf, i, path) : undefined;
  }
  return out;
}

/** Items with lo <= key <= hi, in key order, as an array (no generator: the walk of a directory or a file's extents). */
export async function itemRange(ctx: BtrfsContext, root: TreeRoot, lo: Key, hi: Key): Promise<Item[]> {
  const out: Item[] = [];
  let budget = 1_000_000;
  const walk = async (logical: number, level: number, up: readonly number[]): Promise<boolean> => {
    if (--budget < 0)
      throw new StrataError('LOOP', 'tree walk visits too many blocks', ctx.where(`btrfs ${root.name}`, logical));
    const got = nodeAt(ctx, logical, level, root.name);
    const n = got instanceof Promise ? await got : got;
    const path = [...up, logical];
    if (n.level === 0) {
      for (let i = firstAtLeast(n.keys, lo); i < n.keys.length; i++) {
        if (cmpKey(n.keys[i], hi) > 0) return false;
        out.push(itemOf(n, i, path));
      }
      return true;
    }
    for (let i = Math.max(0, firstAtLeast(n.keys, lo) - 1); i < n.keys.length; i++) {
      if (cmpKey(n.keys[i], hi) > 0) return false;
      if (i + 1 < n.keys.length && cmpKey(n.keys[i + 1], lo) <= 0) continue;
      if (!(await walk(n.ptrs[i], n.level - 1, path))) return false;
    }
    return true;
  };
  await walk(root.logical, root.level, []);
  return out;
}

/** Every tree block of a tree (for metadata regions), pre-order. */
export async function* treeBlocks(ctx: BtrfsContext, root: TreeRoot): AsyncGenerator<Node> {
  let budget = 1_000_000;
  async function* walk(logical: number, level: number): AsyncGenerator<Node> {
    if (--budget < 0)
      throw new StrataError('LOOP', 'tree walk visits too many blocks', ctx.where(`btrfs ${root.name}`, logical));
    const n = await readNode(ctx, logical, level, root.name);
    yield n;
    if (n.level > 0) for (const p of n.ptrs) yield* walk(p, n.level - 1);
  }
  yield* walk(root.logical, root.level);
}
