/** On-disk constants of VHDX ([MS-VHDX]) shared by the reader and the test writer. */

export const KiB = 1024;
export const MiB = 1024 * 1024;

export const FILE_ID_OFFSET = 0;
export const HEADER1_OFFSET = 64 * KiB;
export const HEADER2_OFFSET = 128 * KiB;
export const HEADER_SIZE = 4 * KiB;
export const REGION1_OFFSET = 192 * KiB;
export const REGION2_OFFSET = 256 * KiB;
export const REGION_TABLE_SIZE = 64 * KiB;
export const METADATA_TABLE_SIZE = 64 * KiB;
export const SECTOR_BITMAP_BLOCK = MiB;

/** Payload block states (BAT entry bits 0-2). */
export const PAYLOAD_BLOCK_NOT_PRESENT = 0;
export const PAYLOAD_BLOCK_UNDEFINED = 1;
export const PAYLOAD_BLOCK_ZERO = 2;
export const PAYLOAD_BLOCK_UNMAPPED = 3;
export const PAYLOAD_BLOCK_FULLY_PRESENT = 6;
export const PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7;
export const SB_BLOCK_NOT_PRESENT = 0;
export const SB_BLOCK_PRESENT = 6;

/** A GUID in its textual form to the 16 bytes VHDX stores (first three fields little-endian). */
export function guidBytes(s: string): Uint8Array {
  const h = s.replace(/[{}-]/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(h)) throw new Error(`bad GUID ${s}`);
  const b = Buffer.from(h, 'hex');
  const out = new Uint8Array(16);
  out.set([b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]], 0);
  out.set(b.subarray(8, 16), 8);
  return out;
}

/** The 16 stored bytes of a GUID back to its textual form. */
export function guidString(b: Uint8Array): string {
  const h = (i: number) => b[i].toString(16).padStart(2, '0');
  const r = (idx: number[]) => idx.map(h).join('');
  return `${r([3, 2, 1, 0])}-${r([5, 4])}-${r([7, 6])}-${r([8, 9])}-${r([10, 11, 12, 13, 14, 15])}`;
}

export const GUID = {
  bat: '2DC27766-F623-4200-9D64-115E9BFD4A08',
  metadata: '8B7CA206-4790-4B9A-B8FE-575F050F886E',
  fileParameters: 'CAA16737-FA36-4D43-B3B6-33F0AA44E76B',
  virtualDiskSize: '2FA54224-CD1B-4876-B211-5DBED83BF4B8',
  page83: 'BECA12AB-B2E6-4523-93EF-C309E000C746',
  logicalSectorSize: '8141BF1D-A96F-4709-BA47-F233A8FAAB5F',
  physicalSectorSize: 'CDA348C7-445D-4471-9CC9-E9885251C556',
  parentLocator: 'A8D35F2D-B30B-454D-ABF7-D3D84834AB0C',
  vhdxParentLocatorType: 'B04AEFB7-D19E-4A81-B789-25B8E9445913',
} as const;

/** Number of payload blocks per sector bitmap block. */
export function chunkRatio(logicalSectorSize: number, blockSize: number): number {
  return (2 ** 23 * logicalSectorSize) / blockSize;
}

/** BAT index of payload block `i`. */
export const payloadEntry = (i: number, ratio: number) => i + Math.floor(i / ratio);
/** BAT index of the sector bitmap block of chunk `k`. */
export const bitmapEntry = (k: number, ratio: number) => k * (ratio + 1) + ratio;

/** Number of BAT entries a disk needs (the spec's formulas for dynamic/fixed and differencing). */
export function batEntries(virtualSize: number, blockSize: number, ratio: number, hasParent: boolean): number {
  const payload = Math.ceil(virtualSize / blockSize);
  const bitmaps = Math.ceil(payload / ratio);
  if (hasParent) return bitmaps * (ratio + 1);
  return payload === 0 ? 0 : payload + Math.floor((payload - 1) / ratio);
}
