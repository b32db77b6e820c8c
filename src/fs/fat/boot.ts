import { StrataError } from '../../util/errors.js';

/**
 * The boot sector of a FAT12/16/32 volume (the BIOS parameter block) or of an exFAT volume,
 * reduced to the geometry every other structure is found by. All offsets are bytes from
 * the start of the volume.
 */
export type FatVariant = 'fat12' | 'fat16' | 'fat32' | 'exfat';

export interface FatGeometry {
  variant: FatVariant;
  bytesPerSector: number;
  sectorsPerCluster: number;
  clusterSize: number;
  reservedSectors: number;
  numFats: number;
  /** Byte offset and length of the first FAT; the others follow back to back. */
  fatOffset: number;
  fatBytes: number;
  /** FAT12/16: the fixed root directory region (0 bytes on FAT32/exFAT). */
  rootDirOffset: number;
  rootDirBytes: number;
  /** Byte offset of cluster 2. */
  heapOffset: number;
  /** Number of data clusters (valid cluster numbers are 2 .. clusterCount + 1). */
  clusterCount: number;
  /** FAT32/exFAT: first cluster of the root directory. */
  rootCluster: number;
  /** Bytes the file system spans (total sectors times sector size). */
  totalBytes: number;
  volumeId: number;
  /** The label in the BPB (FAT12/16/32), trimmed; exFAT keeps it in the root directory. */
  bpbLabel?: string;
  oemName: string;
  /** FAT32: FSInfo and backup boot sector numbers (0 = none). */
  fsInfoSector: number;
  backupBootSector: number;
  /** FAT32: FAT mirroring flags (bit 7 set: only FAT number `flags & 15` is active). exFAT: volume flags. */
  flags: number;
  /** exFAT: file-system revision (major.minor) and percent in use (0xff: unknown). */
  revision?: string;
  percentInUse?: number;
}

const u16 = (b: Uint8Array, o: number) => b[o] | (b[o + 1] << 8);
const u32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
const u64 = (b: Uint8Array, o: number) => u32(b, o) + u32(b, o + 4) * 2 ** 32;
const ascii = (b: Uint8Array, o: number, n: number) => String.fromCharCode(...b.subarray(o, o + n));
const pow2 = (x: number) => x > 0 && (x & (x - 1)) === 0;

/** Recognise a FAT12/16/32 boot sector: jump, signature, a file-system type string, a media byte and a sane BPB. */
export function looksLikeFat(b: Uint8Array): boolean {
  if (b.length < 512 || b[510] !== 0x55 || b[511] !== 0xaa) return false;
  if (b[0] !== 0xeb && b[0] !== 0xe9) return false;
  if (ascii(b, 3, 8) === 'NTFS    ' || ascii(b, 3, 8) === 'EXFAT   ') return false;
  const bps = u16(b, 11);
  const spc = b[13];
  const fats = b[16];
  const total = u16(b, 19) || u32(b, 32);
  const media = b[21];
  const typed =
    ascii(b, 54, 5) === 'FAT12' ||
    ascii(b, 54, 5) === 'FAT16' ||
    ascii(b, 54, 8) === 'FAT     ' ||
    ascii(b, 82, 5) === 'FAT32';
  if (!typed || (media !== 0xf0 && media < 0xf8)) return false;
  return pow2(bps) && bps >= 512 && bps <= 4096 && pow2(spc) && u16(b, 14) > 0 && fats >= 1 && fats <= 4 && total > 0;
}

export function looksLikeExfat(b: Uint8Array): boolean {
  return b.length >= 512 && ascii(b, 3, 8) === 'EXFAT   ' && b[510] === 0x55 && b[511] === 0xaa;
}

function bad(file: string, message: string, offset = 0): StrataError {
  return new StrataError('CORRUPT', message, { file, structure: 'FAT boot sector (BPB)', offset });
}

