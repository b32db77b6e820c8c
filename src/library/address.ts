import type { DiskImage, OpenOptions } from '../formats/types.js';
import { openFileSystem, openVolumeFileSystem } from '../fs/open.js';
import type { FileSystem, FsOpenOptions } from '../fs/types.js';
import { StrataError } from '../util/errors.js';
import { discoverVolumes } from '../volumes/discover.js';
import { findVolume } from '../volumes/select.js';
import type { Volume } from '../volumes/types.js';
import { volumeDiskOffset } from './listing.js';
import { closeTarget, openTargetImage, type Target, type TargetOptions } from './target.js';

/**
 * The one address syntax of every file-system command: `TARGET [--part N | --lv VG/LV]`,
 * TARGET an image file, a URL or a library version (see target.ts).
 * N is a volume id as discoverVolumes numbers them ("1".."4" MBR primaries, "5"+ logicals,
 * GPT entry indexes); VG/LV names an LVM logical volume. With neither, the only volume that
 * holds a file system is used; when several do, the one holding an OS root (/etc and /usr,
 * or /Windows/System32) if exactly one does; else a USAGE error lists the candidates.
 */
export interface Address {
  part?: string;
  lv?: string;
  /** `--subvol NAME|ID`: the btrfs subvolume to present as `/` (else the file system's default). */
  subvol?: string;
  /**
   * `--device FILE` (repeatable): the other devices of a file system over several (btrfs
   * RAID), each an image (file, URL or library version) whose one btrfs volume is used.
   * The same as TargetOptions.devices (both are opened by openTargetImage, the one path).
   */
  devices?: string[];
}

export interface OpenedDisk {
  image: DiskImage;
  /** What the TARGET argument was understood as. */
  target: Target;
  /** The image's name for messages (path, URL or NAME@N). */
  name: string;
  /** 'mbr' | 'gpt' | 'whole' ... as discoverVolumes reports it. */
  scheme: string;
  volumes: Volume[];
  warnings: string[];
  /** What the volumes' file systems are opened with (the --device images; see openVolumeFileSystem). */
  fsOptions: FsOpenOptions;
  close(): Promise<void>;
}

export interface OpenedAddress {
  image: DiskImage;
  target: Target;
  name: string;
  volume: Volume;
  fs: FileSystem;
  /** Where the volume starts in the virtual disk (null when it is not one window of it, e.g. a multi-segment LV). */
  diskOffset: number | null;
  /** Image, volume and file-system warnings, in that order. */
  warnings: string[];
  close(): Promise<void>;
}

/** Content names (as probeContent gives them) that are file systems we may open. */
const NOT_FS = new Set(['LVM2_member', 'swap', 'swsuspend', 'crypto_LUKS', 'jbd', 'gpt', 'mbr', 'lvm2-pv']);
export const holdsFileSystem = (content: string | undefined): boolean => !!content && !NOT_FS.has(content);

/** Open a target and find its volumes (partitions, logical volumes, or the whole disk). */
export async function openDisk(
  image: string,
  openOptions: OpenOptions = {},
  targetOptions: TargetOptions = {},
): Promise<OpenedDisk> {
  const t = await openTargetImage(image, openOptions, targetOptions);
  const img = t.image;
  try {
    const found = await discoverVolumes(img);
    return {
      image: img,
      target: t.target,
      name: t.name,
      scheme: found.scheme,
      volumes: found.volumes,
      warnings: [...img.warnings, ...found.warnings],
      fsOptions: t.fsOptions,
      close: () => closeTarget(t),
    };
  } catch (e) {
    await closeTarget(t);
    throw e;
  }
}

/** Open the file system an address names. The caller must `close()` the result. */
export async function openAddress(
  image: string,
  addr: Address = {},
  openOptions: OpenOptions = {},
  targetOptions: TargetOptions = {},
): Promise<OpenedAddress> {
  const devices = [...(targetOptions.devices ?? []), ...(addr.devices ?? [])];
  const disk = await openDisk(image, openOptions, { ...targetOptions, devices });
  try {
    let volume: Volume;
    let fs: FileSystem | undefined;
    const fsOptions: FsOpenOptions = { ...disk.fsOptions };
    if (addr.subvol !== undefined) fsOptions.subvol = addr.subvol;
    if (addr.part !== undefined || addr.lv !== undefined) {
      volume = findVolume(disk.volumes, addr);
    } else {
      ({ volume, fs } = await chooseDefault(disk.name, disk.volumes, fsOptions));
    }
    if (!fs) {
      try {
        fs = await openFileSystem(volume.source, fsOptions);
      } catch (e) {
        if (e instanceof StrataError && e.code === 'UNSUPPORTED' && !holdsFileSystem(volume.content)) {
          throw new StrataError(
            'USAGE',
            `volume ${describe(volume)} holds no file system we can read${volume.content ? ` (${volume.content})` : ''}`,
            { file: disk.name },
          );
        }
        throw e;
      }
    }
    const opened = fs;
    return {
      image: disk.image,
      target: disk.target,
      name: disk.name,
      volume,
      fs: opened,
      diskOffset: volumeDiskOffset(volume.source, disk.image),
      warnings: [...disk.warnings, ...opened.warnings],
      close: async () => {
        await opened.close?.();
        await disk.close();
      },
    };
  } catch (e) {
    await disk.close();
    throw e;
  }
}

/** "1 (Linux filesystem, 32.0 MiB, ext4)" */
export function describe(v: Volume): string {
  const id = v.id === '' ? '(whole disk)' : v.id;
  const mib = (v.size / 1048576).toFixed(1);
  return `${id} (${v.type}, ${mib} MiB, ${v.content ?? 'unknown'})`;
}

async function chooseDefault(
  image: string,
  volumes: Volume[],
  fsOptions: FsOpenOptions,
): Promise<{ volume: Volume; fs?: FileSystem }> {
  const candidates = volumes.filter((v) => holdsFileSystem(v.content));
  if (candidates.length === 1) return { volume: candidates[0] };
  if (candidates.length === 0) {
    throw new StrataError(
      'USAGE',
      `no volume holds a file system we recognise (volumes: ${volumes.map(describe).join(', ') || 'none'})`,
      { file: image },
    );
  }
  const roots: { volume: Volume; fs: FileSystem }[] = [];
  for (const v of candidates) {
    let fs: FileSystem | undefined;
    try {
      fs = await openVolumeFileSystem(v.source, fsOptions);
      if (await isOsRoot(fs)) {
        roots.push({ volume: v, fs });
        continue;
      }
    } catch {
      // a volume we cannot open is not an OS root
    }
    await fs?.close?.();
  }
  if (roots.length === 1) return roots[0];
  for (const r of roots) await r.fs.close?.();
  const why = roots.length === 0 ? 'none holds an OS root' : `${roots.length} hold an OS root`;
  throw new StrataError(
    'USAGE',
    `${candidates.length} volumes hold file systems and ${why}; choose one with --part or --lv. Candidates: ${candidates.map(describe).join('; ')}`,
    { file: image },
  );
}

async function isDir(fs: FileSystem, path: string): Promise<boolean> {
  try {
    return (await fs.lookup(path)).type === 'dir';
  } catch {
    return false;
  }
}

/** /etc and /usr (Unix), or /Windows/System32 (in either usual spelling). */
export async function isOsRoot(fs: FileSystem): Promise<boolean> {
  if ((await isDir(fs, '/etc')) && (await isDir(fs, '/usr'))) return true;
  return (await isDir(fs, '/Windows/System32')) || (await isDir(fs, '/WINDOWS/system32'));
}
