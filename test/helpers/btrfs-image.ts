import { execFileSync } from 'node:child_process';
import {
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { bytesOf, extTree, populateMounted, withRwMount } from './ext-tree.js';
import { fixture, run } from './tools.js';

const VERSION = 'v2';
const MiB = 1 << 20;

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });

/** Compressible bytes: repeated text with a counter, so each 128 KiB chunk compresses. */
export function compressible(seed: string, n: number): Buffer {
  const parts: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const s = `${seed} line ${i} the quick brown fox jumps over the lazy dog\n`;
    parts.push(s);
    len += s.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

/**
 * Things the kernel makes on a read-write mount of a btrfs image: subvolumes (nested), a
 * snapshot, files written with compress=zstd/zlib/lzo, reflinked copies.
 */
export async function populateBtrfs(mnt: string): Promise<void> {
  populateMounted(mnt);
  for (const alg of ['zstd', 'zlib', 'lzo']) {
    await run('mount', ['-o', `remount,compress=${alg}`, mnt]);
    const d = path.join(mnt, `compress-${alg}`);
    mkdirSync(d);
    writeFileSync(path.join(d, 'text'), compressible(alg, 3 * MiB + 777));
    writeFileSync(path.join(d, 'small'), compressible(`${alg}-small`, 2000)); // inline, compressed
    writeFileSync(path.join(d, 'random'), bytesOf(`${alg}-random`, 300_000)); // incompressible
    sh('sync', []);
  }
  await run('mount', ['-o', 'remount,compress=no', mnt]);
  sh('cp', ['--reflink=always', path.join(mnt, 'files', 'size-1500000'), path.join(mnt, 'reflinked')]);
  sh('btrfs', ['subvolume', 'create', path.join(mnt, '@home')]);
  mkdirSync(path.join(mnt, '@home', 'user'));
  writeFileSync(path.join(mnt, '@home', 'user', 'notes'), bytesOf('notes', 50_000));
  sh('btrfs', ['subvolume', 'create', path.join(mnt, '@home', 'nested')]);
  writeFileSync(path.join(mnt, '@home', 'nested', 'deep-file'), 'in a nested subvolume\n');
  sh('btrfs', ['subvolume', 'create', path.join(mnt, 'data')]);
  writeFileSync(path.join(mnt, 'data', 'payload'), bytesOf('payload', 400_000));
  sh('btrfs', ['subvolume', 'snapshot', path.join(mnt, 'data'), path.join(mnt, 'data-snap')]);
  writeFileSync(path.join(mnt, 'data', 'after-snapshot'), 'written after the snapshot\n');
  sh('sync', []);
}

/** mkfs.btrfs --rootdir of the shared test tree, then populated through a kernel mount. */
export async function btrfsImage(): Promise<string> {
  const tree = await extTree();
  return fixture(`btrfs-main-${VERSION}.img`, async (out) => {
    // mkfs.btrfs --rootdir (6.2) writes a sparse file's holes as data, so the 5 GiB sparse file
    // would take 5 GiB of real disk (a CI machine ran out). It goes in through the kernel
    // instead, which keeps the holes: the tree is copied without it, and cp adds it on the mount.
    const big = path.join('sparse', 'big-over-4g');
    const copy = `${out}.tree`;
    rmSync(copy, { recursive: true, force: true });
    try {
      await run('cp', ['-a', tree, copy]);
      rmSync(path.join(copy, big));
      writeFileSync(out, '');
      truncateSync(out, 768 * MiB);
      await run('mkfs.btrfs', ['-q', '-f', '--rootdir', copy, out]);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
    await withRwMount(out, async (mnt) => {
      await run('cp', ['-a', '--sparse=always', path.join(tree, big), path.join(mnt, big)]);
      await populateBtrfs(mnt);
    });
    await run('btrfs', ['check', '--readonly', out]);
  });
}

/** A small image whose default subvolume (set-default) is not the top level. */
export async function btrfsDefaultSubvolImage(): Promise<string> {
  return fixture(`btrfs-setdefault-${VERSION}.img`, async (out) => {
    writeFileSync(out, '');
    truncateSync(out, 160 * MiB);
    await run('mkfs.btrfs', ['-q', '-f', out]);
    await withRwMount(out, (mnt) => {
      writeFileSync(path.join(mnt, 'top-file'), 'top level\n');
      sh('btrfs', ['subvolume', 'create', path.join(mnt, '@')]);
      mkdirSync(path.join(mnt, '@', 'etc'));
      writeFileSync(path.join(mnt, '@', 'etc', 'fstab'), 'UUID=x / btrfs subvol=@ 0 0\n');
      const id = /Subvolume ID:\s+(\d+)/.exec(String(sh('btrfs', ['subvolume', 'show', path.join(mnt, '@')])))?.[1];
      if (!id) throw new Error('no subvolume id');
      sh('btrfs', ['subvolume', 'set-default', id, mnt]);
    });
  });
}

/** The files of the Fedora-like fixture's home subvolume: path under @home -> content. */
export const FEDORA_HOME: Record<string, string> = {
  'alice/.bashrc': '# alice on btrfs\nexport EDITOR=vi\n',
  'alice/notes/todo.txt': 'read the subvolume through fstab\n',
  'bob/.profile': 'PATH=$HOME/bin:$PATH\n',
};

/**
 * A Fedora-like btrfs root: the top level holds subvolumes `@` (the OS: os-release, an rpm
 * database written by rpm from rpmbuild packages, passwd, an fstab naming `subvol=@` and
 * `subvol=@home` by the file system's UUID) and `@home` (the users' home directories), all
 * written through a kernel mount with compress=zstd:1 as Fedora mounts it; plus a read-only
 * snapshot of `@` (`@snapshots/1`, as snapper keeps them) whose fstab still names `@`.
 * Returns the directory holding `fedora.img` and `tree` (the OS tree, for `rpm -qa`).
 */
export async function fedoraBtrfsFixture(): Promise<string> {
  return fixture(`btrfs-fedora-${VERSION}`, async (out) => {
    mkdirSync(out);
    const tree = path.join(out, 'tree');
    const top = path.join(out, 'build');
    for (const d of ['etc', 'usr/bin', 'var/lib/rpm', 'home']) mkdirSync(path.join(tree, d), { recursive: true });
    mkdirSync(top, { recursive: true });
    for (const [name, version] of [
      ['fedora-release', '40'],
      ['strata-btrfs-test', '2.0.1'],
    ]) {
      const spec = path.join(top, `${name}.spec`);
      writeFileSync(
        spec,
        `%global debug_package %{nil}\nName: ${name}\nVersion: ${version}\nRelease: 1.fc40\nSummary: t\nLicense: MIT\nBuildArch: noarch\n%description\nt\n%files\n`,
      );
      await run('rpmbuild', ['--define', `_topdir ${top}`, '-bb', spec]);
    }
    const rpms = (await run('find', [path.join(top, 'RPMS'), '-name', '*.rpm'])).trim().split('\n');
    await run('rpm', ['--root', tree, '--dbpath', '/var/lib/rpm', '--initdb']);
    await run('rpm', ['--root', tree, '--dbpath', '/var/lib/rpm', '-i', '--nodeps', '--justdb', ...rpms]);
    rmSync(top, { recursive: true, force: true });
    writeFileSync(
      path.join(tree, 'etc/os-release'),
      'NAME="Fedora Linux"\nVERSION="40 (Workstation Edition)"\nID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40 (Workstation Edition)"\nVARIANT_ID=workstation\n',
    );
    writeFileSync(path.join(tree, 'etc/hostname'), 'fedora-btrfs\n');
    writeFileSync(
      path.join(tree, 'etc/passwd'),
      'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/zsh\n',
    );
    writeFileSync(path.join(tree, 'etc/group'), 'root:x:0:\nwheel:x:10:alice\nalice:x:1000:\nbob:x:1001:\n');
    writeFileSync(path.join(tree, 'usr/bin/dnf'), '#!/usr/bin/python3\n');
    const img = path.join(out, 'fedora.img');
    writeFileSync(img, '');
    truncateSync(img, 256 * MiB);
    await run('mkfs.btrfs', ['-q', '-f', '-L', 'fedora', img]);
    const uuid = /^fsid\s+(\S+)/m.exec(await run('btrfs', ['inspect-internal', 'dump-super', img]))?.[1];
    if (!uuid) throw new Error('no fsid in dump-super');
    writeFileSync(
      path.join(tree, 'etc/fstab'),
      `# created by anaconda\nUUID=${uuid} /     btrfs subvol=@,compress=zstd:1 0 0\nUUID=${uuid} /home btrfs subvol=@home,compress=zstd:1 0 0\n`,
    );
    await withRwMount(img, async (m) => {
      await run('mount', ['-o', 'remount,compress=zstd:1', m]);
      sh('btrfs', ['subvolume', 'create', path.join(m, '@')]);
      sh('btrfs', ['subvolume', 'create', path.join(m, '@home')]);
      await run('cp', ['-a', `${tree}/.`, path.join(m, '@')]);
      for (const [p, text] of Object.entries(FEDORA_HOME)) {
        mkdirSync(path.dirname(path.join(m, '@home', p)), { recursive: true });
        writeFileSync(path.join(m, '@home', p), text);
      }
      mkdirSync(path.join(m, '@snapshots'));
      sh('btrfs', ['subvolume', 'snapshot', '-r', path.join(m, '@'), path.join(m, '@snapshots', '1')]);
      sh('sync', []);
    });
    await run('btrfs', ['check', '--readonly', img]);
  });
}

/** Loop devices for `files`, the kernel's btrfs mount of them all (device= each), then unmount and detach. */
export async function withMultiDeviceMount<T>(
  files: string[],
  readOnly: boolean,
  fn: (mnt: string) => T | Promise<T>,
): Promise<T> {
  const loops: string[] = [];
  const mnt = `/tmp/strata-raid-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  try {
    for (const f of files) loops.push((await run('losetup', ['-f', '--show', ...(readOnly ? ['-r'] : []), f])).trim());
    mkdirSync(mnt, { recursive: true });
    const opts = [...(readOnly ? ['ro'] : []), ...loops.map((l) => `device=${l}`)].join(',');
    await run('mount', ['-t', 'btrfs', '-o', opts, loops[0], mnt]);
    try {
      return await fn(mnt);
    } finally {
      await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]));
    }
  } finally {
    rmSync(mnt, { recursive: true, force: true });
    for (const l of loops) await run('losetup', ['-d', l]).catch(() => undefined);
  }
}

/** A small tree with what crosses stripes and devices: big files, compressed files, a subvolume and snapshot. */
export async function populateRaid(mnt: string): Promise<void> {
  const w = (p: string, b: string | Buffer) => {
    mkdirSync(path.dirname(path.join(mnt, p)), { recursive: true });
    writeFileSync(path.join(mnt, p), b);
  };
  w('empty', '');
  w('tiny', 'inline in a leaf\n');
  w('etc/hostname', 'raid-host\n');
  for (const n of [5000, 65_536, 200_000, 1_500_000, 6 * MiB + 123]) w(`files/size-${n}`, bytesOf(`raid-${n}`, n));
  for (let i = 0; i < 1000; i++) w(`many/entry-${String(i).padStart(4, '0')}`, `entry ${i}\n`);
  const sparse = path.join(mnt, 'files', 'sparse');
  writeFileSync(sparse, '');
  truncateSync(sparse, 40 * MiB);
  const fd = openSync(sparse, 'r+');
  writeSync(fd, bytesOf('sparse-a', 300_000), 0, 300_000, 3 * MiB + 5);
  writeSync(fd, bytesOf('sparse-b', 100_000), 0, 100_000, 39 * MiB);
  closeSync(fd);
  symlinkSync('etc/hostname', path.join(mnt, 'link-short'));
  symlinkSync(`/${'long-target/'.repeat(30)}end`, path.join(mnt, 'link-long'));
  linkSync(path.join(mnt, 'files', 'size-5000'), path.join(mnt, 'hardlink'));
  sh('setfattr', ['-n', 'user.raid', '-v', 'mirrored', path.join(mnt, 'tiny')]);
  sh('mknod', [path.join(mnt, 'char-dev'), 'c', '1', '3']);
  sh('mkfifo', [path.join(mnt, 'fifo')]);
  await run('mount', ['-o', 'remount,compress=zstd', mnt]);
  w('compressed/text', compressible('raid-zstd', 3 * MiB + 777));
  w('compressed/small', compressible('raid-small', 2000));
  sh('sync', []);
  await run('mount', ['-o', 'remount,compress=no', mnt]);
  sh('cp', ['--reflink=always', path.join(mnt, 'files', 'size-1500000'), path.join(mnt, 'reflinked')]);
  sh('btrfs', ['subvolume', 'create', path.join(mnt, 'sub')]);
  w('sub/inside', bytesOf('inside', 300_000));
  sh('btrfs', ['subvolume', 'snapshot', path.join(mnt, 'sub'), path.join(mnt, 'sub-snap')]);
  w('sub/after-snapshot', 'written after the snapshot\n');
  sh('sync', []);
}

/**
 * A btrfs file system over `devices` sparse files, data and metadata both `profile`
 * (mkfs.btrfs -d P -m P), populated through the kernel's mount of all of them. Returns the
 * device image paths (devid 1, 2, ... in mkfs order).
 */
export async function btrfsRaidImages(profile: string, devices: number): Promise<string[]> {
  const dir = await fixture(`btrfs-raid-${profile}-${devices}-v1`, async (out) => {
    mkdirSync(out);
    const files = Array.from({ length: devices }, (_, i) => path.join(out, `dev${i + 1}.img`));
    for (const f of files) {
      writeFileSync(f, '');
      truncateSync(f, 200 * MiB);
    }
    await run('mkfs.btrfs', ['-q', '-f', '-L', `raid-${profile}`, '-d', profile, '-m', profile, ...files]);
    await withMultiDeviceMount(files, false, populateRaid);
  });
  return Array.from({ length: devices }, (_, i) => path.join(dir, `dev${i + 1}.img`));
}

/**
 * btrfsRaidImages' tree plus an OS root at the top level (os-release of a Fedora-like
 * system, passwd, group, /usr), so `inspect` finds a root: for the verbs given `--device`.
 */
export async function btrfsRaidOsImages(profile: string, devices: number): Promise<string[]> {
  const dir = await fixture(`btrfs-raid-os-${profile}-${devices}-v1`, async (out) => {
    mkdirSync(out);
    const files = Array.from({ length: devices }, (_, i) => path.join(out, `dev${i + 1}.img`));
    for (const f of files) {
      writeFileSync(f, '');
      truncateSync(f, 200 * MiB);
    }
    await run('mkfs.btrfs', ['-q', '-f', '-L', `raid-os-${profile}`, '-d', profile, '-m', profile, ...files]);
    await withMultiDeviceMount(files, false, async (mnt) => {
      await populateRaid(mnt);
      mkdirSync(path.join(mnt, 'usr', 'bin'), { recursive: true });
      writeFileSync(path.join(mnt, 'usr', 'bin', 'dnf'), '#!/usr/bin/python3\n');
      writeFileSync(
        path.join(mnt, 'etc', 'os-release'),
        'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\nPRETTY_NAME="Fedora Linux 41 (Server Edition)"\n',
      );
      writeFileSync(
        path.join(mnt, 'etc', 'passwd'),
        'root:x:0:0:root:/root:/bin/bash\nraider:x:1000:1000:RAID user:/home/raider:/bin/bash\n',
      );
      writeFileSync(path.join(mnt, 'etc', 'group'), 'root:x:0:\nraider:x:1000:\n');
      sh('sync', []);
    });
  });
  return Array.from({ length: devices }, (_, i) => path.join(dir, `dev${i + 1}.img`));
}
