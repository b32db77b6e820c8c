import { readExact } from '../../io/byte-source.js';
import { crc32cRange, crc32cU32 } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { memoryShare } from '../../util/memory.js';
import type { FileType, Inode, Timestamp } from '../types.js';
import { GenCache, Slab } from './cache.js';
import { type ExtContext, ZERO2 } from './context.js';
import { RO_COMPAT } from './superblock.js';

/**
 * struct ext4_inode (fs/ext4/ext4.h): byte offsets of the fields we read. The first 128 bytes
 * are the original inode; i_extra_isize says how many of the fields from 0x80 on are present.
 */
export enum INODE {
  mode = 0x00, // u16
  uidLo = 0x02, // u16
  sizeLo = 0x04, // u32
  atime = 0x08, // s32
  ctime = 0x0c, // s32
  mtime = 0x10, // s32
  gidLo = 0x18, // u16
  linksCount = 0x1a, // u16
  blocksLo = 0x1c, // u32 (512-byte units, or blocks with HUGE_FILE)
  flags = 0x20, // u32 (FL)
  /** i_block: 60 bytes of extent tree root, block pointers, inline data or a fast symlink. */
  block = 0x28,
  generation = 0x64, // u32
  fileAclLo = 0x68, // u32
  sizeHigh = 0x6c, // u32
  blocksHigh = 0x74, // u16
  fileAclHigh = 0x76, // u16
  uidHigh = 0x78, // u16
  gidHigh = 0x7a, // u16
  checksumLo = 0x7c, // u16
  extraIsize = 0x80, // u16
  checksumHi = 0x82, // u16
  ctimeExtra = 0x84, // u32 (epoch bits 0-1, nanoseconds << 2)
  mtimeExtra = 0x88, // u32
  atimeExtra = 0x8c, // u32
  crtime = 0x90, // s32
  crtimeExtra = 0x94, // u32
}

/** Size of i_block. */
export const I_BLOCK_SIZE = 60;
/** Size of the original (ext2) inode; the extra fields start here. */
export const GOOD_OLD_INODE_SIZE = 128;
/** i_block[12..14]: the single, double and triple indirect block pointers. */
export const IND_BLOCK = 12;

/** ext inode flags we act on. */
export enum FL {
  ENCRYPT = 0x800,
  INDEX = 0x1000,
  HUGE_FILE = 0x40000,
  EXTENTS = 0x80000,
  EA_INODE = 0x200000,
  INLINE_DATA = 0x10000000,
}

const TYPE_BY_MODE: Record<number, FileType> = {
  4096: 'fifo',
  8192: 'char',
  16384: 'dir',
  24576: 'block',
  32768: 'file',
  40960: 'symlink',
  49152: 'socket',
};

/** Our parsed inode: the public shape plus what the reader needs. */
export interface ExtNode {
  pub: Inode;
  ino: number;
  raw: Uint8Array;
  /** Volume offset of the on-disk inode. */
  at: number;
  modeBits: number;
  flags: number;
  size: number;
  fileAcl: number;
  generation: number;
  extraIsize: number;
  links: number;
  blocks512: number;
}

/**
 * The metadata_csum checksum of an inode: crc32c(seed, le32 ino, le32 generation, the inode
 * with i_checksum_lo/hi taken as zeros). 32 bits when the inode has room for
 * i_checksum_hi (extra size >= 4), else the low 16.
 */
export function inodeChecksum(
  fsSeed: number,
  ino: number,
  raw: Uint8Array,
  generation: number,
  hasHi: boolean,
): number {
  let c = crc32cU32(crc32cU32(fsSeed, ino), generation);
  c = crc32cRange(c, raw, 0, INODE.checksumLo);
  c = crc32cRange(c, ZERO2, 0, 2);
  if (hasHi) {
    c = crc32cRange(c, raw, INODE.checksumLo + 2, INODE.checksumHi);
    c = crc32cRange(c, ZERO2, 0, 2);
    c = crc32cRange(c, raw, INODE.checksumHi + 2, raw.length);
    return c >>> 0;
  }
  c = crc32cRange(c, raw, INODE.checksumLo + 2, raw.length);
  return c & 0xffff;
}

/** The seed of every per-inode checksum (extent blocks, directory blocks, htree blocks). */
export function inodeSeed(ctx: ExtContext, n: ExtNode): number {
  return crc32cU32(crc32cU32(ctx.csumSeed, n.ino), n.generation);
}

