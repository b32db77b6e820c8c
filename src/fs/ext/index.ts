/**
 * ext2/3/4, read-only. This file is the facade: it opens the volume and wires the modules,
 * one per on-disk structure, each taking the shared ExtContext (context.ts):
 *
 * - superblock.ts  struct ext4_super_block, feature bits, backup placement
 * - group-desc.ts  struct ext4_group_desc (32 and 64 bytes), the descriptor table and its checksums
 * - inode.ts       struct ext4_inode, its checksum, the inode tables and their cache
 * - block-map.ts   extent trees and indirect blocks (a file's runs), with a cache of runs
 * - directory.ts   linear, htree and inline directory blocks, and the lookup cache
 * - xattr.ts       in-inode and block xattrs, inline data (system.data)
 * - data.ts        a file's bytes and where they lie (runs, inline data, fast symlinks)
 * - layout.ts      allocation bitmaps and the owners of metadata regions
 * - cache.ts       the generational cache and the inode slab the modules keep
 *
 * Every structure's field offsets are declared once, as an enum beside its decoder (the
 * bundler inlines enum members, so the hot decoders read constants). The modules never
 * import the facade; the new file systems take this shape.
 */
import { type ByteSource, readExact } from '../../io/byte-source.js';
import { fileView } from '../../io/filter-source.js';
import { crc32cRaw } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import { codeOfType, UNKNOWN_CODE } from '../name-listing.js';
import type {
  ByteRange,
  DirEntry,
  FileExtent,
  FileSystem,
  FileType,
  FsDriver,
  FsInfo,
  FsOpenOptions,
  Inode,
  NameListing,
  OwnedRange,
} from '../types.js';
import { resolvePath } from '../walk.js';
import { BlockMap } from './block-map.js';
import { ExtContext, td } from './context.js';
import { fileExtents, fileExtentsNow, readData } from './data.js';
import { Directories } from './directory.js';
import { readGroupDescriptors } from './group-desc.js';
import { type ExtNode, FL, INODE_PIECE, InodeTable, inodeSeed } from './inode.js';
import { allocation, metadataRegions } from './layout.js';
import {
  COMPAT,
  featureName,
  featureNames,
  formatUuid,
  INCOMPAT,
  INCOMPAT_SUPPORTED,
  parseSuperblock,
  RO_COMPAT,
  SB,
  SB_OFFSET,
  SB_SIZE,
  type Superblock,
} from './superblock.js';
import { blockXattrs, bodyXattrs } from './xattr.js';

const MAX_XATTR_VALUE = 64 << 20;
/** Largest directory handed out whole for a native listing (plusDirectory): bigger ones are read in batches. */
const MAX_PLUS_DIRECTORY = 16 << 20;

/** The volume's facts a native listing needs (plusGeometry). */
export interface ExtPlusGeometry {
  blockSize: number;
  inodeSize: number;
  inodesPerGroup: number;
  inodesCount: number;
  metadataCsum: boolean;
  hugeFile: boolean;
  fileType: boolean;
  csumSeed: number;
  /** Volume offset of each group's inode table. */
  inodeTables: Float64Array;
  /** Inode tables are read in pieces of this many bytes, at multiples of it (inodePiece). */
  pieceSize: number;
  blocksCount: number;
  firstDataBlock: number;
  volumeSize: number;
  /** The local file the volume is a plain window of (its descriptor, where the volume starts), if it is one. */
  file?: { fd: number; offset: number };
}

/** A directory's blocks for a native listing (plusDirectory). */
export interface ExtPlusDirectory {
  /** Logical blocks 0.. of the directory, contiguous. */
  blocks: Uint8Array;
  /** The checksum seed of its blocks (metadata_csum). */
  seed: number;
  /** An htree directory (block 0 is the index root). */
  indexed: boolean;
}
/** Longest symlink target we read. */
const MAX_SYMLINK = 65536;

export class ExtFileSystem implements FileSystem {
  readonly kind: string;
  readonly blockSize: number;
  readonly volume: ByteSource;
  readonly sb: Superblock;
  private readonly ctx: ExtContext;
  private readonly table: InodeTable;
  private readonly map: BlockMap;
  private readonly dirs: Directories;

