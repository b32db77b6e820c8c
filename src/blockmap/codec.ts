import { StrataError } from '../util/errors.js';
import { BlockMap, type MapVolume } from './block-map.js';
import { NO_INODE, NO_NAME, NO_VOLUME } from './claims.js';
import { KINDS } from './kinds.js';
import type { MapColumns } from './resolve.js';

/**
 * The saved form of a block map, little-endian:
 *
 *     0   8  magic "STRBMAP\0"
 *     8   4  version (1)
 *    12   4  header length H
 *    16   H  header: UTF-8 JSON {diskSize, count, stringBytes, volumes, warnings}
 *            then zero padding to a multiple of 8
 *     .  8n  start      f64 x count   (sorted, start[0] = 0, each record ends where the next starts)
 *     .  8n  ino        f64 x count   (-1: none)
 *     .  8n  objOffset  f64 x count
 *     .  4n  name       i32 x count   (-1: none, else an index into the strings)
 *     .  2n  volume     u16 x count   (0xffff: none)
 *     .   n  kind       u8  x count   (index into KINDS of version 1)
 *     .      strings: stringBytes of UTF-8, NUL-separated
 *
 * 31 bytes a record. Loading checks every field against the rest (bounds, order, indexes)
 * and fails with CORRUPT naming the field and its file offset.
 */
export const MAGIC = 'STRBMAP\0';
export const VERSION = 1;
const MAX_HEADER = 16 << 20;

export interface Header {
  diskSize: number;
  count: number;
  stringCount: number;
  stringBytes: number;
  volumes: MapVolume[];
  warnings: string[];
}

const pad8 = (n: number) => (n + 7) & ~7;

export function saveBlockMap(map: BlockMap): Uint8Array {
  const strings = new TextEncoder().encode(map.strings.join('\0'));
  const head = headerBytes({
    diskSize: map.diskSize,
    count: map.count,
    stringCount: map.strings.length,
    stringBytes: strings.length,
    volumes: [...map.volumes],
    warnings: map.warnings,
  });
  const n = map.count;
  const base = head.length;
  const out = new Uint8Array(base + n * 31 + strings.length);
  out.set(head, 0);
  let at = base;
  const put = (a: ArrayBufferView) => {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), at);
    at += a.byteLength;
  };
  put(map.start.subarray(0, n));
  put(map.ino.subarray(0, n));
  put(map.objectOffset.subarray(0, n));
  put(map.name.subarray(0, n));
  put(map.volume.subarray(0, n));
  put(map.kind.subarray(0, n));
  out.set(strings, at);
  return out;
}

/** Magic, version, header length and the header's JSON, zero-padded to a multiple of 8: what precedes the columns. */
export function headerBytes(header: Header): Uint8Array {
  const hj = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(pad8(16 + hj.length));
  const dv = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) out[i] = MAGIC.charCodeAt(i);
  dv.setUint32(8, VERSION, true);
  dv.setUint32(12, hj.length, true);
  out.set(hj, 16);
  return out;
}

/** Where the parts of a saved map lie (byte offsets in the file), from its header. */
export interface MapLayout {
  header: Header;
  /** The first column (start). */
  base: number;
  /** The string table. */
  stringsAt: number;
}

/**
 * Magic, version and header of a saved map of `size` bytes, read through `read(at, length)`
 * (the bytes in memory, or a file read on demand), checked against the size.
 */
export function parseMapHeader(
  read: (at: number, length: number) => Uint8Array,
  size: number,
  file: string,
): MapLayout {
  const bad = (msg: string, structure: string, offset: number) =>
    new StrataError('CORRUPT', msg, { file, structure, offset });
  if (size < 16) throw bad(`${size} bytes is too short for a block map`, 'block map header', 0);
  const first = read(0, 16);
  for (let i = 0; i < 8; i++) {
    if (first[i] !== MAGIC.charCodeAt(i)) throw bad('not a Strata block map (bad magic)', 'block map header', 0);
  }
  const dv = new DataView(first.buffer, first.byteOffset, first.byteLength);
  const version = dv.getUint32(8, true);
  if (version !== VERSION) {
    throw new StrataError('UNSUPPORTED', `block map version ${version} (this Strata reads ${VERSION})`, {
      file,
      structure: 'block map header',
      offset: 8,
    });
  }
  const hl = dv.getUint32(12, true);
  if (hl > MAX_HEADER || 16 + hl > size) throw bad(`header length ${hl} out of bounds`, 'block map header', 12);
  let h: Header;
  try {
    h = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(read(16, hl))) as Header;
  } catch {
    throw bad('header is not valid JSON', 'block map header', 16);
  }
  const { diskSize, count, stringCount, stringBytes, volumes, warnings } = h ?? ({} as Header);
  if (!Number.isSafeInteger(diskSize) || diskSize <= 0) throw bad(`bad disk size ${diskSize}`, 'block map header', 16);
  if (!Number.isSafeInteger(count) || count < 1) throw bad(`bad record count ${count}`, 'block map header', 16);
  if (!Number.isSafeInteger(stringBytes) || stringBytes < 0 || !Number.isSafeInteger(stringCount) || stringCount < 0) {
    throw bad('bad string table size', 'block map header', 16);
  }
  if (!Array.isArray(volumes) || volumes.length >= NO_VOLUME || !volumes.every(isVolume)) {
    throw bad('bad volume table', 'block map header', 16);
  }
  if (!Array.isArray(warnings) || !warnings.every((w) => typeof w === 'string')) {
    throw bad('bad warnings list', 'block map header', 16);
  }
  const base = pad8(16 + hl);
  if (base + count * 31 + stringBytes !== size) {
    throw bad(`size ${size} does not match ${count} records and ${stringBytes} string bytes`, 'block map header', 16);
  }
  return { header: h, base, stringsAt: base + count * 31 };
}

