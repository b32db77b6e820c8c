import { readExact } from '../../io/byte-source.js';
import { crc32cRaw } from '../../util/crc32c.js';
import { memoryShare } from '../../util/memory.js';
import { buildNameListing, type NameListingBuilder, TYPE_OF_CODE, UNKNOWN_CODE } from '../name-listing.js';
import type { DirEntry, NameListing } from '../types.js';
import type { BlockMap } from './block-map.js';
import { type ExtContext, td } from './context.js';
import { type ExtNode, FL, I_BLOCK_SIZE, INODE, inodeSeed } from './inode.js';
import { INCOMPAT } from './superblock.js';
import { inlineData } from './xattr.js';

/**
 * struct ext4_dir_entry_2 (and ext4_dir_entry without the filetype feature, where name_len
 * is 16 bits and there is no file_type): 8 bytes, then the name; rec_len covers the padding.
 */
export enum DIRENT {
  inode = 0x0, // u32 (0: unused)
  recLen = 0x4, // u16 (65536 in 64 KiB blocks is stored as 0 or 65535)
  nameLen = 0x6, // u8 (u16 without filetype)
  fileType = 0x7, // u8 (TYPE_BY_DIRENT)
  name = 0x8,
}

/**
 * struct ext4_dir_entry_tail: the 12-byte fake entry that ends a leaf block with
 * metadata_csum (inode 0, rec_len 12, name_len 0, file_type 0xde, then the crc32c).
 */
export enum DIR_TAIL {
  reservedZero = 0x0, // u32
  recLen = 0x4, // u16 (12)
  nameLen = 0x6, // u8 (0)
  fileType = 0x7, // u8 (0xde)
  checksum = 0x8, // u32
  size = 12,
}
export const DIR_TAIL_FT = 0xde;

/**
 * htree (dx) blocks. The root is block 0 of an INDEX directory: fake '.' and '..' entries,
 * struct dx_root_info at 0x18, then limit/count and the dx_entries at 0x20. Interior nodes
 * are a fake entry of inode 0 spanning the block, then limit/count at 8. With metadata_csum
 * a struct dx_tail (reserved u32, crc32c u32) follows the `limit` entries.
 */
export const DX_ROOT_COUNT_OFFSET = 0x20;
export const DX_NODE_COUNT_OFFSET = 0x08;
/** struct dx_countlimit: limit u16, count u16 (over the first dx_entry's hash). */
export enum DX_COUNTLIMIT {
  limit = 0x0,
  count = 0x2,
}
/** struct dx_entry: hash u32, block u32. */
export const DX_ENTRY_SIZE = 8;
/** struct dx_tail. */
export enum DX_TAIL {
  reserved = 0x0, // u32
  checksum = 0x4, // u32
  size = 8,
}

export const TYPE_BY_DIRENT = TYPE_OF_CODE;

/** Names kept for lookups: ~160 bytes each by estimate (more in practice), 1/8 of the memory budget (200,000 at the default 256 MiB): at 1/4 a 64 MiB `ls -R -l` of 200,000 entries peaked at 65 MiB of live data. */
const dirCacheEntries = () => Math.floor(memoryShare(1 / 8, 4 << 20, 64 << 20) / 160);
/** Blocks per read of a directory. */
const DIR_READ_BLOCKS = 64;

/**
 * Where limit/count sit if `blk` (logical block `lblk` of the directory) is an htree block:
 * 0x20 for the root (block 0 of an INDEX directory), 8 for an interior node (a first entry
 * of inode 0 whose rec_len spans the block), else 0 (a leaf).
 */
export function dxCountOffset(blk: Uint8Array, lblk: number, indexed: boolean): number {
  const bs = blk.length;
  const v = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
  if (lblk === 0) return indexed ? DX_ROOT_COUNT_OFFSET : 0;
  const rec0 = v.getUint16(DIRENT.recLen, true);
  if (v.getUint32(DIRENT.inode, true) === 0 && (rec0 === bs || (bs === 65536 && rec0 === 0))) {
    return DX_NODE_COUNT_OFFSET;
  }
  return 0;
}

