import { StrataError } from '../../util/errors.js';

/**
 * struct ext4_super_block (fs/ext4/ext4.h): where it lies and the byte offsets of the fields
 * we read. Fields from rev 1 (dynamic) on are only read when s_rev_level >= 1; the _hi halves
 * of block counts only with the 64bit feature.
 */
export enum SB {
  inodesCount = 0x0, // u32
  blocksCountLo = 0x4, // u32
  rBlocksCountLo = 0x8, // u32
  freeBlocksCountLo = 0xc, // u32
  freeInodesCount = 0x10, // u32
  firstDataBlock = 0x14, // u32
  logBlockSize = 0x18, // u32
  logClusterSize = 0x1c, // u32
  blocksPerGroup = 0x20, // u32
  clustersPerGroup = 0x24, // u32
  inodesPerGroup = 0x28, // u32
  mtime = 0x2c, // u32
  wtime = 0x30, // u32
  mntCount = 0x34, // u16
  maxMntCount = 0x36, // s16
  magic = 0x38, // u16, 0xef53
  state = 0x3a, // u16
  errors = 0x3c, // u16
  lastCheck = 0x40, // u32
  creatorOs = 0x48, // u32
  revLevel = 0x4c, // u32
  firstIno = 0x54, // u32 (rev 1)
  inodeSize = 0x58, // u16 (rev 1)
  featureCompat = 0x5c, // u32 (rev 1)
  featureIncompat = 0x60, // u32 (rev 1)
  featureRoCompat = 0x64, // u32 (rev 1)
  uuid = 0x68, // 16 bytes
  volumeName = 0x78, // 16 bytes
  lastMounted = 0x88, // 64 bytes
  reservedGdtBlocks = 0xce, // u16
  journalInum = 0xe0, // u32
  defHashVersion = 0xfc, // u8
  descSize = 0xfe, // u16 (64bit)
  firstMetaBg = 0x104, // u32
  mkfsTime = 0x108, // u32
  blocksCountHi = 0x150, // u32 (64bit)
  rBlocksCountHi = 0x154, // u32 (64bit)
  freeBlocksCountHi = 0x158, // u32 (64bit)
  minExtraIsize = 0x15c, // u16
  wantExtraIsize = 0x15e, // u16
  logGroupsPerFlex = 0x174, // u8
  checksumType = 0x175, // u8
  backupBgs = 0x24c, // 2 x u32 (sparse_super2)
  checksumSeed = 0x270, // u32 (metadata_csum_seed)
  wtimeHi = 0x274, // u8
  mtimeHi = 0x275, // u8
  mkfsTimeHi = 0x276, // u8
  lastCheckHi = 0x277, // u8
  checksum = 0x3fc, // u32, crc32c of the bytes before it
}

export const SB_MAGIC = 0xef53;
/** Volume offset and size of the primary superblock. */
export const SB_OFFSET = 1024;
export const SB_SIZE = 1024;

/** ext2/3/4 feature bits and their names as dumpe2fs prints them. */
export const COMPAT = {
  DIR_PREALLOC: 0x1,
  IMAGIC_INODES: 0x2,
  HAS_JOURNAL: 0x4,
  EXT_ATTR: 0x8,
  RESIZE_INODE: 0x10,
  DIR_INDEX: 0x20,
  SPARSE_SUPER2: 0x200,
} as const;

export const INCOMPAT = {
  COMPRESSION: 0x1,
  FILETYPE: 0x2,
  RECOVER: 0x4,
  JOURNAL_DEV: 0x8,
  META_BG: 0x10,
  EXTENTS: 0x40,
  BIT64: 0x80,
  MMP: 0x100,
  FLEX_BG: 0x200,
  EA_INODE: 0x400,
  DIRDATA: 0x1000,
  CSUM_SEED: 0x2000,
  LARGEDIR: 0x4000,
  INLINE_DATA: 0x8000,
  ENCRYPT: 0x10000,
  CASEFOLD: 0x20000,
} as const;

