import type { FileEntry, FilesHead, FilesManifest, LayoutManifest } from '../../library/manifest.js';
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

/**
 * The entries of a file manifest (version 1, or a version 2 head and its parts) read through
 * `blobs`, in order, one part in memory at a time.
 */
export async function* fileEntriesFromBlobs(
  blobs: BlobGetter,
  digest: string,
  where: string,
  head?: FilesHead,
): AsyncGenerator<FileEntry> {
  const h = head ?? decodeFilesHead(await blobs.get(digest), `${where} file manifest ${digest}`);
  if (!h.parts) {
    yield* h.entries ?? [];
    return;
  }
  const count = h.count ?? 0;
  let n = 0;
  for (const [i, part] of h.parts.entries()) {
    const at = `${where} file manifest ${digest} part ${i} (${part})`;
    const got = decodeFilesPart(await blobs.get(part), at);
    n += got.length;
    if (n > count || got.length > FILE_PART_ENTRIES) {
      throw new StrataError('CORRUPT', 'parts hold more entries than the head counts', {
        file: at,
        structure: 'file manifest',
      });
    }
    yield* got;
  }
  if (n !== count) {
    throw new StrataError('CORRUPT', `parts hold ${n} entries, the head counts ${count}`, {
      file: `${where} file manifest ${digest}`,
      structure: 'file manifest',
    });
  }
}

/** A file manifest (version 1, or a version 2 head and its parts) read through `blobs`, every entry in memory. */
export async function filesFromBlobs(blobs: BlobGetter, digest: string, where: string): Promise<FilesManifest> {
  const head = decodeFilesHead(await blobs.get(digest), `${where} file manifest ${digest}`);
  if (!head.parts) return head as FilesManifest;
  const entries: FileEntry[] = [];
  for await (const e of fileEntriesFromBlobs(blobs, digest, where, head)) entries.push(e);
  const { kind, volume, fsKind, fileChunkSize } = head;
  return { kind, version: 1, volume, fsKind, fileChunkSize, entries };
}

/** A file manifest to stream: its digest and head. */
interface ChosenFiles {
  digest: string;
  head: FilesHead;
}

/**
 * The file manifest of one volume of a layout: `part` names it; without it the only volume
 * with a file system, or of several the one holding /etc and /usr (the OS root), each
 * candidate streamed.
 */
async function chooseFiles(
  blobs: BlobGetter,
  layout: Pick<LayoutManifest, 'volumes'>,
  ref: string,
  part: string | undefined,
): Promise<ChosenFiles> {
  const withFs = layout.volumes.filter((x) => x.fs);
  const chosen = async (digest: string): Promise<ChosenFiles> => ({
    digest,
    head: decodeFilesHead(await blobs.get(digest), `${ref} file manifest ${digest}`),
  });
  if (part !== undefined) {
    const vol = withFs.find((x) => x.id === part);
    if (!vol?.fs) throw new StrataError('NOT_FOUND', `version ${ref} has no file system on volume ${part}`);
    return chosen(vol.fs.files);
  }
  if (withFs.length === 1 && withFs[0].fs) return chosen(withFs[0].fs.files);
  for (const c of withFs) {
    if (!c.fs) continue;
    const f = await chosen(c.fs.files);
    let etc = false;
    let usr = false;
    for await (const e of fileEntriesFromBlobs(blobs, f.digest, ref, f.head)) {
      if (e.type !== 'dir') continue;
      if (e.path === '/etc') etc = true;
      else if (e.path === '/usr') usr = true;
    }
    if (etc && usr) return f;
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
  const where = `${remote.url}#${name}`;
  const { digest, head } = await chooseFiles(blobs, layout, where, opts.part);
  // streamed into the mount's index, one part at a time
  const tree = await ManifestTree.open(
    blobs,
    { fileChunkSize: head.fileChunkSize, entries: () => fileEntriesFromBlobs(blobs, digest, where, head) },
    name,
  );
  return { tree, version: v, blobs };
}
