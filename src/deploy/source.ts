import { existsSync } from 'node:fs';
import { closeChain } from '../formats/layer.js';
import { openImage } from '../formats/open.js';
import type { OpenOptions } from '../formats/types.js';
import { httpGetAll } from '../io/http-source.js';
import { DigestSet } from '../library/digest-set.js';
import { Library, libraryLocation } from '../library/library.js';
import { parseStaticIndex, resolveStatic, STATIC_INDEX } from '../library/static-index.js';
import type { RangedSource } from '../library/version-source.js';
import { RemoteLibrary } from '../serve/http/client.js';
import { chainSource } from '../serve/nbd/export.js';
import { HttpBackend } from '../store/http-backend.js';
import { packKey } from '../store/pack.js';
import { Store } from '../store/store.js';
import { StrataError } from '../util/errors.js';
import { CACHE_DEFAULT_BYTES, ChunkCache } from './chunk-cache.js';
import { checkChunk, ManifestSource } from './chunk-source.js';
import type { DeploySource } from './deployer.js';
import type { VersionRef } from './request-log.js';

/** A library version as a deploy source: chunks read from the store, each checked against its digest. */
export async function libraryDeploySource(
  lib: Library,
  ref: string,
  closeLibrary = false,
  cache?: ChunkCache,
): Promise<DeploySource> {
  const v = await lib.catalog.resolve(ref);
  const name = `${lib.dir}#${v.image}@${v.number}`;
  const which: VersionRef = { image: v.image, version: v.number };
  // the owner project and visibility, when the catalog has them (a service's library)
  const own = await lib.catalog.db
    .get<{ project: string; visibility: string }>('SELECT project, visibility FROM image_access WHERE image = ?', [
      v.image,
    ])
    .catch(() => undefined);
  if (own) {
    which.owner = own.project;
    which.public = own.visibility === 'public';
  }
  if (cache) {
    // through the chunk cache (shared with other deploys of this host); the layout read a part at a time
    const meta = (d: string) => lib.store.get(d);
    const src = new ManifestSource(
      name,
      await meta(v.manifest),
      v.manifest,
      {
        name: lib.store.name,
        get: (d) => lib.store.get(d),
        close: async () => {
          if (closeLibrary) await lib.close();
        },
      },
      { cache, meta },
    );
    src.ref = which;
    return src;
  }
  // the layout read a part at a time (Library.versionSource), never joined
  const version = await lib.versionSource(v.manifest, name);
  return {
    ref: which,
    name: version.name,
    size: version.size,
    readInto: (o, out) => version.readInto(o, out),
    status: (o, l) => version.status(o, l),
    layout: version,
    manifestDigest: v.manifest,
    layoutOf: (d) => lib.versionSource(d, `${lib.dir}#${d.slice(0, 16)}`),
    close: async () => {
      await version.close();
      if (closeLibrary) await lib.close();
    },
  };
}

/**
 * A library folder served over plain HTTP (any web server that answers Range requests):
 * REF resolved against its static index (strata-index.json, see library/static-index.ts),
 * chunks read from store/ through a read-only HTTP backend (coalesced range requests, the
 * store checks every blob against its digest).
 */
