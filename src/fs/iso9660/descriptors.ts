import type { Timestamp } from '../types.js';

/**
 * The volume descriptor set: 2048-byte sectors from sector 16, each "<type>CD001<version>",
 * ended by a terminator (type 255). Type 1 is the primary descriptor, type 2 a
 * supplementary one (Joliet when its escape sequences name UCS-2), type 0 a boot record
 * (El Torito). A UDF bridge disc follows the terminator with an extended area: BEA01,
 * NSR02/NSR03, TEA01.
 */
export const SECTOR = 2048;
export const FIRST_DESCRIPTOR = 16;
/** Most descriptors read before giving up on a terminator. */
export const MAX_DESCRIPTORS = 64;

export interface VolumeDescriptor {
  type: number;
  sector: number;
  /** Volume identifier, system identifier (trimmed), sizes. */
  volumeId: string;
  systemId: string;
  volumeSpaceSize: number;
  logicalBlockSize: number;
  /** The root directory record (34 bytes) as stored in the descriptor. */
  rootRecord: Uint8Array;
  /** Joliet level 1..3 for a supplementary descriptor with UCS-2 escape sequences, else 0. */
  joliet: number;
  created?: Timestamp;
  modified?: Timestamp;
  /** The modification date digits as blkid shows them for the UUID ("YYYY-MM-DD-HH-MM-SS-cc"). */
  modifiedId?: string;
  publisher: string;
  preparer: string;
  application: string;
}

export interface BootRecord {
  sector: number;
  systemId: string;
  /** El Torito: the boot catalogue's sector. */
  catalogSector?: number;
}

const le32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
const le16 = (b: Uint8Array, o: number) => b[o] | (b[o + 1] << 8);
const ascii = (b: Uint8Array, o: number, n: number) =>
  String.fromCharCode(...b.subarray(o, o + n)).replace(/[^\x20-\x7e]/g, '?');

export function isDescriptor(b: Uint8Array): boolean {
  return b.length >= SECTOR && ascii(b, 1, 5) === 'CD001';
}

function ucs2be(b: Uint8Array, o: number, n: number): string {
  let s = '';
  for (let i = 0; i + 1 < n; i += 2) s += String.fromCharCode((b[o + i] << 8) | b[o + i + 1]);
  return s;
}

function text(b: Uint8Array, o: number, n: number, joliet: boolean): string {
  return (joliet ? ucs2be(b, o, n) : ascii(b, o, n)).replace(/[\s\0]+$/, '');
}

/** The 17-byte descriptor date ("YYYYMMDDHHMMSScc" + offset in 15-minute units). */
export function longTime(b: Uint8Array, o: number): Timestamp | undefined {
  const s = String.fromCharCode(...b.subarray(o, o + 16));
  if (!/^\d{16}$/.test(s) || s.startsWith('0000')) return undefined;
  const n = (a: number, l: number) => Number(s.slice(a, a + l));
  const ms = Date.UTC(n(0, 4), n(4, 2) - 1, n(6, 2), n(8, 2), n(10, 2), n(12, 2));
  if (!Number.isFinite(ms)) return undefined;
  const off = (b[o + 16] << 24) >> 24;
  return { sec: ms / 1000 - off * 15 * 60, nsec: n(14, 2) * 10_000_000 };
}

export function parseVolumeDescriptor(b: Uint8Array, sector: number): VolumeDescriptor {
  const type = b[0];
  let joliet = 0;
  if (type === 2 && b[88] === 0x25 && b[89] === 0x2f) {
    joliet = b[90] === 0x40 ? 1 : b[90] === 0x43 ? 2 : b[90] === 0x45 ? 3 : 0;
  }
  const j = joliet > 0;
  return {
    type,
    sector,
    systemId: text(b, 8, 32, j),
    volumeId: text(b, 40, 32, j),
    volumeSpaceSize: le32(b, 80),
    logicalBlockSize: le16(b, 128),
    rootRecord: b.slice(156, 156 + 34),
    joliet,
    publisher: text(b, 318, 128, j),
    preparer: text(b, 446, 128, j),
    application: text(b, 574, 128, j),
    created: longTime(b, 813),
    modified: longTime(b, 830),
    modifiedId: dateId(b, 830) ?? dateId(b, 813),
  };
}

function dateId(b: Uint8Array, o: number): string | undefined {
  const s = String.fromCharCode(...b.subarray(o, o + 16));
  if (!/^\d{16}$/.test(s) || /^0+$/.test(s)) return undefined;
  return `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}-${s.slice(8, 10)}-${s.slice(10, 12)}-${s.slice(12, 14)}-${s.slice(14, 16)}`;
}

export function parseBootRecord(b: Uint8Array, sector: number): BootRecord {
  const systemId = ascii(b, 7, 32).replace(/[\s?]+$/, '');
  const r: BootRecord = { sector, systemId };
  if (systemId === 'EL TORITO SPECIFICATION') r.catalogSector = le32(b, 0x47);
  return r;
}

/** UDF's extended-area descriptors ("BEA01", "NSR02", "NSR03", "TEA01") at offset 1 of a sector. */
export function udfStandardId(b: Uint8Array): string | undefined {
  const id = ascii(b, 1, 5);
  return id === 'BEA01' || id === 'NSR02' || id === 'NSR03' || id === 'TEA01' ? id : undefined;
}
