import { RepoLock } from '../store/lock.js';
import type { StoreFinding, VerifyReport } from '../store/store.js';
import { StrataError } from '../util/errors.js';
import { checkMemory, memoryBudget } from '../util/memory.js';
import type { Library } from './library.js';
import { decodeFilesHead, type FileEntry, type FilesManifest, isFilesHead, type LayoutManifest } from './manifest.js';

/**
 * The library verbs beyond check-in and checkout: describe, gc, verify, and reading
 * files straight from the store (ls, cat).
 */

/**
 * Every blob a layout manifest needs, given to `into` (a Set, or a check of each): itself (a
 * version 2's parts too), its file manifests (and their parts), its chunks. A layout in parts
 * is walked a part at a time, never joined.
 */
export async function reachable(lib: Library, manifest: string, into: { add(digest: string): unknown }): Promise<void> {
  into.add(manifest);
  const src = await lib.versionSource(manifest, `manifest ${manifest}`);
  try {
    for (const p of src.layout.parts ?? []) into.add(p);
    for await (const sl of src.slices()) {
      for (const c of sl.chunks) into.add(c);
      checkMemory("walking a version's blobs");
    }
    for (const v of src.layout.volumes) {
      if (!v.fs) continue;
      into.add(v.fs.files);
      if (!lib.store.has(v.fs.files)) continue; // verify reports it missing
      // a version 2 file manifest names its parts (a version 1 is not parsed: its first bytes tell)
      const parts = await lib.store.withBlob(v.fs.files, (plain) =>
        isFilesHead(plain) ? decodeFilesHead(plain, `file manifest ${v.fs?.files}`).parts : undefined,
      );
      for (const p of parts ?? []) into.add(p);
    }
  } finally {
    await src.close();
  }
}

export interface GcResult {
  liveVersions: number;
  liveBlobs: number;
  deletedPacks: number;
  rewrittenPacks: number;
  freedBytes: number;
  /** Frames of the rewritten packs copied as they are, and those whose live blobs were put again (PruneResult). */
  wholeFrames: number;
  repackedFrames: number;
  /** Leftover temporary files removed. */
  temporaryFiles: number;
  /** Blobs kept only because an upload to the library service sent them within the grace period. */
  uploadBlobs: number;
}

/** How long gc keeps uploaded chunks no version names yet (default 24 h). */
export const DEFAULT_UPLOAD_GRACE_MS = 24 * 3600_000;

/**
 * Mark and sweep under an exclusive lock (it waits for running check-ins, and check-ins
 * wait for it): mark every blob reachable from an active version, then prune the rest.
 */
export async function gc(lib: Library, opts: { lockWaitMs?: number; uploadGraceMs?: number } = {}): Promise<GcResult> {
  const lock = await RepoLock.acquire(lib.store.backend, 'exclusive', 'gc', opts.lockWaitMs ?? 10 * 60_000);
  try {
    await lib.store.loadIndex();
    // a bit per blob of the index just loaded (prune uses it as loaded: nothing writes under the lock)
    const keep = lib.store.marks();
    const roots = await lib.catalog.liveManifests();
    for (const m of roots) {
      await reachable(lib, m, keep);
      checkMemory('marking the blobs of the active versions');
    }
    // chunks uploaded to the library service for a version not committed yet (an upload
    // session in progress): kept for a grace period after they were last sent or asked about
    const grace = opts.uploadGraceMs ?? DEFAULT_UPLOAD_GRACE_MS;
    const { Access } = await import('../catalog/access.js');
    const access = await Access.open(lib.catalog.db);
    let uploads = 0;
    await access.eachRecentlyHeld(new Date(Date.now() - grace).toISOString(), (d) => {
      if (!keep.has(d) && keep.mark(d)) uploads++;
    });
    // the copies a prune makes go through the write side: buffers sized for the budget, as a check-in's
    lib.store.setWriteBudget(memoryBudget() / 2);
    const r = await lib.store.prune(keep);
    // temporary files of puts killed mid-way (none can be in progress under the exclusive lock but lock files')
    const temporaryFiles = (await lib.store.backend.sweepTemporary?.(10 * 60_000)) ?? 0;
    return { liveVersions: roots.length, liveBlobs: keep.size, uploadBlobs: uploads, ...r, temporaryFiles };
  } finally {
    await lock.release();
  }
}

