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
 *
 * File manifests come in two encodings (both JSON 'tree' blobs): version 1 holds every
 * entry in one blob; version 2 (written when a file system has more than FILE_PART_ENTRIES
 * entries) holds a head naming its parts, each a 'tree' blob of up to FILE_PART_ENTRIES
 * entries in walk order, so that check-in writes them as it goes and diff and listing can
 * read one part at a time (issue 22: a million files in bounded memory). A file system of
 * up to FILE_PART_ENTRIES entries is written as version 1 exactly as before; readers take
 * both. Entries are in walk order: depth first, names sorted by code unit in each
 * directory (compareTreePaths).
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
  /** Birth time, only where the file system keeps one (ext4 and xfs v5 crtime, btrfs otime, NTFS, FAT). */
  crtime?: string;
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

/** Entries per part of a version 2 file manifest (fixed: the digest must not depend on a memory budget). */
export const FILE_PART_ENTRIES = 4096;
export const FILES_PART_KIND = 'strata.files-part';

/** The head of a version 2 file manifest. */
export interface FilesManifestHead {
  kind: typeof FILES_KIND;
  version: 2;
  volume: string;
  fsKind: string;
  fileChunkSize: number;
  /** Entries in all parts. */
  count: number;
  /** Digests of the parts ('tree' blobs), in order. */
  parts: string[];
}

export interface FilesPart {
  kind: typeof FILES_PART_KIND;
  version: 1;
  entries: FileEntry[];
}

/** What a file manifest blob is, without its entries when it has parts. */
export type FilesHead = Omit<FilesManifest, 'entries' | 'version'> & {
  version: 1 | 2;
  count?: number;
  parts?: string[];
  entries?: FileEntry[];
};

/**
 * The order of a walk (depth first, each directory's names sorted by code unit): a path
 * sorts right after its directory and before its directory's next sibling, so "/a/b" <
 * "/a-b" although '-' < '/'. Merge joins of two manifests rely on it.
 */
export function compareTreePaths(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i === a.length) return i === b.length ? 0 : -1;
  if (i === b.length) return 1;
  const ca = a.charCodeAt(i);
  const cb = b.charCodeAt(i);
  // the component that ends first sorts first: '/' is below every other character here
  if (ca === 47) return -1;
  if (cb === 47) return 1;
  return ca < cb ? -1 : 1;
}

/** A part of a version 2 file manifest. */
export function encodeFilesPart(entries: FileEntry[]): Uint8Array {
  return Buffer.from(JSON.stringify({ kind: FILES_PART_KIND, version: 1, entries } satisfies FilesPart));
}

export function encodeFilesHead(h: FilesManifestHead): Uint8Array {
  return Buffer.from(JSON.stringify(h));
}

const V2_PREFIX = Buffer.from(`{"kind":"${'strata.files'}","version":2,`);

/** Whether an encoded file manifest is a version 2 head (by its first bytes: no parse of a large version 1). */
export function isFilesHead(plain: Uint8Array): boolean {
  if (plain.length < V2_PREFIX.length) return false;
  return Buffer.from(plain.buffer, plain.byteOffset, V2_PREFIX.length).equals(V2_PREFIX);
}

function parseJson<T>(plain: Uint8Array, where: string, structure: string): T {
  try {
    return JSON.parse(Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength).toString('utf8')) as T;
  } catch (e) {
    throw new StrataError('CORRUPT', `manifest is not JSON: ${(e as Error).message}`, { file: where, structure });
  }
}

/** A file manifest blob: version 1 (with its entries) or a version 2 head (with its parts). */
export function decodeFilesHead(plain: Uint8Array, where: string): FilesHead {
  const m = parseJson<FilesHead>(plain, where, FILES_KIND);
  if (m?.kind !== FILES_KIND || (m.version !== 1 && m.version !== 2)) {
    throw new StrataError('CORRUPT', `not a ${FILES_KIND} manifest (version 1 or 2)`, {
      file: where,
      structure: FILES_KIND,
    });
  }
  if (m.version === 1 && !Array.isArray(m.entries)) {
    throw new StrataError('CORRUPT', 'file manifest has no entries', { file: where, structure: FILES_KIND });
  }
  if (m.version === 2) {
    const parts = m.parts;
    if (
      !Array.isArray(parts) ||
      !parts.every((d) => typeof d === 'string' && /^[0-9a-f]{64}$/.test(d)) ||
      !Number.isSafeInteger(m.count) ||
      (m.count as number) < 0 ||
      (m.count as number) > parts.length * FILE_PART_ENTRIES
    ) {
      throw new StrataError('CORRUPT', 'file manifest head: bad part list or count', {
        file: where,
        structure: FILES_KIND,
      });
    }
  }
  return m;
}

