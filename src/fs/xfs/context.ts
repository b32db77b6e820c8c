import { type ByteSource, readExact } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { crc32cRange } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { memoryShare } from '../../util/memory.js';
import { hasCrc, hasFtype, type Superblock } from './superblock.js';

const MAX_WARNINGS = 1000;
const ZERO4 = new Uint8Array(4);

/** What every XFS structure parser shares: the volume, the geometry and the warning list. */
export class XfsContext {
  readonly name: string;
  readonly meta: CachedSource;
  readonly bs: number;
  readonly crc: boolean;
  readonly ftype: boolean;
  /** Directory block size in bytes. */
  readonly dirBlkSize: number;
  /** Bits of an inode number below the AG number. */
  readonly inoAgShift: number;
  readonly warnings: string[] = [];
  private dropped = 0;

  constructor(
    readonly volume: ByteSource,
    readonly sb: Superblock,
  ) {
    this.name = volume.name;
    this.bs = sb.blockSize;
    this.crc = hasCrc(sb);
    this.ftype = hasFtype(sb);
    this.dirBlkSize = sb.blockSize * 2 ** sb.dirBlkLog;
    this.inoAgShift = sb.agBlkLog + sb.inopbLog;
    this.meta = new CachedSource(volume, { blockSize: 16 * 1024, capacity: memoryShare(3 / 16, 4 << 20, 48 << 20) });
  }

  warn(msg: string): void {
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(msg);
    else if (this.dropped++ === 0) this.warnings.push('... further warnings suppressed');
  }

  where(structure: string, offset?: number) {
    return { file: this.name, structure, offset };
  }

  corrupt(msg: string, structure: string, offset?: number): StrataError {
    return new StrataError('CORRUPT', msg, this.where(structure, offset));
  }

  /** Volume byte offset of AG block `agbno` in AG `agno`. */
  agbOffset(agno: number, agbno: number): number {
    return (agno * this.sb.agBlocks + agbno) * this.bs;
  }

  /** Volume byte offset of a file-system block number (AG number in the high bits), checked. */
  fsbOffset(fsb: number, structure: string, at?: number): number {
    const sb = this.sb;
    const agno = Math.floor(fsb / 2 ** sb.agBlkLog);
    const agbno = fsb - agno * 2 ** sb.agBlkLog;
    if (agno >= sb.agCount || agbno >= sb.agBlocks) {
      throw this.corrupt(`block ${fsb} (AG ${agno} block ${agbno}) lies outside the file system`, structure, at);
    }
    return this.agbOffset(agno, agbno);
  }

  /** Whether `count` blocks from fsb stay inside one AG of the file system. */
  fsbRangeOk(fsb: number, count: number): boolean {
    const sb = this.sb;
    const agno = Math.floor(fsb / 2 ** sb.agBlkLog);
    const agbno = fsb - agno * 2 ** sb.agBlkLog;
    if (agno >= sb.agCount || agbno + count > sb.agBlocks) return false;
    return agno * sb.agBlocks + agbno + count <= sb.dblocks;
  }

  read(offset: number, length: number, structure: string): Promise<Uint8Array> {
    return readExact(this.meta, offset, length, structure);
  }

  /**
   * Verify a v5 CRC (crc32c over the buffer with the 4-byte field at `crcOff` taken as zero,
   * stored inverted little-endian). A mismatch is a warning naming the structure.
   */
  verify(buf: Uint8Array, crcOff: number, structure: string, offset?: number): boolean {
    if (!this.crc || buf.length < crcOff + 4) return true;
    let c = crc32cRange(0xffffffff, buf, 0, crcOff);
    c = crc32cRange(c, ZERO4, 0, 4);
    c = crc32cRange(c, buf, crcOff + 4, buf.length);
    const want = ~c >>> 0;
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (v.getUint32(crcOff, true) !== want) {
      this.warn(`${structure}${offset !== undefined ? ` at ${offset}` : ''}: checksum mismatch (crc32c)`);
      return false;
    }
    return true;
  }
}

export const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Big-endian u64 as a number (exact below 2^53). */
export const u64 = (v: DataView, o: number): number => v.getUint32(o) * 2 ** 32 + v.getUint32(o + 4);
