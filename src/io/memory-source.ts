import { type ByteSource, clampRead } from './byte-source.js';

/** A source over bytes already in memory (tests, small embedded images). */
export class MemorySource implements ByteSource {
  readonly size: number;
  constructor(
    private readonly bytes: Uint8Array,
    readonly name = 'memory',
  ) {
    this.size = bytes.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    return this.bytes.subarray(offset, offset + n);
  }
}
