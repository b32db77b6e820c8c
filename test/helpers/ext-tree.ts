import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { fixture, run } from './tools.js';

/** Deterministic bytes: a sha256 stream of `seed`. */
export function bytesOf(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let o = 0, i = 0; o < n; o += 32, i++) {
    createHash('sha256')
      .update(`${seed}:${i}`)
      .digest()
      .copy(out, o, 0, Math.min(32, n - o));
  }
  return out;
}

/** Size of the big sparse file (> 4 GiB) and where its data pieces sit. */
export const BIG_SPARSE_SIZE = 5 * 2 ** 30 + 12345;
export const BIG_SPARSE_PIECES: Array<[number, number]> = [
  [0, 5000],
  [2 ** 32 - 100, 300],
  [BIG_SPARSE_SIZE - 777, 777],
];

export interface TreeOptions {
  /** Leave out device nodes / fifos / sockets (for trees that must be copied without root). */
  noSpecial?: boolean;
}

/**
 * Build the test tree in `dir`: deep paths, a big directory, 255-byte and non-ASCII names,
 * sparse files (one > 4 GiB), hard links, fast and slow symlinks, fifos, devices, sockets,
 * xattrs, empty files, unusual modes, odd timestamps. Needs root for mknod.
 */
export function buildExtTree(dir: string, opts: TreeOptions = {}): void {
  mkdirSync(dir, { recursive: true });
  const p = (...x: string[]) => path.join(dir, ...x);
  // deep path
  let deep = p('deep');
  for (let i = 0; i < 24; i++) deep = path.join(deep, `level-${i}`);
  mkdirSync(deep, { recursive: true });
  writeFileSync(path.join(deep, 'bottom.txt'), 'the bottom of a deep tree\n');
  // names
  const names = p('names');
  mkdirSync(names);
  writeFileSync(path.join(names, 'n'.repeat(255)), 'long name\n');
  writeFileSync(path.join(names, `${'é'.repeat(127)}a`), 'utf8 254 bytes\n');
  writeFileSync(path.join(names, 'Grüße, 世界 🙂'), 'non-ascii\n');
  writeFileSync(path.join(names, ' leading space'), '');
  writeFileSync(path.join(names, 'with\nnewline'), '');
  writeFileSync(path.join(names, '-dash'), '');
  writeFileSync(path.join(names, '...'), 'three dots\n');
  // regular files of assorted sizes
  const files = p('files');
  mkdirSync(files);
  for (const n of [0, 1, 59, 60, 61, 1023, 1024, 1025, 4095, 4096, 4097, 65536, 200_000, 1_500_000]) {
    writeFileSync(path.join(files, `size-${n}`), bytesOf(`size-${n}`, n));
  }
  writeFileSync(path.join(files, 'empty'), '');
  // sparse files
  const sparse = p('sparse');
  mkdirSync(sparse);
  const s1 = path.join(sparse, 'holes');
  writeFileSync(s1, '');
  const fd = openSync(s1, 'r+');
  for (const [at, len] of [
    [8192, 5000],
    [1 << 20, 3000],
    [(3 << 20) + 17, 100],
  ]) {
    writeSync(fd, bytesOf(`holes-${at}`, len), 0, len, at);
  }
  closeSync(fd);
  truncateSync(s1, 5 << 20);
  const s2 = path.join(sparse, 'all-hole');
  writeFileSync(s2, '');
  truncateSync(s2, 10 << 20);
  const s3 = path.join(sparse, 'big-over-4g');
  writeFileSync(s3, '');
  const fd3 = openSync(s3, 'r+');
  for (const [at, len] of BIG_SPARSE_PIECES) writeSync(fd3, bytesOf(`big-${at}`, len), 0, len, at);
  closeSync(fd3);
  truncateSync(s3, BIG_SPARSE_SIZE);
  // links
  const links = p('links');
  mkdirSync(links);
  writeFileSync(path.join(links, 'target.txt'), 'link target\n');
  linkSync(path.join(links, 'target.txt'), path.join(links, 'hard-1'));
  linkSync(path.join(links, 'target.txt'), p('names', 'hard-2-elsewhere'));
  symlinkSync('target.txt', path.join(links, 'fast'));
  symlinkSync(`../links/${'t'.repeat(200)}/../target.txt`, path.join(links, 'slow'));
  symlinkSync('/links/target.txt', path.join(links, 'absolute'));
  symlinkSync('../deep/level-0/level-1', path.join(links, 'to-dir'));
  symlinkSync('dangling-nowhere', path.join(links, 'dangling'));
  symlinkSync('loop-b', path.join(links, 'loop-a'));
  symlinkSync('loop-a', path.join(links, 'loop-b'));
  symlinkSync('x'.repeat(59), path.join(links, 'len59'));
  symlinkSync('y'.repeat(60), path.join(links, 'len60'));
  symlinkSync('z'.repeat(1000), path.join(links, 'len1000'));
  // special files
  const special = p('special');
  mkdirSync(special);
  if (!opts.noSpecial) {
    execFileSync('mkfifo', [path.join(special, 'fifo')]);
    execFileSync('mknod', [path.join(special, 'null-ish'), 'c', '1', '3']);
    execFileSync('mknod', [path.join(special, 'blockdev'), 'b', '8', '17']);
    execFileSync('mknod', [path.join(special, 'bigdev'), 'c', '300', '70000']);
    // a unix socket: bound by a child node process that exits leaving the socket file
    execFileSync(process.execPath, [
      '-e',
      "require('net').createServer().listen(process.argv[1], () => process.exit(0))",
      path.join(special, 'sock'),
    ]);
  }
  // modes
  const modes = p('modes');
  mkdirSync(modes);
  for (const m of [0o000, 0o4755, 0o2750, 0o1777, 0o600, 0o7777]) {
    const f = path.join(modes, `mode-${m.toString(8)}`);
    writeFileSync(f, `mode ${m.toString(8)}\n`);
    chmodSync(f, m);
  }
  mkdirSync(path.join(modes, 'sticky-dir'));
  chmodSync(path.join(modes, 'sticky-dir'), 0o1777);
  // owners
  execFileSync('chown', ['1234:5678', path.join(modes, 'mode-600')]);
  execFileSync('chown', ['70000:80000', path.join(modes, 'mode-4755')]);
  // xattrs
  const xa = p('xattrs');
  mkdirSync(xa);
  const small = path.join(xa, 'small');
  writeFileSync(small, 'has small xattrs\n');
  execFileSync('setfattr', ['-n', 'user.color', '-v', 'blue', small]);
  execFileSync('setfattr', ['-n', 'user.empty', small]);
  const large = path.join(xa, 'large');
  writeFileSync(large, 'has a big xattr that cannot fit in the inode\n');
  execFileSync('setfattr', ['-n', 'user.big', '-v', `0x${bytesOf('xattr', 700).toString('hex')}`, large]);
  execFileSync('setfattr', ['-n', 'user.second', '-v', 'two', large]);
  execFileSync('setfattr', ['-n', 'user.dir-attr', '-v', 'on a directory', xa]);
  execFileSync('setfattr', ['-n', 'trusted.secret', '-v', 'root only', small]);
  // timestamps: nanoseconds, before 1970, after 2038
  const times = p('times');
  mkdirSync(times);
  const t = (name: string) => {
    const f = path.join(times, name);
    writeFileSync(f, name);
    return f;
  };
  execFileSync('touch', ['-m', '-d', '2001-02-03 04:05:06.123456789 UTC', t('nanos')]);
  execFileSync('touch', ['-m', '-d', '1965-06-07 08:09:10.5 UTC', t('before-1970')]);
  execFileSync('touch', ['-m', '-d', '2100-01-01 00:00:01.000000999 UTC', t('after-2038')]);
  utimesSync(t('epoch'), 0, 0);
  // a fragmented file: one byte every 8 KiB makes thousands of extents (a multi-level extent tree)
  const frag = path.join(sparse, 'fragmented');
  writeFileSync(frag, '');
  const fd4 = openSync(frag, 'r+');
  for (let i = 0; i < FRAGMENTS; i++) writeSync(fd4, Buffer.from([1 + (i % 250)]), 0, 1, i * 8192);
  closeSync(fd4);
}

