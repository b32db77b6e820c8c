/**
 * NTFS on-disk structures, declared once: boot sector, MFT record header with its update
 * sequence array (fixups), attribute headers (resident and non-resident), runlists, and the
 * attribute values the reader uses ($STANDARD_INFORMATION, $FILE_NAME, $ATTRIBUTE_LIST,
 * $INDEX_ROOT / INDX blocks, $REPARSE_POINT, $VOLUME_INFORMATION).
 */
import { StrataError } from '../../util/errors.js';
import type { Timestamp } from '../types.js';

export const u16 = (b: Uint8Array, o: number) => b[o] | (b[o + 1] << 8);
export const u32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
export const u48 = (b: Uint8Array, o: number) => u32(b, o) + u16(b, o + 4) * 2 ** 32;
export const u64 = (b: Uint8Array, o: number) => u32(b, o) + u32(b, o + 4) * 2 ** 32;
const big64 = (b: Uint8Array, o: number) => BigInt(u32(b, o)) | (BigInt(u32(b, o + 4)) << 32n);

export const ATTR = {
  STANDARD_INFORMATION: 0x10,
  ATTRIBUTE_LIST: 0x20,
  FILE_NAME: 0x30,
  SECURITY_DESCRIPTOR: 0x50,
  VOLUME_NAME: 0x60,
  VOLUME_INFORMATION: 0x70,
  DATA: 0x80,
  INDEX_ROOT: 0x90,
  INDEX_ALLOCATION: 0xa0,
  BITMAP: 0xb0,
  REPARSE_POINT: 0xc0,
  END: 0xffffffff,
} as const;

export const FILE_ATTR = {
  READONLY: 1,
  HIDDEN: 2,
  SYSTEM: 4,
  DIRECTORY: 0x10,
  SPARSE: 0x200,
  REPARSE: 0x400,
  COMPRESSED: 0x800,
  ENCRYPTED: 0x4000,
};
export const REPARSE_TAG = { SYMLINK: 0xa000000c, MOUNT_POINT: 0xa0000003, LX_SYMLINK: 0xa000001d };

const fail = (file: string, structure: string, offset: number, message: string) =>
  new StrataError('CORRUPT', message, { file, structure, offset });

// ---------------------------------------------------------------- boot sector

export interface NtfsBoot {
  bytesPerSector: number;
  clusterSize: number;
  totalSectors: number;
  totalBytes: number;
  clusters: number;
  mftLcn: number;
  mftMirrLcn: number;
  recordSize: number;
  indexBlockSize: number;
  serial: string;
}

export const looksLikeNtfs = (b: Uint8Array) =>
  b.length >= 512 && String.fromCharCode(...b.subarray(3, 11)) === 'NTFS    ' && b[510] === 0x55 && b[511] === 0xaa;

/** Sizes coded as "clusters per X": positive = clusters, negative = 2^-n bytes. */
function clustersOrShift(v: number, clusterSize: number): number {
  const s = v > 127 ? v - 256 : v;
  return s > 0 ? s * clusterSize : s < 0 && s >= -31 ? 2 ** -s : 0;
}

export function parseBoot(b: Uint8Array, file: string): NtfsBoot {
  const where = 'NTFS boot sector';
  if (!looksLikeNtfs(b)) throw fail(file, where, 3, 'no "NTFS    " OEM id and 55 AA signature');
  const bytesPerSector = u16(b, 11);
  if (![256, 512, 1024, 2048, 4096].includes(bytesPerSector))
    throw fail(file, where, 11, `bytes per sector ${bytesPerSector}`);
  const spc = b[13];
  const spcBytes = spc <= 0x80 ? spc : 2 ** (256 - spc);
  const clusterSize = bytesPerSector * spcBytes;
  if (!clusterSize || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0)
    throw fail(file, where, 13, `sectors per cluster ${spc}`);
  const totalSectors = u64(b, 40);
  const mftLcn = u64(b, 48);
  const mftMirrLcn = u64(b, 56);
  const recordSize = clustersOrShift(b[64], clusterSize);
  const indexBlockSize = clustersOrShift(b[68], clusterSize);
  if (recordSize < 512 || recordSize > 65536 || recordSize & (recordSize - 1))
    throw fail(file, where, 64, `MFT record size ${recordSize}`);
  if (indexBlockSize < 512 || indexBlockSize > 65536 || indexBlockSize & (indexBlockSize - 1))
    throw fail(file, where, 68, `index block size ${indexBlockSize}`);
  const totalBytes = totalSectors * bytesPerSector;
  const clusters = Math.floor(totalBytes / clusterSize);
  if (mftLcn >= clusters) throw fail(file, where, 48, `MFT cluster ${mftLcn} past the volume (${clusters} clusters)`);
  const serial = u64(b, 72).toString(16).toUpperCase().padStart(16, '0');
  return {
    bytesPerSector,
    clusterSize,
    totalSectors,
    totalBytes,
    clusters,
    mftLcn,
    mftMirrLcn,
    recordSize,
    indexBlockSize,
    serial,
  };
}

