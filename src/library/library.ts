import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { Catalog } from '../catalog/catalog.js';
import { type Db, SqliteDb } from '../catalog/db.js';
import { isPostgresUrl, PgDb, redactUrl } from '../catalog/pg.js';
import type { Backend } from '../store/backend.js';
import { CachedBackend, DEFAULT_CACHE_BYTES } from '../store/cache-backend.js';
import { LocalBackend } from '../store/local-backend.js';
import { isS3Url, S3Backend } from '../store/s3-backend.js';
import { Store } from '../store/store.js';
import { StrataError } from '../util/errors.js';
import { BlobCache, type BlobCacheOptions } from './blob-cache.js';
import { libraryLocation, MARKER } from './location.js';
import {
  compareTreePaths,
  decodeFilesHead,
  decodeFilesPart,
  decodeLayoutHead,
  decodeLayoutPart,
  decodeLayoutV2Head,
  decodeManifest,
  FILES_KIND,
  type FileEntry,
  type FilesHead,
  type FilesManifest,
  isLayoutHead,
  LAYOUT_KIND,
  type LayoutHead,
  type LayoutManifest,
  type LayoutManifestHead,
  type LayoutPart,
  readLayout,
} from './manifest.js';
import { PartedVersionSource, type RangedSource, VersionSource } from './version-source.js';

/**
 * A library: a directory holding the store (`store/`) and the catalog (`catalog.db`).
 * Its location is `--library`, else STRATA_LIBRARY, else $XDG_DATA_HOME/strata/library
 * (~/.local/share/strata/library; location.ts). Opening creates it when missing (`init` is implied).
 */
export { libraryLocation, MARKER };

/**
 * Where a library keeps its catalog and its chunks. The embedded default is `catalog.db`
 * (SQLite) and `store/` in the library directory; `catalog` may name a PostgreSQL database
 * (`postgres://user@host/db`, optionally `?schema=NAME`) and `store` an S3 bucket
 * (`s3://bucket/prefix`), and several servers then share them. Each is taken from the
 * option, else STRATA_CATALOG / STRATA_STORE, else what the library directory's marker
 * recorded when it was made. `{library}` in either is replaced by a short id of the library
 * directory, so one database and one bucket can hold many libraries (the tests do that).
 * `cacheDir` (STRATA_CACHE_DIR; default: `cache/` in the library directory) holds a bounded
 * read-through copy of remote packs, `cacheBytes` (STRATA_CACHE_BYTES) large. 'local' for
 * either names the directory's own (whatever the environment or the marker say).
 */
export interface LibraryPlaces {
  catalog?: string;
  store?: string;
  cacheDir?: string;
  cacheBytes?: number;
}

interface Marker {
  kind: 'strata-library';
  version: number;
  catalog?: string;
  store?: string;
}

/** The URL with the password left out (it comes from the environment: PGPASSWORD, .pgpass). */
function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    u.password = '';
    return u.toString();
  } catch {
    return url;
  }
}

function libraryId(root: string): string {
  let real = root;
  try {
    real = realpathSync(root);
  } catch {}
  return createHash('sha256').update(real).digest('hex').slice(0, 16);
}

/** Open the catalog database a library names (SQLite file or PostgreSQL URL). */
export async function openCatalogDb(where: string): Promise<Db> {
  if (isPostgresUrl(where)) return PgDb.open(where);
  return SqliteDb.open(where);
}

/**
 * Open the store backend a library names (directory or s3:// URL), with the cache in front of S3.
 * `readOnly` (a checkout): when the cache remembers this store's config and index listing
 * (cache-backend.ts Remembered), no request is made now: the S3 client is made on the first
 * miss, so a checkout the cache holds whole never loads the SDK. Otherwise the open's request
 * checks endpoint, credentials and bucket (one clear error at start-up).
 */
export async function openBackend(
  where: string,
  cache?: { dir: string; bytes?: number },
  opts: { readOnly?: boolean } = {},
): Promise<Backend> {
  if (!isS3Url(where)) return new LocalBackend(where);
  if (!cache || cache.bytes === 0) return S3Backend.open(where);
  const bytes = cache.bytes ?? DEFAULT_CACHE_BYTES;
  if (opts.readOnly) {
    const lazy = S3Backend.deferred(where);
    const remembered = CachedBackend.remembered(cache.dir, lazy.name);
    if (remembered) return new CachedBackend(lazy, cache.dir, bytes, { remembered });
  }
  return new CachedBackend(await S3Backend.open(where), cache.dir, bytes);
}

