import { StrataError } from '../../util/errors.js';
import { dv, u64, type XfsContext } from './context.js';
import { FMT, type XfsInode } from './inode.js';

/** One mapping of a fork: file blocks [off, off+len) at file-system block `fsb`. */
export interface Bmap {
  off: number;
  fsb: number;
  len: number;
  unwritten: boolean;
}

/** Most extents we map for one fork. */
export const MAX_EXTENTS = 1 << 22;

/**
 * Decode a 16-byte BMBT record (xfs_bmbt_rec: flag:1, startoff:54, startblock:52, blockcount:21).
 */
export function decodeRec(v: DataView, o: number): Bmap {
  const w0 = v.getUint32(o);
  const w1 = v.getUint32(o + 4);
  const w2 = v.getUint32(o + 8);
  const w3 = v.getUint32(o + 12);
  return {
    unwritten: w0 >>> 31 === 1,
    off: (w0 & 0x7fffffff) * 2 ** 23 + (w1 >>> 9),
    fsb: (w1 & 0x1ff) * 2 ** 43 + w2 * 2 ** 11 + (w3 >>> 21),
    len: w3 & 0x1fffff,
  };
}

/**
 * A fork's extent list, sorted by file block: from the inode (extents format) or from the
 * BMBT B+tree rooted in it (btree format). `treeBlocks` collects the B+tree's blocks
 * (fs block numbers) for the block map.
 */
export async function forkExtents(ctx: XfsContext, n: XfsInode, attr: boolean, treeBlocks?: number[]): Promise<Bmap[]> {
  const fork = attr ? n.attrFork : n.dataFork;
  const forkAt = attr ? n.attrForkAt : n.dataForkAt;
  const format = attr ? n.aformat : n.format;
  const count = attr ? n.anextents : n.nextents;
  const structure = `xfs inode ${n.ino} ${attr ? 'attribute' : 'data'} fork`;
  const out: Bmap[] = [];
  if (!fork) return out;
  const push = (r: Bmap, at: number) => {
    if (r.len === 0) throw ctx.corrupt('extent of zero blocks', structure, at);
    const prev = out[out.length - 1];
    if (prev && r.off < prev.off + prev.len) {
      throw ctx.corrupt(`extent at file block ${r.off} overlaps or is out of order`, structure, at);
    }
    if (!ctx.fsbRangeOk(r.fsb, r.len)) {
      throw ctx.corrupt(`extent at block ${r.fsb} (+${r.len}) lies outside the file system`, structure, at);
    }
    if (out.length >= MAX_EXTENTS)
      throw new StrataError('LIMIT', `more than ${MAX_EXTENTS} extents`, ctx.where(structure));
    out.push(r);
  };
  const fv = dv(fork);
  if (format === FMT.EXTENTS) {
    if (count * 16 > fork.length) throw ctx.corrupt(`${count} extents do not fit the fork`, structure, forkAt);
    for (let i = 0; i < count; i++) push(decodeRec(fv, i * 16), forkAt + i * 16);
    return out;
  }
  if (format !== FMT.BTREE) return out;
  // root in the inode: xfs_bmdr_block (level, numrecs), keys, then pointers
  const level = fv.getUint16(0);
  const nrecs = fv.getUint16(2);
  const rootMax = Math.floor((fork.length - 4) / 16);
  if (level === 0 || level > 9 || nrecs === 0 || nrecs > rootMax) {
    throw ctx.corrupt(`B+tree root with level ${level} and ${nrecs} records`, structure, forkAt);
  }
  const hdr = ctx.crc ? 72 : 24;
  const magic = ctx.crc ? 0x424d4133 : 0x424d4150;
  const leafMax = Math.floor((ctx.bs - hdr) / 16);
  const nodeMax = Math.floor((ctx.bs - hdr) / 16);
  const seen = new Set<number>();
  const visit = async (fsb: number, lvl: number, from: number): Promise<void> => {
    const at = ctx.fsbOffset(fsb, structure, from);
    if (seen.has(fsb))
      throw new StrataError('LOOP', `B+tree block ${fsb} is reached twice`, ctx.where(structure, from));
    seen.add(fsb);
    if (seen.size > MAX_EXTENTS) throw new StrataError('LIMIT', 'B+tree too large', ctx.where(structure));
    treeBlocks?.push(fsb);
    const bs = `${structure} B+tree block ${fsb}`;
    const buf = await ctx.read(at, ctx.bs, bs);
    const v = dv(buf);
    if (v.getUint32(0) !== magic) throw ctx.corrupt(`bad magic 0x${v.getUint32(0).toString(16)}`, bs, at);
    if (ctx.crc) {
      ctx.verify(buf, 64, bs, at);
      const owner = u64(v, 56);
      if (owner !== n.ino) throw ctx.corrupt(`block owned by inode ${owner}`, bs, at);
    }
    const l = v.getUint16(4);
    const k = v.getUint16(6);
    if (l !== lvl) throw ctx.corrupt(`level ${l}, expected ${lvl}`, bs, at);
    if (lvl === 0) {
      if (k > leafMax) throw ctx.corrupt(`leaf holds ${k} records`, bs, at);
      for (let i = 0; i < k; i++) push(decodeRec(v, hdr + i * 16), at + hdr + i * 16);
      return;
    }
    if (k === 0 || k > nodeMax) throw ctx.corrupt(`node holds ${k} keys`, bs, at);
    const ptrs = hdr + nodeMax * 8;
    for (let i = 0; i < k; i++) await visit(u64(v, ptrs + i * 8), lvl - 1, at + ptrs + i * 8);
  };
  const ptrs = 4 + rootMax * 8;
  for (let i = 0; i < nrecs; i++) await visit(u64(fv, ptrs + i * 8), level - 1, forkAt + ptrs + i * 8);
  return out;
}

/** The extent covering file block `blk` (binary search), or undefined for a hole. */
export function findExtent(map: Bmap[], blk: number): Bmap | undefined {
  let lo = 0;
  let hi = map.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const e = map[mid];
    if (blk < e.off) hi = mid - 1;
    else if (blk >= e.off + e.len) lo = mid + 1;
    else return e;
  }
  return undefined;
}

/**
 * Read `count` file blocks from `blk` of a fork through its map: holes read as zeros.
 */
export async function readForkBlocks(
  ctx: XfsContext,
  map: Bmap[],
  blk: number,
  count: number,
  structure: string,
): Promise<Uint8Array> {
  const bs = ctx.bs;
  const out = new Uint8Array(count * bs);
  let b = blk;
  while (b < blk + count) {
    const e = findExtent(map, b);
    if (!e) {
      b++;
      continue;
    }
    const n = Math.min(e.off + e.len, blk + count) - b;
    if (!e.unwritten) {
      const at = ctx.fsbOffset(e.fsb + (b - e.off), structure);
      out.set(await ctx.read(at, n * bs, structure), (b - blk) * bs);
    }
    b += n;
  }
  return out;
}
