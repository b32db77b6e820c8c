import { readExact } from '../../io/byte-source.js';
import { crc32cRaw } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { GenCache } from './cache.js';
import type { ExtContext } from './context.js';
import { type ExtNode, FL, I_BLOCK_SIZE, IND_BLOCK, INODE, inodeSeed, isFastSymlink } from './inode.js';

/** struct ext4_extent_header: 12 bytes at the start of i_block and of every tree block. */
export enum EH {
  magic = 0x0, // u16, 0xf30a
  entries = 0x2, // u16
  max = 0x4, // u16
  depth = 0x6, // u16 (0 = leaves follow)
  size = 12,
}
export const EXTENT_MAGIC = 0xf30a;
/** Deepest tree the kernel makes (EXT4_MAX_EXTENT_DEPTH). */
export const EXTENT_MAX_DEPTH = 5;

/** struct ext4_extent (a leaf entry), 12 bytes. */
export enum EE {
  block = 0x0, // u32, first logical block
  len = 0x4, // u16, > 32768 means unwritten (len - 32768 blocks)
  startHi = 0x6, // u16
  startLo = 0x8, // u32
  size = 12,
}
/** ee_len above this marks an unwritten (preallocated) extent. */
export const EXT_INIT_MAX_LEN = 32768;

/** struct ext4_extent_idx (an index entry), 12 bytes. */
export enum EI {
  block = 0x0, // u32, first logical block covered
  leafLo = 0x4, // u32
  leafHi = 0x8, // u16
  size = 12,
}

/** A mapped piece of a file: logical blocks [lblk, lblk+len) at physical block pblk. */
export interface Run {
  lblk: number;
  pblk: number;
  len: number;
  unwritten: boolean;
}

/** Hard cap on the runs of one file. */
const MAX_RUNS = 1 << 22;
const MAP_CACHE = 512;

/** Check an extent node's header (magic, counts, depth `want` unless -1): its entries and depth. */
function extentHeader(
  ctx: ExtContext,
  structure: string,
  v: DataView,
  length: number,
  at: number,
  want: number,
): { entries: number; depth: number } {
  const magic = v.getUint16(EH.magic, true);
  const entries = v.getUint16(EH.entries, true);
  const max = v.getUint16(EH.max, true);
  const depth = v.getUint16(EH.depth, true);
  if (magic !== EXTENT_MAGIC) {
    throw new StrataError('CORRUPT', `bad extent header magic 0x${magic.toString(16)}`, ctx.where(structure, at));
  }
  if (entries > max || EH.size + max * EE.size > length) {
    throw new StrataError('CORRUPT', `extent header says ${entries}/${max} entries`, ctx.where(structure, at));
  }
  if ((want >= 0 && depth !== want) || depth > EXTENT_MAX_DEPTH) {
    throw new StrataError('CORRUPT', `extent node depth ${depth}, expected ${want}`, ctx.where(structure, at));
  }
  return { entries, depth };
}

/** The leaves of a depth-0 extent node into `runs` (checked for order and bounds, merged where contiguous). */
function leafRuns(
  ctx: ExtContext,
  structure: string,
  v: DataView,
  at: number,
  entries: number,
  lo: number,
  hi: number,
  runs: Run[],
): void {
  const sb = ctx.sb;
  for (let i = 0; i < entries; i++) {
    const o = EH.size + i * EE.size;
    const lblk = v.getUint32(o + EE.block, true);
    let len = v.getUint16(o + EE.len, true);
    const unwritten = len > EXT_INIT_MAX_LEN;
    if (unwritten) len -= EXT_INIT_MAX_LEN;
    const pblk = v.getUint16(o + EE.startHi, true) * 2 ** 32 + v.getUint32(o + EE.startLo, true);
    if (len === 0) continue;
    const prev = runs[runs.length - 1];
    if (lblk < lo || lblk + len > hi || (prev && lblk < prev.lblk + prev.len)) {
      throw new StrataError(
        'CORRUPT',
        `extent at logical block ${lblk} (+${len}) overlaps or is out of order`,
        ctx.where(structure, at + o),
      );
    }
    if (pblk + len > sb.blocksCount || pblk < sb.firstDataBlock) {
      throw new StrataError(
        'CORRUPT',
        `extent points at blocks ${pblk}+${len}, outside the file system`,
        ctx.where(structure, at + o),
      );
    }
    if (prev && prev.unwritten === unwritten && prev.lblk + prev.len === lblk && prev.pblk + prev.len === pblk) {
      prev.len += len;
    } else {
      if (runs.length >= MAX_RUNS) {
        throw new StrataError('LIMIT', `more than ${MAX_RUNS} extents`, ctx.where(structure, at));
      }
      runs.push({ lblk, pblk, len, unwritten });
    }
  }
}