  private constructor(ctx: ExtContext) {
    this.ctx = ctx;
    this.volume = ctx.volume;
    this.sb = ctx.sb;
    this.blockSize = ctx.blockSize;
    this.kind = extKind(ctx.sb);
    this.table = new InodeTable(ctx);
    this.map = new BlockMap(ctx);
    this.dirs = new Directories(ctx, this.map);
  }

  get warnings(): string[] {
    return this.ctx.warnings;
  }

  static async open(volume: ByteSource, options: FsOpenOptions = {}): Promise<ExtFileSystem> {
    const raw = await readExact(volume, SB_OFFSET, SB_SIZE, 'ext superblock');
    const sb = parseSuperblock(new Uint8Array(raw), volume.name, SB_OFFSET);
    const unknown = sb.incompat & ~INCOMPAT_SUPPORTED;
    if (unknown) {
      const names: string[] = [];
      for (let b = 0; b < 32; b++) if ((unknown >>> b) & 1) names.push(featureName(1, 2 ** b));
      const what = sb.incompat & INCOMPAT.JOURNAL_DEV ? ' (this is an external journal device)' : '';
      throw new StrataError('UNSUPPORTED', `incompatible ext feature(s) not supported: ${names.join(', ')}${what}`, {
        file: volume.name,
        structure: 'ext superblock',
        offset: SB_OFFSET + SB.featureIncompat,
      });
    }
    const ctx = new ExtContext(volume, sb, options.metadataCacheBytes, options.inodeCacheBytes);
    if (ctx.metadataCsum) {
      if (sb.checksumType !== 1) ctx.warn(`superblock: unknown checksum type ${sb.checksumType}`);
      const c = crc32cRaw(0xffffffff, sb.raw.subarray(0, SB.checksum));
      if (c !== sb.checksum) ctx.warn('superblock checksum mismatch (metadata_csum)');
    }
    if (sb.incompat & INCOMPAT.RECOVER) {
      ctx.warn('needs_recovery is set: the journal was not replayed, recent changes may be missing');
    }
    if (sb.blocksCount * sb.blockSize > volume.size) {
      ctx.warn(
        `the file system claims ${sb.blocksCount * sb.blockSize} bytes but the volume has ${volume.size}; reads past the end will fail`,
      );
    }
    const maxInodes = ctx.groupCount * sb.inodesPerGroup;
    if (sb.inodesCount > maxInodes) {
      throw new StrataError(
        'CORRUPT',
        `inode count ${sb.inodesCount} exceeds ${ctx.groupCount} groups x ${sb.inodesPerGroup}`,
        ctx.where('ext superblock', SB_OFFSET),
      );
    }
    ctx.groups = await readGroupDescriptors(ctx);
    return new ExtFileSystem(ctx);
  }

  warn(msg: string): void {
    this.ctx.warn(msg);
  }

  // ---------------------------------------------------------------- inodes

  private node(ino: number): Promise<ExtNode> {
    return this.table.node(ino);
  }

  async root(): Promise<Inode> {
    const n = await this.node(2);
    if (n.pub.type !== 'dir') {
      throw new StrataError('CORRUPT', 'the root inode is not a directory', this.ctx.where('ext inode 2', n.at));
    }
    return n.pub;
  }

  inode(ino: number): Promise<Inode> {
    // Most loads of a walk find their inode-table piece in memory: answer without an async
    // function frame and its extra promise hops (thousands per listing).
    try {
      const n = this.table.nodeNow(ino);
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
      const n = this.table.nodeNow(inos[i]);
      if (n) out[i] = n.pub;
      else (missing ??= []).push(i);
    }
    if (!missing) return out;
    // One read per inode-table piece still missing (in parallel), then parse without awaits.
    await this.table.prefetch(missing.map((i) => inos[i]));
    for (const i of missing) out[i] = (await this.node(inos[i])).pub;
    return out;
  }

  // ---------------------------------------------------------------- data

