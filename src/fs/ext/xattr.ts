import { readExact } from '../../io/byte-source.js';
import { crc32cRaw } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { type ExtContext, td } from './context.js';
import { type ExtNode, GOOD_OLD_INODE_SIZE, I_BLOCK_SIZE, INODE } from './inode.js';

/** h_magic / the in-inode header's magic. */
export const XATTR_MAGIC = 0xea020000;
/** The in-inode xattr region: a 4-byte header (the magic) after the extra fields, entries after it. */
export const IBODY_HEADER_SIZE = 4;

/** struct ext4_xattr_header: the 32-byte header of an xattr block. */
export enum XH {
  magic = 0x00, // u32
  refcount = 0x04, // u32
  blocks = 0x08, // u32 (always 1)
  hash = 0x0c, // u32
  checksum = 0x10, // u32 (metadata_csum)
  size = 32,
}

/** struct ext4_xattr_entry: 16 bytes, then the name; entries are 4-byte aligned. */
export enum XE {
  nameLen = 0x0, // u8
  nameIndex = 0x1, // u8 (PREFIX)
  valueOffs = 0x2, // u16
  valueInum = 0x4, // u32 (ea_inode)
  valueSize = 0x8, // u32
  hash = 0xc, // u32
  name = 0x10,
}

/** The name prefixes selected by an ext xattr entry's name index. */
const PREFIX: Record<number, string> = {
  1: 'user.',
  2: 'system.posix_acl_access',
  3: 'system.posix_acl_default',
  4: 'trusted.',
  6: 'security.',
  7: 'system.',
  8: 'system.richacl',
};

export interface XattrEntry {
  name: string;
  /** Value bytes when stored in place (inode body or xattr block). */
  value?: Uint8Array;
  /** Inode holding the value (ea_inode feature). */
  valueInum?: number;
  valueSize: number;
}

/**
 * Parse the entries of an xattr region: `buf[start..end)` holds entries (4-byte aligned,
 * ended by four zero bytes); values sit at `valueBase + e_value_offs` and must lie inside
 * `[valueBase, end)`. Bounded by the region size; any inconsistency is CORRUPT.
 */
export function parseXattrEntries(
  buf: Uint8Array,
  start: number,
  end: number,
  valueBase: number,
  where: { file: string; structure: string; offset: number },
): XattrEntry[] {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: XattrEntry[] = [];
  let pos = start;
  while (pos + 4 <= end) {
    if (v.getUint32(pos, true) === 0) break;
    if (pos + XE.name > end) {
      throw new StrataError('CORRUPT', 'xattr entry runs past its region', { ...where, offset: where.offset + pos });
    }
    const nameLen = buf[pos + XE.nameLen];
    const index = buf[pos + XE.nameIndex];
    const valueOffs = v.getUint16(pos + XE.valueOffs, true);
    const valueInum = v.getUint32(pos + XE.valueInum, true);
    const valueSize = v.getUint32(pos + XE.valueSize, true);
    if (pos + XE.name + nameLen > end) {
      throw new StrataError('CORRUPT', 'xattr name runs past its region', { ...where, offset: where.offset + pos });
    }
    const suffix = td.decode(buf.subarray(pos + XE.name, pos + XE.name + nameLen));
    const prefix = PREFIX[index] ?? `unknown-index-${index}.`;
    const name = prefix + suffix;
    if (valueInum !== 0) {
      out.push({ name, valueInum, valueSize });
    } else {
      const vs = valueBase + valueOffs;
      if (vs < valueBase || vs + valueSize > end) {
        throw new StrataError('CORRUPT', `xattr ${name} value (${valueOffs}+${valueSize}) lies outside its region`, {
          ...where,
          offset: where.offset + pos,
        });
      }
      out.push({ name, value: new Uint8Array(buf.subarray(vs, vs + valueSize)), valueSize });
    }
    pos += (XE.name + nameLen + 3) & ~3;
  }
  return out;
}

