import { StrataError } from '../util/errors.js';
import { shareOf } from '../util/memory.js';
import type { Backend } from './backend.js';
import { type IndexEntry, sha256hex } from './blob-index.js';
import { FLAG_ZSTD, packKey } from './pack.js';
import { type BufferPool, decompressInto } from './zstd-into.js';

/**
 * Reading blobs back from packs: read the blob's frame (one ranged read), decode it, hash
 * the blob and hand it over only when the hash is its name. Shared frames (many small
 * blobs compressed together, see packer.ts) are decoded once into a small cache of decoded
 * frames, so a reader that walks the blobs of a frame one after another (checkout)
 * decodes it once; a blob alone in its frame is decoded into pooled scratch.
 */

/**
 * Bytes of decoded shared frames kept for readers (checkout reads the blobs of a frame one
 * after another): a third of the memory budget, 16-48 MiB (two to six 8 MiB frames; six
 * were kept whatever the budget). Fewer thrash: a checkout of the 200,000-entry version
 * with its 8 MiB windows decoded its frames 81 times with six kept, 89 with four, 152 with
 * three and 465 with two, and `strata nbd` of the 1,000,000-entry version under nbdcopy (four
 * connections, each reading its own stretch of the disk) took ~3x the CPU with four. A frame
 * being read stays until its reads are done, whatever this says. Sized in memory.ts SHARES.
 */
const frameCacheBytes = () => shareOf('frames');

/**
 * Bytes of read scratch (an encoded frame and what it decodes to) in flight at most: 1/8 of
 * the memory budget, 16-64 MiB; a read past it waits for others to finish (one always goes).
 * Nothing bounded them: `strata nbd` serving a whole read (nbdcopy: 4 connections, up to 16
 * MiB of 256 KiB requests each, every request's chunks read 8 at a time) had hundreds of
 * chunk reads in flight, each with its pooled scratch, most of it dropped past the pool's
 * bound as garbage: 100-200 MiB of ArrayBuffers waiting for a collection. (memory.ts SHARES.)
 */
const scratchBytes = () => shareOf('readScratch');

interface CachedFrame {
  plain: Promise<Buffer>;
  pins: number;
  buf?: Buffer;
  /** Its plain length (what it counts in the cache's bytes). */
  bytes: number;
}

/** A blob's digest and place inside its decoded frame. */
export interface FrameRef {
  digest: string;
  at: number;
  plainLength: number;
}

/** Decode one frame into `out` (at least framePlain long); CORRUPT when it does not decode to framePlain bytes. */
export function decodeInto(
  out: Buffer,
  enc: Uint8Array,
  flags: number,
  framePlain: number,
  file: string,
  offset: number,
): void {
  const where = { file, structure: 'pack frame', offset };
  if (!(flags & FLAG_ZSTD)) {
    if (enc.length !== framePlain) throw new StrataError('CORRUPT', 'plain frame of the wrong length', where);
    out.set(enc);
    return;
  }
  let n: number;
  try {
    n = decompressInto(out.subarray(0, framePlain), enc);
  } catch (e) {
    throw new StrataError('CORRUPT', `zstd frame does not decode: ${(e as Error).message}`, where);
  }
  if (n !== framePlain) throw new StrataError('CORRUPT', `zstd frame decodes to ${n} bytes, not ${framePlain}`, where);
}

/** Hand `plain` to `use` when it hashes to `digest`; CORRUPT naming the pack (`file`) otherwise. */
export function checked<T>(
  plain: Uint8Array,
  digest: string,
  file: string,
  offset: number,
  use: (plain: Uint8Array) => T,
): T {
  if (sha256hex(plain) !== digest) {
    throw new StrataError('CORRUPT', 'blob content does not match its sha256 (damaged pack)', {
      file,
      structure: `blob ${digest}`,
      offset,
    });
  }
  return use(plain);
}

/** Decode a frame (into pooled scratch unless plain) and hand `ref`'s bytes, checked, to `use`. */
export function decodeWith<T>(
  pool: BufferPool,
  enc: Uint8Array,
  flags: number,
  framePlain: number,
  ref: FrameRef,
  file: string,
  offset: number,
  use: (plain: Uint8Array) => T,
): T {
  const slice = (b: Uint8Array) => b.subarray(ref.at, ref.at + ref.plainLength);
  if (!(flags & FLAG_ZSTD)) {
    if (enc.length !== framePlain) {
      throw new StrataError('CORRUPT', 'blob content does not match its sha256 (damaged pack)', {
        file,
        structure: `blob ${ref.digest}`,
        offset,
      });
    }
    return checked(slice(enc), ref.digest, file, offset, use);
  }
  const scratch = pool.take(framePlain);
  try {
    try {
      decodeInto(scratch, enc, flags, framePlain, file, offset);
    } catch (e) {
      throw new StrataError('CORRUPT', `${(e as Error).message} (blob ${ref.digest})`, {
        file,
        structure: `blob ${ref.digest}`,
        offset,
      });
    }
    return checked(slice(scratch), ref.digest, file, offset, use);
  } finally {
    pool.give(scratch);
  }
}