/** The store of a library opened for its catalog only: closing is all it does. */
function catalogOnlyStore(storeAt: string): Store {
  const refuse = () => {
    throw new StrataError('USAGE', 'this library was opened for its catalog only (no store)', { file: storeAt });
  };
  return new Proxy({} as Store, {
    get: (_t, k) => (k === 'close' ? async () => {} : k === 'then' ? undefined : refuse()),
  });
}

export class Library {
  private closed = false;
  /** Where the catalog and the store are (a password in the catalog URL shown as ***). */
  places: { catalog: string; store: string } = { catalog: '', store: '' };
  private constructor(
    readonly dir: string,
    readonly store: Store,
    readonly catalog: Catalog,
    /**
     * This open made the library: `{ folder }` names the first folder it had to make (the
     * library's own, or a parent), 'contents' says the library's folder was there, empty.
     */
    readonly created: false | { folder: string } | 'contents' = false,
  ) {}

  /** Whether `dir` (see libraryLocation) is the per-user default, not one the user named. */
  static isDefault(dir: string): boolean {
    return path.resolve(dir) === libraryLocation(undefined) && !process.env.STRATA_LIBRARY;
  }

  /** Open the library at `dir` (see libraryLocation); `create` (the default) makes it when missing. */
  static async open(
    dir?: string,
    opts: {
      create?: boolean;
      /**
       * Open the catalog and not the store (whose index, a row per blob, is most of what a
       * million-file library's open costs): for what answers from the catalog alone (search).
       * The library's `store` then throws on any use.
       */
      catalogOnly?: boolean;
      /**
       * Only reads follow (a checkout): a remote store may open from what its cache remembers,
       * with no request before the first miss (openBackend); writes still see the store as it is.
       */
      readOnly?: boolean;
    } & LibraryPlaces = {},
  ): Promise<Library> {
    const root = libraryLocation(dir);
    const marker = path.join(root, MARKER);
    let created: false | { folder: string } | 'contents' = false;
    const given = {
      catalog: opts.catalog ?? (process.env.STRATA_CATALOG || undefined),
      store: opts.store ?? (process.env.STRATA_STORE || undefined),
    };
    if (given.catalog && given.catalog !== 'local' && !isPostgresUrl(given.catalog))
      throw new StrataError('USAGE', `--catalog takes a postgres:// URL, not ${JSON.stringify(given.catalog)}`);
    if (given.store && given.store !== 'local' && !isS3Url(given.store))
      throw new StrataError('USAGE', `--store takes an s3://bucket/prefix URL, not ${JSON.stringify(given.store)}`);
    let places: Marker | undefined;
    if (!existsSync(marker)) {
      if (opts.create === false) {
        throw new StrataError('NOT_FOUND', 'no library here (strata init or a first checkin makes one)', {
          file: root,
        });
      }
      if (existsSync(root) && !existsSync(path.join(root, 'store'))) {
        if (readdirSync(root).length > 0) {
          throw new StrataError('USAGE', 'directory exists, is not empty and is not a Strata library', { file: root });
        }
      }
      const first = mkdirSync(root, { recursive: true });
      created = first === undefined ? 'contents' : { folder: first };
      const id = libraryId(root);
      places = { kind: 'strata-library', version: 1 };
      if (given.catalog && given.catalog !== 'local')
        places.catalog = withoutPassword(given.catalog.replaceAll('{library}', id));
      if (given.store && given.store !== 'local') places.store = given.store.replaceAll('{library}', id);
      if (!places.store) mkdirSync(path.join(root, 'store'), { recursive: true });
      writeFileSync(marker, `${JSON.stringify(places)}\n`);
    } else {
      try {
        places = JSON.parse(readFileSync(marker, 'utf8')) as Marker;
      } catch (e) {
        throw new StrataError('CORRUPT', `library marker is not JSON: ${(e as Error).message}`, { file: marker });
      }
    }
    const id = libraryId(root);
    const own = (v: string | undefined) => (v === 'local' ? undefined : v);
    const catalogAt =
      (given.catalog === 'local' ? undefined : (given.catalog?.replaceAll('{library}', id) ?? own(places.catalog))) ??
      path.join(root, 'catalog.db');
    const storeAt =
      (given.store === 'local' ? undefined : (given.store?.replaceAll('{library}', id) ?? own(places.store))) ??
      path.join(root, 'store');
    const cacheDir = opts.cacheDir ?? (process.env.STRATA_CACHE_DIR || path.join(root, 'cache'));
    const cacheBytes =
      opts.cacheBytes ?? (process.env.STRATA_CACHE_BYTES ? Number(process.env.STRATA_CACHE_BYTES) : undefined);
    // a library this open made goes again when its catalog or store cannot be opened
    const undo = () => {
      if (typeof created === 'object') rmSync(created.folder, { recursive: true, force: true });
      else if (created === 'contents')
        for (const e of readdirSync(root)) rmSync(path.join(root, e), { recursive: true, force: true });
    };
    // store and catalog open side by side (on S3 + PostgreSQL each is several round trips);
    // when both fail the store's error is the one reported (as when they opened in turn)
    const opened = await Promise.allSettled([
      (async () => {
        if (opts.catalogOnly) return catalogOnlyStore(storeAt);
        const backend = await openBackend(storeAt, { dir: cacheDir, bytes: cacheBytes }, { readOnly: opts.readOnly });
        try {
          return await Store.open(backend);
        } catch (e) {
          await backend.close().catch(() => {});
          throw e;
        }
      })(),
      (async () => Catalog.open(await openCatalogDb(catalogAt)))(),
    ]);
    const [s, c] = opened;
    if (s.status === 'rejected' || c.status === 'rejected') {
      if (s.status === 'fulfilled') await s.value.close().catch(() => {});
      if (c.status === 'fulfilled') await c.value.close().catch(() => {});
      undo();
      throw s.status === 'rejected' ? s.reason : (c as PromiseRejectedResult).reason;
    }
    const store = s.value;
    const catalog = c.value;
    const lib = new Library(root, store, catalog, created);
    lib.places = { catalog: isPostgresUrl(catalogAt) ? redactUrl(catalogAt) : catalogAt, store: storeAt };
    return lib;
  }

