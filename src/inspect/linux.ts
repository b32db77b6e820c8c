import { StrataError } from '../util/errors.js';
import { parseApkInstalled } from './apk.js';
import { parseDpkgStatus } from './dpkg.js';
import { elfArch } from './elf.js';
import { parseOsRelease, splitVersion } from './os-release.js';
import { parseGroup, parsePasswd } from './passwd.js';
import { readRpmBdb, readRpmSqlite } from './rpm-db.js';
import { MAX_INSPECT_FILE, type OsTree } from './tree.js';
import type { Kernel, OsInspection, Package } from './types.js';

/** os-release IDs to the distro names virt-inspector reports. */
const DISTRO_NAMES: Record<string, string> = {
  alpine: 'alpinelinux',
  arch: 'archlinux',
  ol: 'oraclelinux',
  'opensuse-leap': 'opensuse',
  'opensuse-tumbleweed': 'opensuse',
  sles_sap: 'sles',
  rocky: 'rocky',
  almalinux: 'almalinux',
};

/** Binaries whose ELF header tells the architecture, in the order tried. */
const ARCH_PROBES = [
  '/bin/sh',
  '/usr/bin/sh',
  '/usr/bin/ls',
  '/bin/ls',
  '/usr/bin/bash',
  '/bin/bash',
  '/bin/busybox',
  '/usr/lib/systemd/systemd',
];

const RPMDB_PATHS = ['/usr/lib/sysimage/rpm/rpmdb.sqlite', '/var/lib/rpm/rpmdb.sqlite'];

type Facts = Pick<OsInspection, 'distro' | 'productName' | 'versionMajor' | 'versionMinor'>;

const firstLine = (t: string | undefined) => t?.split('\n')[0].trim() || undefined;

async function distroFacts(tree: OsTree): Promise<Facts> {
  const f: Facts = { distro: null, productName: null, versionMajor: null, versionMinor: null };
  const text = (await tree.readText('/etc/os-release', 65536)) ?? (await tree.readText('/usr/lib/os-release', 65536));
  if (text !== undefined) {
    const { fields, bad } = parseOsRelease(text);
    if (bad > 0) tree.warn(`/etc/os-release: ${bad} garbled line(s) ignored`);
    const id = fields.get('ID')?.toLowerCase();
    if (id && /^[a-z0-9._-]+$/.test(id)) f.distro = DISTRO_NAMES[id] ?? id;
    f.productName = fields.get('PRETTY_NAME') ?? fields.get('NAME') ?? null;
    [f.versionMajor, f.versionMinor] = splitVersion(fields.get('VERSION_ID'));
    if (f.distro === null) tree.warn('/etc/os-release: no usable ID');
  }
  const debian = firstLine(await tree.readText('/etc/debian_version', 4096));
  if (debian !== undefined && (f.distro === null || f.distro === 'debian')) {
    // os-release says "12"; debian_version says "12.7": take the minor from there, as virt-inspector does.
    const [maj, min] = splitVersion(debian);
    f.distro ??= 'debian';
    if (maj !== null && (f.versionMajor === null || f.versionMajor === maj)) {
      f.versionMajor = maj;
      f.versionMinor = min;
    }
    f.productName ??= debian;
  }
  if (f.distro === null) {
    const rh = firstLine(await tree.readText('/etc/redhat-release', 4096));
    if (rh !== undefined) {
      f.productName = rh;
      f.distro = /^Fedora/i.test(rh)
        ? 'fedora'
        : /^CentOS/i.test(rh)
          ? 'centos'
          : /^Red Hat/i.test(rh)
            ? 'rhel'
            : 'redhat-based';
      const m = /release (\d+(?:\.\d+)?)/.exec(rh);
      [f.versionMajor, f.versionMinor] = splitVersion(m?.[1]);
    }
  }
  if (f.distro === null) {
    const alpine = firstLine(await tree.readText('/etc/alpine-release', 4096));
    if (alpine !== undefined) {
      f.distro = 'alpinelinux';
      f.productName = alpine;
      [f.versionMajor, f.versionMinor] = splitVersion(alpine);
    }
  }
  return f;
}

async function archOf(tree: OsTree): Promise<string | null> {
  for (const p of ARCH_PROBES) {
    const r = await tree.resolve(p);
    if (r?.inode.type !== 'file' || r.inode.size < 20) continue;
    try {
      const arch = elfArch(await r.fs.read(r.inode, 0, 20));
      if (arch) return arch;
    } catch {
      tree.warn(`${p}: unreadable`);
    }
  }
  return null;
}

