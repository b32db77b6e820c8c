import { createHash } from 'node:crypto';
import type { FileSystem, FileType, Inode, Timestamp } from '../fs/types.js';
import { walk } from '../fs/walk.js';
import { StrataError } from '../util/errors.js';

/**
 * One file of a tree as a diff sees it: the fields of a library file manifest (path, type,
 * mode, owner, size, mtime, xattrs, link target, content digest). Read from a file system
 * here; a stored manifest can supply the same records without touching an image.
 */
export interface FileRecord {
  path: string;
  type: FileType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime?: Timestamp;
  target?: string;
  /** xattr name -> sha256 of its value (hex). */
  xattrs?: Record<string, string>;
  /** sha256 of the content (regular files), when known. */
  digest?: string;
}

/** Where a diff gets records and, lazily, content digests. */
export interface FileTree {
  /** Every path below the root (not the root itself), any order. */
  records(): AsyncIterable<FileRecord>;
  /** The content digest of a regular file record (computed on demand when not stored). */
  digest(r: FileRecord): Promise<string>;
  readonly warnings: string[];
  /**
   * records() comes in walk order (parent before children, the names of each directory
   * sorted as strings: see comparePaths), so two such trees diff as a merge, holding
   * neither (issue 22).
   */
  readonly walkOrder?: boolean;
}

/**
 * The order of a walk (fs/walk.ts) as a comparison of two paths: component by component,
 * each as JS strings compare, a directory before what it holds.
 */
export function comparePaths(p: string, q: string): number {
  const n = Math.min(p.length, q.length);
  for (let i = 0; i < n; i++) {
    const c = p.charCodeAt(i);
    const d = q.charCodeAt(i);
    if (c === d) continue;
    if (c === 47) return -1; // p's component ends first: a prefix of q's
    if (d === 47) return 1;
    return c < d ? -1 : 1;
  }
  return p.length - q.length;
}

const CHUNK = 1024 * 1024;

const sha256hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A FileTree over a mounted file system: walks it, reads xattrs and link targets, hashes content on demand. */
export function fileSystemTree(fs: FileSystem): FileTree {
  // a file's inode while its record lives (a diff holds few: not one per file of the tree)
  const inodes = new WeakMap<FileRecord, Inode>();
  const warnings: string[] = [];
  return {
    warnings,
    walkOrder: true,
    async *records() {
      const root = await fs.root();
      for await (const item of walk(fs, root, '/', {
        onError: (e, p) => {
          if (warnings.length < 1000) warnings.push(`${p}: ${e.message}`);
        },
      })) {
        const ino = item.inode;
        const r: FileRecord = {
          path: item.path,
          type: ino.type,
          mode: ino.mode,
          uid: ino.uid,
          gid: ino.gid,
          size: ino.type === 'dir' ? 0 : ino.size,
        };
        if (ino.mtime) r.mtime = ino.mtime;
        try {
          if (ino.type === 'symlink') r.target = await fs.readlink(ino);
          const x = await fs.xattrs(ino);
          if (x.size > 0) {
            r.xattrs = {};
            for (const [k, v] of [...x].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) r.xattrs[k] = sha256hex(v);
          }
        } catch (e) {
          if (!(e instanceof StrataError)) throw e;
          if (warnings.length < 1000) warnings.push(`${item.path}: ${e.message}`);
        }
        if (ino.type === 'file') inodes.set(r, ino);
        yield r;
      }
    },
    async digest(r: FileRecord): Promise<string> {
      if (r.digest) return r.digest;
      const ino = inodes.get(r) ?? (await fs.lookup(r.path));
      const h = createHash('sha256');
      for (let off = 0; off < ino.size; off += CHUNK) {
        h.update(await fs.read(ino, off, Math.min(CHUNK, ino.size - off)));
      }
      r.digest = h.digest('hex');
      return r.digest;
    },
  };
}