// ---------------------------------------------------------------- fixups

/**
 * Apply the update sequence array of a multi-sector record (FILE or INDX) in place: the last
 * two bytes of every 512-byte stride must equal the update sequence number and are replaced
 * by the saved values.
 */
export function applyFixups(b: Uint8Array, magic: string, file: string, structure: string, offset: number): void {
  const got = String.fromCharCode(b[0], b[1], b[2], b[3]);
  if (got !== magic) throw fail(file, structure, offset, `magic ${JSON.stringify(got)}, expected ${magic}`);
  const usaOfs = u16(b, 4);
  const usaCount = u16(b, 6);
  if (usaCount < 1 || usaOfs + usaCount * 2 > b.length || (usaCount - 1) * 512 > b.length)
    throw fail(
      file,
      structure,
      offset + 4,
      `update sequence array of ${usaCount} at ${usaOfs} does not fit ${b.length} bytes`,
    );
  const usn = u16(b, usaOfs);
  for (let i = 1; i < usaCount; i++) {
    const end = i * 512 - 2;
    if (u16(b, end) !== usn)
      throw fail(file, structure, offset + end, `fixup mismatch in sector ${i - 1} (torn write or corruption)`);
    b[end] = b[usaOfs + 2 * i];
    b[end + 1] = b[usaOfs + 2 * i + 1];
  }
}

// ---------------------------------------------------------------- MFT record and attributes

export interface Run {
  vcn: number;
  /** Cluster number on the volume, or -1 for a sparse run (a hole). */
  lcn: number;
  length: number;
}

export interface Attribute {
  type: number;
  name: string;
  flags: number;
  id: number;
  resident: boolean;
  /** Resident: the value, and where it lies on the volume. */
  value?: Uint8Array;
  valueOffset?: number;
  valueVolumeOffset?: number;
  startVcn: number;
  lastVcn: number;
  runs: Run[];
  allocatedSize: number;
  dataSize: number;
  initializedSize: number;
  /** Compression unit as a power of two of clusters (0 = not compressed). */
  compressionUnit: number;
  /** The MFT record holding this attribute. */
  record: number;
}

export interface MftRecord {
  number: number;
  flags: number; // 1 in use, 2 directory
  sequence: number;
  linkCount: number;
  baseRecord: number;
  attributes: Attribute[];
}

export function decodeRunlist(
  b: Uint8Array,
  at: number,
  end: number,
  startVcn: number,
  clusters: number,
  file: string,
  structure: string,
): Run[] {
  const runs: Run[] = [];
  let vcn = startVcn;
  let lcn = 0;
  let p = at;
  while (p < end && b[p] !== 0) {
    const lenBytes = b[p] & 15;
    const offBytes = b[p] >> 4;
    if (lenBytes === 0 || lenBytes > 8 || offBytes > 8 || p + 1 + lenBytes + offBytes > end)
      throw fail(file, structure, p, `runlist header byte 0x${b[p].toString(16)} (or the run overflows the attribute)`);
    let len = 0;
    for (let i = lenBytes - 1; i >= 0; i--) len = len * 256 + b[p + 1 + i];
    if (len <= 0 || len > clusters) throw fail(file, structure, p, `run of ${len} clusters on a volume of ${clusters}`);
    if (offBytes === 0) runs.push({ vcn, lcn: -1, length: len });
    else {
      let d = 0;
      for (let i = offBytes - 1; i >= 0; i--) d = d * 256 + b[p + 1 + lenBytes + i];
      if (b[p + lenBytes + offBytes] & 0x80) d -= 2 ** (8 * offBytes);
      lcn += d;
      if (lcn < 0 || lcn + len > clusters)
        throw fail(
          file,
          structure,
          p,
          `run of ${len} clusters at cluster ${lcn} lies outside the volume (${clusters} clusters)`,
        );
      runs.push({ vcn, lcn, length: len });
    }
    vcn += len;
    p += 1 + lenBytes + offBytes;
  }
  return runs;
}

