import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { FIXTURES, fixture, run, unmount } from './tools.js';

/**
 * Fixtures for the file-system CLI and extraction tests: a small but awkward source tree
 * (nested dirs, relative/absolute/dangling/long symlinks, hard links across directories, a
 * fifo, a char device, a sparse file, an xattr, non-ASCII names, odd modes and owners,
 * times with nanoseconds and past 2038), copied into ext4 by `mkfs.ext4 -d` and placed
 * whole-disk, in a GPT partition, in an MBR logical partition and in a qcow2 of the MBR
 * disk. Needs root (mknod, chown, a loop mount to restore nanosecond times, which
 * mkfs.ext4 -d 1.47 drops).
 */
export interface FsPlacements {
  /** The source tree mkfs.ext4 -d copied (TIMES restored in the image afterwards). */
  src: string;
  /** Raw ext4 image (no partition table). */
  whole: string;
  /** GPT disk: partition 1 EFI (empty), partition 2 the ext4 file system. */
  gpt: string;
  gptPart: string;
  /** MBR disk: primary 1 (empty), extended 2, logical 5 (empty), logical 6 the ext4 file system. */
  mbr: string;
  mbrPart: string;
  /** The MBR disk converted to qcow2. */
  qcow2: string;
}

export const FS_BYTES = 40 << 20;
const VERSION = 'v1';

/** Paths (relative to the tree) and the exact times set on them, as "sec.nsec" for touch -d @. */
export const TIMES: Record<string, string> = {
  'hello.txt': '1704164645.123456789',
  'future.txt': '4102444800.987654321', // 2100-01-01, past 2038
  'dir1/dir2/dir3/deep.txt': '1000000000.000000001',
  'dir1/link-rel': '1600000000.5',
  'caf\u00e9.txt': '1234567890.999999999',
  dir1: '1500000000.25',
};

export function prngBytes(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  let block = 0;
  for (let o = 0; o < n; o += 32) {
    const h = createHash('sha256').update(`${seed}:${block++}`).digest();
    h.copy(out, o, 0, Math.min(32, n - o));
  }
  return out;
}

export async function makeSourceTree(dir: string): Promise<void> {
  const p = (r: string) => path.join(dir, r);
  mkdirSync(p('dir1/dir2/dir3'), { recursive: true });
  mkdirSync(p('\u65e5\u672c\u8a9e'), { recursive: true });
  mkdirSync(p('private'), { mode: 0o700 });
  mkdirSync(p('sticky'));
  mkdirSync(p('empty-dir'));
  writeFileSync(p('hello.txt'), 'hello, world\n');
  writeFileSync(p('future.txt'), 'from the future\n');
  writeFileSync(p('empty'), '');
  writeFileSync(p('big.bin'), prngBytes(3 * 1024 * 1024 + 123, 'big'));
  writeFileSync(p('dir1/dir2/dir3/deep.txt'), 'deep\n');
  writeFileSync(p('caf\u00e9.txt'), 'caf\u00e9\n');
  writeFileSync(p('\u65e5\u672c\u8a9e/\u30d5\u30a1\u30a4\u30eb.txt'), prngBytes(5000, 'jp'));
  writeFileSync(p('emoji-\u{1f389}.txt'), 'party\n');
  writeFileSync(p('space name.txt'), 'spaces\n');
  writeFileSync(p('private/secret'), 'secret\n', { mode: 0o600 });
  writeFileSync(p('setuid.sh'), '#!/bin/sh\necho hi\n');
  writeFileSync(p('hard-a'), prngBytes(10000, 'hard'));
  // Sparse: 64 MiB apparent, data at 0, at 20 MiB + 100 (crossing a block boundary) and at the very end.
  const fd = openSync(p('sparse.img'), 'w');
  try {
    writeSync(fd, prngBytes(4096, 's0'), 0, 4096, 0);
    writeSync(fd, prngBytes(10000, 's1'), 0, 10000, 20 * 1024 * 1024 + 100);
    writeSync(fd, Buffer.from('tail'), 0, 4, 64 * 1024 * 1024 - 4);
  } finally {
    closeSync(fd);
  }
  await run('ln', [p('hard-a'), p('dir1/hard-b')]);
  await run('ln', ['-s', '../hello.txt', p('dir1/link-rel')]);
  await run('ln', ['-s', '/etc/passwd', p('abs-link')]);
  await run('ln', ['-s', 'nowhere/at/all', p('dangling')]);
  await run('ln', ['-s', `${'long-target/'.repeat(10)}end`, p('long-link')]);
  await run('ln', ['-s', 'dir1/dir2', p('dir-link')]);
  await run('mkfifo', ['-m', '0640', p('fifo1')]);
  await run('mknod', ['-m', '0620', p('chardev'), 'c', '1', '3']);
  await run('chmod', ['4755', p('setuid.sh')]);
  await run('chmod', ['1777', p('sticky')]);
  await run('chmod', ['0444', p('hello.txt')]);
  await run('chown', ['-h', '1234:5678', p('private'), p('private/secret'), p('dir1/link-rel')]);
  await run('chown', ['1000:1000', p('hello.txt')]);
  await run('setfattr', ['-n', 'user.strata', '-v', 'xattr-value', p('hello.txt')]);
  await setTimes(dir);
}

