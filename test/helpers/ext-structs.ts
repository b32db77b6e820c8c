/**
 * Fixtures and oracles of the per-structure ext tests (test/fs/ext/*): small images made by
 * mke2fs from a small tree, each recipe written out here, and parsers of what dumpe2fs and
 * debugfs print about them. The expected values always come from those tools.
 */
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { ExtContext } from '../../src/fs/ext/context.js';
import { readGroupDescriptors } from '../../src/fs/ext/group-desc.js';
import { parseSuperblock, SB_OFFSET, SB_SIZE } from '../../src/fs/ext/superblock.js';
import { type ByteSource, readExact } from '../../src/io/byte-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { bytesOf } from './ext-tree.js';
import { fixture, run } from './tools.js';

/** Entries of /big: several blocks, so e2fsck -D indexes it (an htree) where dir_index is on. */
export const BIG_ENTRIES = 600;
/** One byte every 8 KiB: this many extents (a depth-1 tree) or a double-indirect map. */
export const FRAG_PIECES = 500;

/**
 * The tree every image is made from: a big directory, a fragmented sparse file, a 300 KiB
 * file (double indirect with 1 KiB blocks), small files, fast and slow symlinks, nested
 * directories.
 */
export async function structTree(): Promise<string> {
  return fixture('ext-structs-tree-v1', async (d) => {
    mkdirSync(path.join(d, 'big'), { recursive: true });
    for (let i = 0; i < BIG_ENTRIES; i++) {
      writeFileSync(path.join(d, 'big', `entry-${String(i).padStart(4, '0')}-${'n'.repeat(i % 30)}`), '');
    }
    mkdirSync(path.join(d, 'frag'));
    const f = path.join(d, 'frag', 'fragmented');
    writeFileSync(f, '');
    const fd = openSync(f, 'r+');
    for (let i = 0; i < FRAG_PIECES; i++) writeSync(fd, Buffer.from([1 + (i % 250)]), 0, 1, i * 8192);
    closeSync(fd);
    writeFileSync(path.join(d, 'file300k'), bytesOf('file300k', 300 * 1024));
    writeFileSync(path.join(d, 'small.txt'), 'a small file\n');
    mkdirSync(path.join(d, 'a', 'b', 'c'), { recursive: true });
    writeFileSync(path.join(d, 'a', 'b', 'c', 'deep.txt'), 'deep\n');
    symlinkSync('small.txt', path.join(d, 'fast-link'));
    symlinkSync(`${'s'.repeat(100)}/../small.txt`, path.join(d, 'slow-link'));
  });
}

export interface StructImage {
  /** Cache key part; bump the version when the recipe changes. */
  name: string;
  mkfs: 'mkfs.ext2' | 'mkfs.ext3' | 'mkfs.ext4';
  args: string[];
  sizeMiB: number;
}

const UUID = '0b5c3b1c-7f02-4a39-9a30-51d4ad1d3b7e';
const HASH_SEED = '4e4b0d3f-3a37-4f3b-a2f5-2b0cfa0e2a11';

/** The images: 64-bit descriptors and 32-bit ones, 4 KiB and 1 KiB blocks, extents and block maps. */
export const STRUCT_IMAGES: StructImage[] = [
  {
    name: 'ext4-64bit-4k',
    mkfs: 'mkfs.ext4',
    args: ['-b', '4096', '-O', '64bit,metadata_csum', '-N', '2048'],
    sizeMiB: 64,
  },
  {
    // 1 KiB blocks and 2048-block groups: 16 groups, sparse_super backups, 32-byte descriptors
    name: 'ext4-32bit-1k',
    mkfs: 'mkfs.ext4',
    args: ['-b', '1024', '-g', '2048', '-O', '^64bit,metadata_csum', '-N', '2048'],
    sizeMiB: 32,
  },
  {
    // no extents, no checksums: indirect block maps, linear and htree directories
    name: 'ext2-1k',
    mkfs: 'mkfs.ext2',
    args: ['-b', '1024', '-N', '2048'],
    sizeMiB: 32,
  },
];

export function structSpec(name: string): StructImage {
  const s = STRUCT_IMAGES.find((x) => x.name === name);
  if (!s) throw new Error(`no struct image ${name}`);
  return s;
}

/**
 * The image: `MKFS -q -F ARGS -U UUID -E hash_seed=SEED -d TREE`, then `e2fsck -fyD`
 * (indexes every multi-block directory where dir_index is on, and leaves a checked image).
 */
