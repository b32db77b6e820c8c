import type { FileType } from '../fs/types.js';
import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';
import { findEntry, layoutFilesDigest, resolvePath } from './library-verbs.js';
import { compareNames, imagePath, type LsRecord } from './listing.js';
import { compareTreePaths, type FileEntry, type FilesHead, type FilesManifest } from './manifest.js';
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
  /** The file manifest's digest and head (its entries are streamed, never all held). */
  digest: string;
  head: FilesHead;
  /** The head's facts with no entries: what fileContent needs (fileChunkSize). */
  files: FilesManifest;
  /** NAME@N */
  name: string;
  close(): Promise<void>;
}

/** The file manifest of one volume (`part`, else the only one or the OS root) of a version target. */
export async function openStoredFiles(target: RefTarget, part?: string): Promise<StoredFiles> {
  const lib = await openTargetLibrary(target);
  try {
    const sf = await versionStoredFiles(lib, await resolveTargetVersion(lib, target), part);
    return { ...sf, close: () => lib.close() };
  } catch (e) {
    await lib.close();
    throw e;
  }
}

/**
 * openStoredFiles of a version of an open library (the service's): its close leaves the
 * library open.
 */
export async function versionStoredFiles(
  lib: Library,
  v: { image: string; number: number; manifest: string },
  part?: string,
): Promise<StoredFiles> {
  const digest = await layoutFilesDigest(lib, v, await lib.layoutHead(v.manifest), part);
  const head = await lib.filesHead(digest);
  const { kind, volume, fsKind, fileChunkSize } = head;
  const files: FilesManifest = { kind, version: 1, volume, fsKind, fileChunkSize, entries: [] };
  return { lib, digest, head, files, name: `${v.image}@${v.number}`, close: async () => {} };
}

/**
 * The entries at `paths` (absent: null), from one scan of the manifest that stops past the
 * last of them (entries are in walk order, compareTreePaths).
 */
async function lookupStored(sf: StoredFiles, paths: string[], into: Map<string, FileEntry | null>): Promise<void> {
  const want = new Set(paths.filter((x) => !into.has(x)));
  if (want.size === 0) return;
  const last = [...want].reduce((a, b) => (compareTreePaths(a, b) >= 0 ? a : b));
  const first = [...want].reduce((a, b) => (compareTreePaths(a, b) <= 0 ? a : b));
  for (const x of want) into.set(x, null);
  for await (const e of sf.lib.fileEntries(sf.digest, sf.head, first)) {
    if (want.has(e.path)) into.set(e.path, e);
    if (compareTreePaths(e.path, last) >= 0) break;
  }
}

/**
 * findEntry over a streamed manifest: the entry `p` names (symlinks on the way followed, a
 * final one too with `followLast`), each missing path looked up with every prefix of what is
 * left to walk in one scan.
 */
export async function findStoredEntry(sf: StoredFiles, p: string, followLast = false): Promise<FileEntry> {
  const known = new Map<string, FileEntry | null>();
  const walk = resolvePath(p, followLast);
  let step = walk.next();
  while (!step.done) {
    const { path, ahead } = step.value;
    if (!known.has(path)) await lookupStored(sf, [path, ...ahead], known);
    step = walk.next(known.get(path) ?? null);
  }
  return step.value;
}

/** storedFile over a streamed manifest. */
export async function storedFileStreamed(sf: StoredFiles, p: string, follow = true): Promise<FileEntry> {
  const e = await findStoredEntry(sf, imagePath(p), follow);
  if (e.type !== 'file') {
    throw new StrataError('USAGE', `${imagePath(p)} is a ${e.type}, not a regular file`);
  }
  return e;
}

/** A name the walk's code-unit order and ls's byte order may place differently. */
const beyondBmpOrder = (s: string): boolean => {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0xd800) return true;
  return false;
};

/**
 * listStored over a streamed manifest, in the same order: the manifest's walk order (code
 * units) is ls's byte order until the first path holding a code unit >= 0xD800 (an entry
 * before it sorts before everything after it in both orders), so entries are yielded as read
 * until then and only the rest is gathered and sorted.
 */
export async function listStoredStreamed(
  sf: StoredFiles,
  p: string,
  opts: StoredListOptions = {},
): Promise<{ single: boolean; records: AsyncGenerator<LsRecord> }> {
  const top = await findStoredEntry(sf, imagePath(p));
  if (top.type !== 'dir' || opts.directory) {
    const one = { ...entryRecord(top), path: imagePath(p) };
    return {
      single: true,
      records: (async function* () {
        yield one;
      })(),
    };
  }
  const prefix = top.path === '/' ? '/' : `${top.path}/`;
  async function* records(): AsyncGenerator<LsRecord> {
    let rest: FileEntry[] | undefined;
    for await (const e of sf.lib.fileEntries(sf.digest, sf.head, top.path)) {
      if (!e.path.startsWith(prefix) || e.path === top.path) continue;
      if (!opts.recursive && e.path.slice(prefix.length).includes('/')) continue;
      if (!rest && beyondBmpOrder(e.path)) rest = [];
      if (rest) rest.push(e);
      else yield entryRecord(e);
    }
    if (rest) {
      rest.sort((a, b) => comparePaths(a.path, b.path));
      for (const e of rest) yield entryRecord(e);
    }
  }
  return { single: false, records: records() };
}

/**
 * The entries below the directory `top` of a streamed manifest (only its children unless
 * `recursive`), in the manifest's order (listEntries' order): the scan ends at the first
 * entry past the directory's subtree (walk order keeps a subtree together).
 */
export async function* storedBelow(sf: StoredFiles, top: FileEntry, recursive: boolean): AsyncGenerator<FileEntry> {
  const prefix = top.path === '/' ? '/' : `${top.path}/`;
  for await (const e of sf.lib.fileEntries(sf.digest, sf.head, top.path)) {
    if (!e.path.startsWith(prefix) || e.path === top.path) {
      if (top.path !== '/' && compareTreePaths(e.path, top.path) > 0) return;
      continue;
    }
    if (recursive || !e.path.slice(prefix.length).includes('/')) yield e;
  }
}

/**
 * listEntries over a streamed manifest, one page of it: entries [offset, offset + limit) of
 * what listEntries gives for `dir`, and how many it gives; only the page is held.
 */
export async function listStoredPage(
  sf: StoredFiles,
  dir: string,
  recursive: boolean,
  offset: number,
  limit: number,
): Promise<{ items: FileEntry[]; total: number }> {
  const d = await findStoredEntry(sf, dir);
  if (d.type !== 'dir') return { items: [d].slice(offset, offset + limit), total: 1 };
  const items: FileEntry[] = [];
  let total = 0;
  for await (const e of storedBelow(sf, d, recursive)) {
    if (total >= offset && total < offset + limit) items.push(e);
    total++;
  }
  return { items, total };
}
