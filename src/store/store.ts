import { createHash } from 'node:crypto';
import { StrataError } from '../util/errors.js';
import { zstdCompress, zstdDecompress } from '../util/zstd.js';
import type { Backend } from './backend.js';
import {
  type BlobType,
  encodePackHeader,
  FLAG_ZSTD,
  type PackEntry,
  packKey,
  parsePackHeader,
  parsePackTrailer,
  TRAILER_BYTES,
} from './pack.js';
import { BufferPool, compressBound, compressInto, decompressInto } from './zstd-into.js';
import { ZstdOffload } from './zstd-offload.js';

/**
 * The content-addressed store: blobs named by the sha256 of their plain bytes, encoded
 * with zstd (or kept plain when zstd does not help), written into packs of about
 * PACK_TARGET bytes, and found through index files. Every read re-hashes the blob.
 *
 * Small blobs share frames: a blob below SOLO_BLOB is appended to the open frame (up to
 * FRAME_BYTES of plain bytes), and the frame is compressed as one zstd frame, so the many
 * small files and 64 KiB metadata windows of an image compress together (as a tar does)
 * while dedup stays per blob. A reader decodes a shared frame once into a small cache of
 * decoded frames (FRAME_CACHE) and hashes only the blob it wants.
 *
 * Why these numbers (bench:checkin images, bench/README.md has the whole table):
 * - every distinct file of the base tree in 1 MiB chunks, zstd 3, each blob alone:
 *   94.0 MB; files below 64 KiB in shared 1 MiB frames: -5.2 MB; everything below 1 MiB in
 *   4 MiB frames: -10.1 MB (83.9 MB, what `tar | zstd -3` of the tree gives); also sharing
 *   frames between 1 MiB chunks: only -0.1 MB more, so those stay alone (one read and one
 *   decode each on checkout). Ordering by extension instead of disk order: < 0.5%.
 * - the whole check-in of base + derived (store bytes): 4 MiB frames, zstd 3 everywhere:
 *   105.2 MB; 8 MiB frames 104.5 MB; shared frames at zstd 5: 102.7 MB, 6: 101.6 MB,
 *   7: 101.2 MB; 6 with 1 MiB chunks at 5: 100.7 MB (casync: 126.4 MB; 0.8x is 101.1).
 *   Per extra CPU second, chunks 3 -> 5 save ~3 MB (-0.9 MB for ~0.25 s on the base).
 * - zstd's levels 3-6 keep a 2 MiB match window; a window as large as the frame
 *   (windowLog 23) does more than a level for less CPU. The base's shared frames alone
 *   (8 MiB, measured in-process, CPU ms noisy +-20%): level 3 55.5 MB / ~520 ms,
 *   3+w23 54.5 / ~520, 4+w23 53.5 / ~630, 5+w23 53.4 / ~670-870, 6 53.5 / ~1130-1450,
 *   6+w23 52.7 / ~900-1380. Whole check-in with index compression: frames 4+w23 101.0 MB
 *   (a hair under 0.8x), 5+w23 100.4 MB, 6+w23 99.3 MB: 5 with the 8 MiB window meets
 *   0.8x with room at about half the compression time of plain level 6.
 * - 8 MiB frames cost a random read of a small blob an 8 MiB decode (~5 ms); sequential
 *   readers (checkout) decode each once.
 * - index files as JSON were ~1% of the store (0.96 MB of 105): they are zstd-compressed.
 *
 * Write order keeps a killed writer harmless: a pack is put (atomically) first, then an
 * index file naming it; a pack that no index names is an orphan that gc removes and that
 * no reader ever sees. Index files are named by the sha256 of their content and checked
 * against it when loaded.
 *
 * Formats: packs "STRPACK2" and index files of version 2 are written; packs "STRPACK1"
 * and index version 1 (one blob per frame, before shared frames) are still read.
 */
export const PACK_TARGET = 16 * 1024 * 1024;
/**
 * With compression on the zstd thread, a pack is cut before its frames' compressed sizes are
 * known: by plain bytes, at about what PACK_TARGET of compressed bytes holds here.
 */
