import type { ByteSource } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { GenCache } from '../../util/gen-cache.js';
import { memoryShare } from '../../util/memory.js';
import type { ChunkMap } from './chunks.js';
import type { Node } from './node.js';
import type { Superblock } from './superblock.js';

const MAX_WARNINGS = 1000;

/** One device of the file system that was given: its bytes and a metadata cache over them. */
export interface Device {
  devid: number;
  source: ByteSource;
  meta: CachedSource;
}

/**
 * What every btrfs module shares: the devices (the one opened first is the primary, whose
 * offsets volume offsets are), the superblock, the chunk map (logical to physical), the
 * tree-node cache and the warnings list. The facade (index.ts) owns one.
 */
export class BtrfsContext {
  readonly name: string;
  readonly devices = new Map<number, Device>();
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
    others: ReadonlyArray<{ devid: number; source: ByteSource }> = [],
  ) {
    this.name = volume.name;
    const all = [{ devid: sb.devid, source: volume }, ...others];
    const share = memoryShare(3 / 16, 4 << 20, 48 << 20);
    for (const d of all) {
      const capacity = Math.max(4 << 20, Math.floor(share / all.length));
      this.devices.set(d.devid, {
        devid: d.devid,
        source: d.source,
        meta: new CachedSource(d.source, { blockSize: 64 * 1024, capacity }),
      });
    }
  }

  /** The primary device's metadata cache. */
  get meta(): CachedSource {
    return this.device(this.sb.devid).meta;
  }

  device(devid: number): Device {
    const d = this.devices.get(devid);
    if (!d) throw new Error(`btrfs: device ${devid} was not given`); // chunk map hands out given devices only
    return d;
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

  /** How many copies of the logical bytes at `logical` can be read (1 single/RAID0, 2 DUP/RAID1 ...). */
  mirrors(logical: number, length: number, structure: string): number {
    let n = Number.POSITIVE_INFINITY;
    for (const p of this.chunks.pieces(logical, length, structure)) n = Math.min(n, p.copies.length);
    return Number.isFinite(n) ? n : 1;
  }

  /**
   * Read logical bytes (copy `mirror` of each piece, the first by default), across stripes and
   * devices; the range must lie in one chunk. `cached` reads through the metadata caches.
   */
  async readLogical(
    logical: number,
    length: number,
    structure: string,
    mirror = 0,
    cached = false,
  ): Promise<Uint8Array> {
    const pieces = this.chunks.pieces(logical, length, structure);
    const read = (p: (typeof pieces)[number]) => {
      const c = p.copies[mirror % p.copies.length];
      const d = this.device(c.devid);
      return (cached ? d.meta : d.source).read(c.physical, p.length);
    };
    if (pieces.length === 1) return read(pieces[0]);
    const out = new Uint8Array(length);
    const got = await Promise.all(pieces.map(read));
    for (let i = 0; i < pieces.length; i++) out.set(got[i].subarray(0, pieces[i].length), pieces[i].logical - logical);
    return out;
  }
}