const NAME_UNITS = new Uint16Array(256);

/**
 * UTF-16LE code units as a string, unpaired surrogates kept (as Windows keeps them; a
 * TextDecoder would turn them into U+FFFD). Names (at most 255 units) go through one
 * fromCharCode call instead of a string built a character at a time.
 */
function utf16(b: Uint8Array, at: number, chars: number): string {
  if (chars > NAME_UNITS.length) {
    let s = '';
    for (let i = 0; i < chars; i++) s += String.fromCharCode(u16(b, at + 2 * i));
    return s;
  }
  for (let i = 0; i < chars; i++) NAME_UNITS[i] = b[at + 2 * i] | (b[at + 2 * i + 1] << 8);
  return String.fromCharCode.apply(null, NAME_UNITS.subarray(0, chars) as unknown as number[]);
}

/** Parse a FILE record whose fixups are applied. */
export function parseRecord(b: Uint8Array, number: number, clusters: number, file: string, offset: number): MftRecord {
  const structure = `MFT record ${number}`;
  const flags = u16(b, 22);
  const first = u16(b, 20);
  const used = Math.min(u32(b, 24), b.length);
  const rec: MftRecord = {
    number,
    flags,
    sequence: u16(b, 16),
    linkCount: u16(b, 18),
    baseRecord: u48(b, 32),
    attributes: [],
  };
  if (first < 24 || first >= b.length) throw fail(file, structure, offset + 20, `first attribute offset ${first}`);
  let p = first;
  while (p + 8 <= used) {
    const type = u32(b, p);
    if (type === ATTR.END) break;
    const len = u32(b, p + 4);
    if (len < 16 || p + len > used || len & 7)
      throw fail(file, structure, offset + p, `attribute 0x${type.toString(16)} of length ${len}`);
    const nonRes = b[p + 8];
    const nameLen = b[p + 9];
    const nameOff = u16(b, p + 10);
    if (nameLen && nameOff + nameLen * 2 > len)
      throw fail(file, structure, offset + p + 10, 'attribute name past its end');
    const a: Attribute = {
      type,
      name: nameLen ? utf16(b, p + nameOff, nameLen) : '',
      flags: u16(b, p + 12),
      id: u16(b, p + 14),
      resident: nonRes === 0,
      startVcn: 0,
      lastVcn: -1,
      runs: [],
      allocatedSize: 0,
      dataSize: 0,
      initializedSize: 0,
      compressionUnit: 0,
      record: number,
    };
    if (nonRes === 0) {
      const vlen = u32(b, p + 16);
      const voff = u16(b, p + 20);
      if (voff + vlen > len)
        throw fail(file, structure, offset + p + 16, `resident value of ${vlen} bytes at ${voff} past the attribute`);
      a.value = b.subarray(p + voff, p + voff + vlen); // a view: the record's bytes are not changed after its fixups
      a.valueOffset = p + voff;
      a.valueVolumeOffset = offset + p + voff;
      a.dataSize = a.initializedSize = a.allocatedSize = vlen;
    } else {
      if (len < 64) throw fail(file, structure, offset + p, 'non-resident attribute header too short');
      a.startVcn = u64(b, p + 16);
      a.lastVcn = u64(b, p + 24);
      const rlOff = u16(b, p + 32);
      a.compressionUnit = u16(b, p + 34);
      a.allocatedSize = u64(b, p + 40);
      a.dataSize = u64(b, p + 48);
      a.initializedSize = u64(b, p + 56);
      if (rlOff > len) throw fail(file, structure, offset + p + 32, `runlist offset ${rlOff}`);
      a.runs = decodeRunlist(b, p + rlOff, p + len, a.startVcn, clusters, file, structure);
    }
    rec.attributes.push(a);
    p += len;
  }
  return rec;
}

// ---------------------------------------------------------------- attribute values

