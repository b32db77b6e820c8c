import { createHash } from 'node:crypto';
import { StrataError } from '../util/errors.js';
import { zstdCompress, zstdDecompress } from '../util/zstd.js';
import type { Backend, BackendEntry } from './backend.js';
import { BlobMap } from './blob-map.js';
import type { BlobType, PackEntry } from './pack.js';

/**
 * The store's index: which pack holds each blob, and where in it. Index files live under
 * `index/`, each named by the sha256 of its bytes (checked on load), each a zstd frame of
 * JSON listing packs and their blobs (version 1 files, plain JSON with one blob per frame,
 * still load). An index file is written only after the packs it names (see packer.ts), so
 * every entry a reader loads points at a pack that exists, unless a prune's deletion or
 * damage intervened (check.ts reports both).
 */

/** Largest blob we accept (chunks are far smaller; manifests of huge trees stay below it). */
export const MAX_BLOB = 256 * 1024 * 1024;
/**
 * zstd level of index files. Their bulk is hex digests, which no level compresses below 32
 * bytes each; the higher levels only spend time on them. Measured (issue 26) on the index
 * file of a pack of the bench:checkin --corpora small-files image (3.23 MB of JSON, ~20k
 * blobs): level 1 1.166 MB in 99 ms, 3 1.242 MB in 337 ms, 5 1.284 MB, 9 1.264 MB, 12
 * 1.262 MB in 2,417 ms (then 10% of that check-in's CPU); on the Debian base's (93 KB of
 * JSON) level 1 32.7 KB, 12 36.2 KB. Level 1 is both the smallest and the fastest.
 */
export const INDEX_LEVEL = 1;
/** Largest decoded index file we accept. */
const MAX_INDEX = 1024 * 1024 * 1024;
/** Index files read at once when loading (on S3 each is a round trip). */
const INDEX_READS = 8;

import type { IndexEntry } from './blob-map.js';

export type { IndexEntry };

/** Index file v2 blob: digest, type, frame offset, frame enc length, frame plain length, offset in frame, plain length, flags. */
export type BlobTupleV2 = [string, BlobType, number, number, number, number, number, number];
/** Index file v1 blob: digest, type, offset, enc length, plain length, flags. */
type BlobTupleV1 = [string, BlobType, number, number, number, number];

export interface IndexFile {
  version: 1 | 2;
  packs: Array<{ id: string; blobs: Array<BlobTupleV2 | BlobTupleV1> }>;
}

export const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const HEX64 = /^[0-9a-f]{64}$/;

/** One blob of an index file (version 2). */
export const tuple = (d: string, e: Omit<IndexEntry, 'pack'>): BlobTupleV2 => [
  d,
  e.type,
  e.offset,
  e.encLength,
  e.framePlain,
  e.at,
  e.plainLength,
  e.flags,
];

/** Decode an index file's bytes (after its name was checked): zstd of JSON (v2) or plain JSON (v1). */
export function decodeIndexFile(body: Uint8Array, file: string): IndexFile {
  try {
    // version 2 index files are zstd frames of the JSON; version 1 ones are plain JSON
    const json = body[0] === 0x28 && body[1] === 0xb5 ? zstdDecompress(body, MAX_INDEX) : body;
    return JSON.parse(Buffer.from(json).toString('utf8')) as IndexFile;
  } catch (e) {
    throw new StrataError('CORRUPT', `index is not JSON: ${(e as Error).message}`, {
      file,
      structure: 'store index',
    });
  }
}

/** The bytes of an index file and the key it is stored under (`index/` + their sha256). */
export function encodeIndexFile(ix: IndexFile): { key: string; body: Uint8Array } {
  // zstd: an index lists every blob with its frame; as JSON it was ~1% of the store
  const body = zstdCompress(Buffer.from(JSON.stringify(ix)), INDEX_LEVEL);
  return { key: `index/${sha256hex(body)}`, body };
}

/**
 * Add the blobs of a parsed index file to `into` (the first entry seen for a digest wins;
 * later ones are counted, per pack, in `duplicates` when given). Every field is checked: an index file comes
 * from disk and may be hostile.
 */
export function addIndexFile(
  ix: IndexFile,
  file: string,
  into: { setIfAbsent(digest: string, e: IndexEntry): boolean },
  duplicates?: Map<string, number>,
): void {
  const where = { file, structure: 'store index' };
  if ((ix?.version !== 1 && ix?.version !== 2) || !Array.isArray(ix.packs)) {
    throw new StrataError('CORRUPT', 'unknown index version', where);
  }
  const width = ix.version === 2 ? 8 : 6;
  for (const p of ix.packs) {
    if (typeof p.id !== 'string' || !HEX64.test(p.id) || !Array.isArray(p.blobs)) {
      throw new StrataError('CORRUPT', 'bad pack entry', where);
    }
    for (const b of p.blobs) {
      const [digest, type] = b;
      const nums = Array.isArray(b) && b.length === width ? (b.slice(2) as number[]) : [];
      let e: IndexEntry | undefined;
      if (nums.length > 0 && nums.every((x) => Number.isSafeInteger(x) && x >= 0)) {
        if (ix.version === 2) {
          const [offset, encLength, framePlain, at, plainLength, flags] = nums;
          e = { pack: p.id, type, offset, encLength, framePlain, at, plainLength, flags };
        } else {
          const [offset, encLength, plainLength, flags] = nums;
          e = { pack: p.id, type, offset, encLength, framePlain: plainLength, at: 0, plainLength, flags };
        }
      }
      if (
        !e ||
        typeof digest !== 'string' ||
        !HEX64.test(digest) ||
        (type !== 'data' && type !== 'tree') ||
        e.framePlain > MAX_BLOB ||
        e.encLength > MAX_BLOB ||
        e.at + e.plainLength > e.framePlain
      ) {
        throw new StrataError('CORRUPT', `bad blob entry for ${String(digest).slice(0, 16)}`, where);
      }
      if (!into.setIfAbsent(digest, e)) duplicates?.set(p.id, (duplicates.get(p.id) ?? 0) + 1);
    }
  }
}