/**
 * Verify an htree block's dx_tail checksum: crc32c(inode seed, the block up to the last
 * counted entry, the tail's reserved word, four zero bytes). `countOffset` is where
 * limit/count sit. Warns on a mismatch or an impossible count.
 */
export function checkDxTail(
  ctx: ExtContext,
  seed: number,
  blk: Uint8Array,
  countOffset: number,
  at: number,
  structure: string,
): void {
  if (countOffset + 4 > blk.length) return;
  const v = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
  const limit = v.getUint16(countOffset + DX_COUNTLIMIT.limit, true);
  const count = v.getUint16(countOffset + DX_COUNTLIMIT.count, true);
  const tail = countOffset + limit * DX_ENTRY_SIZE;
  if (count > limit || tail + DX_TAIL.size > blk.length) {
    ctx.warn(`${structure}: htree block at ${at} has count ${count} / limit ${limit}; not verified`);
    return;
  }
  let c = crc32cRaw(seed, blk.subarray(0, countOffset + count * DX_ENTRY_SIZE));
  c = crc32cRaw(c, blk.subarray(tail, tail + DX_TAIL.checksum));
  c = crc32cRaw(c, new Uint8Array(4));
  if (c !== v.getUint32(tail + DX_TAIL.checksum, true))
    ctx.warn(`${structure}: htree block at ${at} checksum mismatch`);
}

/** Where parseDirBlock puts each entry it keeps: inode, file_type, and the name as blk[start, start + len). */
export type DirSink = (ino: number, fileType: number, blk: Uint8Array, start: number, len: number) => void;

const entriesSink =
  (out: DirEntry[]): DirSink =>
  (ino, ft, blk, start, len) =>
    out.push({ name: td.decode(blk.subarray(start, start + len)), ino, type: TYPE_BY_DIRENT[ft] ?? 'unknown' });

const namesSink =
  (out: NameListingBuilder): DirSink =>
  (ino, ft, blk, start, len) =>
    out.addUtf8(ino, ft < TYPE_BY_DIRENT.length ? ft : UNKNOWN_CODE, blk, start, len);

/**
 * Parse one linear directory block (or an htree block's fake entries) into `out` (entries,
 * or a sink given each entry's name undecoded).
 * `dotsSeen` is how many of '.'/'..' are already accounted for (0 for block 0, where they are
 * legitimate as the first entries; 2 elsewhere and for inline directories, where they are
 * implicit). `checkTail` looks for (and verifies) a metadata_csum leaf tail; `seed` is the
 * inode's checksum seed. Entries with unsafe names or out-of-range inodes are skipped with a
 * warning; a broken rec_len ends the block with a warning.
 */
