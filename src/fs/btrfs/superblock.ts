import type { ByteSource } from '../../io/byte-source.js';
import { crc32c } from '../../util/crc32c.js';
import { corrupt, StrataError, unsupported } from '../../util/errors.js';

/** Where the primary superblock and its mirrors live (64 KiB, 64 MiB, 256 GiB). */
export const SUPER_OFFSETS = [0x10000, 0x4000000, 0x4000000000];
export const SUPER_SIZE = 4096;
export const MAGIC = '_BHRfS_M';

export const CSUM_NAMES = ['crc32c', 'xxhash64', 'sha256', 'blake2b'];

export const INCOMPAT_NAMES: Record<number, string> = {
  1: 'mixed_backref',
  2: 'default_subvol',
  4: 'mixed_groups',
  8: 'compress_lzo',
  16: 'compress_zstd',
  32: 'big_metadata',
  64: 'extended_iref',
  128: 'raid56',
  256: 'skinny_metadata',
  512: 'no_holes',
  1024: 'metadata_uuid',
  2048: 'raid1c34',
  4096: 'zoned',
  8192: 'extent_tree_v2',
  16384: 'raid_stripe_tree',
  65536: 'simple_quota',
};
export const COMPAT_RO_NAMES: Record<number, string> = {
  1: 'free_space_tree',
  2: 'free_space_tree_valid',
  4: 'verity',
  8: 'block_group_tree',
};

/** The btrfs superblock (struct btrfs_super_block), the fields we use. */
export interface Superblock {
  offset: number;
  csumType: number;
  fsid: Uint8Array;
  metadataUuid: Uint8Array;
  bytenr: number;
  generation: number;
  root: number;
  chunkRoot: number;
  logRoot: number;
  totalBytes: number;
  bytesUsed: number;
  rootDirObjectid: number;
  numDevices: number;
  sectorSize: number;
  nodeSize: number;
  stripeSize: number;
  sysChunkArray: Uint8Array;
  chunkRootGeneration: number;
  compatRo: number;
  incompat: number;
  rootLevel: number;
  chunkRootLevel: number;
  logRootLevel: number;
  devid: number;
  devUuid: Uint8Array;
  label: string;
}

const u64 = (dv: DataView, at: number) => Number(dv.getBigUint64(at, true));

export function uuidString(b: Uint8Array): string {
  const h = Buffer.from(b).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Decode one superblock copy; throws StrataError when it is not a sane btrfs superblock. */
export function parseSuperblock(b: Uint8Array, file: string, offset: number): Superblock {
  const where = { file, structure: 'btrfs superblock', offset };
  if (b.length < SUPER_SIZE) throw new StrataError('TRUNCATED', 'superblock cut short', where);
  if (Buffer.from(b.subarray(0x40, 0x48)).toString('latin1') !== MAGIC) throw corrupt('bad magic', where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const csumType = dv.getUint16(0xc4, true);
  if (csumType === 0) {
    const want = dv.getUint32(0, true);
    const got = crc32c(b.subarray(0x20, SUPER_SIZE));
    if (want !== got)
      throw corrupt(`checksum mismatch (stored ${want.toString(16)}, computed ${got.toString(16)})`, where);
  } else if (csumType >= CSUM_NAMES.length) {
    throw unsupported(`unknown checksum type ${csumType}`, where);
  }
  const sectorSize = dv.getUint32(0x90, true);
  const nodeSize = dv.getUint32(0x94, true);
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(sectorSize) || sectorSize < 4096 || sectorSize > 65536)
    throw corrupt(`bad sector size ${sectorSize}`, where);
  if (!pow2(nodeSize) || nodeSize < sectorSize || nodeSize > 65536) throw corrupt(`bad node size ${nodeSize}`, where);
  const sysSize = dv.getUint32(0xa0, true);
  if (sysSize > 2048) throw corrupt(`sys_chunk_array_size ${sysSize} > 2048`, where);
  const incompat = u64(dv, 0xbc);
  const fsid = b.slice(0x20, 0x30);
  const labelRaw = b.subarray(0x12b, 0x22b);
  const z = labelRaw.indexOf(0);
  return {
    offset,
    csumType,
    fsid,
    metadataUuid: incompat & 0x400 ? b.slice(0x23b, 0x24b) : fsid,
    bytenr: u64(dv, 0x30),
    generation: u64(dv, 0x48),
    root: u64(dv, 0x50),
    chunkRoot: u64(dv, 0x58),
    logRoot: u64(dv, 0x60),
    totalBytes: u64(dv, 0x70),
    bytesUsed: u64(dv, 0x78),
    rootDirObjectid: u64(dv, 0x80),
    numDevices: u64(dv, 0x88),
    sectorSize,
    nodeSize,
    stripeSize: dv.getUint32(0x9c, true),
    sysChunkArray: b.slice(0x32b, 0x32b + sysSize),
    chunkRootGeneration: u64(dv, 0xa4),
    compatRo: u64(dv, 0xb4),
    incompat,
    rootLevel: b[0xc6],
    chunkRootLevel: b[0xc7],
    logRootLevel: b[0xc8],
    devid: u64(dv, 0xc9),
    devUuid: b.slice(0xc9 + 66, 0xc9 + 82),
    label: new TextDecoder().decode(labelRaw.subarray(0, z < 0 ? 256 : z)),
  };
}

/** True when a volume head carries the btrfs magic at 64 KiB. */
export function probeBtrfs(head: Uint8Array): boolean {
  if (head.length < 0x10048) return false;
  if (Buffer.from(head.subarray(0x10040, 0x10048)).toString('latin1') !== MAGIC) return false;
  // a lone signature (csum type crc32c with a wrong checksum) is left to recognizeUnsupported
  const sb = head.subarray(0x10000, 0x10000 + SUPER_SIZE);
  if (sb.length < SUPER_SIZE) return false;
  const csumType = sb[0xc4] | (sb[0xc5] << 8);
  if (csumType !== 0) return true;
  return new DataView(sb.buffer, sb.byteOffset).getUint32(0, true) === crc32c(sb.subarray(0x20));
}

/** Read the primary superblock; the mirrors that fit are checked and their state reported. */
export async function readSuperblocks(
  vol: ByteSource,
): Promise<{ sb: Superblock; mirrors: Array<{ offset: number; ok: boolean; generation?: number }> }> {
  const sb = parseSuperblock(await vol.read(SUPER_OFFSETS[0], SUPER_SIZE), vol.name, SUPER_OFFSETS[0]);
  const mirrors: Array<{ offset: number; ok: boolean; generation?: number }> = [];
  for (const off of SUPER_OFFSETS.slice(1)) {
    if (off + SUPER_SIZE > vol.size || off + SUPER_SIZE > sb.totalBytes) continue;
    try {
      const m = parseSuperblock(await vol.read(off, SUPER_SIZE), vol.name, off);
      mirrors.push({ offset: off, ok: true, generation: m.generation });
    } catch {
      mirrors.push({ offset: off, ok: false });
    }
  }
  return { sb, mirrors };
}
