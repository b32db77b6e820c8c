import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import * as path from 'node:path';
import { StrataError } from '../util/errors.js';

const DIGEST = /^[0-9a-f]{64}$/;

/** Default bound of a chunk cache: 10 GiB. */
export const CACHE_DEFAULT_BYTES = 10 * 2 ** 30;

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
 */
export class ChunkCache {
  hits = 0;
  misses = 0;
  hitBytes = 0;
  storedBytes = 0;
  /** What this process believes the cache holds (a scan at open, plus what it added). */
  private approx = 0;
  private evicting: Promise<void> | undefined;

  private constructor(
    readonly dir: string,
    readonly maxBytes: number,
  ) {}

  static async open(dir: string, maxBytes = CACHE_DEFAULT_BYTES): Promise<ChunkCache> {
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0)
      throw new StrataError('USAGE', `bad cache size ${maxBytes}`, { file: dir });
    const root = path.resolve(dir);
    try {
      await mkdir(path.join(root, 'tmp'), { recursive: true });
    } catch (e) {
      throw new StrataError('IO', `cannot make the chunk cache: ${(e as Error).message}`, { file: root }, { cause: e });
    }
    // temporary files of writers killed mid-put (an hour old: nobody is still writing them)
    for (const n of await readdir(path.join(root, 'tmp')).catch(() => [] as string[])) {
      const f = path.join(root, 'tmp', n);
      const s = await stat(f).catch(() => undefined);
      if (s && Date.now() - s.mtimeMs > 3600_000) await unlink(f).catch(() => {});
    }
    const c = new ChunkCache(root, maxBytes);
    c.approx = (await c.files()).reduce((n, f) => n + f.size, 0);
    return c;
  }

  private file(digest: string): string {
    if (!DIGEST.test(digest)) throw new StrataError('USAGE', `bad chunk digest ${digest}`, { file: this.dir });
    return path.join(this.dir, digest.slice(0, 2), digest);
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

  /** Keep a chunk (its bytes must hash to `digest`: callers pass checked bytes; checked again here). */
  async put(digest: string, data: Uint8Array): Promise<void> {
    const f = this.file(digest);
    if (createHash('sha256').update(data).digest('hex') !== digest) {
      throw new StrataError('CORRUPT', `refusing to cache bytes that do not hash to ${digest}`, { file: f });
    }
    if (await this.has(digest)) return;
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
      throw new StrataError('IO', `cannot add to the chunk cache: ${(e as Error).message}`, { file: f }, { cause: e });
    }
    this.storedBytes += data.length;
    this.approx += data.length;
    if (this.approx > this.maxBytes) await this.evict();
  }

  private async files(): Promise<Array<{ file: string; size: number; mtimeMs: number }>> {
    const out: Array<{ file: string; size: number; mtimeMs: number }> = [];
    let tops: string[];
    try {
      tops = await readdir(this.dir);
    } catch {
      return out;
    }
    for (const t of tops) {
      if (!/^[0-9a-f]{2}$/.test(t)) continue;
      let names: string[];
      try {
        names = await readdir(path.join(this.dir, t));
      } catch {
        continue;
      }
      for (const n of names) {
        if (!DIGEST.test(n)) continue;
        const file = path.join(this.dir, t, n);
        try {
          const s = await stat(file);
          out.push({ file, size: s.size, mtimeMs: s.mtimeMs });
        } catch {}
      }
    }
    return out;
  }

  /** Bytes the cache holds now (a scan). */
  async size(): Promise<number> {
    return (await this.files()).reduce((n, f) => n + f.size, 0);
  }

  /** Remove the least recently used chunks until the cache is at 90% of its bound. */
  evict(): Promise<void> {
    this.evicting ??= (async () => {
      try {
        const all = await this.files();
        let total = all.reduce((n, f) => n + f.size, 0);
        const goal = Math.floor(this.maxBytes * 0.9);
        all.sort((a, b) => a.mtimeMs - b.mtimeMs);
        for (const f of all) {
          if (total <= goal) break;
          await unlink(f.file).catch(() => {});
          total -= f.size;
        }
        this.approx = total;
      } finally {
        this.evicting = undefined;
      }
    })();
    return this.evicting;
  }
}