export async function httpLibraryDeploySource(
  url: string,
  ref: string,
  opts: { cache?: ChunkCache; concurrency?: number } = {},
): Promise<ManifestSource & { backend: HttpBackend }> {
  const base = url.replace(/\/+$/, '');
  const indexUrl = `${base}/${STATIC_INDEX}`;
  let bytes: Uint8Array;
  try {
    bytes = await httpGetAll(indexUrl);
  } catch (e) {
    throw new StrataError(
      (e as StrataError).code ?? 'IO',
      `no library index at ${indexUrl} (write one with 'strata export-index'): ${(e as Error).message}`,
      { file: indexUrl },
      { cause: e },
    );
  }
  const ix = parseStaticIndex(bytes, indexUrl);
  const v = resolveStatic(ix, ref);
  const backend = new HttpBackend(
    `${base}/store`,
    ix.store.index.map((e) => ({ key: e.key, size: e.size, mtimeMs: e.mtimeMs })),
    { concurrency: opts.concurrency },
  );
  // the index says what the store held when it was written; a store changed since (gc,
  // compaction) without a new index would give a disk that is not the version: refuse
  const stale = (why: string, cause?: unknown) =>
    new StrataError(
      'CORRUPT',
      `the library index is stale against the store: ${v.image}@${v.number} (manifest ${v.manifest.slice(0, 16)}…) ${why}; rewrite the index with 'strata export-index' where the library lives`,
      { file: indexUrl, structure: 'static index' },
      { cause },
    );
  let store: Store;
  try {
    store = await Store.open(backend, { compressInline: true });
  } catch (e) {
    const m = /index\/[0-9a-f]{64}/.exec(String((e as Error).message));
    if (m && /\b404\b/.test(String((e as Error).message)))
      throw stale(`cannot be read: the store index file ${m[0]} that the library index lists is not on the server`, e);
    throw e;
  }
  try {
    if (!store.has(v.manifest)) throw stale('is not in the store: its manifest is missing from the store index');
    // manifests are blobs too: a warm cache holds them, and then nothing comes from the server
    const blob = async (d: string) => {
      const hit = await opts.cache?.get(d);
      if (hit) return hit;
      const plain = await store.get(d);
      await opts.cache?.put(d, plain);
      return plain;
    };
    // (a pack whose chunks the host's cache holds is never read: its absence does no harm)
    if (!(await opts.cache?.has(v.manifest))) await probePacks(backend, [store.entry(v.manifest)!.pack], stale);
    const src = new ManifestSource(
      `${base}#${v.image}@${v.number}`,
      await blob(v.manifest),
      v.manifest,
      { name: backend.name, get: (d) => store.get(d), close: () => store.close() },
      { cache: opts.cache, meta: blob },
    );
    await checkComplete(store, backend, src.layout, stale, opts.cache);
    src.ref = { image: v.image, version: v.number };
    return Object.assign(src, { backend });
  } catch (e) {
    await store.close().catch(() => {});
    throw e;
  }
}

/**
 * Every chunk of the version is in the store index, and every pack holding one the cache
 * lacks is on the server (one HEAD request per pack): else `stale(why)`.
 */
async function checkComplete(
  store: Store,
  backend: HttpBackend,
  layout: RangedSource,
  stale: (why: string, cause?: unknown) => StrataError,
  cache?: ChunkCache,
): Promise<void> {
  // the chunk list a part at a time; the packs are few
  const seen = new DigestSet();
  let missing = 0;
  let first: string | undefined;
  const packs = new Set<string>();
  for await (const sl of layout.slices()) {
    for (const d of sl.chunks) {
      if (seen.has(d)) continue;
      seen.add(d);
      const e = store.entry(d);
      if (!e) {
        missing++;
        first ??= d;
      } else if (missing === 0 && !packs.has(e.pack) && !(await cache?.has(d))) packs.add(e.pack);
    }
  }
  if (first !== undefined)
    throw stale(
      `needs ${missing} of its ${seen.size} chunks that the store index does not hold (first ${first.slice(0, 16)}…)`,
    );
  await probePacks(backend, [...packs], stale);
}

/** Each pack is on the server (a HEAD request each, a few at once): else `stale(why)`. */
async function probePacks(
  backend: HttpBackend,
  packs: string[],
  stale: (why: string, cause?: unknown) => StrataError,
): Promise<void> {
  let next = 0;
  const probe = async () => {
    while (next < packs.length) {
      const key = packKey(packs[next++]);
      const url = `${backend.url}/${key}`;
      let status: number;
      try {
        const r = await fetch(url, { method: 'HEAD', signal: AbortSignal.timeout(30_000) });
        status = r.status;
      } catch (e) {
        throw new StrataError(
          'IO',
          `cannot reach the library: ${((e as Error).cause as Error)?.message ?? (e as Error).message}`,
          { file: url },
          { cause: e },
        );
      }
      if (status === 404 || status === 410) throw stale(`has chunks in ${key}, which is not on the server`);
      if (status >= 400) throw new StrataError('IO', `HEAD answered ${status}`, { file: url });
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, packs.length) }, probe));
}

/**
 * A version from the library service (`strata serve`, `--remote URL`, token from
 * STRATA_TOKEN): resolved by the service, the manifest and every chunk through its chunk
 * route (which answers only chunks the token's project may read), each checked here.
 */
