import { StrataError } from '../util/errors.js';
import { BlockMap, type MapVolume } from './block-map.js';
import { NO_INODE, NO_NAME, NO_VOLUME } from './claims.js';
import { KINDS } from './kinds.js';

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

export function loadBlockMap(bytes: Uint8Array, file = 'block map'): BlockMap {
  const bad = (msg: string, structure: string, offset: number) =>
    new StrataError('CORRUPT', msg, { file, structure, offset });
  if (bytes.length < 16) throw bad(`${bytes.length} bytes is too short for a block map`, 'block map header', 0);
  for (let i = 0; i < 8; i++) {
    if (bytes[i] !== MAGIC.charCodeAt(i)) throw bad('not a Strata block map (bad magic)', 'block map header', 0);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint32(8, true);
  if (version !== VERSION) {
    throw new StrataError('UNSUPPORTED', `block map version ${version} (this Strata reads ${VERSION})`, {
      file,
      structure: 'block map header',
      offset: 8,
    });
  }
  const hl = dv.getUint32(12, true);
  if (hl > MAX_HEADER || 16 + hl > bytes.length) throw bad(`header length ${hl} out of bounds`, 'block map header', 12);
  let h: Header;
  try {
    h = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(16, 16 + hl))) as Header;
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
  if (base + count * 31 + stringBytes !== bytes.length) {
    throw bad(
      `size ${bytes.length} does not match ${count} records and ${stringBytes} string bytes`,
      'block map header',
      16,
    );
  }
  let at = base;
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
      throw bad('string table is not valid UTF-8', 'block map strings', at);
    }
  }
  if (strings.length !== stringCount) {
    throw bad(`string table holds ${strings.length} strings, header says ${stringCount}`, 'block map strings', at);
  }
  const col = (k: number, i: number) => base + k * count * 8 + i * 8;
  if (start[0] !== 0) throw bad('the first record does not start at 0', 'block map record 0', col(0, 0));
  for (let i = 0; i < count; i++) {
    if (i > 0 && !(start[i] > start[i - 1])) throw bad('records out of order', `block map record ${i}`, col(0, i));
    if (!(start[i] < diskSize)) throw bad('record starts past the disk end', `block map record ${i}`, col(0, i));
    if (kind[i] >= KINDS.length) throw bad(`unknown kind code ${kind[i]}`, `block map record ${i}`, at - stringBytes);
    if (volume[i] !== NO_VOLUME && volume[i] >= volumes.length) {
      throw bad(`volume index ${volume[i]} out of range`, `block map record ${i}`, base + count * 28 + i * 2);
    }
    if (name[i] !== NO_NAME && (name[i] < 0 || name[i] >= strings.length)) {
      throw bad(`string index ${name[i]} out of range`, `block map record ${i}`, base + count * 24 + i * 4);
    }
    if (!(ino[i] === NO_INODE || (Number.isSafeInteger(ino[i]) && ino[i] >= 0))) {
      throw bad(`bad inode ${ino[i]}`, `block map record ${i}`, col(1, i));
    }
    if (!(Number.isSafeInteger(objectOffset[i]) && objectOffset[i] >= 0)) {
      throw bad(`bad object offset ${objectOffset[i]}`, `block map record ${i}`, col(2, i));
    }
  }
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
