import { readExact } from '../../io/byte-source.js';
import { crc32cRaw, crc32cU32 } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import { type ExtContext, type GroupDesc, groupFirstBlock, inodeTableBlocks, ZERO2 } from './context.js';
import { groupHasSuper, INCOMPAT, type Superblock } from './superblock.js';

/**
 * struct ext4_group_desc (fs/ext4/ext4.h): byte offsets of its fields. The first 32 bytes
 * hold the low halves; the 64-byte form (the 64bit feature, s_desc_size >= 64) adds the high
 * halves at 0x20. Block numbers are 32+32 bits, counts 16+16.
 */
export enum GD {
  blockBitmapLo = 0x00, // u32
  inodeBitmapLo = 0x04, // u32
  inodeTableLo = 0x08, // u32
  freeBlocksCountLo = 0x0c, // u16
  freeInodesCountLo = 0x0e, // u16
  usedDirsCountLo = 0x10, // u16
  flags = 0x12, // u16 (BG_*)
  itableUnusedLo = 0x1c, // u16
  checksum = 0x1e, // u16 (crc16 with gdt_csum, low 16 bits of crc32c with metadata_csum)
  blockBitmapHi = 0x20, // u32
  inodeBitmapHi = 0x24, // u32
  inodeTableHi = 0x28, // u32
  freeBlocksCountHi = 0x2c, // u16
  freeInodesCountHi = 0x2e, // u16
  usedDirsCountHi = 0x30, // u16
  itableUnusedHi = 0x32, // u16
}

/** bg_flags bits. */
export enum BG {
  INODE_UNINIT = 1,
  BLOCK_UNINIT = 2,
  INODE_ZEROED = 4,
}

export type { GroupDesc } from './context.js';

/** Decode the descriptor at byte `o` of `v`; `descSize` is 32, or s_desc_size with 64bit. */
export function decodeGroupDesc(v: DataView, o: number, descSize: number): GroupDesc {
  const wide = descSize >= 64;
  const hi32 = (x: number) => (wide ? v.getUint32(o + x, true) * 2 ** 32 : 0);
  const hi16 = (x: number) => (wide ? v.getUint16(o + x, true) * 65536 : 0);
  return {
    blockBitmap: v.getUint32(o + GD.blockBitmapLo, true) + hi32(GD.blockBitmapHi),
    inodeBitmap: v.getUint32(o + GD.inodeBitmapLo, true) + hi32(GD.inodeBitmapHi),
    inodeTable: v.getUint32(o + GD.inodeTableLo, true) + hi32(GD.inodeTableHi),
    freeBlocks: v.getUint16(o + GD.freeBlocksCountLo, true) + hi16(GD.freeBlocksCountHi),
    freeInodes: v.getUint16(o + GD.freeInodesCountLo, true) + hi16(GD.freeInodesCountHi),
    usedDirs: v.getUint16(o + GD.usedDirsCountLo, true) + hi16(GD.usedDirsCountHi),
    flags: v.getUint16(o + GD.flags, true),
    itableUnused: v.getUint16(o + GD.itableUnusedLo, true) + hi16(GD.itableUnusedHi),
    checksum: v.getUint16(o + GD.checksum, true),
  };
}

/**
 * The metadata_csum checksum of descriptor `g` at byte `o` of `buf`: the low 16 bits of
 * crc32c(seed, le32 g, the descriptor with bg_checksum taken as zeros).
 */
export function groupDescChecksum(seed: number, g: number, buf: Uint8Array, o: number, descSize: number): number {
  let c = crc32cU32(seed, g);
  c = crc32cRaw(c, buf.subarray(o, o + GD.checksum));
  c = crc32cRaw(c, ZERO2);
  if (descSize > GD.checksum + 2) c = crc32cRaw(c, buf.subarray(o + GD.checksum + 2, o + descSize));
  return c & 0xffff;
}

/** Descriptors per block. */
export function descPerBlock(sb: Superblock): number {
  return sb.blockSize / sb.descSize;
}

/**
 * Where descriptor block i lies: right after the superblock for the classic layout (and for
 * the first s_first_meta_bg blocks with meta_bg); with meta_bg, in the first group of its
 * meta group (after that group's superblock backup, if any).
 */
export function descBlock(sb: Superblock, i: number): number {
  if (!(sb.incompat & INCOMPAT.META_BG) || i < sb.firstMetaBg) return sb.firstDataBlock + 1 + i;
  const g = i * descPerBlock(sb);
  return groupFirstBlock(sb, g) + (groupHasSuper(sb, g) ? 1 : 0);
}

/** Volume offset of descriptor g. */
export function descOffset(sb: Superblock, g: number): number {
  const dpb = descPerBlock(sb);
  return descBlock(sb, Math.floor(g / dpb)) * sb.blockSize + (g % dpb) * sb.descSize;
}

/**
 * Read, checksum and check the whole descriptor table: every table a group names must lie
 * inside the file system.
 */
export async function readGroupDescriptors(ctx: ExtContext): Promise<GroupDesc[]> {
  const sb = ctx.sb;
  const bs = sb.blockSize;
  const ds = sb.descSize;
  const groupCount = ctx.groupCount;
  const tableBytes = groupCount * ds;
  if (tableBytes > LIMITS.maxTableBytes) {
    throw new StrataError('LIMIT', `group descriptor table of ${tableBytes} bytes`, ctx.where('ext superblock', 1024));
  }
  const groups: GroupDesc[] = [];
  const dpb = descPerBlock(sb);
  const gdtBlocks = Math.ceil(groupCount / dpb);
  for (let i = 0; i < gdtBlocks; i++) {
    const blk = descBlock(sb, i);
    const structure = `ext group descriptor block ${i}`;
    if (blk >= sb.blocksCount) {
      throw new StrataError('CORRUPT', `descriptor block ${blk} lies past the last block`, ctx.where(structure));
    }
    const buf = await readExact(ctx.meta, blk * bs, bs, structure);
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    for (let k = 0; k < dpb && i * dpb + k < groupCount; k++) {
      const o = k * ds;
      const g = i * dpb + k;
      const d = decodeGroupDesc(v, o, ds);
      groups.push(d);
      if (ctx.metadataCsum && groupDescChecksum(ctx.csumSeed, g, buf, o, ds) !== d.checksum) {
        ctx.warn(`group descriptor ${g} checksum mismatch (metadata_csum)`);
      }
    }
  }
  const itBlocks = inodeTableBlocks(sb);
  for (let g = 0; g < groups.length; g++) {
    const d = groups[g];
    const bad = (what: string, blk: number) =>
      new StrataError(
        'CORRUPT',
        `${what} at block ${blk} lies outside the file system (${sb.blocksCount} blocks)`,
        ctx.where(`ext group descriptor ${g}`, descOffset(sb, g)),
      );
    if (d.blockBitmap >= sb.blocksCount) throw bad('block bitmap', d.blockBitmap);
    if (d.inodeBitmap >= sb.blocksCount) throw bad('inode bitmap', d.inodeBitmap);
    if (d.inodeTable + itBlocks > sb.blocksCount || d.inodeTable === 0) throw bad('inode table', d.inodeTable);
  }
  return groups;
}
