import { StrataError } from '../../util/errors.js';

/** The XFS superblock (big-endian), at byte 0 of every allocation group; AG 0's is primary. */
export interface Superblock {
  raw: Uint8Array;
  blockSize: number;
  dblocks: number;
  rblocks: number;
  rextents: number;
  uuid: Uint8Array;
  logStart: number;
  rootIno: number;
  rbmIno: number;
  rsumIno: number;
  rextSize: number;
  agBlocks: number;
  agCount: number;
  logBlocks: number;
  versionNum: number;
  version: number;
  sectSize: number;
  inodeSize: number;
  inopBlock: number;
  label: string;
  blockLog: number;
  inodeLog: number;
  inopbLog: number;
  agBlkLog: number;
  inProgress: number;
  icount: number;
  ifree: number;
  fdblocks: number;
  frextents: number;
  uquotIno: number;
  gquotIno: number;
  pquotIno: number;
  inoAlignment: number;
  dirBlkLog: number;
  logSectSize: number;
  features2: number;
  compat: number;
  roCompat: number;
  incompat: number;
  logIncompat: number;
  crc: number;
  spinoAlign: number;
  metaUuid: Uint8Array;
}

export const VERSION = {
  ATTR: 0x10,
  NLINK: 0x20,
  QUOTA: 0x40,
  ALIGN: 0x80,
  DALIGN: 0x100,
  SHARED: 0x200,
  LOGV2: 0x400,
  SECTOR: 0x800,
  EXTFLG: 0x1000,
  DIRV2: 0x2000,
  BORG: 0x4000,
  MOREBITS: 0x8000,
} as const;

export const FEATURES2 = {
  LAZYSBCOUNT: 0x2,
  ATTR2: 0x8,
  PARENT: 0x10,
  PROJID32: 0x80,
  CRC: 0x100,
  FTYPE: 0x200,
} as const;
export const RO_COMPAT = { FINOBT: 1, RMAPBT: 2, REFLINK: 4, INOBTCNT: 8 } as const;
export const INCOMPAT = {
  FTYPE: 1,
  SPINODES: 2,
  META_UUID: 4,
  BIGTIME: 8,
  NEEDSREPAIR: 0x10,
  NREXT64: 0x20,
  EXCHRANGE: 0x40,
  PARENT: 0x80,
  METADIR: 0x100,
} as const;
/** Incompatible features this reader understands (the rest refuse to open). */
export const INCOMPAT_SUPPORTED =
  INCOMPAT.FTYPE |
  INCOMPAT.SPINODES |
  INCOMPAT.META_UUID |
  INCOMPAT.BIGTIME |
  INCOMPAT.NEEDSREPAIR |
  INCOMPAT.NREXT64 |
  INCOMPAT.EXCHRANGE |
  INCOMPAT.PARENT;

const INCOMPAT_NAMES: Record<number, string> = {
  1: 'ftype',
  2: 'sparse_inodes',
  4: 'meta_uuid',
  8: 'bigtime',
  16: 'needsrepair',
  32: 'nrext64',
  64: 'exchange_range',
  128: 'parent',
  256: 'metadir',
  512: 'zoned',
};

export function incompatName(bit: number): string {
  return INCOMPAT_NAMES[bit] ?? `incompat_0x${bit.toString(16)}`;
}

/** Byte offset of the superblock CRC (v5). */
export const SB_CRC_OFF = 0xe0;

