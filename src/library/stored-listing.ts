import type { FileType } from '../fs/types.js';
import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';
import { findEntry, layoutFiles } from './library-verbs.js';
import { compareNames, imagePath, type LsRecord } from './listing.js';
import type { FileEntry, FilesManifest } from './manifest.js';
import { openTargetLibrary, type RefTarget, resolveTargetVersion } from './target.js';

/**
 * `ls` and `cat` of a library version, straight from its file manifest (no block of the
 * disk is read): the same records, in the same order, as the image walk gives
 * (listing.ts), so both print one format.
 */

/** A manifest entry as the LsRecord `ls --json` prints for an image. */
export function entryRecord(e: FileEntry): LsRecord {
  const r: LsRecord = {
    path: e.path,
    type: e.type as FileType,
    size: e.size,
    mode: e.mode & 0o7777,
    uid: e.uid,
    gid: e.gid,
    nlink: e.nlink,
    ino: e.ino,
    mtime: e.mtime,
  };
  if (e.type === 'symlink' && e.target !== undefined) r.target = e.target;
  if ((e.type === 'char' || e.type === 'block') && e.rdev) r.rdev = e.rdev;
  return r;
}

/** Pre-order, names in byte order at each level: the order of walkBatches. */
function comparePaths(a: string, b: string): number {
  const x = a.split('/');
  const y = b.split('/');
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const c = compareNames(x[i], y[i]);
    if (c !== 0) return c;
  }
  return x.length - y.length;
}

export interface StoredListOptions {
  recursive?: boolean;
  /** The entry itself, not a directory's contents. */
  directory?: boolean;
}

/**
 * What `ls` lists at `p` of a version: a directory's children (every entry below it with
 * `recursive`), or the entry itself. `single` tells whether the entry itself was listed.
 */
export function listStored(
  files: FilesManifest,
  p: string,
  opts: StoredListOptions = {},
): { records: LsRecord[]; single: boolean } {
  const top = findEntry(files, imagePath(p));
  if (top.type !== 'dir' || opts.directory) {
    return { records: [{ ...entryRecord(top), path: imagePath(p) }], single: true };
  }
  const prefix = top.path === '/' ? '/' : `${top.path}/`;
  const below = files.entries.filter(
    (e) =>
      e.path.startsWith(prefix) &&
      e.path !== top.path &&
      (opts.recursive || !e.path.slice(prefix.length).includes('/')),
  );
  below.sort((a, b) => comparePaths(a.path, b.path));
  return { records: below.map(entryRecord), single: false };
}

/** The regular file `p` names in a version (a final symlink followed unless `noFollow`). */
export function storedFile(files: FilesManifest, p: string, follow = true): FileEntry {
  const e = findEntry(files, imagePath(p), follow);
  if (e.type !== 'file') {
    throw new StrataError('USAGE', `${imagePath(p)} is a ${e.type}, not a regular file`);
  }
  return e;
}

export interface StoredFiles {
  lib: Library;
  files: FilesManifest;
  /** NAME@N */
  name: string;
  close(): Promise<void>;
}

/** The file manifest of one volume (`part`, else the only one or the OS root) of a version target. */
export async function openStoredFiles(target: RefTarget, part?: string): Promise<StoredFiles> {
  const lib = await openTargetLibrary(target);
  try {
    const v = await resolveTargetVersion(lib, target);
    const files = await layoutFiles(lib, v, await lib.layoutHead(v.manifest), part);
    return { lib, files, name: `${v.image}@${v.number}`, close: () => lib.close() };
  } catch (e) {
    await lib.close();
    throw e;
  }
}