/**
 * What decoding inode `raw` (at volume offset `at`) checks, and nothing built: a warning for an
 * invalid i_extra_isize and for a checksum that differs (metadata_csum), CORRUPT for an absurd
 * size. Returns the extra size believed (0 when invalid).
 */
export function checkInode(
  ctx: ExtContext,
  ino: number,
  raw: Uint8Array,
  at: number,
  v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength),
): number {
  const sb = ctx.sb;
  const structure = `ext inode ${ino}`;
  let extraIsize = sb.inodeSize > GOOD_OLD_INODE_SIZE ? v.getUint16(INODE.extraIsize, true) : 0;
  if (extraIsize && (GOOD_OLD_INODE_SIZE + extraIsize > sb.inodeSize || extraIsize % 4 !== 0)) {
    ctx.warn(`${structure}: extra inode size ${extraIsize} is invalid; ignoring the extra fields`);
    extraIsize = 0;
  }
  if (ctx.metadataCsum) {
    const hasHi = extraIsize >= INODE.checksumHi + 2 - GOOD_OLD_INODE_SIZE;
    const stored = v.getUint16(INODE.checksumLo, true) + (hasHi ? v.getUint16(INODE.checksumHi, true) * 65536 : 0);
    if (inodeChecksum(ctx.csumSeed, ino, raw, v.getUint32(INODE.generation, true), hasHi) !== stored) {
      ctx.warn(`${structure}: checksum mismatch (metadata_csum)`);
    }
  }
  const sizeHi = v.getUint32(INODE.sizeHigh, true);
  if (sizeHi >= 1 << 21) {
    throw new StrataError('CORRUPT', `size high word 0x${sizeHi.toString(16)} is absurd`, ctx.where(structure, at));
  }
  return extraIsize;
}

/**
 * Decode the inode `raw` (a private copy of its on-disk bytes, s_inode_size long) found at
 * volume offset `at`; verifies its checksum (a warning when it differs).
 */
export function decodeInode(ctx: ExtContext, ino: number, raw: Uint8Array, at: number): ExtNode {
  const sb = ctx.sb;
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const modeBits = v.getUint16(INODE.mode, true);
  const flags = v.getUint32(INODE.flags, true);
  const extraIsize = checkInode(ctx, ino, raw, at, v);
  const generation = v.getUint32(INODE.generation, true);
  const sizeHi = v.getUint32(INODE.sizeHigh, true);
  const size = v.getUint32(INODE.sizeLo, true) + sizeHi * 2 ** 32;
  const hugeFs = (sb.roCompat & RO_COMPAT.HUGE_FILE) !== 0;
  let blocks = v.getUint32(INODE.blocksLo, true) + (hugeFs ? v.getUint16(INODE.blocksHigh, true) * 2 ** 32 : 0);
  if (hugeFs && flags & FL.HUGE_FILE) blocks *= sb.blockSize / 512;
  const type = TYPE_BY_MODE[modeBits & 0xf000] ?? 'unknown';
  // a timestamp: seconds, and where the extra field is present, 2 more epoch bits and nanoseconds
  const time = (o: number, xo: number): Timestamp => {
    const sec = v.getInt32(o, true);
    if (xo === 0 || extraIsize < xo - GOOD_OLD_INODE_SIZE + 4) return { sec, nsec: 0 };
    const extra = v.getUint32(xo, true);
    return { sec: sec + (extra & 3) * 2 ** 32, nsec: Math.min(999_999_999, extra >>> 2) };
  };
  const pub: Inode = {
    ino,
    type,
    mode: modeBits & 0o7777,
    uid: v.getUint16(INODE.uidLo, true) + v.getUint16(INODE.uidHigh, true) * 65536,
    gid: v.getUint16(INODE.gidLo, true) + v.getUint16(INODE.gidHigh, true) * 65536,
    size,
    nlink: v.getUint16(INODE.linksCount, true),
    atime: time(INODE.atime, INODE.atimeExtra),
    mtime: time(INODE.mtime, INODE.mtimeExtra),
    ctime: time(INODE.ctime, INODE.ctimeExtra),
    flags,
    // like the kernel's stat: an inline regular file counts its sectors so it does not look sparse
    allocatedBytes: (blocks + (flags & FL.INLINE_DATA && type === 'file' ? Math.ceil(size / 512) : 0)) * 512,
  };
  if (extraIsize >= INODE.crtimeExtra - GOOD_OLD_INODE_SIZE + 4) pub.crtime = time(INODE.crtime, INODE.crtimeExtra);
  if (type === 'char' || type === 'block') {
    // old encoding (major << 8 | minor) in i_block[0], else the new one in i_block[1]
    const d0 = v.getUint32(INODE.block, true);
    if (d0 !== 0) pub.rdev = { major: (d0 >>> 8) & 0xff, minor: d0 & 0xff };
    else {
      const d1 = v.getUint32(INODE.block + 4, true);
      pub.rdev = { major: (d1 & 0xfff00) >>> 8, minor: (d1 & 0xff) | ((d1 >>> 12) & 0xfff00) };
    }
  }
  return {
    pub,
    ino,
    raw,
    at,
    modeBits,
    flags,
    size,
    fileAcl: v.getUint32(INODE.fileAclLo, true) + v.getUint16(INODE.fileAclHigh, true) * 2 ** 32,
    generation,
    extraIsize,
    links: pub.nlink,
    blocks512: blocks,
  };
}

