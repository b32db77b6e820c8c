import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { Catalog } from '../catalog/catalog.js';
import { SqliteDb } from '../catalog/db.js';
import { LocalBackend } from '../store/local-backend.js';
import { Store } from '../store/store.js';
import { StrataError } from '../util/errors.js';
import { decodeManifest, FILES_KIND, type FilesManifest, LAYOUT_KIND, type LayoutManifest } from './manifest.js';

/**
 * A library: a directory holding the store (`store/`) and the catalog (`catalog.db`).
 * Its location is `--library`, else STRATA_LIBRARY, else $XDG_DATA_HOME/strata/library
 * (~/.local/share/strata/library). Opening creates it when missing (`init` is implied).
 */
export const MARKER = 'strata-library.json';

export function libraryLocation(given?: string): string {
  if (given) return path.resolve(given);
  if (process.env.STRATA_LIBRARY) return path.resolve(process.env.STRATA_LIBRARY);
  const data = process.env.XDG_DATA_HOME || path.join(homedir(), '.local', 'share');
  return path.join(data, 'strata', 'library');
}

export class Library {
  private constructor(
    readonly dir: string,
    readonly store: Store,
    readonly catalog: Catalog,
  ) {}

  /** Open the library at `dir` (see libraryLocation); `create` (the default) makes it when missing. */
  static async open(dir?: string, opts: { create?: boolean } = {}): Promise<Library> {
    const root = libraryLocation(dir);
    const marker = path.join(root, MARKER);
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
      mkdirSync(path.join(root, 'store'), { recursive: true });
      writeFileSync(marker, `${JSON.stringify({ kind: 'strata-library', version: 1 })}\n`);
    }
    const store = await Store.open(new LocalBackend(path.join(root, 'store')));
    const catalog = await Catalog.open(SqliteDb.open(path.join(root, 'catalog.db')));
    return new Library(root, store, catalog);
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
    return this.cached(digest, () =>
      this.store.withBlob(digest, (plain) => decodeManifest<LayoutManifest>(plain, LAYOUT_KIND, `manifest ${digest}`)),
    );
  }

  async files(digest: string): Promise<FilesManifest> {
    return this.cached(digest, () =>
      this.store.withBlob(digest, (plain) =>
        decodeManifest<FilesManifest>(plain, FILES_KIND, `file manifest ${digest}`),
      ),
    );
  }

  async close(): Promise<void> {
    await this.store.close();
    await this.catalog.close();
  }
}