/** Reads indexed blobs out of their packs, each checked against its digest. */
export class BlobReader {
  /** Decoded shared frames, least recently used first ("pack:offset"). */
  private readonly frames = new Map<string, CachedFrame>();
  /** Plain bytes of the frames in `frames`. */
  private frameBytes = 0;
  /**
   * One evicted frame's buffer kept for the next frame's decode, inside the frames' share (five
   * cached and this one at the CLI's default): left to the store's pool, whose small share the
   * encoded frames and solo blobs' scratch fill, it was freed and the next decode faulted in a
   * fresh 8 MiB.
   */
  private spare: Buffer | undefined;
  /** Read scratch in flight (see scratchBytes) and the reads waiting for room. */
  private scratch = 0;
  private waiting: Array<() => void> = [];
  /** Bytes of decoded frames this reader keeps at most, below the frames' share (limitFrames). */
  private frameLimit = Number.POSITIVE_INFINITY;

  constructor(
    private readonly backend: Backend,
    private readonly pool: BufferPool,
  ) {}

  private get name(): string {
    return this.backend.name;
  }

  /**
   * Hand the plain bytes of blob `digest`, at `e`, checked, to `use` — synchronously, in a
   * pooled buffer that is reused once `use` returns.
   */
  async withBlob<T>(digest: string, e: IndexEntry, use: (plain: Uint8Array) => T): Promise<T> {
    const key = packKey(e.pack);
    const file = `${this.name}/${key}`;
    if (e.at === 0 && e.plainLength === e.framePlain) {
      // a frame of its own: read, decode into pooled scratch, check, hand over
      const cost = await this.admit(e);
      const encBuf = this.pool.take(e.encLength);
      try {
        const enc = await this.readFrame(key, e, encBuf);
        return decodeWith(this.pool, enc, e.flags, e.framePlain, { digest, ...e }, file, e.offset, use);
      } finally {
        this.pool.give(encBuf);
        this.release(cost);
      }
    }
    // a shared frame: decoded once into the frame cache, pinned while this read uses it
    const ck = `${e.pack}:${e.offset}`;
    let c = this.frames.get(ck);
    if (c)
      this.frames.delete(ck); // re-inserted below as the most recently used
    else {
      const entry: CachedFrame = { pins: 0, plain: Promise.resolve(Buffer.alloc(0)), bytes: e.framePlain };
      entry.plain = this.decodeFrame(key, e).then(
        (b) => {
          entry.buf = b;
          return b;
        },
        (err: unknown) => {
          this.forget(ck, entry);
          throw err;
        },
      );
      c = entry;
      this.frameBytes += c.bytes;
    }
    this.frames.set(ck, c);
    c.pins++;
    this.evictFrames();
    try {
      const plain = await c.plain;
      try {
        return checked(plain.subarray(e.at, e.at + e.plainLength), digest, file, e.offset, use);
      } catch (err) {
        // a frame that decoded but holds a damaged blob (a bad transfer): the next read fetches it anew
        this.forget(ck, c);
        throw err;
      }
    } finally {
      c.pins--;
      if (this.frames.get(ck) !== c && c.pins === 0 && c.buf) {
        this.retire(c.buf); // evicted while pinned: nobody holds it any more
        c.buf = undefined;
      }
    }
  }

