import { createHash } from 'node:crypto';
import { releaseBuffer } from '../io/native.js';
import { StrataError } from '../util/errors.js';
import type { Backend } from './backend.js';
import { type BlobIndex, MAX_BLOB } from './blob-index.js';
import { checked, decodeWith } from './blob-reader.js';
import { type BlobType, encodePackHeader, FLAG_ZSTD, type PackEntry, packKey } from './pack.js';
import { BufferPool, compressBound, compressInto } from './zstd-into.js';
import { startZstdThreads, ZSTD_THREADS, type ZstdThreads } from './zstd-offload.js';

/**
 * The write side of the store: blobs are encoded with zstd (or kept plain when zstd does
 * not help) into frames, frames are laid out into packs of about PACK_TARGET bytes, and
 * each pack, once written, gets an index file naming it.
 *
 * Small blobs share frames: a blob below SOLO_BLOB is appended to the open frame (up to
 * FRAME_BYTES of plain bytes), and the frame is compressed as one zstd frame, so the many
 * small files and 64 KiB metadata windows of an image compress together (as a tar does)
 * while dedup stays per blob. The sizes and levels below were chosen by measurement
 * (bench:checkin; bench/README.md has the figures and how they were taken).
 *
 * Write order keeps a killed writer harmless: a pack is put (atomically) first, then an
 * index file naming it; a pack that no index names is an orphan that prune removes and that
 * no reader ever sees.
 */
export const PACK_TARGET = 16 * 1024 * 1024;
/**
 * With compression on the zstd thread, a pack is cut before its frames' compressed sizes are
 * known: by plain bytes, at about what PACK_TARGET of compressed bytes holds here.
 */
const PACK_TARGET_PLAIN = 3 * PACK_TARGET;
/** Plain bytes waiting on the zstd thread at most (the check-in waits beyond). */
const COMPRESSING_BYTES = 32 * 1024 * 1024;
/** Blobs of at least this many bytes get a frame of their own. */
export const SOLO_BLOB = 1024 * 1024;
/** Plain bytes of a shared frame at most (with a budget of WRITE_BUDGET_FULL or more). */
export const FRAME_BYTES = 8 * 1024 * 1024;
/**
 * Blobs alone in their frame (1 MiB chunks, manifests) and shared frames: zstd 7 (was 5 for
 * both): the Debian base stores ~2% less (81.5 -> 79.6-79.9 MB ext4, 82.3 -> 80.6 MB XFS) for
 * ~+19% check-in CPU, which the second zstd thread (zstd-offload.ts) takes off the wall
 * time. bench/README.md (checkin, "store8") has the measurements; levels per kind of file
 * and sorting small files by kind and name gained nothing beyond this on the real images.
 */
const ZSTD_LEVEL = 7;
const FRAME_LEVEL = 7;
/** ... with a match window as large as the largest frame (2^23 = FRAME_BYTES; zstd narrows it to a smaller input). */
const FRAME_WINDOW_LOG = 23;
/** Blobs up to this size are compressed straight into the pack arena; larger ones get their own buffer. */
const ARENA_BLOB = Math.max(4 * 1024 * 1024, FRAME_BYTES);
const ARENA_BYTES = PACK_TARGET + compressBound(ARENA_BLOB);

/**
 * The write buffers' sizes, from the memory budget. At a budget of WRITE_BUDGET_FULL and more
 * they are the sizes above, measured for speed (bench:checkin). Below, each is a share of the
 * budget, so that together (one open frame, the frames on the zstd thread, the pooled frames
 * kept for reuse, the encoded frames of the pack being filled and of the one being written
 * they stay near 0.4 of it): the shared frame a power of two (frames are pooled buffers of a
 * power-of-two size: a 5 MiB frame took an 8 MiB buffer), at most 1/32 of the budget (4 MiB
 * frames at the CLI's default budget); the bytes on the zstd thread 1/16, at least a frame;
 * the pack cut 1/16 (two packs are held: the one filled and the one written); one zstd
 * thread (issue 22: at the CLI's default budget of ~160
 * MiB the write side held ~170 MiB of a 200,000-file check-in, 56 MiB of it idle pooled
 * frames, and the second thread ~35 MiB more outside the heap). Frames and packs are then
 * smaller (a little less compression across small files); what is stored, blob for blob, is
 * the same.
 */
export interface WriteLimits {
  frameBytes: number;
  /** zstd threads: a second one (its isolate, zstd contexts and scratch) only at WRITE_BUDGET_FULL and more. */
  zstdThreads: number;
  compressingBytes: number;
  packTargetPlain: number;
}
const WRITE_BUDGET_FULL = 512 * 1024 * 1024;

