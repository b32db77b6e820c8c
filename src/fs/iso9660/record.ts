import type { Timestamp } from '../types.js';

/**
 * A directory record: length, extent location and data length (both-endian, little-endian
 * half used), recording time, flags, file identifier and the system use area (SUSP / Rock
 * Ridge) after it. Records never cross a sector; a zero length byte pads to the next one.
 */
export const FLAG = {
  HIDDEN: 0x01,
  DIRECTORY: 0x02,
  ASSOCIATED: 0x04,
  MULTI_EXTENT: 0x80,
} as const;

export interface DirRecord {
  /** Offset of the record inside the buffer it was parsed from. */
  at: number;
  length: number;
  extAttrLength: number;
  extent: number;
  dataLength: number;
  time?: Timestamp;
  flags: number;
  /** Raw file identifier bytes. */
  ident: Uint8Array;
  /** The system use area. */
  sua: Uint8Array;
}

const le32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;

/** The 7-byte recording time: years since 1900, month, day, hour, minute, second, offset (15-minute units). */
export function shortTime(b: Uint8Array, o: number): Timestamp | undefined {
  if (b[o] === 0 && b[o + 1] === 0 && b[o + 2] === 0) return undefined;
  const month = b[o + 1];
  const day = b[o + 2];
  if (month < 1 || month > 12 || day < 1 || day > 31 || b[o + 3] > 23 || b[o + 4] > 59 || b[o + 5] > 60)
    return undefined;
  const ms = Date.UTC(1900 + b[o], month - 1, day, b[o + 3], b[o + 4], b[o + 5]);
  const off = (b[o + 6] << 24) >> 24;
  return { sec: ms / 1000 - off * 15 * 60, nsec: 0 };
}

/** Parse the record at `at`; undefined when its length is 0 (padding to the sector end). Throws on a record that does not fit. */
export function parseRecord(b: Uint8Array, at: number): DirRecord | undefined | 'bad' {
  const length = b[at];
  if (length === 0) return undefined;
  if (length < 34 || at + length > b.length) return 'bad';
  const identLength = b[at + 32];
  if (33 + identLength > length) return 'bad';
  const suaStart = 33 + identLength + (identLength % 2 === 0 ? 1 : 0);
  return {
    at,
    length,
    extAttrLength: b[at + 1],
    extent: le32(b, at + 2),
    dataLength: le32(b, at + 10),
    time: shortTime(b, at + 18),
    flags: b[at + 25],
    ident: b.subarray(at + 33, at + 33 + identLength),
    sua: suaStart < length ? b.subarray(at + suaStart, at + length) : new Uint8Array(0),
  };
}

/** An ISO 9660 file identifier as a name: ";1" version and a trailing "." of an extension-less name removed. */
export function isoName(ident: Uint8Array): string {
  let s = '';
  for (const c of ident) s += String.fromCharCode(c);
  const semi = s.lastIndexOf(';');
  if (semi >= 0 && /^\d*$/.test(s.slice(semi + 1))) s = s.slice(0, semi);
  if (s.endsWith('.')) s = s.slice(0, -1);
  return s;
}

/** A Joliet identifier: UCS-2 big-endian, version suffix removed the same way. */
export function jolietName(ident: Uint8Array): string {
  let s = '';
  for (let i = 0; i + 1 < ident.length; i += 2) s += String.fromCharCode((ident[i] << 8) | ident[i + 1]);
  const semi = s.lastIndexOf(';');
  if (semi >= 0 && /^\d*$/.test(s.slice(semi + 1))) s = s.slice(0, semi);
  if (s.endsWith('.')) s = s.slice(0, -1);
  return s;
}

/** "." and ".." are single bytes 0 and 1. */
export const isSelfOrParent = (r: DirRecord) => r.ident.length === 1 && (r.ident[0] === 0 || r.ident[0] === 1);
