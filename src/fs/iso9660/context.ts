import { type ByteSource, readExact } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { type ErrorCode, StrataError } from '../../util/errors.js';
import { memoryShare } from '../../util/memory.js';

const MAX_WARNINGS = 1000;

/** What the ISO 9660 structure readers share: the volume, a metadata cache and the warning list. */
export class IsoContext {
  readonly name: string;
  readonly meta: CachedSource;
  readonly warnings: string[] = [];
  private dropped = 0;

  constructor(readonly volume: ByteSource) {
    this.name = volume.name;
    this.meta = new CachedSource(volume, { blockSize: 64 * 1024, capacity: memoryShare(1 / 8, 4 << 20, 32 << 20) });
  }

  warn(msg: string): void {
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(msg);
    else if (this.dropped++ === 0) this.warnings.push('... further warnings suppressed');
  }

  error(code: ErrorCode, message: string, structure: string, offset?: number): StrataError {
    return new StrataError(code, message, { file: this.name, structure, offset });
  }

  read(offset: number, length: number, structure: string): Promise<Uint8Array> {
    return readExact(this.meta, offset, length, structure);
  }
}