export function writeLimits(budgetBytes: number): WriteLimits {
  const mib = (n: number) => Math.max(1, Math.floor(n / 2 ** 20)) * 2 ** 20;
  let frameBytes = SOLO_BLOB;
  while (frameBytes * 2 <= Math.min(FRAME_BYTES, budgetBytes / 32)) frameBytes *= 2;
  // the second thread's isolate, zstd contexts and scratch are ~35 MiB of resident memory:
  // only where the budget is large (issue 22: a 1,000,000-file check-in in 256 MiB)
  const zstdThreads = budgetBytes >= WRITE_BUDGET_FULL ? ZSTD_THREADS : 1;
  // a frame in flight on each zstd thread
  const compressingBytes = Math.max(zstdThreads * frameBytes, Math.min(COMPRESSING_BYTES, mib(budgetBytes / 16)));
  return {
    frameBytes,
    zstdThreads,
    compressingBytes,
    packTargetPlain:
      budgetBytes >= WRITE_BUDGET_FULL
        ? PACK_TARGET_PLAIN
        : Math.max(2 * frameBytes, Math.min(PACK_TARGET_PLAIN, mib(budgetBytes / 16))),
  };
}

interface BlobRef {
  digest: string;
  type: BlobType;
  at: number;
  plainLength: number;
}

/** A frame being filled (buf) or encoded and waiting for its pack (enc). */
interface Frame {
  blobs: BlobRef[];
  /** The plain bytes while the frame is open or being compressed (then `enc` is set). */
  buf?: Buffer;
  used: number;
  enc?: Uint8Array;
  flags: number;
  offset: number;
  /** Settles when `enc` and `flags` are set (compression on the zstd thread). */
  encP?: Promise<void>;
  /** The pooled buffer `enc` lies in (a frame copied whole): back to the pool once its pack is written. */
  pooled?: Buffer;
  /** `enc` is its own ArrayBuffer (the zstd thread's answer, or a plain copy): freed once its pack is written. */
  own?: boolean;
}

/** A blob put but not yet in a written pack. */
export interface UnflushedBlob {
  frame: Frame;
  ref: BlobRef;
}

export interface PutResult {
  digest: string;
  /** True when this call stored the blob (false: it was already there). */
  added: boolean;
}

export class Packer {
  /** Encoded frames waiting for the next pack. */
  private pending: Frame[] = [];
  private pendingBytes = 0;
  /** The shared frame being filled. */
  private frame?: Frame;
  /** The pack being filled: frames are compressed straight into it. */
  private arena?: Buffer;
  private arenaUsed = 0;
  /** Arenas whose pack is written, ready for reuse. */
  private readonly spareArenas: Buffer[] = [];
  /** Frames being compressed on a zstd worker isolate live here (shared memory, nothing copied). */
  private readonly sharedPool: BufferPool;
  /** ... and here on the addon's zstd threads (ordinary buffers: V8 counts them, collections see them). */
  private readonly framePool = new BufferPool(64, false);
  /** The zstd thread, started by the first write (undefined: not yet, null: compress inline). */
  private offload?: ZstdThreads | null;
  /** Frames handed to the zstd thread and not yet back, oldest first. */
  private readonly compressing: Frame[] = [];
  private compressingBytes = 0;
  private readonly unflushed = new Map<string, UnflushedBlob>();
  private limits: WriteLimits = writeLimits(WRITE_BUDGET_FULL);
  private flushing: Promise<void> = Promise.resolve();
  private flushError?: unknown;

  constructor(
    private readonly backend: Backend,
    private readonly index: BlobIndex,
    private readonly pool: BufferPool,
    sharedPool: BufferPool,
    compressInline: boolean,
  ) {
    this.sharedPool = sharedPool;
    if (compressInline) this.offload = null;
  }

  private get name(): string {
    return this.backend.name;
  }

  /** Size the write buffers for a memory budget (see writeLimits); takes effect from the next frame. */
  setBudget(bytes: number): void {
    this.limits = writeLimits(bytes);
  }

  has(digest: string): boolean {
    return this.index.entries.has(digest) || this.unflushed.has(digest);
  }

  /** The blob when it is put but not yet in a written pack. */
  unflushedBlob(digest: string): UnflushedBlob | undefined {
    return this.unflushed.get(digest);
  }