export async function structImage(spec: StructImage): Promise<string> {
  const tree = await structTree();
  return fixture(`ext-structs-${spec.name}-v1.img`, async (out) => {
    writeFileSync(out, '');
    truncateSync(out, spec.sizeMiB << 20);
    await run(spec.mkfs, ['-q', '-F', ...spec.args, '-U', UUID, '-E', `hash_seed=${HASH_SEED}`, '-d', tree, out]);
    // exit status 1: the file system was modified (the directories were indexed)
    const d = spawnSync('e2fsck', ['-fyD', out], { encoding: 'utf8' });
    if (d.status !== 0 && d.status !== 1) throw new Error(`e2fsck -fyD ${out} (${d.status}): ${d.stdout}${d.stderr}`);
    const n = spawnSync('e2fsck', ['-fn', out], { encoding: 'utf8' });
    if (n.status !== 0) throw new Error(`e2fsck -fn ${out} (${n.status}): ${n.stdout}${n.stderr}`);
  });
}

/** An ExtContext over an image, with its group descriptors read (what the facade's open does). */
export async function openContext(
  image: string | ByteSource,
): Promise<{ ctx: ExtContext; close: () => Promise<void> }> {
  const src = typeof image === 'string' ? await FileSource.open(image) : image;
  const raw = await readExact(src, SB_OFFSET, SB_SIZE, 'ext superblock');
  const ctx = new ExtContext(src, parseSuperblock(new Uint8Array(raw), src.name, SB_OFFSET));
  ctx.groups = await readGroupDescriptors(ctx);
  return {
    ctx,
    close: async () => {
      await ctx.meta.close();
      await src.close?.();
    },
  };
}

/** The image in memory with `patch` applied: a damaged copy for the checksum tests. */
export function patchedCopy(image: string, patch: (img: Buffer) => void): MemorySource {
  const img = readFileSync(image);
  patch(img);
  return new MemorySource(new Uint8Array(img.buffer, img.byteOffset, img.length), `${image} (patched)`);
}

// ---------------------------------------------------------------- dumpe2fs

export interface DumpGroup {
  index: number;
  first: number;
  last: number;
  csum?: number;
  flags: string[];
  superblock?: { at: number; primary: boolean };
  gdt?: [number, number];
  reservedGdt?: [number, number];
  blockBitmap: number;
  blockBitmapCsum?: number;
  inodeBitmap: number;
  inodeBitmapCsum?: number;
  inodeTable: [number, number];
  freeBlocks: number;
  freeInodes: number;
  directories: number;
  unusedInodes?: number;
  freeBlockRanges: Array<[number, number]>;
  freeInodeRanges: Array<[number, number]>;
}

/** `dumpe2fs IMAGE`: the header fields (name -> value) and every group. */
export async function dumpe2fs(image: string): Promise<{ header: Map<string, string>; groups: DumpGroup[] }> {
  const text = await run('dumpe2fs', [image]);
  const header = new Map<string, string>();
  const groups: DumpGroup[] = [];
  let g: DumpGroup | undefined;
  const range = (s: string): [number, number] => {
    const [a, b] = s.split('-').map(Number);
    return [a, b ?? a];
  };
  const ranges = (s: string): Array<[number, number]> =>
    s.trim() === '' ? [] : s.split(',').map((x) => range(x.trim()));
  for (const line of text.split('\n')) {
    const m = /^Group (\d+): \(Blocks (\d+)-(\d+)\)(?: csum 0x([0-9a-f]+))?(?: \[([A-Z_, ]+)\])?/.exec(line);
    if (m) {
      g = {
        index: Number(m[1]),
        first: Number(m[2]),
        last: Number(m[3]),
        csum: m[4] ? Number.parseInt(m[4], 16) : undefined,
        flags: m[5] ? m[5].split(', ') : [],
        blockBitmap: -1,
        inodeBitmap: -1,
        inodeTable: [-1, -1],
        freeBlocks: -1,
        freeInodes: -1,
        directories: -1,
        freeBlockRanges: [],
        freeInodeRanges: [],
      };
      groups.push(g);
      continue;
    }
    if (!g) {
      const i = line.indexOf(':');
      if (i > 0) header.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
      continue;
    }
    let x: RegExpExecArray | null;
    if ((x = /(Primary|Backup) superblock at (\d+)/.exec(line))) {
      g.superblock = { at: Number(x[2]), primary: x[1] === 'Primary' };
    }
    if ((x = /Group descriptors at (\d+-\d+)/.exec(line))) g.gdt = range(x[1]);
    if ((x = /Reserved GDT blocks at (\d+-\d+)/.exec(line))) g.reservedGdt = range(x[1]);
    if ((x = /Block bitmap at (\d+)[^,]*(?:, csum 0x([0-9a-f]+))?/.exec(line))) {
      g.blockBitmap = Number(x[1]);
      if (x[2]) g.blockBitmapCsum = Number.parseInt(x[2], 16);
    }
    if ((x = /Inode bitmap at (\d+)[^,]*(?:, csum 0x([0-9a-f]+))?/.exec(line))) {
      g.inodeBitmap = Number(x[1]);
      if (x[2]) g.inodeBitmapCsum = Number.parseInt(x[2], 16);
    }
    if ((x = /Inode table at (\d+-\d+)/.exec(line))) g.inodeTable = range(x[1]);
    if ((x = /^\s+(\d+) free blocks, (\d+) free inodes, (\d+) directories(?:, (\d+) unused inodes)?/.exec(line))) {
      g.freeBlocks = Number(x[1]);
      g.freeInodes = Number(x[2]);
      g.directories = Number(x[3]);
      if (x[4] !== undefined) g.unusedInodes = Number(x[4]);
    }
    if ((x = /^\s+Free blocks: (.*)$/.exec(line))) g.freeBlockRanges = ranges(x[1]);
    if ((x = /^\s+Free inodes: (.*)$/.exec(line))) g.freeInodeRanges = ranges(x[1]);
  }
  return { header, groups };
}

