import { StrataError } from '../util/errors.js';
import { Hive, type HiveKey, valueNumber, valueText } from './hive.js';
import { MAX_INSPECT_FILE, type OsTree } from './tree.js';
import type { InstalledProgram, Mountpoint, OsInspection } from './types.js';

/** What drive letters can resolve to: the volumes of the disk being inspected. */
export interface DiskFacts {
  /** The MBR disk signature ("0x1a2b3c4d") when the disk has an MBR partition table. */
  diskId?: string;
  volumes: Array<{ id: string; scheme: string; start: number; uuid?: string; fstype?: string }>;
}

/** Where the system hives live, in the spellings Windows versions use (the tree's names are case-sensitive). */
const CONFIG_DIRS = [
  '/Windows/System32/config',
  '/WINDOWS/system32/config',
  '/windows/system32/config',
  '/WINDOWS/System32/config',
  '/Windows/system32/config',
];

const MAX_PROGRAMS = 100_000;

/** A hive file of the config directory by case-insensitive name, opened; undefined (with a warning) when absent or bad. */
async function openHive(tree: OsTree, name: string): Promise<Hive | undefined> {
  for (const dir of CONFIG_DIRS) {
    const names = await tree.list(dir);
    if (!names) continue;
    const hit = names.find((n) => n.toLowerCase() === name.toLowerCase());
    if (!hit) continue;
    const path = `${dir}/${hit}`;
    const bytes = await tree.readBytes(path, MAX_INSPECT_FILE);
    if (!bytes) return undefined;
    try {
      return Hive.open(bytes, path);
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      tree.warn(e.message);
      return undefined;
    }
  }
  tree.warn(`no ${name} hive under /Windows/System32/config`);
  return undefined;
}

/** Run a hive lookup; a damaged hive becomes a warning and `fallback`. */
function guarded<T>(tree: OsTree, fallback: T, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof StrataError)) throw e;
    tree.warn(e.message);
    return fallback;
  }
}