const PACK_TARGET_PLAIN = 3 * PACK_TARGET;
/** Plain bytes waiting on the zstd thread at most (the check-in waits beyond). */
const COMPRESSING_BYTES = 32 * 1024 * 1024;
/** Largest blob we accept (chunks are far smaller; manifests of huge trees stay below it). */
export const MAX_BLOB = 256 * 1024 * 1024;
/** Blobs of at least this many bytes get a frame of their own. */
export const SOLO_BLOB = 1024 * 1024;
/** Plain bytes of a shared frame at most. */
export const FRAME_BYTES = 8 * 1024 * 1024;
const ZSTD_LEVEL = 5;
/** Index files are small and written once per pack: compress them hard. */
const INDEX_LEVEL = 12;
/** Largest decoded index file we accept. */
const MAX_INDEX = 1024 * 1024 * 1024;
/** Shared frames: see the measurements in bench/README.md (checkin). */
const FRAME_LEVEL = 5;
/** ... with a match window as large as the frame (2^23 = FRAME_BYTES). */
const FRAME_WINDOW_LOG = 23;
/** Decoded shared frames kept for readers (checkout reads the blobs of a frame one after another). */
const FRAME_CACHE = 6;
/** Blobs up to this size are compressed straight into the pack arena; larger ones get their own buffer. */
const ARENA_BLOB = Math.max(4 * 1024 * 1024, FRAME_BYTES);
const ARENA_BYTES = PACK_TARGET + compressBound(ARENA_BLOB);

export interface IndexEntry {
  pack: string;
  type: BlobType;
  /** Frame flags (FLAG_ZSTD). */
  flags: number;
  /** The frame's offset and encoded length in the pack. */
  offset: number;
  encLength: number;
  /** Plain length of the frame, the blob's offset in it, and the blob's length. */
  framePlain: number;
  at: number;
  plainLength: number;
}

/** Index file v2 blob: digest, type, frame offset, frame enc length, frame plain length, offset in frame, plain length, flags. */
type BlobTupleV2 = [string, BlobType, number, number, number, number, number, number];
/** Index file v1 blob: digest, type, offset, enc length, plain length, flags. */
type BlobTupleV1 = [string, BlobType, number, number, number, number];

interface IndexFile {
  version: 1 | 2;
  packs: Array<{ id: string; blobs: Array<BlobTupleV2 | BlobTupleV1> }>;
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
}

export interface PutResult {
  digest: string;
  /** True when this call stored the blob (false: it was already there). */
  added: boolean;
}

export interface VerifyReport {
  packs: number;
  blobs: number;
  bytes: number;
  /** Problems that lose data: bad digests, unreadable packs, index entries without a pack. */
  errors: string[];
  /** Harmless leftovers: packs no index names (a killed writer's), removed by gc. */
  orphanPacks: string[];
}

export const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const HEX64 = /^[0-9a-f]{64}$/;

const tuple = (d: string, e: Omit<IndexEntry, 'pack'>): BlobTupleV2 => [
  d,
  e.type,
  e.offset,
  e.encLength,
  e.framePlain,
  e.at,
  e.plainLength,
  e.flags,
];

interface CachedFrame {
  plain: Promise<Buffer>;
  pins: number;
  buf?: Buffer;
}

export class Store {
  private readonly index = new Map<string, IndexEntry>();
  /** Index file keys loaded, and which packs each one names (for gc). */
  private indexFiles: string[] = [];
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
  private readonly pool = new BufferPool(32);
  /** Frames being compressed on the zstd thread live here (shared memory, nothing copied). */
  private readonly sharedPool = new BufferPool(16, true);
  /** The zstd thread, started by the first write (undefined: not yet, null: compress inline). */
  private offload?: ZstdOffload | null;
  /** Frames handed to the zstd thread and not yet back, oldest first. */
  private readonly compressing: Frame[] = [];
  private compressingBytes = 0;
  private readonly unflushed = new Map<string, { frame: Frame; ref: BlobRef }>();
  private flushing: Promise<void> = Promise.resolve();
  private flushError?: unknown;
  /** Decoded shared frames, least recently used first ("pack:offset"). */
  private readonly frames = new Map<string, CachedFrame>();

  private constructor(readonly backend: Backend) {}

