import type { ByteSource } from '../io/byte-source.js';

/**
 * Content probing by magic numbers, named the way util-linux `blkid -p -o value -s TYPE`
 * names things: 'ext2' | 'ext3' | 'ext4' | 'ext4dev' | 'jbd' | 'xfs' | 'btrfs' | 'vfat' |
 * 'ntfs' | 'exfat' | 'iso9660' | 'swap' | 'swsuspend' | 'LVM2_member' | 'crypto_LUKS', plus
 * 'gpt' / 'mbr' for a nested partition table. Returns undefined when nothing is known.
 *
 * Only magic bytes and a few sanity checks are used; opening the file system is the
 * reader's job. Reads at most 64 KiB + 4 KiB from fixed offsets, never past the end.
 */
export async function probeContent(src: ByteSource): Promise<string | undefined> {
  const head = await readUpTo(src, 0, 69632);
  return probeBytes(head, src.size);
}

async function readUpTo(src: ByteSource, offset: number, length: number): Promise<Uint8Array> {
  if (offset >= src.size) return new Uint8Array(0);
  const n = Math.min(length, src.size - offset);
  const b = await src.read(offset, n);
  return b.length === n ? b : b.subarray(0, Math.min(b.length, n));
}

const ascii = (b: Uint8Array, at: number, s: string): boolean => {
  if (at + s.length > b.length) return false;
  for (let i = 0; i < s.length; i++) if (b[at + i] !== s.charCodeAt(i)) return false;
  return true;
};

const u16 = (b: Uint8Array, at: number) => (at + 2 <= b.length ? b[at] | (b[at + 1] << 8) : 0);
const u32 = (b: Uint8Array, at: number) =>
  at + 4 <= b.length ? (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0 : 0;

/** Probe from bytes already read: `head` holds the first bytes of the volume (>= 69632 when the volume has them). */
export function probeBytes(head: Uint8Array, size: number): string | undefined {
  if (ascii(head, 0, 'LUKS\xba\xbe')) return 'crypto_LUKS';
  for (let s = 0; s < 4; s++) {
    if (ascii(head, s * 512, 'LABELONE') && ascii(head, s * 512 + 24, 'LVM2 001')) return 'LVM2_member';
  }
  if (ascii(head, 0, 'XFSB')) return 'xfs';
  if (ascii(head, 65536 + 64, '_BHRfS_M')) return 'btrfs';
  const ext = probeExt(head);
  if (ext) return ext;
  if (ascii(head, 3, 'NTFS    ') && u16(head, 510) === 0xaa55) return 'ntfs';
  if (probeFat(head)) return 'vfat';
  if (ascii(head, 3, 'EXFAT   ') && u16(head, 510) === 0xaa55) return 'exfat';
  if (ascii(head, 32769, 'CD001')) return 'iso9660';
  for (const page of [4096, 8192, 16384, 32768, 65536]) {
    if (page > size) break;
    if (ascii(head, page - 10, 'SWAPSPACE2') || ascii(head, page - 10, 'SWAP-SPACE')) return 'swap';
    if (ascii(head, page - 10, 'S1SUSPEND') || ascii(head, page - 10, 'S2SUSPEND')) return 'swsuspend';
  }
  if (ascii(head, 512, 'EFI PART') || ascii(head, 4096, 'EFI PART')) return 'gpt';
  if (looksLikeMbr(head)) return 'mbr';
  return undefined;
}

// ext feature bits (as blkid groups them).
const EXT_COMPAT_HAS_JOURNAL = 0x4;
const EXT_INCOMPAT_JOURNAL_DEV = 0x8;
const EXT2_INCOMPAT_SUPP = 0x2 | 0x10; // filetype, meta_bg
const EXT3_INCOMPAT_SUPP = 0x2 | 0x4 | 0x10; // filetype, recover, meta_bg
const EXT3_RO_COMPAT_SUPP = 0x1 | 0x2 | 0x4; // sparse_super, large_file, btree_dir
const EXT_FLAGS_TEST_FILESYS = 0x4;

function probeExt(b: Uint8Array): string | undefined {
  const sb = 1024;
  if (b.length < sb + 1024 || u16(b, sb + 0x38) !== 0xef53) return undefined;
  const compat = u32(b, sb + 0x5c);
  const incompat = u32(b, sb + 0x60);
  const roCompat = u32(b, sb + 0x64);
  const flags = u32(b, sb + 0x160);
  if (incompat & EXT_INCOMPAT_JOURNAL_DEV) return 'jbd';
  const beyondExt3 = (incompat & ~EXT3_INCOMPAT_SUPP) !== 0 || (roCompat & ~EXT3_RO_COMPAT_SUPP) !== 0;
  if (beyondExt3) return flags & EXT_FLAGS_TEST_FILESYS ? 'ext4dev' : 'ext4';
  if (compat & EXT_COMPAT_HAS_JOURNAL) return 'ext3';
  if ((incompat & ~EXT2_INCOMPAT_SUPP) !== 0) return 'ext4';
  return 'ext2';
}

function probeFat(b: Uint8Array): boolean {
  if (b.length < 512 || u16(b, 510) !== 0xaa55) return false;
  const label = ascii(b, 54, 'FAT12   ') || ascii(b, 54, 'FAT16   ') || ascii(b, 54, 'FAT     ');
  const label32 = ascii(b, 82, 'FAT32   ');
  if (!label && !label32) return false;
  const bps = u16(b, 11);
  const spc = b[13];
  const reserved = u16(b, 14);
  const fats = b[16];
  const pow2 = (x: number) => x > 0 && (x & (x - 1)) === 0;
  return pow2(bps) && bps >= 512 && bps <= 4096 && pow2(spc) && reserved > 0 && fats >= 1 && fats <= 4;
}

/** A DOS partition table: the 0x55AA signature, status bytes 0x00/0x80 and at least one used entry. */
export function looksLikeMbr(b: Uint8Array): boolean {
  if (b.length < 512 || u16(b, 510) !== 0xaa55) return false;
  let used = 0;
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    const status = b[e];
    if (status !== 0 && status !== 0x80) return false;
    if (b[e + 4] !== 0) {
      if (u32(b, e + 12) === 0) continue;
      used++;
    }
  }
  return used > 0;
}
