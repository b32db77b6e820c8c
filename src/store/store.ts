import { createHash } from 'node:crypto';
import { StrataError } from '../util/errors.js';
import type { Backend } from './backend.js';
import {
  type BlobType,
  ENTRY_BYTES,
  encodePackHeader,
  FLAG_ZSTD,
  type PackEntry,
  packKey,
  parsePackHeader,
  parsePackTrailer,
  TRAILER_BYTES,
} from './pack.js';
import { BufferPool, compressBound, compressInto, decompressInto } from './zstd-into.js';

/**
 * The content-addressed store: blobs named by the sha256 of their plain bytes, encoded
 * with zstd (or kept plain when zstd does not help), written into packs of about
 * PACK_TARGET bytes, and found through index files. Every read re-hashes the blob.
 *
 * Write order keeps a killed writer harmless: a pack is put (atomically) first, then an
 * index file naming it; a pack that no index names is an orphan that gc removes and that
 * no reader ever sees. Index files are named by the sha256 of their content and checked
 * against it when loaded.
 */
export const PACK_TARGET = 16 * 1024 * 1024;
/** Largest blob we accept (chunks are far smaller; manifests of huge trees stay below it). */
export const MAX_BLOB = 256 * 1024 * 1024;
const ZSTD_LEVEL = 3;
/** Blobs up to this size are compressed straight into the pack arena; larger ones get their own buffer. */
const ARENA_BLOB = 4 * 1024 * 1024;
const ARENA_BYTES = PACK_TARGET + compressBound(ARENA_BLOB);

export interface IndexEntry {
  pack: string;
  type: BlobType;
  flags: number;
  offset: number;
  encLength: number;
  plainLength: number;
}

interface IndexFile {
  version: 1;
  packs: Array<{ id: string; blobs: Array<[string, BlobType, number, number, number, number]> }>;
}

interface Pending {
  entry: PackEntry;
  enc: Uint8Array;
}

export interface PutResult {
  digest: string;
  /** True when this call stored the blob (false: it was already there). */
  added: boolean;
  /** Encoded bytes this call added (0 when deduplicated). */
  storedBytes: number;
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

export class Store {
  private readonly index = new Map<string, IndexEntry>();
  /** Index file keys loaded, and which packs each one names (for gc). */
  private indexFiles: string[] = [];
  private pending: Pending[] = [];
  private pendingBytes = 0;
  /** The pack being filled: small blobs are compressed straight into it. */
  private arena?: Buffer;
  private arenaUsed = 0;
  /** Arenas whose pack is written, ready for reuse. */
  private readonly spareArenas: Buffer[] = [];
  private readonly pool = new BufferPool(32);
  private readonly unflushed = new Map<string, Pending>();
  private flushing: Promise<void> = Promise.resolve();
  private flushError?: unknown;

  private constructor(readonly backend: Backend) {}

