import { type ByteSource, readExact } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import { cutVolume } from './cut.js';
import type { TableDriver } from './types.js';

/** One entry of a DOS partition table (primary or logical), in bytes. */
export interface MbrPartition {
  /** Linux numbering: "1".."4" by slot, logicals "5", "6", ... in chain order. */
  id: string;
  typeByte: number;
  bootable: boolean;
  kind: 'primary' | 'extended' | 'logical';
  /** Byte offset of the partition on the disk. */
  start: number;
  /** Declared byte length. */
  size: number;
  /** Sector numbers as recorded (absolute on the disk). */
  startSector: number;
  sectors: number;
  /** Byte offset of the table entry that describes it. */
  entryOffset: number;
}

export interface MbrTable {
  /** Disk signature (bytes 440..443) as 0x-hex. */
  diskId: string;
  partitions: MbrPartition[];
  warnings: string[];
  /** Some entry has type 0xEE (protective or hybrid MBR in front of a GPT). */
  hasProtective: boolean;
}

/** At most this many logical partitions (Linux's limit is lower; 128 is plenty). */
export const MAX_LOGICALS = 128;
/** EBRs visited at most (an EBR may hold no data entry, so bound the walk separately). */
const MAX_EBRS = 256;

const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
export const isExtendedType = (t: number) => EXTENDED_TYPES.has(t);

const MBR_TYPE_NAMES: Record<number, string> = {
  1: 'FAT12',
  4: 'FAT16 <32M',
  5: 'Extended',
  6: 'FAT16',
  7: 'HPFS/NTFS/exFAT',
  11: 'W95 FAT32',
  12: 'W95 FAT32 (LBA)',
  14: 'W95 FAT16 (LBA)',
  15: "W95 Ext'd (LBA)",
  17: 'Hidden FAT12',
  18: 'Compaq diagnostics',
  20: 'Hidden FAT16 <32M',
  22: 'Hidden FAT16',
  23: 'Hidden HPFS/NTFS',
  27: 'Hidden W95 FAT32',
  28: 'Hidden W95 FAT32 (LBA)',
  30: 'Hidden W95 FAT16 (LBA)',
  39: 'Hidden NTFS WinRE',
  66: 'SFS',
  128: 'Old Minix',
  129: 'Minix / old Linux',
  130: 'Linux swap / Solaris',
  131: 'Linux',
  132: 'OS/2 hidden or Intel hibernation',
  133: 'Linux extended',
  134: 'NTFS volume set',
  135: 'NTFS volume set',
  136: 'Linux plaintext',
  142: 'Linux LVM',
  165: 'FreeBSD',
  166: 'OpenBSD',
  168: 'Darwin UFS',
  169: 'NetBSD',
  171: 'Darwin boot',
  175: 'HFS / HFS+',
  190: 'Solaris boot',
  191: 'Solaris',
  218: 'Non-FS data',
  222: 'Dell Utility',
  234: 'Linux extended boot',
  238: 'GPT',
  239: 'EFI (FAT-12/16/32)',
  251: 'VMware VMFS',
  252: 'VMware VMKCORE',
  253: 'Linux raid autodetect',
};

export function mbrTypeName(t: number): string {
  return MBR_TYPE_NAMES[t] ?? `Unknown (0x${t.toString(16).padStart(2, '0')})`;
}

export const hexType = (t: number) => `0x${t.toString(16).padStart(2, '0')}`;

interface RawEntry {
  status: number;
  type: number;
  lba: number;
  count: number;
  at: number;
}

function entries(sector: Uint8Array, sectorOffset: number): RawEntry[] {
  const dv = new DataView(sector.buffer, sector.byteOffset, sector.byteLength);
  const out: RawEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    out.push({
      status: sector[e],
      type: sector[e + 4],
      lba: dv.getUint32(e + 8, true),
      count: dv.getUint32(e + 12, true),
      at: sectorOffset + e,
    });
  }
  return out;
}

const hasSignature = (s: Uint8Array) => s[510] === 0x55 && s[511] === 0xaa;

/**
 * Parse a DOS/MBR partition table: the four primary slots, then the EBR chain of the
 * (first) extended partition. Sizes are as declared; the caller checks them against the
 * disk (discover.ts clamps with a warning). A looping or broken EBR chain ends the walk
 * with a warning and keeps the logical partitions found before it.
 */