export function parseDirBlock(
  ctx: ExtContext,
  seed: number,
  blk: Uint8Array,
  at: number,
  structure: string,
  dotsSeen: number,
  checkTail: boolean,
  out: DirEntry[] | DirSink,
): void {
  const sink = Array.isArray(out) ? entriesSink(out) : out;
  const v = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
  const size = blk.length;
  const filetype = (ctx.sb.incompat & INCOMPAT.FILETYPE) !== 0;
  let dataEnd = size;
  if (checkTail && size >= DIR_TAIL.size) {
    const t = size - DIR_TAIL.size;
    if (
      v.getUint32(t + DIR_TAIL.reservedZero, true) === 0 &&
      v.getUint16(t + DIR_TAIL.recLen, true) === DIR_TAIL.size &&
      blk[t + DIR_TAIL.nameLen] === 0 &&
      blk[t + DIR_TAIL.fileType] === DIR_TAIL_FT
    ) {
      dataEnd = t;
      if (ctx.metadataCsum) {
        const c = crc32cRaw(seed, blk.subarray(0, t));
        if (c !== v.getUint32(t + DIR_TAIL.checksum, true)) {
          ctx.warn(`${structure}: directory block at ${at} checksum mismatch`);
        }
      }
    }
  }
  const inodesCount = ctx.sb.inodesCount;
  let pos = 0;
  let dots = dotsSeen;
  while (pos + DIRENT.name <= dataEnd) {
    const ino = v.getUint32(pos + DIRENT.inode, true);
    let rec = v.getUint16(pos + DIRENT.recLen, true);
    if (size >= 65536 && (rec === 65535 || rec === 0)) rec = 65536;
    const nameLen = filetype ? blk[pos + DIRENT.nameLen] : v.getUint16(pos + DIRENT.nameLen, true) & 0xff;
    const ft = filetype ? blk[pos + DIRENT.fileType] : 0;
    if (rec < DIRENT.name || rec % 4 !== 0 || pos + rec > size || DIRENT.name + nameLen > rec) {
      ctx.warn(`${structure}: bad directory entry at ${at + pos} (rec_len ${rec}); rest of block skipped`);
      return;
    }
    if (ino !== 0) {
      const ns = pos + DIRENT.name;
      const isDot = blk[ns] === 0x2e && (nameLen === 1 || (nameLen === 2 && blk[ns + 1] === 0x2e));
      if (isDot && dots < 2 && pos < 24) {
        dots++;
      } else if (nameLen === 0 || isDot || !plainName(blk, ns, ns + nameLen)) {
        const nb = blk.subarray(ns, ns + nameLen);
        ctx.warn(`${structure}: entry at ${at + pos} has an unsafe name ${JSON.stringify(td.decode(nb))}; skipped`);
      } else if (ino > inodesCount) {
        ctx.warn(`${structure}: entry at ${at + pos} names inode ${ino}, out of range; skipped`);
      } else {
        sink(ino, ft, blk, ns, nameLen);
      }
    }
    pos += rec;
  }
}

/** No '/' and no NUL in b[s, e) (checked in place: a subarray per entry was most of a listing's garbage). */
function plainName(b: Uint8Array, s: number, e: number): boolean {
  for (let k = s; k < e; k++) if (b[k] === 0x2f || b[k] === 0) return false;
  return true;
}

/**
 * The entries of an inline directory: i_block starts with the parent's inode number ('..'),
 * then entries; the rest continue in system.data. '.' and '..' are implicit.
 */
export function inlineDirEntries(ctx: ExtContext, n: ExtNode, structure: string): DirEntry[] {
  const out: DirEntry[] = [];
  inlineDirInto(ctx, n, structure, entriesSink(out));
  return out;
}

function inlineDirInto(ctx: ExtContext, n: ExtNode, structure: string, sink: DirSink): void {
  const all = inlineData(ctx, n);
  const limit = Math.min(all.length, Math.max(I_BLOCK_SIZE, n.size));
  const seed = ctx.metadataCsum ? inodeSeed(ctx, n) : 0;
  const at = n.at + INODE.block + 4;
  parseDirBlock(ctx, seed, all.subarray(4, Math.min(I_BLOCK_SIZE, limit)), at, structure, 2, false, sink);
  if (limit > I_BLOCK_SIZE)
    parseDirBlock(ctx, seed, all.subarray(I_BLOCK_SIZE, limit), n.at, structure, 2, false, sink);
}

/** One read of a directory: `cnt` blocks from logical block `lblk`, at volume offset `at`. */
interface DirRead {
  buf: Uint8Array;
  at: number;
  lblk: number;
  cnt: number;
}

/** Directory contents: batched reads of linear and htree directories, and a name cache for lookups. */
export class Directories {
  private readonly cache = new Map<number, Map<string, DirEntry>>();
  private cacheEntries = 0;
  private readonly maxEntries = dirCacheEntries();

  constructor(
    private readonly ctx: ExtContext,
    private readonly map: BlockMap,
  ) {}