export const FRAGMENTS = 2000;
/** Entries the kernel puts in /big after mkfs (an htree directory where dir_index is on). */
export const BIG_DIR_ENTRIES = 20000;

/**
 * Things mkfs -d cannot make (or makes slowly), done by the kernel on a read-write mount:
 * a 20,000-entry directory (htree with dir_index), preallocated (unwritten) extents.
 */
export function populateMounted(mnt: string): void {
  const big = path.join(mnt, 'big');
  mkdirSync(big);
  for (let i = 0; i < BIG_DIR_ENTRIES; i++) {
    closeSync(openSync(path.join(big, `entry-${String(i).padStart(5, '0')}-${'x'.repeat(i % 40)}`), 'w'));
  }
  writeFileSync(path.join(big, 'has-content'), 'content in a big dir\n');
  // preallocated (unwritten) extents where the file system has extents; ext2/3 get the same
  // bytes as a sparse file
  const pre = path.join(mnt, 'prealloc');
  writeFileSync(pre, '');
  const canFallocate = spawnSync('fallocate', ['-l', String(1 << 20), pre]).status === 0;
  if (!canFallocate) truncateSync(pre, 1 << 20);
  const fd = openSync(pre, 'r+');
  writeSync(fd, bytesOf('prealloc', 10000), 0, 10000, 300_000);
  closeSync(fd);
  const keep = path.join(mnt, 'prealloc-keep-size');
  writeFileSync(keep, 'short\n');
  if (canFallocate) execFileSync('fallocate', ['-n', '-o', '0', '-l', String(256 << 10), keep]);
}

