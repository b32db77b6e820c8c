import { closeChain } from '../formats/layer.js';
import { openImage } from '../formats/open.js';
import type { OpenOptions } from '../formats/types.js';
import { openVolumeFileSystem } from '../fs/open.js';
import type { FileSystem, FsOpenOptions } from '../fs/types.js';
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
  /** The btrfs subvolume (path from the top level) this root was found in, when not the default one. */
  subvol?: string;
}

/** Subvolumes looked at for an OS root when a btrfs file system's default one holds none. */
const MAX_SUBVOLUMES = 256;

/** fstab's `subvol=PATH` or `subvolid=ID` of a btrfs line. */
function subvolOption(options: string): string | undefined {
  let out: string | undefined;
  for (const o of options.split(',')) {
    const m = /^subvol(id)?=(.*)$/.exec(o);
    if (m && (m[1] || out === undefined)) out = m[1] ? m[2] : m[2].replace(/^\/+|\/+$/g, '') || '/';
  }
  return out;
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
    const subvol = subvolOption(e.options);
    if (subvol !== undefined) mp.subvol = subvol;
    mountpoints[e.point] = mp;
    if (e.point === '/') {
      if (vol && vol !== root.volume)
        warnings.push(`/etc/fstab mounts ${e.device} at /, not the volume it was read from`);
      else if (subvol !== undefined && root.fs.subvolumes && !(await isSubvol(root.fs, subvol)))
        warnings.push(`/etc/fstab mounts subvolume ${subvol} at /, not the one the root was read from`);
      continue;
    }
    const target = vol ? all.find((o) => o.volume === vol) : undefined;
    if (!target) {
      warnings.push(`/etc/fstab: ${e.device} (for ${e.point}) is not a file system on this disk we can read`);
      continue;
    }
    let fs = target.fs;
    if (subvol !== undefined) {
      if (!fs.withSubvolume) {
        warnings.push(`/etc/fstab: ${e.device} (for ${e.point}) names subvolume ${subvol}, but holds ${fs.kind}`);
        continue;
      }
      try {
        fs = await fs.withSubvolume(subvol);
      } catch (err) {
        if (!(err instanceof StrataError)) throw err;
        warnings.push(`/etc/fstab: ${e.device} (for ${e.point}): ${err.message}`);
        continue;
      }
    }
    if (!mounts.some((m) => m.point === e.point)) mounts.push({ point: e.point.replace(/\/+$/, ''), fs });
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

/** Whether `fs` presents the subvolume fstab names (a path from the top level, or an id). */
async function isSubvol(fs: FileSystem, subvol: string): Promise<boolean> {
  const cur = (await fs.subvolumes?.())?.find((s) => s.current);
  if (!cur) return false;
  return /^\d+$/.test(subvol) ? cur.id === Number(subvol) : cur.path === (subvol === '' ? '/' : subvol);
}

/**
 * The OS roots of one opened file system: itself when it is one; else, for btrfs, the
 * subvolumes that are (a Fedora-like layout: the top level holds `root`/`@` and `home`/`@home`).
 * When some of those name themselves at / in their own fstab (subvol=), only those count:
 * a snapshot of the root (snapper, timeshift) names its source there.
 */
async function rootsOf(o: Opened): Promise<Array<{ opened: Opened; kind: 'linux' | 'windows' }>> {
  const kind = await rootKind(o.fs);
  if (kind) return [{ opened: o, kind }];
  if (!o.fs.subvolumes || !o.fs.withSubvolume) return [];
  const found: Array<{ opened: Opened; kind: 'linux' | 'windows'; self: boolean }> = [];
  for (const sv of (await o.fs.subvolumes()).filter((s) => !s.current).slice(0, MAX_SUBVOLUMES)) {
    const fs = await o.fs.withSubvolume(sv.id);
    const k = await rootKind(fs);
    if (!k) continue;
    let self = false;
    if (k === 'linux') {
      const text = await new OsTree([{ point: '/', fs }]).readText('/etc/fstab', 1024 * 1024);
      const line = parseFstab(text ?? '').find((e) => e.point === '/');
      const want = line ? subvolOption(line.options) : undefined;
      self = want !== undefined && (await isSubvol(fs, want));
    }
    found.push({ opened: { ...o, fs, subvol: sv.path }, kind: k, self });
  }
  const own = found.filter((f) => f.self);
  return (own.length > 0 ? own : found).map(({ opened, kind }) => ({ opened, kind }));
}

/** One OS root as a tree: the root file system with what its fstab mounts (btrfs subvolumes included). */
export interface OsRootTree {
  kind: 'linux' | 'windows';
  /** The volume holding the root (Strata volume id). */
  volume: string;
  /** btrfs: the subvolume holding the root, when not the volume's default one. */
  subvol?: string;
  tree: OsTree;
  mountpoints: Record<string, Mountpoint>;
}

/**
 * Every OS root among `volumes`, assembled as the OS would mount it, handed to `fn`; the
 * file systems are closed when `fn` returns. Each volume holding a file system we read is
 * opened once; a Linux root's /etc/fstab mounts the others (and btrfs subvolumes) into its tree.
 */
export async function withOsTrees<T>(
  volumes: Volume[],
  name: string,
  fn: (roots: OsRootTree[], warnings: string[]) => Promise<T>,
  fsOptions: FsOpenOptions = {},
): Promise<T> {
  const warnings: string[] = [];
  const opened: Opened[] = [];
  try {
    for (const v of volumes) {
      if ((v.content && NOT_FS.has(v.content)) || v.flags?.includes('extended')) continue;
      try {
        const fs = await openVolumeFileSystem(v.source, fsOptions);
        const info = await fs.info();
        opened.push({ volume: v, fs, fsUuid: info.uuid, fsLabel: info.label });
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        // the reader's own words, so a caller can tell this is the warning the check-in or
        // block map gave for the same volume (one kind: "vfat is recognised but not readable")
        if (v.content) warnings.push(`${name}: volume ${describeVolume(v)}: ${e.message}`);
      }
    }
    const roots: OsRootTree[] = [];
    for (const v of opened) {
      for (const { opened: o, kind } of await rootsOf(v)) {
        const r: OsRootTree = {
          kind,
          volume: o.volume.id,
          tree: new OsTree([{ point: '/', fs: o.fs }]),
          mountpoints: {},
        };
        if (kind === 'linux') {
          const m = await assembleMounts(o, opened);
          r.tree = new OsTree(m.mounts);
          for (const w of m.warnings) r.tree.warn(w);
          r.mountpoints = m.mountpoints;
        }
        if (o.subvol !== undefined) r.subvol = o.subvol;
        roots.push(r);
      }
    }
    return await fn(roots, warnings);
  } finally {
    for (const o of opened) await o.fs.close?.();
  }
}

/**
 * Find every OS root among `volumes` and inspect it. The caller keeps ownership of the
 * volumes; file systems opened here are closed here. `disk.diskId` (the MBR signature or
 * GPT GUID discovery found) lets Windows drive letters resolve to these volumes.
 */
export async function inspectVolumes(
  volumes: Volume[],
  name = 'disk',
  disk: { diskId?: string; fsOptions?: FsOpenOptions } = {},
): Promise<DiskInspection> {
  const facts = { diskId: disk.diskId, volumes: volumes.map((v) => ({ ...v, fstype: v.content })) };
  return withOsTrees(
    volumes,
    name,
    async (trees, warnings) => {
      const roots: OsInspection[] = [];
      for (const t of trees) {
        const r =
          t.kind === 'windows'
            ? await inspectWindows(t.tree, t.volume, facts)
            : await inspectLinux(t.tree, t.volume, t.mountpoints);
        if (t.subvol !== undefined) r.subvolume = t.subvol;
        roots.push(r);
      }
      return { roots, warnings };
    },
    disk.fsOptions,
  );
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