async function hostnameOf(tree: OsTree): Promise<string | null> {
  for (const p of ['/etc/hostname', '/etc/HOSTNAME']) {
    const h = firstLine(await tree.readText(p, 4096));
    if (h) return h;
  }
  const net = await tree.readText('/etc/sysconfig/network', 65536);
  const m = net === undefined ? null : /^HOSTNAME=["']?([^"'\s]+)/m.exec(net);
  return m ? m[1] : null;
}

async function kernelsOf(tree: OsTree): Promise<Kernel[]> {
  const byVersion = new Map<string, Kernel>();
  const get = (v: string) => {
    let k = byVersion.get(v);
    if (!k) byVersion.set(v, (k = { version: v }));
    return k;
  };
  for (const name of (await tree.list('/boot')) ?? []) {
    const m = /^(?:vmlinuz|vmlinux|kernel)-(.+)$/.exec(name);
    if (m && (await tree.resolve(`/boot/${name}`))?.inode.type === 'file') get(m[1]).path = `/boot/${name}`;
  }
  for (const name of (await tree.list('/lib/modules')) ?? []) {
    if (await tree.isDir(`/lib/modules/${name}`)) get(name).modules = `/lib/modules/${name}`;
  }
  return [...byVersion.values()].sort((a, b) => (a.version < b.version ? -1 : a.version > b.version ? 1 : 0));
}

async function initSystemOf(tree: OsTree): Promise<string | null> {
  const target = await tree.readlink('/sbin/init');
  if (target !== undefined) {
    const base = target.split('/').pop() ?? '';
    if (base.includes('systemd')) return 'systemd';
    if (base === 'busybox') return 'busybox';
    if (base.includes('openrc')) return 'openrc';
    if (base.includes('upstart')) return 'upstart';
  }
  if ((await tree.exists('/lib/systemd/systemd')) || (await tree.exists('/usr/lib/systemd/systemd'))) {
    if (await tree.exists('/sbin/init')) return 'systemd';
  }
  if (await tree.exists('/sbin/openrc')) return 'openrc';
  if (await tree.exists('/sbin/upstart')) return 'upstart';
  if ((await tree.exists('/sbin/init')) && (await tree.exists('/etc/inittab'))) return 'sysvinit';
  return null;
}

async function rpmManager(tree: OsTree): Promise<'dnf' | 'zypper' | 'yum' | null> {
  if (await tree.exists('/usr/bin/dnf')) return 'dnf';
  if (await tree.exists('/usr/bin/zypper')) return 'zypper';
  if (await tree.exists('/usr/bin/yum')) return 'yum';
  return null;
}

async function packagesOf(
  tree: OsTree,
): Promise<Pick<OsInspection, 'packageFormat' | 'packageManager'> & { packages: Package[] }> {
  const warn = (m: string) => tree.warn(m);
  const status = await tree.readText('/var/lib/dpkg/status', MAX_INSPECT_FILE);
  if (status !== undefined) {
    return { packageFormat: 'deb', packageManager: 'apt', packages: parseDpkgStatus(status, warn) };
  }
  for (const p of RPMDB_PATHS) {
    const bytes = await tree.readBytes(p, MAX_INSPECT_FILE);
    if (bytes === undefined) continue;
    const wal = await tree.resolve(`${p}-wal`);
    if (wal && wal.inode.size > 0) tree.warn(`${p}-wal: ${wal.inode.size} bytes of unmerged changes not read`);
    const manager = await rpmManager(tree);
    try {
      return { packageFormat: 'rpm', packageManager: manager, packages: await readRpmSqlite(bytes, p, warn) };
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      tree.warn(e.message);
      return { packageFormat: 'rpm', packageManager: manager, packages: [] };
    }
  }
  const bdb = await tree.readBytes('/var/lib/rpm/Packages', MAX_INSPECT_FILE);
  if (bdb !== undefined) {
    const manager = (await rpmManager(tree)) ?? 'yum';
    try {
      return {
        packageFormat: 'rpm',
        packageManager: manager,
        packages: readRpmBdb(bdb, '/var/lib/rpm/Packages', warn),
      };
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      tree.warn(e.message);
      return { packageFormat: 'rpm', packageManager: manager, packages: [] };
    }
  }
  if (await tree.exists('/var/lib/rpm/Packages.db')) {
    tree.warn('/var/lib/rpm/Packages.db: rpm ndb database, not read by this version');
    return { packageFormat: 'rpm', packageManager: await rpmManager(tree), packages: [] };
  }
  const apk = await tree.readText('/lib/apk/db/installed', MAX_INSPECT_FILE);
  if (apk !== undefined) return { packageFormat: 'apk', packageManager: 'apk', packages: parseApkInstalled(apk, warn) };
  return { packageFormat: null, packageManager: null, packages: [] };
}

/** Everything we report about a Linux (or other Unix-like) root. `mountpoints` comes from the caller's fstab pass. */
export async function inspectLinux(
  tree: OsTree,
  root: string,
  mountpoints: OsInspection['mountpoints'],
): Promise<OsInspection> {
  const warn = (m: string) => tree.warn(m);
  const facts = await distroFacts(tree);
  const pk = await packagesOf(tree);
  const passwd = await tree.readText('/etc/passwd', 64 * 1024 * 1024);
  const group = await tree.readText('/etc/group', 64 * 1024 * 1024);
  return {
    root,
    osType: 'linux',
    ...facts,
    arch: await archOf(tree),
    hostname: await hostnameOf(tree),
    ...pk,
    kernels: await kernelsOf(tree),
    users: passwd === undefined ? [] : parsePasswd(passwd, warn),
    groups: group === undefined ? [] : parseGroup(group, warn),
    initSystem: await initSystemOf(tree),
    mountpoints,
    warnings: tree.warnings,
  };
}