/** Copy of the metadata the kernel shows through a read-only loop mount of an image. */
export interface KernelEntry {
  path: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  mtimeNs: bigint;
  atimeNs?: bigint;
  ctimeNs?: bigint;
  /** statx birth time (ext4 crtime); 0 when the kernel has none. */
  birthNs?: bigint;
  /** st_blocks * 512 (i_blocks as the kernel reports it). */
  allocated?: number;
  rdev?: { major: number; minor: number };
  target?: string;
  sha256?: string;
  xattrs?: Record<string, string>;
}

function typeOf(st: import('node:fs').Stats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return 'unknown';
}

/**
 * Mount `image` read-only through a loop device, walk it with lstat/readdir/readlink,
 * hash files up to `hashLimit` bytes, read xattrs with getfattr, and unmount (always).
 * Paths are relative to the mount root, starting with '/'.
 */
export async function kernelView(image: string, hashLimit = 64 << 20): Promise<Map<string, KernelEntry>> {
  const mnt = `/tmp/strata-mnt-${process.pid}-${Date.now()}`;
  mkdirSync(mnt, { recursive: true });
  await run('mount', ['-o', 'ro,loop,noload', image, mnt]).catch(async () => {
    await run('mount', ['-o', 'ro,loop', image, mnt]);
  });
  try {
    return treeView(mnt, hashLimit);
  } finally {
    await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]));
    rmSync(mnt, { recursive: true, force: true });
  }
}

/**
 * The walk kernelView makes, of any mounted tree at `mnt` (a kernel loop mount, a FUSE mount):
 * lstat/readdir/readlink of every entry, sha256 of files up to `hashLimit` bytes, xattrs by getfattr.
 */
export function treeView(mnt: string, hashLimit = 64 << 20): Map<string, KernelEntry> {
  const out = new Map<string, KernelEntry>();
  const ga = spawnSync('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', mnt], {
    encoding: 'utf8',
    maxBuffer: 1 << 30,
  });
  if (ga.status !== 0) throw new Error(`getfattr failed (${ga.status}): ${ga.stderr}`);
  const xattrDump = ga.stdout;
  const xattrs = parseGetfattr(xattrDump, mnt);
  const visit = (rel: string) => {
    const abs = rel === '/' ? mnt : path.join(mnt, rel);
    const st = lstatSync(abs, { bigint: true });
    const type = typeOf(lstatSync(abs));
    const e: KernelEntry = {
      path: rel,
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: Number(st.size),
      nlink: Number(st.nlink),
      ino: Number(st.ino),
      mtimeNs: st.mtimeNs,
      allocated: Number(st.blocks) * 512,
      atimeNs: st.atimeNs,
      ctimeNs: st.ctimeNs,
      birthNs: st.birthtimeNs,
    };
    if (type === 'char' || type === 'block') {
      const d = st.rdev;
      e.rdev = {
        major: Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)),
        minor: Number((d & 0xffn) | ((d >> 12n) & 0xffffff00n)),
      };
    }
    if (type === 'symlink') e.target = readlinkSync(abs, 'utf8');
    if (type === 'file' && e.size <= hashLimit) e.sha256 = createHash('sha256').update(readFileSync(abs)).digest('hex');
    const xa = xattrs.get(rel);
    if (xa) e.xattrs = xa;
    out.set(rel, e);
    if (type === 'dir') {
      for (const n of readdirSync(abs)) visit(rel === '/' ? `/${n}` : `${rel}/${n}`);
    }
  };
  visit('/');
  return out;
}