  static async open(backend: Backend): Promise<Store> {
    const s = new Store(backend);
    await s.backend.putIfAbsent('config', Buffer.from(JSON.stringify({ version: 1, kind: 'strata-store' })));
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
        parsed = JSON.parse(Buffer.from(body).toString('utf8')) as IndexFile;
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
    if (ix?.version !== 1 || !Array.isArray(ix.packs)) throw new StrataError('CORRUPT', 'unknown index version', where);
    for (const p of ix.packs) {
      if (typeof p.id !== 'string' || !HEX64.test(p.id) || !Array.isArray(p.blobs)) {
        throw new StrataError('CORRUPT', 'bad pack entry', where);
      }
      for (const b of p.blobs) {
        const [digest, type, offset, encLength, plainLength, flags] = b;
        if (
          !HEX64.test(digest) ||
          (type !== 'data' && type !== 'tree') ||
          ![offset, encLength, plainLength, flags].every((x) => Number.isSafeInteger(x) && x >= 0) ||
          plainLength > MAX_BLOB ||
          encLength > MAX_BLOB
        ) {
          throw new StrataError('CORRUPT', `bad blob entry for ${String(digest).slice(0, 16)}`, where);
        }
        if (!this.index.has(digest)) {
          this.index.set(digest, { pack: p.id, type, offset, encLength, plainLength, flags });
        }
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

  /** Encoded size of a known blob (0 when unknown). */
  storedSize(digest: string): number {
    return this.index.get(digest)?.encLength ?? this.unflushed.get(digest)?.entry.encLength ?? 0;
  }

  /**
   * Store a blob (no-op when the digest is known). Returns once it is queued; it is
   * durable after `flush()`. `digest`, when given, must be the sha256 of `plain`
   * (callers that hashed already skip a second hash).
   */
  async put(type: BlobType, plain: Uint8Array, digest = sha256hex(plain)): Promise<PutResult> {
    if (this.flushError) throw this.flushError;
    if (this.has(digest)) return { digest, added: false, storedBytes: 0 };
    if (plain.length > MAX_BLOB) throw new StrataError('LIMIT', `blob of ${plain.length} bytes`, { file: this.name });
    let enc: Uint8Array;
    let flags = FLAG_ZSTD;
    const bound = compressBound(plain.length);
    if (plain.length <= ARENA_BLOB) {
      if (!this.arena) this.arena = this.spareArenas.pop() ?? Buffer.allocUnsafe(ARENA_BYTES);
      if (ARENA_BYTES - this.arenaUsed < bound) {
        await this.startFlush();
        this.arena = this.spareArenas.pop() ?? Buffer.allocUnsafe(ARENA_BYTES);
      }
      const at = this.arenaUsed;
      let n = compressInto(this.arena.subarray(at), plain, ZSTD_LEVEL);
      if (n >= plain.length) {
        this.arena.set(plain, at);
        n = plain.length;
        flags = 0;
      }
      enc = this.arena.subarray(at, at + n);
      this.arenaUsed += n;
    } else {
      const big = Buffer.allocUnsafe(bound);
      const n = compressInto(big, plain, ZSTD_LEVEL);
      if (n >= plain.length) {
        enc = Uint8Array.prototype.slice.call(plain); // own copy: the caller may reuse its buffer
        flags = 0;
      } else enc = big.subarray(0, n);
    }
    const p: Pending = {
      entry: { digest, type, flags, offset: this.pendingBytes, encLength: enc.length, plainLength: plain.length },
      enc,
    };
    this.pending.push(p);
    this.pendingBytes += enc.length;
    this.unflushed.set(digest, p);
    if (this.pendingBytes >= PACK_TARGET) await this.startFlush();
    return { digest, added: true, storedBytes: enc.length };
  }

  /** Write everything queued: packs, then their index. */
  async flush(): Promise<void> {
    await this.startFlush();
    await this.flushing;
    if (this.flushError) throw this.flushError;
  }

  /** Hand the queued blobs to the (serial) writer; waits for the previous pack only. */
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
        if (arena) this.spareArenas.push(arena); // its blobs are now read from the pack
      } catch (e) {
        this.flushError = e;
      }
    })();
    await prev; // at most one pack being written while the next fills
    if (this.flushError) throw this.flushError;
  }

  private async writePack(batch: Pending[]): Promise<void> {
    const header = encodePackHeader(batch.map((p) => p.entry));
    const h = createHash('sha256');
    for (const p of batch) h.update(p.enc);
    h.update(header);
    const id = h.digest('hex');
    await this.backend.put(packKey(id), [...batch.map((p) => p.enc), header]);
    const ix: IndexFile = {
      version: 1,
      packs: [
        {
          id,
          blobs: batch.map((p) => [
            p.entry.digest,
            p.entry.type,
            p.entry.offset,
            p.entry.encLength,
            p.entry.plainLength,
            p.entry.flags,
          ]),
        },
      ],
    };
    await this.putIndex(ix);
    for (const p of batch) {
      const { digest, ...rest } = p.entry;
      if (!this.index.has(digest)) this.index.set(digest, { pack: id, ...rest });
      this.unflushed.delete(digest);
    }
  }

  private async putIndex(ix: IndexFile): Promise<string> {
    const body = Buffer.from(JSON.stringify(ix));
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
    if (u) return this.decodeWith(u.enc, u.entry.flags, u.entry.plainLength, digest, 'unflushed', 0, use);
    const e = this.index.get(digest);
    if (!e) {
      throw new StrataError('NOT_FOUND', `blob ${digest} is not in the store`, {
        file: this.name,
        structure: 'store index',
      });
    }
    const key = packKey(e.pack);
    const encBuf = this.pool.take(e.encLength);
    try {
      const enc = encBuf.subarray(0, e.encLength);
      let got: number;
      if (this.backend.getRangeInto) got = await this.backend.getRangeInto(key, e.offset, enc);
      else {
        const b = await this.backend.getRange(key, e.offset, e.encLength);
        enc.set(b.subarray(0, e.encLength));
        got = b.length;
      }
      if (got !== e.encLength) {
        throw new StrataError('TRUNCATED', `pack ends inside blob ${digest.slice(0, 16)}`, {
          file: `${this.name}/${key}`,
          structure: `blob ${digest}`,
          offset: e.offset,
        });
      }
      return this.decodeWith(enc, e.flags, e.plainLength, digest, key, e.offset, use);
    } finally {
      this.pool.give(encBuf);
    }
  }