/**
 * Check records [from, from + n) of a saved map, given in `cols` (index 0 is record
 * `from`), against the rest: order, bounds, kind codes, volume and string indexes, inodes,
 * object offsets. CORRUPT names the first bad field and its file offset. `prevStart` is
 * the start of record from-1 (ignored for from = 0).
 */
export function checkRecords(
  cols: Omit<MapColumns, 'count'>,
  from: number,
  n: number,
  prevStart: number,
  layout: MapLayout,
  file: string,
): void {
  const { start, ino, objectOffset, name, volume, kind } = cols;
  const { diskSize, count, stringCount, volumes } = layout.header;
  const base = layout.base;
  const bad = (msg: string, i: number, offset: number) =>
    new StrataError('CORRUPT', msg, { file, structure: `block map record ${i}`, offset });
  const col = (k: number, i: number) => base + k * count * 8 + i * 8;
  for (let j = 0; j < n; j++) {
    const i = from + j;
    if (i === 0 && start[j] !== 0) {
      throw new StrataError('CORRUPT', 'the first record does not start at 0', {
        file,
        structure: 'block map record 0',
        offset: col(0, 0),
      });
    }
    if (i > 0 && !(start[j] > (j > 0 ? start[j - 1] : prevStart))) throw bad('records out of order', i, col(0, i));
    if (!(start[j] < diskSize)) throw bad('record starts past the disk end', i, col(0, i));
    if (kind[j] >= KINDS.length) throw bad(`unknown kind code ${kind[j]}`, i, base + count * 30 + i);
    if (volume[j] !== NO_VOLUME && volume[j] >= volumes.length) {
      throw bad(`volume index ${volume[j]} out of range`, i, base + count * 28 + i * 2);
    }
    if (name[j] !== NO_NAME && (name[j] < 0 || name[j] >= stringCount)) {
      throw bad(`string index ${name[j]} out of range`, i, base + count * 24 + i * 4);
    }
    if (!(ino[j] === NO_INODE || (Number.isSafeInteger(ino[j]) && ino[j] >= 0))) {
      throw bad(`bad inode ${ino[j]}`, i, col(1, i));
    }
    if (!(Number.isSafeInteger(objectOffset[j]) && objectOffset[j] >= 0)) {
      throw bad(`bad object offset ${objectOffset[j]}`, i, col(2, i));
    }
  }
}

export function loadBlockMap(bytes: Uint8Array, file = 'block map'): BlockMap {
  const layout = parseMapHeader((at, length) => bytes.subarray(at, at + length), bytes.length, file);
  const { diskSize, count, stringCount, stringBytes, volumes, warnings } = layout.header;
  let at = layout.base;
  // The columns are views into BYTES when it is a whole buffer of its own at an 8-byte
  // boundary (a large file read: no second copy of a map of millions of records, issue 22);
  // else fresh, aligned copies (a small Node Buffer is a view into a shared pool).
  const own = bytes.byteOffset % 8 === 0 && bytes.byteLength === bytes.buffer.byteLength;
  const take = <T>(make: (b: ArrayBufferLike, at: number) => T, width: number): T => {
    const from = at;
    at += count * width;
    if (own) return make(bytes.buffer, bytes.byteOffset + from);
    const copy = new Uint8Array(count * width);
    copy.set(bytes.subarray(from, from + count * width));
    return make(copy.buffer, 0);
  };
  const start = take((b, o) => new Float64Array(b, o, count), 8);
  const ino = take((b, o) => new Float64Array(b, o, count), 8);
  const objectOffset = take((b, o) => new Float64Array(b, o, count), 8);
  const name = take((b, o) => new Int32Array(b, o, count), 4);
  const volume = take((b, o) => new Uint16Array(b, o, count), 2);
  const kind = take((b, o) => new Uint8Array(b, o, count), 1);
  let strings: string[] = [];
  if (stringCount > 0) {
    try {
      strings = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(at, at + stringBytes)).split('\0');
    } catch {
      throw new StrataError('CORRUPT', 'string table is not valid UTF-8', {
        file,
        structure: 'block map strings',
        offset: at,
      });
    }
  }
  if (strings.length !== stringCount) {
    throw new StrataError('CORRUPT', `string table holds ${strings.length} strings, header says ${stringCount}`, {
      file,
      structure: 'block map strings',
      offset: at,
    });
  }
  checkRecords({ start, ino, objectOffset, name, volume, kind }, 0, count, 0, layout, file);
  return new BlockMap(diskSize, { count, start, kind, volume, ino, name, objectOffset }, strings, volumes, warnings);
}

function isVolume(v: unknown): v is MapVolume {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  const optStr = (x: unknown) => x === undefined || typeof x === 'string';
  const optNum = (x: unknown) => x === undefined || (Number.isSafeInteger(x) && (x as number) > 0);
  return (
    typeof o.id === 'string' &&
    typeof o.scheme === 'string' &&
    typeof o.type === 'string' &&
    optStr(o.content) &&
    optStr(o.fs) &&
    optNum(o.blockSize) &&
    optNum(o.inodeSize)
  );
}
