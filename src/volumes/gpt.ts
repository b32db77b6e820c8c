import { type ByteSource, readExact } from '../io/byte-source.js';
import { crc32 } from '../util/crc32.js';
import { StrataError } from '../util/errors.js';
import { cutVolume } from './cut.js';
import type { TableDriver } from './types.js';

/** One used GPT entry, in bytes. */
export interface GptPartition {
  /** Entry index + 1 (Linux numbering, gaps kept). */
  id: string;
  index: number;
  typeGuid: string;
  typeName: string;
  uniqueGuid: string;
  /** First and last LBA as recorded (inclusive). */
  firstLba: number;
  lastLba: number;
  start: number;
  size: number;
  /** The 64-bit attribute field as 16 hex digits (like `sgdisk -i`). */
  attributes: string;
  /** Named attribute bits. */
  attributeFlags: string[];
  name: string;
}

export interface GptHeader {
  lba: number;
  revision: number;
  headerSize: number;
  myLba: number;
  alternateLba: number;
  firstUsableLba: number;
  lastUsableLba: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

export interface GptTable {
  sectorSize: number;
  header: GptHeader;
  /** Which header the table was read from. */
  usedBackup: boolean;
  diskGuid: string;
  partitions: GptPartition[];
  warnings: string[];
}

/** Entry array bounds: UEFI asks for at least 16 KiB; nobody needs more than this. */
export const GPT_MAX_ENTRIES = 16384;
export const GPT_MAX_ARRAY_BYTES = 4 * 1024 * 1024;

const GPT_TYPES: Record<string, string> = {
  'C12A7328-F81F-11D2-BA4B-00A0C93EC93B': 'EFI System',
  '21686148-6449-6E6F-744E-656564454649': 'BIOS boot',
  '024DEE41-33E7-11D3-9D69-0008C781F39F': 'MBR partition scheme',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'Linux LVM',
  'A19D880F-05FC-4D3B-A006-743F0F84911E': 'Linux RAID',
  'CA7D7CCB-63ED-4C53-861C-1742536059CC': 'Linux LUKS',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'Linux root (x86-64)',
  '44479540-F297-41B2-9AF7-D131D5F0458A': 'Linux root (x86)',
  'B921B045-1DF0-41C3-AF44-4C6F280D3FAE': 'Linux root (ARM-64)',
  '69DAD710-2CE4-4E3C-B16C-21A1D49ABED3': 'Linux root (ARM)',
  '72EC70A6-CF74-40E6-BD49-4BDA08E8F224': 'Linux root (RISC-V-64)',
  '8484680C-9521-48C6-9C11-B0720656F69E': 'Linux /usr (x86-64)',
  'B0E01050-EE5F-4390-949A-9101B17104E9': 'Linux /usr (ARM-64)',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux /home',
  '3B8F8425-20E0-4F3B-907F-1A25A76F98E8': 'Linux /srv',
  '4D21B016-B534-45C2-A9FB-5C16E091FD2D': 'Linux /var',
  '7EC6F557-3BC5-4ACA-B293-16EF5DF639D1': 'Linux /var/tmp',
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': 'Linux extended boot',
  '8DA63339-0007-60C0-C436-083AC8230908': 'Linux reserved',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
  'E3C9E316-0B5C-4DB8-817D-F92DF00215AE': 'Microsoft reserved',
  'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC': 'Windows recovery environment',
  '5808C8AA-7E8F-42E0-85D2-E1E90434CFB3': 'Windows LDM metadata',
  'AF9B60A0-1431-4F62-BC68-3311714A69AD': 'Windows LDM data',
  'E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D': 'Windows storage spaces',
  '48465300-0000-11AA-AA11-00306543ECAC': 'Apple HFS+',
  '7C3457EF-0000-11AA-AA11-00306543ECAC': 'Apple APFS',
  '426F6F74-0000-11AA-AA11-00306543ECAC': 'Apple boot',
  '516E7CB4-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD data',
  '83BD6B9D-7F41-11DC-BE0B-001560B84F0F': 'FreeBSD boot',
  '516E7CB6-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD UFS',
  '516E7CBA-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD ZFS',
  '6A898CC3-1DD2-11B2-99A6-080020736631': 'Solaris /usr & Apple ZFS',
  'FE3A2A5D-4F32-41A7-B725-ACCC3285A309': 'ChromeOS kernel',
  '3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC': 'ChromeOS root',
  '9E1A2D38-C612-4316-AA26-8B49521E5A8B': 'PowerPC PReP boot',
  'BFBFAFE7-A34F-448A-9A5B-6213EB736C22': 'Lenovo boot',
};

export function gptTypeName(guid: string): string {
  return GPT_TYPES[guid.toUpperCase()] ?? 'Unknown';
}

const hex = (b: Uint8Array, from: number, to: number, reverse: boolean) => {
  let s = '';
  if (reverse) for (let i = to - 1; i >= from; i--) s += b[i].toString(16).padStart(2, '0');
  else for (let i = from; i < to; i++) s += b[i].toString(16).padStart(2, '0');
  return s;
};

/** A mixed-endian GUID (first three fields little-endian) as upper-case text. */
export function guidAt(b: Uint8Array, at: number): string {
  return [
    hex(b, at, at + 4, true),
    hex(b, at + 4, at + 6, true),
    hex(b, at + 6, at + 8, true),
    hex(b, at + 8, at + 10, false),
    hex(b, at + 10, at + 16, false),
  ]
    .join('-')
    .toUpperCase();
}

const u64 = (dv: DataView, at: number) => {
  const v = dv.getBigUint64(at, true);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
};

/** Why a header at `lba` is not usable, or the parsed header. */
async function readHeader(disk: ByteSource, ss: number, lba: number): Promise<GptHeader | string> {
  const at = lba * ss;
  if (lba < 1 || at + ss > disk.size) return `LBA ${lba} lies outside the disk`;
  const sec = await readExact(disk, at, ss, 'GPT header');
  const dv = new DataView(sec.buffer, sec.byteOffset, sec.byteLength);
  if (String.fromCharCode(...sec.subarray(0, 8)) !== 'EFI PART') return 'no "EFI PART" signature';
  const headerSize = dv.getUint32(12, true);
  if (headerSize < 92 || headerSize > ss) return `header size ${headerSize} is outside 92..${ss}`;
  const stored = dv.getUint32(16, true);
  const copy = new Uint8Array(sec.subarray(0, headerSize));
  copy.fill(0, 16, 20);
  const actual = crc32(copy);
  if (stored !== actual) {
    return `header CRC32 mismatch (stored 0x${stored.toString(16)}, computed 0x${actual.toString(16)})`;
  }
  const h: GptHeader = {
    lba,
    revision: dv.getUint32(8, true),
    headerSize,
    myLba: u64(dv, 24),
    alternateLba: u64(dv, 32),
    firstUsableLba: u64(dv, 40),
    lastUsableLba: u64(dv, 48),
    diskGuid: guidAt(sec, 56),
    entriesLba: u64(dv, 72),
    entryCount: dv.getUint32(80, true),
    entrySize: dv.getUint32(84, true),
    entriesCrc: dv.getUint32(88, true),
  };
  if (h.myLba !== lba) return `header says it is at LBA ${h.myLba}, found at LBA ${lba}`;
  if (h.revision >>> 16 !== 1) return `unsupported revision 0x${h.revision.toString(16)}`;
  if (h.entrySize < 128 || h.entrySize % 8 !== 0 || h.entrySize > 4096) return `bad entry size ${h.entrySize}`;
  if (h.entryCount > GPT_MAX_ENTRIES) return `${h.entryCount} entries exceed the limit of ${GPT_MAX_ENTRIES}`;
  if (h.entryCount * h.entrySize > GPT_MAX_ARRAY_BYTES) return `entry array larger than ${GPT_MAX_ARRAY_BYTES} bytes`;
  if (h.firstUsableLba > h.lastUsableLba)
    return `first usable LBA ${h.firstUsableLba} > last usable ${h.lastUsableLba}`;
  const arrayEnd = h.entriesLba * ss + h.entryCount * h.entrySize;
  if (h.entriesLba < 1 || !Number.isSafeInteger(arrayEnd) || arrayEnd > disk.size) {
    return `entry array at LBA ${h.entriesLba} lies outside the disk`;
  }
  return h;
}

async function readEntries(disk: ByteSource, ss: number, h: GptHeader): Promise<Uint8Array | string> {
  const bytes = await readExact(disk, h.entriesLba * ss, h.entryCount * h.entrySize, 'GPT partition entry array');
  const c = crc32(bytes);
  if (c !== h.entriesCrc) {
    return `partition entry array CRC32 mismatch (stored 0x${h.entriesCrc.toString(16)}, computed 0x${c.toString(16)})`;
  }
  return bytes;
}

/** True when "EFI PART" sits at LBA 1 for this sector size. */
export async function hasGptSignature(disk: ByteSource, ss: number): Promise<boolean> {
  if (disk.size < 2 * ss) return false;
  const b = await disk.read(ss, 8);
  return b.length === 8 && String.fromCharCode(...b) === 'EFI PART';
}

/**
 * Read a GPT: the primary header at LBA 1 and its entry array (both CRC-checked), falling
 * back to the backup header at the last LBA with a warning when the primary is damaged,
 * and warning when the two disagree. Throws CORRUPT when neither copy is usable.
 */
export async function parseGpt(disk: ByteSource, ss: number): Promise<GptTable> {
  const warnings: string[] = [];
  const lastLba = Math.floor(disk.size / ss) - 1;
  const primary = await readHeader(disk, ss, 1);
  let primaryEntries: Uint8Array | string = 'header unusable';
  if (typeof primary !== 'string') primaryEntries = await readEntries(disk, ss, primary);

  const backupLba = typeof primary !== 'string' && primary.alternateLba <= lastLba ? primary.alternateLba : lastLba;
  const backup = await readHeader(disk, ss, backupLba);
  let backupEntries: Uint8Array | string = 'header unusable';
  if (typeof backup !== 'string') backupEntries = await readEntries(disk, ss, backup);

  let header: GptHeader;
  let array: Uint8Array;
  let usedBackup = false;
  if (typeof primary !== 'string' && typeof primaryEntries !== 'string') {
    header = primary;
    array = primaryEntries;
    if (typeof backup === 'string' || typeof backupEntries === 'string') {
      const why = typeof backup === 'string' ? backup : (backupEntries as string);
      warnings.push(`backup GPT header at LBA ${backupLba} is not usable: ${why}`);
    } else {
      const diffs: string[] = [];
      if (backup.diskGuid !== primary.diskGuid) diffs.push('disk GUID');
      if (backup.entriesCrc !== primary.entriesCrc) diffs.push('partition entries');
      if (backup.firstUsableLba !== primary.firstUsableLba || backup.lastUsableLba !== primary.lastUsableLba) {
        diffs.push('usable range');
      }
      if (backup.entryCount !== primary.entryCount || backup.entrySize !== primary.entrySize)
        diffs.push('entry layout');
      if (diffs.length > 0) warnings.push(`primary and backup GPT disagree (${diffs.join(', ')}); using the primary`);
      if (primary.alternateLba !== lastLba) {
        warnings.push(`backup GPT header is at LBA ${primary.alternateLba}, not at the last LBA ${lastLba}`);
      }
    }
  } else if (typeof backup !== 'string' && typeof backupEntries !== 'string') {
    const why = typeof primary === 'string' ? primary : (primaryEntries as string);
    warnings.push(`primary GPT at LBA 1 is damaged (${why}); using the backup header at LBA ${backup.lba}`);
    header = backup;
    array = backupEntries;
    usedBackup = true;
  } else {
    const p = typeof primary === 'string' ? primary : (primaryEntries as string);
    const b = typeof backup === 'string' ? backup : (backupEntries as string);
    throw new StrataError(
      'CORRUPT',
      `GPT primary header unusable (${p}) and backup at LBA ${backupLba} unusable (${b})`,
      {
        file: disk.name,
        structure: 'GPT header',
        offset: ss,
      },
    );
  }
  if (header.lastUsableLba > lastLba) {
    warnings.push(`GPT last usable LBA ${header.lastUsableLba} lies past the disk end (LBA ${lastLba})`);
  }

  const partitions: GptPartition[] = [];
  const dv = new DataView(array.buffer, array.byteOffset, array.byteLength);
  let entryWarnings = 0;
  const warnEntry = (w: string) => {
    if (++entryWarnings <= 32) warnings.push(w);
  };
  for (let i = 0; i < header.entryCount; i++) {
    const e = i * header.entrySize;
    const typeGuid = guidAt(array, e);
    if (typeGuid === '00000000-0000-0000-0000-000000000000') continue;
    const firstLba = u64(dv, e + 32);
    const lastLbaE = u64(dv, e + 40);
    const attrs = dv.getBigUint64(e + 48, true);
    let name = '';
    for (let k = 0; k < 36; k++) {
      const cu = dv.getUint16(e + 56 + k * 2, true);
      if (cu === 0) break;
      name += String.fromCharCode(cu);
    }
    const id = String(i + 1);
    if (lastLbaE < firstLba) {
      warnEntry(`GPT entry ${id}: last LBA ${lastLbaE} is before first LBA ${firstLba}; ignored`);
      continue;
    }
    if (firstLba < header.firstUsableLba || lastLbaE > header.lastUsableLba) {
      warnEntry(`GPT entry ${id} (LBA ${firstLba}..${lastLbaE}) lies outside the usable range`);
    }
    const start = firstLba * ss;
    const size = (lastLbaE - firstLba + 1) * ss;
    partitions.push({
      id,
      index: i,
      typeGuid,
      typeName: gptTypeName(typeGuid),
      uniqueGuid: guidAt(array, e + 16),
      firstLba,
      lastLba: lastLbaE,
      start: Number.isSafeInteger(start) ? start : Number.MAX_SAFE_INTEGER,
      size: Number.isSafeInteger(size) ? size : Number.MAX_SAFE_INTEGER,
      attributes: attrs.toString(16).padStart(16, '0'),
      attributeFlags: attributeFlags(attrs),
      name: fixSurrogates(name),
    });
  }
  if (entryWarnings > 32) warnings.push(`${entryWarnings - 32} more GPT entry warnings`);
  return { sectorSize: ss, header, usedBackup, diskGuid: header.diskGuid, partitions, warnings };
}

function attributeFlags(a: bigint): string[] {
  const out: string[] = [];
  if (a & 1n) out.push('required');
  if (a & 2n) out.push('no-block-io');
  if (a & 4n) out.push('legacy-bios-bootable');
  if (a & (1n << 59n)) out.push('grow-fs');
  if (a & (1n << 60n)) out.push('read-only');
  if (a & (1n << 61n)) out.push('shadow-copy');
  if (a & (1n << 62n)) out.push('hidden');
  if (a & (1n << 63n)) out.push('no-automount');
  return out;
}

/** Replace unpaired UTF-16 surrogates (hostile names) with U+FFFD so the name is valid text. */
function fixSurrogates(s: string): string {
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

/**
 * The logical sector size a GPT says the disk has: 512 or 4096, whichever LBA 1 holds a GPT
 * header at; with a protective MBR but no primary header, where the backup header sits.
 * Undefined when there is no GPT to tell.
 */
export async function gptSectorSize(disk: ByteSource, protective: boolean): Promise<number | undefined> {
  if (await hasGptSignature(disk, 512)) return 512;
  if (await hasGptSignature(disk, 4096)) return 4096;
  return protective ? backupGptSectorSize(disk) : undefined;
}

/** With a protective MBR but no primary GPT header, find which sector size the backup header uses. */
async function backupGptSectorSize(disk: ByteSource): Promise<number | undefined> {
  for (const ss of [512, 4096]) {
    const last = Math.floor(disk.size / ss) - 1;
    if (last < 1) continue;
    const b = await disk.read(last * ss, 8);
    if (b.length === 8 && String.fromCharCode(...b) === 'EFI PART') return ss;
  }
  return undefined;
}

function countNonProtective(sector0: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < 4; i++) {
    const t = sector0[446 + i * 16 + 4];
    if (t !== 0 && t !== 0xee) n++;
  }
  return n;
}

/**
 * GPT as a volume driver: a protective MBR, or a GPT header at LBA 1 where sector 0 is no
 * valid DOS table. The backup header is used with a warning when the primary is damaged;
 * both damaged -> CORRUPT (no MBR fallback behind a protective MBR).
 */
export const gptDriver: TableDriver = {
  level: 'table',
  kind: 'gpt',
  async probe(ctx) {
    const sig = await hasGptSignature(ctx.disk, ctx.sectorSize);
    if (sig && !ctx.protective && ctx.mbrLike) {
      // Like Linux: a valid MBR without a 0xEE entry wins over a GPT signature (a stale GPT
      // left behind by re-partitioning), with a warning.
      ctx.warnings.push('a GPT header exists but the MBR has no protective (0xEE) entry; using the MBR');
      return false;
    }
    return ctx.protective || sig;
  },
  async open({ disk, sector0, mbrLike, protective, sectorSize, warnings }) {
    if (!protective) warnings.push('GPT found without a protective MBR');
    const gpt = await parseGpt(disk, sectorSize);
    warnings.push(...gpt.warnings);
    if (mbrLike) {
      const others = countNonProtective(sector0);
      if (others > 0) warnings.push(`hybrid MBR: ${others} MBR entries besides the protective one are ignored`);
    }
    const volumes = gpt.partitions.map((p) =>
      cutVolume(disk, warnings, {
        id: p.id,
        scheme: 'gpt',
        type: p.typeName,
        typeCode: p.typeGuid,
        start: p.start,
        size: p.size,
        name: p.name,
        uuid: p.uniqueGuid,
        flags: [...p.attributeFlags],
        details: { firstLba: p.firstLba, lastLba: p.lastLba, attributes: p.attributes, index: p.index },
      }),
    );
    return { diskId: gpt.diskGuid, volumes };
  },
};