  /** Hand an unflushed blob's plain bytes, checked, to `use` (as BlobReader.withBlob). */
  readUnflushed<T>(u: UnflushedBlob, use: (plain: Uint8Array) => T): T {
    const { frame, ref } = u;
    const file = `${this.name}/unflushed`;
    if (frame.buf) return checked(frame.buf.subarray(ref.at, ref.at + ref.plainLength), ref.digest, file, 0, use);
    return decodeWith(this.pool, frame.enc as Uint8Array, frame.flags, frame.used, ref, file, 0, use);
  }

  /**
   * Store a blob (no-op when the digest is known). Returns once it is queued; it is
   * durable after `flush()`. `digest` must be the sha256 of `plain`.
   */
  async put(type: BlobType, plain: Uint8Array, digest: string, opts: { solo?: boolean } = {}): Promise<PutResult> {
    if (this.flushError) throw this.flushError;
    if (this.has(digest)) return { digest, added: false };
    if (plain.length > MAX_BLOB) throw new StrataError('LIMIT', `blob of ${plain.length} bytes`, { file: this.name });
    // Alone: large blobs, blobs the caller will read one at a time at random (a shared frame
    // is decoded whole for any blob in it), and manifests (read whole, never near each other).
    if (plain.length >= SOLO_BLOB || opts.solo || type === 'tree') {
      if (this.offloader() && plain.length <= ARENA_BLOB) {
        await this.roomToCompress(plain.length);
        if (this.has(digest)) return { digest, added: false }; // a concurrent put of the same bytes won
        const copy = this.frames().take(plain.length);
        copy.set(plain);
        const ref: BlobRef = { digest, type, at: 0, plainLength: plain.length };
        const f: Frame = { blobs: [ref], buf: copy, used: plain.length, flags: 0, offset: 0 };
        this.unflushed.set(digest, { frame: f, ref });
        await this.compressAway(f, ZSTD_LEVEL);
        if (this.pendingBytes >= this.limits.packTargetPlain) await this.startFlush();
        return { digest, added: true };
      }
      const { enc, flags } = await this.encode(plain, ZSTD_LEVEL);
      if (this.has(digest)) return { digest, added: false }; // a concurrent put of the same bytes won
      const ref: BlobRef = { digest, type, at: 0, plainLength: plain.length };
      const f: Frame = { blobs: [ref], used: plain.length, enc, flags, offset: this.pendingBytes };
      this.pending.push(f);
      this.pendingBytes += enc.length;
      this.unflushed.set(digest, { frame: f, ref });
    } else {
      const frameBytes = this.limits.frameBytes;
      for (;;) {
        while (this.frame && this.frame.used + plain.length > frameBytes) await this.closeFrame();
        if (this.has(digest)) return { digest, added: false };
        // a new frame only when the zstd thread has room for it: concurrent puts each closed
        // a frame and opened the next before any waited, 9 frames of the pool's at once
        if (this.frame || !this.offloader() || !this.fullForFrame(frameBytes)) break;
        await this.roomToCompress(frameBytes);
      }
      if (!this.frame) {
        const buf = this.offloader() ? this.frames().take(frameBytes) : this.pool.take(frameBytes);
        this.frame = { blobs: [], buf, used: 0, flags: 0, offset: 0 };
      }
      const f = this.frame;
      (f.buf as Buffer).set(plain, f.used);
      const ref: BlobRef = { digest, type, at: f.used, plainLength: plain.length };
      f.blobs.push(ref);
      f.used += plain.length;
      this.unflushed.set(digest, { frame: f, ref });
    }
    if (this.pendingBytes >= (this.offload ? this.limits.packTargetPlain : PACK_TARGET)) await this.startFlush();
    return { digest, added: true };
  }

  /**
   * Store an encoded frame as it is (a prune copying a frame whose every blob stays): no
   * decode, no compression; its index entries are the old ones at the new pack and offset.
   * `enc` is a buffer of `pool` holding the frame in its first `encLength` bytes: the packer
   * owns it from here and gives it back once the pack is written. `blobs` tile the frame
   * (their digests already checked by the caller, none of them known to the index).
   */
  async putFrame(
    enc: Buffer,
    encLength: number,
    flags: number,
    framePlain: number,
    blobs: Array<{ digest: string; type: BlobType; at: number; plainLength: number }>,
  ): Promise<void> {
    if (this.flushError) throw this.flushError;
    const f: Frame = {
      blobs: blobs.map(({ digest, type, at, plainLength }) => ({ digest, type, at, plainLength })),
      used: framePlain,
      enc: enc.subarray(0, encLength),
      flags,
      offset: this.pendingBytes,
      pooled: enc,
    };
    this.pending.push(f);
    this.pendingBytes += encLength;
    for (const ref of f.blobs) this.unflushed.set(ref.digest, { frame: f, ref });
    // encoded bytes held: the pack filled and the one written, each about a pack cut
    if (this.pendingBytes >= Math.min(PACK_TARGET, this.limits.packTargetPlain)) await this.startFlush();
  }

