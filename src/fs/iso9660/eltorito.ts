/**
 * The El Torito boot catalogue: a validation entry (header 1, platform, checksum, 55 AA),
 * the initial/default entry, then section headers (0x90, last 0x91) each followed by
 * their entries. Each entry names a boot image: media emulation, load segment, sector
 * count (512-byte virtual sectors) and its first 2048-byte sector.
 */
export interface BootEntry {
  platform: string;
  bootable: boolean;
  media: string;
  loadSegment: number;
  systemType: number;
  sectorCount: number;
  /** First 2048-byte sector of the boot image. */
  loadRba: number;
}

export interface BootCatalog {
  sector: number;
  validationId: string;
  checksumOk: boolean;
  entries: BootEntry[];
}

const le16 = (b: Uint8Array, o: number) => b[o] | (b[o + 1] << 8);
const le32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;

const PLATFORMS: Record<number, string> = { 0: 'x86', 1: 'PowerPC', 2: 'Mac', 239: 'EFI' }; // 239 = 0xEF;
const MEDIA = ['no emulation', '1.2M floppy', '1.44M floppy', '2.88M floppy', 'hard disk'];

function entry(b: Uint8Array, o: number, platform: number): BootEntry {
  return {
    platform: PLATFORMS[platform] ?? `0x${platform.toString(16)}`,
    bootable: b[o] === 0x88,
    media: MEDIA[b[o + 1] & 0x0f] ?? `type ${b[o + 1] & 0x0f}`,
    loadSegment: le16(b, o + 2),
    systemType: b[o + 4],
    sectorCount: le16(b, o + 6),
    loadRba: le32(b, o + 8),
  };
}

/** Parse a catalogue sector; undefined when the validation entry is missing. Bounded by the sector. */
export function parseBootCatalog(b: Uint8Array, sector: number): BootCatalog | undefined {
  if (b.length < 64 || b[0] !== 1 || b[30] !== 0x55 || b[31] !== 0xaa) return undefined;
  let sum = 0;
  for (let i = 0; i < 32; i += 2) sum = (sum + le16(b, i)) & 0xffff;
  const validationId = String.fromCharCode(...b.subarray(4, 28))
    .replace(/[\0\s]+$/, '')
    .replace(/[^\x20-\x7e]/g, '?');
  const entries: BootEntry[] = [entry(b, 32, b[1])];
  for (let o = 64; o + 32 <= b.length; ) {
    const h = b[o];
    if (h !== 0x90 && h !== 0x91) break;
    const platform = b[o + 1];
    const n = le16(b, o + 2);
    o += 32;
    for (let k = 0; k < n && o + 32 <= b.length; k++, o += 32) {
      if (b[o] === 0x44) continue; // extension entry
      entries.push(entry(b, o, platform));
    }
    if (h === 0x91) break;
  }
  return { sector, validationId, checksumOk: sum === 0, entries };
}