function programs(hive: Hive, tree: OsTree): InstalledProgram[] {
  const out: InstalledProgram[] = [];
  for (const base of [
    'Microsoft\\Windows\\CurrentVersion\\Uninstall',
    'WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall',
  ]) {
    const root = guarded(tree, undefined, () => hive.path(base));
    if (!root) continue;
    const keys = guarded<HiveKey[]>(tree, [], () => hive.subkeys(root));
    for (const k of keys) {
      if (out.length >= MAX_PROGRAMS) break;
      guarded(tree, undefined, () => {
        const name = valueText(hive.get(k, 'DisplayName'));
        if (!name) return;
        const p: InstalledProgram = { name, key: `${base}\\${k.name}` };
        const version = valueText(hive.get(k, 'DisplayVersion'));
        const publisher = valueText(hive.get(k, 'Publisher'));
        if (version) p.version = version;
        if (publisher) p.publisher = publisher;
        out.push(p);
      });
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Hostname from SYSTEM: the current control set's ComputerName (Tcpip Hostname as a fallback). */
function hostname(hive: Hive, tree: OsTree): string | null {
  return guarded(tree, null, () => {
    const select = hive.path('Select');
    const current = select ? valueNumber(hive.get(select, 'Current')) : undefined;
    const set = `ControlSet${String(current ?? 1).padStart(3, '0')}`;
    const cn = hive.path(`${set}\\Control\\ComputerName\\ComputerName`);
    const name = cn ? valueText(hive.get(cn, 'ComputerName')) : undefined;
    if (name) return name;
    const tcp = hive.path(`${set}\\Services\\Tcpip\\Parameters`);
    return (tcp && valueText(hive.get(tcp, 'Hostname'))) || null;
  });
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** A GUID's text form from its 16 bytes (first three fields little-endian, as GPT stores them). */
function guidText(b: Uint8Array): string {
  const le = (from: number, to: number) => hex(b.subarray(from, to).reverse());
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`;
}

/**
 * Drive letters from SYSTEM\MountedDevices: each `\DosDevices\X:` value names a volume by
 * (a) 12 bytes: the MBR disk signature (u32) and the partition's byte offset (u64);
 * (b) "DMIO:ID:" and a GPT partition's unique GUID (16 bytes); or (c) a device path in
 * UTF-16 (CD-ROMs, removable and virtual disks). (a) and (b) are matched against this disk's
 * volumes; entries for disks no longer attached (Windows keeps them) stay unresolved.
 */
function driveLetters(hive: Hive, tree: OsTree, disk: DiskFacts): Record<string, Mountpoint> {
  const out: Record<string, Mountpoint> = {};
  const md = guarded(tree, undefined, () => hive.path('MountedDevices'));
  if (!md) return out;
  const values = guarded(tree, [], () => hive.values(md));
  for (const v of values) {
    const m = /^\\DosDevices\\([A-Za-z]:)$/.exec(v.name);
    if (!m) continue;
    const letter = m[1].toUpperCase();
    const d = v.data;
    let mp: Mountpoint;
    if (d.length === 12) {
      const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
      const sig = `0x${dv.getUint32(0, true).toString(16).padStart(8, '0')}`;
      const offset = dv.getUint32(4, true) + dv.getUint32(8, true) * 2 ** 32;
      mp = { device: `MBR disk ${sig}, partition at byte ${offset}` };
      const vol =
        disk.diskId?.toLowerCase() === sig
          ? disk.volumes.find((x) => x.scheme === 'mbr' && x.start === offset)
          : undefined;
      if (vol) Object.assign(mp, vol.fstype ? { fstype: vol.fstype } : {}, { volume: vol.id });
    } else if (d.length === 24 && Buffer.from(d.subarray(0, 8)).toString('latin1') === 'DMIO:ID:') {
      const guid = guidText(d.subarray(8));
      mp = { device: `GPT partition ${guid}` };
      const vol = disk.volumes.find((x) => x.scheme === 'gpt' && x.uuid?.toLowerCase() === guid);
      if (vol) Object.assign(mp, vol.fstype ? { fstype: vol.fstype } : {}, { volume: vol.id });
    } else {
      mp = { device: Buffer.from(d).toString('utf16le').replace(/\0+$/, '') };
    }
    out[letter] = mp;
  }
  return out;
}

/**
 * A Windows root: product, version, build, edition and programs from SOFTWARE, hostname and
 * drive letters (`mountpoints`, "C:" -> device and volume) from SYSTEM.
 */
export async function inspectWindows(
  tree: OsTree,
  root: string,
  disk: DiskFacts = { volumes: [] },
): Promise<OsInspection> {
  const r: OsInspection = {
    root,
    osType: 'windows',
    distro: 'windows',
    productName: null,
    versionMajor: null,
    versionMinor: null,
    arch: null,
    hostname: null,
    packageFormat: null,
    packageManager: null,
    packages: [],
    kernels: [],
    users: [],
    groups: [],
    initSystem: null,
    mountpoints: {},
    windows: { programs: [] },
    warnings: tree.warnings,
  };
  const software = await openHive(tree, 'SOFTWARE');
  if (software) {
    const cv = guarded(tree, undefined, () => software.path('Microsoft\\Windows NT\\CurrentVersion'));
    if (cv) {
      guarded(tree, undefined, () => {
        const text = (n: string) => valueText(software.get(cv, n));
        r.productName = text('ProductName') ?? null;
        const w = r.windows!;
        w.currentVersion = text('CurrentVersion');
        w.build = text('CurrentBuild') ?? text('CurrentBuildNumber');
        w.edition = text('EditionID');
        // Windows 10 and later keep "6.3" in CurrentVersion for old programs; the real numbers are DWORDs.
        const major = valueNumber(software.get(cv, 'CurrentMajorVersionNumber'));
        const minor = valueNumber(software.get(cv, 'CurrentMinorVersionNumber'));
        if (major !== undefined) {
          r.versionMajor = major;
          r.versionMinor = minor ?? 0;
        } else {
          const m = /^(\d+)\.(\d+)/.exec(w.currentVersion ?? '');
          if (m) [r.versionMajor, r.versionMinor] = [Number(m[1]), Number(m[2])];
        }
      });
    } else tree.warn('SOFTWARE hive has no Microsoft\\Windows NT\\CurrentVersion key');
    r.windows!.programs = programs(software, tree);
  }
  const system = await openHive(tree, 'SYSTEM');
  if (system) {
    r.hostname = hostname(system, tree);
    r.mountpoints = driveLetters(system, tree, disk);
  }
  return r;
}
