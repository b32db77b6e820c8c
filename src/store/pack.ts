import { StrataError } from '../util/errors.js';

/**
 * A pack: encoded frames back to back, then a header that lists the blobs they hold, then a
 * fixed trailer, so a pack describes itself and the index can be rebuilt from packs alone
 * (restic's layout, without encryption).
 *
 * Format 2 (written since the shared frames of issue 5):
 *
 *   [frame 0][frame 1]...[entry 0]...[entry n-1][trailer]
 *   entry (56 bytes):  digest[32] | type u8 | flags u8 | 0 u16 | frame offset u32 |
 *                      frame encoded length u32 | frame plain length u32 |
 *                      offset in the plain frame u32 | plain length u32
 *   trailer (16 bytes): entry count u32 | header bytes u32 | "STRPACK2"
 *
 * A frame is one zstd frame (flags bit 0) or plain bytes. It holds one blob (chunks of
 * 1 MiB and more) or several small blobs back to back, which then compress together
 * (see packer.ts). Entries are listed frame by frame; the frames tile the blob area.
 * Every blob is still named by the sha256 of its own plain bytes.
 *
 * Format 1 (read, no longer written): one blob per frame, 48-byte entries
 *   digest[32] | type u8 | flags u8 | 0 u16 | encoded length u32 | plain length u32 | 0 u32
 * and the trailer magic "STRPACK1".
 *
 * A pack's name is the sha256 of all its bytes.
 */
export const PACK_MAGIC = 'STRPACK2';
export const PACK_MAGIC_V1 = 'STRPACK1';
export const ENTRY_BYTES = 56;
export const ENTRY_BYTES_V1 = 48;
export const TRAILER_BYTES = 16;
export const FLAG_ZSTD = 1;

export type BlobType = 'data' | 'tree';
const TYPE_CODE: Record<BlobType, number> = { data: 0, tree: 1 };
const TYPE_NAME: BlobType[] = ['data', 'tree'];

/** Where one blob sits: its frame inside the pack, and its bytes inside the decoded frame. */
export interface PackEntry {
  digest: string;
  type: BlobType;
  /** Flags of the frame (FLAG_ZSTD). */
  flags: number;
  /** Offset of the encoded frame inside the pack. */
  offset: number;
  /** Encoded length of the frame. */
  encLength: number;
  /** Plain length of the whole frame. */
  framePlain: number;
  /** Offset of the blob inside the plain frame. */
  at: number;
  /** Plain length of the blob. */
  plainLength: number;
}

/** The header and trailer for blobs whose frames are laid out from offset 0 in entry order. */
export function encodePackHeader(entries: PackEntry[]): Uint8Array {
  const out = new Uint8Array(entries.length * ENTRY_BYTES + TRAILER_BYTES);
  const dv = new DataView(out.buffer);
  entries.forEach((e, i) => {
    const at = i * ENTRY_BYTES;
    out.set(Buffer.from(e.digest, 'hex'), at);
    out[at + 32] = TYPE_CODE[e.type];
    out[at + 33] = e.flags;
    dv.setUint32(at + 36, e.offset, true);
    dv.setUint32(at + 40, e.encLength, true);
    dv.setUint32(at + 44, e.framePlain, true);
    dv.setUint32(at + 48, e.at, true);
    dv.setUint32(at + 52, e.plainLength, true);
  });
  const t = entries.length * ENTRY_BYTES;
  dv.setUint32(t, entries.length, true);
  dv.setUint32(t + 4, entries.length * ENTRY_BYTES, true);
  out.set(Buffer.from(PACK_MAGIC, 'latin1'), t + 8);
  return out;
}

