import { closeChain } from '../formats/layer.js';
import { openImage } from '../formats/open.js';
import type { OpenOptions } from '../formats/types.js';
import { openFileSystem } from '../fs/open.js';
import type { FileSystem } from '../fs/types.js';
import { StrataError } from '../util/errors.js';
import { discoverVolumes } from '../volumes/discover.js';
import type { Volume } from '../volumes/types.js';
import { matchDevice, parseFstab, type VolumeFacts } from './fstab.js';
import { inspectLinux } from './linux.js';
import { type Mount, OsTree } from './tree.js';
import type { Mountpoint, OsInspection } from './types.js';
import { inspectWindows } from './windows.js';

/** Volume contents that are never a file system we could open. */
const NOT_FS = new Set(['LVM2_member', 'lvm2-pv', 'swap', 'swsuspend', 'crypto_LUKS', 'jbd', 'gpt', 'mbr']);
/** fstab types that are not block file systems. */
const VIRTUAL_FS = new Set([
  'swap',
  'proc',
  'sysfs',
  'tmpfs',
  'devpts',
  'devtmpfs',
  'none',
  'nfs',
  'nfs4',
  'cifs',
  'bind',
]);

interface Opened extends VolumeFacts {
  fs: FileSystem;
}

export interface DiskInspection {
  roots: OsInspection[];
  /** Volumes that could not be opened and other disk-level findings. */
  warnings: string[];
}

const describeVolume = (v: Volume) => (v.id === '' ? '(whole disk)' : v.id);

/** The kind of OS root a file system is: /etc + /usr (Unix) or /Windows/System32. */
async function rootKind(fs: FileSystem): Promise<'linux' | 'windows' | undefined> {
  const t = new OsTree([{ point: '/', fs }]);
  if ((await t.isDir('/etc')) && (await t.isDir('/usr'))) return 'linux';
  for (const w of ['/Windows/System32', '/WINDOWS/system32', '/windows/system32', '/WINDOWS/System32']) {
    if (await t.isDir(w)) return 'windows';
  }
  return undefined;
}

/** Mount points from the root's /etc/fstab, and the file systems of this disk they resolve to. */
async function assembleMounts(
  root: Opened,
  all: Opened[],
): Promise<{ mounts: Mount[]; mountpoints: Record<string, Mountpoint>; warnings: string[] }> {
  const alone = new OsTree([{ point: '/', fs: root.fs }]);
  const text = await alone.readText('/etc/fstab', 1024 * 1024);
  const warnings = [...alone.warnings];
  const mounts: Mount[] = [{ point: '/', fs: root.fs }];
  const mountpoints: Record<string, Mountpoint> = {};
  for (const e of parseFstab(text ?? '', (m) => warnings.push(m))) {
    if (!e.point.startsWith('/') || VIRTUAL_FS.has(e.fstype)) continue;
    const vol = matchDevice(e.device, all);
    const mp: Mountpoint = { device: e.device };
    if (e.fstype) mp.fstype = e.fstype;
    if (vol) mp.volume = vol.id;
    mountpoints[e.point] = mp;
    if (e.point === '/') {
      if (vol && vol !== root.volume)
        warnings.push(`/etc/fstab mounts ${e.device} at /, not the volume it was read from`);
      continue;
    }
    const target = vol ? all.find((o) => o.volume === vol) : undefined;
    if (!target) {
      warnings.push(`/etc/fstab: ${e.device} (for ${e.point}) is not a file system on this disk we can read`);
      continue;
    }
    if (!mounts.some((m) => m.point === e.point)) mounts.push({ point: e.point.replace(/\/+$/, ''), fs: target.fs });
  }
  if (!mountpoints['/']) {
    // No fstab line for / (an unconfigured fstab): the root is where we found it, as virt-inspector reports too.
    mountpoints['/'] = {
      device: root.fsUuid ? `UUID=${root.fsUuid}` : root.volume.id,
      fstype: root.fs.kind,
      volume: root.volume.id,
    };
  }
  return { mounts, mountpoints, warnings };
}

/**
 * Find every OS root among `volumes` and inspect it. Each volume holding a file system we
 * read is opened once; a Linux root's /etc/fstab mounts the others into its tree. The
 * caller keeps ownership of the volumes; file systems opened here are closed here.
 */
export async function inspectVolumes(
  volumes: Volume[],
  name = 'disk',
  disk: { diskId?: string } = {},
): Promise<DiskInspection> {
  const warnings: string[] = [];
  const opened: Opened[] = [];
  try {
    for (const v of volumes) {
      if ((v.content && NOT_FS.has(v.content)) || v.flags?.includes('extended')) continue;
      try {
        const fs = await openFileSystem(v.source);
        const info = await fs.info();
        opened.push({ volume: v, fs, fsUuid: info.uuid, fsLabel: info.label });
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        // the reader's own words, so a caller can tell this is the warning the check-in or
        // block map gave for the same volume (one kind: "vfat is recognised but not readable")
        if (v.content) warnings.push(`${name}: volume ${describeVolume(v)}: ${e.message}`);
      }
    }
    const roots: OsInspection[] = [];
    for (const o of opened) {
      const kind = await rootKind(o.fs);
      if (kind === 'windows') {
        const tree = new OsTree([{ point: '/', fs: o.fs }]);
        const facts = volumes.map((v) => ({ ...v, fstype: opened.find((x) => x.volume === v)?.fs.kind }));
        roots.push(await inspectWindows(tree, o.volume.id, { diskId: disk.diskId, volumes: facts }));
      } else if (kind === 'linux') {
        const m = await assembleMounts(o, opened);
        const tree = new OsTree(m.mounts);
        for (const w of m.warnings) tree.warn(w);
        roots.push(await inspectLinux(tree, o.volume.id, m.mountpoints));
      }
    }
    return { roots, warnings };
  } finally {
    for (const o of opened) await o.fs.close?.();
  }
}

/** Open an image file (or URL), find its volumes and inspect every OS root on it. */
export async function inspectImage(image: string, openOptions: OpenOptions = {}): Promise<DiskInspection> {
  const img = await openImage(image, openOptions);
  try {
    const found = await discoverVolumes(img);
    const r = await inspectVolumes(found.volumes, image, { diskId: found.diskId });
    return { roots: r.roots, warnings: [...img.warnings, ...found.warnings, ...r.warnings] };
  } finally {
    await closeChain(img);
  }
}