/** Apply TIMES with touch (exact nanoseconds; -h: symlinks themselves). */
export async function setTimes(root: string): Promise<void> {
  for (const [rel, t] of Object.entries(TIMES)) await run('touch', ['-h', '-d', `@${t}`, path.join(root, rel)]);
}

/** Mount an image through a loop device (read-only unless `rw`); always unmounts. */
export async function withMount<T>(
  image: string,
  fn: (dir: string) => Promise<T>,
  opts: { rw?: boolean; offset?: number } = {},
): Promise<T> {
  const dir = mkdtempSync(path.join(FIXTURES, 'mnt-'));
  const o = [opts.rw ? 'rw' : 'ro', 'loop'];
  if (!opts.rw) o.push('noload');
  if (opts.offset) o.push(`offset=${opts.offset}`);
  await run('mount', ['-o', o.join(','), image, dir]);
  try {
    return await fn(dir);
  } finally {
    await unmount(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Copy `fsImage` into `disk` at byte `offset` (dd conv=notrunc,sparse). */
export async function placeAt(disk: string, fsImage: string, offset: number): Promise<void> {
  await run('dd', [
    `if=${fsImage}`,
    `of=${disk}`,
    'bs=1M',
    `seek=${offset}`,
    'oflag=seek_bytes',
    'conv=notrunc,sparse',
    'status=none',
  ]);
}

/** First byte of GPT partition `n` from `sgdisk -i` (the oracle's own report). */
export async function sgdiskStart(disk: string, n: number): Promise<number> {
  const out = await run('sgdisk', ['-i', String(n), disk]);
  const m = /First sector: (\d+)/.exec(out);
  if (!m) throw new Error(`no first sector in sgdisk -i ${n}: ${out}`);
  return Number(m[1]) * 512;
}

export interface SfdiskPart {
  node: string;
  start: number;
  size: number;
  type: string;
  bootable?: boolean;
}

export async function sfdiskParts(disk: string): Promise<SfdiskPart[]> {
  const j = JSON.parse(await run('sfdisk', ['--json', disk])) as { partitiontable: { partitions: SfdiskPart[] } };
  return j.partitiontable.partitions;
}

/** The ext4 image of a tree (4 KiB blocks, 256-byte inodes), TIMES restored through a rw mount. */
export async function ext4Of(key: string, src: string, extra: string[] = [], bytes = FS_BYTES): Promise<string> {
  return fixture(`fs-cli-${VERSION}-${key}.img`, async (out) => {
    await run('mkfs.ext4', [
      '-q',
      '-F',
      '-b',
      '4096',
      '-I',
      '256',
      '-L',
      'strata-test',
      ...extra,
      '-d',
      src,
      out,
      `${bytes >> 10}K`,
    ]);
    await withMount(out, (mnt) => setTimes(mnt), { rw: true });
  });
}

export async function sourceTree(): Promise<string> {
  return fixture(`fs-cli-${VERSION}-src`, async (out) => {
    mkdirSync(out);
    await makeSourceTree(out);
  });
}

export async function fsPlacements(): Promise<FsPlacements> {
  const src = await sourceTree();
  const whole = await ext4Of('whole', src);
  const gpt = await fixture(`fs-cli-${VERSION}-gpt.img`, async (out) => {
    await run('truncate', ['-s', `${FS_BYTES + (12 << 20)}`, out]);
    await run('sgdisk', [
      '-n',
      '1:2048:+8M',
      '-t',
      '1:ef00',
      '-c',
      '1:EFI',
      '-n',
      '2:0:0',
      '-t',
      '2:8300',
      '-c',
      '2:root-\u00e9',
      out,
    ]);
    await placeAt(out, whole, await sgdiskStart(out, 2));
  });
  const mbr = await fixture(`fs-cli-${VERSION}-mbr.img`, async (out) => {
    await run('truncate', ['-s', `${FS_BYTES + (16 << 20)}`, out]);
    const script = [
      'label: dos',
      'start=2048, size=8M, type=83, bootable',
      'type=5',
      'size=2M, type=83',
      'type=83',
      '',
    ];
    await runInput('sfdisk', ['-q', out], script.join('\n'));
    const p6 = (await sfdiskParts(out)).find((x) => x.node.endsWith('6'));
    if (!p6) throw new Error('sfdisk made no partition 6');
    await placeAt(out, whole, p6.start * 512);
  });
  const qcow2 = await fixture(`fs-cli-${VERSION}-mbr.qcow2`, async (out) => {
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', mbr, out]);
  });
  return { src, whole, gpt, gptPart: '2', mbr, mbrPart: '6', qcow2 };
}

/** Run a command with `input` on its stdin. */
export async function runInput(cmd: string, args: string[], input: string): Promise<string> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (b) => (out += b));
    c.stderr.on('data', (b) => (err += b));
    c.on('error', reject);
    c.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')}: ${err}`))));
    c.stdin.end(input);
  });
}

/** A private copy of a fixture, to modify. */
export function copyOf(file: string, name: string): string {
  const d = mkdtempSync(path.join(FIXTURES, `${name}-`));
  const f = path.join(d, path.basename(file));
  copyFileSync(file, f);
  return f;
}