  private fullForFrame(n: number): boolean {
    return this.compressing.length > 0 && this.compressingBytes + n > this.limits.compressingBytes;
  }

  /** Wait until `n` more plain bytes fit on the zstd thread (limits.compressingBytes), for the oldest frames first. */
  private async roomToCompress(n: number): Promise<void> {
    while (this.fullForFrame(n)) {
      const oldest = this.compressing.shift() as Frame;
      this.compressingBytes -= oldest.used;
      await oldest.encP?.catch(() => {});
    }
  }

  /** Compress `plain` into the pack arena (or its own buffer when large); plain when zstd does not help. */
  private async encode(
    plain: Uint8Array,
    level: number,
    windowLog?: number,
  ): Promise<{ enc: Uint8Array; flags: number }> {
    const bound = compressBound(plain.length);
    if (plain.length > ARENA_BLOB) {
      const big = Buffer.allocUnsafe(bound);
      const n = compressInto(big, plain, level, windowLog);
      if (n >= plain.length) return { enc: Uint8Array.prototype.slice.call(plain), flags: 0 }; // own copy
      return { enc: big.subarray(0, n), flags: FLAG_ZSTD };
    }
    for (;;) {
      if (!this.arena) {
        this.arena = this.spareArenas.pop() ?? Buffer.allocUnsafe(ARENA_BYTES);
        this.arenaUsed = 0;
      }
      if (ARENA_BYTES - this.arenaUsed >= bound) break;
      await this.startFlush();
    }
    const arena = this.arena;
    const at = this.arenaUsed;
    let n = compressInto(arena.subarray(at), plain, level, windowLog);
    let flags = FLAG_ZSTD;
    if (n >= plain.length) {
      arena.set(plain, at);
      n = plain.length;
      flags = 0;
    }
    this.arenaUsed += n;
    return { enc: arena.subarray(at, at + n), flags };
  }

  /** Start the zstd thread now rather than on the first put (a server about to take an upload). */
  warm(): void {
    this.offloader();
  }

  /** The zstd thread (started on first use), or null when compression stays inline. */
  private offloader(): ZstdThreads | null {
    if (this.offload === undefined) this.offload = startZstdThreads(this.limits.zstdThreads) ?? null;
    return this.offload;
  }

  /** The pool of the frames handed to the zstd threads (shared memory for worker isolates). */
  private frames(): BufferPool {
    return this.offload?.shared === false ? this.framePool : this.sharedPool;
  }

  /**
   * Queue frame `f` (its plain bytes in `f.buf`, shared memory) for the next pack and hand it
   * to the zstd thread. At most limits.compressingBytes wait there: beyond, wait for the oldest.
   * `f.buf` stays readable (unflushed reads) until `enc` is set; then it returns to the pool.
   */
  private async compressAway(f: Frame, level: number, windowLog?: number): Promise<void> {
    const z = this.offloader() as ZstdThreads;
    const pool = this.frames();
    const buf = f.buf as Buffer;
    const plain = buf.subarray(0, f.used);
    f.encP = z.compress(plain, level, windowLog).then(({ enc }) => {
      if (enc) {
        f.enc = enc;
        f.flags = FLAG_ZSTD;
      } else {
        f.enc = Uint8Array.prototype.slice.call(plain);
        f.flags = 0;
      }
      f.own = true;
      f.buf = undefined;
      pool.give(buf);
    });
    f.encP.catch(() => {}); // reported by the pack write that awaits it
    this.pending.push(f);
    this.pendingBytes += f.used;
    this.compressing.push(f);
    this.compressingBytes += f.used;
    while (this.compressingBytes > this.limits.compressingBytes) {
      const oldest = this.compressing.shift() as Frame;
      this.compressingBytes -= oldest.used;
      await oldest.encP?.catch(() => {});
    }
    while (this.compressing.length > 0 && this.compressing[0].enc) {
      this.compressingBytes -= (this.compressing.shift() as Frame).used;
    }
  }