  /** `compressInline`: compress on the calling thread (no zstd thread), as where none can start. */
  static async open(backend: Backend, opts: { compressInline?: boolean } = {}): Promise<Store> {
    const s = new Store(backend);
    if (opts.compressInline) s.offload = null;
    const config = await s.backend.get('config').catch(() => undefined);
    if (!config) {
      await s.backend.putIfAbsent('config', Buffer.from(JSON.stringify({ version: 1, kind: 'strata-store' })));
    } else if (!/"kind":"strata-store"/.test(Buffer.from(config).toString('utf8'))) {
      throw new StrataError('CORRUPT', 'not a Strata store (config)', {
        file: backend.name,
        structure: 'store config',
      });
    }
    await s.loadIndex();
    return s;
  }

  get name(): string {
    return this.backend.name;
  }

  /** Re-read every index file (after another process wrote some). */
  async loadIndex(): Promise<void> {
    this.index.clear();
    const files = await this.backend.list('index/');
    this.indexFiles = files.map((f) => f.key);
    for (const f of files) {
      const body = await this.backend.get(f.key);
      const id = f.key.slice('index/'.length);
      if (sha256hex(body) !== id) {
        throw new StrataError('CORRUPT', 'index file content does not match its name (sha256)', {
          file: `${this.backend.name}/${f.key}`,
          structure: 'store index',
        });
      }
      let parsed: IndexFile;
      try {
        // version 2 index files are zstd frames of the JSON; version 1 ones are plain JSON
        const json = body[0] === 0x28 && body[1] === 0xb5 ? zstdDecompress(body, MAX_INDEX) : body;
        parsed = JSON.parse(Buffer.from(json).toString('utf8')) as IndexFile;
      } catch (e) {
        throw new StrataError('CORRUPT', `index is not JSON: ${(e as Error).message}`, {
          file: `${this.backend.name}/${f.key}`,
          structure: 'store index',
        });
      }
      this.addIndex(parsed, f.key);
    }
  }

  private addIndex(ix: IndexFile, key: string): void {
    const where = { file: `${this.backend.name}/${key}`, structure: 'store index' };
    if ((ix?.version !== 1 && ix?.version !== 2) || !Array.isArray(ix.packs)) {
      throw new StrataError('CORRUPT', 'unknown index version', where);
    }
    const width = ix.version === 2 ? 8 : 6;
    for (const p of ix.packs) {
      if (typeof p.id !== 'string' || !HEX64.test(p.id) || !Array.isArray(p.blobs)) {
        throw new StrataError('CORRUPT', 'bad pack entry', where);
      }
      for (const b of p.blobs) {
        const [digest, type] = b;
        const nums = Array.isArray(b) && b.length === width ? (b.slice(2) as number[]) : [];
        let e: IndexEntry | undefined;
        if (nums.length > 0 && nums.every((x) => Number.isSafeInteger(x) && x >= 0)) {
          if (ix.version === 2) {
            const [offset, encLength, framePlain, at, plainLength, flags] = nums;
            e = { pack: p.id, type, offset, encLength, framePlain, at, plainLength, flags };
          } else {
            const [offset, encLength, plainLength, flags] = nums;
            e = { pack: p.id, type, offset, encLength, framePlain: plainLength, at: 0, plainLength, flags };
          }
        }
        if (
          !e ||
          typeof digest !== 'string' ||
          !HEX64.test(digest) ||
          (type !== 'data' && type !== 'tree') ||
          e.framePlain > MAX_BLOB ||
          e.encLength > MAX_BLOB ||
          e.at + e.plainLength > e.framePlain
        ) {
          throw new StrataError('CORRUPT', `bad blob entry for ${String(digest).slice(0, 16)}`, where);
        }
        if (!this.index.has(digest)) this.index.set(digest, e);
      }
    }
  }

  has(digest: string): boolean {
    return this.index.has(digest) || this.unflushed.has(digest);
  }

  entry(digest: string): IndexEntry | undefined {
    return this.index.get(digest);
  }

  /** Every blob the index knows (digest -> where). */
  entries(): ReadonlyMap<string, IndexEntry> {
    return this.index;
  }

