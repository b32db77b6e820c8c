import type { ByteSource } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { crc32cRaw } from '../../util/crc32c.js';
import { memoryShare } from '../../util/memory.js';
import { INCOMPAT, RO_COMPAT, type Superblock } from './superblock.js';

const MAX_WARNINGS = 1000;

/** A block group's descriptor, decoded (group-desc.ts reads them; the context holds them). */
export interface GroupDesc {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  flags: number;
  freeBlocks: number;
  freeInodes: number;
  usedDirs: number;
  itableUnused: number;
  /** bg_checksum as stored. */
  checksum: number;
}

/** Where a StrataError points: the file, the structure and (when known) its volume offset. */
export interface Where {
  file: string;
  structure: string;
  offset?: number;
}

/**
 * What every ext module shares: the volume and its name, the superblock and the values derived
 * from it, the group descriptors, the metadata block cache and the warnings list. The modules
 * (group descriptors, inodes, block maps, directories, xattrs, layout) take this and nothing
 * else from the file system; the facade (index.ts) owns one.
 */
export class ExtContext {
  readonly name: string;
  readonly blockSize: number;
  readonly groupCount: number;
  /** metadata_csum is on: verify the crc32c of every structure that carries one. */
  readonly metadataCsum: boolean;
  /** The crc32c seed of every metadata checksum (the UUID's crc, or s_checksum_seed). */
  readonly csumSeed: number;
  /**
   * Cache of metadata blocks (directories, tree blocks, bitmaps, small files). 16 KiB pieces:
   * directory blocks are scattered and each async read of 128 KiB cost ~1 ms (a 6.8k-entry
   * walk made ~260 of them); HTTP volumes have a 1 MiB cache below this one. 3/16 of the
   * memory budget (48 MiB at the default 256 MiB).
   */
  readonly meta: CachedSource;
  /** Filled by the facade's open from the group descriptor table. */
  groups: GroupDesc[] = [];
  readonly warnings: string[] = [];
  private warningsDropped = 0;

  constructor(
    readonly volume: ByteSource,
    readonly sb: Superblock,
    /** The metadata cache's capacity (FsOpenOptions.metadataCacheBytes), default 3/16 of the memory budget. */
    metadataCacheBytes?: number,
    /** The inode-table cache's capacity (FsOpenOptions.inodeCacheBytes), default 1/16 of the memory budget (see InodeTable). */
    readonly inodeCacheBytes?: number,
  ) {
    this.name = volume.name;
    this.blockSize = sb.blockSize;
    this.groupCount = Math.ceil((sb.blocksCount - sb.firstDataBlock) / sb.blocksPerGroup);
    this.metadataCsum = (sb.roCompat & RO_COMPAT.METADATA_CSUM) !== 0;
    this.csumSeed = sb.incompat & INCOMPAT.CSUM_SEED ? sb.checksumSeed : crc32cRaw(0xffffffff, sb.uuid);
    this.meta = new CachedSource(volume, {
      blockSize: 16 * 1024,
      capacity: metadataCacheBytes ?? memoryShare(3 / 16, 4 << 20, 48 << 20),
    });
  }

  warn(msg: string): void {
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(msg);
    else if (this.warningsDropped++ === 0) this.warnings.push('... further warnings suppressed');
  }

  where(structure: string, offset?: number): Where {
    return { file: this.name, structure, offset };
  }
}

/** Blocks of an inode table (the same in every group). */
export function inodeTableBlocks(sb: Superblock): number {
  return Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
}

/** First block of group g. */
export function groupFirstBlock(sb: Superblock, g: number): number {
  return sb.firstDataBlock + g * sb.blocksPerGroup;
}

export const td = new TextDecoder('utf-8');

/** Two zero bytes: what a checksum field reads as while its structure is checksummed. */
export const ZERO2 = new Uint8Array(2);