  private decodeWith<T>(
    enc: Uint8Array,
    flags: number,
    plainLength: number,
    digest: string,
    key: string,
    offset: number,
    use: (plain: Uint8Array) => T,
  ): T {
    const where = { file: `${this.name}/${key}`, structure: `blob ${digest}`, offset };
    if (!(flags & FLAG_ZSTD)) {
      if (enc.length !== plainLength || sha256hex(enc) !== digest) {
        throw new StrataError('CORRUPT', 'blob content does not match its sha256 (damaged pack)', where);
      }
      return use(enc);
    }
    const scratch = this.pool.take(plainLength);
    try {
      let n: number;
      try {
        n = decompressInto(scratch.subarray(0, plainLength), enc);
      } catch (e) {
        throw new StrataError('CORRUPT', `zstd frame does not decode: ${(e as Error).message}`, where);
      }
      const plain = scratch.subarray(0, n);
      if (n !== plainLength || sha256hex(plain) !== digest) {
        throw new StrataError('CORRUPT', 'blob content does not match its sha256 (damaged pack)', where);
      }
      return use(plain);
    } finally {
      this.pool.give(scratch);
    }
  }

  /**
   * Re-read every pack: its name is the sha256 of its bytes, its header parses, every blob
   * decodes to its digest, and every index entry points at a pack that holds that blob.
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
        for (const en of entries) {
          m.set(en.digest, en);
          report.blobs++;
          try {
            this.decodeWith(
              body.subarray(en.offset, en.offset + en.encLength),
              en.flags,
              en.plainLength,
              en.digest,
              f.key,
              en.offset,
              () => undefined,
            );
          } catch (e) {
            report.errors.push((e as Error).message);
          }
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
      if (contents.has(e.pack) && (!en || en.offset !== e.offset || en.encLength !== e.encLength)) {
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
    const drop: string[] = [];
    const kept: IndexFile['packs'] = [];
    let rewritten = 0;
    let freed = 0;
    for (const [pack, blobs] of byPack) {
      const live = blobs.filter(([d]) => keep.has(d));
      if (live.length === blobs.length) {
        kept.push({
          id: pack,
          blobs: blobs.map(([d, e]) => [d, e.type, e.offset, e.encLength, e.plainLength, e.flags]),
        });
        continue;
      }
      drop.push(pack);
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
      if (!byPack.has(id)) drop.push(id);
    }
    await this.startFlush();
    await this.flushing;
    if (this.flushError) throw this.flushError;
    // the packs written by the re-puts were indexed one by one; fold everything into one index
    const fresh = new Map<string, IndexFile['packs'][number]>();
    for (const [d, e] of this.index) {
      if (byPack.has(e.pack) && !drop.includes(e.pack)) continue; // already in `kept`
      if (drop.includes(e.pack)) continue;
      let p = fresh.get(e.pack);
      if (!p) fresh.set(e.pack, (p = { id: e.pack, blobs: [] }));
      p.blobs.push([d, e.type, e.offset, e.encLength, e.plainLength, e.flags]);
    }
    const oldIndexFiles = this.indexFiles.slice();
    const newKey = await this.putIndex({ version: 1, packs: [...kept, ...fresh.values()] });
    for (const k of oldIndexFiles) if (k !== newKey) await this.backend.delete(k);
    for (const id of drop) {
      freed += sizeOf.get(id) ?? 0;
      await this.backend.delete(packKey(id));
    }
    await this.loadIndex();
    return { deletedPacks: drop.length, rewrittenPacks: rewritten, freedBytes: freed };
  }

  async close(): Promise<void> {
    await this.flushing.catch(() => {});
    await this.backend.close();
  }
}

/** The entries of a whole pack held in memory. */
export function readPackEntries(body: Uint8Array, file: string): PackEntry[] {
  if (body.length < TRAILER_BYTES) {
    throw new StrataError('TRUNCATED', 'pack shorter than its trailer', { file, structure: 'pack trailer' });
  }
  const hb = parsePackTrailer(body.subarray(body.length - TRAILER_BYTES), body.length, file);
  const blobArea = body.length - TRAILER_BYTES - hb;
  if (hb % ENTRY_BYTES !== 0) throw new StrataError('CORRUPT', 'pack header size', { file });
  return parsePackHeader(body.subarray(blobArea, blobArea + hb), blobArea, file);
}