  /**
   * Entries in batches (one per read of up to 64 blocks): far fewer async hops than one per
   * entry. An htree directory is read as its leaves in block order (the index blocks hold
   * no names), as e2fsck and debugfs do; its index blocks' checksums are verified.
   */
  async *batches(n: ExtNode): AsyncGenerator<DirEntry[]> {
    const structure = `ext directory inode ${n.ino}`;
    if (n.flags & FL.INLINE_DATA) {
      yield inlineDirEntries(this.ctx, n, structure);
      return;
    }
    for await (const read of this.reads(n)) {
      const out: DirEntry[] = [];
      this.parseRead(n, read, structure, entriesSink(out));
      yield out;
    }
  }

  /** All of a directory's entries as one NameListing (names undecoded unless not ASCII): for names-only walks. */
  async names(n: ExtNode): Promise<NameListing> {
    const structure = `ext directory inode ${n.ino}`;
    const reads: DirRead[] = [];
    if (!(n.flags & FL.INLINE_DATA)) for await (const read of this.reads(n)) reads.push(read);
    // parsed once all is read: the shared builder is filled without an await
    return buildNameListing((out) => {
      const sink = namesSink(out);
      if (n.flags & FL.INLINE_DATA) inlineDirInto(this.ctx, n, structure, sink);
      else for (const read of reads) this.parseRead(n, read, structure, sink);
    });
  }

  /** The directory's blocks, up to DIR_READ_BLOCKS per read (unwritten runs and blocks past i_size skipped). */
  private async *reads(n: ExtNode): AsyncGenerator<DirRead> {
    const ctx = this.ctx;
    const bs = ctx.blockSize;
    const runs = await this.map.runs(n);
    const nblocks = Math.ceil(n.size / bs);
    for (const r of runs) {
      if (r.unwritten) continue;
      for (let b = 0; b < r.len && r.lblk + b < nblocks; b += DIR_READ_BLOCKS) {
        const cnt = Math.min(DIR_READ_BLOCKS, r.len - b, nblocks - r.lblk - b);
        const at = (r.pblk + b) * bs;
        yield {
          buf: await readExact(ctx.meta, at, cnt * bs, `ext directory inode ${n.ino}`),
          at,
          lblk: r.lblk + b,
          cnt,
        };
      }
    }
  }

  /** Verify and parse the blocks of one read (htree blocks: their dx_tail only). */
  private parseRead(n: ExtNode, read: DirRead, structure: string, sink: DirSink): void {
    const ctx = this.ctx;
    const bs = ctx.blockSize;
    const seed = ctx.metadataCsum ? inodeSeed(ctx, n) : 0;
    const indexed = (n.flags & FL.INDEX) !== 0;
    const { buf, at, cnt } = read;
    for (let k = 0; k < cnt; k++) {
      const blk = buf.subarray(k * bs, (k + 1) * bs);
      const lblk = read.lblk + k;
      const dx = dxCountOffset(blk, lblk, indexed);
      if (dx && ctx.metadataCsum) checkDxTail(ctx, seed, blk, dx, at + k * bs, structure);
      parseDirBlock(ctx, seed, blk, at + k * bs, structure, lblk === 0 ? 0 : 2, dx === 0, sink);
    }
  }

  /** The name map of a directory (cached for recently used directories; first entry of a name wins). */
  async nameMap(n: ExtNode): Promise<Map<string, DirEntry>> {
    const hit = this.cached(n.ino);
    if (hit) return hit;
    const m = new Map<string, DirEntry>();
    for await (const batch of this.batches(n)) for (const e of batch) if (!m.has(e.name)) m.set(e.name, e);
    this.cache.set(n.ino, m);
    this.cacheEntries += m.size;
    while (this.cacheEntries > this.maxEntries && this.cache.size > 1) {
      const k = this.cache.keys().next().value as number;
      this.cacheEntries -= this.cache.get(k)?.size ?? 0;
      this.cache.delete(k);
    }
    return m;
  }

  /** The cached name map of directory `ino`, without I/O. */
  cached(ino: number): Map<string, DirEntry> | undefined {
    const m = this.cache.get(ino);
    if (m) {
      this.cache.delete(ino);
      this.cache.set(ino, m);
    }
    return m;
  }

  clear(): void {
    this.cache.clear();
  }
}
