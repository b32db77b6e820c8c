import type { FileSystem, Inode } from '../fs/types.js';
import { lookupName, MAX_SYMLINKS } from '../fs/walk.js';
import { StrataError } from '../util/errors.js';

/** One file system mounted at a point of an OS tree ("/" first). */
export interface Mount {
  point: string;
  fs: FileSystem;
}

export interface Resolved {
  fs: FileSystem;
  inode: Inode;
  /** The absolute path after following symlinks. */
  path: string;
}

/** Largest file any inspector reads whole (package databases are the big ones). */
export const MAX_INSPECT_FILE = 256 * 1024 * 1024;

const MAX_STEPS = 4096;

/**
 * An OS tree assembled from several file systems (root plus what /etc/fstab mounts), read
 * like a mounted system: paths cross mount points, symlinks are followed across them
 * (absolute targets from the tree's root). Missing files are `undefined`, not errors; damage
 * found on the way becomes a warning, so inspection stays best effort.
 */
export class OsTree {
  readonly warnings: string[] = [];
  private readonly mounts: Mount[];

  constructor(mounts: Mount[]) {
    this.mounts = [...mounts].sort((a, b) => a.point.length - b.point.length);
    if (this.mounts[0]?.point !== '/') throw new StrataError('USAGE', 'an OS tree needs a file system at /');
  }

  get rootFs(): FileSystem {
    return this.mounts[0].fs;
  }

  warn(message: string): void {
    if (this.warnings.length < 200) this.warnings.push(message);
  }

  private mountAt(path: string): Mount | undefined {
    for (const m of this.mounts) if (m.point === path && m.point !== '/') return m;
    return undefined;
  }

  /** Resolve `path` (following symlinks, the last one too unless `followLast` is false). */
  async resolve(path: string, followLast = true): Promise<Resolved | undefined> {
    try {
      return await this.resolveOrThrow(path, followLast);
    } catch (e) {
      if (e instanceof StrataError) {
        if (e.code !== 'NOT_FOUND') this.warn(`${path}: ${e.message}`);
        return undefined;
      }
      throw e;
    }
  }

  private async resolveOrThrow(path: string, followLast: boolean): Promise<Resolved | undefined> {
    const rootFs = this.mounts[0].fs;
    type Level = { name: string; fs: FileSystem; inode: Inode };
    const stack: Level[] = [{ name: '', fs: rootFs, inode: await rootFs.root() }];
    const todo = split(path).reverse();
    let links = 0;
    let steps = 0;
    const here = () =>
      `/${stack
        .slice(1)
        .map((l) => l.name)
        .join('/')}`;
    while (todo.length > 0) {
      if (++steps > MAX_STEPS) throw new StrataError('LIMIT', `path ${path} expands to too many components`);
      const name = todo.pop()!;
      if (name === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dir = stack[stack.length - 1];
      if (dir.inode.type !== 'dir') return undefined;
      const e = await lookupName(dir.fs, dir.inode, name);
      if (!e) return undefined;
      let fs = dir.fs;
      let node = await fs.inode(e.ino);
      if (node.type === 'symlink' && (todo.length > 0 || followLast)) {
        if (++links > MAX_SYMLINKS) throw new StrataError('LOOP', `more than ${MAX_SYMLINKS} symlinks in ${path}`);
        const target = await fs.readlink(node);
        if (target === '') return undefined;
        if (target.startsWith('/')) stack.length = 1;
        const parts = split(target);
        for (let i = parts.length - 1; i >= 0; i--) todo.push(parts[i]);
        continue;
      }
      stack.push({ name, fs, inode: node });
      const m = this.mountAt(here());
      if (m && node.type === 'dir') {
        fs = m.fs;
        node = await fs.root();
        stack[stack.length - 1] = { name, fs, inode: node };
      }
    }
    const top = stack[stack.length - 1];
    return { fs: top.fs, inode: top.inode, path: here() };
  }

  async exists(path: string): Promise<boolean> {
    return (await this.resolve(path)) !== undefined;
  }

  async isDir(path: string): Promise<boolean> {
    return (await this.resolve(path))?.inode.type === 'dir';
  }

  /** The bytes of a regular file (at most `max`; a longer file is cut with a warning). */
  async readBytes(path: string, max = 16 * 1024 * 1024): Promise<Uint8Array | undefined> {
    const r = await this.resolve(path);
    if (r?.inode.type !== 'file') return undefined;
    let size = r.inode.size;
    if (size > max) {
      this.warn(`${path}: ${size} bytes, only the first ${max} read`);
      size = max;
    }
    try {
      return await r.fs.read(r.inode, 0, size);
    } catch (e) {
      if (e instanceof StrataError) {
        this.warn(`${path}: ${e.message}`);
        return undefined;
      }
      throw e;
    }
  }

  async readText(path: string, max = 16 * 1024 * 1024): Promise<string | undefined> {
    const b = await this.readBytes(path, max);
    return b === undefined ? undefined : new TextDecoder('utf-8').decode(b);
  }

  /** Names in a directory (sorted), or undefined when it is not one. */
  async list(path: string, max = 100_000): Promise<string[] | undefined> {
    const r = await this.resolve(path);
    if (r?.inode.type !== 'dir') return undefined;
    const out: string[] = [];
    try {
      for await (const e of r.fs.readdir(r.inode)) {
        if (out.length >= max) {
          this.warn(`${path}: more than ${max} entries, rest ignored`);
          break;
        }
        out.push(e.name);
      }
    } catch (e) {
      if (e instanceof StrataError) this.warn(`${path}: ${e.message}`);
      else throw e;
    }
    return out.sort();
  }

  /** A symlink's target (undefined when `path` is not a symlink). */
  async readlink(path: string): Promise<string | undefined> {
    const r = await this.resolve(path, false);
    if (r?.inode.type !== 'symlink') return undefined;
    return r.fs.readlink(r.inode);
  }
}

function split(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}
