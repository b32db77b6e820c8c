import { createHash, randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import * as path from 'node:path';
import { StrataError } from '../util/errors.js';

const DIGEST = /^[0-9a-f]{64}$/;

/** Default bound of a chunk cache: 10 GiB. */
export const CACHE_DEFAULT_BYTES = 10 * 2 ** 30;

/**
 * What a chunk's name costs its folder, as an estimate of a put (the folders' real sizes come
 * with a scan). An ext4 entry is 72 bytes (8 and the 64-byte name), but a large folder is an
 * htree whose leaf blocks split half full: at 1,000,000 entries 171,680 chunk files took
 * 19.8 MB of folders, 115 bytes each. Half-full blocks, the worst, are 144.
 */
const ENTRY_BYTES = 144;

/** Distinct modification times an eviction tells apart before it merges neighbours (see evict). */
const MAX_TIME_BUCKETS = 1 << 16;

/**
 * A chunk cache shared by the deploys of one host (`--cache DIR`): one file per chunk, named
 * by the sha256 of its plain bytes (DIR/ab/abcd...), so any number of deploys and preloads of
 * any versions share it without coordination:
 *
 * - a chunk is written to a temporary file and renamed into place: a reader sees the whole
 *   chunk or none, and two processes writing the same chunk write the same bytes;
 * - every hit is hashed again before use (a damaged or truncated file is removed and counts
 *   as a miss), so the cache can never put wrong bytes into a TARGET;
 * - a hit touches the file's mtime; past `maxBytes` the least recently used files go (by
 *   mtime) until the cache is at 90%. A file evicted while another process reads it is a miss
 *   there, nothing worse.
 *
 * The bound is on the folder's size on disk, as `du` counts it: each file's allocated blocks
 * (a chunk of 1 byte takes a whole block) and the folders' own blocks. Most chunks of a tree
 * of small files are a few KiB, so their lengths alone undercount the disk by half and more.
 * What a process adds is counted before it is written; a scan (at open, at each eviction)
 * counts what is there. Other processes' additions are seen at the next scan.
 *
 * `pin()` (a preload): chunks used from then on are not evicted; a put that would take the
 * cache past its bound with only those left fails with LIMIT instead of evicting them.
 */
export class ChunkCache {
  hits = 0;
  misses = 0;
  hitBytes = 0;
  storedBytes = 0;
  /** What this process believes the cache takes on disk (a scan, plus what it added since). */
  private approx = 0;
  /** Bytes added while an eviction's scan runs (the scan may or may not have seen them). */
  private addedDuringScan = 0;
  private scanning = false;
  private evicting: Promise<{ removed: number }> | undefined;
  /** Files modified at or after this (the filesystem's clock) are kept: see pin(). */
  private pinnedSince = Number.POSITIVE_INFINITY;
  /** The ab/ folders seen (a scan) or made: a put into a new one counts its first block too. */
  private readonly folders = new Set<string>();
  /** Set when a pinned put found nothing left to evict: the next ones fail without another scan. */
  private full = false;

  private constructor(
    readonly dir: string,
    readonly maxBytes: number,
    /** The filesystem's allocation unit (st_blksize of the folder). */
    private readonly block: number,
  ) {}

  static async open(dir: string, maxBytes = CACHE_DEFAULT_BYTES): Promise<ChunkCache> {
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0)
      throw new StrataError('USAGE', `bad cache size ${maxBytes}`, { file: dir });
    const root = path.resolve(dir);
    let block = 4096;
    try {
      await mkdir(path.join(root, 'tmp'), { recursive: true });
      block = (await stat(root)).blksize || 4096;
    } catch (e) {
      throw new StrataError('IO', `cannot make the chunk cache: ${(e as Error).message}`, { file: root }, { cause: e });
    }
    // temporary files of writers killed mid-put (an hour old: nobody is still writing them)
    for (const n of await readdir(path.join(root, 'tmp')).catch(() => [] as string[])) {
      const f = path.join(root, 'tmp', n);
      const s = await stat(f).catch(() => undefined);
      if (s && Date.now() - s.mtimeMs > 3600_000) await unlink(f).catch(() => {});
    }
    const c = new ChunkCache(root, maxBytes, block);
    c.approx = await c.size();
    return c;
  }

  private file(digest: string): string {
    if (!DIGEST.test(digest)) throw new StrataError('USAGE', `bad chunk digest ${digest}`, { file: this.dir });
    return path.join(this.dir, digest.slice(0, 2), digest);
  }

  /** What a file of `length` bytes takes on disk (whole blocks; at least what stat says is allocated). */
  private onDisk(length: number, s?: Stats): number {
    const rounded = Math.ceil(length / this.block) * this.block;
    return s ? Math.max(rounded, s.blocks * 512) : rounded;
  }

  /** The chunk's plain bytes, checked against its digest; undefined when absent or damaged. */
  async get(digest: string): Promise<Uint8Array | undefined> {
    const f = this.file(digest);
    let b: Buffer;
    try {
      b = await readFile(f);
    } catch {
      this.misses++;
      return undefined;
    }
    if (createHash('sha256').update(b).digest('hex') !== digest) {
      await unlink(f).catch(() => {});
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.hitBytes += b.length;
    const now = new Date();
    await utimes(f, now, now).catch(() => {});
    return b;
  }

  async has(digest: string): Promise<boolean> {
    try {
      await stat(this.file(digest));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Whether the cache holds the chunk, marking it used now (so that eviction keeps it as it
   * keeps a chunk just read, and a pin keeps it): what a preload asks of a chunk it finds.
   */
  async touch(digest: string): Promise<boolean> {
    const now = new Date();
    try {
      await utimes(this.file(digest), now, now);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Keep every chunk used from now on (touched, read or put by this or another process):
   * eviction takes only older ones, and a put that cannot make room without them fails with
   * LIMIT. "Now" by the filesystem's clock (a marker file's mtime), which the files' times
   * come from.
   */
  async pin(): Promise<void> {
    const marker = path.join(this.dir, 'tmp', `${process.pid}-pin-${randomBytes(6).toString('hex')}`);
    const fh = await open(marker, 'wx', 0o644);
    try {
      this.pinnedSince = (await fh.stat()).mtimeMs;
      this.full = false;
    } finally {
      await fh.close();
      await unlink(marker).catch(() => {});
    }
  }

  get pinned(): boolean {
    return Number.isFinite(this.pinnedSince);
  }

  unpin(): void {
    this.pinnedSince = Number.POSITIVE_INFINITY;
    this.full = false;
  }

  /** Keep a chunk (its bytes must hash to `digest`: callers pass checked bytes; checked again here). */
  async put(digest: string, data: Uint8Array): Promise<void> {
    const f = this.file(digest);
    if (createHash('sha256').update(data).digest('hex') !== digest) {
      throw new StrataError('CORRUPT', `refusing to cache bytes that do not hash to ${digest}`, { file: f });
    }
    if (await this.touch(digest)) return;
    // room first: the bound holds while the file is written, not only after
    const folder = digest.slice(0, 2);
    const need = this.onDisk(data.length) + ENTRY_BYTES + (this.folders.has(folder) ? 0 : this.block);
    while (this.approx + need > this.maxBytes) {
      if (this.full && this.pinned) throw this.fullError();
      const { removed } = await this.evict(need);
      if (this.approx + need <= this.maxBytes) break;
      if (removed > 0) continue;
      if (this.pinned) {
        this.full = true;
        throw this.fullError();
      }
      break; // nothing left to evict (a bound below a chunk or two): keep this one anyway
    }
    this.approx += need;
    this.folders.add(folder);
    if (this.scanning) this.addedDuringScan += need;
    let written = false;
    try {
      await mkdir(path.dirname(f), { recursive: true });
      const tmp = path.join(this.dir, 'tmp', `${process.pid}-${randomBytes(6).toString('hex')}`);
      const fh = await open(tmp, 'wx', 0o644);
      try {
        await fh.writeFile(data);
      } finally {
        await fh.close();
      }
      try {
        await rename(tmp, f);
      } catch (e) {
        await unlink(tmp).catch(() => {});
        throw new StrataError(
          'IO',
          `cannot add to the chunk cache: ${(e as Error).message}`,
          { file: f },
          { cause: e },
        );
      }
      written = true;
    } finally {
      if (!written) this.approx -= need;
    }
    this.storedBytes += data.length;
  }

  private fullError(): StrataError {
    return new StrataError(
      'LIMIT',
      `the chunk cache is full: ${this.approx} bytes on disk, its bound ${this.maxBytes} (--cache-size), and what is left are chunks in use now`,
      { file: this.dir },
    );
  }

  /**
   * Visit every chunk file (its path, bytes on disk, mtime), one folder at a time (nothing
   * kept per file); returns the folders' own bytes on disk (the root, tmp/ and every ab/).
   */
  private async scan(visit: (file: string, bytes: number, mtimeMs: number) => void | Promise<void>): Promise<number> {
    let dirs = 0;
    const dirBytes = async (d: string) => {
      const s = await stat(d).catch(() => undefined);
      if (s) dirs += this.onDisk(s.size, s);
    };
    let tops: string[];
    try {
      tops = await readdir(this.dir);
    } catch {
      return 0;
    }
    await dirBytes(this.dir);
    for (const t of tops) {
      if (t === 'tmp') {
        await dirBytes(path.join(this.dir, t));
        continue;
      }
      if (!/^[0-9a-f]{2}$/.test(t)) continue;
      const sub = path.join(this.dir, t);
      let names: string[];
      try {
        names = await readdir(sub);
      } catch {
        continue;
      }
      await dirBytes(sub);
      this.folders.add(t);
      for (const n of names) {
        if (!DIGEST.test(n)) continue;
        const file = path.join(sub, n);
        const s = await stat(file).catch(() => undefined);
        if (s) await visit(file, this.onDisk(s.size, s), s.mtimeMs);
      }
    }
    return dirs;
  }

  /** Bytes the cache takes on disk now (a scan: the chunk files' blocks and the folders'). */
  async size(): Promise<number> {
    let n = 0;
    const dirs = await this.scan((_f, bytes) => {
      n += bytes;
    });
    return n + dirs;
  }

  /**
   * Remove the least recently used chunks (not pinned) until the cache is at 90% of its
   * bound, and at least `room` bytes below it. Two scans, nothing kept per file: the first sums the bytes by modification time
   * (neighbouring times merged past MAX_TIME_BUCKETS distinct ones) and finds the time
   * before which everything goes; the second removes those files, and of the files at that
   * time as many as it takes.
   */
  evict(room = 0): Promise<{ removed: number }> {
    this.evicting ??= (async () => {
      this.scanning = true;
      this.addedDuringScan = 0;
      let removed = 0;
      try {
        let unit = 1;
        let buckets = new Map<number, number>();
        let total = 0;
        const dirs = await this.scan((_f, bytes, mtimeMs) => {
          total += bytes;
          if (mtimeMs >= this.pinnedSince) return;
          const k = Math.floor(mtimeMs / unit);
          buckets.set(k, (buckets.get(k) ?? 0) + bytes);
          while (buckets.size > MAX_TIME_BUCKETS) {
            unit *= 2;
            const merged = new Map<number, number>();
            for (const [b, n] of buckets) merged.set(Math.floor(b / 2), (merged.get(Math.floor(b / 2)) ?? 0) + n);
            buckets = merged;
          }
        });
        total += dirs; // (after the scan: \`total += await\` would add to the total read before it)
        let excess = total - Math.min(Math.floor(this.maxBytes * 0.9), this.maxBytes - room);
        if (excess > 0 && buckets.size > 0) {
          // the oldest buckets that together hold the excess: every file before `cut` goes, and
          // of the files in `cut` as many as the rest of the excess takes
          let cut = 0;
          for (const [b, n] of [...buckets].sort((x, y) => x[0] - y[0])) {
            cut = b;
            if (n >= excess) break;
            excess -= n;
          }
          buckets.clear();
          await this.scan(async (file, bytes, mtimeMs) => {
            if (mtimeMs >= this.pinnedSince) return;
            const k = Math.floor(mtimeMs / unit);
            if (k > cut || (k === cut && excess <= 0)) return;
            try {
              await unlink(file);
            } catch {
              return;
            }
            total -= bytes;
            removed += bytes;
            if (k === cut) excess -= bytes;
          });
        }
        this.approx = total + this.addedDuringScan;
      } finally {
        this.scanning = false;
        this.evicting = undefined;
      }
      return { removed };
    })();
    return this.evicting;
  }
}
