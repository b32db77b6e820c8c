/**
 * A real Debian root for the inspection tests: `debootstrap --variant=minbase bookworm`
 * (once, cached with fixture()), trimmed of caches and docs so images stay small, and put
 * into disk images with the real tools: ext4 in GPT partitions (root, /boot and /var on
 * three partitions, named in /etc/fstab by UUID=, LABEL= and PARTUUID=) and ext4 in LVM
 * logical volumes (named /dev/mapper/VG-LV and /dev/VG/LV).
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { aptMirror } from '../../bench/common.js';
import { fixture, run } from './tools.js';
import { copyInto, lvm, lvRanges, mkfsImage, sparse, withLoop, writeOracle } from './volume-images.js';

const MiB = 1024 * 1024;

/** `debootstrap --variant=minbase bookworm` (a few minutes, once). */
export async function debootstrapTree(): Promise<string> {
  return fixture('inspect-bookworm-minbase-v1', async (out) => {
    await run('debootstrap', ['--variant=minbase', 'bookworm', out, aptMirror()]);
  });
}

export const KERNEL = '6.1.0-99-amd64';
export const HOSTNAME = 'strata-deb';

/**
 * The debootstrap tree trimmed for images (no apt caches or lists, no /usr/share, no
 * perl-base or gconv), with hostname HOSTNAME, a user "deploy", and a kernel image plus
 * module directory for KERNEL (a copy of a binary: only names matter to inspection).
 */
export async function debianTree(): Promise<string> {
  const full = await debootstrapTree();
  return fixture('inspect-debian-trim-v1', async (out) => {
    await run('cp', ['-a', full, out]);
    for (const p of ['var/cache', 'var/lib/apt/lists', 'usr/share', 'usr/lib/locale']) {
      for (const e of readdirSync(path.join(out, p))) rmSync(path.join(out, p, e), { recursive: true, force: true });
    }
    for (const p of ['usr/lib/x86_64-linux-gnu/perl-base', 'usr/lib/x86_64-linux-gnu/gconv']) {
      rmSync(path.join(out, p), { recursive: true, force: true });
    }
    writeFileSync(path.join(out, 'etc/hostname'), `${HOSTNAME}\n`);
    await run('chroot', [out, 'useradd', '-m', '-u', '2001', '-s', '/bin/bash', 'deploy']);
    await run('cp', [path.join(out, 'usr/bin/true'), path.join(out, `boot/vmlinuz-${KERNEL}`)]);
    mkdirSync(path.join(out, `lib/modules/${KERNEL}/kernel`), { recursive: true });
  });
}

/** What a disk fixture's maker chose (uuids, labels, partition GUIDs) and the fstab it wrote. */
export interface DebDiskFacts {
  fstab: string;
  /** fstab device -> the Strata volume id it must resolve to. */
  expectVolume: Record<string, string>;
  /** Volume id of the root file system. */
  root: string;
}

export interface DebDisk {
  disk: string;
  facts: DebDiskFacts;
}

/** Stage directories: the tree without /boot and /var contents (root), and each of those. */
async function stage(tree: string, dir: string): Promise<{ root: string; boot: string; varDir: string }> {
  const root = path.join(dir, 'stage-root');
  await run('cp', ['-a', tree, root]);
  for (const p of ['boot', 'var']) {
    for (const e of readdirSync(path.join(root, p))) rmSync(path.join(root, p, e), { recursive: true, force: true });
  }
  return { root, boot: path.join(tree, 'boot'), varDir: path.join(tree, 'var') };
}

async function mkext(out: string, sizeMiB: number, kind: string, dir: string, extra: string[]): Promise<void> {
  await mkfsImage(out, sizeMiB * MiB, `mkfs.${kind}`, ['-q', '-F', '-d', dir, ...extra]);
}

/**
 * GPT disk (sgdisk): 1 "boot" ext2 LABEL=debboot (8 MiB, /boot), 2 "root" ext4 (80 MiB,
 * the tree without /boot and /var contents), 3 "var" ext4 (24 MiB, /var). /etc/fstab
 * names root by UUID=, /boot by LABEL=, /var by PARTUUID=.
 */
