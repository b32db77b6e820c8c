/**
 * Disk images with partition tables and LVM, made by the real tools (sgdisk, sfdisk,
 * mkfs.*, lvm2 on loop devices) and cached with `fixture()`. Each LVM fixture is a directory
 * holding the disk plus `oracle.json`: what `lvs`/`pvs` said while the devices were attached,
 * and which loop device was which part of the disk, so tests can map the tools' PV ranges
 * back to disk offsets without asking our own code.
 *
 * Device-mapper is not available on this machine (no /dev/mapper/control), so LVs cannot be
 * activated. lvcreate/lvextend are run with `--driverloaded n --activate n --zero n`: LVM then
 * writes the metadata (label, metadata area, text) without touching device-mapper, which is all
 * these tests need. LV contents are written with plain file writes at the PV offsets the tools
 * report.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { fixture, run } from './tools.js';

process.env.LVM_SUPPRESS_FD_WARNINGS = '1';

const MiB = 1024 * 1024;

/** LVM settings that keep the tools away from udev, device-mapper and the host's backups. */
const LVM_CONFIG =
  'activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 } backup { backup = 0 archive = 0 }';

/** Run an LVM command restricted to the given devices. */
export async function lvm(cmd: string, args: string[], devices: string[]): Promise<string> {
  const devs = devices.flatMap((d) => ['--devices', d]);
  return run(cmd, [...devs, '--config', LVM_CONFIG, ...args]);
}

/** Attach a loop device for [offset, offset+size) of `file`, run `fn`, always detach. */
export async function withLoop<T>(
  file: string,
  opts: { offset?: number; size?: number; sectorSize?: number },
  fn: (dev: string) => Promise<T>,
): Promise<T> {
  const args = ['-f', '--show'];
  if (opts.offset !== undefined) args.push('-o', String(opts.offset));
  if (opts.size !== undefined) args.push('--sizelimit', String(opts.size));
  if (opts.sectorSize !== undefined) args.push('--sector-size', String(opts.sectorSize));
  args.push(file);
  const dev = (await run('losetup', args)).trim();
  try {
    return await fn(dev);
  } finally {
    await run('losetup', ['-d', dev]);
  }
}

/** Create a sparse file of `size` bytes. */
export async function sparse(file: string, size: number): Promise<void> {
  await run('truncate', ['-s', String(size), file]);
}

/** Copy `src` into `disk` at byte `offset`, skipping all-zero chunks (the disk stays sparse). */
export function copyInto(disk: string, offset: number, src: string): void {
  const fin = openSync(src, 'r');
  const fout = openSync(disk, 'r+');
  try {
    const buf = Buffer.alloc(MiB);
    let pos = 0;
    for (;;) {
      const n = readSync(fin, buf, 0, buf.length, pos);
      if (n === 0) break;
      if (buf.subarray(0, n).some((b) => b !== 0)) writeSync(fout, buf, 0, n, offset + pos);
      pos += n;
    }
  } finally {
    closeSync(fin);
    closeSync(fout);
  }
}

/** Write `bytes` into `file` at `offset`. */
export function patch(file: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Make a file system image of `size` bytes with `mkfs` arguments (file name appended, or placed by `place`). */
export async function mkfsImage(file: string, size: number, cmd: string, args: string[]): Promise<void> {
  await sparse(file, size);
  await run(cmd, [...args, file]);
}

/** One row of `lvs --reportformat json -o lv_name,vg_name,seg_start_pe,seg_size_pe,seg_pe_ranges,segtype`. */
export interface LvsRow {
  lv_name: string;
  vg_name: string;
  seg_start_pe: string;
  seg_size_pe: string;
  seg_pe_ranges: string;
  segtype: string;
  vg_extent_size?: string;
}

/** One row of `pvs --units b --nosuffix -o pv_name,pe_start,pv_uuid,vg_name`. */
export interface PvsRow {
  pv_name: string;
  pe_start: string;
  pv_uuid: string;
  vg_name: string;
}

/** What the LVM tools reported while the fixture's devices were attached. */
export interface LvmOracle {
  lvs: LvsRow[];
  pvs: PvsRow[];
  /** Loop device name -> where its bytes live in disk.img (partition id or '' for the whole disk). */
  devices: Record<string, { part: string; offset: number; size: number }>;
}

async function lvmReport(devices: string[]): Promise<{ lvs: LvsRow[]; pvs: PvsRow[] }> {
  const lvsOut = await lvm(
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
    devices,
  );
  const pvsOut = await lvm(
    'pvs',
    ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'pv_name,pe_start,pv_uuid,vg_name'],
    devices,
  );
  const lvs = (JSON.parse(lvsOut) as { report: Array<{ lv: LvsRow[] }> }).report[0].lv;
  const pvs = (JSON.parse(pvsOut) as { report: Array<{ pv: PvsRow[] }> }).report[0].pv;
  return { lvs, pvs };
}

