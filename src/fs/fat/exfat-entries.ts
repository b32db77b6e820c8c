import type { Timestamp } from '../types.js';
import { u16, u32, u64 } from './boot.js';
import { exfatTime } from './times.js';

/**
 * exFAT directory entries: 32-byte records whose type byte says what they are. A file is an
 * entry set: a File entry (0x85), a Stream Extension (0xC0) with size and first cluster,
 * then File Name entries (0xC1) of 15 UTF-16 units each, all covered by one checksum. The
 * root directory also holds the allocation bitmap (0x81), up-case table (0x82) and volume
 * label (0x83) entries.
 */
export const ENTRY = {
  END: 0x00,
  BITMAP: 0x81,
  UPCASE: 0x82,
  LABEL: 0x83,
  FILE: 0x85,
  GUID: 0xa0,
  STREAM: 0xc0,
  NAME: 0xc1,
} as const;

export const EXFAT_ATTR_READ_ONLY = 0x01;
export const EXFAT_ATTR_DIRECTORY = 0x10;

export interface ExfatFile {
  name: string;
  attr: number;
  /** Offset in the directory's content of the File entry. */
  dirOffset: number;
  /** Entries in the set (File + secondaries). */
  entries: number;
  firstCluster: number;
  /** DataLength: bytes allocated to the stream; ValidDataLength: bytes written (the rest reads as zeros). */
  size: number;
  validSize: number;
  noFatChain: boolean;
  nameHash: number;
  ctime?: Timestamp;
  mtime?: Timestamp;
  atime?: Timestamp;
}

export interface ExfatSpecial {
  type: 'bitmap' | 'upcase';
  firstCluster: number;
  size: number;
  /** Bitmap: which FAT it belongs to (0/1). Up-case: the table checksum. */
  value: number;
  dirOffset: number;
}

/** The entry-set checksum: every byte of the set except the checksum field itself (bytes 2-3 of the File entry). */
export function entrySetChecksum(b: Uint8Array, at: number, count: number): number {
  let sum = 0;
  const end = at + count * 32;
  for (let i = at; i < end; i++) {
    if (i === at + 2 || i === at + 3) continue;
    sum = ((sum & 1 ? 0x8000 : 0) + (sum >>> 1) + b[i]) & 0xffff;
  }
  return sum;
}

/**
 * Parse a directory's content into files, the critical root entries and the label. `warn`
 * receives sets that are skipped (bad checksum, missing stream or name entries).
 */
export function parseExfatDirectory(
  b: Uint8Array,
  warn: (message: string, dirOffset: number) => void,
): { files: ExfatFile[]; specials: ExfatSpecial[]; label?: string } {
  const files: ExfatFile[] = [];
  const specials: ExfatSpecial[] = [];
  let label: string | undefined;
  for (let at = 0; at + 32 <= b.length; ) {
    const type = b[at];
    if (type === ENTRY.END) break;
    if (!(type & 0x80)) {
      at += 32; // unused or deleted
      continue;
    }
    if (type === ENTRY.BITMAP || type === ENTRY.UPCASE) {
      specials.push({
        type: type === ENTRY.BITMAP ? 'bitmap' : 'upcase',
        firstCluster: u32(b, at + 20),
        size: u64(b, at + 24),
        value: type === ENTRY.BITMAP ? b[at + 1] & 1 : u32(b, at + 4),
        dirOffset: at,
      });
      at += 32;
      continue;
    }
    if (type === ENTRY.LABEL) {
      const n = Math.min(b[at + 1], 11);
      let s = '';
      for (let i = 0; i < n; i++) s += String.fromCharCode(u16(b, at + 2 + 2 * i));
      label = s;
      at += 32;
      continue;
    }
    if (type !== ENTRY.FILE) {
      at += 32; // GUID, TexFAT padding, vendor or stray secondary entries
      continue;
    }
    const secondaries = b[at + 1];
    const count = secondaries + 1;
    const file = parseSet(b, at, count, warn);
    if (file) files.push(file);
    at += file || count >= 3 ? count * 32 : 32;
  }
  return { files, specials, label };
}

/** Parse the entry set of `count` entries starting at `at` (undefined, with a warning, when it is broken). */
export function parseSet(
  b: Uint8Array,
  at: number,
  count: number,
  warn: (message: string, dirOffset: number) => void,
): ExfatFile | undefined {
  if (count < 3 || count > 19) {
    warn(`file entry set with ${count - 1} secondary entries (3..19 entries allowed)`, at);
    return undefined;
  }
  if (at + count * 32 > b.length) {
    warn('file entry set runs past the end of the directory', at);
    return undefined;
  }
  const sum = entrySetChecksum(b, at, count);
  if (sum !== u16(b, at + 2)) {
    warn(`file entry set checksum ${u16(b, at + 2)} does not match the entries (${sum}); the set is skipped`, at);
    return undefined;
  }
  const s = at + 32;
  if (b[s] !== ENTRY.STREAM) {
    warn(`file entry not followed by a stream extension (type 0x${b[s].toString(16)})`, at);
    return undefined;
  }
  const nameLength = b[s + 3];
  let name = '';
  for (let k = 2; k < count && name.length < nameLength; k++) {
    const e = at + k * 32;
    if (b[e] !== ENTRY.NAME) break;
    for (let i = 0; i < 15 && name.length < nameLength; i++) name += String.fromCharCode(u16(b, e + 2 + 2 * i));
  }
  if (name.length !== nameLength || nameLength === 0) {
    warn(`file entry set holds ${name.length} of its ${nameLength} name units`, at);
    return undefined;
  }
  return {
    name,
    attr: u16(b, at + 4),
    dirOffset: at,
    entries: count,
    firstCluster: u32(b, s + 20),
    size: u64(b, s + 24),
    validSize: u64(b, s + 8),
    noFatChain: (b[s + 1] & 2) !== 0,
    nameHash: u16(b, s + 4),
    ctime: exfatTime(u32(b, at + 8), b[at + 20], b[at + 22]),
    mtime: exfatTime(u32(b, at + 12), b[at + 21], b[at + 23]),
    atime: exfatTime(u32(b, at + 16), 0, b[at + 24]),
  };
}