/** 100 ns ticks since 1601-01-01 UTC, converted exactly. */
export function ntfsTime(b: Uint8Array, o: number): Timestamp {
  const hi = u32(b, o + 4);
  if (hi < 1e9) {
    // ticks = hi * 2^32 + lo, and 2^32 = 429 * 10^7 + 4967296: with hi below 10^9 the rest,
    // hi * 4967296 + lo, stays under 2^53, so plain numbers divide it exactly (no BigInts per
    // file); the epoch offset, 11644473600 s, is whole seconds
    const x = hi * 4967296 + u32(b, o);
    return { sec: hi * 429 + Math.floor(x / 1e7) - 11644473600, nsec: (x % 1e7) * 100 };
  }
  const t = big64(b, o) - 116444736000000000n;
  let sec = t / 10000000n;
  let rem = t % 10000000n;
  if (rem < 0n) {
    rem += 10000000n;
    sec -= 1n;
  }
  return { sec: Number(sec), nsec: Number(rem) * 100 };
}

export interface StandardInformation {
  crtime: Timestamp;
  mtime: Timestamp;
  ctime: Timestamp;
  atime: Timestamp;
  fileAttributes: number;
  ownerId?: number;
  securityId?: number;
}

export function parseStandardInformation(v: Uint8Array): StandardInformation | undefined {
  if (v.length < 48) return undefined;
  return {
    crtime: ntfsTime(v, 0),
    mtime: ntfsTime(v, 8),
    ctime: ntfsTime(v, 16),
    atime: ntfsTime(v, 24),
    fileAttributes: u32(v, 32),
    ownerId: v.length >= 72 ? u32(v, 48) : undefined,
    securityId: v.length >= 72 ? u32(v, 52) : undefined,
  };
}

export const NAMESPACE = { POSIX: 0, WIN32: 1, DOS: 2, WIN32_AND_DOS: 3 };

export interface FileName {
  parent: number;
  name: string;
  namespace: number;
  flags: number;
  dataSize: number;
}

export function parseFileName(v: Uint8Array, file: string, structure: string): FileName {
  if (v.length < 66 || 66 + v[64] * 2 > v.length) throw fail(file, structure, 0, `$FILE_NAME of ${v.length} bytes`);
  return { parent: u48(v, 0), dataSize: u64(v, 48), flags: u32(v, 56), namespace: v[65], name: utf16(v, 66, v[64]) };
}

export interface AttributeListEntry {
  type: number;
  name: string;
  startVcn: number;
  record: number;
  id: number;
}

export function parseAttributeList(v: Uint8Array, file: string, structure: string): AttributeListEntry[] {
  const out: AttributeListEntry[] = [];
  let p = 0;
  while (p + 26 <= v.length) {
    const len = u16(v, p + 4);
    if (len < 26 || p + len > v.length) throw fail(file, structure, p, `attribute list entry of length ${len}`);
    const nameLen = v[p + 6];
    const nameOff = v[p + 7];
    if (nameLen && nameOff + nameLen * 2 > len) throw fail(file, structure, p, 'attribute list name past its entry');
    out.push({
      type: u32(v, p),
      name: nameLen ? utf16(v, p + nameOff, nameLen) : '',
      startVcn: u64(v, p + 8),
      record: u48(v, p + 16),
      id: u16(v, p + 24),
    });
    p += len;
  }
  return out;
}

export interface IndexEntry {
  ref: number;
  key?: FileName;
  subnodeVcn?: number;
}

/**
 * Entries of an index node: the node header is at `hdr` (inside $INDEX_ROOT at 16, inside an
 * INDX block at 24); offsets in it are relative to it.
 */
export function parseIndexNode(
  b: Uint8Array,
  hdr: number,
  file: string,
  structure: string,
  offset: number,
): IndexEntry[] {
  const first = hdr + u32(b, hdr);
  const end = Math.min(hdr + u32(b, hdr + 4), b.length);
  const out: IndexEntry[] = [];
  let p = first;
  while (p + 16 <= end) {
    const len = u16(b, p + 8);
    const keyLen = u16(b, p + 10);
    const flags = u16(b, p + 12);
    if (len < 16 || p + len > end || 16 + keyLen > len)
      throw fail(file, structure, offset + p, `index entry of length ${len}`);
    const e: IndexEntry = { ref: u48(b, p) };
    if (flags & 1) e.subnodeVcn = u64(b, p + len - 8);
    if (!(flags & 2) && keyLen > 0) e.key = parseFileName(b.subarray(p + 16, p + 16 + keyLen), file, structure);
    out.push(e);
    if (flags & 2) break;
    p += len;
  }
  return out;
}