export interface FixtureDir {
  dir: string;
  disk: string;
}

function dirFixture(dir: string): FixtureDir {
  return { dir, disk: path.join(dir, 'disk.img') };
}

const lvcreateArgs = ['--driverloaded', 'n', '--activate', 'n', '--zero', 'n', '--wipesignatures', 'n', '-y'];

/**
 * GPT disk (64 MiB, 512-byte sectors) made by sgdisk:
 *  1 EF00 "EFI" 8 MiB vfat, 2 8300 "Linux root" 12 MiB ext4 (attr bit 2), 3 8200 "swap" 4 MiB swap,
 *  4 8E00 "lvm" 16 MiB holding an LVM2 PV of VG gvg with LV data (ext2 written into it),
 *  5 0700 "Données" 8 MiB (attr bit 62), nothing in it.
 */
export async function gptDisk(): Promise<FixtureDir & { oracle: LvmOracle }> {
  const dir = await fixture('vol-gpt-v3', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 64 * MiB);
    await run('sgdisk', [
      '-o',
      '-n',
      '1:2048:+8M',
      '-t',
      '1:EF00',
      '-c',
      '1:EFI',
      '-n',
      '2:0:+12M',
      '-t',
      '2:8300',
      '-c',
      '2:Linux root',
      '-n',
      '3:0:+4M',
      '-t',
      '3:8200',
      '-c',
      '3:swap',
      '-n',
      '4:0:+16M',
      '-t',
      '4:8E00',
      '-c',
      '4:lvm',
      '-n',
      '5:0:+8M',
      '-t',
      '5:0700',
      '-c',
      '5:Données',
      '-A',
      '2:set:2',
      '-A',
      '5:set:62',
      disk,
    ]);
    const at = (mib: number) => (1 + mib) * MiB; // partition 1 starts at 1 MiB
    const tmp = path.join(out, 'part.tmp');
    await mkfsImage(tmp, 8 * MiB, 'mkfs.vfat', ['-n', 'EFI']);
    copyInto(disk, at(0), tmp);
    await mkfsImage(tmp, 12 * MiB, 'mkfs.ext4', ['-q', '-F', '-L', 'root']);
    copyInto(disk, at(8), tmp);
    await mkfsImage(tmp, 4 * MiB, 'mkswap', []);
    copyInto(disk, at(20), tmp);
    const p4 = at(24);
    const oracle = await withLoop(disk, { offset: p4, size: 16 * MiB }, async (dev) => {
      await lvm('pvcreate', ['-ff', '-y', dev], [dev]);
      await lvm('vgcreate', ['gvg', dev], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'data', '-L', '8M', 'gvg'], [dev]);
      return { ...(await lvmReport([dev])), devices: { [dev]: { part: '4', offset: p4, size: 16 * MiB } } };
    });
    // An ext2 file system inside LV gvg/data, placed where the tools say its extents are.
    const [ext] = lvRanges(oracle, 'gvg', 'data');
    await mkfsImage(tmp, ext.length, 'mkfs.ext2', ['-q', '-F', '-L', 'inlv']);
    copyInto(disk, ext.diskOffset, tmp);
    rmSync(tmp);
    writeOracle(out, oracle);
  });
  return { ...dirFixture(dir), oracle: readOracle(dir) };
}

/** A byte range of disk.img that holds part of an LV, computed only from the tools' reports. */
export interface LvRange {
  /** Byte offset within the LV. */
  lvOffset: number;
  length: number;
  /** Byte offset within disk.img. */
  diskOffset: number;
  /** Partition id holding it ('' = whole disk). */
  part: string;
}