  /**
   * Encoded size of a known, flushed blob (0 when unknown): a blob that shares a frame
   * counts for the frame's encoded bytes in proportion to its plain bytes.
   */
  storedSize(digest: string): number {
    const e = this.index.get(digest);
    if (!e) return 0;
    if (e.framePlain === e.plainLength) return e.encLength;
    return Math.round((e.encLength * e.plainLength) / Math.max(1, e.framePlain));
  }

  /**
   * Store a blob (no-op when the digest is known). Returns once it is queued; it is
   * durable after `flush()`. `digest`, when given, must be the sha256 of `plain`
   * (callers that hashed already skip a second hash). The store copies what it keeps.
   */
  async put(
    type: BlobType,
    plain: Uint8Array,
    digest = sha256hex(plain),
    opts: { solo?: boolean } = {},
  ): Promise<PutResult> {
    if (this.flushError) throw this.flushError;
    if (this.has(digest)) return { digest, added: false };
    if (plain.length > MAX_BLOB) throw new StrataError('LIMIT', `blob of ${plain.length} bytes`, { file: this.name });
    // Alone: large blobs, blobs the caller will read one at a time at random (a shared frame
    // is decoded whole for any blob in it), and manifests (read whole, never near each other).
    if (plain.length >= SOLO_BLOB || opts.solo || type === 'tree') {
      if (this.offloader() && plain.length <= ARENA_BLOB) {
        const copy = this.sharedPool.take(plain.length);
        copy.set(plain);
        const ref: BlobRef = { digest, type, at: 0, plainLength: plain.length };
        const f: Frame = { blobs: [ref], buf: copy, used: plain.length, flags: 0, offset: 0 };
        this.unflushed.set(digest, { frame: f, ref });
        await this.compressAway(f, ZSTD_LEVEL);
        if (this.pendingBytes >= PACK_TARGET_PLAIN) await this.startFlush();
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
      while (this.frame && this.frame.used + plain.length > FRAME_BYTES) await this.closeFrame();
      if (this.has(digest)) return { digest, added: false };
      if (!this.frame) {
        const buf = this.offloader() ? this.sharedPool.take(FRAME_BYTES) : this.pool.take(FRAME_BYTES);
        this.frame = { blobs: [], buf, used: 0, flags: 0, offset: 0 };
      }
      const f = this.frame;
      (f.buf as Buffer).set(plain, f.used);
      const ref: BlobRef = { digest, type, at: f.used, plainLength: plain.length };
      f.blobs.push(ref);
      f.used += plain.length;
      this.unflushed.set(digest, { frame: f, ref });
    }
    if (this.pendingBytes >= (this.offload ? PACK_TARGET_PLAIN : PACK_TARGET)) await this.startFlush();
    return { digest, added: true };
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

  /** The zstd thread (started on first use), or null when compression stays inline. */
  private offloader(): ZstdOffload | null {
    if (this.offload === undefined) this.offload = ZstdOffload.start() ?? null;
    return this.offload;
  }

  /**
   * Queue frame `f` (its plain bytes in `f.buf`, shared memory) for the next pack and hand it
   * to the zstd thread. At most COMPRESSING_BYTES wait there: beyond, wait for the oldest.
   * `f.buf` stays readable (unflushed reads) until `enc` is set; then it returns to the pool.
   */
  private async compressAway(f: Frame, level: number, windowLog?: number): Promise<void> {
    const z = this.offloader() as ZstdOffload;
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
      f.buf = undefined;
      this.sharedPool.give(buf);
    });
    f.encP.catch(() => {}); // reported by the pack write that awaits it
    this.pending.push(f);
    this.pendingBytes += f.used;
    this.compressing.push(f);
    this.compressingBytes += f.used;
    while (this.compressingBytes > COMPRESSING_BYTES) {
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
    await this.putIndex({ version: 2, packs: [{ id, blobs: entries.map((e) => tuple(e.digest, e)) }] });
    for (const { digest, ...rest } of entries) {
      if (!this.index.has(digest)) this.index.set(digest, { pack: id, ...rest });
      this.unflushed.delete(digest);
    }
  }

  private async putIndex(ix: IndexFile): Promise<string> {
    // zstd: an index lists every blob with its frame; as JSON it was ~1% of the store
    const body = zstdCompress(Buffer.from(JSON.stringify(ix)), INDEX_LEVEL);
    const key = `index/${sha256hex(body)}`;
    await this.backend.put(key, body);
    this.indexFiles.push(key);
    return key;
  }

  /** A blob's plain bytes (a fresh copy), checked against its digest. */
  async get(digest: string): Promise<Uint8Array> {
    return this.withBlob(digest, (plain) => Buffer.from(plain));
  }

  /**
   * Hand a blob's plain bytes, checked against its digest, to `use` — synchronously, in a
   * pooled buffer that is reused once `use` returns (copy what you keep).
   */
  async withBlob<T>(digest: string, use: (plain: Uint8Array) => T): Promise<T> {
    const u = this.unflushed.get(digest);
    if (u) {
      const { frame, ref } = u;
      if (frame.buf)
        return this.checked(frame.buf.subarray(ref.at, ref.at + ref.plainLength), digest, 'unflushed', 0, use);
      return this.decodeWith(frame.enc as Uint8Array, frame.flags, frame.used, ref, 'unflushed', 0, use);
    }
    const e = this.index.get(digest);
    if (!e) {
      throw new StrataError('NOT_FOUND', `blob ${digest} is not in the store`, {
        file: this.name,
        structure: 'store index',
      });
    }
    const key = packKey(e.pack);
    if (e.at === 0 && e.plainLength === e.framePlain) {
      // a frame of its own: read, decode into pooled scratch, check, hand over
      const encBuf = this.pool.take(e.encLength);
      try {
        const enc = await this.readFrame(key, e, encBuf);
        return this.decodeWith(enc, e.flags, e.framePlain, { digest, ...e }, key, e.offset, use);
      } finally {
        this.pool.give(encBuf);
      }
    }
    // a shared frame: decoded once into the frame cache, pinned while this read uses it
    const ck = `${e.pack}:${e.offset}`;
    let c = this.frames.get(ck);
    if (c)
      this.frames.delete(ck); // re-inserted below as the most recently used
    else {
      const entry: CachedFrame = { pins: 0, plain: Promise.resolve(Buffer.alloc(0)) };
      entry.plain = this.decodeFrame(key, e).then(
        (b) => {
          entry.buf = b;
          return b;
        },
        (err: unknown) => {
          if (this.frames.get(ck) === entry) this.frames.delete(ck);
          throw err;
        },
      );
      c = entry;
    }
    this.frames.set(ck, c);
    c.pins++;
    this.evictFrames();
    try {
      const plain = await c.plain;
      return this.checked(plain.subarray(e.at, e.at + e.plainLength), digest, key, e.offset, use);
    } finally {
      c.pins--;
      if (this.frames.get(ck) !== c && c.pins === 0 && c.buf) {
        this.pool.give(c.buf); // evicted while pinned: nobody holds it any more
        c.buf = undefined;
      }
    }
  }

  private evictFrames(): void {
    for (const [k, c] of this.frames) {
      if (this.frames.size <= FRAME_CACHE) break;
      this.frames.delete(k);
      if (c.pins === 0 && c.buf) {
        this.pool.give(c.buf);
        c.buf = undefined;
      }
    }
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
    const encBuf = this.pool.take(e.encLength);
    try {
      const enc = await this.readFrame(key, e, encBuf);
      const out = this.pool.take(e.framePlain);
      try {
        this.decodeInto(out, enc, e.flags, e.framePlain, `${this.name}/${key}`, e.offset);
      } catch (err) {
        this.pool.give(out);
        throw err;
      }
      return out;
    } finally {
      this.pool.give(encBuf);
    }
  }

  /** Decode one frame into `out` (at least framePlain long); CORRUPT when it does not decode to framePlain bytes. */
  private decodeInto(
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
    if (n !== framePlain)
      throw new StrataError('CORRUPT', `zstd frame decodes to ${n} bytes, not ${framePlain}`, where);
  }

  private checked<T>(plain: Uint8Array, digest: string, key: string, offset: number, use: (plain: Uint8Array) => T): T {
    if (sha256hex(plain) !== digest) {
      throw new StrataError('CORRUPT', 'blob content does not match its sha256 (damaged pack)', {
        file: `${this.name}/${key}`,
        structure: `blob ${digest}`,
        offset,
      });
    }
    return use(plain);
  }

  /** Decode a frame (into pooled scratch unless plain) and hand `ref`'s bytes, checked, to `use`. */
  private decodeWith<T>(
    enc: Uint8Array,
    flags: number,
    framePlain: number,
    ref: Pick<BlobRef, 'digest' | 'at' | 'plainLength'>,
    key: string,
    offset: number,
    use: (plain: Uint8Array) => T,
  ): T {
    const slice = (b: Uint8Array) => b.subarray(ref.at, ref.at + ref.plainLength);
    if (!(flags & FLAG_ZSTD)) {
      if (enc.length !== framePlain) {
        throw new StrataError('CORRUPT', 'blob content does not match its sha256 (damaged pack)', {
          file: `${this.name}/${key}`,
          structure: `blob ${ref.digest}`,
          offset,
        });
      }
      return this.checked(slice(enc), ref.digest, key, offset, use);
    }
    const scratch = this.pool.take(framePlain);
    try {
      try {
        this.decodeInto(scratch, enc, flags, framePlain, `${this.name}/${key}`, offset);
      } catch (e) {
        throw new StrataError('CORRUPT', `${(e as Error).message} (blob ${ref.digest})`, {
          file: `${this.name}/${key}`,
          structure: `blob ${ref.digest}`,
          offset,
        });
      }
      return this.checked(slice(scratch), ref.digest, key, offset, use);
    } finally {
      this.pool.give(scratch);
    }
  }

  /**
   * Re-read every pack: its name is the sha256 of its bytes, its header parses, every frame
   * decodes, every blob in it hashes to its digest, and every index entry points at a
   * pack that holds that blob where the index says.
   */
  async verify(onPack?: (done: number, total: number) => void): Promise<VerifyReport> {
    const report: VerifyReport = { packs: 0, blobs: 0, bytes: 0, errors: [], orphanPacks: [] };
    const packs = await this.backend.list('packs/');
    const indexed = new Set<string>();
    for (const e of this.index.values()) indexed.add(e.pack);
    const present = new Set<string>();
    const contents = new Map<string, Map<string, PackEntry>>();
    let done = 0;
    for (const f of packs) {
      const id = f.key.split('/').pop() as string;
      present.add(id);
      onPack?.(++done, packs.length);
      if (!indexed.has(id)) {
        report.orphanPacks.push(id);
        continue;
      }
      report.packs++;
      report.bytes += f.size;
      try {
        const body = await this.backend.get(f.key);
        if (sha256hex(body) !== id) report.errors.push(`pack ${id}: content does not match its name (sha256)`);
        const entries = readPackEntries(body, `${this.name}/${f.key}`);
        const m = new Map<string, PackEntry>();
        let i = 0;
        while (i < entries.length) {
          // one frame: the entries that share its offset
          const first = entries[i];
          let j = i;
          while (j < entries.length && entries[j].offset === first.offset) j++;
          const scratch = this.pool.take(first.framePlain);
          try {
            let decoded = true;
            try {
              this.decodeInto(
                scratch,
                body.subarray(first.offset, first.offset + first.encLength),
                first.flags,
                first.framePlain,
                `${this.name}/${f.key}`,
                first.offset,
              );
            } catch (e) {
              decoded = false;
              report.errors.push(
                `${(e as Error).message} (blobs ${entries
                  .slice(i, j)
                  .map((x) => x.digest.slice(0, 16))
                  .join(', ')})`,
              );
            }
            for (const en of entries.slice(i, j)) {
              m.set(en.digest, en);
              report.blobs++;
              if (decoded && sha256hex(scratch.subarray(en.at, en.at + en.plainLength)) !== en.digest) {
                report.errors.push(
                  `blob ${en.digest} in ${this.name}/${f.key} at ${en.offset}: content does not match its sha256 (damaged pack)`,
                );
              }
            }
          } finally {
            this.pool.give(scratch);
          }
          i = j;
        }
        contents.set(id, m);
      } catch (e) {
        report.errors.push(`pack ${id}: ${(e as Error).message}`);
      }
    }
    for (const [digest, e] of this.index) {
      if (!present.has(e.pack)) {
        report.errors.push(`blob ${digest}: its pack ${e.pack} is missing`);
        continue;
      }
      const en = contents.get(e.pack)?.get(digest);
      if (
        contents.has(e.pack) &&
        (!en ||
          en.offset !== e.offset ||
          en.encLength !== e.encLength ||
          en.at !== e.at ||
          en.plainLength !== e.plainLength ||
          en.framePlain !== e.framePlain)
      ) {
        report.errors.push(`blob ${digest}: the index and pack ${e.pack} disagree on where it is`);
      }
    }
    return report;
  }

  /**
   * Keep only the blobs in `keep`: packs with nothing to keep are deleted, packs with some
   * garbage are rewritten, and one new index replaces all old ones. Call it only under an
   * exclusive lock. Order: new packs, new index, old index files, old packs; a crash at any
   * point leaves every kept blob reachable (at worst twice, or orphans for the next gc).
   */
  async prune(
    keep: ReadonlySet<string>,
  ): Promise<{ deletedPacks: number; rewrittenPacks: number; freedBytes: number }> {
    await this.flush();
    await this.loadIndex();
    const byPack = new Map<string, Array<[string, IndexEntry]>>();
    for (const [d, e] of this.index) {
      let l = byPack.get(e.pack);
      if (!l) byPack.set(e.pack, (l = []));
      l.push([d, e]);
    }
    const packFiles = await this.backend.list('packs/');
    const sizeOf = new Map(packFiles.map((f) => [f.key.split('/').pop() as string, f.size]));
    const drop = new Set<string>();
    const kept: IndexFile['packs'] = [];
    let rewritten = 0;
    let freed = 0;
    for (const [pack, blobs] of byPack) {
      const live = blobs.filter(([d]) => keep.has(d));
      if (live.length === blobs.length) {
        kept.push({ id: pack, blobs: blobs.map(([d, e]) => tuple(d, e)) });
        continue;
      }
      drop.add(pack);
      if (live.length === 0) continue;
      rewritten++;
      for (const [d, e] of live) {
        const plain = await this.get(d); // verified on the way
        this.index.delete(d);
        await this.put(e.type, plain, d);
      }
    }
    // orphans (packs no index names): a killed writer's; nothing reads them
    for (const f of packFiles) {
      const id = f.key.split('/').pop() as string;
      if (!byPack.has(id)) drop.add(id);
    }
    await this.flush();
    // the packs written by the re-puts were indexed one by one; fold everything into one index
    const fresh = new Map<string, IndexFile['packs'][number]>();
    for (const [d, e] of this.index) {
      if (byPack.has(e.pack) || drop.has(e.pack)) continue; // in `kept`, or going
      let p = fresh.get(e.pack);
      if (!p) fresh.set(e.pack, (p = { id: e.pack, blobs: [] }));
      p.blobs.push(tuple(d, e));
    }
    const oldIndexFiles = this.indexFiles.slice();
    const newKey = await this.putIndex({ version: 2, packs: [...kept, ...fresh.values()] });
    for (const k of oldIndexFiles) if (k !== newKey) await this.backend.delete(k);
    for (const id of drop) {
      freed += sizeOf.get(id) ?? 0;
      await this.backend.delete(packKey(id));
    }
    this.frames.clear();
    await this.loadIndex();
    return { deletedPacks: drop.size, rewrittenPacks: rewritten, freedBytes: freed };
  }

  async close(): Promise<void> {
    await this.flushing.catch(() => {});
    await Promise.all(this.compressing.map((f) => f.encP?.catch(() => {})));
    await this.offload?.close();
    this.offload = null;
    await this.backend.close();
  }
}

/** The entries of a whole pack held in memory (either format). */
export function readPackEntries(body: Uint8Array, file: string): PackEntry[] {
  if (body.length < TRAILER_BYTES) {
    throw new StrataError('TRUNCATED', 'pack shorter than its trailer', { file, structure: 'pack trailer' });
  }
  const { version, headerBytes } = parsePackTrailer(body.subarray(body.length - TRAILER_BYTES), body.length, file);
  const blobArea = body.length - TRAILER_BYTES - headerBytes;
  return parsePackHeader(body.subarray(blobArea, blobArea + headerBytes), blobArea, file, version);
}
