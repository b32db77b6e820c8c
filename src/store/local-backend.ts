import { randomBytes } from 'node:crypto';
import { type FileHandle, link, mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import * as path from 'node:path';
import { StrataError } from '../util/errors.js';
import { type Backend, type BackendEntry, checkKey } from './backend.js';

/** Pack files kept open for range reads (checkout reads many ranges of few packs). */
const OPEN_HANDLES = 32;

/**
 * The embedded default backend: a local directory. Writes go to a temporary file in the
 * target's directory, are fsynced, renamed into place, and the directory is fsynced, so a
 * crash leaves either the old state or the complete new object (plus, at worst, a
 * `.tmp-*` file that `sweepTemporary`, run by gc, removes).
 */
export class LocalBackend implements Backend {
  private readonly handles = new Map<string, Promise<FileHandle>>();

  constructor(readonly root: string) {}

  get name(): string {
    return this.root;
  }

  private file(key: string): string {
    if (!checkKey(key)) throw new StrataError('USAGE', `bad store key ${JSON.stringify(key)}`, { file: this.root });
    return path.join(this.root, ...key.split('/'));
  }

  private async writeTemp(file: string, data: Uint8Array | Uint8Array[]): Promise<string> {
    const dir = path.dirname(file);
    await mkdir(dir, { recursive: true });
    const tmp = path.join(dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    const fh = await open(tmp, 'wx', 0o644);
    try {
      // gathered writes: a pack is thousands of blobs, one syscall per 1024 of them
      const parts = (Array.isArray(data) ? data : [data]).filter((x) => x.length > 0);
      let at = 0;
      for (let i = 0; i < parts.length; ) {
        const batch = parts.slice(i, i + 1024);
        const want = batch.reduce((n, x) => n + x.length, 0);
        const { bytesWritten } = await fh.writev(batch, at);
        if (bytesWritten === want) {
          i += batch.length;
          at += want;
          continue;
        }
        // short write: finish this batch part by part
        let off = at;
        let skip = bytesWritten;
        for (const part of batch) {
          if (skip >= part.length) {
            skip -= part.length;
            off += part.length;
            continue;
          }
          let done = skip;
          skip = 0;
          while (done < part.length) {
            const r = await fh.write(part, done, part.length - done, off + done);
            done += r.bytesWritten;
          }
          off += part.length;
        }
        i += batch.length;
        at += want;
      }
      await fh.datasync();
    } catch (e) {
      await fh.close().catch(() => {});
      await unlink(tmp).catch(() => {});
      throw new StrataError('IO', `write failed: ${(e as Error).message}`, { file }, { cause: e });
    }
    await fh.close();
    return tmp;
  }

  private async syncDir(dir: string): Promise<void> {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } catch {
      // some file systems refuse fsync on directories; the rename is still atomic
    } finally {
      await fh.close();
    }
  }

  async put(key: string, data: Uint8Array | Uint8Array[]): Promise<void> {
    const file = this.file(key);
    const tmp = await this.writeTemp(file, data);
    try {
      await rename(tmp, file);
    } catch (e) {
      await unlink(tmp).catch(() => {});
      throw new StrataError('IO', `cannot rename into place: ${(e as Error).message}`, { file }, { cause: e });
    }
    await this.syncDir(path.dirname(file));
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    const file = this.file(key);
    const tmp = await this.writeTemp(file, data);
    try {
      await link(tmp, file); // fails with EEXIST when the key exists: an atomic create
      await this.syncDir(path.dirname(file));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw new StrataError('IO', `cannot link into place: ${(e as Error).message}`, { file }, { cause: e });
    } finally {
      await unlink(tmp).catch(() => {});
    }
  }

  async get(key: string): Promise<Uint8Array> {
    const file = this.file(key);
    const fh = await this.openFile(key, file);
    const st = await fh.stat();
    return this.readAt(fh, file, 0, st.size);
  }

  async getRangeInto(key: string, offset: number, out: Uint8Array): Promise<number> {
    const file = this.file(key);
    const fh = await this.openFile(key, file);
    let done = 0;
    while (done < out.length) {
      const { bytesRead } = await fh.read(out, done, out.length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  async getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    const file = this.file(key);
    return this.readAt(await this.openFile(key, file), file, offset, length);
  }

  private async readAt(fh: FileHandle, _file: string, offset: number, length: number): Promise<Uint8Array> {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done < length ? buf.subarray(0, done) : buf;
  }

  private openFile(key: string, file: string): Promise<FileHandle> {
    let p = this.handles.get(key);
    if (p) {
      // refresh LRU position
      this.handles.delete(key);
      this.handles.set(key, p);
      return p;
    }
    p = open(file, 'r').catch((e: NodeJS.ErrnoException) => {
      this.handles.delete(key);
      throw new StrataError(e.code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `cannot open: ${e.message}`, { file });
    });
    this.handles.set(key, p);
    while (this.handles.size > OPEN_HANDLES) {
      const [oldest, h] = this.handles.entries().next().value as [string, Promise<FileHandle>];
      this.handles.delete(oldest);
      h.then((x) => x.close()).catch(() => {});
    }
    return p;
  }

  async list(prefix: string): Promise<BackendEntry[]> {
    const out: BackendEntry[] = [];
    const base = prefix.replace(/\/$/, '');
    const walkDir = async (dir: string, keyPrefix: string, depth: number): Promise<void> => {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      for (const n of names) {
        if (n.startsWith('.')) continue;
        const full = path.join(dir, n);
        const st = await stat(full).catch(() => undefined);
        if (!st) continue;
        const key = keyPrefix ? `${keyPrefix}/${n}` : n;
        if (st.isDirectory()) {
          if (depth < 4) await walkDir(full, key, depth + 1);
        } else if (checkKey(key)) out.push({ key, size: st.size, mtimeMs: st.mtimeMs });
      }
    };
    await walkDir(this.file(base), base, 0);
    return out;
  }

  async sweepTemporary(ageMs: number): Promise<number> {
    let removed = 0;
    const now = Date.now();
    const sweep = async (dir: string, depth: number): Promise<void> => {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        return;
      }
      for (const n of names) {
        const full = path.join(dir, n);
        const st = await stat(full).catch(() => undefined);
        if (!st) continue;
        if (st.isDirectory()) {
          if (depth < 4) await sweep(full, depth + 1);
        } else if (n.startsWith('.tmp-') && now - st.mtimeMs > ageMs) {
          await unlink(full).catch(() => {});
          removed++;
        }
      }
    };
    await sweep(this.root, 0);
    return removed;
  }

  async delete(key: string): Promise<void> {
    const h = this.handles.get(key);
    if (h) {
      this.handles.delete(key);
      await h.then((x) => x.close()).catch(() => {});
    }
    await unlink(this.file(key)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw new StrataError('IO', `cannot delete: ${e.message}`, { file: this.file(key) });
    });
  }

  async close(): Promise<void> {
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map((h) => h.then((x) => x.close()).catch(() => {})));
  }
}
