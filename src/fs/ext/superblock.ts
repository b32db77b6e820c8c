import { StrataError } from '../../util/errors.js';

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

/** Parse the 1024-byte superblock; checks the magic and the values every later step divides by. */
export function parseSuperblock(raw: Uint8Array, file: string, offset: number): Superblock {
  const where = { file, structure: 'ext superblock', offset };
  if (raw.length < 1024) throw new StrataError('TRUNCATED', 'superblock is cut short', where);
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const u32 = (o: number) => v.getUint32(o, true);
  const u16 = (o: number) => v.getUint16(o, true);
  const magic = u16(0x38);
  if (magic !== 0xef53) {
    throw new StrataError('CORRUPT', `bad magic 0x${magic.toString(16)} (want 0xef53)`, {
      ...where,
      offset: offset + 0x38,
    });
  }
  const revLevel = u32(0x4c);
  const incompat = revLevel >= 1 ? u32(0x60) : 0;
  const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
  const hi = (o: number) => (bit64 ? u32(o) * 2 ** 32 : 0);
  const logBlockSize = u32(0x18);
  const logClusterSize = u32(0x1c);
  if (logBlockSize > 6) {
    throw new StrataError('CORRUPT', `block size 2^(10+${logBlockSize}) is out of range`, {
      ...where,
      offset: offset + 0x18,
    });
  }
  const roCompat = revLevel >= 1 ? u32(0x64) : 0;
  const bigalloc = (roCompat & RO_COMPAT.BIGALLOC) !== 0;
  if (bigalloc && (logClusterSize < logBlockSize || logClusterSize > 20)) {
    throw new StrataError('CORRUPT', `cluster size 2^(10+${logClusterSize}) is out of range`, {
      ...where,
      offset: offset + 0x1c,
    });
  }
  const blockSize = 1024 * 2 ** logBlockSize;
  const clusterSize = bigalloc ? 1024 * 2 ** logClusterSize : blockSize;
  const inodeSize = revLevel >= 1 ? u16(0x58) : 128;
  const sb: Superblock = {
    inodesCount: u32(0x0),
    blocksCount: u32(0x4) + hi(0x150),
    rBlocksCount: u32(0x8) + hi(0x154),
    freeBlocksCount: u32(0xc) + hi(0x158),
    freeInodesCount: u32(0x10),
    firstDataBlock: u32(0x14),
    logBlockSize,
    logClusterSize,
    blockSize,
    clusterSize,
    blocksPerGroup: u32(0x20),
    clustersPerGroup: bigalloc ? u32(0x24) : u32(0x20),
    inodesPerGroup: u32(0x28),
    mtime: u32(0x2c) + raw[0x275] * 2 ** 32,
    wtime: u32(0x30) + raw[0x274] * 2 ** 32,
    mntCount: u16(0x34),
    maxMntCount: v.getInt16(0x36, true),
    magic,
    state: u16(0x3a),
    errors: u16(0x3c),
    lastCheck: u32(0x40) + raw[0x277] * 2 ** 32,
    creatorOs: u32(0x48),
    revLevel,
    firstIno: revLevel >= 1 ? u32(0x54) : 11,
    inodeSize,
    compat: revLevel >= 1 ? u32(0x5c) : 0,
    incompat,
    roCompat,
    uuid: new Uint8Array(raw.subarray(0x68, 0x78)),
    volumeName: cstr(raw.subarray(0x78, 0x88)),
    lastMounted: cstr(raw.subarray(0x88, 0xc8)),
    reservedGdtBlocks: u16(0xce),
    journalInum: u32(0xe0),
    defHashVersion: raw[0xfc],
    descSize: bit64 ? u16(0xfe) : 32,
    firstMetaBg: u32(0x104),
    mkfsTime: u32(0x108) + raw[0x276] * 2 ** 32,
    minExtraIsize: u16(0x15c),
    wantExtraIsize: u16(0x15e),
    logGroupsPerFlex: raw[0x174],
    checksumType: raw[0x175],
    backupBgs: [u32(0x24c), u32(0x250)],
    checksumSeed: u32(0x270),
    checksum: u32(0x3fc),
    raw,
  };
  const bad = (msg: string, at: number) =>
    new StrataError('CORRUPT', msg, { ...where, offset: offset + at, structure: 'ext superblock' });
  if (sb.blocksPerGroup === 0 || sb.blocksPerGroup > blockSize * 8 * (clusterSize / blockSize)) {
    throw bad(`blocks per group ${sb.blocksPerGroup} is out of range for ${blockSize}-byte blocks`, 0x20);
  }
  if (sb.clustersPerGroup === 0 || sb.clustersPerGroup > blockSize * 8) {
    throw bad(`clusters per group ${sb.clustersPerGroup} is out of range`, 0x24);
  }
  if (sb.inodesPerGroup === 0 || sb.inodesPerGroup > blockSize * 8) {
    throw bad(`inodes per group ${sb.inodesPerGroup} is out of range`, 0x28);
  }
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) {
    throw bad(`inode size ${inodeSize} is not a power of two between 128 and the block size`, 0x58);
  }
  if (bit64 && (sb.descSize < 32 || sb.descSize > 1024 || (sb.descSize & (sb.descSize - 1)) !== 0)) {
    throw bad(`group descriptor size ${sb.descSize} is invalid`, 0xfe);
  }
  if (sb.blocksCount === 0 || sb.firstDataBlock >= sb.blocksCount) {
    throw bad(`block count ${sb.blocksCount} / first data block ${sb.firstDataBlock} are inconsistent`, 0x4);
  }
  if (sb.firstDataBlock > 1) throw bad(`first data block ${sb.firstDataBlock} is not 0 or 1`, 0x14);
  if (sb.inodesCount === 0) throw bad('inode count is zero', 0x0);
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