export async function debianGptDisk(): Promise<DebDisk> {
  const tree = await debianTree();
  const dir = await fixture('inspect-deb-gpt-v1', async (out) => {
    mkdirSync(out);
    const rootUuid = randomUUID();
    const varPartUuid = randomUUID().toUpperCase();
    const fstab = `# written by the inspect tests\nUUID=${rootUuid} / ext4 errors=remount-ro 0 1\nLABEL=debboot /boot ext2 defaults 0 2\nPARTUUID=${varPartUuid.toLowerCase()} /var ext4 defaults 0 2\nproc /proc proc defaults 0 0\n/dev/sdb1 none swap sw 0 0\n`;
    const s = await stage(tree, out);
    writeFileSync(path.join(s.root, 'etc/fstab'), fstab);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 120 * MiB);
    await run('sgdisk', [
      '-o',
      ...['-n', '1:2048:+8M', '-t', '1:8300', '-c', '1:boot'],
      ...['-n', '2:0:+80M', '-t', '2:8300', '-c', '2:root'],
      ...['-n', '3:0:+24M', '-t', '3:8300', '-c', '3:var', '-u', `3:${varPartUuid}`],
      disk,
    ]);
    const info = await run('sgdisk', ['-i', '3', disk]);
    if (!info.includes(varPartUuid)) throw new Error(`sgdisk did not set the partition GUID: ${info}`);
    const tmp = path.join(out, 'part.tmp');
    await mkext(tmp, 8, 'ext2', s.boot, ['-L', 'debboot']);
    copyInto(disk, 1 * MiB, tmp);
    await mkext(tmp, 80, 'ext4', s.root, ['-U', rootUuid]);
    copyInto(disk, 9 * MiB, tmp);
    await mkext(tmp, 24, 'ext4', s.varDir, []);
    copyInto(disk, 89 * MiB, tmp);
    rmSync(tmp);
    rmSync(s.root, { recursive: true, force: true });
    const facts: DebDiskFacts = {
      fstab,
      root: '2',
      expectVolume: { [`UUID=${rootUuid}`]: '2', 'LABEL=debboot': '1', [`PARTUUID=${varPartUuid.toLowerCase()}`]: '3' },
    };
    writeFileSync(path.join(out, 'facts.json'), JSON.stringify(facts));
  });
  return { disk: path.join(dir, 'disk.img'), facts: JSON.parse(readFileSync(path.join(dir, 'facts.json'), 'utf8')) };
}

const lvcreateArgs = ['--driverloaded', 'n', '--activate', 'n', '--zero', 'n', '--wipesignatures', 'n', '-y'];

/**
 * GPT disk with one LVM PV (partition 1, 8E00) holding VG "vg-deb" with LVs "root" (ext4,
 * the tree without /var contents) and "var" (ext4, /var). /etc/fstab names them
 * /dev/mapper/vg--deb-root and /dev/vg-deb/var. LVs are written at the offsets lvs reports.
 */
export async function debianLvmDisk(): Promise<DebDisk> {
  const tree = await debianTree();
  const dir = await fixture('inspect-deb-lvm-v1', async (out) => {
    mkdirSync(out);
    const fstab = '/dev/mapper/vg--deb-root / ext4 defaults 0 1\n/dev/vg-deb/var /var ext4 defaults 0 2\n';
    const s = await stage(tree, out);
    await run('cp', ['-a', `${s.boot}/.`, path.join(s.root, 'boot')]);
    writeFileSync(path.join(s.root, 'etc/fstab'), fstab);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 128 * MiB);
    await run('sgdisk', ['-o', '-n', '1:2048:0', '-t', '1:8E00', '-c', '1:lvm', disk]);
    const p1 = MiB;
    const size = 127 * MiB - 34 * 512;
    const oracle = await withLoop(disk, { offset: p1, size }, async (dev) => {
      await lvm('pvcreate', ['-ff', '-y', dev], [dev]);
      await lvm('vgcreate', ['vg-deb', dev], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'root', '-L', '88M', 'vg-deb'], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'var', '-L', '24M', 'vg-deb'], [dev]);
      const lvs = JSON.parse(
        await lvm(
          'lvs',
          [
            '-a',
            '--reportformat',
            'json',
            '--units',
            'b',
            '--nosuffix',
            '-o',
            'lv_name,vg_name,seg_start_pe,seg_size_pe,seg_pe_ranges,segtype,vg_extent_size',
          ],
          [dev],
        ),
      ).report[0].lv;
      const pvs = JSON.parse(
        await lvm(
          'pvs',
          ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'pv_name,pe_start,pv_uuid,vg_name'],
          [dev],
        ),
      ).report[0].pv;
      return { lvs, pvs, devices: { [dev]: { part: '1', offset: p1, size } } };
    });
    writeOracle(out, oracle);
    const tmp = path.join(out, 'lv.tmp');
    for (const [lv, src] of [
      ['root', s.root],
      ['var', s.varDir],
    ] as const) {
      const ranges = lvRanges(oracle, 'vg-deb', lv);
      if (ranges.length !== 1) throw new Error(`expected one segment for ${lv}`);
      await mkext(tmp, ranges[0].length / MiB, 'ext4', src, []);
      copyInto(disk, ranges[0].diskOffset, tmp);
    }
    rmSync(tmp);
    rmSync(s.root, { recursive: true, force: true });
    const facts: DebDiskFacts = {
      fstab,
      root: 'vg-deb/root',
      expectVolume: { '/dev/mapper/vg--deb-root': 'vg-deb/root', '/dev/vg-deb/var': 'vg-deb/var' },
    };
    writeFileSync(path.join(out, 'facts.json'), JSON.stringify(facts));
  });
  return { disk: path.join(dir, 'disk.img'), facts: JSON.parse(readFileSync(path.join(dir, 'facts.json'), 'utf8')) };
}

