import { StrataError } from '../util/errors.js';
import { mapLimit } from '../util/map-limit.js';
import { buildNameListing, codeOfType } from './name-listing.js';
import type { DirEntry, FileSystem, Inode, NameListing } from './types.js';

/** Most symlinks followed while resolving one path (Linux uses 40). */
export const MAX_SYMLINKS = 40;
/** Most path components processed for one path (after symlink expansion). */
const MAX_COMPONENTS = 64 * 1024;

export interface ResolveOptions {
  /** Follow a symlink in the last component too (stat vs lstat). */
  followLast?: boolean;
}

/** One name in a directory: the reader's fast path when it has one, else a readdir scan. */
export async function lookupName(fs: FileSystem, dir: Inode, name: string): Promise<DirEntry | undefined> {
  if (fs.lookupChild) return fs.lookupChild(dir, name);
  for await (const e of fs.readdir(dir)) if (e.name === name) return e;
  return undefined;
}

/** Every entry of a directory: the reader's one-promise fast path when it has one. */
export async function listDirectory(fs: FileSystem, dir: Inode): Promise<DirEntry[]> {
  if (fs.readdirAll) return fs.readdirAll(dir);
  const out: DirEntry[] = [];
  for await (const e of fs.readdir(dir)) out.push(e);
  return out;
}

/** Every entry of a directory as a NameListing: the reader's `readdirNames` when it has one, else listDirectory's entries encoded. */
export async function listNames(fs: FileSystem, dir: Inode): Promise<NameListing> {
  if (fs.readdirNames) return fs.readdirNames(dir);
  const entries = await listDirectory(fs, dir);
  return buildNameListing((b) => {
    for (const e of entries) b.addName(e.ino, codeOfType(e.type), e.name);
  });
}

/** Many inodes: the reader's batch fast path when it has one, else `limit` loads at a time, in order. */
export async function loadInodes(fs: FileSystem, inos: readonly number[], limit = 32): Promise<Inode[]> {
  if (fs.inodes) return fs.inodes(inos);
  return mapLimit(inos, limit, (ino) => fs.inode(ino));
}

/**
 * Resolve an absolute path ("/a/b/c"; a relative one is taken from the root). '.' and '..'
 * are handled by the path walk, not trusted from disk; '..' at the root stays at the root.
 * Symlinks in directory components are followed (relative to their directory, absolute
 * ones from the root), the last component only with `followLast`; more than
 * MAX_SYMLINKS links fail with LOOP.
 */
export async function resolvePath(fs: FileSystem, path: string, opts: ResolveOptions = {}): Promise<Inode> {
  const root = await fs.root();
  const stack: Inode[] = [root];
  const todo = splitPath(path).reverse(); // pop() takes the next component
  let links = 0;
  let steps = 0;
  while (todo.length > 0) {
    if (++steps > MAX_COMPONENTS) {
      throw new StrataError('LIMIT', `path expands to more than ${MAX_COMPONENTS} components`, {
        file: fs.volume.name,
        structure: `path ${path}`,
      });
    }
    const name = todo.pop()!;
    if (name === '..') {
      if (stack.length > 1) stack.pop();
      continue;
    }
    const dir = stack[stack.length - 1];
    if (dir.type !== 'dir') {
      throw new StrataError('NOT_FOUND', `not a directory on the way to ${path}`, {
        file: fs.volume.name,
        structure: `path ${path}`,
      });
    }
    const e = await lookupName(fs, dir, name);
    if (!e) {
      throw new StrataError('NOT_FOUND', `no such file or directory: ${path}`, {
        file: fs.volume.name,
        structure: `path ${path}`,
      });
    }
    const node = await fs.inode(e.ino);
    const last = todo.length === 0;
    if (node.type === 'symlink' && (!last || opts.followLast)) {
      if (++links > MAX_SYMLINKS) {
        throw new StrataError(
          'LOOP',
          `symbolic link loop: more than ${MAX_SYMLINKS} links followed while resolving ${path}`,
          {
            file: fs.volume.name,
            structure: `path ${path}`,
          },
        );
      }
      const target = await fs.readlink(node);
      if (target.length === 0) {
        throw new StrataError('NOT_FOUND', `empty symlink target while resolving ${path}`, {
          file: fs.volume.name,
          structure: `path ${path}`,
        });
      }
      if (target.startsWith('/')) stack.length = 1;
      const parts = splitPath(target);
      for (let i = parts.length - 1; i >= 0; i--) todo.push(parts[i]);
      continue;
    }
    stack.push(node);
  }
  return stack[stack.length - 1];
}