  /**
   * One frame whole, for a prune's copy, past the frame cache (a prune reads each frame once,
   * in order): its encoded bytes and its plain bytes, each in a pooled buffer the caller owns
   * and gives back (`plain` is `enc` itself when the frame is plain). Not yet checked: the
   * caller hashes the blobs it keeps.
   */
  async wholeFrame(e: IndexEntry): Promise<{ enc: Buffer; plain: Buffer }> {
    const key = packKey(e.pack);
    const enc = this.pool.take(e.encLength);
    try {
      await this.readFrame(key, e, enc);
      const file = `${this.name}/${key}`;
      if (!(e.flags & FLAG_ZSTD)) {
        if (e.encLength !== e.framePlain) {
          throw new StrataError('CORRUPT', 'plain frame of the wrong length', {
            file,
            structure: 'pack frame',
            offset: e.offset,
          });
        }
        return { enc, plain: enc };
      }
      const plain = this.pool.take(e.framePlain);
      try {
        decodeInto(plain, enc.subarray(0, e.encLength), e.flags, e.framePlain, file, e.offset);
      } catch (err) {
        this.pool.give(plain);
        throw err;
      }
      return { enc, plain };
    } catch (err) {
      this.pool.give(enc);
      throw err;
    }
  }

  /**
   * Keep at most `bytes` of decoded frames (never fewer than one), below the frames' share:
   * for a reader that visits the frames in order, such as a block map's walk of a version's
   * metadata, where the share's six frames are memory the budget needs elsewhere.
   */
  limitFrames(bytes: number): void {
    this.frameLimit = bytes;
    this.evictFrames();
  }

  /** Forget the decoded frames (after prune deleted packs). */
  clearCache(): void {
    this.frames.clear();
    this.frameBytes = 0;
    this.spare = undefined;
  }

  /** Drop `c` from the cache if it is there as `ck`. */
  private forget(ck: string, c: CachedFrame): boolean {
    if (this.frames.get(ck) !== c) return false;
    this.frames.delete(ck);
    this.frameBytes -= c.bytes;
    return true;
  }

  /** The least recently used frames out while the cache holds more than its bytes (the newest one stays). */
  private evictFrames(): void {
    const max = this.frameBytesMax() - (this.spare?.length ?? 0);
    for (const [k, c] of this.frames) {
      if (this.frameBytes <= max || this.frames.size <= 1) break;
      this.forget(k, c);
      if (c.pins === 0 && c.buf) {
        this.retire(c.buf);
        c.buf = undefined;
      }
    }
  }

  /** An evicted frame's buffer: the spare when there is none, else back to the pool. */
  private retire(b: Buffer): void {
    if (!this.spare && b.length <= this.frameBytesMax() / 4) this.spare = b;
    else this.pool.give(b);
  }

  private frameBytesMax(): number {
    return Math.min(frameCacheBytes(), this.frameLimit);
  }

  private async readFrame(key: string, e: IndexEntry, encBuf: Buffer): Promise<Uint8Array> {
    const enc = encBuf.subarray(0, e.encLength);
    let got: number;
    if (this.backend.getRangeInto) got = await this.backend.getRangeInto(key, e.offset, enc);
    else {
      const b = await this.backend.getRange(key, e.offset, e.encLength);
      enc.set(b.subarray(0, e.encLength));
      got = b.length;
    }
    if (got !== e.encLength) {
      throw new StrataError('TRUNCATED', `pack ends inside the frame at ${e.offset}`, {
        file: `${this.name}/${key}`,
        structure: 'pack frame',
        offset: e.offset,
      });
    }
    return enc;
  }

  /** A whole shared frame, decoded into a pooled buffer (the caller owns it). */
  private async decodeFrame(key: string, e: IndexEntry): Promise<Buffer> {
    // counted while decoding; once decoded it is the frame cache's
    const cost = await this.admit(e);
    try {
      return await this.decodeFrameNow(key, e);
    } finally {
      this.release(cost);
    }
  }

  /** Wait until a read of `e` (its encoded frame and its plain bytes) fits in the scratch bound; its cost. */
  private async admit(e: IndexEntry): Promise<number> {
    const cost = e.encLength + e.framePlain;
    while (this.scratch > 0 && this.scratch + cost > scratchBytes())
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.scratch += cost;
    return cost;
  }

  private release(cost: number): void {
    this.scratch -= cost;
    const w = this.waiting;
    this.waiting = [];
    for (const wake of w) wake();
  }

  private async decodeFrameNow(key: string, e: IndexEntry): Promise<Buffer> {
    const encBuf = this.pool.take(e.encLength);
    try {
      const enc = await this.readFrame(key, e, encBuf);
      let out: Buffer;
      if (this.spare && this.spare.length >= e.framePlain) {
        out = this.spare;
        this.spare = undefined;
      } else out = this.pool.take(e.framePlain);
      try {
        decodeInto(out, enc, e.flags, e.framePlain, `${this.name}/${key}`, e.offset);
      } catch (err) {
        this.pool.give(out);
        throw err;
      }
      return out;
    } finally {
      this.pool.give(encBuf);
    }
  }
}