  /**
   * Close, and remove the library again when this open created it and it holds no image
   * (a first check-in that failed must not leave an empty library behind). Only what the
   * open made goes: the folder when it made it, else the folder's contents (it was empty).
   */
  async closeAndDiscardIfNew(): Promise<boolean> {
    const fresh = this.created !== false && !this.closed && (await this.catalog.images()).length === 0;
    await this.close();
    if (!fresh) return false;
    if (typeof this.created === 'object') rmSync(this.created.folder, { recursive: true, force: true });
    else for (const e of readdirSync(this.dir)) rmSync(path.join(this.dir, e), { recursive: true, force: true });
    return true;
  }

  /** The live blob cache of the file routes (issue 27), when one is on: see useBlobCache. */
  blobCache?: BlobCache;

  /**
   * Read manifests and files' chunks through a live cache of blobs (library/blob-cache.ts):
   * manifests kept apart as metadata, a file's next chunks prefetched as it is read. A
   * server's choice (`strata serve --cache-policy`): the counters are in its /metrics.
   */
  useBlobCache(opts: BlobCacheOptions): BlobCache {
    this.blobCache = new BlobCache(
      (d) => this.store.get(d),
      (d) => this.store.entry(d)?.plainLength,
      opts,
    );
    return this.blobCache;
  }

  /** A manifest blob handed to `use`, through the blob cache when there is one (class metadata). */
  private async metaBlob<T>(digest: string, kind: string, use: (plain: Uint8Array) => T): Promise<T> {
    const c = this.blobCache;
    if (!c) return this.store.withBlob(digest, use);
    return use(await c.get(digest, { class: 'metadata', kind }));
  }

  /**
   * Chunk `i` of a regular file's chunk list (not a hole), through the blob cache when there
   * is one (class data; what follows in the file's own list is what its prefetcher fetches).
   * Shared with the cache: read it, never change it.
   */
  async fileChunk(e: FileEntry, i: number): Promise<Uint8Array> {
    return this.withFileChunk(e, i, (plain) => (this.blobCache ? plain : Buffer.from(plain)));
  }

