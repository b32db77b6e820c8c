import type { Timestamp } from '../types.js';
import { longTime } from './descriptors.js';
import { shortTime } from './record.js';

/**
 * System Use Sharing Protocol entries ("XX", length, version, data) in a directory record's
 * system use area and its continuation areas (CE), and the Rock Ridge (RRIP) entries carried
 * in them: PX (mode, links, owner, inode), PN (device), SL (symlink), NM (name), CL/PL/RE
 * (deep directory relocation), TF (times), ZF (zisofs compression).
 */
export interface RockRidge {
  /** Some RRIP entry was present. */
  present: boolean;
  mode?: number;
  nlink?: number;
  uid?: number;
  gid?: number;
  serial?: number;
  rdev?: { major: number; minor: number };
  name?: string;
  /** Symlink target pieces gathered so far; `symlinkDone` once a component ended without CONTINUE. */
  symlink?: string;
  childLink?: number;
  parentLink?: number;
  relocated?: boolean;
  mtime?: Timestamp;
  atime?: Timestamp;
  ctime?: Timestamp;
  crtime?: Timestamp;
  zf?: { algorithm: string; size: number };
  /** A continuation area to read next: sector, offset, length. */
  ce?: { sector: number; offset: number; length: number };
  /** SP seen: bytes to skip at the start of every system use area. */
  spSkip?: number;
  /** ER extension identifiers. */
  extensions?: string[];
}

const le32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
const td = new TextDecoder('utf-8');

/** Internal: symlink component state across SL entries. */
interface SlState {
  parts: string[];
  cur: string;
  open: boolean;
}

export function emptyRockRidge(): RockRidge {
  return { present: false };
}

/**
 * Parse the entries of one area into `rr` (accumulating across continuation areas). Stops at
 * ST, at a length that does not fit, or at the end. Names and symlink components may span
 * several NM/SL entries; `sl` carries that state between calls.
 */
export function parseSusp(a: Uint8Array, rr: RockRidge, sl: SlState = { parts: [], cur: '', open: false }): SlState {
  let at = 0;
  rr.ce = undefined;
  while (at + 4 <= a.length) {
    const sig = String.fromCharCode(a[at], a[at + 1]);
    const len = a[at + 2];
    if (len < 4 || at + len > a.length) break;
    const d = a.subarray(at, at + len);
    switch (sig) {
      case 'SP':
        if (len >= 7 && d[4] === 0xbe && d[5] === 0xef) rr.spSkip = d[6];
        break;
      case 'ST':
        return sl;
      case 'CE':
        if (len >= 28) rr.ce = { sector: le32(d, 4), offset: le32(d, 12), length: le32(d, 20) };
        break;
      case 'ER':
        if (len >= 8) {
          const idLen = d[4];
          (rr.extensions ??= []).push(String.fromCharCode(...d.subarray(8, Math.min(len, 8 + idLen))));
        }
        break;
      case 'RR':
        rr.present = true;
        break;
      case 'PX':
        rr.present = true;
        if (len >= 36) {
          rr.mode = le32(d, 4);
          rr.nlink = le32(d, 12);
          rr.uid = le32(d, 20);
          rr.gid = le32(d, 28);
        }
        if (len >= 44) rr.serial = le32(d, 36);
        break;
      case 'PN':
        rr.present = true;
        if (len >= 20) {
          const hi = le32(d, 4);
          const lo = le32(d, 12);
          rr.rdev =
            hi !== 0
              ? { major: hi, minor: lo }
              : { major: (lo >>> 8) & 0xfff, minor: (lo & 0xff) | ((lo >>> 12) & 0xfff00) };
        }
        break;
      case 'NM': {
        rr.present = true;
        if (len < 5) break;
        const flags = d[4];
        if (flags & 0x6) break; // CURRENT / PARENT: "." and ".."
        rr.name = (rr.name ?? '') + td.decode(d.subarray(5));
        break;
      }
      case 'SL': {
        rr.present = true;
        let p = 5;
        while (p + 2 <= len) {
          const cf = d[p];
          const cl = d[p + 1];
          if (p + 2 + cl > len) break;
          let piece = '';
          if (cf & 0x2) piece = '.';
          else if (cf & 0x4) piece = '..';
          else if (cf & 0x8) piece = '/';
          else piece = td.decode(d.subarray(p + 2, p + 2 + cl));
          if (cf & 0x8) {
            sl.parts.push('');
          } else {
            sl.cur += piece;
            if (!(cf & 1)) {
              sl.parts.push(sl.cur);
              sl.cur = '';
            }
          }
          p += 2 + cl;
        }
        sl.open = (d[4] & 1) !== 0;
        rr.symlink = joinSymlink(sl.parts);
        break;
      }
      case 'CL':
        rr.present = true;
        if (len >= 12) rr.childLink = le32(d, 4);
        break;
      case 'PL':
        rr.present = true;
        if (len >= 12) rr.parentLink = le32(d, 4);
        break;
      case 'RE':
        rr.present = true;
        rr.relocated = true;
        break;
      case 'TF': {
        rr.present = true;
        if (len < 5) break;
        const flags = d[4];
        const long = (flags & 0x80) !== 0;
        const w = long ? 17 : 7;
        let p = 5;
        const next = (): Timestamp | undefined => {
          if (p + w > len) return undefined;
          const t = long ? longTime(d, p) : shortTime(d, p);
          p += w;
          return t;
        };
        if (flags & 1) rr.crtime = next();
        if (flags & 2) rr.mtime = next();
        if (flags & 4) rr.atime = next();
        if (flags & 8) rr.ctime = next();
        break;
      }
      case 'ZF':
        rr.present = true;
        if (len >= 16) rr.zf = { algorithm: String.fromCharCode(d[4], d[5]), size: le32(d, 8) };
        break;
      default:
        break;
    }
    at += len;
  }
  return sl;
}

/** Components to a path: a leading '' (from a ROOT component) makes it absolute. */
function joinSymlink(parts: string[]): string {
  if (parts.length === 0) return '';
  if (parts[0] === '')
    return `/${parts
      .slice(1)
      .filter((p) => p !== '')
      .join('/')}`;
  return parts.filter((p) => p !== '').join('/');
}

export type { SlState };