export const RO_COMPAT = {
  SPARSE_SUPER: 0x1,
  LARGE_FILE: 0x2,
  BTREE_DIR: 0x4,
  HUGE_FILE: 0x8,
  GDT_CSUM: 0x10,
  DIR_NLINK: 0x20,
  EXTRA_ISIZE: 0x40,
  QUOTA: 0x100,
  BIGALLOC: 0x200,
  METADATA_CSUM: 0x400,
} as const;

const COMPAT_NAMES: Record<number, string> = {
  1: 'dir_prealloc',
  2: 'imagic_inodes',
  4: 'has_journal',
  8: 'ext_attr',
  16: 'resize_inode',
  32: 'dir_index',
  64: 'lazy_bg',
  256: 'snapshot_bitmap',
  512: 'sparse_super2',
  1024: 'fast_commit',
  2048: 'stable_inodes',
  4096: 'orphan_file',
};
const INCOMPAT_NAMES: Record<number, string> = {
  1: 'compression',
  2: 'filetype',
  4: 'needs_recovery',
  8: 'journal_dev',
  16: 'meta_bg',
  64: 'extent',
  128: '64bit',
  256: 'mmp',
  512: 'flex_bg',
  1024: 'ea_inode',
  4096: 'dirdata',
  8192: 'metadata_csum_seed',
  16384: 'large_dir',
  32768: 'inline_data',
  65536: 'encrypt',
  131072: 'casefold',
};
const RO_COMPAT_NAMES: Record<number, string> = {
  1: 'sparse_super',
  2: 'large_file',
  8: 'huge_file',
  16: 'uninit_bg',
  32: 'dir_nlink',
  64: 'extra_isize',
  128: 'snapshot',
  256: 'quota',
  512: 'bigalloc',
  1024: 'metadata_csum',
  2048: 'replica',
  4096: 'read-only',
  8192: 'project',
  16384: 'shared_blocks',
  32768: 'verity',
  65536: 'orphan_present',
};

/** Incompatible features this reader understands (everything else refuses to open). */
export const INCOMPAT_SUPPORTED =
  INCOMPAT.FILETYPE |
  INCOMPAT.RECOVER |
  INCOMPAT.META_BG |
  INCOMPAT.EXTENTS |
  INCOMPAT.BIT64 |
  INCOMPAT.MMP |
  INCOMPAT.FLEX_BG |
  INCOMPAT.EA_INODE |
  INCOMPAT.CSUM_SEED |
  INCOMPAT.LARGEDIR |
  INCOMPAT.INLINE_DATA |
  INCOMPAT.ENCRYPT |
  INCOMPAT.CASEFOLD;

export function featureName(set: 0 | 1 | 2, bit: number): string {
  const table = set === 0 ? COMPAT_NAMES : set === 1 ? INCOMPAT_NAMES : RO_COMPAT_NAMES;
  const name = table[bit];
  if (name) return name;
  return `FEATURE_${'CIR'[set]}${Math.log2(bit)}`;
}

/** Names of all set features, in dumpe2fs order (compat, incompat, ro_compat; low bit first). */
export function featureNames(compat: number, incompat: number, roCompat: number): string[] {
  const out: string[] = [];
  const sets = [compat, incompat, roCompat];
  for (let s = 0; s < 3; s++) {
    for (let b = 0; b < 32; b++) {
      const bit = 2 ** b;
      if (Math.floor(sets[s] / bit) % 2 === 1) out.push(featureName(s as 0 | 1 | 2, bit));
    }
  }
  return out;
}

export interface Superblock {
  inodesCount: number;
  blocksCount: number;
  rBlocksCount: number;
  freeBlocksCount: number;
  freeInodesCount: number;
  firstDataBlock: number;
  logBlockSize: number;
  logClusterSize: number;
  blockSize: number;
  clusterSize: number;
  blocksPerGroup: number;
  clustersPerGroup: number;
  inodesPerGroup: number;
  mtime: number;
  wtime: number;
  mntCount: number;
  maxMntCount: number;
  magic: number;
  state: number;
  errors: number;
  lastCheck: number;
  creatorOs: number;
  revLevel: number;
  firstIno: number;
  inodeSize: number;
  compat: number;
  incompat: number;
  roCompat: number;
  uuid: Uint8Array;
  volumeName: string;
  lastMounted: string;
  reservedGdtBlocks: number;
  journalInum: number;
  defHashVersion: number;
  descSize: number;
  firstMetaBg: number;
  mkfsTime: number;
  minExtraIsize: number;
  wantExtraIsize: number;
  logGroupsPerFlex: number;
  checksumType: number;
  backupBgs: [number, number];
  checksumSeed: number;
  checksum: number;
  raw: Uint8Array;
}

