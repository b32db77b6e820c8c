import type { ByteSource } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import { btrfsDriver } from './btrfs/index.js';
import { extDriver } from './ext/index.js';
import { exfatDriver, fatDriver } from './fat/index.js';
import { isoDriver } from './iso9660/index.js';
import { ntfsDriver } from './ntfs/index.js';
import type { FileSystem, FsDriver, FsOpenOptions } from './types.js';
import { xfsDriver } from './xfs/index.js';

/** File-system readers, tried in order; each probes the volume's first 128 KiB. */
export const FS_DRIVERS: FsDriver[] = [
  extDriver,
  xfsDriver,
  fatDriver,
  exfatDriver,
  isoDriver,
  ntfsDriver,
  btrfsDriver,
];

/** Bytes of the volume head handed to probes. */
export const PROBE_BYTES = 128 * 1024;

const ascii = (b: Uint8Array, at: number, s: string): boolean => {
  if (at + s.length > b.length) return false;
  for (let i = 0; i < s.length; i++) if (b[at + i] !== s.charCodeAt(i)) return false;
  return true;
};

/**
 * Content we recognise but do not read (yet). Checked after the drivers, so a driver
 * added to FS_DRIVERS takes precedence over its entry here.
 */
export function recognizeUnsupported(head: Uint8Array, size: number): string | undefined {
  if (ascii(head, 0, 'XFSB')) return 'xfs';
  if (ascii(head, 0x10040, '_BHRfS_M')) return 'btrfs';
  if (ascii(head, 3, 'NTFS    ')) return 'ntfs';
  if (ascii(head, 0x8001, 'CD001')) return 'iso9660';
  if (ascii(head, 3, 'EXFAT   ')) return 'exfat';
  const sig = head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa;
  if (sig && (ascii(head, 54, 'FAT12') || ascii(head, 54, 'FAT16') || ascii(head, 82, 'FAT32'))) return 'vfat';
  if (ascii(head, 0x10000 + 0x34, 'ReIsEr')) return 'reiserfs';
  if (ascii(head, 0x200, 'LABELONE') || ascii(head, 0x218, 'LVM2 001')) return 'LVM2_member';
  for (const page of [4096, 8192, 16384, 65536]) {
    if (page <= size && ascii(head, page - 10, 'SWAPSPACE2')) return 'swap';
  }
  if (ascii(head, 0, 'LUKS\xba\xbe')) return 'crypto_LUKS';
  return undefined;
}

/**
 * Detect the file system on a volume by content and open it read-only. An option the
 * detected driver does not honour (`subvol` on ext4) is a USAGE error, never ignored.
 */
export async function openFileSystem(volume: ByteSource, options: FsOpenOptions = {}): Promise<FileSystem> {
  if (volume.size === 0) {
    throw new StrataError('CORRUPT', 'empty volume: no file system', { file: volume.name, offset: 0 });
  }
  const head = await volume.read(0, Math.min(volume.size, PROBE_BYTES));
  for (const d of FS_DRIVERS) {
    if (!d.probe(head, volume.size)) continue;
    // the cache sizes are hints every driver may take or ignore
    const hinted = options.metadataCacheBytes !== undefined || options.inodeCacheBytes !== undefined;
    const given = (Object.keys(options) as Array<keyof FsOpenOptions>).filter(
      (k) =>
        options[k] !== undefined &&
        k !== 'metadataCacheBytes' &&
        k !== 'inodeCacheBytes' &&
        !(k === 'devices' && options.devices?.length === 0),
    );
    const foreign = given.filter((k) => !d.options?.includes(k));
    if (foreign.length > 0) {
      const what = foreign[0] === 'devices' ? 'device' : foreign[0];
      const why =
        foreign[0] === 'devices' ? 'it names another device of a btrfs file system' : 'it names a btrfs subvolume';
      throw new StrataError('USAGE', `--${what} does not apply to ${d.kind} (${why})`, {
        file: volume.name,
      });
    }
    return given.length > 0 || hinted ? d.open(volume, options) : d.open(volume);
  }
  const kind = recognizeUnsupported(head, volume.size);
  if (kind) {
    throw new StrataError('UNSUPPORTED', `${kind} is recognised but not readable by this version of Strata`, {
      file: volume.name,
      structure: `${kind} signature`,
    });
  }
  throw new StrataError('UNSUPPORTED', 'no known file system signature (unknown content or an empty volume)', {
    file: volume.name,
  });
}

const BTRFS_SUPER = 0x10000;

/** The fsid of the btrfs file system on `volume` (its primary superblock's), or undefined when it holds none. */
async function btrfsFsid(volume: ByteSource): Promise<string | undefined> {
  if (volume.size < BTRFS_SUPER + 0x48) return undefined;
  const b = await volume.read(BTRFS_SUPER, 0x48);
  if (!ascii(b, 0x40, '_BHRfS_M')) return undefined;
  return Buffer.from(b.subarray(0x20, 0x30)).toString('hex');
}

/**
 * Open the file system of one volume among those of a whole disk (block map, check-in,
 * inspection, choosing the default volume). The options were given for the disk, not for
 * this volume: `devices` go to a btrfs volume with those of them that are devices of the
 * same file system (same fsid), and to no other volume. The one image-opening path of
 * every verb (library/target.ts) hands its `--device` images here.
 */
export async function openVolumeFileSystem(volume: ByteSource, options: FsOpenOptions = {}): Promise<FileSystem> {
  const { devices, ...rest } = options;
  if (!devices || devices.length === 0) return openFileSystem(volume, rest);
  const mine = await devicesOf(volume, devices);
  return openFileSystem(volume, mine.length > 0 ? { ...rest, devices: mine } : rest);
}

/** Which of `devices` are other devices of the btrfs file system on `volume` (same fsid). */
export async function devicesOf(volume: ByteSource, devices: ByteSource[]): Promise<ByteSource[]> {
  const fsid = await btrfsFsid(volume);
  if (fsid === undefined) return [];
  const out: ByteSource[] = [];
  for (const d of devices) if ((await btrfsFsid(d)) === fsid) out.push(d);
  return out;
}