/** The xattrs in the inode body (after the extra fields), if any. */
export function bodyXattrs(ctx: ExtContext, n: ExtNode): XattrEntry[] {
  const start = GOOD_OLD_INODE_SIZE + n.extraIsize;
  const raw = n.raw;
  if (n.extraIsize === 0 || start + IBODY_HEADER_SIZE > raw.length) return [];
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (v.getUint32(start, true) !== XATTR_MAGIC) return [];
  const first = start + IBODY_HEADER_SIZE;
  return parseXattrEntries(raw, first, raw.length, first, {
    file: ctx.name,
    structure: `ext inode ${n.ino} xattrs`,
    offset: n.at,
  });
}

/** The xattrs in the inode's xattr block (i_file_acl), if any; checks its header and checksum. */
export async function blockXattrs(ctx: ExtContext, n: ExtNode): Promise<XattrEntry[]> {
  if (!n.fileAcl) return [];
  const sb = ctx.sb;
  const structure = `ext inode ${n.ino} xattr block ${n.fileAcl}`;
  if (n.fileAcl >= sb.blocksCount) {
    throw new StrataError('CORRUPT', 'xattr block lies outside the file system', {
      ...ctx.where(structure, n.at + INODE.fileAclLo),
    });
  }
  const at = n.fileAcl * sb.blockSize;
  const buf = await readExact(ctx.meta, at, sb.blockSize, structure);
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (v.getUint32(XH.magic, true) !== XATTR_MAGIC) {
    throw new StrataError('CORRUPT', 'bad xattr block magic', ctx.where(structure, at));
  }
  if (v.getUint32(XH.blocks, true) !== 1) {
    throw new StrataError('CORRUPT', `xattr block claims ${v.getUint32(XH.blocks, true)} blocks`, {
      ...ctx.where(structure, at),
    });
  }
  if (ctx.metadataCsum) {
    // crc32c(seed, le64 block number, the block with h_checksum taken as zeros)
    const copy = new Uint8Array(buf);
    copy.fill(0, XH.checksum, XH.checksum + 4);
    const b8 = new Uint8Array(8);
    const dv = new DataView(b8.buffer);
    dv.setUint32(0, n.fileAcl % 2 ** 32, true);
    dv.setUint32(4, Math.floor(n.fileAcl / 2 ** 32), true);
    const c = crc32cRaw(crc32cRaw(ctx.csumSeed, b8), copy);
    if (c !== v.getUint32(XH.checksum, true)) ctx.warn(`${structure}: checksum mismatch (metadata_csum)`);
  }
  return parseXattrEntries(buf, XH.size, buf.length, 0, { file: ctx.name, structure, offset: at });
}

/**
 * Volume offset of the value of the inode's system.data xattr (the rest of an inline file
 * past i_block), or undefined. Never throws: only used to name where bytes sit.
 */
export function systemDataLocation(n: ExtNode): number | undefined {
  const start = GOOD_OLD_INODE_SIZE + n.extraIsize;
  const raw = n.raw;
  if (start + IBODY_HEADER_SIZE > raw.length) return undefined;
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (v.getUint32(start, true) !== XATTR_MAGIC) return undefined;
  let pos = start + IBODY_HEADER_SIZE;
  while (pos + XE.name <= raw.length && v.getUint32(pos, true) !== 0) {
    const nameLen = raw[pos + XE.nameLen];
    if (
      raw[pos + XE.nameIndex] === 7 &&
      nameLen === 4 &&
      td.decode(raw.subarray(pos + XE.name, pos + XE.name + 4)) === 'data'
    ) {
      return n.at + start + IBODY_HEADER_SIZE + v.getUint16(pos + XE.valueOffs, true);
    }
    pos += (XE.name + nameLen + 3) & ~3;
  }
  return undefined;
}

/** All bytes of an inline-data inode: i_block, then the value of system.data. */
export function inlineData(ctx: ExtContext, n: ExtNode): Uint8Array {
  const body = n.raw.subarray(INODE.block, INODE.block + I_BLOCK_SIZE);
  if (n.size <= I_BLOCK_SIZE) return body;
  const more = bodyXattrs(ctx, n).find((e) => e.name === 'system.data');
  const extra = more?.value ?? new Uint8Array(0);
  const all = new Uint8Array(I_BLOCK_SIZE + extra.length);
  all.set(body);
  all.set(extra, I_BLOCK_SIZE);
  return all;
}
