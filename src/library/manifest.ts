import { StrataError } from '../util/errors.js';

/**
 * Manifests: what a stored version is, kept as 'tree' blobs in the store (zstd JSON).
 *
 * The layout manifest covers the whole virtual disk: every range that is not zero maps a
 * disk offset to (chunk, offset in chunk); what no range covers reads as zeros. Ranges
 * are stored column-wise and sorted by disk offset, never overlapping.
 *
 * A file manifest per file system lists every path with its inode facts, xattrs, link
 * target, content digest (sha256 of the file's bytes) and its chunks: chunk i holds file
 * bytes [i*fileChunkSize, min(size, (i+1)*fileChunkSize)), null when all zeros.
 */
export const LAYOUT_KIND = 'strata.layout';
export const FILES_KIND = 'strata.files';

export interface LayoutVolume {
  id: string;
  scheme: string;
  type: string;
  start: number;
  size: number;
  content?: string;
  /** Set when the volume's file system was read and cut by structure. */
  fs?: {
    kind: string;
    blockSize: number;
    /** Digest of the file manifest. */
    files: string;
    fileCount: number;
    usedBytes: number;
    fileDataBytes: number;
  };
}

export interface LayoutManifest {
  kind: typeof LAYOUT_KIND;
  version: 1;
  virtualSize: number;
  sourceName: string;
  sourceFormat: string;
  scheme: string;
  exact: boolean;
  fileChunkSize: number;
  diskChunkSize: number;
  volumes: LayoutVolume[];
  chunks: string[];
  chunkLengths: number[];
  ranges: { disk: number[]; length: number[]; chunk: number[]; at: number[] };
  warnings: string[];
}

export interface FileEntry {
  path: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  mtime: string | null;
  atime?: string | null;
  ctime?: string | null;
  target?: string;
  rdev?: { major: number; minor: number };
  /** name -> base64 value */
  xattrs?: Record<string, string>;
  /** sha256 of the file's bytes (regular files). */
  digest?: string;
  chunks?: Array<string | null>;
}

export interface FilesManifest {
  kind: typeof FILES_KIND;
  version: 1;
  volume: string;
  fsKind: string;
  fileChunkSize: number;
  entries: FileEntry[];
}

export function encodeManifest(m: LayoutManifest | FilesManifest): Uint8Array {
  return Buffer.from(JSON.stringify(m));
}

export function decodeManifest<T extends LayoutManifest | FilesManifest>(
  plain: Uint8Array,
  kind: T['kind'],
  where: string,
): T {
  let m: T;
  try {
    // a view, not a copy (Buffer.from(Uint8Array) copies)
    m = JSON.parse(Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength).toString('utf8')) as T;
  } catch (e) {
    throw new StrataError('CORRUPT', `manifest is not JSON: ${(e as Error).message}`, { file: where, structure: kind });
  }
  if (m?.kind !== kind || m.version !== 1) {
    throw new StrataError('CORRUPT', `not a ${kind} manifest (version 1)`, { file: where, structure: kind });
  }
  if (kind === LAYOUT_KIND) checkLayout(m as LayoutManifest, where);
  return m;
}

/** Every range inside the disk, sorted, not overlapping, inside its chunk. */
function checkLayout(m: LayoutManifest, where: string): void {
  const bad = (why: string, offset?: number) =>
    new StrataError('CORRUPT', why, { file: where, structure: 'layout manifest', offset });
  if (!Number.isSafeInteger(m.virtualSize) || m.virtualSize < 0) throw bad('bad virtual size');
  const { disk, length, chunk, at } = m.ranges ?? {};
  if (!Array.isArray(disk) || ![length, chunk, at].every((a) => Array.isArray(a) && a.length === disk.length)) {
    throw bad('range columns differ in length');
  }
  if (!Array.isArray(m.chunks) || m.chunks.length !== m.chunkLengths?.length) throw bad('chunk list');
  let end = 0;
  for (let i = 0; i < disk.length; i++) {
    const d = disk[i];
    const n = length[i];
    const c = chunk[i];
    const a = at[i];
    if (!Number.isSafeInteger(d) || !Number.isSafeInteger(n) || n <= 0 || d < end || d + n > m.virtualSize) {
      throw bad(`range ${i} is out of order or outside the disk`, d);
    }
    if (!Number.isInteger(c) || c < 0 || c >= m.chunks.length || !Number.isSafeInteger(a) || a < 0) {
      throw bad(`range ${i} names no chunk`, d);
    }
    if (a + n > m.chunkLengths[c]) throw bad(`range ${i} runs past its chunk`, d);
    end = d + n;
  }
}