export async function parseMbr(disk: ByteSource, sectorSize = 512): Promise<MbrTable> {
  const where = { file: disk.name, structure: 'MBR', offset: 0 };
  if (disk.size < 512) throw new StrataError('TRUNCATED', 'disk is smaller than one sector', where);
  const mbr = await readExact(disk, 0, 512, 'MBR');
  if (!hasSignature(mbr)) throw new StrataError('CORRUPT', 'no 0x55AA boot signature', { ...where, offset: 510 });
  const warnings: string[] = [];
  const partitions: MbrPartition[] = [];
  const dv = new DataView(mbr.buffer, mbr.byteOffset, 512);
  const diskId = `0x${dv.getUint32(440, true).toString(16).padStart(8, '0')}`;
  let hasProtective = false;
  let extended: MbrPartition | undefined;
  const prim = entries(mbr, 0);
  for (let i = 0; i < 4; i++) {
    const e = prim[i];
    if (e.type === 0 || e.count === 0) continue;
    if (e.status !== 0 && e.status !== 0x80) {
      warnings.push(`MBR entry ${i + 1} has an invalid status byte 0x${e.status.toString(16)}`);
    }
    if (e.type === 0xee) hasProtective = true;
    const kind = isExtendedType(e.type) ? 'extended' : 'primary';
    const p: MbrPartition = {
      id: String(i + 1),
      typeByte: e.type,
      bootable: e.status === 0x80,
      kind,
      start: e.lba * sectorSize,
      size: e.count * sectorSize,
      startSector: e.lba,
      sectors: e.count,
      entryOffset: e.at,
    };
    partitions.push(p);
    if (kind === 'extended') {
      if (extended) warnings.push(`MBR has more than one extended partition; only entry ${extended.id} is followed`);
      else extended = p;
    }
  }
  if (extended) await walkEbrChain(disk, sectorSize, extended, partitions, warnings);
  return { diskId, partitions, warnings, hasProtective };
}

async function walkEbrChain(
  disk: ByteSource,
  ss: number,
  ext: MbrPartition,
  out: MbrPartition[],
  warnings: string[],
): Promise<void> {
  const extStart = ext.startSector;
  const extEnd = ext.startSector + ext.sectors; // exclusive, in sectors
  const seen = new Set<number>();
  let ebrLba = extStart;
  let next = 5;
  for (let hops = 0; ; hops++) {
    if (hops >= MAX_EBRS) {
      warnings.push(`EBR chain longer than ${MAX_EBRS} links; stopped`);
      return;
    }
    if (seen.has(ebrLba)) {
      warnings.push(
        `EBR chain loops back to sector ${ebrLba} (byte ${ebrLba * ss}); stopped after ${next - 5} logical partitions`,
      );
      return;
    }
    seen.add(ebrLba);
    const at = ebrLba * ss;
    if (at + 512 > disk.size) {
      warnings.push(`EBR at sector ${ebrLba} (byte ${at}) lies past the end of the disk; chain stopped`);
      return;
    }
    const sector = await readExact(disk, at, 512, 'EBR');
    if (!hasSignature(sector)) {
      if (hops > 0) warnings.push(`EBR at byte ${at} has no 0x55AA signature; chain stopped`);
      return;
    }
    let link: number | undefined;
    for (const e of entries(sector, at)) {
      if (e.type === 0 || e.count === 0) continue;
      if (isExtendedType(e.type)) {
        if (link === undefined) link = extStart + e.lba;
        continue;
      }
      if (next - 5 >= MAX_LOGICALS) {
        warnings.push(`more than ${MAX_LOGICALS} logical partitions; the rest are ignored`);
        return;
      }
      const startSector = ebrLba + e.lba;
      const p: MbrPartition = {
        id: String(next++),
        typeByte: e.type,
        bootable: e.status === 0x80,
        kind: 'logical',
        start: startSector * ss,
        size: e.count * ss,
        startSector,
        sectors: e.count,
        entryOffset: e.at,
      };
      if (startSector < extStart || startSector + e.count > extEnd) {
        warnings.push(
          `logical partition ${p.id} (sectors ${startSector}+${e.count}) lies outside its extended partition`,
        );
      }
      out.push(p);
    }
    if (link === undefined) return;
    if (link < extStart || link >= extEnd) {
      warnings.push(`EBR link at byte ${at} points outside the extended partition (sector ${link}); chain stopped`);
      return;
    }
    ebrLba = link;
  }
}

/**
 * MBR as a volume driver: primaries "1".."4" by slot, logicals "5".. in EBR chain order, the
 * extended container listed with flag 'extended' (and never probed for content).
 */
export const mbrDriver: TableDriver = {
  level: 'table',
  kind: 'mbr',
  probe: async (ctx) => ctx.mbrLike,
  async open({ disk, sectorSize, warnings }) {
    const mbr = await parseMbr(disk, sectorSize);
    warnings.push(...mbr.warnings);
    const volumes = mbr.partitions.map((p) => {
      const flags: string[] = [];
      if (p.bootable) flags.push('bootable');
      if (p.kind === 'extended') flags.push('extended');
      if (p.kind === 'logical') flags.push('logical');
      if (p.kind === 'primary') flags.push('primary');
      return cutVolume(disk, warnings, {
        id: p.id,
        scheme: 'mbr',
        type: p.kind === 'extended' ? 'extended' : mbrTypeName(p.typeByte),
        typeCode: hexType(p.typeByte),
        start: p.start,
        size: p.size,
        flags,
        details: { startSector: p.startSector, sectors: p.sectors, entryOffset: p.entryOffset },
      });
    });
    return { diskId: mbr.diskId, volumes };
  },
};