  /**
   * Chunk `i` of a regular file handed to `use` without a copy of its own: the store's pooled
   * buffer (reused once `use` returns) or the blob cache's bytes (read them, never change them).
   */
  async withFileChunk<T>(e: FileEntry, i: number, use: (plain: Uint8Array) => T): Promise<T> {
    const d = e.chunks?.[i];
    if (!d) throw new StrataError('CORRUPT', `file manifest lacks chunk ${i} of ${e.path}`);
    const c = this.blobCache;
    if (!c) return this.store.withBlob(d, use);
    const next: string[] = [];
    const list = e.chunks!;
    for (let j = i + 1; j < list.length && next.length < 256; j++) {
      const x = list[j];
      if (x) next.push(x);
    }
    return use(await c.get(d, { class: 'data', kind: 'file', next }));
  }

  /** Decoded manifests kept by digest (they never change), most recently used last; off unless asked. */
  private manifests?: Map<string, LayoutManifest | FilesManifest>;
  private manifestLimit = 0;

  /**
   * Keep up to `n` decoded manifests (a long-running server reads the same ones again and
   * again; a manifest is immutable under its digest). Callers must not change what they get.
   */
  cacheManifests(n: number): void {
    this.manifestLimit = n;
    this.manifests = n > 0 ? new Map() : undefined;
  }

  private async cached<T extends LayoutManifest | FilesManifest>(digest: string, load: () => Promise<T>): Promise<T> {
    const c = this.manifests;
    if (!c) return load();
    const hit = c.get(digest);
    if (hit) {
      c.delete(digest);
      c.set(digest, hit);
      return hit as T;
    }
    const m = await load();
    c.set(digest, m);
    while (c.size > this.manifestLimit) c.delete(c.keys().next().value as string);
    return m;
  }

  // Decoded from the store's own buffer: a copy of a multi-megabyte manifest (fresh pages,
  // a fault each on this VM) cost as much as the JSON parse.
  async layout(digest: string): Promise<LayoutManifest> {
    return this.cached(digest, async () => {
      const where = `manifest ${digest}`;
      // a version 2 head is small: copied out, then its parts read and joined
      const got = await this.metaBlob(digest, 'layout', (plain) =>
        isLayoutHead(plain) ? Buffer.from(plain) : decodeManifest<LayoutManifest>(plain, LAYOUT_KIND, where),
      );
      const m = Buffer.isBuffer(got)
        ? await readLayout(got, where, (d) => this.metaBlob(d, 'layout-part', (p) => Buffer.from(p)))
        : got;
      // the file manifests it names are read next (ls, stat, a file)
      this.hintFiles(m);
      return m;
    });
  }

  /**
   * A stored version's virtual disk, read on demand: a layout in parts (version 2) as a
   * PartedVersionSource that loads only the parts its reads touch (a million-file layout
   * joined is ~250 MB of objects), a version 1 layout whole (as layout() reads it).
   */
  async versionSource(digest: string, name: string): Promise<RangedSource> {
    const hit = this.manifests?.get(digest);
    if (hit?.kind === LAYOUT_KIND) return new VersionSource(this.store, hit as LayoutManifest, name);
    const where = `manifest ${digest}`;
    // version 1 decoded in the same read, unless decoded manifests are kept (layout() keeps it)
    const got = await this.metaBlob(digest, 'layout', (plain) =>
      isLayoutHead(plain)
        ? decodeLayoutV2Head(plain, where)
        : this.manifests
          ? undefined
          : decodeManifest<LayoutManifest>(plain, LAYOUT_KIND, where),
    );
    if (got?.version !== 2) return new VersionSource(this.store, got ?? (await this.layout(digest)), name);
    const head = got;
    this.hintFiles(head);
    return new PartedVersionSource(this.store, head, (i) => this.layoutPart(head, digest, i), name);
  }

  /** The blob cache's `meta` prefetcher: a layout's file manifests are what its reader reads next (ls, stat, a file). */
  private hintFiles(layout: LayoutHead): void {
    this.blobCache?.hint(layout.volumes.flatMap((v) => (v.fs ? [v.fs.files] : [])));
  }

