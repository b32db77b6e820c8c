import { execFileSync } from 'node:child_process';
import {
  closeSync,
  copyFileSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { bytesOf } from '../helpers/ext-tree.js';
import { fixture, run } from '../helpers/tools.js';
import { gptDisk, lvRanges, mbrDisk, mkfsImage, type SfdiskJson } from '../helpers/volume-images.js';

/** A file system placed on a test disk: its own image file (same bytes) and where it sits. */
export interface PlacedFs {
  /** Volume id as discoverVolumes names it. */
  volume: string;
  /** The file system image, byte-identical to the disk range. */
  image: string;
  /** Byte offset of the file system in disk.img, from the partitioning tools' own reports. */
  diskOffset: number;
  size: number;
}

export interface BlockmapDisk {
  dir: string;
  disk: string;
  fss: PlacedFs[];
  /** Files the tree holds (relative paths) with their sizes. */
  files: Record<string, number>;
}

/**
 * The tree written into every test file system: small and large files (ext2 at 1 KiB
 * blocks needs single and double indirect blocks for the large ones), a sparse file with
 * ten data pieces (more extents than fit in an ext4 inode: an extent-tree block), a
 * directory of 300 entries (several directory blocks), slow and fast symlinks, a hard
 * link, and an xattr too large for the inode (an xattr block).
 */
export function buildBlockmapTree(dir: string): Record<string, number> {
  const files: Record<string, number> = {};
  const put = (rel: string, data: Uint8Array) => {
    const p = path.join(dir, rel);
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, data);
    files[rel] = data.length;
  };
  for (const n of [0, 100, 5000, 70_000, 300_000, 1_200_000]) put(`data/size-${n}`, bytesOf(`bm-${n}`, n));
  for (let i = 0; i < 300; i++) put(`many/file-${String(i).padStart(3, '0')}`, bytesOf(`many-${i}`, 200 + i * 7));
  let deep = 'deep';
  for (let i = 0; i < 6; i++) deep = `${deep}/d${i}`;
  put(`${deep}/bottom.txt`, bytesOf('bottom', 3000));
  // sparse: ten 4 KiB pieces 64 KiB apart
  const sparse = path.join(dir, 'data/sparse');
  const fd = execFileSync('sh', ['-c', `truncate -s ${10 * 65536} ${JSON.stringify(sparse)} && echo ok`]);
  if (!fd.toString().includes('ok')) throw new Error('truncate failed');
  for (let i = 0; i < 10; i++) {
    execFileSync('dd', [
      'if=/dev/urandom',
      `of=${sparse}`,
      'bs=4096',
      'count=1',
      `seek=${i * 16}`,
      'conv=notrunc',
      'status=none',
    ]);
  }
  files['data/sparse'] = 10 * 65536;
  symlinkSync('x'.repeat(120), path.join(dir, 'data/slow-link'));
  symlinkSync('size-100', path.join(dir, 'data/fast-link'));
  linkSync(path.join(dir, 'data/size-5000'), path.join(dir, 'data/hard-5000'));
  execFileSync('setfattr', ['-n', 'user.big', '-v', 'v'.repeat(700), path.join(dir, 'data/size-70000')]);
  return files;
}

const MiB = 1024 * 1024;

/** The tree, built once per test run into a fixture directory. */
async function tree(): Promise<{ dir: string; files: Record<string, number> }> {
  const dir = await fixture('blockmap-tree-v2', async (out) => {
    mkdirSync(out);
    const files = buildBlockmapTree(path.join(out, 'root'));
    writeFileSync(path.join(out, 'files.json'), JSON.stringify(files));
  });
  return { dir: path.join(dir, 'root'), files: JSON.parse(readFileSync(path.join(dir, 'files.json'), 'utf8')) };
}

/**
 * GPT disk (the volumes suite's gptDisk: EFI vfat, ext4, swap, LVM PV, empty partition)
 * with the tree in an ext4 (4 KiB blocks) in partition 2 and an ext2 (1 KiB blocks) in
 * LV gvg/data; offsets from sgdisk's layout and from lvs/pvs.
 */