const u64 = (v: DataView, o: number): number => v.getUint32(o) * 2 ** 32 + v.getUint32(o + 4);

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Parse and sanity-check a superblock sector. Throws CORRUPT naming the field. */
export function parseSuperblock(raw: Uint8Array, file: string, offset: number): Superblock {
  const where = { file, structure: 'xfs superblock', offset };
  if (raw.length < 512) throw new StrataError('TRUNCATED', 'superblock sector is short', where);
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (v.getUint32(0) !== 0x58465342) throw new StrataError('CORRUPT', 'bad magic (want XFSB)', where);
  const bad = (field: string, value: number) =>
    new StrataError('CORRUPT', `${field} ${value} is invalid`, { ...where, structure: `xfs superblock ${field}` });
  const versionNum = v.getUint16(0x64);
  const version = versionNum & 0xf;
  if (version !== 4 && version !== 5) {
    throw new StrataError('UNSUPPORTED', `superblock version ${version} (this reader knows 4 and 5)`, where);
  }
  const sb: Superblock = {
    raw,
    blockSize: v.getUint32(4),
    dblocks: u64(v, 8),
    rblocks: u64(v, 0x10),
    rextents: u64(v, 0x18),
    uuid: raw.slice(0x20, 0x30),
    logStart: u64(v, 0x30),
    rootIno: u64(v, 0x38),
    rbmIno: u64(v, 0x40),
    rsumIno: u64(v, 0x48),
    rextSize: v.getUint32(0x50),
    agBlocks: v.getUint32(0x54),
    agCount: v.getUint32(0x58),
    logBlocks: v.getUint32(0x60),
    versionNum,
    version,
    sectSize: v.getUint16(0x66),
    inodeSize: v.getUint16(0x68),
    inopBlock: v.getUint16(0x6a),
    label: cString(raw.subarray(0x6c, 0x78)),
    blockLog: raw[0x78],
    inodeLog: raw[0x7a],
    inopbLog: raw[0x7b],
    agBlkLog: raw[0x7c],
    inProgress: raw[0x7e],
    icount: u64(v, 0x80),
    ifree: u64(v, 0x88),
    fdblocks: u64(v, 0x90),
    frextents: u64(v, 0x98),
    uquotIno: u64(v, 0xa0),
    gquotIno: u64(v, 0xa8),
    pquotIno: 0,
    inoAlignment: v.getUint32(0xb4),
    dirBlkLog: raw[0xc0],
    logSectSize: v.getUint16(0xc2),
    features2: versionNum & VERSION.MOREBITS ? v.getUint32(0xc8) : 0,
    compat: 0,
    roCompat: 0,
    incompat: 0,
    logIncompat: 0,
    crc: 0,
    spinoAlign: 0,
    metaUuid: raw.slice(0x20, 0x30),
  };
  if (version === 5) {
    sb.compat = v.getUint32(0xd0);
    sb.roCompat = v.getUint32(0xd4);
    sb.incompat = v.getUint32(0xd8);
    sb.logIncompat = v.getUint32(0xdc);
    sb.crc = v.getUint32(SB_CRC_OFF, true);
    sb.spinoAlign = v.getUint32(0xe4);
    sb.pquotIno = u64(v, 0xe8);
    if (sb.incompat & INCOMPAT.META_UUID) sb.metaUuid = raw.slice(0xf8, 0x108);
  }
  if (!isPow2(sb.blockSize) || sb.blockSize < 512 || sb.blockSize > 65536 || 2 ** sb.blockLog !== sb.blockSize) {
    throw bad('blocksize', sb.blockSize);
  }
  if (!isPow2(sb.sectSize) || sb.sectSize < 512 || sb.sectSize > sb.blockSize) throw bad('sectsize', sb.sectSize);
  if (!isPow2(sb.inodeSize) || sb.inodeSize < 256 || sb.inodeSize > 2048 || 2 ** sb.inodeLog !== sb.inodeSize) {
    throw bad('inodesize', sb.inodeSize);
  }
  if (sb.inopBlock !== sb.blockSize / sb.inodeSize || 2 ** sb.inopbLog !== sb.inopBlock) {
    throw bad('inopblock', sb.inopBlock);
  }
  if (sb.agCount === 0 || sb.agBlocks < 8 || sb.agBlkLog > 31 || 2 ** sb.agBlkLog < sb.agBlocks) {
    throw bad(sb.agCount === 0 ? 'agcount' : 'agblocks', sb.agCount === 0 ? 0 : sb.agBlocks);
  }
  if (sb.agBlkLog > 0 && 2 ** (sb.agBlkLog - 1) >= sb.agBlocks) throw bad('agblklog', sb.agBlkLog);
  if (sb.dblocks > sb.agCount * sb.agBlocks || sb.dblocks <= (sb.agCount - 1) * sb.agBlocks) {
    throw bad('dblocks', sb.dblocks);
  }
  if (sb.dirBlkLog > 8 || sb.blockSize * 2 ** sb.dirBlkLog > 65536) throw bad('dirblklog', sb.dirBlkLog);
  if (sb.agBlkLog + sb.inopbLog + 1 > 53 - 1) throw bad('agblklog', sb.agBlkLog);
  if (!Number.isSafeInteger(sb.dblocks * sb.blockSize)) throw bad('dblocks', sb.dblocks);
  return sb;
}

function cString(b: Uint8Array): string {
  let n = 0;
  while (n < b.length && b[n] !== 0) n++;
  return new TextDecoder('utf-8').decode(b.subarray(0, n));
}

export function formatUuid(u: Uint8Array): string {
  const h = Buffer.from(u).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const hasCrc = (sb: Superblock): boolean => sb.version === 5;
export const hasFtype = (sb: Superblock): boolean =>
  sb.version === 5 ? (sb.incompat & INCOMPAT.FTYPE) !== 0 : (sb.features2 & FEATURES2.FTYPE) !== 0;

/** Feature names as xfs_info spells them where it has a name for them. */
export function featureNames(sb: Superblock): string[] {
  const out: string[] = [sb.version === 5 ? 'crc' : 'v4'];
  const vn = sb.versionNum;
  if (vn & VERSION.ATTR) out.push('attr');
  if (vn & VERSION.QUOTA) out.push('quota');
  if (vn & VERSION.ALIGN) out.push('align');
  if (vn & VERSION.DALIGN) out.push('dalign');
  if (vn & VERSION.LOGV2) out.push('logv2');
  if (vn & VERSION.SECTOR) out.push('sector');
  if (vn & VERSION.EXTFLG) out.push('unwritten');
  if (vn & VERSION.BORG) out.push('ascii-ci');
  if (sb.features2 & FEATURES2.LAZYSBCOUNT) out.push('lazy-count');
  if (sb.features2 & FEATURES2.ATTR2) out.push('attr2');
  if (sb.features2 & FEATURES2.PROJID32) out.push('projid32bit');
  if (hasFtype(sb)) out.push('ftype');
  if (sb.roCompat & RO_COMPAT.FINOBT) out.push('finobt');
  if (sb.roCompat & RO_COMPAT.RMAPBT) out.push('rmapbt');
  if (sb.roCompat & RO_COMPAT.REFLINK) out.push('reflink');
  if (sb.roCompat & RO_COMPAT.INOBTCNT) out.push('inobtcount');
  for (let b = 1; b < 2 ** 31; b *= 2) if (sb.incompat & b && b !== INCOMPAT.FTYPE) out.push(incompatName(b));
  if (sb.rblocks > 0) out.push('realtime');
  return out;
}
