import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { type FileHandle, open, rename, unlink, utimes, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import type { Backend, BackendEntry } from './backend.js';

/**
 * A bounded read-through cache on local disk in front of a remote backend (S3). Only
 * immutable objects are cached: packs and index files never change under their key (gc
 * writes new ones and deletes old ones), so a cached copy is never stale, at worst kept
 * after another server deleted it (harmless: nothing references it any more).
 *
 * A read of a pack not cached fetches the whole object once (concurrent readers share the
 * fetch) and serves ranges from the file; with a remote that streams (S3: `getStream`), the
 * object's bytes are kept in memory as they arrive and a read is answered as soon as its
 * range is there (a checkout's writer runs behind the download instead of after each pack),
 * then the object is written to the cache in one piece; the least recently used files go when the cache
 * holds more than `maxBytes`. An object larger than half the cache is not cached:
 * its reads are ranged GETs. Writes go through to the remote and are cached as written.
 */
const CACHED = /^(packs|index)\//;
const HANDLES = 16;
/** Packs a prefetch fetches at once, and how far (in packs) it runs ahead of the reader. */
export const PREFETCH = 3;
export const PREFETCH_AHEAD = 6;
/** A cold read up to this long is a ranged GET of its own while the whole object is fetched behind it. */
const SMALL_READ = 1024 * 1024;
/** An object on its way is written to its cache file this many bytes at a time (one writev of the chunks received). */
const WRITE_BATCH = 1024 * 1024;

/** An object on its way from the remote: its bytes so far, and the reads waiting for more. */
interface Incoming {
  size?: number;
  /** Where its bytes go: the cache's temporary file, or memory when it is too large to cache. */
  fh?: FileHandle;
  buf?: Buffer;
  /** Write out what has arrived and is not in the file yet (a reader started waiting). */
  kick?: () => void;
  got: number;
  failed?: unknown;
  done: boolean;
  waits: Array<{ end: number; wake: () => void }>;
}

interface Ahead {
  keys: string[];
  pos: Map<string, number>;
  next: number;
  /** The furthest key in `keys` a reader has asked for. */
  read: number;
  running: number;
}

export const DEFAULT_CACHE_BYTES = 4 * 1024 ** 3;

/**
 * What the cache remembers of its remote between processes, in LISTING in its folder: the
 * store's config and the last listing of its index files. A read-only open (a checkout)
 * whose packs and index files are all cached then needs no request before its first miss
 * (library.ts: the S3 client is made, and the SDK loaded, on that miss). The listing may be
 * stale (another server committed or ran gc since); what keeps reads right is the store:
 * a blob the index does not know makes it list again, a pack gone from the remote (and not
 * cached) makes it list again and find where gc moved the blob, a listed index file gone
 * makes it load from a fresh listing, a write refreshes first, and every blob read is
 * checked against its digest (a cached pack never changes under its name).
 */
export interface Remembered {
  v: 1;
  /** The remote's name (s3://bucket/prefix). */
  store: string;
  /** The store's `config` object, as read. */
  config: string;
  index: BackendEntry[];
}
const LISTING = '.listing.json';
const INDEX_KEY = /^index\/[0-9a-f]{64}$/;

export class CachedBackend implements Backend {
  private readonly files = new Map<string, number>(); // key -> size, least recently used first
  private bytes = 0;
  private readonly fetching = new Map<string, Promise<boolean>>();
  private readonly incoming = new Map<string, Incoming>();
  private readonly handles = new Map<string, Promise<FileHandle>>();
  /** Reads answered without a request of their own: from a cached file, or joining an object on its way. */
  hits = 0;
  /** Whole-object fetches. */
  misses = 0;
  private ahead?: Ahead;
  private readonly touchedAt = new Map<string, number>();

  /** The remembered config and listing this open may use (read-only opens), each once. */
  private remembered?: { config?: string; index?: BackendEntry[] };
  /** The config read from the remote (what a listing is remembered with). */
  private config?: string;
  /** The index listing last written to LISTING (keys, sorted), and that write. */
  private rememberedKeys?: string;
  private remembering: Promise<void> = Promise.resolve();

  constructor(
    readonly remote: Backend,
    readonly dir: string,
    readonly maxBytes = DEFAULT_CACHE_BYTES,
    opts: { remembered?: Remembered } = {},
  ) {
    mkdirSync(dir, { recursive: true });
    const r = opts.remembered;
    if (r && r.store === remote.name) {
      this.remembered = { config: r.config, index: r.index };
      this.config = r.config;
      this.rememberedKeys = keysOf(r.index);
    }
    const found: Array<{ key: string; size: number; at: number }> = [];
    for (const name of readdirSync(dir)) {
      const full = path.join(dir, name);
      if (name === LISTING) continue;
      if (name.startsWith('.tmp-')) {
        unlinkSync(full);
        continue;
      }
      const st = statSync(full);
      found.push({ key: name.replace(/~/g, '/'), size: st.size, at: st.atimeMs });
    }
    found.sort((a, b) => a.at - b.at);
    for (const f of found) {
      this.files.set(f.key, f.size);
      this.bytes += f.size;
    }
  }

  get name(): string {
    return this.remote.name;
  }

  /** What the cache in `dir` remembers of the store named `store` (undefined: nothing, or unreadable). */
  static remembered(dir: string, store: string): Remembered | undefined {
    try {
      const r = JSON.parse(readFileSync(path.join(dir, LISTING), 'utf8')) as Remembered;
      const ok =
        r?.v === 1 &&
        r.store === store &&
        typeof r.config === 'string' &&
        Array.isArray(r.index) &&
        r.index.every(
          (e) => typeof e?.key === 'string' && INDEX_KEY.test(e.key) && Number.isSafeInteger(e.size) && e.size >= 0,
        );
      return ok ? r : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * The remembered listing of `prefix` (only index/), once, when this cache was opened with
   * one (a read-only open): possibly stale, see Remembered. Undefined otherwise.
   */
  listRemembered(prefix: string): BackendEntry[] | undefined {
    const r = this.remembered;
    if (prefix !== 'index/' || !r?.index) return undefined;
    const index = r.index;
    r.index = undefined;
    return index;
  }

  private file(key: string): string {
    return path.join(this.dir, key.replace(/\//g, '~'));
  }

  private touch(key: string): boolean {
    const size = this.files.get(key);
    if (size === undefined) return false;
    this.files.delete(key);
    this.files.set(key, size);
    return true;
  }

  /** Drop the least recently used files while the cache holds (or has room reserved for) more than its bound. */
  private async evict(): Promise<void> {
    while (this.bytes > this.maxBytes && this.files.size > 0) {
      const [key, size] = this.files.entries().next().value as [string, number];
      this.files.delete(key);
      this.touchedAt.delete(key);
      this.bytes -= size;
      await this.dropHandle(key);
      await unlink(this.file(key)).catch(() => {});
    }
  }

  private async dropHandle(key: string): Promise<void> {
    const h = this.handles.get(key);
    if (h) {
      this.handles.delete(key);
      await h.then((x) => x.close()).catch(() => {});
    }
  }

  private async store(key: string, data: Uint8Array | Uint8Array[]): Promise<void> {
    const parts = Array.isArray(data) ? data : [data];
    const size = parts.reduce((n, p) => n + p.length, 0);
    if (size > this.maxBytes / 2 || this.files.has(key)) return;
    // room first (the bound holds while the file is written), then the file
    this.bytes += size;
    await this.evict();
    const tmp = path.join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      await writeFile(tmp, parts);
      await rename(tmp, this.file(key));
    } catch {
      this.bytes -= size;
      await unlink(tmp).catch(() => {});
      return; // a cache that cannot write is only slower
    }
    if (this.files.has(key)) {
      this.bytes -= size;
      return;
    }
    this.files.set(key, size);
  }

  /** Make sure `key` is in the cache (fetching it whole); false when it is too large to cache. */
  private ensure(key: string): Promise<boolean> {
    if (this.touch(key)) {
      this.hits++;
      return Promise.resolve(true);
    }
    let p = this.fetching.get(key);
    if (!p) {
      this.misses++;
      p = this.fetch(key).finally(() => this.fetching.delete(key));
      this.fetching.set(key, p);
    }
    return p;
  }

  private async fetch(key: string): Promise<boolean> {
    if (!this.remote.getStream) {
      const data = await this.remote.get(key);
      await this.store(key, data);
      return this.files.has(key);
    }
    // readers find the object here from now on and wait for their range, not for the whole object
    const inc: Incoming = { got: 0, done: false, waits: [] };
    this.incoming.set(key, inc);
    const wake = () => {
      const still = [];
      for (const w of inc.waits) {
        if (inc.done || (inc.size !== undefined && Math.min(w.end, inc.size) <= inc.got)) w.wake();
        else still.push(w);
      }
      inc.waits = still;
    };
    let reserved = 0;
    let tmp: string | undefined;
    try {
      const st = await this.remote.getStream(key);
      inc.size = st.size;
      try {
        if (st.size > this.maxBytes / 2) {
          // too large to cache: kept in memory for the reads that want it now, then dropped
          inc.buf = Buffer.allocUnsafe(st.size);
          for await (const c of st.body) {
            if (inc.got + c.length > st.size) throw new Error(`${key}: more than the ${st.size} bytes announced`);
            inc.buf.set(c, inc.got);
            inc.got += c.length;
            if (inc.waits.length) wake();
          }
        } else {
          // straight into the cache file as it arrives (room reserved first: the bound holds while
          // it is written); reads of the part written are answered from the file meanwhile
          reserved = st.size;
          this.bytes += reserved;
          await this.evict();
          tmp = path.join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
          const fh = await open(tmp, 'w+');
          inc.fh = fh;
          let batch: Uint8Array[] = [];
          let batchBytes = 0;
          let pos = 0; // bytes handed to the file (written, or being written)
          const flush = async () => {
            if (batchBytes === 0) return;
            let parts = batch;
            const bytes = batchBytes;
            const at0 = pos;
            batch = [];
            batchBytes = 0;
            pos += bytes;
            let at = 0;
            while (at < bytes) {
              const { bytesWritten } = await fh.writev(parts, at0 + at);
              if (bytesWritten <= 0) throw new Error(`${key}: the cache file took no bytes`);
              at += bytesWritten;
              if (at < bytes) parts = [Buffer.concat(parts).subarray(bytesWritten)];
            }
            inc.got = at0 + bytes;
            if (inc.waits.length) wake();
          };
          // writes one after another; a reader that starts waiting writes out what has arrived
          // (it may be waiting for bytes received and not written while the network is quiet)
          let chain: Promise<void> = Promise.resolve();
          const flushNow = () => {
            chain = chain.then(flush);
            return chain;
          };
          inc.kick = () => {
            if (batchBytes > 0) flushNow().catch(() => {});
          };
          for await (const c of st.body) {
            if (pos + batchBytes + c.length > st.size)
              throw new Error(`${key}: more than the ${st.size} bytes announced`);
            batch.push(c);
            batchBytes += c.length;
            // a MiB at a time, or sooner when a reader waits for what has arrived
            if (
              batchBytes >= WRITE_BATCH ||
              (inc.waits.length > 0 && inc.waits.some((w) => Math.min(w.end, st.size) <= pos + batchBytes))
            )
              await flushNow();
          }
          await flushNow();
        }
      } catch (e) {
        st.cancel();
        throw e;
      }
      if (inc.got !== st.size) throw new Error(`${key}: ${inc.got} of ${st.size} bytes arrived`);
      if (tmp && inc.fh) {
        await rename(tmp, this.file(key));
        tmp = undefined;
        if (this.files.has(key)) this.bytes -= reserved;
        else {
          this.files.set(key, reserved);
          // the file's handle serves the reads that follow
          this.handles.set(key, Promise.resolve(inc.fh));
          this.trimHandles();
        }
        reserved = 0;
      }
      inc.done = true;
      wake();
      return this.files.has(key);
    } catch (e) {
      inc.failed = e;
      inc.done = true;
      wake();
      if (inc.fh && this.handles.get(key) === undefined) await inc.fh.close().catch(() => {});
      if (tmp) await unlink(tmp).catch(() => {});
      this.bytes -= reserved;
      throw e;
    } finally {
      // readers that took the record still read through it; new ones read the cache
      if (this.incoming.get(key) === inc) this.incoming.delete(key);
    }
  }

  /** `out.length` bytes at `offset` of an object on its way, as soon as they are there; undefined when its fetch failed. */
  private async fromIncoming(inc: Incoming, offset: number, out: Uint8Array): Promise<number | undefined> {
    const end = offset + out.length;
    if (!inc.done && !(inc.size !== undefined && Math.min(end, inc.size) <= inc.got))
      await new Promise<void>((wake) => {
        inc.waits.push({ end, wake });
        inc.kick?.();
      });
    if (inc.failed !== undefined || inc.size === undefined) return undefined;
    const n = Math.max(0, Math.min(out.length, inc.size - offset));
    if (n === 0) return 0;
    if (inc.buf) {
      out.set(inc.buf.subarray(offset, offset + n));
      return n;
    }
    if (!inc.fh) return undefined;
    try {
      let done = 0;
      while (done < n) {
        const { bytesRead } = await inc.fh.read(out, done, n - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done === n ? n : undefined;
    } catch {
      return undefined; // closed under us (evicted): the caller reads from the remote
    }
  }

  private handle(key: string): Promise<FileHandle> {
    let h = this.handles.get(key);
    if (h) {
      this.handles.delete(key);
      this.handles.set(key, h);
      return h;
    }
    h = open(this.file(key), 'r');
    h.catch(() => this.handles.delete(key));
    this.handles.set(key, h);
    this.trimHandles();
    return h;
  }

  private trimHandles(): void {
    while (this.handles.size > HANDLES) {
      const [old, oh] = this.handles.entries().next().value as [string, Promise<FileHandle>];
      this.handles.delete(old);
      oh.then((x) => x.close()).catch(() => {});
    }
  }

  private async readCached(key: string, offset: number, out: Uint8Array): Promise<number | undefined> {
    try {
      const fh = await this.handle(key);
      let done = 0;
      while (done < out.length) {
        const { bytesRead } = await fh.read(out, done, out.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      // the file's times order the cache when the next process starts: touched at most once a minute
      // (a utimes per frame read cost a warm checkout ~0.8x of its time here)
      const now = Date.now();
      if (now - (this.touchedAt.get(key) ?? 0) > 60_000) {
        this.touchedAt.set(key, now);
        const t = new Date(now);
        utimes(this.file(key), t, t).catch(() => {});
      }
      return done;
    } catch {
      // evicted under us: forget it and read from the remote
      const size = this.files.get(key);
      if (size !== undefined) {
        this.files.delete(key);
        this.bytes -= size;
      }
      await this.dropHandle(key);
      return undefined;
    }
  }

  /**
   * Fetch these objects into the cache ahead of the reader: PREFETCH at a time, in order, at
   * most PREFETCH_AHEAD past the furthest one read (a checkout larger than the cache must
   * not evict what it is about to read). A failed fetch is left to the read that needs it.
   */
  prefetch(keys: readonly string[]): void {
    const ks = keys.filter((k) => CACHED.test(k));
    this.ahead = { keys: ks, pos: new Map(ks.map((k, i) => [k, i])), next: 0, read: -1, running: 0 };
    this.pump();
  }

  private pump(): void {
    const a = this.ahead;
    if (!a || a !== this.ahead) return;
    while (a.running < PREFETCH && a.next < a.keys.length && a.next <= a.read + PREFETCH_AHEAD) {
      const k = a.keys[a.next++];
      if (this.files.has(k)) continue;
      a.running++;
      this.ensure(k)
        .catch(() => false)
        .finally(() => {
          a.running--;
          this.pump();
        });
    }
  }

  /** Prefetches under way now. */
  get prefetching(): number {
    return this.ahead?.running ?? 0;
  }

  /** A reader got to `key`: the prefetch may run further. */
  private reading(key: string): void {
    const a = this.ahead;
    const i = a?.pos.get(key);
    if (a && i !== undefined && i > a.read) {
      a.read = i;
      this.pump();
    }
  }

  async put(key: string, data: Uint8Array | Uint8Array[]): Promise<void> {
    await this.remote.put(key, data);
    if (CACHED.test(key)) await this.store(key, data);
  }

  putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    return this.remote.putIfAbsent(key, data);
  }

  async get(key: string): Promise<Uint8Array> {
    if (key === 'config') {
      const r = this.remembered;
      if (r?.config !== undefined) {
        const c = r.config;
        r.config = undefined;
        return Buffer.from(c, 'utf8');
      }
      const got = await this.remote.get(key);
      this.config = Buffer.from(got).toString('utf8');
      return got;
    }
    if (!CACHED.test(key)) return this.remote.get(key);
    const whole = this.ensure(key);
    const inc = this.incoming.get(key);
    let cached: boolean;
    if (inc) {
      cached = await whole.catch(() => false);
      // too large to cache: the bytes in memory are the answer
      if (inc.failed === undefined && inc.buf) return inc.buf;
    } else cached = await whole;
    if (cached) {
      const size = this.files.get(key);
      if (size !== undefined) {
        const out = Buffer.allocUnsafe(size);
        const n = await this.readCached(key, 0, out);
        if (n === size) return out;
      }
    }
    return this.remote.get(key);
  }

  async getRangeInto(key: string, offset: number, out: Uint8Array): Promise<number> {
    this.reading(key);
    if (!CACHED.test(key)) return this.remoteRangeInto(key, offset, out);
    if (out.length <= SMALL_READ && !this.files.has(key) && !this.fetching.has(key)) {
      // a small read of an object neither cached nor on its way (a manifest, a random read
      // over NBD): answered by a ranged GET now, the whole object fetched into the cache behind it,
      // so this read does not wait for the whole pack (a 16 MiB pack took 0.9 s to arrive
      // before a checkout's first read of a few KiB could be answered)
      this.ensure(key).catch(() => {});
      return this.remoteRangeInto(key, offset, out);
    }
    const joining = this.fetching.has(key);
    const whole = this.ensure(key);
    const inc = this.incoming.get(key);
    if (inc) {
      // on its way: answered from memory as soon as the range has arrived
      if (joining) this.hits++;
      whole.catch(() => {});
      const n = await this.fromIncoming(inc, offset, out);
      if (n !== undefined) return n;
      return this.remoteRangeInto(key, offset, out);
    }
    if (await whole) {
      const n = await this.readCached(key, offset, out);
      if (n !== undefined) return n;
    }
    return this.remoteRangeInto(key, offset, out);
  }

  private async remoteRangeInto(key: string, offset: number, out: Uint8Array): Promise<number> {
    if (this.remote.getRangeInto) return this.remote.getRangeInto(key, offset, out);
    const b = await this.remote.getRange(key, offset, out.length);
    out.set(b);
    return b.length;
  }

  async getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    const out = Buffer.allocUnsafe(length);
    const n = await this.getRangeInto(key, offset, out);
    return n < length ? out.subarray(0, n) : out;
  }

  async list(prefix: string): Promise<BackendEntry[]> {
    const got = await this.remote.list(prefix);
    if (prefix === 'index/') this.remember(got);
    return got;
  }

  /** Keep this listing of index/ in LISTING for the next read-only open (when it changed; a failed write costs only requests). */
  private remember(index: BackendEntry[]): void {
    const config = this.config;
    const keys = keysOf(index);
    if (config === undefined || keys === this.rememberedKeys) return;
    this.rememberedKeys = keys;
    const r: Remembered = { v: 1, store: this.remote.name, config, index };
    this.remembering = this.remembering.then(async () => {
      const tmp = path.join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
      try {
        await writeFile(tmp, JSON.stringify(r));
        await rename(tmp, path.join(this.dir, LISTING));
      } catch {
        await unlink(tmp).catch(() => {});
      }
    });
  }

  async delete(key: string): Promise<void> {
    await this.remote.delete(key);
    const size = this.files.get(key);
    if (size !== undefined) {
      this.files.delete(key);
      this.bytes -= size;
      await this.dropHandle(key);
      await unlink(this.file(key)).catch(() => {});
    }
  }

  /** Resolves when no object is on its way into the cache (what was fetched is written). */
  async idle(): Promise<void> {
    while (this.fetching.size > 0) await Promise.allSettled([...this.fetching.values()]);
  }

  /** Bytes the cache holds now. */
  get size(): number {
    return this.bytes;
  }

  async close(): Promise<void> {
    this.ahead = undefined;
    await Promise.allSettled([...this.fetching.values()]);
    await this.remembering;
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map((h) => h.then((x) => x.close()).catch(() => {})));
    await this.remote.close();
  }
}

const keysOf = (index: readonly BackendEntry[]) =>
  index
    .map((e) => e.key)
    .sort()
    .join(' ');