/** A finding of `verify`: the store's (check.ts), or one about the versions the catalog holds. */
export type LibraryFinding =
  | StoreFinding
  /** A blob an active version needs that the store lacks. */
  | { kind: 'missing-blob'; blob: string }
  /** A version's manifest that cannot be read (missing, damaged or not a manifest). */
  | { kind: 'unreadable-manifest'; manifest: string; message: string }
  /** A blob a version needs that is indexed but does not read back (checked against its digest). */
  | { kind: 'unreadable-blob'; blob: string; message: string };

export interface LibraryVerifyReport extends Omit<VerifyReport, 'findings'> {
  findings: LibraryFinding[];
  versions: number;
  /** Blobs active versions need that the store lacks. */
  missing: string[];
}

/**
 * With no ref: re-hash every pack and check every active version's blobs are present.
 * With a ref: read every blob that version needs (each checked against its digest).
 */
export async function verifyLibrary(lib: Library, ref?: string): Promise<LibraryVerifyReport> {
  await lib.store.loadIndex();
  if (ref !== undefined) {
    const v = await lib.catalog.resolve(ref);
    // what the version needs: a bit per blob of the index, and the digests it lacks (a
    // DigestSet of a million-file version's blobs was ~40 MB)
    const need = lib.store.marks();
    const missing = new Set<string>();
    const report: LibraryVerifyReport = {
      packs: 0,
      blobs: 0,
      bytes: 0,
      findings: [],
      errors: [],
      orphanPacks: [],
      versions: 1,
      missing: [],
    };
    try {
      await reachable(lib, v.manifest, { add: (d) => need.mark(d) || missing.add(d) });
    } catch (e) {
      report.findings.push({ kind: 'unreadable-manifest', manifest: v.manifest, message: (e as Error).message });
      report.errors.push((e as Error).message);
      return report;
    }
    for (const d of missing) {
      report.findings.push({ kind: 'missing-blob', blob: d });
      report.missing.push(d);
    }
    // in the index's order (pack by pack)
    for (const d of lib.store.entriesMarked(need)) {
      try {
        const b = await lib.store.get(d);
        report.blobs++;
        report.bytes += b.length;
      } catch (e) {
        report.findings.push({ kind: 'unreadable-blob', blob: d, message: (e as Error).message });
        report.errors.push((e as Error).message);
      }
      checkMemory('reading the blobs of a version');
    }
    need.current(); // the walk above ends early if a gc meanwhile made the index reload
    return report;
  }
  const report: LibraryVerifyReport = { ...(await lib.store.verify()), versions: 0, missing: [] };
  for (const m of await lib.catalog.liveManifests()) {
    report.versions++;
    // checked as they come: only what is missing is kept
    const missing = new Set<string>();
    try {
      await reachable(lib, m, { add: (d) => lib.store.has(d) || missing.add(d) });
    } catch (e) {
      report.findings.push({ kind: 'unreadable-manifest', manifest: m, message: (e as Error).message });
      report.errors.push(`manifest ${m}: ${(e as Error).message}`);
      continue;
    }
    for (const d of missing) {
      report.findings.push({ kind: 'missing-blob', blob: d });
      report.missing.push(d);
    }
  }
  return report;
}

/** The file manifest of one volume of a version: `part` names it, else the only one (or the OS root). */
export async function versionFiles(lib: Library, ref: string, part?: string): Promise<FilesManifest> {
  const v = await lib.catalog.resolve(ref);
  return layoutFiles(lib, v, await lib.layoutHead(v.manifest), part);
}

/** versionFiles of a resolved version whose layout manifest's head `m` (its volumes) is already loaded. */
export async function layoutFiles(
  lib: Library,
  v: { image: string; number: number },
  m: Pick<LayoutManifest, 'volumes'>,
  part?: string,
): Promise<FilesManifest> {
  return lib.files(await layoutFilesDigest(lib, v, m, part));
}