function parseGetfattr(dump: string, mnt: string): Map<string, Record<string, string>> {
  const out = new Map<string, Record<string, string>>();
  let cur: Record<string, string> | undefined;
  for (const line of dump.split('\n')) {
    if (line.startsWith('# file: ')) {
      const abs = unescapeGetfattr(line.slice(8));
      const rel = abs === mnt ? '/' : abs.slice(mnt.length);
      cur = {};
      out.set(rel, cur);
    } else if (cur && line.includes('=')) {
      const i = line.indexOf('=');
      const v = line.slice(i + 1);
      cur[line.slice(0, i)] = v.startsWith('0x') ? v.slice(2) : '';
    } else if (cur && line.trim() !== '' && !line.startsWith('#')) {
      cur[line.trim()] = '';
    }
  }
  return out;
}

/** getfattr escapes odd bytes in names as \ooo octal. */
function unescapeGetfattr(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(Number.parseInt(s.slice(i + 1, i + 4), 8));
      i += 3;
    } else {
      for (const b of Buffer.from(s[i], 'utf8')) bytes.push(b);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

export interface ExtImageSpec {
  /** Cache key part; bump the version when the recipe changes. */
  name: string;
  /** mkfs program: mkfs.ext4 / mkfs.ext3 / mkfs.ext2. */
  mkfs: string;
  args: string[];
  /** Image size (sparse file). */
  size: number;
}

const TREE_VERSION = 'v4';

/** The shared tree (built once per fixture cache). */
export async function extTree(): Promise<string> {
  return fixture(`ext-tree-${TREE_VERSION}`, async (out) => {
    buildExtTree(out);
  });
}

/** Mount `image` read-write on a fresh directory, run `fn`, always unmount. */
export async function withRwMount(image: string, fn: (mnt: string) => void | Promise<void>): Promise<void> {
  const mnt = `/tmp/strata-rw-${process.pid}-${Date.now()}`;
  mkdirSync(mnt, { recursive: true });
  await run('mount', ['-o', 'loop', image, mnt]);
  try {
    await fn(mnt);
  } finally {
    await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]));
    rmSync(mnt, { recursive: true, force: true });
  }
}

/** An image made with `mkfs -d TREE` plus `populateMounted` through a kernel mount, cached. */
export async function extImage(spec: ExtImageSpec, tree?: string): Promise<string> {
  const t = tree ?? (await extTree());
  return fixture(`ext-${spec.name}-${TREE_VERSION}.img`, async (out) => {
    writeFileSync(out, '');
    truncateSync(out, spec.size);
    await run(spec.mkfs, ['-q', '-F', ...spec.args, '-d', t, out]);
    await withRwMount(out, populateMounted);
    // a clean, fsck-verified image: the oracle tools then agree on one state
    const r = spawnSync('e2fsck', ['-fy', out], { encoding: 'utf8' });
    if (r.status !== 0 && r.status !== 1)
      throw new Error(`e2fsck -fy ${out} failed (${r.status}): ${r.stdout}${r.stderr}`);
  });
}

/**
 * `kernelView` of a cached image, itself cached as JSON next to it (the image never changes
 * under a given fixture key, so neither does the kernel's view of it).
 */
export async function kernelViewCached(image: string): Promise<Map<string, KernelEntry>> {
  const file = await fixture(`${path.basename(image)}.kernel-view-v3.json`, async (out) => {
    const v = await kernelView(image);
    writeFileSync(
      out,
      JSON.stringify([...v.values()], (_k, x) => (typeof x === 'bigint' ? `${x}n` : x)),
    );
  });
  const list = JSON.parse(readFileSync(file, 'utf8'), (_k, x) =>
    typeof x === 'string' && /^-?\d+n$/.test(x) ? BigInt(x.slice(0, -1)) : x,
  ) as KernelEntry[];
  return new Map(list.map((e) => [e.path, e]));
}

/** True when the process may mount loop devices (root with a working loop driver). */
export function canLoopMount(): boolean {
  return process.getuid?.() === 0 && existsSync('/dev/loop-control');
}