  /**
   * A layout manifest's volumes and scalars without its chunk and range columns (decodeLayoutHead):
   * what picks a version's file manifest, for a fraction of the memory of layout().
   */
  async layoutHead(digest: string): Promise<LayoutHead> {
    const hit = this.manifests?.get(digest) as LayoutManifest | undefined;
    if (hit?.kind === LAYOUT_KIND) return hit;
    const head = await this.metaBlob(digest, 'layout', (plain) => decodeLayoutHead(plain, `manifest ${digest}`));
    this.hintFiles(head);
    return head;
  }

  /**
   * Part `i` of the version 2 layout `head` (its `digest` names it in messages): a slice of
   * the chunk list and of the range columns, what a reader of a few disk ranges loads
   * instead of the whole layout.
   */
  async layoutPart(head: LayoutManifestHead, digest: string, i: number): Promise<LayoutPart> {
    const d = head.parts[i];
    return this.metaBlob(d, 'layout-part', (plain) =>
      decodeLayoutPart(plain, head, i, `manifest ${digest} part ${i} (${d})`),
    );
  }

  /** A file manifest with every entry (a version 2 manifest's parts read and joined). */
  async files(digest: string): Promise<FilesManifest> {
    return this.cached(digest, async () => {
      const head = await this.filesHead(digest);
      if (!head.parts) return head as FilesManifest;
      const entries: FileEntry[] = [];
      for await (const e of this.fileEntries(digest, head)) entries.push(e);
      const { kind, volume, fsKind, fileChunkSize } = head;
      return { kind, version: 1, volume, fsKind, fileChunkSize, entries };
    });
  }

  /** A file manifest's head: version 1 with its entries, version 2 with its part list. */
  async filesHead(digest: string): Promise<FilesHead> {
    const hit = this.manifests?.get(digest) as FilesManifest | undefined;
    if (hit?.kind === FILES_KIND) return hit;
    const h = await this.metaBlob(digest, 'files', (plain) => decodeFilesHead(plain, `file manifest ${digest}`));
    if (h.parts) this.blobCache?.hint(h.parts);
    return h;
  }

  /**
   * The first path of each part (of those read so far from the first) of the version 2 file
   * manifests read lately (a few hundred paths for a million files): where a reader of one
   * path may start (fileEntries' `from`).
   */
  private partFirsts = new Map<string, string[]>();

  /**
   * The entries of a file manifest in walk order, one part in memory at a time (a version
   * 1 manifest is one part). With `from`, they may start at a later part, the last whose
   * first path is known (from an earlier read) and not after `from` in walk order: for a
   * reader that skips every entry before `from` anyway.
   */
  async *fileEntries(digest: string, head?: FilesHead, from?: string): AsyncGenerator<FileEntry> {
    const h = head ?? (await this.filesHead(digest));
    if (!h.parts) {
      yield* h.entries ?? [];
      return;
    }
    const firsts = this.partFirsts.get(digest) ?? [];
    let start = 0;
    if (from !== undefined) while (start + 1 < firsts.length && compareTreePaths(firsts[start + 1], from) <= 0) start++;
    const seen: string[] = [];
    let n = 0;
    try {
      for (let i = start; i < h.parts.length; i++) {
        const part = h.parts[i];
        const where = `file manifest ${digest} part ${i} (${part})`;
        const entries = await this.metaBlob(part, 'files-part', (plain) => decodeFilesPart(plain, where));
        n += entries.length;
        if (n > (h.count ?? 0))
          throw new StrataError('CORRUPT', 'parts hold more entries than the head counts', {
            file: where,
            structure: 'file manifest',
          });
        if (start === 0 && entries.length > 0) seen.push(entries[0].path);
        yield* entries;
      }
    } finally {
      // what this read learnt of where parts start, for the next reader (also when it stopped early)
      if (seen.length > firsts.length) {
        this.partFirsts.delete(digest);
        this.partFirsts.set(digest, seen);
        if (this.partFirsts.size > 16) this.partFirsts.delete(this.partFirsts.keys().next().value as string);
      }
    }
    if (start > 0) return;
    if (n !== h.count) {
      throw new StrataError('CORRUPT', `parts hold ${n} entries, the head counts ${h.count}`, {
        file: `file manifest ${digest}`,
        structure: 'file manifest',
      });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.store.close();
    await this.catalog.close();
  }
}