/** The digest of the file manifest layoutFiles reads (a scan of each, streamed, when several could be meant). */
export async function layoutFilesDigest(
  lib: Library,
  v: { image: string; number: number },
  m: Pick<LayoutManifest, 'volumes'>,
  part?: string,
): Promise<string> {
  const withFs = m.volumes.filter((x) => x.fs);
  let vol = part !== undefined ? withFs.find((x) => x.id === part) : undefined;
  if (part !== undefined && !vol) {
    throw new StrataError('NOT_FOUND', `version ${v.image}@${v.number} has no file system on volume ${part}`);
  }
  if (!vol && withFs.length === 1) vol = withFs[0];
  if (!vol) {
    // several: the one holding /etc and /usr
    for (const c of withFs) {
      const digest = c.fs!.files;
      let etc = false;
      let usr = false;
      for await (const e of lib.fileEntries(digest)) {
        if (e.type !== 'dir') continue;
        if (e.path === '/etc') etc = true;
        else if (e.path === '/usr') usr = true;
      }
      if (etc && usr) return digest;
    }
    throw new StrataError(
      'USAGE',
      withFs.length === 0
        ? `version ${v.image}@${v.number} holds no file system Strata read`
        : `choose a volume with --part (${withFs.map((x) => x.id || '(whole disk)').join(', ')})`,
    );
  }
  return vol.fs!.files;
}

export const ROOT_ENTRY: FileEntry = {
  path: '/',
  type: 'dir',
  mode: 0o755,
  uid: 0,
  gid: 0,
  size: 0,
  nlink: 0,
  ino: 0,
  mtime: null,
};

/**
 * Resolve a path in a file manifest like the kernel would: '.' and '..' by the walk,
 * symlinks in directory components followed (and in the last one with `followLast`), at
 * most 40 links.
 */
export function findEntry(files: FilesManifest, p: string, followLast = false): FileEntry {
  let byPath = pathIndex.get(files);
  if (!byPath) {
    byPath = new Map(files.entries.map((e) => [e.path, e]));
    pathIndex.set(files, byPath);
  }
  const walk = resolvePath(p, followLast);
  let step = walk.next();
  while (!step.done) step = walk.next(byPath.get(step.value.path) ?? null);
  return step.value;
}

/**
 * The walk of findEntry, for any lookup: yields each path it needs (with every path the rest
 * of the walk may need, for a reader that looks several up at once) and takes its entry (null:
 * absent); returns the entry `p` names, symlinks on the way followed (a final one with `followLast`).
 */
export function* resolvePath(
  p: string,
  followLast = false,
): Generator<{ path: string; ahead: string[] }, FileEntry, FileEntry | null> {
  const todo = p
    .split('/')
    .filter((x) => x && x !== '.')
    .reverse();
  const stack: string[] = [];
  const trail: FileEntry[] = [];
  let links = 0;
  let cur = ROOT_ENTRY;
  while (todo.length > 0) {
    const name = todo.pop() as string;
    if (name === '..') {
      stack.pop();
      trail.pop();
      cur = trail.at(-1) ?? ROOT_ENTRY;
      continue;
    }
    if (cur.type !== 'dir') throw new StrataError('NOT_FOUND', `not a directory on the way to ${p}`);
    const rest = [...stack, name, ...[...todo].reverse()].filter((x) => x !== '..');
    const e = yield {
      path: `/${[...stack, name].join('/')}`,
      ahead: rest.map((_, i) => `/${rest.slice(0, i + 1).join('/')}`),
    };
    if (!e) throw new StrataError('NOT_FOUND', `no such file or directory: ${p}`, { structure: 'file manifest' });
    if (e.type === 'symlink' && e.target !== undefined && (todo.length > 0 || followLast)) {
      if (++links > 40)
        throw new StrataError('LOOP', `symbolic link loop: more than 40 links followed while resolving ${p}`);
      if (e.target.startsWith('/')) {
        stack.length = 0;
        trail.length = 0;
      }
      const parts = e.target.split('/').filter((x) => x && x !== '.');
      for (let i = parts.length - 1; i >= 0; i--) todo.push(parts[i]);
      cur = trail.at(-1) ?? ROOT_ENTRY;
      continue;
    }
    stack.push(name);
    trail.push(e);
    cur = e;
  }
  return cur;
}
const childIndex = new WeakMap<FilesManifest, Map<string, FileEntry[]>>();
const pathIndex = new WeakMap<FilesManifest, Map<string, FileEntry>>();