/** Parse the trailer (the last 16 bytes of a pack): its format and how many header bytes precede it. */
export function parsePackTrailer(
  trailer: Uint8Array,
  packSize: number,
  file: string,
): { version: 1 | 2; headerBytes: number } {
  const magic = trailer.length === TRAILER_BYTES ? Buffer.from(trailer.subarray(8)).toString('latin1') : '';
  const where = { file, structure: 'pack trailer', offset: packSize - TRAILER_BYTES };
  if (magic !== PACK_MAGIC && magic !== PACK_MAGIC_V1)
    throw new StrataError('CORRUPT', 'pack trailer magic missing', where);
  const version = magic === PACK_MAGIC ? 2 : 1;
  const size = version === 2 ? ENTRY_BYTES : ENTRY_BYTES_V1;
  const dv = new DataView(trailer.buffer, trailer.byteOffset, TRAILER_BYTES);
  const count = dv.getUint32(0, true);
  const bytes = dv.getUint32(4, true);
  if (bytes !== count * size || bytes + TRAILER_BYTES > packSize) {
    throw new StrataError(
      'CORRUPT',
      `pack header of ${count} entries does not fit the pack (${packSize} bytes)`,
      where,
    );
  }
  return { version, headerBytes: bytes };
}

/**
 * Parse a pack header (entries only, trailer excluded). Frames must tile the blob area in
 * order, every blob must lie inside its frame, and a frame's entries must agree on it.
 */
export function parsePackHeader(header: Uint8Array, blobArea: number, file: string, version: 1 | 2 = 2): PackEntry[] {
  const size = version === 2 ? ENTRY_BYTES : ENTRY_BYTES_V1;
  const n = header.length / size;
  const dv = new DataView(header.buffer, header.byteOffset, header.length);
  const out: PackEntry[] = [];
  let end = 0; // end of the frames seen so far
  let prev: PackEntry | undefined;
  for (let i = 0; i < n; i++) {
    const at = i * size;
    const type = TYPE_NAME[header[at + 32]];
    const where = { file, structure: `pack header entry ${i}`, offset: blobArea + at };
    if (!type) throw new StrataError('CORRUPT', `unknown blob type ${header[at + 32]}`, where);
    const e: PackEntry =
      version === 2
        ? {
            digest: Buffer.from(header.subarray(at, at + 32)).toString('hex'),
            type,
            flags: header[at + 33],
            offset: dv.getUint32(at + 36, true),
            encLength: dv.getUint32(at + 40, true),
            framePlain: dv.getUint32(at + 44, true),
            at: dv.getUint32(at + 48, true),
            plainLength: dv.getUint32(at + 52, true),
          }
        : {
            digest: Buffer.from(header.subarray(at, at + 32)).toString('hex'),
            type,
            flags: header[at + 33],
            offset: end,
            encLength: dv.getUint32(at + 36, true),
            framePlain: dv.getUint32(at + 40, true),
            at: 0,
            plainLength: dv.getUint32(at + 40, true),
          };
    const sameFrame = prev !== undefined && e.offset === prev.offset && version === 2;
    if (
      sameFrame &&
      prev &&
      (e.encLength !== prev.encLength || e.framePlain !== prev.framePlain || e.flags !== prev.flags)
    ) {
      throw new StrataError('CORRUPT', 'entries of one frame disagree on it', where);
    }
    if (!sameFrame && e.offset !== end) throw new StrataError('CORRUPT', 'frames do not follow each other', where);
    if (e.offset + e.encLength > blobArea) throw new StrataError('CORRUPT', 'frame runs past the blob area', where);
    if (e.at + e.plainLength > e.framePlain) throw new StrataError('CORRUPT', 'blob runs past its frame', where);
    if (!(e.flags & FLAG_ZSTD) && e.encLength !== e.framePlain) {
      throw new StrataError('CORRUPT', 'plain frame whose lengths differ', where);
    }
    if (!sameFrame) end = e.offset + e.encLength;
    out.push(e);
    prev = e;
  }
  if (end !== blobArea) {
    throw new StrataError('CORRUPT', `frames cover ${end} bytes but the blob area is ${blobArea}`, {
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
