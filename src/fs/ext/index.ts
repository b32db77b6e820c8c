import { type ByteSource, readExact } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { crc32cRange, crc32cRaw, crc32cU32 } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { GenCache } from '../../util/gen-cache.js';
import { LIMITS } from '../../util/limits.js';
import type {
  ByteRange,
  DirEntry,
  FileExtent,
  FileSystem,
  FileType,
  FsDriver,
  FsInfo,
  Inode,
  OwnedRange,
  Timestamp,
} from '../types.js';
import { resolvePath } from '../walk.js';
import {
  COMPAT,
  featureName,
  featureNames,
  formatUuid,
  groupHasSuper,
  INCOMPAT,
  INCOMPAT_SUPPORTED,
  parseSuperblock,
  RO_COMPAT,
  type Superblock,
} from './superblock.js';
import { parseXattrEntries, type XattrEntry } from './xattr.js';

/** ext inode flags we act on. */
const FL = {
  ENCRYPT: 0x800,
  INDEX: 0x1000,
  HUGE_FILE: 0x40000,
  EXTENTS: 0x80000,
  EA_INODE: 0x200000,
  INLINE_DATA: 0x10000000,
} as const;

const BG_INODE_UNINIT = 1;
const BG_BLOCK_UNINIT = 2;

/** Hard caps on per-object work. */
const MAX_RUNS = 1 << 22;
const MAX_WARNINGS = 1000;
const MAX_XATTR_VALUE = 64 << 20;
const INODE_CACHE = 8192;
const MAP_CACHE = 512;
const DIR_CACHE_ENTRIES = 400_000;
/** File reads up to this size go through the metadata block cache. */
const SMALL_READ = 32 * 1024;
/** Inode tables are read and kept in pieces of this size. */
const IT_CHUNK = 64 * 1024;

/** A mapped piece of a file: logical blocks [lblk, lblk+len) at physical block pblk. */
interface Run {
  lblk: number;
  pblk: number;
  len: number;
  unwritten: boolean;
}

interface GroupDesc {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  flags: number;
  freeBlocks: number;
  freeInodes: number;
  itableUnused: number;
}

/** Our parsed inode: the public shape plus what the reader needs. */
interface ExtNode {
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

const TYPE_BY_MODE: Record<number, FileType> = {
  4096: 'fifo',
  8192: 'char',
  16384: 'dir',
  24576: 'block',
  32768: 'file',
  40960: 'symlink',
  49152: 'socket',
};
const TYPE_BY_DIRENT: FileType[] = ['unknown', 'file', 'dir', 'char', 'block', 'fifo', 'socket', 'symlink'];

const td = new TextDecoder('utf-8');

const ZERO2 = new Uint8Array(2);

/**
 * Inode copies are carved from shared slabs: one ArrayBuffer per 256 inodes instead of one
 * per inode (small off-heap buffers are slow to allocate and to collect).
 */
class Slab {
  private buf = new Uint8Array(0);
  private used = 0;
  constructor(private readonly piece: number) {}
  copy(src: Uint8Array): Uint8Array {
    if (this.used + this.piece > this.buf.length) {
      this.buf = new Uint8Array(this.piece * 256);
      this.used = 0;
    }
    const out = this.buf.subarray(this.used, this.used + this.piece);
    this.used += this.piece;
    out.set(src.subarray(0, this.piece));
    return out;
  }
}

/** Push a byte range onto a sorted list, merging with the previous one when touching. */
function pushRange(out: ByteRange[], offset: number, length: number): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.offset + last.length >= offset) {
    const end = Math.max(last.offset + last.length, offset + length);
    last.length = end - last.offset;
  } else out.push({ offset, length });
}

export class ExtFileSystem implements FileSystem {
  readonly kind: string;
  readonly blockSize: number;
  readonly warnings: string[] = [];
  private readonly meta: CachedSource;
  private readonly name: string;
  private readonly groups: GroupDesc[] = [];
  private readonly groupCount: number;
  private readonly csumSeed: number;
  private readonly metadataCsum: boolean;
  private readonly inodeCache = new GenCache<number, ExtNode>(INODE_CACHE / 2);
  private readonly slab: Slab;
  private readonly itCache = new GenCache<number, Uint8Array>(128);
  private readonly itPending = new Map<number, Promise<Uint8Array>>();
  private readonly mapCache = new GenCache<number, Run[]>(MAP_CACHE / 2);
  private readonly dirCache = new Map<number, Map<string, DirEntry>>();
  private dirCacheEntries = 0;
  private warningsDropped = 0;

  private constructor(
    readonly volume: ByteSource,
    readonly sb: Superblock,
  ) {
    this.name = volume.name;
    this.blockSize = sb.blockSize;
    // 16 KiB pieces: directory blocks are scattered and each async read of 128 KiB cost ~1 ms
    // (a 6.8k-entry walk made ~260 of them); HTTP volumes have a 1 MiB cache below this one.
    this.meta = new CachedSource(volume, { blockSize: 16 * 1024, capacity: 48 << 20 });
    this.slab = new Slab(sb.inodeSize);
    this.groupCount = Math.ceil((sb.blocksCount - sb.firstDataBlock) / sb.blocksPerGroup);
    this.metadataCsum = (sb.roCompat & RO_COMPAT.METADATA_CSUM) !== 0;
    this.csumSeed = sb.incompat & INCOMPAT.CSUM_SEED ? sb.checksumSeed : crc32cRaw(0xffffffff, sb.uuid);
    this.kind = extKind(sb);
  }

  static async open(volume: ByteSource): Promise<ExtFileSystem> {
    const raw = await readExact(volume, 1024, 1024, 'ext superblock');
    const sb = parseSuperblock(new Uint8Array(raw), volume.name, 1024);
    const unknown = sb.incompat & ~INCOMPAT_SUPPORTED;
    if (unknown) {
      const names: string[] = [];
      for (let b = 0; b < 32; b++) if ((unknown >>> b) & 1) names.push(featureName(1, 2 ** b));
      const what = sb.incompat & INCOMPAT.JOURNAL_DEV ? ' (this is an external journal device)' : '';
      throw new StrataError('UNSUPPORTED', `incompatible ext feature(s) not supported: ${names.join(', ')}${what}`, {
        file: volume.name,
        structure: 'ext superblock',
        offset: 1024 + 0x60,
      });
    }
    const fs = new ExtFileSystem(volume, sb);
    await fs.init();
    return fs;
  }

  warn(msg: string): void {
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(msg);
    else if (this.warningsDropped++ === 0) this.warnings.push('... further warnings suppressed');
  }

  private where(structure: string, offset?: number) {
    return { file: this.name, structure, offset };
  }

