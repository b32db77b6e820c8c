import { StrataError } from '../util/errors.js';
import { Hive, type HiveKey, valueNumber, valueText } from './hive.js';
import { MAX_INSPECT_FILE, type OsTree } from './tree.js';
import type { InstalledProgram, OsInspection } from './types.js';

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

/** A Windows root: product, version, build, edition and programs from SOFTWARE, hostname from SYSTEM. */
export async function inspectWindows(tree: OsTree, root: string): Promise<OsInspection> {
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
  if (system) r.hostname = hostname(system, tree);
  return r;
}
