/** One installed package, split the way virt-inspector splits it. */
export interface Package {
  name: string;
  /** 0 when the version has no epoch. */
  epoch: number;
  version: string;
  /** dpkg's Debian revision, rpm's release, apk's "-rN"; '' when there is none. */
  release: string;
  arch: string;
}

export interface Kernel {
  version: string;
  /** The kernel image (/boot/vmlinuz-VERSION), when present. */
  path?: string;
  /** The module directory (/lib/modules/VERSION), when present. */
  modules?: string;
}

export interface User {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export interface Group {
  name: string;
  gid: number;
  members: string[];
}

/** Where fstab (or Windows' drive letters) puts a file system. */
export interface Mountpoint {
  /** The device as the OS names it: "UUID=...", "LABEL=...", "/dev/vg/root", "C:" ... */
  device: string;
  fstype?: string;
  /** The volume of this disk it resolved to (its Strata id), when it did. */
  volume?: string;
  /** btrfs: the subvolume fstab names (`subvol=` path from the top level, or `subvolid=` id). */
  subvol?: string;
}

export interface InstalledProgram {
  name: string;
  version?: string;
  publisher?: string;
  /** The Uninstall subkey it came from. */
  key: string;
}

/** One OS root found on a disk. */
export interface OsInspection {
  /** The volume holding the root file system (Strata volume id, '' for a whole-disk file system). */
  root: string;
  /** btrfs: the subvolume holding the root (path from the top level), when it is not the volume's default one. */
  subvolume?: string;
  osType: 'linux' | 'windows' | 'unknown';
  distro: string | null;
  productName: string | null;
  versionMajor: number | null;
  versionMinor: number | null;
  arch: string | null;
  hostname: string | null;
  packageFormat: 'deb' | 'rpm' | 'apk' | null;
  packageManager: 'apt' | 'dnf' | 'yum' | 'zypper' | 'apk' | null;
  packages: Package[];
  kernels: Kernel[];
  users: User[];
  groups: Group[];
  initSystem: string | null;
  /** Mount point -> device, from /etc/fstab. */
  mountpoints: Record<string, Mountpoint>;
  /** Windows only: EditionID, CurrentBuild ... */
  windows?: { edition?: string; build?: string; currentVersion?: string; programs: InstalledProgram[] };
  /** Best-effort findings: unreadable or garbled files, skipped records. */
  warnings: string[];
}
