import type { ByteSource } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { GenCache } from '../../util/gen-cache.js';
import { memoryShare } from '../../util/memory.js';
import type { ChunkMap } from './chunks.js';
import type { Node } from './node.js';
import type { Superblock } from './superblock.js';

const MAX_WARNINGS = 1000;

/**
 * What every btrfs module shares: the volume, the superblock, the chunk map (logical to
 * physical), the tree-node cache and the warnings list. The facade (index.ts) owns one.
 */
export class BtrfsContext {
  readonly name: string;
  readonly meta: CachedSource;
  readonly nodes = new GenCache<number, Node>(4096);
  /** Tree blocks being read, so concurrent readers share one read (see readNode). */
  readonly loading = new Map<number, Promise<Node>>();
  readonly warnings: string[] = [];
  private dropped = 0;
  private warnedCsum = false;

  constructor(
    readonly volume: ByteSource,
    readonly sb: Superblock,
    readonly chunks: ChunkMap,
  ) {
    this.name = volume.name;
    this.meta = new CachedSource(volume, { blockSize: 64 * 1024, capacity: memoryShare(3 / 16, 4 << 20, 48 << 20) });
  }

  warn(msg: string): void {
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(msg);
    else if (this.dropped++ === 0) this.warnings.push('... further warnings suppressed');
  }

  /** Checksum types we do not verify are named once. */
  csumNotVerified(name: string): void {
    if (this.warnedCsum) return;
    this.warnedCsum = true;
    this.warn(`tree-block checksums are ${name}: not verified`);
  }

  where(structure: string, offset?: number) {
    return { file: this.name, structure, offset };
  }

  /** Read logical bytes (first copy); the range must lie in one chunk. */
  async readLogical(logical: number, length: number, structure: string): Promise<Uint8Array> {
    const [phys] = this.chunks.map(logical, length, structure);
    return this.volume.read(phys, length);
  }
}
