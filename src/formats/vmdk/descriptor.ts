import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';

/** Largest text descriptor we parse (real ones are a few hundred bytes to a few KiB). */
export const MAX_DESCRIPTOR_BYTES = 1 << 20;
/** Most lines and extents a descriptor may have. */
export const MAX_DESCRIPTOR_LINES = 20000;
export const MAX_EXTENTS = 1024;

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';

export interface ExtentLine {
  access: ExtentAccess;
  /** Size in 512-byte sectors. */
  sectors: number;
  /** FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE ... (upper case). */
  type: string;
  file?: string;
  /** Offset in sectors inside the extent file (FLAT). */
  offset: number;
  /** 1-based line number, for errors. */
  line: number;
}

export interface Descriptor {
  /** Keys as written (case kept), values without quotes. */
  fields: Map<string, string>;
  extents: ExtentLine[];
}

const EXTENT_RE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/;
const FIELD_RE = /^([A-Za-z0-9_.]+)\s*=\s*(.*)$/;

/** Look up a field case-insensitively (VMware writes CID, qemu parentCID, some tools lower case). */
export function field(d: Descriptor, key: string): string | undefined {
  const v = d.fields.get(key);
  if (v !== undefined) return v;
  const k = key.toLowerCase();
  for (const [name, value] of d.fields) if (name.toLowerCase() === k) return value;
  return undefined;
}

/**
 * Parse a VMDK text descriptor: `key=value` lines and extent lines
 * (`ACCESS SECTORS TYPE "FILE" [OFFSET]`). Parsing stops at the first NUL (an embedded
 * descriptor is padded with them) and is bounded in bytes, lines and extents.
 */
export function parseDescriptor(bytes: Uint8Array, file: string, offset: number): Descriptor {
  let end = bytes.indexOf(0);
  if (end < 0) end = bytes.length;
  if (end > MAX_DESCRIPTOR_BYTES) {
    throw new StrataError('LIMIT', `descriptor of ${end} bytes exceeds ${MAX_DESCRIPTOR_BYTES}`, {
      file,
      structure: 'vmdk descriptor',
      offset,
    });
  }
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, end).toString('utf8');
  const lines = text.split(/\r?\n|\r/);
  if (lines.length > MAX_DESCRIPTOR_LINES) {
    throw new StrataError('LIMIT', `descriptor has ${lines.length} lines (limit ${MAX_DESCRIPTOR_LINES})`, {
      file,
      structure: 'vmdk descriptor',
      offset,
    });
  }
  const fields = new Map<string, string>();
  const extents: ExtentLine[] = [];
  let total = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = EXTENT_RE.exec(line);
    if (m) {
      const sectors = Number(m[2]);
      const extOffset = m[5] === undefined ? 0 : Number(m[5]);
      if (!Number.isSafeInteger(sectors) || !Number.isSafeInteger(extOffset) || extOffset * 512 > 2 ** 53) {
        throw new StrataError('CORRUPT', `extent line ${i + 1} has an impossible size or offset`, {
          file,
          structure: 'vmdk descriptor extent line',
          offset,
        });
      }
      total += sectors;
      if (total * 512 > LIMITS.maxVirtualSize) {
        throw new StrataError('LIMIT', `extents add up to more than the ${LIMITS.maxVirtualSize}-byte limit`, {
          file,
          structure: 'vmdk descriptor extent line',
          offset,
        });
      }
      if (extents.length >= MAX_EXTENTS) {
        throw new StrataError('LIMIT', `more than ${MAX_EXTENTS} extents`, {
          file,
          structure: 'vmdk descriptor',
          offset,
        });
      }
      extents.push({
        access: m[1] as ExtentAccess,
        sectors,
        type: m[3].toUpperCase(),
        file: m[4],
        offset: extOffset,
        line: i + 1,
      });
      continue;
    }
    const f = FIELD_RE.exec(line);
    if (f) {
      let v = f[2].trim();
      if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
      fields.set(f[1], v);
    }
    // Anything else (unknown syntax) is ignored, as VMware does.
  }
  return { fields, extents };
}

/** Does the start of a file look like a text descriptor? */
export function looksLikeDescriptor(head: Uint8Array, size: number): boolean {
  if (size > MAX_DESCRIPTOR_BYTES || head.length === 0) return false;
  // qemu pads descriptor files with NULs to a sector: look at the text before the first one.
  // The descriptor is that text (qemu and parseDescriptor stop at the NUL). When qemu rewrites
  // a descriptor with a shorter CID it leaves the old text's last bytes after the new NUL
  // ("...\n\0\n\0..."), so the descriptor's own header line is enough; a bare createType
  // line must be followed by padding only (text at the start of a raw disk is not a descriptor).
  let probe = head.subarray(0, Math.min(head.length, 4096));
  const nul = probe.indexOf(0);
  let paddedOnly = true;
  if (nul >= 0) {
    for (let i = nul; i < probe.length && paddedOnly; i++) if (probe[i] !== 0) paddedOnly = false;
    probe = probe.subarray(0, nul);
  }
  const text = Buffer.from(probe.buffer, probe.byteOffset, probe.length).toString('latin1');
  if (text.startsWith('# Disk DescriptorFile')) return true;
  return paddedOnly && /^[ \t]*createType[ \t]*=/m.test(text);
}