export async function gptBlockmapDisk(): Promise<BlockmapDisk> {
  const t = await tree();
  const base = await gptDisk();
  const [lv] = lvRanges(base.oracle, 'gvg', 'data');
  const p2 = 9 * MiB; // sgdisk -n 1:2048:+8M then 2:0:+12M (checked against sgdisk -i below)
  const dir = await fixture('blockmap-gpt-v1', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    copyFileSync(base.disk, disk);
    const info = await run('sgdisk', ['-i', '2', disk]);
    const first = /First sector: (\d+)/.exec(info);
    if (!first || Number(first[1]) * 512 !== p2) throw new Error(`partition 2 is not at ${p2}: ${info}`);
    await mkfsImage(path.join(out, 'p2.ext4'), 12 * MiB, 'mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', t.dir]);
    writeAt(disk, p2, path.join(out, 'p2.ext4'));
    await mkfsImage(path.join(out, 'lv.ext2'), lv.length, 'mkfs.ext2', ['-q', '-F', '-b', '1024', '-d', t.dir]);
    writeAt(disk, lv.diskOffset, path.join(out, 'lv.ext2'));
  });
  return {
    dir,
    disk: path.join(dir, 'disk.img'),
    files: t.files,
    fss: [
      { volume: '2', image: path.join(dir, 'p2.ext4'), diskOffset: p2, size: 12 * MiB },
      { volume: 'gvg/data', image: path.join(dir, 'lv.ext2'), diskOffset: lv.diskOffset, size: lv.length },
    ],
  };
}

/**
 * MBR disk (the volumes suite's mbrDisk: primaries 1-3, logicals 5-7 in an extended
 * partition) with the tree in an ext2 (1 KiB blocks) in partition 1 and an ext4 in
 * logical 5; offsets from `sfdisk --json`.
 */
export async function mbrBlockmapDisk(): Promise<BlockmapDisk> {
  const t = await tree();
  const base = await mbrDisk();
  const parts = JSON.parse(await run('sfdisk', ['--json', base.disk])) as SfdiskJson;
  const at = (n: number) => {
    const p = parts.partitiontable.partitions.find((x) => x.node.endsWith(`disk.img${n}`));
    if (!p) throw new Error(`sfdisk lists no partition ${n}`);
    return { offset: p.start * 512, size: p.size * 512 };
  };
  const p1 = at(1);
  const p5 = at(5);
  const dir = await fixture('blockmap-mbr-v1', async (out) => {
    mkdirSync(out);
    const disk = path.join(out, 'disk.img');
    copyFileSync(base.disk, disk);
    await mkfsImage(path.join(out, 'p1.ext2'), p1.size, 'mkfs.ext2', ['-q', '-F', '-b', '1024', '-d', t.dir]);
    writeAt(disk, p1.offset, path.join(out, 'p1.ext2'));
    await mkfsImage(path.join(out, 'p5.ext4'), p5.size, 'mkfs.ext4', ['-q', '-F', '-d', t.dir]);
    writeAt(disk, p5.offset, path.join(out, 'p5.ext4'));
  });
  return {
    dir,
    disk: path.join(dir, 'disk.img'),
    files: t.files,
    fss: [
      { volume: '1', image: path.join(dir, 'p1.ext2'), diskOffset: p1.offset, size: p1.size },
      { volume: '5', image: path.join(dir, 'p5.ext4'), diskOffset: p5.offset, size: p5.size },
    ],
  };
}

/** Write all of `src` into `disk` at `offset` (zeros too: the range held another file system before). */
function writeAt(disk: string, offset: number, src: string): void {
  const fin = openSync(src, 'r');
  const fout = openSync(disk, 'r+');
  try {
    const buf = Buffer.alloc(MiB);
    for (let pos = 0; ; ) {
      const n = readSync(fin, buf, 0, buf.length, pos);
      if (n === 0) break;
      writeSync(fout, buf, 0, n, offset + pos);
      pos += n;
    }
  } finally {
    closeSync(fin);
    closeSync(fout);
  }
}
