import { StrataError } from '../util/errors.js';

export const RPMTAG = { NAME: 1000, VERSION: 1001, RELEASE: 1002, EPOCH: 1003, ARCH: 1022 } as const;

const TYPE_INT32 = 4;
const TYPE_STRING = 6;
const TYPE_STRING_ARRAY = 8;
const TYPE_I18NSTRING = 9;
/** rpm's own limits for one header (lib/header.c: hdrchkTags, hdrchkData). */
const MAX_TAGS = 0xffff;
const MAX_DATA = 256 * 1024 * 1024;

/** The tags of one rpm header we understand: strings (first of an array) and the first INT32. */
export type RpmHeader = Map<number, string | number>;

/**
 * Decode an rpm header blob as rpmdb backends store it (no lead magic): big-endian il
 * (index entries) and dl (data bytes), il 16-byte entries {tag, type, offset, count}, then
 * the data store. Every offset is checked against dl; a bad blob throws CORRUPT naming `where`.
 */
export function decodeRpmHeader(blob: Uint8Array, where: string, wanted: readonly number[]): RpmHeader {
  const bad = (m: string, offset?: number) => new StrataError('CORRUPT', m, { structure: where, offset });
  if (blob.length < 8) throw bad(`header blob of ${blob.length} bytes is too short`);
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const il = dv.getUint32(0);
  const dl = dv.getUint32(4);
  if (il === 0 || il > MAX_TAGS || dl > MAX_DATA) throw bad(`implausible header counts il=${il} dl=${dl}`, 0);
  const dataStart = 8 + il * 16;
  if (dataStart + dl > blob.length) throw bad(`header needs ${dataStart + dl} bytes, blob has ${blob.length}`, 0);
  const want = new Set(wanted);
  const out: RpmHeader = new Map();
  const dec = new TextDecoder('utf-8');
  for (let i = 0; i < il; i++) {
    const e = 8 + i * 16;
    const tag = dv.getUint32(e);
    if (!want.has(tag)) continue;
    const type = dv.getUint32(e + 4);
    const off = dv.getUint32(e + 8);
    const count = dv.getUint32(e + 12);
    if (off >= dl || count === 0) throw bad(`tag ${tag} data offset ${off} outside the ${dl}-byte store`, e);
    const at = dataStart + off;
    if (type === TYPE_STRING || type === TYPE_STRING_ARRAY || type === TYPE_I18NSTRING) {
      const end = blob.indexOf(0, at);
      if (end < 0 || end >= dataStart + dl) throw bad(`tag ${tag} string is not NUL-terminated inside the store`, e);
      out.set(tag, dec.decode(blob.subarray(at, end)));
    } else if (type === TYPE_INT32) {
      if (off % 4 !== 0 || off + 4 > dl) throw bad(`tag ${tag} INT32 at misaligned or outside offset ${off}`, e);
      out.set(tag, dv.getUint32(at));
    }
  }
  return out;
}
