import { type ByteSource, readExact } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { type ErrorCode, StrataError } from '../../util/errors.js';
import type { FatGeometry } from './boot.js';
import type { ClusterRun } from './table.js';

const MAX_WARNINGS = 1000;

/** What every FAT/exFAT structure reader shares: the volume, a metadata cache, the geometry and the warning list. */
export class FatContext {
  readonly name: string;
  readonly meta: CachedSource;
  readonly warnings: string[] = [];
  private dropped = 0;

  constructor(
    readonly volume: ByteSource,
    readonly geo: FatGeometry,
  ) {
    this.name = volume.name;
    this.meta = new CachedSource(volume, { blockSize: 64 * 1024, capacity: 32 << 20 });
  }

  warn(msg: string): void {
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(msg);
    else if (this.dropped++ === 0) this.warnings.push('... further warnings suppressed');
  }

  error(code: ErrorCode, message: string, structure: string, offset?: number) {
    return new StrataError(code, message, { file: this.name, structure, offset });
  }

  /** Read bytes that must all exist (metadata), through the cache. */
  read(offset: number, length: number, structure: string): Promise<Uint8Array> {
    return readExact(this.meta, offset, length, structure);
  }

  /** Volume offset of a cluster. */
  clusterOffset(c: number): number {
    return this.geo.heapOffset + (c - 2) * this.geo.clusterSize;
  }

  /** Volume byte ranges of cluster runs. */
  ranges(runs: ClusterRun[]): Array<{ offset: number; length: number }> {
    return runs.map((r) => ({ offset: this.clusterOffset(r.first), length: r.count * this.geo.clusterSize }));
  }
}