/** Map an LV's segments (lvs seg_pe_ranges + pvs pe_start + the loop device offsets) to disk.img ranges. */
export function lvRanges(o: LvmOracle, vg: string, lv: string): LvRange[] {
  const rows = o.lvs.filter((r) => r.vg_name === vg && r.lv_name === lv);
  if (rows.length === 0) throw new Error(`lvs reported no LV ${vg}/${lv}`);
  const out: LvRange[] = [];
  for (const r of rows) {
    const extent = Number(r.vg_extent_size);
    const m = /^(\S+):(\d+)-(\d+)$/.exec(r.seg_pe_ranges.trim());
    if (!m || !Number.isSafeInteger(extent) || extent <= 0) {
      throw new Error(`cannot map segment ${JSON.stringify(r)} (only single-range linear segments)`);
    }
    const pv = o.pvs.find((p) => p.pv_name === m[1]);
    const dev = o.devices[m[1]];
    if (!pv || !dev) throw new Error(`segment on unknown device ${m[1]}`);
    const first = Number(m[2]);
    const count = Number(m[3]) - first + 1;
    if (count !== Number(r.seg_size_pe)) throw new Error(`segment size mismatch in ${JSON.stringify(r)}`);
    out.push({
      lvOffset: Number(r.seg_start_pe) * extent,
      length: count * extent,
      diskOffset: dev.offset + Number(pv.pe_start) + first * extent,
      part: dev.part,
    });
  }
  return out.sort((a, b) => a.lvOffset - b.lvOffset);
}

export function readOracle(dir: string): LvmOracle {
  return JSON.parse(readFileSync(path.join(dir, 'oracle.json'), 'utf8')) as LvmOracle;
}

export function writeOracle(dir: string, o: LvmOracle): void {
  writeFileSync(path.join(dir, 'oracle.json'), JSON.stringify(o, null, 1));
}

/** GPT with 4096-byte logical sectors (sgdisk on a loop device with --sector-size 4096): 1 8300 ext4 8 MiB, 2 EF00 8 MiB. */
export async function gpt4kDisk(): Promise<FixtureDir> {
  const dir = await fixture('vol-gpt4k-v1', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 32 * MiB);
    await withLoop(disk, { sectorSize: 4096 }, async (dev) => {
      await run('sgdisk', [
        '-o',
        '-n',
        '1:256:+8M',
        '-t',
        '1:8300',
        '-c',
        '1:data',
        '-n',
        '2:0:+8M',
        '-t',
        '2:EF00',
        dev,
      ]);
    });
    const tmp = path.join(out, 'part.tmp');
    await mkfsImage(tmp, 8 * MiB, 'mkfs.ext4', ['-q', '-F', '-b', '4096']);
    copyInto(disk, 256 * 4096, tmp);
    rmSync(tmp);
  });
  return dirFixture(dir);
}

/** The sfdisk script of `mbrDisk` (sectors of 512 bytes). */
export const MBR_SCRIPT = `label: dos
label-id: 0x5eed1234
start=2048, size=16384, type=83, bootable
start=18432, size=8192, type=82
start=26624, size=8192, type=c
start=34816, type=5
size=8192, type=83
size=8192, type=8e
size=10240, type=7
`;

/** MBR disk (64 MiB) from `sfdisk` with MBR_SCRIPT: ext2 in 1, swap in 2, vfat in 3, ext4 in logical 5. */
export async function mbrDisk(): Promise<FixtureDir> {
  const dir = await fixture('vol-mbr-v1', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 64 * MiB);
    await runInput('sfdisk', ['--no-reread', '--no-tell-kernel', disk], MBR_SCRIPT);
    const parts = JSON.parse(await run('sfdisk', ['--json', disk])) as SfdiskJson;
    const byNode = (n: number) => parts.partitiontable.partitions.find((p) => p.node === `${disk}${n}`)!;
    const tmp = path.join(out, 'part.tmp');
    const put = async (n: number, cmd: string, args: string[]) => {
      const p = byNode(n);
      await mkfsImage(tmp, p.size * 512, cmd, args);
      copyInto(disk, p.start * 512, tmp);
      rmSync(tmp);
    };
    await put(1, 'mkfs.ext2', ['-q', '-F']);
    await put(2, 'mkswap', []);
    await put(3, 'mkfs.vfat', ['-F', '32']);
    await put(5, 'mkfs.ext4', ['-q', '-F']);
  });
  return dirFixture(dir);
}

export interface SfdiskJson {
  partitiontable: {
    label: string;
    id: string;
    device: string;
    unit: string;
    sectorsize?: number;
    partitions: Array<{ node: string; start: number; size: number; type: string; bootable?: boolean }>;
  };
}

