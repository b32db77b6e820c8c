import type { FileEntry, FilesManifest, LayoutManifest } from '../../library/manifest.js';
import { decodeFilesHead, decodeFilesPart, decodeLayoutHead, FILE_PART_ENTRIES } from '../../library/manifest.js';
import { StrataError } from '../../util/errors.js';
import type { RemoteLibrary, RemoteVersion } from '../http/client.js';
import { type BlobGetter, ManifestTree } from './manifest-tree.js';

/**
 * A local cache of chunks by digest, kept between mounts (the CLI passes the deploy chunk
 * cache folder: one file per chunk, rehashed on every hit). `get` answers undefined on a
 * miss; a failed `put` only costs a later fetch.
 */
export interface LocalChunkCache {
  get(digest: string): Promise<Uint8Array | undefined>;
  put(digest: string, data: Uint8Array): Promise<void>;
}

/** What a remote mount fetched and found, for `--json`, tests and benchmarks. */
export interface RemoteBlobStats {
  /** Blobs answered by the local cache, and fetched from the service. */
  cacheHits: number;
  fetched: number;
  fetchedBytes: number;
}

/**
 * Blobs of a library service (GET /v1/chunks/DIGEST, each checked against its digest by
 * the client) behind a local chunk cache: a blob is looked for in the cache first, fetched
 * on a miss and put there; concurrent requests for one blob share one fetch.
 */
export class RemoteBlobs implements BlobGetter {
  readonly stats: RemoteBlobStats = { cacheHits: 0, fetched: 0, fetchedBytes: 0 };
  private readonly inflight = new Map<string, Promise<Uint8Array>>();

  constructor(
    private readonly remote: RemoteLibrary,
    private readonly cache?: LocalChunkCache,
    private readonly onWarning: (m: string) => void = () => {},
  ) {}

  get(digest: string): Promise<Uint8Array> {
    let p = this.inflight.get(digest);
    if (!p) {
      p = this.load(digest).finally(() => this.inflight.delete(digest));
      this.inflight.set(digest, p);
    }
    return p;
  }

  private async load(digest: string): Promise<Uint8Array> {
    const hit = await this.cache?.get(digest).catch(() => undefined);
    if (hit) {
      this.stats.cacheHits++;
      return hit;
    }
    const b = await this.remote.chunk(digest);
    this.stats.fetched++;
    this.stats.fetchedBytes += b.length;
    if (this.cache) {
      await this.cache.put(digest, b).catch((e) => this.onWarning(`chunk cache: ${(e as Error).message}`));
    }
    return b;
  }
}

/** A file manifest (version 1, or a version 2 head and its parts) read through `blobs`, every entry in memory. */
export async function filesFromBlobs(blobs: BlobGetter, digest: string, where: string): Promise<FilesManifest> {
  const head = decodeFilesHead(await blobs.get(digest), `${where} file manifest ${digest}`);
  if (!head.parts) return head as FilesManifest;
  const count = head.count ?? 0;
  const entries: FileEntry[] = [];
  for (const [i, part] of head.parts.entries()) {
    const at = `${where} file manifest ${digest} part ${i} (${part})`;
    const got = decodeFilesPart(await blobs.get(part), at);
    if (entries.length + got.length > count || got.length > FILE_PART_ENTRIES) {
      throw new StrataError('CORRUPT', 'parts hold more entries than the head counts', {
        file: at,
        structure: 'file manifest',
      });
    }
    for (const e of got) entries.push(e);
  }
  if (entries.length !== count) {
    throw new StrataError('CORRUPT', `parts hold ${entries.length} entries, the head counts ${count}`, {
      file: `${where} file manifest ${digest}`,
      structure: 'file manifest',
    });
  }
  const { kind, volume, fsKind, fileChunkSize } = head;
  return { kind, version: 1, volume, fsKind, fileChunkSize, entries };
}

/**
 * The file manifest of one volume of a layout: `part` names it; without it the only volume
 * with a file system, or of several the one holding /etc and /usr (the OS root).
 */
async function chooseFiles(
  blobs: BlobGetter,
  layout: Pick<LayoutManifest, 'volumes'>,
  ref: string,
  part: string | undefined,
): Promise<FilesManifest> {
  const withFs = layout.volumes.filter((x) => x.fs);
  if (part !== undefined) {
    const vol = withFs.find((x) => x.id === part);
    if (!vol?.fs) throw new StrataError('NOT_FOUND', `version ${ref} has no file system on volume ${part}`);
    return filesFromBlobs(blobs, vol.fs.files, ref);
  }
  if (withFs.length === 1 && withFs[0].fs) return filesFromBlobs(blobs, withFs[0].fs.files, ref);
  for (const c of withFs) {
    if (!c.fs) continue;
    const f = await filesFromBlobs(blobs, c.fs.files, ref);
    const dirs = new Set(f.entries.filter((e) => e.type === 'dir').map((e) => e.path));
    if (dirs.has('/etc') && dirs.has('/usr')) return f;
  }
  throw new StrataError(
    'USAGE',
    withFs.length === 0
      ? `version ${ref} holds no file system Strata read`
      : `choose a volume with --part (${withFs.map((x) => x.id || '(whole disk)').join(', ')})`,
  );
}

/**
 * A mount tree of a version held by a library service: the version is resolved by the
 * service (which checks the token may read it), its layout and file manifest are fetched
 * as blobs, and a file's bytes are its chunks fetched on demand. Every blob passes through
 * `cache` (a local chunk cache kept between mounts) and is checked against its digest.
 */
export async function openRemoteMountTree(
  remote: RemoteLibrary,
  ref: string,
  opts: { part?: string; cache?: LocalChunkCache; onWarning?: (m: string) => void } = {},
): Promise<{ tree: ManifestTree; version: RemoteVersion; blobs: RemoteBlobs }> {
  const v = await remote.resolve(ref);
  const name = `${v.image}@${v.number}`;
  const blobs = new RemoteBlobs(remote, opts.cache, opts.onWarning);
  // its volumes only (a layout in parts: the head; version 1: its columns stepped over)
  const layout = decodeLayoutHead(await blobs.get(v.manifest), `${remote.url} manifest ${v.manifest}`);
  const files = await chooseFiles(blobs, layout, `${remote.url}#${name}`, opts.part);
  return { tree: new ManifestTree(blobs, files, name), version: v, blobs };
}