export function decodeFilesPart(plain: Uint8Array, where: string): FileEntry[] {
  const m = parseJson<FilesPart>(plain, where, FILES_PART_KIND);
  if (m?.kind !== FILES_PART_KIND || m.version !== 1 || !Array.isArray(m.entries)) {
    throw new StrataError('CORRUPT', `not a ${FILES_PART_KIND} (version 1)`, {
      file: where,
      structure: FILES_PART_KIND,
    });
  }
  if (m.entries.length > FILE_PART_ENTRIES) {
    throw new StrataError(
      'LIMIT',
      `file manifest part holds ${m.entries.length} entries (at most ${FILE_PART_ENTRIES})`,
      {
        file: where,
        structure: FILES_PART_KIND,
      },
    );
  }
  return m.entries;
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

/** A layout manifest without its chunk and range columns: what names a version's volumes and file manifests. */
export type LayoutHead = Omit<LayoutManifest, 'chunks' | 'chunkLengths' | 'ranges' | 'version'> & {
  version: 1 | 2;
  /** Version 2: the parts holding the columns, in order. */
  parts?: string[];
  chunkCount?: number;
  rangeCount?: number;
};

/**
 * Layout manifests in parts (version 2; issue 22). A version 1 layout is one JSON blob with
 * every chunk and range: ~100 MB at a million files, built whole in memory by check-in,
 * compressed into a buffer of its own and parsed whole (~250 MB of objects) by whoever reads
 * it back. A layout with more than LAYOUT_PART_ENTRIES chunks or ranges is written as version
 * 2: a head (the scalars, volumes and warnings of version 1, the counts, and its parts'
 * digests) and 'tree' blobs of LAYOUT_PART_ENTRIES chunks and ranges each: part i holds
 * chunks [i*P, (i+1)*P) of the layout's chunk list and ranges [i*P, (i+1)*P) of its range
 * columns (range `chunk` numbers stay layout-wide), so joining the parts gives exactly the
 * version 1 columns. Check-in writes one part at a time; readers that need the columns join
 * them (`readLayout`), and what needs the volumes only reads the head. A layout of at most
 * LAYOUT_PART_ENTRIES chunks and ranges is written as version 1, byte for byte as before.
 */
export const LAYOUT_PART_ENTRIES = 16384;
export const LAYOUT_PART_KIND = 'strata.layout-part';

/** The head of a version 2 layout manifest. */
export interface LayoutManifestHead extends Omit<LayoutManifest, 'version' | 'chunks' | 'chunkLengths' | 'ranges'> {
  version: 2;
  chunkCount: number;
  rangeCount: number;
  /** Entries per part (chunks and ranges). */
  partEntries: number;
  parts: string[];
  /** The disk offset of each part's first range (virtualSize for a part with none): where a reader of one offset looks. */
  partDisk: number[];
}

export interface LayoutPart {
  kind: typeof LAYOUT_PART_KIND;
  version: 1;
  chunks: string[];
  chunkLengths: number[];
  ranges: { disk: number[]; length: number[]; chunk: number[]; at: number[] };
}

const LAYOUT_V2_PREFIX = Buffer.from(`{"kind":"${'strata.layout'}","version":2,`);

/** Whether an encoded layout manifest is a version 2 head (by its first bytes). */
export function isLayoutHead(plain: Uint8Array): boolean {
  if (plain.length < LAYOUT_V2_PREFIX.length) return false;
  return Buffer.from(plain.buffer, plain.byteOffset, LAYOUT_V2_PREFIX.length).equals(LAYOUT_V2_PREFIX);
}

/** A version 2 layout head from its bytes, checked (its part list against its counts). */
export function decodeLayoutV2Head(plain: Uint8Array, where: string): LayoutManifestHead {
  const m = parseJson<LayoutManifestHead>(plain, where, LAYOUT_KIND);
  const bad = (why: string) => new StrataError('CORRUPT', why, { file: where, structure: 'layout manifest head' });
  if (m?.kind !== LAYOUT_KIND || m.version !== 2) throw bad(`not a ${LAYOUT_KIND} manifest (version 2)`);
  if (!Array.isArray(m.volumes)) throw bad('layout manifest has no volume list');
  const P = m.partEntries;
  if (!Number.isSafeInteger(P) || P < 1 || P > 1 << 20) throw bad('bad part size');
  for (const n of [m.chunkCount, m.rangeCount]) if (!Number.isSafeInteger(n) || n < 0) throw bad('bad counts');
  const parts = m.parts;
  if (
    !Array.isArray(parts) ||
    !parts.every((d) => typeof d === 'string' && /^[0-9a-f]{64}$/.test(d)) ||
    parts.length !== Math.ceil(Math.max(m.chunkCount, m.rangeCount) / P)
  ) {
    throw bad('bad part list (its length must follow from the counts)');
  }
  const pd = m.partDisk;
  if (
    !Array.isArray(pd) ||
    pd.length !== parts.length ||
    !pd.every((d, i) => Number.isSafeInteger(d) && d >= (i > 0 ? pd[i - 1] : 0) && d <= m.virtualSize)
  ) {
    throw bad('bad part offsets (one per part, in order, inside the disk)');
  }
  return m;
}

/** Part `i` of the version 2 layout `head`, checked against the head (how many chunks and ranges it holds). */
export function decodeLayoutPart(plain: Uint8Array, head: LayoutManifestHead, i: number, where: string): LayoutPart {
  const m = parseJson<LayoutPart>(plain, where, LAYOUT_PART_KIND);
  const bad = (why: string) => new StrataError('CORRUPT', why, { file: where, structure: LAYOUT_PART_KIND });
  if (m?.kind !== LAYOUT_PART_KIND || m.version !== 1) throw bad(`not a ${LAYOUT_PART_KIND} (version 1)`);
  const P = head.partEntries;
  const chunks = Math.max(0, Math.min(P, head.chunkCount - i * P));
  const ranges = Math.max(0, Math.min(P, head.rangeCount - i * P));
  const r = m.ranges;
  if (
    !Array.isArray(m.chunks) ||
    m.chunks.length !== chunks ||
    !Array.isArray(m.chunkLengths) ||
    m.chunkLengths.length !== chunks ||
    !r ||
    ![r.disk, r.length, r.chunk, r.at].every((a) => Array.isArray(a) && a.length === ranges)
  ) {
    throw bad(`part ${i} must hold ${chunks} chunks and ${ranges} ranges`);
  }
  // what a reader of this part alone can check (a range's end inside its chunk is checked
  // when the chunk is read: its length may sit in another part)
  const next = i + 1 < head.partDisk.length ? head.partDisk[i + 1] : head.virtualSize;
  let end = head.partDisk[i];
  if (ranges > 0 && r.disk[0] !== end) {
    throw new StrataError('CORRUPT', `part ${i} starts at disk offset ${r.disk[0]}, its head says ${end}`, {
      file: where,
      structure: LAYOUT_PART_KIND,
      offset: r.disk[0],
    });
  }
  for (let j = 0; j < ranges; j++) {
    const d = r.disk[j];
    const n = r.length[j];
    const c = r.chunk[j];
    const a = r.at[j];
    if (!Number.isSafeInteger(d) || !Number.isSafeInteger(n) || n <= 0 || d < end || d + n > next) {
      throw new StrataError('CORRUPT', `part ${i} range ${j} is out of order or outside its part of the disk`, {
        file: where,
        structure: LAYOUT_PART_KIND,
        offset: d,
      });
    }
    if (!Number.isInteger(c) || c < 0 || c >= head.chunkCount || !Number.isSafeInteger(a) || a < 0) {
      throw new StrataError('CORRUPT', `part ${i} range ${j} names no chunk`, {
        file: where,
        structure: LAYOUT_PART_KIND,
        offset: d,
      });
    }
    end = d + n;
  }
  return m;
}

/**
 * A whole layout manifest (the object form of version 1) from its blob's bytes: version 1
 * decoded, version 2's parts fetched with `part` and joined (then checked as version 1 is).
 */
export async function readLayout(
  plain: Uint8Array,
  where: string,
  part: (digest: string) => Promise<Uint8Array>,
): Promise<LayoutManifest> {
  if (!isLayoutHead(plain)) return decodeManifest<LayoutManifest>(plain, LAYOUT_KIND, where);
  const head = decodeLayoutV2Head(plain, where);
  const { chunkCount, rangeCount, partEntries, parts, partDisk, warnings, ...rest } = head;
  // the keys in version 1's order (warnings last), so that the object encodes as version 1 would
  const m: LayoutManifest = {
    ...rest,
    version: 1,
    chunks: [],
    chunkLengths: [],
    ranges: { disk: [], length: [], chunk: [], at: [] },
    warnings,
  };
  const push = <T>(to: T[], from: T[]) => {
    for (const x of from) to.push(x);
  };
  for (const [i, d] of parts.entries()) {
    const p = decodeLayoutPart(await part(d), head, i, `${where} part ${i} (${d})`);
    push(m.chunks, p.chunks);
    push(m.chunkLengths, p.chunkLengths);
    for (const k of ['disk', 'length', 'chunk', 'at'] as const) push(m.ranges[k], p.ranges[k]);
  }
  checkLayout(m, where);
  return m;
}

/** The columns decodeLayoutHead steps over (a million-file version holds ~100 MB of them). */
const LAYOUT_COLUMNS = new Set(['chunks', 'chunkLengths', 'ranges']);

/**
 * The head of an encoded layout manifest: every top-level member but the chunk and range
 * columns, which are stepped over byte by byte (strings and nesting respected) and never
 * decoded, so that what only needs the volumes (which file manifest a diff or a search
 * reads) costs a scan of the bytes, not the ~250 MB of objects a whole 1,000,000-file
 * layout becomes. Checks the kind, the version and the volume list; the columns are left
 * to decodeManifest, which reads them.
 */
export function decodeLayoutHead(plain: Uint8Array, where: string): LayoutHead {
  if (isLayoutHead(plain)) return decodeLayoutV2Head(plain, where);
  const b = plain;
  const n = b.length;
  const bad = (why: string, offset?: number) =>
    new StrataError('CORRUPT', `manifest is not JSON: ${why}`, { file: where, structure: LAYOUT_KIND, offset });
  const ws = (i: number) => {
    while (i < n && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++;
    return i;
  };
  /** The end of the string that opens at i (its closing quote + 1). */
  const endOfString = (i: number) => {
    for (let j = i + 1; j < n; j++) {
      const c = b[j];
      if (c === 0x5c) j++;
      else if (c === 0x22) return j + 1;
    }
    throw bad('unterminated string', i);
  };
  /** The end of the value that starts at i: a string, an array or object (nested), or a bare literal. */
  const endOfValue = (i: number) => {
    const c = b[i];
    if (c === 0x22) return endOfString(i);
    if (c === 0x5b || c === 0x7b) {
      let depth = 0;
      for (let j = i; j < n; j++) {
        const d = b[j];
        if (d === 0x22) j = endOfString(j) - 1;
        else if (d === 0x5b || d === 0x7b) depth++;
        else if (d === 0x5d || d === 0x7d) {
          if (--depth === 0) return j + 1;
        }
      }
      throw bad('unterminated array or object', i);
    }
    let j = i;
    while (j < n && b[j] !== 0x2c && b[j] !== 0x7d && b[j] !== 0x5d && b[j] > 0x20) j++;
    if (j === i) throw bad('value expected', i);
    return j;
  };
  const text = (from: number, to: number) => Buffer.from(b.buffer, b.byteOffset + from, to - from).toString('utf8');
  let i = ws(0);
  if (b[i] !== 0x7b) throw bad('not an object', i);
  const kept: string[] = [];
  i = ws(i + 1);
  if (b[i] === 0x7d) i++;
  else {
    for (;;) {
      if (b[i] !== 0x22) throw bad('member name expected', i);
      const keyEnd = endOfString(i);
      const key = text(i, keyEnd);
      i = ws(keyEnd);
      if (b[i] !== 0x3a) throw bad("':' expected", i);
      const from = ws(i + 1);
      const to = endOfValue(from);
      let name: unknown;
      try {
        name = JSON.parse(key);
      } catch {
        throw bad('bad member name', i);
      }
      if (!LAYOUT_COLUMNS.has(name as string)) kept.push(`${key}:${text(from, to)}`);
      i = ws(to);
      if (b[i] === 0x2c) {
        i = ws(i + 1);
        continue;
      }
      if (b[i] === 0x7d) {
        i++;
        break;
      }
      throw bad("',' or '}' expected", i);
    }
  }
  if (ws(i) !== n) throw bad('bytes after the manifest', i);
  let m: LayoutHead;
  try {
    m = JSON.parse(`{${kept.join(',')}}`) as LayoutHead;
  } catch (e) {
    throw bad((e as Error).message);
  }
  if (m?.kind !== LAYOUT_KIND || m.version !== 1) {
    throw new StrataError('CORRUPT', `not a ${LAYOUT_KIND} manifest (version 1)`, {
      file: where,
      structure: LAYOUT_KIND,
    });
  }
  if (!Array.isArray(m.volumes)) {
    throw new StrataError('CORRUPT', 'layout manifest has no volume list', {
      file: where,
      structure: 'layout manifest',
    });
  }
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
