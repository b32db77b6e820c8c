import { StrataError } from '../util/errors.js';

/**
 * A pack: many encoded blobs back to back, then a header that lists them, then a fixed
 * trailer, so a pack describes itself and the index can be rebuilt from packs alone
 * (restic's layout, without encryption).
 *
 *   [blob 0][blob 1]...[entry 0]...[entry n-1][trailer]
 *   entry (48 bytes):  digest[32] | type u8 | flags u8 | 0 u16 | encoded length u32 | plain length u32 | 0 u32
 *   trailer (16 bytes): entry count u32 | header bytes u32 | "STRPACK1"
 *
 * flags bit 0: the blob is one zstd frame (else it is stored plain, when zstd did not help).
 * A pack's name is the sha256 of all its bytes.
 */
export const PACK_MAGIC = 'STRPACK1';
export const ENTRY_BYTES = 48;
export const TRAILER_BYTES = 16;
export const FLAG_ZSTD = 1;

export type BlobType = 'data' | 'tree';
const TYPE_CODE: Record<BlobType, number> = { data: 0, tree: 1 };
const TYPE_NAME: BlobType[] = ['data', 'tree'];

export interface PackEntry {
  digest: string;
  type: BlobType;
  flags: number;
  /** Offset of the encoded blob inside the pack. */
  offset: number;
  encLength: number;
  plainLength: number;
}

/** The header and trailer for blobs laid out in this order from offset 0. */
export function encodePackHeader(entries: PackEntry[]): Uint8Array {
  const out = new Uint8Array(entries.length * ENTRY_BYTES + TRAILER_BYTES);
  const dv = new DataView(out.buffer);
  entries.forEach((e, i) => {
    const at = i * ENTRY_BYTES;
    out.set(Buffer.from(e.digest, 'hex'), at);
    out[at + 32] = TYPE_CODE[e.type];
    out[at + 33] = e.flags;
    dv.setUint32(at + 36, e.encLength, true);
    dv.setUint32(at + 40, e.plainLength, true);
  });
  const t = entries.length * ENTRY_BYTES;
  dv.setUint32(t, entries.length, true);
  dv.setUint32(t + 4, entries.length * ENTRY_BYTES, true);
  out.set(Buffer.from(PACK_MAGIC, 'latin1'), t + 8);
  return out;
}

/** Parse the trailer (the last 16 bytes of a pack): how many header bytes precede it. */
export function parsePackTrailer(trailer: Uint8Array, packSize: number, file: string): number {
  if (trailer.length !== TRAILER_BYTES || Buffer.from(trailer.subarray(8)).toString('latin1') !== PACK_MAGIC) {
    throw new StrataError('CORRUPT', 'pack trailer magic missing', {
      file,
      structure: 'pack trailer',
      offset: packSize - TRAILER_BYTES,
    });
  }
  const dv = new DataView(trailer.buffer, trailer.byteOffset, TRAILER_BYTES);
  const count = dv.getUint32(0, true);
  const bytes = dv.getUint32(4, true);
  if (bytes !== count * ENTRY_BYTES || bytes + TRAILER_BYTES > packSize) {
    throw new StrataError('CORRUPT', `pack header of ${count} entries does not fit the pack (${packSize} bytes)`, {
      file,
      structure: 'pack trailer',
      offset: packSize - TRAILER_BYTES,
    });
  }
  return bytes;
}

/** Parse a pack header (entries only, trailer excluded); offsets are checked against the blob area. */
export function parsePackHeader(header: Uint8Array, blobArea: number, file: string): PackEntry[] {
  const n = header.length / ENTRY_BYTES;
  const dv = new DataView(header.buffer, header.byteOffset, header.length);
  const out: PackEntry[] = [];
  let offset = 0;
  for (let i = 0; i < n; i++) {
    const at = i * ENTRY_BYTES;
    const type = TYPE_NAME[header[at + 32]];
    const encLength = dv.getUint32(at + 36, true);
    const plainLength = dv.getUint32(at + 40, true);
    const where = { file, structure: `pack header entry ${i}`, offset: blobArea + at };
    if (!type) throw new StrataError('CORRUPT', `unknown blob type ${header[at + 32]}`, where);
    if (offset + encLength > blobArea) throw new StrataError('CORRUPT', 'blob runs past the blob area', where);
    out.push({
      digest: Buffer.from(header.subarray(at, at + 32)).toString('hex'),
      type,
      flags: header[at + 33],
      offset,
      encLength,
      plainLength,
    });
    offset += encLength;
  }
  if (offset !== blobArea) {
    throw new StrataError('CORRUPT', `blobs cover ${offset} bytes but the blob area is ${blobArea}`, {
      file,
      structure: 'pack header',
      offset: blobArea,
    });
  }
  return out;
}

export function packKey(id: string): string {
  return `packs/${id.slice(0, 2)}/${id}`;
}