export interface Reparse {
  tag: number;
  target?: string;
}

export function parseReparse(v: Uint8Array): Reparse {
  if (v.length < 8) return { tag: 0 };
  const tag = u32(v, 0);
  if (tag === REPARSE_TAG.SYMLINK || tag === REPARSE_TAG.MOUNT_POINT) {
    const buf = tag === REPARSE_TAG.SYMLINK ? 20 : 16;
    if (v.length < buf) return { tag };
    const so = u16(v, 8);
    const sl = u16(v, 10);
    const po = u16(v, 12);
    const pl = u16(v, 14);
    const take = (o: number, l: number) => (buf + o + l <= v.length ? utf16(v, buf + o, l / 2) : '');
    const print = take(po, pl);
    let target = print || take(so, sl);
    if (target.startsWith('\\??\\')) target = target.slice(4);
    return { tag, target };
  }
  if (tag === REPARSE_TAG.LX_SYMLINK && v.length >= 12)
    return { tag, target: new TextDecoder().decode(v.subarray(12)) };
  return { tag };
}

// ---------------------------------------------------------------- security ($Secure)

/** A SID in its text form, S-R-A-S1-S2-..., from its binary form at `o` (undefined when it does not fit). */
export function sidText(b: Uint8Array, o: number): string | undefined {
  if (o < 0 || o + 8 > b.length || b[o] !== 1) return undefined;
  const n = b[o + 1];
  if (n > 15 || o + 8 + 4 * n > b.length) return undefined;
  let auth = 0;
  for (let i = 2; i < 8; i++) auth = auth * 256 + b[o + i];
  let s = `S-1-${auth}`;
  for (let i = 0; i < n; i++) s += `-${u32(b, o + 8 + 4 * i)}`;
  return s;
}

/** Owner and group SIDs of a self-relative security descriptor. */
export function descriptorOwner(sd: Uint8Array): { owner?: string; group?: string } {
  if (sd.length < 20 || sd[0] !== 1) return {};
  const ownerAt = u32(sd, 4);
  const groupAt = u32(sd, 8);
  return {
    owner: ownerAt ? sidText(sd, ownerAt) : undefined,
    group: groupAt ? sidText(sd, groupAt) : undefined,
  };
}

/** A $Secure:$SII entry: security id -> where its descriptor lies in $Secure:$SDS. */
export interface SiiEntry {
  securityId: number;
  offset: number;
  length: number;
}

/**
 * Entries of a view-index node keyed by security id ($Secure:$SII); the node header at `hdr`
 * as in parseIndexNode. Each entry: data offset and length (u16 at 0 and 2), entry length
 * (8), key length (10), flags (12); key = the id; data = hash, id, $SDS offset (u64), length.
 */
export function parseSiiNode(b: Uint8Array, hdr: number, file: string, structure: string): SiiEntry[] {
  const first = hdr + u32(b, hdr);
  const end = Math.min(hdr + u32(b, hdr + 4), b.length);
  const out: SiiEntry[] = [];
  let p = first;
  while (p + 16 <= end) {
    const len = u16(b, p + 8);
    const flags = u16(b, p + 12);
    if (len < 16 || p + len > end) throw fail(file, structure, p, `index entry of length ${len}`);
    if (flags & 2) break; // the last entry: no key (its subnode is read with the other blocks)
    const dOff = u16(b, p);
    const dLen = u16(b, p + 2);
    if (dLen < 20 || dOff + dLen > len) throw fail(file, structure, p, `$SII entry data of ${dLen} bytes at ${dOff}`);
    out.push({ securityId: u32(b, p + dOff + 4), offset: u64(b, p + dOff + 8), length: u32(b, p + dOff + 16) });
    p += len;
  }
  return out;
}

/**
 * Windows' name collation: each UTF-16 code unit through the volume's $UpCase table
 * (65,536 entries), compared unit by unit. `upcase` undefined: ASCII only.
 */
export function upcaseName(name: string, upcase: Uint16Array | undefined): string {
  let s = '';
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    s += String.fromCharCode(upcase ? upcase[c] : c >= 0x61 && c <= 0x7a ? c - 32 : c);
  }
  return s;
}
