import { StrataError } from '../../util/errors.js';
import type { FileType, Inode, Timestamp } from '../types.js';
import { dv, u64, type XfsContext } from './context.js';

/** Fork formats (di_format / di_aformat). */
export const FMT = { DEV: 0, LOCAL: 1, EXTENTS: 2, BTREE: 3, UUID: 4, RMAP: 5 } as const;

/** di_flags bits we act on. */
export const DIFLAG = { REALTIME: 0x1 } as const;
/** di_flags2 bits (v3 inodes). */
export const DIFLAG2 = { DAX: 1, REFLINK: 2, COWEXTSIZE: 4, BIGTIME: 8, NREXT64: 0x10 } as const;

/** Bytes of the inode core before the literal area (fork space). */
export const coreSize = (version: number): number => (version === 3 ? 176 : 100);

const TYPE_BY_MODE: Record<number, FileType> = {
  4096: 'fifo',
  8192: 'char',
  16384: 'dir',
  24576: 'block',
  32768: 'file',
  40960: 'symlink',
  49152: 'socket',
};

/** A parsed XFS inode: the public shape plus its forks. */
export interface XfsInode {
  pub: Inode;
  ino: number;
  /** Volume offset of the on-disk inode. */
  at: number;
  version: number;
  format: number;
  aformat: number;
  flags: number;
  flags2: number;
  size: number;
  nblocks: number;
  nextents: number;
  anextents: number;
  /** Data fork bytes (the literal area up to the attribute fork). */
  dataFork: Uint8Array;
  dataForkAt: number;
  /** Attribute fork bytes, when the inode has one. */
  attrFork?: Uint8Array;
  attrForkAt: number;
}

/** XFS big timestamps count nanoseconds from this many seconds before the Unix epoch. */
const BIGTIME_EPOCH_OFFSET = 2 ** 31;

/**
 * A timestamp field at `o`: a big-time u64 of nanoseconds since 1901-12-13 (split into seconds
 * and nanoseconds by long division on 16-bit digits, every step exact in a double: no BigInt,
 * which allocated 4 heap numbers per timestamp, 4 timestamps per inode), or the classic s32
 * seconds and u32 nanoseconds.
 */
function xfsTime(v: DataView, o: number, bigtime: boolean): Timestamp {
  if (!bigtime) return { sec: v.getInt32(o), nsec: Math.min(999_999_999, v.getUint32(o + 4)) };
  let q = 0;
  let r = 0;
  for (let i = 0; i < 8; i += 2) {
    const cur = r * 65536 + v.getUint16(o + i); // < 1e9 * 65536 + 65536 < 2^53
    const d = Math.floor(cur / 1_000_000_000);
    r = cur - d * 1_000_000_000;
    q = q * 65536 + d; // the quotient is < 2^64 / 1e9 < 2^35
  }
  return { sec: q - BIGTIME_EPOCH_OFFSET, nsec: r };
}

/**
 * Parse inode `ino` from its `isize` bytes `raw` at volume offset `at`. Free inodes (mode 0)
 * are NOT_FOUND; a bad magic, version, format or fork offset is CORRUPT.
 */
export function parseInode(ctx: XfsContext, ino: number, raw: Uint8Array, at: number): XfsInode {
  const structure = `xfs inode ${ino}`;
  const v = dv(raw);
  if (v.getUint16(0) !== 0x494e) throw ctx.corrupt('bad magic (want IN)', structure, at);
  const version = raw[4];
  if (version < 1 || version > 3 || (ctx.crc && version !== 3) || (!ctx.crc && version === 3)) {
    throw ctx.corrupt(`inode version ${version} does not match the file system`, structure, at);
  }
  if (version === 3) {
    ctx.verify(raw, 0x64, structure, at);
    const self = u64(v, 0x98);
    if (self !== ino) throw ctx.corrupt(`the inode says it is number ${self}`, structure, at);
  }
  const modeBits = v.getUint16(2);
  if (modeBits === 0) throw new StrataError('NOT_FOUND', `inode ${ino} is not in use`, ctx.where(structure, at));
  const type = TYPE_BY_MODE[modeBits & 0xf000] ?? 'unknown';
  const format = raw[5];
  const flags = v.getUint16(0x5a);
  const flags2 = version === 3 ? u64(v, 0x78) : 0;
  const nrext64 = (flags2 & DIFLAG2.NREXT64) !== 0;
  const nextents = nrext64 ? u64(v, 0x18) : v.getUint32(0x4c);
  const anextents = nrext64 ? v.getUint32(0x4c) : v.getUint16(0x50);
  const forkOff = raw[0x52] * 8;
  const aformat = raw[0x53];
  const lit = coreSize(version);
  const litSize = raw.length - lit;
  if (forkOff >= litSize) throw ctx.corrupt(`attribute fork offset ${forkOff} is past the inode`, structure, at + 0x52);
  const size = u64(v, 0x38);
  if (size > Number.MAX_SAFE_INTEGER || v.getInt32(0x38) < 0) {
    throw ctx.corrupt(`size ${size} is invalid`, structure, at + 0x38);
  }
  const okFormat =
    type === 'char' || type === 'block' || type === 'fifo' || type === 'socket'
      ? format === FMT.DEV
      : type === 'file'
        ? format === FMT.EXTENTS || format === FMT.BTREE
        : format === FMT.LOCAL || format === FMT.EXTENTS || format === FMT.BTREE;
  if (!okFormat) throw ctx.corrupt(`data fork format ${format} is invalid for a ${type}`, structure, at + 5);
  if (forkOff && aformat !== FMT.LOCAL && aformat !== FMT.EXTENTS && aformat !== FMT.BTREE) {
    throw ctx.corrupt(`attribute fork format ${aformat} is invalid`, structure, at + 0x53);
  }
  const bigtime = (flags2 & DIFLAG2.BIGTIME) !== 0;
  const nblocks = u64(v, 0x40);
  const pub: Inode = {
    ino,
    type,
    mode: modeBits & 0o7777,
    uid: v.getUint32(8),
    gid: v.getUint32(0xc),
    size: type === 'char' || type === 'block' ? 0 : size,
    nlink: version === 1 ? v.getUint16(6) : v.getUint32(0x10),
    atime: xfsTime(v, 0x20, bigtime),
    mtime: xfsTime(v, 0x28, bigtime),
    ctime: xfsTime(v, 0x30, bigtime),
    flags,
    allocatedBytes: nblocks * ctx.bs,
  };
  if (version === 3) pub.crtime = xfsTime(v, 0x90, bigtime);
  const dataEnd = forkOff ? lit + forkOff : raw.length;
  const dataFork = raw.subarray(lit, dataEnd);
  if (type === 'char' || type === 'block') {
    const d = v.getUint32(lit);
    pub.rdev = { major: d >>> 18, minor: d & 0x3ffff };
  }
  return {
    pub,
    ino,
    at,
    version,
    format,
    aformat: forkOff ? aformat : -1,
    flags,
    flags2,
    size,
    nblocks,
    nextents,
    anextents,
    dataFork,
    dataForkAt: at + lit,
    attrFork: forkOff ? raw.subarray(lit + forkOff) : undefined,
    attrForkAt: at + lit + forkOff,
  };
}