/** A symlink whose target sits in i_block (no data blocks). */
export function isFastSymlink(ctx: ExtContext, n: ExtNode): boolean {
  if (n.pub.type !== 'symlink' || n.flags & (FL.INLINE_DATA | FL.EXTENTS)) return false;
  const eaBlocks = n.fileAcl ? ctx.sb.clusterSize / 512 : 0;
  return n.size < I_BLOCK_SIZE && n.blocks512 - eaBlocks <= 0;
}

const INODE_CACHE = 8192;
/** Inode tables are read and kept in pieces of this size. */
export const INODE_PIECE = 64 * 1024;
const IT_CHUNK = INODE_PIECE;
/** At most this many wanted inodes in a piece: read them alone (see InodeTable.prefetch). */
const SPARSE_LOAD = 4;

/**
 * The inode tables: finds an inode by number, reads its table in 64 KiB pieces (kept, so most
 * loads need no I/O and no await) and keeps the decoded inodes of recent use.
 */
export class InodeTable {
  private readonly cache = new GenCache<number, ExtNode>(INODE_CACHE / 2);
  private readonly slab: Slab;
  /** Table pieces: ctx.inodeCacheBytes, else 1/16 of the memory budget (16 MiB, 256 pieces at the default 256 MiB), in two halves. */
  private readonly itCache: GenCache<number, Uint8Array>;
  private readonly itPending = new Map<number, Promise<Uint8Array>>();
  private readonly inodesCount: number;
  private readonly inodesPerGroup: number;
  private readonly inodeSize: number;
  private readonly blockSize: number;

  constructor(private readonly ctx: ExtContext) {
    const sb = ctx.sb;
    const bytes = ctx.inodeCacheBytes ?? memoryShare(1 / 16, 1 << 20, 16 << 20);
    this.itCache = new GenCache<number, Uint8Array>(Math.max(2, Math.floor(bytes / IT_CHUNK / 2)));
    this.slab = new Slab(sb.inodeSize);
    this.inodesCount = sb.inodesCount;
    this.inodesPerGroup = sb.inodesPerGroup;
    this.inodeSize = sb.inodeSize;
    this.blockSize = sb.blockSize;
  }

  async node(ino: number): Promise<ExtNode> {
    const now = this.nodeNow(ino);
    if (now) return now;
    const n = await this.load(ino);
    this.cache.set(ino, n);
    return n;
  }

  /**
   * The node when it is cached or its inode-table piece is in memory (no I/O, no await),
   * else undefined. Throws like node() for out-of-range numbers and bad inodes.
   */
  nodeNow(ino: number): ExtNode | undefined {
    const hit = this.cache.get(ino);
    if (hit) return hit;
    const at = this.inodeAt(ino);
    const cs = at - (at % IT_CHUNK);
    const chunk = this.itCache.get(cs);
    if (!chunk) return undefined;
    const n = this.parse(ino, at, cs, chunk);
    this.cache.set(ino, n);
    return n;
  }

  /**
   * Load inodes not in memory: one read per inode-table piece (in parallel), except that a
   * piece only SPARSE_LOAD or fewer of them sit in is not read whole: those inodes are read
   * alone and kept decoded. A names-only walk loads the directories' inodes only, a few per
   * piece: whole pieces were 64 KiB read (and allocated) for every ~1 KiB used.
   */
  async prefetch(inos: readonly number[]): Promise<void> {
    const pieces = new Map<number, number[]>();
    for (const ino of inos) {
      const at = this.inodeAt(ino);
      const cs = at - (at % IT_CHUNK);
      const some = pieces.get(cs);
      if (!some) pieces.set(cs, [ino]);
      else if (some.length <= SPARSE_LOAD) some.push(ino);
    }
    // (those read alone must all still be in the node cache when the caller parses them)
    const alone = inos.length <= INODE_CACHE / 4;
    const loads: Promise<unknown>[] = [];
    for (const [cs, some] of pieces) {
      if (!alone || some.length > SPARSE_LOAD || this.itPending.has(cs))
        loads.push(this.loadChunk(cs, `ext inode ${some[0]}`));
      else for (const ino of some) loads.push(this.loadAlone(ino));
    }
    await Promise.all(loads);
  }