/** Symlinks the first-hour tests add to the Debian tree (besides Debian's own /etc/os-release). */
export const EXTRA_LINKS: Record<string, string> = {
  // absolute: resolved against the image's root, never the host's (whose hostname differs)
  'etc/strata-abs-link': '/etc/hostname',
  // climbs past the root: '..' stops there, so this is the image's /etc/hostname
  'etc/strata-climb-link': '../../../../../../../etc/hostname',
  // a loop
  'strata-loop-a': 'strata-loop-b',
  'strata-loop-b': 'strata-loop-a',
};

/**
 * What a new user meets: the Debian tree on a GPT disk (sgdisk) with an EFI system
 * partition (1, EF00, vfat by mkfs.vfat, a file put there by mtools) and an ext4 root (2,
 * mkfs.ext4 -d, with EXTRA_LINKS), as qcow2 (qemu-img convert) and as raw. The tree it was
 * made from is returned as the oracle.
 */
export async function debianEfiDisk(): Promise<{ qcow2: string; raw: string; tree: string }> {
  const base = await debianTree();
  const dir = await fixture('cli-deb-efi-v2', async (out) => {
    mkdirSync(out);
    const tree = path.join(out, 'tree');
    await run('cp', ['-a', base, tree]);
    for (const [p, t] of Object.entries(EXTRA_LINKS)) await run('ln', ['-s', t, path.join(tree, p)]);
    const raw = path.join(out, 'disk.img');
    await sparse(raw, 120 * MiB);
    await run('sgdisk', [
      '-o',
      ...['-n', '1:2048:+16M', '-t', '1:EF00', '-c', '1:EFI System'],
      ...['-n', '2:0:0', '-t', '2:8300', '-c', '2:root'],
      raw,
    ]);
    const esp = path.join(out, 'esp.tmp');
    await sparse(esp, 16 * MiB);
    await run('mkfs.vfat', ['-F', '16', '-n', 'ESP', esp]);
    writeFileSync(path.join(out, 'BOOTX64.EFI'), 'not really a boot loader\n');
    await run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT']);
    await run('mcopy', ['-i', esp, path.join(out, 'BOOTX64.EFI'), '::/EFI/BOOT/BOOTX64.EFI']);
    copyInto(raw, 1 * MiB, esp);
    rmSync(esp);
    const rootSize = 120 * MiB - 17 * MiB - 34 * 512;
    const part = path.join(out, 'root.tmp');
    await mkfsImage(part, Math.floor(rootSize / 4096) * 4096, 'mkfs.ext4', ['-q', '-F', '-d', tree]);
    copyInto(raw, 17 * MiB, part);
    rmSync(part);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, path.join(out, 'disk.qcow2')]);
  });
  return { qcow2: path.join(dir, 'disk.qcow2'), raw: path.join(dir, 'disk.img'), tree: path.join(dir, 'tree') };
}