// ---------------------------------------------------------------- debugfs

/** `debugfs -R CMD IMAGE` (stdout; debugfs prints its banner on stderr). */
export function debugfs(image: string, cmd: string): Promise<string> {
  return run('debugfs', ['-R', cmd, image]);
}

/** The inode number of a path (`debugfs -R 'ncheck'` in reverse: `stat` prints it first). */
export async function inodeOf(image: string, p: string): Promise<number> {
  const out = await debugfs(image, `stat "${p}"`);
  const m = /^Inode: (\d+)/m.exec(out);
  if (!m) throw new Error(`debugfs stat ${p}: ${out}`);
  return Number(m[1]);
}

export interface DebugfsStat {
  ino: number;
  type: string;
  mode: number;
  flags: number;
  generation: number;
  uid: number;
  gid: number;
  size: number;
  fileAcl: number;
  links: number;
  blockcount: number;
  ctime: [number, number];
  atime: [number, number];
  mtime: [number, number];
  crtime?: [number, number];
  extraIsize?: number;
  checksum?: number;
  device?: { major: number; minor: number };
}

/** `debugfs -R 'stat <INO>'` parsed. Times as [seconds field, extra field] in hex as printed. */
export async function debugfsStat(image: string, ino: number): Promise<DebugfsStat> {
  const out = await debugfs(image, `stat <${ino}>`);
  const num = (re: RegExp, base = 10): number => {
    const m = re.exec(out);
    if (!m) throw new Error(`debugfs stat <${ino}>: no ${re} in\n${out}`);
    return Number.parseInt(m[1], base);
  };
  const time = (name: string): [number, number] | undefined => {
    const m = new RegExp(`^\\s*${name}: 0x([0-9a-f]+)(?::([0-9a-f]+))?`, 'm').exec(out);
    return m ? [Number.parseInt(m[1], 16), m[2] ? Number.parseInt(m[2], 16) : 0] : undefined;
  };
  const type = /Type: (\S+)/.exec(out)?.[1] ?? '?';
  const s: DebugfsStat = {
    ino: num(/^Inode: (\d+)/m),
    type,
    mode: num(/Mode:\s+0?(\d+)/, 8),
    flags: num(/Flags: 0x([0-9a-f]+)/, 16),
    generation: num(/Generation: (\d+)/),
    uid: num(/User:\s+(\d+)/),
    gid: num(/Group:\s+(\d+)/),
    size: num(/Size: (\d+)/),
    fileAcl: num(/File ACL: (\d+)/),
    links: num(/Links: (\d+)/),
    blockcount: num(/Blockcount: (\d+)/),
    ctime: time('ctime') ?? [0, 0],
    atime: time('atime') ?? [0, 0],
    mtime: time('mtime') ?? [0, 0],
    crtime: time('crtime'),
  };
  const ex = /Size of extra inode fields: (\d+)/.exec(out);
  if (ex) s.extraIsize = Number(ex[1]);
  const ck = /Inode checksum: 0x([0-9a-f]+)/.exec(out);
  if (ck) s.checksum = Number.parseInt(ck[1], 16);
  return s;
}