  /** One inode read by itself (not its table piece), decoded and kept in the node cache. */
  private async loadAlone(ino: number): Promise<void> {
    const at = this.inodeAt(ino);
    const volume = this.ctx.volume;
    const len = Math.min(this.inodeSize, volume.size - at);
    const raw = await readExact(volume, at, Math.max(len, 0), `ext inode ${ino}`);
    this.cache.set(ino, this.parse(ino, at, at, raw));
  }

  /** Volume offset of an inode (NOT_FOUND when the number is out of range). */
  inodeAt(ino: number): number {
    if (!Number.isSafeInteger(ino) || ino < 1 || ino > this.inodesCount) {
      throw new StrataError(
        'NOT_FOUND',
        `inode ${ino} is out of range (1..${this.inodesCount})`,
        this.ctx.where('ext inode'),
      );
    }
    const g = Math.floor((ino - 1) / this.inodesPerGroup);
    const idx = (ino - 1) % this.inodesPerGroup;
    return this.ctx.groups[g].inodeTable * this.blockSize + idx * this.inodeSize;
  }

  clear(): void {
    this.cache.clear();
    this.itCache.clear();
  }

  /**
   * Inode `ino`'s on-disk bytes when its inode-table piece is in memory and it is not decoded
   * already (no I/O, no copy, no decode): a view of the piece. Else undefined (then `node`
   * has it, reads it, or says why it cannot).
   */
  rawNow(ino: number): { raw: Uint8Array; at: number } | undefined {
    if (this.cache.get(ino)) return undefined;
    const at = this.inodeAt(ino);
    const cs = at - (at % IT_CHUNK);
    const chunk = this.itCache.get(cs);
    if (!chunk || at + this.inodeSize > cs + chunk.length) return undefined;
    return { raw: chunk.subarray(at - cs, at - cs + this.inodeSize), at };
  }

  /** The inode-table piece at volume offset `cs` (a multiple of INODE_PIECE) when in memory. */
  pieceNow(cs: number): Uint8Array | undefined {
    return this.itCache.get(cs);
  }

  /** The inode-table piece at volume offset `cs` (a multiple of INODE_PIECE), read when not in memory. */
  piece(cs: number): Promise<Uint8Array> {
    const have = this.itCache.get(cs);
    return have ? Promise.resolve(have) : this.loadChunk(cs, `ext inode table at ${cs}`);
  }

  private async load(ino: number): Promise<ExtNode> {
    const at = this.inodeAt(ino);
    const cs = at - (at % IT_CHUNK);
    const chunk = this.itCache.get(cs) ?? (await this.loadChunk(cs, `ext inode ${ino}`));
    return this.parse(ino, at, cs, chunk);
  }

  /** Copy inode `ino` at volume offset `at` out of the table piece starting at `cs`, and decode it. */
  private parse(ino: number, at: number, cs: number, chunk: Uint8Array): ExtNode {
    if (at + this.inodeSize > cs + chunk.length) {
      throw new StrataError('TRUNCATED', 'the inode lies past the end of the volume', {
        ...this.ctx.where(`ext inode ${ino}`, at),
      });
    }
    const raw = this.slab.copy(chunk.subarray(at - cs, at - cs + this.inodeSize));
    return decodeInode(this.ctx, ino, raw, at);
  }

  /** A 64 KiB piece of an inode table. */
  private loadChunk(cs: number, structure: string): Promise<Uint8Array> {
    // concurrent loads of one piece (callers fetch inodes in parallel) share a single read
    const pending = this.itPending.get(cs);
    if (pending) return pending;
    const volume = this.ctx.volume;
    const len = Math.min(IT_CHUNK, volume.size - cs);
    const p = readExact(volume, cs, Math.max(len, 0), structure).then(
      (chunk) => {
        this.itCache.set(cs, chunk);
        this.itPending.delete(cs);
        return chunk;
      },
      (e: unknown) => {
        this.itPending.delete(cs);
        throw e;
      },
    );
    this.itPending.set(cs, p);
    return p;
  }
}
