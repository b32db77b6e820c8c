import type { Timestamp } from '../types.js';
import { u16, u32 } from './boot.js';
import { fatTime } from './times.js';

/**
 * FAT directory entries: 32-byte short (8.3) entries, each optionally preceded by VFAT
 * long-name entries (attribute 0x0F) that carry 13 UTF-16 units apiece, in reverse order,
 * and the checksum of the short name they belong to.
 */
export const ATTR = {
  READ_ONLY: 0x01,
  HIDDEN: 0x02,
  SYSTEM: 0x04,
  VOLUME_ID: 0x08,
  DIRECTORY: 0x10,
  ARCHIVE: 0x20,
  LONG_NAME: 0x0f,
} as const;

export interface FatDirEntry {
  /** The long name when present and its checksum matches, else the short name. */
  name: string;
  shortName: string;
  attr: number;
  firstCluster: number;
  size: number;
  /** Byte offset in the directory's content of the short entry. */
  dirOffset: number;
  ctime?: Timestamp;
  mtime?: Timestamp;
  atime?: Timestamp;
}

/** Code page 437, bytes 0x80..0xff (what Linux and most tools assume for short names). */
const CP437_HIGH =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';

function oem(b: number): string {
  return b < 0x80 ? String.fromCharCode(b) : CP437_HIGH[b - 0x80];
}

/** The checksum of an 11-byte short name that each of its long-name entries repeats. */
export function shortNameChecksum(b: Uint8Array, at: number): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + b[at + i]) & 0xff;
  return sum;
}

/** The 8.3 name of a short entry, with the NT lower-case flags (byte 12) applied as Windows and Linux do. */
export function shortName(b: Uint8Array, at: number): string {
  const nt = b[at + 12];
  let base = '';
  for (let i = 0; i < 8; i++) base += oem(i === 0 && b[at] === 0x05 ? 0xe5 : b[at + i]);
  let ext = '';
  for (let i = 8; i < 11; i++) ext += oem(b[at + i]);
  base = base.replace(/ +$/, '');
  ext = ext.replace(/ +$/, '');
  if (nt & 0x08) base = base.toLowerCase();
  if (nt & 0x10) ext = ext.toLowerCase();
  return ext ? `${base}.${ext}` : base;
}

const LFN_UNITS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/**
 * Parse a directory's content. `warn` receives findings (long names whose checksum or
 * sequence does not match, which fall back to the short name). Stops at the first entry
 * whose first byte is 0 (the end mark). The volume label entry is returned apart.
 */
export function parseFatDirectory(
  b: Uint8Array,
  warn: (message: string, dirOffset: number) => void,
): { entries: FatDirEntry[]; label?: string } {
  const entries: FatDirEntry[] = [];
  let label: string | undefined;
  // pending long name: its units by sequence number, checksum and expected count
  let lfn: string[] | undefined;
  let lfnSum = -1;
  let lfnNext = 0;
  let lfnAt = -1;
  for (let at = 0; at + 32 <= b.length; at += 32) {
    const first = b[at];
    if (first === 0) break;
    const attr = b[at + 11];
    if (first === 0xe5) {
      lfn = undefined;
      continue;
    }
    if ((attr & 0x3f) === ATTR.LONG_NAME) {
      const ord = first & 0x3f;
      if (first & 0x40) {
        if (lfn) warn('long-name entries without their short entry', lfnAt);
        if (ord === 0 || ord > 20) {
          lfn = undefined;
          warn(`long-name entry with sequence number ${ord}`, at);
          continue;
        }
        lfn = new Array(ord).fill('');
        lfnSum = b[at + 13];
        lfnNext = ord;
        lfnAt = at;
      } else if (!lfn || ord !== lfnNext || b[at + 13] !== lfnSum) {
        if (lfn) warn('long-name entries out of sequence', at);
        lfn = undefined;
        continue;
      }
      let part = '';
      for (const o of LFN_UNITS) {
        const u = u16(b, at + o);
        if (u === 0 || u === 0xffff) break;
        part += String.fromCharCode(u);
      }
      lfn[ord - 1] = part;
      lfnNext = ord - 1;
      continue;
    }
    const short = shortName(b, at);
    let name = short;
    if (lfn) {
      const sum = shortNameChecksum(b, at);
      if (lfnNext !== 0) warn(`long name of ${JSON.stringify(short)} is missing entries; the short name is used`, at);
      else if (sum !== lfnSum) {
        warn(
          `long-name checksum ${lfnSum} does not match short name ${JSON.stringify(short)} (checksum ${sum}); the short name is used`,
          at,
        );
      } else name = lfn.join('');
      lfn = undefined;
    }
    if (attr & ATTR.VOLUME_ID) {
      if (!(attr & ATTR.DIRECTORY) && label === undefined) label = rawLabel(b, at);
      continue;
    }
    if (first === 0x2e && (short === '.' || short === '..')) continue;
    entries.push(shortEntry(b, at, name, short));
  }
  return { entries, label };
}

function rawLabel(b: Uint8Array, at: number): string {
  let s = '';
  for (let i = 0; i < 11; i++) s += oem(b[at + i]);
  return s.replace(/ +$/, '');
}

/** Parse the one short entry at `at` (for inode lookups by entry offset). */
export function parseShortEntry(b: Uint8Array, at: number): FatDirEntry | undefined {
  const first = b[at];
  const attr = b[at + 11];
  if (first === 0 || first === 0xe5 || (attr & 0x3f) === ATTR.LONG_NAME || attr & ATTR.VOLUME_ID) return undefined;
  return shortEntry(b, at, shortName(b, at));
}

function shortEntry(b: Uint8Array, at: number, name: string, short = name): FatDirEntry {
  return {
    name,
    shortName: short,
    attr: b[at + 11],
    firstCluster: (u16(b, at + 20) << 16) | u16(b, at + 26),
    size: u32(b, at + 28),
    dirOffset: at,
    ctime: fatTime(u16(b, at + 16), u16(b, at + 14), b[at + 13]),
    mtime: fatTime(u16(b, at + 24), u16(b, at + 22)),
    atime: fatTime(u16(b, at + 18), 0),
  };
}