  private async init(): Promise<void> {
    const sb = this.sb;
    const bs = sb.blockSize;
    if (this.metadataCsum) {
      if (sb.checksumType !== 1) this.warn(`superblock: unknown checksum type ${sb.checksumType}`);
      const c = crc32cRaw(0xffffffff, sb.raw.subarray(0, 0x3fc));
      if (c !== sb.checksum) this.warn('superblock checksum mismatch (metadata_csum)');
    }
    if (sb.incompat & INCOMPAT.RECOVER) {
      this.warn('needs_recovery is set: the journal was not replayed, recent changes may be missing');
    }
    if (sb.blocksCount * bs > this.volume.size) {
      this.warn(
        `the file system claims ${sb.blocksCount * bs} bytes but the volume has ${this.volume.size}; reads past the end will fail`,
      );
    }
    const maxInodes = this.groupCount * sb.inodesPerGroup;
    if (sb.inodesCount > maxInodes) {
      throw new StrataError(
        'CORRUPT',
        `inode count ${sb.inodesCount} exceeds ${this.groupCount} groups x ${sb.inodesPerGroup}`,
        this.where('ext superblock', 1024),
      );
    }
    const ds = sb.descSize;
    const tableBytes = this.groupCount * ds;
    if (tableBytes > LIMITS.maxTableBytes) {
      throw new StrataError(
        'LIMIT',
        `group descriptor table of ${tableBytes} bytes`,
        this.where('ext superblock', 1024),
      );
    }
    const dpb = bs / ds;
    const gdtBlocks = Math.ceil(this.groupCount / dpb);
    const metaBg = (sb.incompat & INCOMPAT.META_BG) !== 0;
    for (let i = 0; i < gdtBlocks; i++) {
      let blk: number;
      if (!metaBg || i < sb.firstMetaBg) blk = sb.firstDataBlock + 1 + i;
      else {
        const g = i * dpb;
        blk = this.groupFirstBlock(g) + (groupHasSuper(sb, g) ? 1 : 0);
      }
      const structure = `ext group descriptor block ${i}`;
      if (blk >= sb.blocksCount) {
        throw new StrataError('CORRUPT', `descriptor block ${blk} lies past the last block`, this.where(structure));
      }
      const buf = await readExact(this.meta, blk * bs, bs, structure);
      const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      for (let k = 0; k < dpb && i * dpb + k < this.groupCount; k++) {
        const o = k * ds;
        const g = i * dpb + k;
        const hi = (x: number) => (ds >= 64 ? v.getUint32(o + x, true) * 2 ** 32 : 0);
        const hi16 = (x: number) => (ds >= 64 ? v.getUint16(o + x, true) * 65536 : 0);
        this.groups.push({
          blockBitmap: v.getUint32(o, true) + hi(0x20),
          inodeBitmap: v.getUint32(o + 4, true) + hi(0x24),
          inodeTable: v.getUint32(o + 8, true) + hi(0x28),
          freeBlocks: v.getUint16(o + 0xc, true) + hi16(0x2c),
          freeInodes: v.getUint16(o + 0xe, true) + hi16(0x2e),
          flags: v.getUint16(o + 0x12, true),
          itableUnused: v.getUint16(o + 0x1c, true) + hi16(0x32),
        });
        if (this.metadataCsum) {
          let c = crc32cU32(this.csumSeed, g);
          c = crc32cRaw(c, buf.subarray(o, o + 0x1e));
          c = crc32cRaw(c, ZERO2);
          if (ds > 0x20) c = crc32cRaw(c, buf.subarray(o + 0x20, o + ds));
          if ((c & 0xffff) !== v.getUint16(o + 0x1e, true)) {
            this.warn(`group descriptor ${g} checksum mismatch (metadata_csum)`);
          }
        }
      }
    }
    // Every table a group names must lie inside the file system.
    const itBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / bs);
    for (let g = 0; g < this.groups.length; g++) {
      const d = this.groups[g];
      const bad = (what: string, blk: number) =>
        new StrataError(
          'CORRUPT',
          `${what} at block ${blk} lies outside the file system (${sb.blocksCount} blocks)`,
          this.where(`ext group descriptor ${g}`, this.descOffset(g)),
        );
      if (d.blockBitmap >= sb.blocksCount) throw bad('block bitmap', d.blockBitmap);
      if (d.inodeBitmap >= sb.blocksCount) throw bad('inode bitmap', d.inodeBitmap);
      if (d.inodeTable + itBlocks > sb.blocksCount || d.inodeTable === 0) throw bad('inode table', d.inodeTable);
    }
  }

  private descOffset(g: number): number {
    const sb = this.sb;
    const dpb = sb.blockSize / sb.descSize;
    const i = Math.floor(g / dpb);
    let blk: number;
    if (!(sb.incompat & INCOMPAT.META_BG) || i < sb.firstMetaBg) blk = sb.firstDataBlock + 1 + i;
    else blk = this.groupFirstBlock(i * dpb) + (groupHasSuper(sb, i * dpb) ? 1 : 0);
    return blk * sb.blockSize + (g % dpb) * sb.descSize;
  }

  private groupFirstBlock(g: number): number {
    return this.sb.firstDataBlock + g * this.sb.blocksPerGroup;
  }

  // ---------------------------------------------------------------- inodes

  private async node(ino: number): Promise<ExtNode> {
    const now = this.nodeNow(ino);
    if (now) return now;
    const n = await this.loadInode(ino);
    this.inodeCache.set(ino, n);
    return n;
  }

  /**
   * The node when it is cached or its inode-table piece is in memory (no I/O, no await),
   * else undefined. Throws like loadInode for out-of-range numbers and bad inodes.
   */
  private nodeNow(ino: number): ExtNode | undefined {
    const hit = this.inodeCache.get(ino);
    if (hit) return hit;
    const at = this.inodeAt(ino);
    const cs = at - (at % IT_CHUNK);
    const chunk = this.itCache.get(cs);
    if (!chunk) return undefined;
    const n = this.parseInode(ino, at, cs, chunk);
    this.inodeCache.set(ino, n);
    return n;
  }

  /** Volume offset of an inode (NOT_FOUND when the number is out of range). */
  private inodeAt(ino: number): number {
    const sb = this.sb;
    if (!Number.isSafeInteger(ino) || ino < 1 || ino > sb.inodesCount) {
      throw new StrataError(
        'NOT_FOUND',
        `inode ${ino} is out of range (1..${sb.inodesCount})`,
        this.where('ext inode'),
      );
    }
    const g = Math.floor((ino - 1) / sb.inodesPerGroup);
    const idx = (ino - 1) % sb.inodesPerGroup;
    return this.groups[g].inodeTable * sb.blockSize + idx * sb.inodeSize;
  }

  private async loadInode(ino: number): Promise<ExtNode> {
    const at = this.inodeAt(ino);
    const cs = at - (at % IT_CHUNK);
    const chunk = this.itCache.get(cs) ?? (await this.loadItChunk(cs, `ext inode ${ino}`));
    return this.parseInode(ino, at, cs, chunk);
  }

  /** Parse (and checksum) inode `ino` at volume offset `at` from the inode-table piece starting at `cs`. */
  private parseInode(ino: number, at: number, cs: number, chunk: Uint8Array): ExtNode {
    const sb = this.sb;
    const structure = `ext inode ${ino}`;
    if (at + sb.inodeSize > cs + chunk.length) {
      throw new StrataError('TRUNCATED', 'the inode lies past the end of the volume', this.where(structure, at));
    }
    const raw = this.slab.copy(chunk.subarray(at - cs, at - cs + sb.inodeSize));
    const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const modeBits = v.getUint16(0, true);
    const flags = v.getUint32(0x20, true);
    let extraIsize = sb.inodeSize > 128 ? v.getUint16(0x80, true) : 0;
    if (extraIsize && (128 + extraIsize > sb.inodeSize || extraIsize % 4 !== 0)) {
      this.warn(`${structure}: extra inode size ${extraIsize} is invalid; ignoring the extra fields`);
      extraIsize = 0;
    }
    const generation = v.getUint32(0x64, true);
    if (this.metadataCsum) {
      const hasHi = extraIsize >= 4;
      const stored = v.getUint16(0x7c, true) + (hasHi ? v.getUint16(0x82, true) * 65536 : 0);
      // crc over the inode with the checksum fields taken as zeros
      let c = crc32cU32(crc32cU32(this.csumSeed, ino), generation);
      c = crc32cRange(c, raw, 0, 0x7c);
      c = crc32cRange(c, ZERO2, 0, 2);
      if (hasHi) {
        c = crc32cRange(c, raw, 0x7e, 0x82);
        c = crc32cRange(c, ZERO2, 0, 2);
        c = crc32cRange(c, raw, 0x84, raw.length);
      } else c = crc32cRange(c, raw, 0x7e, raw.length);
      const want = hasHi ? c >>> 0 : c & 0xffff;
      if (want !== stored) this.warn(`${structure}: checksum mismatch (metadata_csum)`);
    }
    const sizeHi = v.getUint32(0x6c, true);
    if (sizeHi >= 1 << 21) {
      throw new StrataError('CORRUPT', `size high word 0x${sizeHi.toString(16)} is absurd`, this.where(structure, at));
    }
    const size = v.getUint32(4, true) + sizeHi * 2 ** 32;
    const hugeFs = (sb.roCompat & RO_COMPAT.HUGE_FILE) !== 0;
    let blocks = v.getUint32(0x1c, true) + (hugeFs ? v.getUint16(0x74, true) * 2 ** 32 : 0);
    if (hugeFs && flags & FL.HUGE_FILE) blocks *= sb.blockSize / 512;
    const type = TYPE_BY_MODE[modeBits & 0xf000] ?? 'unknown';
    const time = (o: number, xo: number): Timestamp => {
      const sec = v.getInt32(o, true);
      if (xo === 0 || extraIsize < xo - 0x80 + 4) return { sec, nsec: 0 };
      const extra = v.getUint32(xo, true);
      return { sec: sec + (extra & 3) * 2 ** 32, nsec: Math.min(999_999_999, extra >>> 2) };
    };
    const pub: Inode = {
      ino,
      type,
      mode: modeBits & 0o7777,
      uid: v.getUint16(2, true) + v.getUint16(0x78, true) * 65536,
      gid: v.getUint16(0x18, true) + v.getUint16(0x7a, true) * 65536,
      size,
      nlink: v.getUint16(0x1a, true),
      atime: time(0x8, 0x8c),
      mtime: time(0x10, 0x88),
      ctime: time(0xc, 0x84),
      flags,
      // like the kernel's stat: an inline regular file counts its sectors so it does not look sparse
      allocatedBytes: (blocks + (flags & FL.INLINE_DATA && type === 'file' ? Math.ceil(size / 512) : 0)) * 512,
    };
    if (extraIsize >= 0x94 - 0x80 + 4) pub.crtime = time(0x90, 0x94);
    if (type === 'char' || type === 'block') {
      const d0 = v.getUint32(0x28, true);
      if (d0 !== 0) pub.rdev = { major: (d0 >>> 8) & 0xff, minor: d0 & 0xff };
      else {
        const d1 = v.getUint32(0x2c, true);
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
      fileAcl: v.getUint32(0x68, true) + v.getUint16(0x76, true) * 2 ** 32,
      generation,
      extraIsize,
      links: pub.nlink,
      blocks512: blocks,
    };
  }

  /** A 64 KiB piece of an inode table (kept so most inode loads need no I/O and no await). */
  private loadItChunk(cs: number, structure: string): Promise<Uint8Array> {
    // concurrent loads of one piece (callers fetch inodes in parallel) share a single read
    const pending = this.itPending.get(cs);
    if (pending) return pending;
    const len = Math.min(IT_CHUNK, this.volume.size - cs);
    const p = readExact(this.volume, cs, Math.max(len, 0), structure).then(
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

  private inodeSeed(n: ExtNode): number {
    return crc32cU32(crc32cU32(this.csumSeed, n.ino), n.generation);
  }

  async root(): Promise<Inode> {
    const n = await this.node(2);
    if (n.pub.type !== 'dir') {
      throw new StrataError('CORRUPT', 'the root inode is not a directory', this.where('ext inode 2', n.at));
    }
    return n.pub;
  }

  inode(ino: number): Promise<Inode> {
    // Most loads of a walk find their inode-table piece in memory: answer without an async
    // function frame and its extra promise hops (thousands per listing).
    try {
      const n = this.nodeNow(ino);
      if (n) return Promise.resolve(n.pub);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.node(ino).then((n) => n.pub);
  }

  async inodes(inos: readonly number[]): Promise<Inode[]> {
    const out = new Array<Inode>(inos.length);
    let missing: number[] | undefined;
    for (let i = 0; i < inos.length; i++) {
      const n = this.nodeNow(inos[i]);
      if (n) out[i] = n.pub;
      else (missing ??= []).push(i);
    }
    if (!missing) return out;
    // One read per inode-table piece still missing (in parallel), then parse without awaits.
    const pieces = new Map<number, number>();
    for (const i of missing) {
      const at = this.inodeAt(inos[i]);
      const cs = at - (at % IT_CHUNK);
      if (!pieces.has(cs)) pieces.set(cs, inos[i]);
    }
    await Promise.all([...pieces].map(([cs, ino]) => this.loadItChunk(cs, `ext inode ${ino}`)));
    for (const i of missing) out[i] = (await this.node(inos[i])).pub;
    return out;
  }

  // ---------------------------------------------------------------- block maps

  /** The file's block runs, sorted by logical block (cached). `meta` collects tree/indirect blocks. */
  private async runs(n: ExtNode, meta?: number[]): Promise<Run[]> {
    if (!meta) {
      const hit = this.mapCache.get(n.ino);
      if (hit) return hit;
    }
    let runs: Run[];
    if (n.flags & FL.INLINE_DATA) runs = [];
    else if (n.flags & FL.EXTENTS) runs = await this.extentRuns(n, meta);
    else if (this.isFastSymlink(n) || n.pub.type === 'char' || n.pub.type === 'block') runs = [];
    else runs = await this.indirectRuns(n, meta);
    if (!meta) {
      this.mapCache.set(n.ino, runs);
    }
    return runs;
  }

  private isFastSymlink(n: ExtNode): boolean {
    if (n.pub.type !== 'symlink' || n.flags & (FL.INLINE_DATA | FL.EXTENTS)) return false;
    const eaBlocks = n.fileAcl ? this.sb.clusterSize / 512 : 0;
    return n.size < 60 && n.blocks512 - eaBlocks <= 0;
  }

  private async extentRuns(n: ExtNode, meta?: number[]): Promise<Run[]> {
    const sb = this.sb;
    const bs = sb.blockSize;
    const runs: Run[] = [];
    const seen = new Set<number>();
    const structure = `ext inode ${n.ino} extent tree`;
    const seed = this.metadataCsum ? this.inodeSeed(n) : 0;
    const visit = async (buf: Uint8Array, at: number, want: number, lo: number, hi: number): Promise<void> => {
      const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      const magic = v.getUint16(0, true);
      const entries = v.getUint16(2, true);
      const max = v.getUint16(4, true);
      const depth = v.getUint16(6, true);
      if (magic !== 0xf30a) {
        throw new StrataError('CORRUPT', `bad extent header magic 0x${magic.toString(16)}`, this.where(structure, at));
      }
      if (entries > max || 12 + max * 12 > buf.length) {
        throw new StrataError('CORRUPT', `extent header says ${entries}/${max} entries`, this.where(structure, at));
      }
      if ((want >= 0 && depth !== want) || depth > 5) {
        throw new StrataError('CORRUPT', `extent node depth ${depth}, expected ${want}`, this.where(structure, at));
      }
      if (depth === 0) {
        for (let i = 0; i < entries; i++) {
          const o = 12 + i * 12;
          const lblk = v.getUint32(o, true);
          let len = v.getUint16(o + 4, true);
          const unwritten = len > 32768;
          if (unwritten) len -= 32768;
          const pblk = v.getUint16(o + 6, true) * 2 ** 32 + v.getUint32(o + 8, true);
          if (len === 0) continue;
          const prev = runs[runs.length - 1];
          if (lblk < lo || lblk + len > hi || (prev && lblk < prev.lblk + prev.len)) {
            throw new StrataError(
              'CORRUPT',
              `extent at logical block ${lblk} (+${len}) overlaps or is out of order`,
              this.where(structure, at + o),
            );
          }
          if (pblk + len > sb.blocksCount || pblk < sb.firstDataBlock) {
            throw new StrataError(
              'CORRUPT',
              `extent points at blocks ${pblk}+${len}, outside the file system`,
              this.where(structure, at + o),
            );
          }
          if (prev && prev.unwritten === unwritten && prev.lblk + prev.len === lblk && prev.pblk + prev.len === pblk) {
            prev.len += len;
          } else {
            if (runs.length >= MAX_RUNS) {
              throw new StrataError('LIMIT', `more than ${MAX_RUNS} extents`, this.where(structure, at));
            }
            runs.push({ lblk, pblk, len, unwritten });
          }
        }
        return;
      }
      for (let i = 0; i < entries; i++) {
        const o = 12 + i * 12;
        const first = v.getUint32(o, true);
        const next = i + 1 < entries ? v.getUint32(o + 12, true) : hi;
        const child = v.getUint16(o + 8, true) * 2 ** 32 + v.getUint32(o + 4, true);
        if (first < lo || next > hi || next < first) {
          throw new StrataError('CORRUPT', `extent index at logical block ${first} is out of order`, {
            ...this.where(structure, at + o),
          });
        }
        if (child >= sb.blocksCount || child < sb.firstDataBlock) {
          throw new StrataError('CORRUPT', `extent index points at block ${child}, outside the file system`, {
            ...this.where(structure, at + o),
          });
        }
        if (seen.has(child)) {
          throw new StrataError('LOOP', `extent tree visits block ${child} twice`, this.where(structure, at + o));
        }
        seen.add(child);
        meta?.push(child);
        const cb = await readExact(this.meta, child * bs, bs, structure);
        if (this.metadataCsum) {
          const cv = new DataView(cb.buffer, cb.byteOffset, cb.byteLength);
          const tail = 12 + cv.getUint16(4, true) * 12;
          if (tail + 4 <= bs && cv.getUint16(0, true) === 0xf30a) {
            const c = crc32cRaw(seed, cb.subarray(0, tail));
            if (c !== cv.getUint32(tail, true)) this.warn(`${structure}: block ${child} checksum mismatch`);
          }
        }
        await visit(cb, child * bs, depth - 1, first, next);
      }
    };
    await visit(n.raw.subarray(0x28, 0x28 + 60), n.at + 0x28, -1, 0, 2 ** 32);
    return runs;
  }

  private async indirectRuns(n: ExtNode, meta?: number[]): Promise<Run[]> {
    const sb = this.sb;
    const bs = sb.blockSize;
    const per = bs / 4;
    const runs: Run[] = [];
    const seen = new Set<number>();
    const structure = `ext inode ${n.ino} block map`;
    const limit = Math.ceil(n.size / bs);
    const v = new DataView(n.raw.buffer, n.raw.byteOffset, n.raw.byteLength);
    const add = (lblk: number, pblk: number, at: number) => {
      if (pblk >= sb.blocksCount) {
        throw new StrataError(
          'CORRUPT',
          `block pointer ${pblk} lies outside the file system`,
          this.where(structure, at),
        );
      }
      const prev = runs[runs.length - 1];
      if (prev && prev.lblk + prev.len === lblk && prev.pblk + prev.len === pblk) prev.len++;
      else {
        if (runs.length >= MAX_RUNS)
          throw new StrataError('LIMIT', `more than ${MAX_RUNS} runs`, this.where(structure));
        runs.push({ lblk, pblk, len: 1, unwritten: false });
      }
    };
    const walk = async (blk: number, level: number, base: number, at: number): Promise<void> => {
      if (base >= limit) return;
      if (blk >= sb.blocksCount) {
        throw new StrataError(
          'CORRUPT',
          `indirect block ${blk} lies outside the file system`,
          this.where(structure, at),
        );
      }
      if (seen.has(blk))
        throw new StrataError('LOOP', `indirect block ${blk} is used twice`, this.where(structure, at));
      seen.add(blk);
      meta?.push(blk);
      const buf = await readExact(this.meta, blk * bs, bs, structure);
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
    for (let i = 0; i < 12 && i < limit; i++) {
      const p = v.getUint32(0x28 + i * 4, true);
      if (p) add(i, p, n.at + 0x28 + i * 4);
    }
    let base = 12;
    for (let level = 1; level <= 3; level++) {
      const p = v.getUint32(0x28 + (11 + level) * 4, true);
      if (p) await walk(p, level, base, n.at + 0x28 + (11 + level) * 4);
      base += per ** level;
    }
    return runs;
  }

  // ---------------------------------------------------------------- data

  async read(file: Inode, offset: number, length: number): Promise<Uint8Array> {
    const n = await this.node(file.ino);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new StrataError('USAGE', `bad read request (${offset}, ${length})`, this.where(`ext inode ${n.ino}`));
    }
    if (n.flags & FL.ENCRYPT) {
      throw new StrataError('UNSUPPORTED', 'file content is encrypted (ext4 encrypt); names and metadata only', {
        ...this.where(`ext inode ${n.ino}`, n.at),
      });
    }
    if (length > LIMITS.maxReadBytes) {
      throw new StrataError('LIMIT', `read of ${length} bytes exceeds the limit`, this.where(`ext inode ${n.ino}`));
    }
    return this.readData(n, offset, length);
  }

  private async readData(n: ExtNode, offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(n.size, offset + length);
    if (offset >= end) return new Uint8Array(0);
    if (n.flags & FL.INLINE_DATA) {
      const all = await this.inlineData(n);
      const out = new Uint8Array(end - offset);
      out.set(all.subarray(Math.min(offset, all.length), Math.min(end, all.length)));
      return out;
    }
    if (this.isFastSymlink(n)) {
      const out = new Uint8Array(end - offset);
      out.set(n.raw.subarray(0x28 + offset, 0x28 + end));
      return out;
    }
    const runs = await this.runs(n);
    const bs = this.sb.blockSize;
    const out = new Uint8Array(end - offset);
    // binary search the first run that ends after `offset`
    const firstBlk = Math.floor(offset / bs);
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (runs[mid].lblk + runs[mid].len <= firstBlk) lo = mid + 1;
      else hi = mid;
    }
    const reads: Promise<void>[] = [];
    for (let i = lo; i < runs.length; i++) {
      const r = runs[i];
      const rs = r.lblk * bs;
      if (rs >= end) break;
      if (r.unwritten) continue;
      const s = Math.max(rs, offset);
      const e = Math.min(rs + r.len * bs, end);
      if (e <= s) continue;
      const vol = r.pblk * bs + (s - rs);
      // small pieces go through the block cache (neighbouring small files share its blocks)
      const via = e - s <= SMALL_READ ? this.meta : this.volume;
      reads.push(
        readExact(via, vol, e - s, `ext inode ${n.ino} data`).then((b) => {
          out.set(b, s - offset);
        }),
      );
      if (reads.length >= 16) {
        await Promise.all(reads);
        reads.length = 0;
      }
    }
    await Promise.all(reads);
    return out;
  }

  private async inlineData(n: ExtNode): Promise<Uint8Array> {
    const body = n.raw.subarray(0x28, 0x28 + 60);
    if (n.size <= 60) return body;
    const ibody = this.bodyXattrs(n);
    const more = ibody.find((e) => e.name === 'system.data');
    const extra = more?.value ?? new Uint8Array(0);
    const all = new Uint8Array(60 + extra.length);
    all.set(body);
    all.set(extra, 60);
    return all;
  }

  async readlink(link: Inode): Promise<string> {
    const n = await this.node(link.ino);
    if (n.pub.type !== 'symlink') {
      throw new StrataError('USAGE', 'not a symbolic link', this.where(`ext inode ${n.ino}`, n.at));
    }
    if (n.flags & FL.ENCRYPT) {
      throw new StrataError('UNSUPPORTED', 'symlink target is encrypted (ext4 encrypt)', {
        ...this.where(`ext inode ${n.ino}`, n.at),
      });
    }
    if (n.size > 65536) {
      throw new StrataError('CORRUPT', `symlink target of ${n.size} bytes`, this.where(`ext inode ${n.ino}`, n.at));
    }
    const b = await this.readData(n, 0, n.size);
    return td.decode(b);
  }

  async *extents(file: Inode): AsyncIterable<FileExtent> {
    const n = await this.node(file.ino);
    if (n.size === 0) return;
    if (n.flags & FL.INLINE_DATA || this.isFastSymlink(n)) {
      const inBody = Math.min(n.size, 60);
      yield { fileOffset: 0, length: inBody, volumeOffset: n.at + 0x28, inline: true };
      if (n.size > 60) {
        // the rest lives in the system.data xattr of the inode body
        const loc = this.systemDataLocation(n);
        yield { fileOffset: 60, length: n.size - 60, volumeOffset: loc ?? n.at, inline: true };
      }
      return;
    }
    if (n.pub.type === 'char' || n.pub.type === 'block') return;
    const runs = await this.runs(n);
    const bs = this.sb.blockSize;
    let cur: FileExtent | undefined;
    for (const r of runs) {
      const fo = r.lblk * bs;
      if (fo >= n.size) break;
      const len = Math.min(r.len * bs, n.size - fo);
      const vo = r.pblk * bs;
      if (
        cur &&
        !!cur.unwritten === r.unwritten &&
        cur.fileOffset + cur.length === fo &&
        cur.volumeOffset + cur.length === vo
      ) {
        cur.length += len;
        continue;
      }
      if (cur) yield cur;
      cur = { fileOffset: fo, length: len, volumeOffset: vo };
      if (r.unwritten) cur.unwritten = true;
    }
    if (cur) yield cur;
  }

  private systemDataLocation(n: ExtNode): number | undefined {
    const start = 128 + n.extraIsize;
    const raw = n.raw;
    if (start + 4 > raw.length) return undefined;
    const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    if (v.getUint32(start, true) !== 0xea020000) return undefined;
    let pos = start + 4;
    while (pos + 16 <= raw.length && v.getUint32(pos, true) !== 0) {
      const nameLen = raw[pos];
      if (raw[pos + 1] === 7 && nameLen === 4 && td.decode(raw.subarray(pos + 16, pos + 20)) === 'data') {
        return n.at + start + 4 + v.getUint16(pos + 2, true);
      }
      pos += (16 + nameLen + 3) & ~3;
    }
    return undefined;
  }

  // ---------------------------------------------------------------- xattrs

  private bodyXattrs(n: ExtNode): XattrEntry[] {
    const start = 128 + n.extraIsize;
    const raw = n.raw;
    if (n.extraIsize === 0 || start + 4 > raw.length) return [];
    const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    if (v.getUint32(start, true) !== 0xea020000) return [];
    return parseXattrEntries(raw, start + 4, raw.length, start + 4, {
      file: this.name,
      structure: `ext inode ${n.ino} xattrs`,
      offset: n.at,
    });
  }

  private async blockXattrs(n: ExtNode): Promise<XattrEntry[]> {
    if (!n.fileAcl) return [];
    const sb = this.sb;
    const structure = `ext inode ${n.ino} xattr block ${n.fileAcl}`;
    if (n.fileAcl >= sb.blocksCount) {
      throw new StrataError('CORRUPT', 'xattr block lies outside the file system', this.where(structure, n.at + 0x68));
    }
    const at = n.fileAcl * sb.blockSize;
    const buf = await readExact(this.meta, at, sb.blockSize, structure);
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (v.getUint32(0, true) !== 0xea020000) {
      throw new StrataError('CORRUPT', 'bad xattr block magic', this.where(structure, at));
    }
    if (v.getUint32(8, true) !== 1) {
      throw new StrataError('CORRUPT', `xattr block claims ${v.getUint32(8, true)} blocks`, this.where(structure, at));
    }
    if (this.metadataCsum) {
      const copy = new Uint8Array(buf);
      copy.fill(0, 0x10, 0x14);
      const b8 = new Uint8Array(8);
      const dv = new DataView(b8.buffer);
      dv.setUint32(0, n.fileAcl % 2 ** 32, true);
      dv.setUint32(4, Math.floor(n.fileAcl / 2 ** 32), true);
      const c = crc32cRaw(crc32cRaw(this.csumSeed, b8), copy);
      if (c !== v.getUint32(0x10, true)) this.warn(`${structure}: checksum mismatch (metadata_csum)`);
    }
    return parseXattrEntries(buf, 32, buf.length, 0, { file: this.name, structure, offset: at });
  }

  async xattrs(file: Inode): Promise<Map<string, Uint8Array>> {
    const n = await this.node(file.ino);
    const out = new Map<string, Uint8Array>();
    const all = [...this.bodyXattrs(n), ...(await this.blockXattrs(n))];
    for (const e of all) {
      if (e.name === 'system.data') continue; // inline data, not an attribute the kernel lists
      if (e.value) out.set(e.name, e.value);
      else if (e.valueInum) {
        if (e.valueSize > MAX_XATTR_VALUE) {
          throw new StrataError('LIMIT', `xattr ${e.name} value of ${e.valueSize} bytes`, {
            ...this.where(`ext inode ${n.ino} xattrs`, n.at),
          });
        }
        const vn = await this.node(e.valueInum);
        if (!(vn.flags & FL.EA_INODE)) {
          throw new StrataError('CORRUPT', `xattr ${e.name} names inode ${e.valueInum}, which is not an EA inode`, {
            ...this.where(`ext inode ${n.ino} xattrs`, n.at),
          });
        }
        const val = await this.readData(vn, 0, e.valueSize);
        out.set(e.name, val);
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- directories

  async *readdir(dir: Inode): AsyncIterable<DirEntry> {
    const n = await this.dirNode(dir);
    for await (const batch of this.dirBatches(n)) {
      await this.typeUnknown(batch);
      yield* batch;
    }
  }

  async readdirAll(dir: Inode): Promise<DirEntry[]> {
    const n = await this.dirNode(dir);
    let all: DirEntry[] | undefined;
    for await (const batch of this.dirBatches(n)) {
      await this.typeUnknown(batch);
      if (!all) all = batch;
      else for (const e of batch) all.push(e);
    }
    return all ?? [];
  }

  private async dirNode(dir: Inode): Promise<ExtNode> {
    const n = await this.node(dir.ino);
    if (n.pub.type !== 'dir') {
      throw new StrataError('USAGE', 'not a directory', this.where(`ext inode ${n.ino}`, n.at));
    }
    return n;
  }

  /** Entries with no file type (ext2 without filetype, or an odd value) take it from their inode. */
  private async typeUnknown(batch: DirEntry[]): Promise<void> {
    for (let i = 0; i < batch.length; i++) {
      const e = batch[i];
      if (e.type !== 'unknown') continue;
      let type: FileType = 'unknown';
      try {
        type = (await this.node(e.ino)).pub.type;
      } catch (err) {
        if (!(err instanceof StrataError)) throw err;
      }
      batch[i] = { ...e, type };
    }
  }

  /** Directory entries in batches (one per read of up to 64 blocks): far fewer async hops than one per entry. */
  private async *dirBatches(n: ExtNode): AsyncGenerator<DirEntry[]> {
    const structure = `ext directory inode ${n.ino}`;
    if (n.flags & FL.INLINE_DATA) {
      const all = await this.inlineData(n);
      const limit = Math.min(all.length, Math.max(60, n.size));
      // first 4 bytes: parent inode ('..'); then entries in the body, then in system.data
      const out: DirEntry[] = [];
      this.parseDirBlock(n, all.subarray(4, Math.min(60, limit)), n.at + 0x2c, structure, 2, false, out);
      if (limit > 60) this.parseDirBlock(n, all.subarray(60, limit), n.at, structure, 2, false, out);
      yield out;
      return;
    }
    const bs = this.sb.blockSize;
    const runs = await this.runs(n);
    const nblocks = Math.ceil(n.size / bs);
    const chunk = 64; // blocks per read
    for (const r of runs) {
      if (r.unwritten) continue;
      for (let b = 0; b < r.len && r.lblk + b < nblocks; b += chunk) {
        const cnt = Math.min(chunk, r.len - b, nblocks - r.lblk - b);
        const at = (r.pblk + b) * bs;
        const buf = await readExact(this.meta, at, cnt * bs, structure);
        const out: DirEntry[] = [];
        for (let k = 0; k < cnt; k++) {
          const blk = buf.subarray(k * bs, (k + 1) * bs);
          const first = r.lblk + b + k === 0;
          const bv = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
          const rec0 = bv.getUint16(4, true);
          let dx = 0;
          if (first && n.flags & FL.INDEX) dx = 0x20;
          else if (!first && bv.getUint32(0, true) === 0 && (rec0 === bs || (bs === 65536 && rec0 === 0))) dx = 8;
          if (dx && this.metadataCsum) this.checkDxTail(n, blk, dx, at + k * bs, structure);
          this.parseDirBlock(n, blk, at + k * bs, structure, first ? 0 : 2, dx === 0, out);
        }
        yield out;
      }
    }
  }

  /** Verify an htree (dx) block's tail checksum; `countOffset` is where limit/count sit. */
  private checkDxTail(n: ExtNode, blk: Uint8Array, countOffset: number, at: number, structure: string): void {
    if (countOffset + 4 > blk.length) return;
    const v = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
    const limit = v.getUint16(countOffset, true);
    const count = v.getUint16(countOffset + 2, true);
    const tail = countOffset + limit * 8;
    if (count > limit || tail + 8 > blk.length) {
      this.warn(`${structure}: htree block at ${at} has count ${count} / limit ${limit}; not verified`);
      return;
    }
    let c = crc32cRaw(this.inodeSeed(n), blk.subarray(0, countOffset + count * 8));
    c = crc32cRaw(c, blk.subarray(tail, tail + 4));
    c = crc32cRaw(c, new Uint8Array(4));
    if (c !== v.getUint32(tail + 4, true)) this.warn(`${structure}: htree block at ${at} checksum mismatch`);
  }

  /**
   * Parse one directory block. `slot0` is how many leading '.'/'..' entries are expected
   * (2 for block 0, else 0 means none are legitimate; inline dirs pass 2 since '.' and '..' are implicit).
   */
  private parseDirBlock(
    n: ExtNode,
    blk: Uint8Array,
    at: number,
    structure: string,
    dotsSeen: number,
    checkTail: boolean,
    out: DirEntry[],
  ): void {
    const v = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
    const size = blk.length;
    const filetype = (this.sb.incompat & INCOMPAT.FILETYPE) !== 0;
    let dataEnd = size;
    if (checkTail && size >= 12) {
      // metadata_csum leaf tail: a fake entry of 12 bytes at the end
      const t = size - 12;
      if (v.getUint32(t, true) === 0 && v.getUint16(t + 4, true) === 12 && blk[t + 6] === 0 && blk[t + 7] === 0xde) {
        dataEnd = t;
        if (this.metadataCsum) {
          const c = crc32cRaw(this.inodeSeed(n), blk.subarray(0, t));
          if (c !== v.getUint32(t + 8, true)) this.warn(`${structure}: directory block at ${at} checksum mismatch`);
        }
      }
    }
    let pos = 0;
    let dots = dotsSeen;
    while (pos + 8 <= dataEnd) {
      const ino = v.getUint32(pos, true);
      let rec = v.getUint16(pos + 4, true);
      if (size >= 65536 && (rec === 65535 || rec === 0)) rec = 65536;
      const nameLen = filetype ? blk[pos + 6] : v.getUint16(pos + 6, true) & 0xff;
      const ft = filetype ? blk[pos + 7] : 0;
      if (rec < 8 || rec % 4 !== 0 || pos + rec > size || 8 + nameLen > rec) {
        this.warn(`${structure}: bad directory entry at ${at + pos} (rec_len ${rec}); rest of block skipped`);
        return;
      }
      if (ino !== 0) {
        const nb = blk.subarray(pos + 8, pos + 8 + nameLen);
        const isDot = (nameLen === 1 && nb[0] === 0x2e) || (nameLen === 2 && nb[0] === 0x2e && nb[1] === 0x2e);
        if (isDot && dots < 2 && pos < 24) {
          dots++;
        } else if (nameLen === 0 || isDot || nb.indexOf(0x2f) >= 0 || nb.indexOf(0) >= 0) {
          this.warn(`${structure}: entry at ${at + pos} has an unsafe name ${JSON.stringify(td.decode(nb))}; skipped`);
        } else if (ino > this.sb.inodesCount) {
          this.warn(`${structure}: entry at ${at + pos} names inode ${ino}, out of range; skipped`);
        } else {
          out.push({ name: td.decode(nb), ino, type: TYPE_BY_DIRENT[ft] ?? 'unknown' });
        }
      }
      pos += rec;
    }
  }

  /** Look a name up in a directory (cached name maps for recently used directories). */
  async lookupChild(dir: Inode, name: string): Promise<DirEntry | undefined> {
    let m = this.dirCache.get(dir.ino);
    if (m) {
      this.dirCache.delete(dir.ino);
      this.dirCache.set(dir.ino, m);
    } else {
      const n = await this.node(dir.ino);
      if (n.pub.type !== 'dir') {
        throw new StrataError('USAGE', 'not a directory', this.where(`ext inode ${n.ino}`, n.at));
      }
      m = new Map();
      for await (const batch of this.dirBatches(n)) for (const e of batch) if (!m.has(e.name)) m.set(e.name, e);
      this.dirCache.set(dir.ino, m);
      this.dirCacheEntries += m.size;
      while (this.dirCacheEntries > DIR_CACHE_ENTRIES && this.dirCache.size > 1) {
        const k = this.dirCache.keys().next().value as number;
        this.dirCacheEntries -= this.dirCache.get(k)?.size ?? 0;
        this.dirCache.delete(k);
      }
    }
    const e = m.get(name);
    if (e && e.type === 'unknown') return { ...e, type: (await this.node(e.ino)).pub.type };
    return e;
  }

  async lookup(path: string): Promise<Inode> {
    return resolvePath(this, path, { followLast: false });
  }

  // ---------------------------------------------------------------- whole-volume views

  async info(): Promise<FsInfo> {
    const sb = this.sb;
    const iso = (s: number) => (s ? new Date(s * 1000).toISOString() : undefined);
    const state: string[] = [];
    state.push(sb.state & 1 ? 'clean' : 'not clean');
    if (sb.state & 2) state.push('with errors');
    return {
      kind: this.kind,
      label: sb.volumeName || undefined,
      uuid: formatUuid(sb.uuid),
      blockSize: sb.blockSize,
      totalBytes: sb.blocksCount * sb.blockSize,
      freeBytes: sb.freeBlocksCount * sb.blockSize,
      totalInodes: sb.inodesCount,
      freeInodes: sb.freeInodesCount,
      features: featureNames(sb.compat, sb.incompat, sb.roCompat),
      extra: {
        state: state.join(' '),
        blockCount: sb.blocksCount,
        freeBlocks: sb.freeBlocksCount,
        reservedBlocks: sb.rBlocksCount,
        clusterSize: sb.clusterSize,
        inodeSize: sb.inodeSize,
        groups: this.groupCount,
        blocksPerGroup: sb.blocksPerGroup,
        inodesPerGroup: sb.inodesPerGroup,
        revision: sb.revLevel,
        created: iso(sb.mkfsTime),
        mounted: iso(sb.mtime),
        written: iso(sb.wtime),
        lastChecked: iso(sb.lastCheck),
        mountCount: sb.mntCount,
        lastMountedOn: sb.lastMounted || undefined,
        journalInode: sb.compat & COMPAT.HAS_JOURNAL ? sb.journalInum : undefined,
        warnings: this.warnings.length,
      },
    };
  }

  /** Blocks of group g's superblock/GDT copies (and reserved GDT), as [block, count, kind] triples. */
  private groupSuperAndGdt(g: number): Array<[number, number, string]> {
    const sb = this.sb;
    const out: Array<[number, number, string]> = [];
    const dpb = sb.blockSize / sb.descSize;
    const gdtBlocks = Math.ceil(this.groupCount / dpb);
    const start = this.groupFirstBlock(g);
    const metaBg = (sb.incompat & INCOMPAT.META_BG) !== 0;
    const hasSuper = groupHasSuper(sb, g);
    let blk = start;
    if (hasSuper) {
      out.push([blk, 1, 'superblock']);
      blk++;
      const old = metaBg ? Math.min(sb.firstMetaBg, gdtBlocks) : gdtBlocks;
      if (old > 0) out.push([blk, old, 'group-descriptors']);
      blk += old;
      if (sb.reservedGdtBlocks) out.push([blk, sb.reservedGdtBlocks, 'reserved-gdt']);
    }
    if (metaBg) {
      const mg = Math.floor(g / dpb);
      const r = g % dpb;
      if (mg >= sb.firstMetaBg && (r === 0 || r === 1 || r === dpb - 1)) {
        out.push([start + (hasSuper ? 1 : 0), 1, 'group-descriptors']);
      }
    }
    return out;
  }

  async allocation(): Promise<ByteRange[]> {
    const sb = this.sb;
    const bs = sb.blockSize;
    const ratio = sb.clusterSize / bs;
    const csum = (sb.roCompat & (RO_COMPAT.GDT_CSUM | RO_COMPAT.METADATA_CSUM)) !== 0;
    const out: ByteRange[] = [];
    const fsEnd = sb.blocksCount * bs;
    pushRange(out, 0, sb.firstDataBlock * bs);
    // where each group's own bitmaps and inode table sit, bucketed by the group that holds them
    const itBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / bs);
    const placed = new Map<number, Array<[number, number]>>();
    const place = (blk: number, count: number) => {
      const g = Math.floor((blk - sb.firstDataBlock) / sb.blocksPerGroup);
      const gEnd = Math.floor((blk + count - 1 - sb.firstDataBlock) / sb.blocksPerGroup);
      for (let h = g; h <= gEnd; h++) {
        let l = placed.get(h);
        if (!l) placed.set(h, (l = []));
        l.push([blk, count]);
      }
    };
    for (const d of this.groups) {
      place(d.blockBitmap, 1);
      place(d.inodeBitmap, 1);
      place(d.inodeTable, itBlocks);
    }
    const cpg = sb.clustersPerGroup;
    for (let g = 0; g < this.groupCount; g++) {
      const d = this.groups[g];
      const gStart = this.groupFirstBlock(g);
      const gEnd = Math.min(sb.blocksCount, gStart + sb.blocksPerGroup);
      if (csum && d.flags & BG_BLOCK_UNINIT) {
        const blocks: Array<[number, number]> = [];
        for (const [b, c] of this.groupSuperAndGdt(g)) blocks.push([b, c]);
        for (const [b, c] of placed.get(g) ?? []) blocks.push([b, c]);
        blocks.sort((a, b) => a[0] - b[0]);
        for (const [b, c] of blocks) {
          // round to clusters
          const s = Math.max(gStart, Math.floor(b / ratio) * ratio);
          const e = Math.min(gEnd, Math.ceil((b + c) / ratio) * ratio);
          if (e > s) pushRange(out, s * bs, (e - s) * bs);
        }
        continue;
      }
      const structure = `ext block bitmap of group ${g}`;
      const bm = await readExact(this.meta, d.blockBitmap * bs, bs, structure);
      const bits = Math.min(cpg, Math.ceil((gEnd - gStart) / ratio));
      const emit = (i0: number, i1: number) => {
        const s = (gStart + i0 * ratio) * bs;
        const e = Math.min((gStart + i1 * ratio) * bs, gEnd * bs);
        pushRange(out, s, e - s);
      };
      let runStart = -1;
      const nbytes = Math.ceil(bits / 8);
      for (let byte = 0; byte < nbytes; byte++) {
        const x = bm[byte];
        const base = byte * 8;
        if (x === 0xff && base + 8 <= bits) {
          if (runStart < 0) runStart = base;
          continue;
        }
        if (x === 0 && base + 8 <= bits) {
          if (runStart >= 0) {
            emit(runStart, base);
            runStart = -1;
          }
          continue;
        }
        for (let k = 0; k < 8 && base + k < bits; k++) {
          if ((x >> k) & 1) {
            if (runStart < 0) runStart = base + k;
          } else if (runStart >= 0) {
            emit(runStart, base + k);
            runStart = -1;
          }
        }
      }
      if (runStart >= 0) emit(runStart, bits);
    }
    // never claim bytes past the file system's end
    const clipped: ByteRange[] = [];
    for (const r of out) {
      const e = Math.min(r.offset + r.length, fsEnd);
      if (e > r.offset) clipped.push({ offset: r.offset, length: e - r.offset });
    }
    return clipped;
  }

  async *metadataRegions(): AsyncIterable<OwnedRange> {
    const sb = this.sb;
    const bs = sb.blockSize;
    yield { offset: 0, length: 1024, kind: 'reserved', detail: 'boot sector' };
    yield { offset: 1024, length: Math.max(1024, bs - 1024), kind: 'superblock', detail: 'primary' };
    const itBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / bs);
    for (let g = 0; g < this.groupCount; g++) {
      for (const [b, c, kind] of this.groupSuperAndGdt(g)) {
        if (g === 0 && kind === 'superblock') continue;
        yield { offset: b * bs, length: c * bs, kind, detail: `group ${g}` };
      }
      const d = this.groups[g];
      yield { offset: d.blockBitmap * bs, length: bs, kind: 'block-bitmap', detail: `group ${g}` };
      yield { offset: d.inodeBitmap * bs, length: bs, kind: 'inode-bitmap', detail: `group ${g}` };
      yield {
        offset: d.inodeTable * bs,
        length: itBlocks * bs,
        kind: 'inode-table',
        detail: `group ${g}`,
        inodes: { first: g * sb.inodesPerGroup + 1, size: sb.inodeSize },
      };
    }
    // per-inode structures
    const xattrBlocks = new Set<number>();
    const journal = sb.compat & COMPAT.HAS_JOURNAL ? sb.journalInum : 0;
    for (let g = 0; g < this.groupCount; g++) {
      const d = this.groups[g];
      const csum = (sb.roCompat & (RO_COMPAT.GDT_CSUM | RO_COMPAT.METADATA_CSUM)) !== 0;
      if (csum && d.flags & BG_INODE_UNINIT) continue;
      const bm = await readExact(this.meta, d.inodeBitmap * bs, bs, `ext inode bitmap of group ${g}`);
      let used = sb.inodesPerGroup;
      if (csum) used = Math.max(0, sb.inodesPerGroup - d.itableUnused);
      for (let i = 0; i < used; i++) {
        if (bm[i >> 3] === 0 && (i & 7) === 0) {
          i += 7;
          continue;
        }
        if (!((bm[i >> 3] >> (i & 7)) & 1)) continue;
        const ino = g * sb.inodesPerGroup + i + 1;
        if (ino > sb.inodesCount) break;
        let n: ExtNode;
        try {
          n = await this.node(ino);
        } catch (e) {
          if (e instanceof StrataError) {
            this.warn(`metadata scan: ${e.message}`);
            continue;
          }
          throw e;
        }
        if (n.links === 0 && ino >= sb.firstIno) continue;
        if (n.fileAcl && !xattrBlocks.has(n.fileAcl) && n.fileAcl < sb.blocksCount) {
          xattrBlocks.add(n.fileAcl);
          yield { offset: n.fileAcl * bs, length: bs, kind: 'xattr-block', detail: `inode ${ino}`, ino };
        }
        if (ino === 7) {
          // resize inode: its double-indirect block (the reserved GDT blocks are listed per group)
          const dind = new DataView(n.raw.buffer, n.raw.byteOffset).getUint32(0x28 + 13 * 4, true);
          if (dind && dind < sb.blocksCount) yield { offset: dind * bs, length: bs, kind: 'resize-inode', ino };
          continue;
        }
        if (n.flags & FL.INLINE_DATA || n.pub.type === 'char' || n.pub.type === 'block') continue;
        if (n.pub.type === 'fifo' || n.pub.type === 'socket' || this.isFastSymlink(n)) continue;
        const tree: number[] = [];
        let runs: Run[];
        try {
          runs = await this.runs(n, tree);
        } catch (e) {
          if (e instanceof StrataError) {
            this.warn(`metadata scan: ${e.message}`);
            continue;
          }
          throw e;
        }
        const treeKind = n.flags & FL.EXTENTS ? 'extent-tree' : 'indirect-block';
        tree.sort((a, b) => a - b);
        for (const r of mergeBlocks(tree)) {
          yield { offset: r[0] * bs, length: r[1] * bs, kind: treeKind, detail: `inode ${ino}`, ino };
        }
        let kind: string | undefined;
        if (ino === journal) kind = 'journal';
        else if (n.pub.type === 'dir') kind = 'directory';
        else if (ino < sb.firstIno && ino !== 2) kind = 'reserved-inode';
        if (kind) {
          for (const r of runs) {
            yield { offset: r.pblk * bs, length: r.len * bs, kind, detail: `inode ${ino}`, ino };
          }
        }
      }
    }
  }

  async close(): Promise<void> {
    this.inodeCache.clear();
    this.itCache.clear();
    this.mapCache.clear();
    this.dirCache.clear();
    await this.meta.close();
  }
}

function mergeBlocks(sorted: number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const b of sorted) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === b) last[1]++;
    else out.push([b, 1]);
  }
  return out;
}

/** What blkid would call this file system. */
function extKind(sb: Superblock): string {
  const ext3Ro = RO_COMPAT.SPARSE_SUPER | RO_COMPAT.LARGE_FILE | RO_COMPAT.BTREE_DIR;
  const ext3In = INCOMPAT.FILETYPE | INCOMPAT.RECOVER | INCOMPAT.META_BG;
  if (sb.roCompat & ~ext3Ro || sb.incompat & ~ext3In) return 'ext4';
  return sb.compat & COMPAT.HAS_JOURNAL ? 'ext3' : 'ext2';
}

export const extDriver: FsDriver = {
  kind: 'ext',
  probe(head: Uint8Array, size: number): boolean {
    if (head.length < 2048 || size < 2048) return false;
    return head[1024 + 0x38] === 0x53 && head[1024 + 0x39] === 0xef;
  },
  open(volume: ByteSource): Promise<FileSystem> {
    return ExtFileSystem.open(volume);
  },
};