/** Entries directly below `dir` (or every one below it with `recursive`). */
export function listEntries(files: FilesManifest, dir: string, recursive = false): FileEntry[] {
  const d = findEntry(files, dir);
  if (d.type !== 'dir') return [d];
  if (!recursive) {
    // a folder's entries from an index by parent built once per manifest (the service lists
    // folders of cached manifests: a scan of every entry for each was most of an ls)
    let byParent = childIndex.get(files);
    if (!byParent) {
      byParent = new Map();
      for (const e of files.entries) {
        if (e.path === '/') continue;
        const parent = e.path.slice(0, Math.max(1, e.path.lastIndexOf('/')));
        let l = byParent.get(parent);
        if (!l) byParent.set(parent, (l = []));
        l.push(e);
      }
      childIndex.set(files, byParent);
    }
    return [...(byParent.get(d.path) ?? [])];
  }
  const prefix = d.path === '/' ? '/' : `${d.path}/`;
  return files.entries.filter(
    (e) => e.path.startsWith(prefix) && e.path !== d.path && (recursive || !e.path.slice(prefix.length).includes('/')),
  );
}

/** A regular file's bytes from the store, chunk by chunk. */
export async function* fileContent(lib: Library, files: FilesManifest, e: FileEntry): AsyncGenerator<Uint8Array> {
  if (e.type !== 'file') throw new StrataError('USAGE', `not a regular file: ${e.path}`);
  const C = files.fileChunkSize;
  const chunks = e.chunks ?? [];
  for (let i = 0, off = 0; off < e.size; i++, off += C) {
    const n = Math.min(C, e.size - off);
    const d = chunks[i];
    if (d === undefined) throw new StrataError('CORRUPT', `file manifest lacks chunk ${i} of ${e.path}`);
    if (d === null) yield new Uint8Array(n);
    else {
      const b = await lib.fileChunk(e, i);
      if (b.length !== n) throw new StrataError('CORRUPT', `chunk ${i} of ${e.path} has ${b.length} bytes, not ${n}`);
      yield b;
    }
  }
}

/** Describe a version: catalog row, provenance chain, layout and file systems. */
export async function describeVersion(lib: Library, ref: string): Promise<Record<string, unknown>> {
  const v = await lib.catalog.resolve(ref);
  const chain: string[] = [];
  let cur = v.parents[0];
  const seen = new Set<string>();
  while (cur && chain.length < 1000) {
    const key = `${cur.image}@${cur.number}`;
    if (seen.has(key)) break;
    seen.add(key);
    chain.push(key);
    cur = (await lib.catalog.version(cur.image, cur.number))?.parents[0] as typeof cur;
  }
  return {
    ref: `${v.image}@${v.number}`,
    ...v,
    provenance: chain,
    layout: await layoutSummary(lib, v.manifest),
  };
}

/** What describe says of a version's layout: its scalars, volumes and counts (a layout in parts walked a part at a time). */
export async function layoutSummary(lib: Library, manifest: string) {
  const src = await lib.versionSource(manifest, `manifest ${manifest}`);
  try {
    const m = src.layout;
    const dataBytes = await src.dataBytes();
    return {
      virtualSize: m.virtualSize,
      sourceFormat: m.sourceFormat,
      scheme: m.scheme,
      exact: m.exact,
      fileChunkSize: m.fileChunkSize,
      diskChunkSize: m.diskChunkSize,
      chunks: src.chunkCount,
      ranges: src.rangeCount,
      dataBytes,
      volumes: m.volumes,
      warnings: m.warnings,
    };
  } finally {
    await src.close();
  }
}
