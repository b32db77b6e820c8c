import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { loadProfile } from '../catalog/profiles.js';
import type { BackendEntry } from '../store/backend.js';
import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';

/**
 * The catalog as a static file, so a library folder served by a plain web server can be
 * deployed from without SQLite over HTTP: `strata export-index` writes it at the library's
 * root (and `checkin`, `tag`, `rm` and `gc` rewrite it once it exists). It names every active
 * version (its manifest digest, sizes, tags) and the store's index files, which a web server
 * cannot list. REFs resolve against it by the catalog's rules (resolveStatic).
 *
 * A version's boot profile (catalog/profiles.ts), when it has one, is written beside it as
 * profiles/SHA256.json (named by the sha256 of its bytes, so a file never changes under its
 * name and a reader checks what the web server gave) and listed with the version.
 */
export const STATIC_INDEX = 'strata-index.json';
export const STATIC_PROFILES = 'profiles';

export interface StaticVersion {
  number: number;
  manifest: string;
  virtualSize: number;
  usedBytes: number;
  created: string;
  tags: string[];
  /** The version's own boot profile: sha256 of profiles/SHA256.json, entries and bytes. */
  profile?: { digest: string; entries: number; bytes: number };
}

export interface StaticIndex {
  kind: 'strata-library-index';
  version: 1;
  written: string;
  /** Keys of the store's index files (relative to store/), with their sizes. */
  store: { index: BackendEntry[] };
  images: Array<{ name: string; versions: StaticVersion[] }>;
}

/** Write (atomically) the static index of `lib`; returns its path and what it lists. */
export async function exportIndex(
  lib: Library,
  opts: { onlyIfChanged?: boolean } = {},
): Promise<{ file: string; images: number; versions: number; written: boolean }> {
  await lib.store.loadIndex();
  const index = (await lib.store.backend.list('index/')).sort((a, b) => (a.key < b.key ? -1 : 1));
  const images: StaticIndex['images'] = [];
  let versions = 0;
  for (const img of await lib.catalog.images()) {
    const vs = await lib.catalog.versions(img.name);
    versions += vs.length;
    const out: StaticVersion[] = [];
    for (const v of vs) {
      const sv: StaticVersion = {
        number: v.number,
        manifest: v.manifest,
        virtualSize: v.virtualSize,
        usedBytes: v.usedBytes,
        created: v.created,
        tags: v.tags,
      };
      const p = await loadProfile(lib.catalog.db, v.image, v.number, lib.dir);
      if (p) {
        const bytes = Buffer.from(`${JSON.stringify(p)}\n`);
        const digest = createHash('sha256').update(bytes).digest('hex');
        const dir = path.join(lib.dir, STATIC_PROFILES);
        const file = path.join(dir, `${digest}.json`);
        if (!existsSync(file)) {
          mkdirSync(dir, { recursive: true });
          writeAtomic(dir, file, bytes);
        }
        sv.profile = { digest, entries: p.entries.length, bytes: p.entries.reduce((n, e) => n + e.length, 0) };
      }
      out.push(sv);
    }
    images.push({ name: img.name, versions: out });
  }
  const doc: StaticIndex = {
    kind: 'strata-library-index',
    version: 1,
    written: new Date().toISOString(),
    store: { index },
    images,
  };
  const file = path.join(lib.dir, STATIC_INDEX);
  if (opts.onlyIfChanged && existsSync(file)) {
    // the same catalog and store index: leave the file (and its time) alone
    try {
      const old = JSON.parse(readFileSync(file, 'utf8')) as StaticIndex;
      if (JSON.stringify({ ...old, written: '' }) === JSON.stringify({ ...doc, written: '' })) {
        return { file, images: images.length, versions, written: false };
      }
    } catch {}
  }
  writeAtomic(lib.dir, file, Buffer.from(`${JSON.stringify(doc)}\n`));
  return { file, images: images.length, versions, written: true };
}

/** Write `file` (in `dir`) whole or not at all: a temporary file, fsync, rename. */
function writeAtomic(dir: string, file: string, bytes: Uint8Array): void {
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const fd = openSync(tmp, 'wx', 0o644);
    try {
      writeSync(fd, bytes);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    if (existsSync(tmp)) unlinkSync(tmp);
    throw new StrataError('IO', `cannot write the static index: ${(e as Error).message}`, { file }, { cause: e });
  }
}

/**
 * Rewrite the static index when the library has one and it no longer says what the catalog
 * and the store hold (the CLI calls this after every library verb). True when written.
 */