const td = new TextDecoder('utf-8');
function cstr(b: Uint8Array): string {
  const z = b.indexOf(0);
  return td.decode(z >= 0 ? b.subarray(0, z) : b);
}

/** Decode the 1024-byte superblock; checks the magic and the values every later step divides by. */
export function parseSuperblock(raw: Uint8Array, file: string, offset: number): Superblock {
  const where = { file, structure: 'ext superblock', offset };
  if (raw.length < SB_SIZE) throw new StrataError('TRUNCATED', 'superblock is cut short', where);
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const u32 = (o: number) => v.getUint32(o, true);
  const u16 = (o: number) => v.getUint16(o, true);
  const magic = u16(SB.magic);
  if (magic !== SB_MAGIC) {
    throw new StrataError('CORRUPT', `bad magic 0x${magic.toString(16)} (want 0xef53)`, {
      ...where,
      offset: offset + SB.magic,
    });
  }
  const revLevel = u32(SB.revLevel);
  const incompat = revLevel >= 1 ? u32(SB.featureIncompat) : 0;
  const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
  const hi = (o: number) => (bit64 ? u32(o) * 2 ** 32 : 0);
  const logBlockSize = u32(SB.logBlockSize);
  const logClusterSize = u32(SB.logClusterSize);
  if (logBlockSize > 6) {
    throw new StrataError('CORRUPT', `block size 2^(10+${logBlockSize}) is out of range`, {
      ...where,
      offset: offset + SB.logBlockSize,
    });
  }
  const roCompat = revLevel >= 1 ? u32(SB.featureRoCompat) : 0;
  const bigalloc = (roCompat & RO_COMPAT.BIGALLOC) !== 0;
  if (bigalloc && (logClusterSize < logBlockSize || logClusterSize > 20)) {
    throw new StrataError('CORRUPT', `cluster size 2^(10+${logClusterSize}) is out of range`, {
      ...where,
      offset: offset + SB.logClusterSize,
    });
  }
  const blockSize = 1024 * 2 ** logBlockSize;
  const clusterSize = bigalloc ? 1024 * 2 ** logClusterSize : blockSize;
  const inodeSize = revLevel >= 1 ? u16(SB.inodeSize) : 128;
  const sb: Superblock = {
    inodesCount: u32(SB.inodesCount),
    blocksCount: u32(SB.blocksCountLo) + hi(SB.blocksCountHi),
    rBlocksCount: u32(SB.rBlocksCountLo) + hi(SB.rBlocksCountHi),
    freeBlocksCount: u32(SB.freeBlocksCountLo) + hi(SB.freeBlocksCountHi),
    freeInodesCount: u32(SB.freeInodesCount),
    firstDataBlock: u32(SB.firstDataBlock),
    logBlockSize,
    logClusterSize,
    blockSize,
    clusterSize,
    blocksPerGroup: u32(SB.blocksPerGroup),
    clustersPerGroup: bigalloc ? u32(SB.clustersPerGroup) : u32(SB.blocksPerGroup),
    inodesPerGroup: u32(SB.inodesPerGroup),
    mtime: u32(SB.mtime) + raw[SB.mtimeHi] * 2 ** 32,
    wtime: u32(SB.wtime) + raw[SB.wtimeHi] * 2 ** 32,
    mntCount: u16(SB.mntCount),
    maxMntCount: v.getInt16(SB.maxMntCount, true),
    magic,
    state: u16(SB.state),
    errors: u16(SB.errors),
    lastCheck: u32(SB.lastCheck) + raw[SB.lastCheckHi] * 2 ** 32,
    creatorOs: u32(SB.creatorOs),
    revLevel,
    firstIno: revLevel >= 1 ? u32(SB.firstIno) : 11,
    inodeSize,
    compat: revLevel >= 1 ? u32(SB.featureCompat) : 0,
    incompat,
    roCompat,
    uuid: new Uint8Array(raw.subarray(SB.uuid, SB.uuid + 16)),
    volumeName: cstr(raw.subarray(SB.volumeName, SB.volumeName + 16)),
    lastMounted: cstr(raw.subarray(SB.lastMounted, SB.lastMounted + 64)),
    reservedGdtBlocks: u16(SB.reservedGdtBlocks),
    journalInum: u32(SB.journalInum),
    defHashVersion: raw[SB.defHashVersion],
    descSize: bit64 ? u16(SB.descSize) : 32,
    firstMetaBg: u32(SB.firstMetaBg),
    mkfsTime: u32(SB.mkfsTime) + raw[SB.mkfsTimeHi] * 2 ** 32,
    minExtraIsize: u16(SB.minExtraIsize),
    wantExtraIsize: u16(SB.wantExtraIsize),
    logGroupsPerFlex: raw[SB.logGroupsPerFlex],
    checksumType: raw[SB.checksumType],
    backupBgs: [u32(SB.backupBgs), u32(SB.backupBgs + 4)],
    checksumSeed: u32(SB.checksumSeed),
    checksum: u32(SB.checksum),
    raw,
  };
  const bad = (msg: string, at: number) =>
    new StrataError('CORRUPT', msg, { ...where, offset: offset + at, structure: 'ext superblock' });
  if (sb.blocksPerGroup === 0 || sb.blocksPerGroup > blockSize * 8 * (clusterSize / blockSize)) {
    throw bad(`blocks per group ${sb.blocksPerGroup} is out of range for ${blockSize}-byte blocks`, SB.blocksPerGroup);
  }
  if (sb.clustersPerGroup === 0 || sb.clustersPerGroup > blockSize * 8) {
    throw bad(`clusters per group ${sb.clustersPerGroup} is out of range`, SB.clustersPerGroup);
  }
  if (sb.inodesPerGroup === 0 || sb.inodesPerGroup > blockSize * 8) {
    throw bad(`inodes per group ${sb.inodesPerGroup} is out of range`, SB.inodesPerGroup);
  }
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) {
    throw bad(`inode size ${inodeSize} is not a power of two between 128 and the block size`, SB.inodeSize);
  }
  if (bit64 && (sb.descSize < 32 || sb.descSize > 1024 || (sb.descSize & (sb.descSize - 1)) !== 0)) {
    throw bad(`group descriptor size ${sb.descSize} is invalid`, SB.descSize);
  }
  if (sb.blocksCount === 0 || sb.firstDataBlock >= sb.blocksCount) {
    throw bad(
      `block count ${sb.blocksCount} / first data block ${sb.firstDataBlock} are inconsistent`,
      SB.blocksCountLo,
    );
  }
  if (sb.firstDataBlock > 1) throw bad(`first data block ${sb.firstDataBlock} is not 0 or 1`, SB.firstDataBlock);
  if (sb.inodesCount === 0) throw bad('inode count is zero', SB.inodesCount);
  return sb;
}

/** Block group holds a superblock backup (and, without meta_bg, a GDT backup)? */
export function groupHasSuper(sb: Superblock, g: number): boolean {
  if (g === 0) return true;
  if (sb.compat & COMPAT.SPARSE_SUPER2) return g === sb.backupBgs[0] || g === sb.backupBgs[1];
  if (g <= 1 || !(sb.roCompat & RO_COMPAT.SPARSE_SUPER)) return true;
  if ((g & 1) === 0) return false;
  for (const base of [3, 5, 7]) {
    let p = base;
    while (p < g) p *= base;
    if (p === g) return true;
  }
  return false;
}

export function formatUuid(u: Uint8Array): string {
  const h = Array.from(u, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