  /** Compress the open shared frame and queue it for the next pack. */
  private async closeFrame(): Promise<void> {
    const f = this.frame;
    if (!f) return;
    this.frame = undefined;
    if (this.offload) return this.compressAway(f, FRAME_LEVEL, FRAME_WINDOW_LOG);
    const buf = f.buf as Buffer;
    const { enc, flags } = await this.encode(buf.subarray(0, f.used), FRAME_LEVEL, FRAME_WINDOW_LOG);
    f.enc = enc;
    f.flags = flags;
    f.buf = undefined;
    this.pool.give(buf);
    f.offset = this.pendingBytes;
    this.pending.push(f);
    this.pendingBytes += enc.length;
  }

  /**
   * After a flush: drop spare pack arenas and pooled frames and stop the zstd thread (all are
   * made again when writing resumes). The frames are SharedArrayBuffers, which V8 does not
   * count as external memory (no collection is hurried by them) and which stay alive while
   * the zstd thread's isolate still holds a message that named them: measured at the end of
   * a 200,000-file check-in, ~130 MiB of them stayed resident through the inspection after it.
   * With the thread gone, the next full collection frees them.
   */
  async releaseBuffers(): Promise<void> {
    this.spareArenas.length = 0;
    this.sharedPool.clear();
    this.framePool.clear();
    // frames compressed since the last put are still listed (only a put trims the list):
    // with them counted as busy the thread was never stopped, and at the end of a
    // 1,000,000-file check-in ~87 MiB of frames and both threads stayed through the inspection
    while (this.compressing.length > 0 && this.compressing[0].enc) {
      this.compressingBytes -= (this.compressing.shift() as Frame).used;
    }
    if (this.compressing.length > 0 || !this.offload) return;
    const z = this.offload;
    this.offload = undefined;
    await z.close();
  }

  /** Write everything queued: packs, then their index. */
  async flush(): Promise<void> {
    await this.closeFrame();
    await this.startFlush();
    await this.flushing;
    if (this.flushError) throw this.flushError;
  }

  /** Hand the queued frames to the (serial) writer; waits for the previous pack only. */
  private async startFlush(): Promise<void> {
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    this.pendingBytes = 0;
    const arena = this.arena;
    this.arena = undefined;
    this.arenaUsed = 0;
    const prev = this.flushing;
    this.flushing = (async () => {
      await prev;
      if (this.flushError) return;
      try {
        await this.writePack(batch);
        if (arena) this.spareArenas.push(arena); // its frames are now read from the pack
      } catch (e) {
        this.flushError = e;
      }
    })();
    await prev; // at most one pack being written while the next fills
    if (this.flushError) throw this.flushError;
  }

  /** One pack: frames laid out from offset 0, header, trailer; named by the sha256 of it all. Then its index file. */
  private async writePack(batch: Frame[]): Promise<void> {
    // frames compressed on the zstd thread: wait for them, then lay them out in order
    await Promise.all(batch.map((f) => f.encP));
    let offset = 0;
    for (const f of batch) {
      f.offset = offset;
      offset += (f.enc as Uint8Array).length;
    }
    const entries: PackEntry[] = [];
    for (const f of batch) {
      const enc = f.enc as Uint8Array;
      for (const b of f.blobs) {
        entries.push({
          digest: b.digest,
          type: b.type,
          flags: f.flags,
          offset: f.offset,
          encLength: enc.length,
          framePlain: f.used,
          at: b.at,
          plainLength: b.plainLength,
        });
      }
    }
    const header = encodePackHeader(entries);
    const h = createHash('sha256');
    for (const f of batch) h.update(f.enc as Uint8Array);
    h.update(header);
    const id = h.digest('hex');
    await this.backend.put(packKey(id), [...batch.map((f) => f.enc as Uint8Array), header]);
    await this.index.addPack(id, entries);
    for (const e of entries) this.unflushed.delete(e.digest);
    for (const f of batch) {
      if (f.pooled) this.pool.give(f.pooled);
      f.pooled = undefined;
      // a frame's own encoded bytes, read from the pack from now on: freed now, not at V8's next
      // full collection (a check-in's frames, ~1-2 MiB each, piled up as garbage between them)
      if (f.own) releaseBuffer(f.enc as Uint8Array);
      f.own = false;
    }
  }

  /** Wait for the pack being written and the zstd thread's work, then stop the zstd thread. */
  async close(): Promise<void> {
    await this.flushing.catch(() => {});
    await Promise.all(this.compressing.map((f) => f.encP?.catch(() => {})));
    await this.offload?.close();
    this.offload = null;
  }
}