/** `debugfs -R 'ex <INO>'`: the extent tree, one row per entry (index rows have level < max). */
export async function debugfsExtents(
  image: string,
  ino: number,
): Promise<
  Array<{ level: number; max: number; lstart: number; lend: number; pstart: number; len: number; uninit: boolean }>
> {
  const out = await debugfs(image, `ex <${ino}>`);
  const rows = [];
  for (const line of out.split('\n')) {
    // " 0/ 1   1/  2     0 -   677  2152            678"  (index)
    // " 1/ 1   1/339     0 -     0  2147 -  2147      1 Uninit" (leaf)
    const m = /^\s*(\d+)\/\s*(\d+)\s+\d+\/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+(\d+)(?:\s+-\s+\d+)?\s+(\d+)\s*(\S*)/.exec(line);
    if (!m) continue;
    rows.push({
      level: Number(m[1]),
      max: Number(m[2]),
      lstart: Number(m[3]),
      lend: Number(m[4]),
      pstart: Number(m[5]),
      len: Number(m[6]),
      uninit: /Uninit/.test(m[7]),
    });
  }
  return rows;
}

/**
 * `debugfs -R 'stat <INO>'` BLOCKS/EXTENTS section: data blocks as [logical, physical] and
 * the map's own blocks ((IND), (DIND), (TIND), (ETB0) ...) as [kind, physical].
 */
export async function debugfsBlocks(
  image: string,
  ino: number,
): Promise<{ data: Array<[number, number]>; meta: Array<[string, number]> }> {
  const out = await debugfs(image, `stat <${ino}>`);
  const m = /\n(?:EXTENTS|BLOCKS):\n([\s\S]*)$/.exec(out);
  const data: Array<[number, number]> = [];
  const meta: Array<[string, number]> = [];
  if (!m) return { data, meta };
  for (const part of m[1].split(/,\s*|\n/)) {
    const t = part.trim();
    const mm = /^\(([A-Z]+\d*)\):(\d+)(?:-(\d+))?$/.exec(t);
    if (mm) {
      const a = Number(mm[2]);
      const b = mm[3] ? Number(mm[3]) : a;
      for (let p = a; p <= b; p++) meta.push([mm[1], p]);
      continue;
    }
    const e = /^\((\d+)(?:-(\d+))?(?:\[u\])?\):(\d+)(?:-(\d+))?$/.exec(t);
    if (!e) continue;
    const l0 = Number(e[1]);
    const l1 = e[2] ? Number(e[2]) : l0;
    for (let k = 0; k <= l1 - l0; k++) data.push([l0 + k, Number(e[3]) + k]);
  }
  return { data, meta };
}

/** `debugfs -R 'ls -l DIR'` (and with -p for exact names): [inode, name, mode] per entry, '.' and '..' included. */
export async function debugfsLs(
  image: string,
  dir: string,
): Promise<Array<{ ino: number; name: string; mode: number }>> {
  const out = await debugfs(image, `ls -p "${dir}"`);
  const rows = [];
  // /INODE/MODE/UID/GID/NAME/SIZE/
  for (const line of out.split('\n')) {
    const m = /^\/(\d+)\/(\d+)\/\d*\/\d*\/(.*)\/\d*\/$/.exec(line);
    if (m) rows.push({ ino: Number(m[1]), mode: Number.parseInt(m[2], 8), name: m[3] });
  }
  return rows;
}

/** `debugfs -R 'htree DIR'`: the root's count and limit, its checksum and its entries' blocks. */
export async function debugfsHtree(
  image: string,
  dir: string,
): Promise<{ count: number; limit: number; checksum?: number; levels: number; blocks: number[] }> {
  const out = await debugfs(image, `htree "${dir}"`);
  const count = /Number of entries \(count\): (\d+)/.exec(out);
  const limit = /Number of entries \(limit\): (\d+)/.exec(out);
  const levels = /Indirect levels: (\d+)/.exec(out);
  if (!count || !limit || !levels) throw new Error(`debugfs htree ${dir}: ${out.slice(0, 400)}`);
  const ck = /^Checksum: 0x([0-9a-f]+)/m.exec(out);
  const root = out.slice(0, out.indexOf('\n\n') > 0 ? out.indexOf('\n\n') : out.length);
  const blocks = [...root.matchAll(/Entry #\d+: Hash 0x[0-9a-f]+, block (\d+)/g)].map((x) => Number(x[1]));
  return {
    count: Number(count[1]),
    limit: Number(limit[1]),
    checksum: ck ? Number.parseInt(ck[1], 16) : undefined,
    levels: Number(levels[1]),
    blocks,
  };
}