/** Run a tool with text on stdin. */
export async function runInput(cmd: string, args: string[], input: string): Promise<string> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} failed (${code}): ${err}`))));
    p.stdin.end(input);
  });
}

/**
 * Whole-disk PV (64 MiB) with VG wvg: lv1 8 MiB, lv2 8 MiB, then lv1 extended by 8 MiB
 * (two segments, not adjacent), lv3 4 MiB.
 */
export async function lvmDisk(): Promise<FixtureDir & { oracle: LvmOracle }> {
  const dir = await fixture('vol-lvm-whole-v1', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 64 * MiB);
    const oracle = await withLoop(disk, {}, async (dev) => {
      await lvm('pvcreate', ['-ff', '-y', dev], [dev]);
      await lvm('vgcreate', ['wvg', dev], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'lv1', '-L', '8M', 'wvg'], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'lv2', '-L', '8M', 'wvg'], [dev]);
      await lvm('lvextend', ['--driverloaded', 'n', '-L', '+8M', 'wvg/lv1'], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'lv3', '-L', '4M', 'wvg'], [dev]);
      return { ...(await lvmReport([dev])), devices: { [dev]: { part: '', offset: 0, size: 64 * MiB } } };
    });
    writeOracle(out, oracle);
  });
  return { ...dirFixture(dir), oracle: readOracle(dir) };
}

/**
 * Whole-disk PV with a tiny metadata area (pvcreate --metadatasize) and enough metadata
 * updates (lvrename back and forth) that the circular text buffer wraps around.
 */
export async function lvmWrapDisk(): Promise<FixtureDir & { oracle: LvmOracle }> {
  const dir = await fixture('vol-lvm-wrap-v3', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 32 * MiB);
    const oracle = await withLoop(disk, {}, async (dev) => {
      await lvm('pvcreate', ['-ff', '-y', '--metadatasize', '32k', '--dataalignment', '64k', dev], [dev]);
      await lvm('vgcreate', ['-s', '1M', 'xvg', dev], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'a', '-L', '2M', 'xvg'], [dev]);
      await lvm('lvcreate', [...lvcreateArgs, '-n', 'b', '-L', '3M', 'xvg'], [dev]);
      await lvm('lvextend', ['--driverloaded', 'n', '-L', '+2M', 'xvg/a'], [dev]);
      // Rename back and forth until the committed text runs off the end of the area.
      for (let i = 0; i < 200 && !metadataWraps(disk); i++) {
        await lvm('lvrename', ['--driverloaded', 'n', 'xvg', i % 2 === 0 ? 'b' : 'c', i % 2 === 0 ? 'c' : 'b'], [dev]);
      }
      if (!metadataWraps(disk)) throw new Error('metadata text never wrapped');
      return { ...(await lvmReport([dev])), devices: { [dev]: { part: '', offset: 0, size: 32 * MiB } } };
    });
    writeOracle(out, oracle);
  });
  return { ...dirFixture(dir), oracle: readOracle(dir) };
}

/**
 * GPT disk with two 24 MiB LVM partitions (1 and 2), both PVs of VG svg: LV st striped over
 * both (-i 2), then LV span using all remaining space (linear, segments on both PVs).
 */
export async function twoPvDisk(): Promise<FixtureDir & { oracle: LvmOracle }> {
  const dir = await fixture('vol-lvm-2pv-v1', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    await sparse(disk, 64 * MiB);
    await run('sgdisk', ['-o', '-n', '1:2048:+24M', '-t', '1:8E00', '-n', '2:0:+24M', '-t', '2:8E00', disk]);
    const p1 = MiB;
    const p2 = 25 * MiB;
    const oracle = await withLoop(disk, { offset: p1, size: 24 * MiB }, (a) =>
      withLoop(disk, { offset: p2, size: 24 * MiB }, async (b) => {
        const devs = [a, b];
        await lvm('pvcreate', ['-ff', '-y', a, b], devs);
        await lvm('vgcreate', ['svg', a, b], devs);
        await lvm('lvcreate', [...lvcreateArgs, '-i', '2', '-I', '64k', '-n', 'st', '-L', '8M', 'svg'], devs);
        await lvm('lvcreate', [...lvcreateArgs, '-n', 'span', '-l', '100%FREE', 'svg'], devs);
        return {
          ...(await lvmReport(devs)),
          devices: { [a]: { part: '1', offset: p1, size: 24 * MiB }, [b]: { part: '2', offset: p2, size: 24 * MiB } },
        };
      }),
    );
    writeOracle(out, oracle);
  });
  return { ...dirFixture(dir), oracle: readOracle(dir) };
}

/** A whole-disk file system image of one kind, made by its mkfs (or genisoimage). */
export async function fsImage(kind: string): Promise<string> {
  const recipes: Record<string, [number, string, string[]]> = {
    ext2: [8 * MiB, 'mkfs.ext2', ['-q', '-F']],
    ext3: [8 * MiB, 'mkfs.ext3', ['-q', '-F']],
    ext4: [16 * MiB, 'mkfs.ext4', ['-q', '-F']],
    xfs: [320 * MiB, 'mkfs.xfs', ['-q', '-f']],
    btrfs: [128 * MiB, 'mkfs.btrfs', ['-q', '-f']],
    fat12: [1 * MiB, 'mkfs.vfat', ['-F', '12']],
    fat16: [32 * MiB, 'mkfs.vfat', ['-F', '16']],
    fat32: [64 * MiB, 'mkfs.vfat', ['-F', '32']],
    swap: [4 * MiB, 'mkswap', []],
    ntfs: [16 * MiB, 'mkntfs', ['-q', '-F', '-f']],
  };
  return fixture(`vol-fs-${kind}-v1`, async (out) => {
    if (kind === 'luks') {
      // LUKS2 header made by cryptsetup (no device-mapper needed to format a file); cheap KDF.
      await sparse(out, 32 * MiB);
      await runInput(
        'cryptsetup',
        ['luksFormat', '-q', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', '-', out],
        'strata-test',
      );
      return;
    }
    if (kind === 'iso9660') {
      const src = `${out}.d`;
      mkdirSync(src, { recursive: true });
      writeFileSync(path.join(src, 'hello.txt'), 'hello\n');
      await run('genisoimage', ['-quiet', '-o', out, '-V', 'STRATA', src]);
      rmSync(src, { recursive: true });
      return;
    }
    const r = recipes[kind];
    if (!r) throw new Error(`no recipe for ${kind}`);
    await mkfsImage(out, r[0], r[1], r[2]);
  });
}

/**
 * True when the committed metadata text of the first metadata area (the one right after the
 * label, found by its magic in the first MiB) runs past the end of the area and wraps.
 */
export function metadataWraps(disk: string): boolean {
  const fd = openSync(disk, 'r');
  try {
    const b = Buffer.alloc(MiB);
    readSync(fd, b, 0, b.length, 0);
    const m = b.indexOf(' LVM2 x[5A%r0N*>', 0, 'latin1') - 4;
    if (m < 0) return false;
    const size = Number(b.readBigUInt64LE(m + 32));
    const off = Number(b.readBigUInt64LE(m + 40));
    const len = Number(b.readBigUInt64LE(m + 48));
    return off + len > size;
  } finally {
    closeSync(fd);
  }
}

/** One allocated row of `mmls -a`: start and length in the units mmls states, plus its description. */
export interface MmlsRow {
  start: number;
  length: number;
  description: string;
}

/** Run The Sleuth Kit's `mmls -a` (allocated volumes only) and parse its table. */
export async function mmls(file: string, extra: string[] = []): Promise<{ unit: number; rows: MmlsRow[] }> {
  const out = await run('mmls', ['-a', ...extra, file]);
  const unit = Number(/Units are in (\d+)-byte sectors/.exec(out)?.[1]);
  if (!Number.isSafeInteger(unit)) throw new Error(`mmls printed no unit: ${out}`);
  const rows: MmlsRow[] = [];
  for (const line of out.split('\n')) {
    const m = /^\d+:\s+\S+\s+(\d+)\s+(\d+)\s+(\d+)\s*(.*)$/.exec(line);
    if (m) rows.push({ start: Number(m[1]), length: Number(m[3]), description: m[4].trim() });
  }
  if (rows.length === 0) throw new Error(`mmls listed no volumes: ${out}`);
  return { unit, rows };
}

/** `blkid -p` on a byte range of a file: the TYPE it reports, or undefined when it finds nothing (exit 2). */
export async function blkidType(file: string, offset = 0, size?: number): Promise<string | undefined> {
  const args = ['-p', '-o', 'value', '-s', 'TYPE', '-O', String(offset)];
  if (size !== undefined) args.push('-S', String(size));
  const r = spawnSync('blkid', [...args, file], { encoding: 'utf8' });
  if (r.status === 2) return undefined; // blkid: nothing found
  if (r.status !== 0) throw new Error(`blkid ${args.join(' ')} ${file} failed (${r.status}): ${r.stderr}`);
  const t = r.stdout.trim();
  return t === '' ? undefined : t;
}