export async function remoteDeploySource(
  remote: RemoteLibrary,
  ref: string,
  opts: { cache?: ChunkCache; concurrency?: number; timeoutMs?: number } = {},
): Promise<ManifestSource> {
  const v = await remote.resolve(ref);
  const timeoutMs = opts.timeoutMs ?? Number(process.env.STRATA_HTTP_TIMEOUT || 30) * 1000;
  // not RemoteLibrary.chunk: a chunk request must end (a hung service is retried by the deployer)
  const get = async (d: string) => {
    const url = `${remote.url}/v1/chunks/${d}`;
    let body: Uint8Array;
    try {
      const res = await fetch(url, {
        headers: remote.token ? { authorization: `Bearer ${remote.token}` } : {},
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (res.status === 404) {
        await res.body?.cancel();
        throw new StrataError('NOT_FOUND', 'no such chunk, or not readable with this token', { file: url });
      }
      if (!res.ok) {
        await res.body?.cancel();
        throw new StrataError('IO', `HTTP ${res.status}`, { file: url });
      }
      body = new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      if (e instanceof StrataError) throw e;
      const why =
        (e as Error).name === 'TimeoutError'
          ? `no answer in ${timeoutMs / 1000} s`
          : `cannot reach the library service: ${((e as Error).cause as Error)?.message ?? (e as Error).message}`;
      throw new StrataError('IO', why, { file: url }, { cause: e });
    }
    return checkChunk(d, body, url);
  };
  const blob = async (d: string) => {
    const plain = (await opts.cache?.get(d)) ?? (await get(d));
    await opts.cache?.put(d, plain);
    return plain;
  };
  const src = new ManifestSource(
    `${remote.url}#${v.image}@${v.number}`,
    await blob(v.manifest),
    v.manifest,
    { name: remote.url, get, close: async () => {} },
    { cache: opts.cache, meta: blob, concurrency: opts.concurrency },
  );
  src.ref = { image: v.image, version: v.number };
  return src;
}

/** An image file or URL (any format Strata reads, backing chain resolved) as a deploy source. */
export async function imageDeploySource(image: string, open: OpenOptions = {}): Promise<DeploySource> {
  const img = await openImage(image, open);
  const src = chainSource(img);
  return {
    name: img.name,
    size: img.size,
    readInto: async (o, out) => {
      if (src.readInto) return src.readInto(o, out);
      const b = await src.read(o, out.length);
      out.set(b);
      return b.length;
    },
    status: (o, l) => src.status!(o, l),
    close: async () => closeChain(img),
  };
}

export interface DeploySourceOptions {
  /** A library folder, or the URL of one served over HTTP. */
  library?: string;
  /** The library service (`strata serve`); the token from `token` or STRATA_TOKEN. */
  remote?: string;
  token?: string;
  /** A chunk cache folder shared by the deploys of this host. */
  cache?: string;
  cacheBytes?: number;
  /** The chunk cache already open (several sources sharing one, a preload's pin): `cache` and `cacheBytes` unused. */
  chunkCache?: ChunkCache;
  open?: OpenOptions;
}

const isUrl = (s: string) => /^https?:\/\//i.test(s);

/**
 * SOURCE as the CLI takes it: an existing file or a URL is an image; anything else a
 * library REF, looked up in the library service (`remote`), a library over HTTP (`library`
 * is a URL) or a local library.
 */
export async function openDeploySource(source: string, opts: DeploySourceOptions = {}): Promise<DeploySource> {
  const remoteUrl = opts.remote;
  const libUrl = opts.library ?? process.env.STRATA_LIBRARY;
  if (!remoteUrl && (existsSync(source) || isUrl(source))) {
    if (opts.cache || opts.chunkCache)
      throw new StrataError('USAGE', '--cache holds library chunks: SOURCE is an image, not a REF');
    return imageDeploySource(source, opts.open);
  }
  const cache =
    opts.chunkCache ??
    (opts.cache ? await ChunkCache.open(opts.cache, opts.cacheBytes ?? CACHE_DEFAULT_BYTES) : undefined);
  if (remoteUrl) {
    if (!isUrl(remoteUrl)) throw new StrataError('USAGE', `--remote wants an http(s) URL, not ${remoteUrl}`);
    const token = opts.token ?? (process.env.STRATA_TOKEN || undefined);
    return remoteDeploySource(new RemoteLibrary(remoteUrl, token), source, { cache });
  }
  if (libUrl && isUrl(libUrl)) return httpLibraryDeploySource(libUrl, source, { cache });
  let lib: Library;
  try {
    lib = await Library.open(opts.library, { create: false });
  } catch (e) {
    throw new StrataError(
      'NOT_FOUND',
      `not a file, and no library at ${libraryLocation(opts.library)} to look it up in as a REF`,
      { file: source },
      { cause: e },
    );
  }
  try {
    return await libraryDeploySource(lib, source, true, cache);
  } catch (e) {
    await lib.close();
    throw e;
  }
}