/** Parse a FAT12/16/32 BPB. The variant follows from the cluster count, as the specification says. */
export function parseFatBoot(b: Uint8Array, file: string, volumeSize: number): FatGeometry {
  if (!looksLikeFat(b)) throw bad(file, 'no FAT boot sector (signature, jump or BPB fields out of range)');
  const bytesPerSector = u16(b, 11);
  const sectorsPerCluster = b[13];
  const reservedSectors = u16(b, 14);
  const numFats = b[16];
  const rootEntries = u16(b, 17);
  const totalSectors = u16(b, 19) || u32(b, 32);
  const fatSz16 = u16(b, 22);
  const fatSectors = fatSz16 || u32(b, 36);
  if (fatSectors === 0) throw bad(file, 'FAT size is 0', 22);
  const rootDirSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  const firstData = reservedSectors + numFats * fatSectors + rootDirSectors;
  if (firstData >= totalSectors)
    throw bad(file, `data region starts at sector ${firstData}, past the ${totalSectors} sectors`, 14);
  const clusterCount = Math.floor((totalSectors - firstData) / sectorsPerCluster);
  const variant: FatVariant = clusterCount < 4085 ? 'fat12' : clusterCount < 65525 ? 'fat16' : 'fat32';
  if (variant === 'fat32' && (fatSz16 !== 0 || rootEntries !== 0)) {
    throw bad(
      file,
      `${clusterCount} clusters make FAT32, but the BPB has FAT16 fields (root entries ${rootEntries})`,
      17,
    );
  }
  if (variant !== 'fat32' && rootEntries === 0) throw bad(file, `${variant} with no root directory entries`, 17);
  const fatBytes = fatSectors * bytesPerSector;
  const needed =
    variant === 'fat12' ? Math.ceil(((clusterCount + 2) * 3) / 2) : (clusterCount + 2) * (variant === 'fat16' ? 2 : 4);
  if (fatBytes < needed) throw bad(file, `FAT of ${fatBytes} bytes cannot map ${clusterCount} clusters`, 22);
  const ext = variant === 'fat32' ? 64 : 36; // offset of the extended BPB (drive number, signature 0x29 ...)
  const extended = b[ext + 2] === 0x29 || b[ext + 2] === 0x28;
  const label = extended && b[ext + 2] === 0x29 ? ascii(b, ext + 7, 11).replace(/ +$/, '') : undefined;
  const totalBytes = totalSectors * bytesPerSector;
  if (totalBytes > volumeSize) {
    // a truncated image: reading will fail where data is missing; the geometry stands.
  }
  return {
    variant,
    bytesPerSector,
    sectorsPerCluster,
    clusterSize: bytesPerSector * sectorsPerCluster,
    reservedSectors,
    numFats,
    fatOffset: reservedSectors * bytesPerSector,
    fatBytes,
    rootDirOffset: (reservedSectors + numFats * fatSectors) * bytesPerSector,
    rootDirBytes: variant === 'fat32' ? 0 : rootEntries * 32,
    heapOffset: firstData * bytesPerSector,
    clusterCount,
    rootCluster: variant === 'fat32' ? u32(b, 44) : 0,
    totalBytes,
    volumeId: extended ? u32(b, ext + 3) : 0,
    bpbLabel: label === '' || label === 'NO NAME' ? undefined : label,
    oemName: ascii(b, 3, 8)
      .replace(/[^\x20-\x7e]/g, '?')
      .trimEnd(),
    fsInfoSector: variant === 'fat32' ? u16(b, 48) : 0,
    backupBootSector: variant === 'fat32' ? u16(b, 50) : 0,
    flags: variant === 'fat32' ? u16(b, 40) : 0,
  };
}

/** Parse an exFAT main boot sector. */
export function parseExfatBoot(b: Uint8Array, file: string): FatGeometry {
  if (!looksLikeExfat(b)) throw bad(file, 'no exFAT boot sector');
  for (let i = 11; i < 64; i++) {
    if (b[i] !== 0) throw bad(file, 'exFAT boot sector: the must-be-zero BPB area is not zero', i);
  }
  const sectorShift = b[0x6c];
  const clusterShift = b[0x6d];
  if (sectorShift < 9 || sectorShift > 12) throw bad(file, `bytes-per-sector shift ${sectorShift} outside 9..12`, 0x6c);
  if (sectorShift + clusterShift > 25)
    throw bad(file, `cluster size 2^${sectorShift + clusterShift} above 32 MiB`, 0x6d);
  const bps = 1 << sectorShift;
  const spc = 1 << clusterShift;
  const volumeLength = u64(b, 0x48);
  const fatOffset = u32(b, 0x50);
  const fatLength = u32(b, 0x54);
  const heap = u32(b, 0x58);
  const clusterCount = u32(b, 0x5c);
  const rootCluster = u32(b, 0x60);
  const numFats = b[0x6e];
  if (numFats !== 1 && numFats !== 2) throw bad(file, `${numFats} FATs (exFAT has 1 or 2)`, 0x6e);
  if (fatOffset < 24 || fatLength === 0) throw bad(file, `FAT at sector ${fatOffset}, ${fatLength} sectors`, 0x50);
  if (heap < fatOffset + fatLength * numFats) throw bad(file, `cluster heap at sector ${heap} overlaps the FAT`, 0x58);
  if (clusterCount === 0 || clusterCount > 0xfffffff5) throw bad(file, `cluster count ${clusterCount}`, 0x5c);
  if ((clusterCount + 2) * 4 > fatLength * bps)
    throw bad(file, `FAT of ${fatLength} sectors cannot map ${clusterCount} clusters`, 0x54);
  if (heap + clusterCount * spc > volumeLength) throw bad(file, 'the cluster heap ends past the volume length', 0x5c);
  if (rootCluster < 2 || rootCluster > clusterCount + 1)
    throw bad(file, `root directory cluster ${rootCluster} outside the heap`, 0x60);
  return {
    variant: 'exfat',
    bytesPerSector: bps,
    sectorsPerCluster: spc,
    clusterSize: bps * spc,
    reservedSectors: fatOffset,
    numFats,
    fatOffset: fatOffset * bps,
    fatBytes: fatLength * bps,
    rootDirOffset: 0,
    rootDirBytes: 0,
    heapOffset: heap * bps,
    clusterCount,
    rootCluster,
    totalBytes: volumeLength * bps,
    volumeId: u32(b, 0x64),
    oemName: 'EXFAT',
    fsInfoSector: 0,
    backupBootSector: 12,
    flags: u16(b, 0x6a),
    revision: `${b[0x69]}.${String(b[0x68]).padStart(2, '0')}`,
    percentInUse: b[0x70],
  };
}

/**
 * The exFAT boot checksum over sectors 0..10 of a boot region (skipping VolumeFlags and
 * PercentInUse, which change at run time); sector 11 repeats it.
 */
export function exfatBootChecksum(region: Uint8Array, bytesPerSector: number): number {
  let sum = 0;
  const n = bytesPerSector * 11;
  for (let i = 0; i < n; i++) {
    if (i === 106 || i === 107 || i === 112) continue;
    sum = (((sum & 1) !== 0 ? 0x80000000 : 0) + (sum >>> 1) + region[i]) >>> 0;
  }
  return sum;
}

export { u16, u32, u64 };