/**
 * extentRuns without I/O: the runs when the whole tree sits in i_block (depth 0, what most
 * files have), else undefined. Throws what extentRuns throws for the same root.
 */
export function extentRunsNow(ctx: ExtContext, n: ExtNode): Run[] | undefined {
  return rootExtentRuns(ctx, n.ino, n.raw, n.at);
}

/** extentRunsNow from inode `ino`'s on-disk bytes `raw` (at volume offset `inodeAt`), not decoded. */
export function rootExtentRuns(ctx: ExtContext, ino: number, raw: Uint8Array, inodeAt: number): Run[] | undefined {
  const buf = raw.subarray(INODE.block, INODE.block + I_BLOCK_SIZE);
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (v.getUint16(EH.depth, true) !== 0) return undefined;
  const structure = `ext inode ${ino} extent tree`;
  const at = inodeAt + INODE.block;
  const { entries } = extentHeader(ctx, structure, v, buf.length, at, -1);
  const runs: Run[] = [];
  leafRuns(ctx, structure, v, at, entries, 0, 2 ** 32, runs);
  return runs;
}

/**
 * The runs of an extent-mapped inode, sorted by logical block and merged where contiguous.
 * Checks magic, counts, depth, order and bounds of every node, refuses loops, and verifies
 * the tail checksum of every tree block (a warning when it differs). `meta` collects the
 * tree blocks.
 */
export async function extentRuns(ctx: ExtContext, n: ExtNode, meta?: number[]): Promise<Run[]> {
  const sb = ctx.sb;
  const bs = sb.blockSize;
  const runs: Run[] = [];
  const seen = new Set<number>();
  const structure = `ext inode ${n.ino} extent tree`;
  const seed = ctx.metadataCsum ? inodeSeed(ctx, n) : 0;
  const visit = async (buf: Uint8Array, at: number, want: number, lo: number, hi: number): Promise<void> => {
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const { entries, depth } = extentHeader(ctx, structure, v, buf.length, at, want);
    if (depth === 0) {
      leafRuns(ctx, structure, v, at, entries, lo, hi, runs);
      return;
    }
    for (let i = 0; i < entries; i++) {
      const o = EH.size + i * EI.size;
      const first = v.getUint32(o + EI.block, true);
      const next = i + 1 < entries ? v.getUint32(o + EI.size + EI.block, true) : hi;
      const child = v.getUint16(o + EI.leafHi, true) * 2 ** 32 + v.getUint32(o + EI.leafLo, true);
      if (first < lo || next > hi || next < first) {
        throw new StrataError('CORRUPT', `extent index at logical block ${first} is out of order`, {
          ...ctx.where(structure, at + o),
        });
      }
      if (child >= sb.blocksCount || child < sb.firstDataBlock) {
        throw new StrataError('CORRUPT', `extent index points at block ${child}, outside the file system`, {
          ...ctx.where(structure, at + o),
        });
      }
      if (seen.has(child)) {
        throw new StrataError('LOOP', `extent tree visits block ${child} twice`, ctx.where(structure, at + o));
      }
      seen.add(child);
      meta?.push(child);
      const cb = await readExact(ctx.meta, child * bs, bs, structure);
      if (ctx.metadataCsum) {
        // struct ext4_extent_tail: a crc32c right after the eh_max entries
        const cv = new DataView(cb.buffer, cb.byteOffset, cb.byteLength);
        const tail = EH.size + cv.getUint16(EH.max, true) * EE.size;
        if (tail + 4 <= bs && cv.getUint16(EH.magic, true) === EXTENT_MAGIC) {
          const c = crc32cRaw(seed, cb.subarray(0, tail));
          if (c !== cv.getUint32(tail, true)) ctx.warn(`${structure}: block ${child} checksum mismatch`);
        }
      }
      await visit(cb, child * bs, depth - 1, first, next);
    }
  };
  await visit(n.raw.subarray(INODE.block, INODE.block + I_BLOCK_SIZE), n.at + INODE.block, -1, 0, 2 ** 32);
  return runs;
}

/**
 * The runs of a block-mapped (ext2/3) inode: 12 direct pointers in i_block, then single,
 * double and triple indirect blocks of 32-bit pointers. Holes are zero pointers; indirect
 * blocks used twice are a LOOP. `meta` collects the indirect blocks.
 */