  async read(file: Inode, offset: number, length: number): Promise<Uint8Array> {
    const n = await this.node(file.ino);
    const structure = `ext inode ${n.ino}`;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new StrataError('USAGE', `bad read request (${offset}, ${length})`, this.ctx.where(structure));
    }
    if (n.flags & FL.ENCRYPT) {
      throw new StrataError('UNSUPPORTED', 'file content is encrypted (ext4 encrypt); names and metadata only', {
        ...this.ctx.where(structure, n.at),
      });
    }
    if (length > LIMITS.maxReadBytes) {
      throw new StrataError('LIMIT', `read of ${length} bytes exceeds the limit`, this.ctx.where(structure));
    }
    return readData(this.ctx, this.map, n, offset, length);
  }

  async readlink(link: Inode): Promise<string> {
    const n = await this.node(link.ino);
    const where = this.ctx.where(`ext inode ${n.ino}`, n.at);
    if (n.pub.type !== 'symlink') throw new StrataError('USAGE', 'not a symbolic link', where);
    if (n.flags & FL.ENCRYPT) {
      throw new StrataError('UNSUPPORTED', 'symlink target is encrypted (ext4 encrypt)', where);
    }
    if (n.size > MAX_SYMLINK) throw new StrataError('CORRUPT', `symlink target of ${n.size} bytes`, where);
    const b = await readData(this.ctx, this.map, n, 0, n.size);
    return td.decode(b);
  }

  extents(file: Inode): AsyncIterable<FileExtent> {
    return fileExtents(this.ctx, this.map, this.table, file.ino);
  }

  extentsNow(file: Inode): FileExtent[] | undefined {
    return fileExtentsNow(this.ctx, this.map, this.table, file.ino);
  }

  async xattrs(file: Inode): Promise<Map<string, Uint8Array>> {
    const n = await this.node(file.ino);
    const out = new Map<string, Uint8Array>();
    const all = [...bodyXattrs(this.ctx, n), ...(await blockXattrs(this.ctx, n))];
    const where = () => this.ctx.where(`ext inode ${n.ino} xattrs`, n.at);
    for (const e of all) {
      if (e.name === 'system.data') continue; // inline data, not an attribute the kernel lists
      if (e.value) out.set(e.name, e.value);
      else if (e.valueInum) {
        if (e.valueSize > MAX_XATTR_VALUE) {
          throw new StrataError('LIMIT', `xattr ${e.name} value of ${e.valueSize} bytes`, where());
        }
        const vn = await this.node(e.valueInum);
        if (!(vn.flags & FL.EA_INODE)) {
          const msg = `xattr ${e.name} names inode ${e.valueInum}, which is not an EA inode`;
          throw new StrataError('CORRUPT', msg, where());
        }
        out.set(e.name, await readData(this.ctx, this.map, vn, 0, e.valueSize));
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- directories

  async *readdir(dir: Inode): AsyncIterable<DirEntry> {
    const n = await this.dirNode(dir);
    for await (const batch of this.dirs.batches(n)) {
      await this.typeUnknown(batch);
      yield* batch;
    }
  }

  async readdirAll(dir: Inode): Promise<DirEntry[]> {
    const n = await this.dirNode(dir);
    let all: DirEntry[] | undefined;
    for await (const batch of this.dirs.batches(n)) {
      await this.typeUnknown(batch);
      if (!all) all = batch;
      else for (const e of batch) all.push(e);
    }
    return all ?? [];
  }

  /** The volume's facts a native listing needs (src/serve/fuse/ext-plus.ts). */
  plusGeometry(): ExtPlusGeometry {
    const sb = this.sb;
    return {
      blockSize: this.blockSize,
      inodeSize: sb.inodeSize,
      inodesPerGroup: sb.inodesPerGroup,
      inodesCount: sb.inodesCount,
      metadataCsum: this.ctx.metadataCsum,
      hugeFile: (sb.roCompat & RO_COMPAT.HUGE_FILE) !== 0,
      fileType: (sb.incompat & INCOMPAT.FILETYPE) !== 0,
      csumSeed: this.ctx.csumSeed,
      inodeTables: Float64Array.from(this.ctx.groups, (g) => g.inodeTable * this.blockSize),
      pieceSize: INODE_PIECE,
      blocksCount: sb.blocksCount,
      firstDataBlock: sb.firstDataBlock,
      volumeSize: this.volume.size,
      file: fileView(this.volume),
    };
  }

  /**
   * A directory's blocks from logical block 0 on, read through the metadata cache as
   * readdir reads them, for a native listing; undefined for what only readdir serves
   * (inline or encrypted directories, holes or unwritten runs, very large directories).
   */
  async plusDirectory(dir: Inode): Promise<ExtPlusDirectory | undefined> {
    const n = await this.dirNode(dir);
    if (n.flags & (FL.INLINE_DATA | FL.ENCRYPT)) return undefined;
    const bs = this.blockSize;
    const nblocks = Math.ceil(n.size / bs);
    if (nblocks * bs > MAX_PLUS_DIRECTORY) return undefined;
    const runs = await this.map.runs(n);
    const parts: Uint8Array[] = [];
    let next = 0;
    for (const r of runs) {
      if (next >= nblocks) break;
      if (r.unwritten || r.lblk !== next) return undefined;
      const cnt = Math.min(r.len, nblocks - next);
      parts.push(await readExact(this.ctx.meta, r.pblk * bs, cnt * bs, `ext directory inode ${n.ino}`));
      next += cnt;
    }
    let blocks: Uint8Array;
    if (parts.length === 1) blocks = parts[0];
    else {
      blocks = new Uint8Array(next * bs);
      let at = 0;
      for (const p of parts) {
        blocks.set(p, at);
        at += p.length;
      }
    }
    return { blocks, seed: this.ctx.metadataCsum ? inodeSeed(this.ctx, n) : 0, indexed: (n.flags & FL.INDEX) !== 0 };
  }

  /** Inode-table piece `k` (volume offset k * pieceSize) when in memory. */
  inodePieceNow(k: number): Uint8Array | undefined {
    return this.table.pieceNow(k * INODE_PIECE);
  }

  /** Inode-table piece `k`, read when not in memory. */
  inodePiece(k: number): Promise<Uint8Array> {
    return this.table.piece(k * INODE_PIECE);
  }

  async readdirNames(dir: Inode): Promise<NameListing> {
    const listing = await this.dirs.names(await this.dirNode(dir));
    const types = listing.types;
    for (let i = 0; i < listing.count; i++) {
      if (types[i] !== UNKNOWN_CODE) continue;
      // as typeUnknown: the type from the inode
      try {
        types[i] = codeOfType((await this.node(listing.inos[i])).pub.type);
      } catch (err) {
        if (!(err instanceof StrataError)) throw err;
      }
    }
    return listing;
  }

  private async dirNode(dir: Inode): Promise<ExtNode> {
    const n = await this.node(dir.ino);
    if (n.pub.type !== 'dir') {
      throw new StrataError('USAGE', 'not a directory', this.ctx.where(`ext inode ${n.ino}`, n.at));
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

  /** Look a name up in a directory (cached name maps for recently used directories). */
  async lookupChild(dir: Inode, name: string): Promise<DirEntry | undefined> {
    const m = this.dirs.cached(dir.ino) ?? (await this.dirs.nameMap(await this.dirNode(dir)));
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
        groups: this.ctx.groupCount,
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

  allocation(): Promise<ByteRange[]> {
    return allocation(this.ctx);
  }

  metadataRegions(): AsyncIterable<OwnedRange> {
    return metadataRegions(this.ctx, this.table, this.map);
  }

  async close(): Promise<void> {
    this.table.clear();
    this.map.clear();
    this.dirs.clear();
    await this.ctx.meta.close();
  }
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
    if (head.length < SB_OFFSET + SB_SIZE || size < SB_OFFSET + SB_SIZE) return false;
    return head[SB_OFFSET + SB.magic] === 0x53 && head[SB_OFFSET + SB.magic + 1] === 0xef;
  },
  open(volume: ByteSource, options?: FsOpenOptions): Promise<FileSystem> {
    return ExtFileSystem.open(volume, options);
  },
};