/** The index of one store: every blob's place, and the index files it came from. */
export class BlobIndex {
  /** Compact (BlobMap): ~6 bytes a blob resident for the newest 2^20 blobs, ~0.06 for older ones; the records in a scratch file. */
  readonly entries = new BlobMap();
  /**
   * Entries for blobs already in `entries` (another copy, in another pack), counted per pack:
   * a prune killed after writing its new packs leaves them; the next prune drops them. Only
   * counts: a prune killed after copying a million blobs leaves a million of them.
   */
  duplicates = new Map<string, number>();
  /** Index file keys loaded or written, for prune. */
  files: string[] = [];

  constructor(private readonly backend: Backend) {}

  /**
   * Whether the index was loaded from a remembered listing (`load({ remembered: true })`) and
   * not listed since: it may lack what other processes wrote, and name packs their gc deleted.
   */
  fromRemembered = false;

  /**
   * Re-read every index file (after another process wrote some). `remembered`: from the
   * backend's remembered listing when it has one (a read-only open; see Backend.listRemembered).
   */
  async load(opts: { remembered?: boolean } = {}): Promise<void> {
    // Loading takes no lock (a library opens while a gc may run): a gc writes its new index
    // files before it deletes the old ones, so a file listed here and gone when read means
    // a newer set exists; list again. Bounded: a store whose index keeps vanishing is an error.
    let listing = opts.remembered ? this.backend.listRemembered?.('index/') : undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.loadOnce(listing);
        this.fromRemembered = listing !== undefined;
        return;
      } catch (e) {
        if (!(e instanceof StrataError && e.code === 'NOT_FOUND') || attempt >= 5) throw e;
        // a remembered index file gone from the remote (and from the cache): list for real
        if (listing) attempt--;
        listing = undefined;
      }
    }
  }

  private async loadOnce(remembered?: BackendEntry[]): Promise<void> {
    this.entries.clear();
    this.duplicates = new Map();
    const files = remembered ?? (await this.backend.list('index/'));
    this.files = files.map((f) => f.key);
    // fetched INDEX_READS at a time (each a round trip on S3), added in listing order
    const bodies: Array<Promise<Uint8Array> | undefined> = [];
    const start = (i: number) => {
      if (i < files.length) {
        bodies[i] = this.backend.get(files[i].key);
        bodies[i]?.catch(() => {}); // awaited in order below
      }
    };
    for (let i = 0; i < INDEX_READS; i++) start(i);
    for (const [i, f] of files.entries()) {
      const body = await (bodies[i] as Promise<Uint8Array>);
      bodies[i] = undefined;
      start(i + INDEX_READS);
      const id = f.key.slice('index/'.length);
      const file = `${this.backend.name}/${f.key}`;
      if (sha256hex(body) !== id) {
        throw new StrataError('CORRUPT', 'index file content does not match its name (sha256)', {
          file,
          structure: 'store index',
        });
      }
      addIndexFile(decodeIndexFile(body, file), file, this.entries, this.duplicates);
    }
  }

  /**
   * Read the index files written since the last load (by other processes: several servers
   * share one store); when some known ones are gone (another process's gc replaced them),
   * everything is read again. Returns whether anything changed.
   */
  async refresh(): Promise<boolean> {
    const files = await this.backend.list('index/');
    this.fromRemembered = false;
    const now = new Set(files.map((f) => f.key));
    const known = new Set(this.files);
    if ([...known].some((k) => !now.has(k))) {
      await this.load();
      return true;
    }
    const fresh = files.filter((f) => !known.has(f.key));
    for (const f of fresh) {
      const body = await this.backend.get(f.key).catch((e: { code?: string }) => {
        if (e?.code === 'NOT_FOUND') return undefined; // gone since the listing: the next refresh reloads
        throw e;
      });
      if (!body) continue;
      const file = `${this.backend.name}/${f.key}`;
      if (sha256hex(body) !== f.key.slice('index/'.length)) {
        throw new StrataError('CORRUPT', 'index file content does not match its name (sha256)', {
          file,
          structure: 'store index',
        });
      }
      addIndexFile(decodeIndexFile(body, file), file, this.entries, this.duplicates);
      this.files.push(f.key);
    }
    return fresh.length > 0;
  }

  /** Write an index file (atomically, named by its content); returns its key. */
  async write(ix: IndexFile): Promise<string> {
    const { key, body } = encodeIndexFile(ix);
    await this.backend.put(key, body);
    this.files.push(key);
    return key;
  }

  /** Index a pack just written: one index file naming it, then its blobs in memory. */
  async addPack(id: string, entries: PackEntry[]): Promise<void> {
    await this.write({ version: 2, packs: [{ id, blobs: entries.map((e) => tuple(e.digest, e)) }] });
    for (const { digest, ...rest } of entries) this.entries.setIfAbsent(digest, { pack: id, ...rest });
  }
}