export async function refreshIndex(lib: Library): Promise<boolean> {
  if (!existsSync(path.join(lib.dir, STATIC_INDEX))) return false;
  return (await exportIndex(lib, { onlyIfChanged: true })).written;
}

const DIGEST = /^[0-9a-f]{64}$/;

/** Parse and check a static index (from a web server: nothing in it is trusted). */
export function parseStaticIndex(bytes: Uint8Array, file: string): StaticIndex {
  let doc: StaticIndex;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8')) as StaticIndex;
  } catch (e) {
    throw new StrataError('CORRUPT', `not JSON: ${(e as Error).message}`, { file, structure: 'static index' });
  }
  const bad = (why: string) => new StrataError('CORRUPT', why, { file, structure: 'static index' });
  if (doc?.kind !== 'strata-library-index' || doc.version !== 1)
    throw bad('not a Strata library index (kind, version)');
  if (!Array.isArray(doc.store?.index) || !Array.isArray(doc.images)) throw bad('no store index list or images');
  for (const e of doc.store.index) {
    if (typeof e?.key !== 'string' || !/^index\/[0-9a-f]{64}$/.test(e.key)) throw bad(`bad index key ${e?.key}`);
  }
  for (const img of doc.images) {
    if (typeof img?.name !== 'string' || !Array.isArray(img.versions)) throw bad('bad image entry');
    for (const v of img.versions) {
      if (!Number.isSafeInteger(v?.number) || typeof v.manifest !== 'string' || !DIGEST.test(v.manifest)) {
        throw bad(`bad version entry of ${img.name}`);
      }
      if (!Array.isArray(v.tags)) v.tags = [];
      if (v.profile !== undefined && (typeof v.profile?.digest !== 'string' || !DIGEST.test(v.profile.digest))) {
        throw bad(`bad profile entry of ${img.name}@${v.number}`);
      }
    }
  }
  return doc;
}

/** A REF (NAME, NAME@N, NAME:TAG, a manifest digest prefix) against a static index, by the catalog's rules. */
export function resolveStatic(ix: StaticIndex, ref: string): StaticVersion & { image: string } {
  const fail = (why: string) => new StrataError('NOT_FOUND', `${why}: ${ref}`, { structure: 'static index' });
  const image = (name: string) => ix.images.find((i) => i.name === name);
  const at = ref.lastIndexOf('@');
  if (at > 0) {
    const n = Number(ref.slice(at + 1));
    if (!Number.isSafeInteger(n) || n < 1) throw new StrataError('USAGE', `bad version number in ${ref}`);
    const name = ref.slice(0, at);
    const v = image(name)?.versions.find((x) => x.number === n);
    if (!v) throw fail('no such version');
    return { ...v, image: name };
  }
  const colon = ref.lastIndexOf(':');
  if (colon > 0) {
    const name = ref.slice(0, colon);
    const tag = ref.slice(colon + 1);
    const v = image(name)?.versions.find((x) => x.tags.includes(tag));
    if (!v) throw fail('no such tag');
    return { ...v, image: name };
  }
  const img = image(ref);
  if (img && img.versions.length > 0) {
    const v = img.versions.reduce((a, b) => (b.number > a.number ? b : a));
    return { ...v, image: ref };
  }
  if (/^[0-9a-f]{6,64}$/.test(ref)) {
    const hits = ix.images.flatMap((i) =>
      i.versions.filter((v) => v.manifest.startsWith(ref)).map((v) => ({ ...v, image: i.name })),
    );
    const distinct = new Set(hits.map((h) => h.manifest));
    if (distinct.size > 1)
      throw new StrataError('USAGE', `digest prefix ${ref} is ambiguous (${distinct.size} manifests)`);
    if (hits.length > 0) return hits[0];
  }
  throw fail('no such image, version or manifest');
}

/**
 * The profile a deploy of version `v` of `image` uses by the static index: the version's own,
 * else the nearest earlier version's of the same image (a static index lists no parents).
 */
export function staticProfileOf(
  ix: StaticIndex,
  image: string,
  number: number,
): { image: string; number: number; digest: string } | undefined {
  const vs = ix.images.find((i) => i.name === image)?.versions ?? [];
  let best: StaticVersion | undefined;
  for (const x of vs) {
    if (x.profile && x.number <= number && (!best || x.number > best.number)) best = x;
  }
  return best?.profile ? { image, number: best.number, digest: best.profile.digest } : undefined;
}