function splitPath(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

export interface WalkItem {
  /** Path from the walk's start, joined with '/' (e.g. "/etc/passwd" when started at "/" with path "/"). */
  path: string;
  inode: Inode;
  entry: DirEntry;
}

export interface WalkOptions {
  /** Do not descend deeper than this many directory levels below the start (default unlimited). */
  maxDepth?: number;
  /**
   * Called for a child that cannot be read (bad inode, unreadable directory); the walk goes
   * on. Without it, the first such error is thrown.
   */
  onError?: (error: StrataError, path: string) => void;
}

function joinPath(base: string, name: string): string {
  return base.endsWith('/') ? base + name : `${base}/${name}`;
}

/**
 * Depth-first, pre-order walk below `dir` (not including `dir` itself), names sorted in
 * each directory so the order is stable. A directory inode is descended into at most once:
 * a second path to it (a cycle or a hard-linked directory) is yielded but not entered, and
 * noted in `fs.warnings`.
 */
export async function* walk(fs: FileSystem, dir: Inode, path = '/', opts: WalkOptions = {}): AsyncGenerator<WalkItem> {
  const visited = new Set<number>([dir.ino]);
  const maxDepth = opts.maxDepth ?? Number.POSITIVE_INFINITY;
  interface Frame {
    path: string;
    entries: DirEntry[];
    /** The entries' inodes loaded in one batch, when none of them failed. */
    inodes?: Inode[];
    i: number;
    depth: number;
  }
  const list = async (d: Inode, p: string): Promise<Omit<Frame, 'path' | 'i' | 'depth'> | undefined> => {
    try {
      const entries = await listDirectory(fs, d);
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      // a bad inode fails the batch: then each is loaded alone, so only that one is reported
      const inodes = await loadInodes(
        fs,
        entries.map((e) => e.ino),
      ).catch(() => undefined);
      return { entries, inodes };
    } catch (e) {
      if (opts.onError && e instanceof StrataError) {
        opts.onError(e, p);
        return undefined;
      }
      throw e;
    }
  };
  const first = await list(dir, path);
  if (!first) return;
  const stack: Frame[] = [{ path, ...first, i: 0, depth: 1 }];
  while (stack.length > 0) {
    const f = stack[stack.length - 1];
    if (f.i >= f.entries.length) {
      stack.pop();
      continue;
    }
    const at = f.i++;
    const entry = f.entries[at];
    const p = joinPath(f.path, entry.name);
    let inode: Inode;
    try {
      inode = f.inodes ? f.inodes[at] : await fs.inode(entry.ino);
    } catch (e) {
      if (opts.onError && e instanceof StrataError) {
        opts.onError(e, p);
        continue;
      }
      throw e;
    }
    yield { path: p, inode, entry };
    if (inode.type !== 'dir' || f.depth >= maxDepth) continue;
    if (visited.has(inode.ino)) {
      if (fs.warnings.length < 1000)
        fs.warnings.push(
          `${p}: directory inode ${inode.ino} was already visited (cycle or hard-linked directory); not entered`,
        );
      continue;
    }
    visited.add(inode.ino);
    const listed = await list(inode, p);
    if (listed) stack.push({ path: p, ...listed, i: 0, depth: f.depth + 1 });
  }
}