export async function indirectRuns(ctx: ExtContext, n: ExtNode, meta?: number[]): Promise<Run[]> {
  const sb = ctx.sb;
  const bs = sb.blockSize;
  const per = bs / 4;
  const runs: Run[] = [];
  const seen = new Set<number>();
  const structure = `ext inode ${n.ino} block map`;
  const limit = Math.ceil(n.size / bs);
  const v = new DataView(n.raw.buffer, n.raw.byteOffset, n.raw.byteLength);
  const add = (lblk: number, pblk: number, at: number) => {
    if (pblk >= sb.blocksCount) {
      throw new StrataError('CORRUPT', `block pointer ${pblk} lies outside the file system`, ctx.where(structure, at));
    }
    const prev = runs[runs.length - 1];
    if (prev && prev.lblk + prev.len === lblk && prev.pblk + prev.len === pblk) prev.len++;
    else {
      if (runs.length >= MAX_RUNS) throw new StrataError('LIMIT', `more than ${MAX_RUNS} runs`, ctx.where(structure));
      runs.push({ lblk, pblk, len: 1, unwritten: false });
    }
  };
  const walk = async (blk: number, level: number, base: number, at: number): Promise<void> => {
    if (base >= limit) return;
    if (blk >= sb.blocksCount) {
      throw new StrataError('CORRUPT', `indirect block ${blk} lies outside the file system`, ctx.where(structure, at));
    }
    if (seen.has(blk)) throw new StrataError('LOOP', `indirect block ${blk} is used twice`, ctx.where(structure, at));
    seen.add(blk);
    meta?.push(blk);
    const buf = await readExact(ctx.meta, blk * bs, bs, structure);
    const bv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const span = per ** (level - 1);
    for (let i = 0; i < per; i++) {
      const p = bv.getUint32(i * 4, true);
      if (p === 0) continue;
      const lb = base + i * span;
      if (lb >= limit) break;
      if (level === 1) add(lb, p, blk * bs + i * 4);
      else await walk(p, level - 1, lb, blk * bs + i * 4);
    }
  };
  const ptr = (i: number) => INODE.block + i * 4;
  for (let i = 0; i < IND_BLOCK && i < limit; i++) {
    const p = v.getUint32(ptr(i), true);
    if (p) add(i, p, n.at + ptr(i));
  }
  let base = IND_BLOCK;
  for (let level = 1; level <= 3; level++) {
    const p = v.getUint32(ptr(IND_BLOCK - 1 + level), true);
    if (p) await walk(p, level, base, n.at + ptr(IND_BLOCK - 1 + level));
    base += per ** level;
  }
  return runs;
}

/** An inode whose i_block holds no block map at all (inline data, fast symlinks, devices). */
export function hasNoBlockMap(ctx: ExtContext, n: ExtNode): boolean {
  return (
    (n.flags & FL.INLINE_DATA) !== 0 ||
    (!(n.flags & FL.EXTENTS) && (isFastSymlink(ctx, n) || n.pub.type === 'char' || n.pub.type === 'block'))
  );
}

/** The block maps of files: extent trees or indirect blocks, with the runs of recent files kept. */
export class BlockMap {
  private readonly cache = new GenCache<number, Run[]>(MAP_CACHE / 2);

  constructor(private readonly ctx: ExtContext) {}

  /** The file's block runs, sorted by logical block (cached). `meta` collects tree/indirect blocks. */
  async runs(n: ExtNode, meta?: number[]): Promise<Run[]> {
    if (!meta) {
      const hit = this.cache.get(n.ino);
      if (hit) return hit;
    }
    let runs: Run[];
    if (hasNoBlockMap(this.ctx, n)) runs = [];
    else if (n.flags & FL.EXTENTS) runs = await extentRuns(this.ctx, n, meta);
    else runs = await indirectRuns(this.ctx, n, meta);
    if (!meta) this.cache.set(n.ino, runs);
    return runs;
  }

  /** The runs without I/O (cached ones, an inode without a map, a depth-0 extent tree), else undefined. */
  runsNow(n: ExtNode): Run[] | undefined {
    const hit = this.cache.get(n.ino);
    if (hit) return hit;
    if (hasNoBlockMap(this.ctx, n)) return [];
    if (n.flags & FL.EXTENTS) return extentRunsNow(this.ctx, n);
    return undefined;
  }

  clear(): void {
    this.cache.clear();
  }
}
