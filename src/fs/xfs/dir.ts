import { utf8Name } from '../../util/utf8-name.js';
import type { DirEntry, FileType } from '../types.js';
import { type Bmap, readForkBlocks } from './bmbt.js';
import { dv, u64, type XfsContext } from './context.js';
import type { XfsInode } from './inode.js';

/** Entry types stored with the ftype feature (XFS_DIR3_FT_*). */
export const TYPE_BY_FTYPE: FileType[] = ['unknown', 'file', 'dir', 'char', 'block', 'fifo', 'socket', 'symlink'];

/** Directory data lives in the first 32 GiB of a directory's address space (leaf and free index after). */
export const DIR_LEAF_OFFSET = 32 * 2 ** 30;

/** An entry as read from disk: the type is 'unknown' when the file system records none. */
export type RawEntry = DirEntry;

function checkName(ctx: XfsContext, name: Uint8Array, structure: string, at: number): string {
  for (let i = 0; i < name.length; i++) {
    const b = name[i];
    if (b === 0 || b === 0x2f) throw ctx.corrupt('entry name holds NUL or /', structure, at);
  }
  return utf8Name(name);
}

/**
 * Short-form directory (the entries inside the inode): count, i8count, parent, then entries
 * of namelen, offset, name, [ftype], inode number (4 bytes, or 8 when i8count > 0).
 */
export function shortformEntries(ctx: XfsContext, n: XfsInode): { parent: number; entries: RawEntry[] } {
  const structure = `xfs inode ${n.ino} short-form directory`;
  const b = n.dataFork;
  const size = Math.min(n.size, b.length);
  const at = n.dataForkAt;
  if (size < 6) throw ctx.corrupt(`short-form directory of ${n.size} bytes`, structure, at);
  const v = dv(b);
  const count = b[0];
  const i8 = b[1];
  const isz = i8 ? 8 : 4;
  const ino = (o: number) => (i8 ? u64(v, o) : v.getUint32(o));
  const parent = ino(2);
  const out: RawEntry[] = [];
  let p = 2 + isz;
  for (let i = 0; i < count; i++) {
    if (p + 3 > size) throw ctx.corrupt(`entry ${i} runs past the directory`, structure, at + p);
    const nl = b[p];
    const end = p + 3 + nl + (ctx.ftype ? 1 : 0) + isz;
    if (nl === 0 || end > size)
      throw ctx.corrupt(`entry ${i} (name length ${nl}) runs past the directory`, structure, at + p);
    const name = checkName(ctx, b.subarray(p + 3, p + 3 + nl), structure, at + p);
    const type = ctx.ftype ? (TYPE_BY_FTYPE[b[p + 3 + nl]] ?? 'unknown') : 'unknown';
    out.push({ name, ino: ino(end - isz), type });
    p = end;
  }
  return { parent, entries: out };
}

const DATA_MAGICS = new Set([0x58443242, 0x58443244, 0x58444233, 0x58444433]); // XD2B XD2D XDB3 XDD3
const BLOCK_MAGICS = new Set([0x58443242, 0x58444233]);

/**
 * Entries of a directory stored in blocks (block, leaf, node and B+tree directories alike
 * keep their entries in data blocks below DIR_LEAF_OFFSET; the hash index above it is not
 * needed to list them). Each data block is checked (magic, CRC, entry bounds).
 */
export async function blockEntries(ctx: XfsContext, n: XfsInode, map: Bmap[]): Promise<RawEntry[]> {
  const bs = ctx.bs;
  const dbs = ctx.dirBlkSize;
  const fsbPerDir = dbs / bs;
  const leafBlk = DIR_LEAF_OFFSET / bs;
  const out: RawEntry[] = [];
  // the directory blocks that hold data (each dirblksize, possibly several file blocks)
  const dirBlocks = new Set<number>();
  for (const e of map) {
    if (e.off >= leafBlk) break;
    const last = Math.min(e.off + e.len, leafBlk);
    for (let b = e.off - (e.off % fsbPerDir); b < last; b += fsbPerDir) dirBlocks.add(b);
  }
  for (const blk of [...dirBlocks].sort((a, b) => a - b)) {
    const structure = `xfs inode ${n.ino} directory block ${blk / fsbPerDir}`;
    const buf = await readForkBlocks(ctx, map, blk, fsbPerDir, structure);
    parseDataBlock(ctx, n.ino, buf, structure, out);
  }
  return out;
}

function parseDataBlock(ctx: XfsContext, ino: number, buf: Uint8Array, structure: string, out: RawEntry[]): void {
  const v = dv(buf);
  const magic = v.getUint32(0);
  if (!DATA_MAGICS.has(magic)) throw ctx.corrupt(`bad magic 0x${magic.toString(16)}`, structure);
  const v5 = magic === 0x58444233 || magic === 0x58444433;
  if (v5 !== ctx.crc) throw ctx.corrupt('block version does not match the file system', structure);
  if (v5) {
    ctx.verify(buf, 4, structure);
    const owner = u64(v, 40);
    if (owner !== ino) throw ctx.corrupt(`block owned by inode ${owner}`, structure);
  }
  const hdr = v5 ? 64 : 16;
  let end = buf.length;
  if (BLOCK_MAGICS.has(magic)) {
    const count = v.getUint32(buf.length - 8);
    end = buf.length - 8 - count * 8;
    if (count * 8 > buf.length - 8 - hdr) throw ctx.corrupt(`block tail says ${count} leaf entries`, structure);
  }
  let p = hdr;
  while (p < end) {
    if (v.getUint16(p) === 0xffff) {
      const len = p + 4 <= end ? v.getUint16(p + 2) : 0;
      if (len < 8 || len % 8 !== 0 || p + len > end) throw ctx.corrupt(`free region of ${len} bytes`, structure, p);
      p += len;
      continue;
    }
    if (p + 12 > end) throw ctx.corrupt('entry runs past the block', structure, p);
    const nl = buf[p + 8];
    const len = (8 + 1 + nl + (ctx.ftype ? 1 : 0) + 2 + 7) & ~7;
    if (nl === 0 || p + len > end) throw ctx.corrupt(`entry with name length ${nl} runs past the block`, structure, p);
    const nameBytes = buf.subarray(p + 9, p + 9 + nl);
    const dot = (nl === 1 && nameBytes[0] === 0x2e) || (nl === 2 && nameBytes[0] === 0x2e && nameBytes[1] === 0x2e);
    if (!dot) {
      const name = checkName(ctx, nameBytes, structure, p);
      const type = ctx.ftype ? (TYPE_BY_FTYPE[buf[p + 9 + nl]] ?? 'unknown') : 'unknown';
      out.push({ name, ino: u64(v, p), type });
    }
    p += len;
  }
}
