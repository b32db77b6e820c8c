/**
 * FAT12/16/32 images made by mkfs.vfat and filled by mtools (mmd, mcopy, mdel), and exFAT
 * images made by mkfs.exfat and filled through exfat-fuse on a loop device. Each image's
 * content comes from a host tree written here, so the host tree is an oracle too (mcopy and
 * the FUSE driver wrote the bytes, not our code).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fixture, run, scratch } from './tools.js';
import { sparse, withLoop } from './volume-images.js';

const MiB = 1024 * 1024;

/** mtools refuses images whose geometry it cannot check; the images here are plain files. */
export const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1', MTOOLS_NO_VFAT: '', TZ: 'UTC' };

export async function mtool(cmd: string, args: string[]): Promise<string> {
  const r = spawnSync(cmd, args, { env: MTOOLS_ENV, encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Deterministic bytes (a file's content is a function of its name and size). */
export function bytesFor(seed: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed | 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** Fixed modification times (even seconds, so FAT's 2 s resolution keeps them exactly). */
export const TREE_MTIME = Date.UTC(2021, 5, 15, 10, 20, 30) / 1000;

/**
 * The host tree: deep folders, long and non-ASCII names, empty files and folders, a folder
 * of 150 files (its directory spans clusters), names that differ only in case.
 */
export async function fatTree(): Promise<string> {
  return fixture('fat-tree-v1', async (d) => {
    const put = (rel: string, data: Buffer | string) => {
      const p = path.join(d, rel);
      mkdirSync(path.dirname(p), { recursive: true });
      writeFileSync(p, data);
    };
    put('a/b/c/d/e/f/g/h/deep.txt', 'deep down\n');
    put('Long File Name with spaces and more than 13 units.txt', 'long\n');
    put('naïve-ünïcode-файл-名前.txt', 'unicode\n');
    put('README.TXT', 'upper-case 8.3 name\n');
    put('lower.txt', 'lower-case 8.3 name\n');
    put('MiXeD.Txt', 'mixed-case name\n');
    put('empty-file', '');
    mkdirSync(path.join(d, 'empty-dir'), { recursive: true });
    put('medium.bin', bytesFor(7, 70_000));
    put('dot.in.the.middle.tar.gz', bytesFor(8, 1000));
    for (let i = 0; i < 150; i++) put(`many/file-${String(i).padStart(3, '0')}-${'x'.repeat(i % 20)}.dat`, `${i}\n`);
    const stamp = (p: string) => utimesSync(p, TREE_MTIME, TREE_MTIME);
    const walk = (p: string) => {
      for (const e of spawnSync('find', [p, '-mindepth', '1'], { encoding: 'utf8' }).stdout.split('\n'))
        if (e) stamp(e);
    };
    walk(d);
  });
}

export interface FatSpec {
  name: string;
  fatBits: 12 | 16 | 32;
  sizeMiB: number;
  /** Extra mkfs.vfat arguments (cluster size ...). */
  args: string[];
}

export const FAT_SPECS: FatSpec[] = [
  { name: 'fat12', fatBits: 12, sizeMiB: 4, args: ['-s', '4'] },
  { name: 'fat16', fatBits: 16, sizeMiB: 32, args: ['-s', '4'] },
  { name: 'fat32', fatBits: 32, sizeMiB: 64, args: ['-s', '1'] },
];

/** Size of the file written into the holes left by deleted files: it must come out fragmented. */
export const FRAGMENTED_SIZE = 300_000;
/** The files deleted to leave holes: 20 holes of this size hold FRAGMENTED_SIZE. */
const SMALL_SIZE = 16_000;

/**
 * A FAT image of the tree, plus a fragmented file: 40 files are written, the rest of the
 * volume is filled, every other file is deleted, then a large file is written (it can only go
 * into the holes), and the filler is deleted again.
 */
export async function fatImage(spec: FatSpec): Promise<string> {
  const tree = await fatTree();
  return fixture(`fat-${spec.name}-v2.img`, async (out) => {
    await run('mkfs.vfat', [
      '-F',
      String(spec.fatBits),
      '-n',
      spec.name.toUpperCase(),
      '-i',
      '1234ABCD',
      ...spec.args,
      '-C',
      out,
      String(spec.sizeMiB * 1024),
    ]);
    const top = spawnSync('ls', ['-A', tree], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    await mtool('mcopy', ['-s', '-m', '-i', out, ...top.map((t) => path.join(tree, t)), '::/']);
    const tmp = scratch('fat-frag');
    try {
      await mtool('mmd', ['-i', out, '::/frag']);
      for (let i = 0; i < 40; i++) {
        const f = path.join(tmp, `s${i}.bin`);
        writeFileSync(f, bytesFor(100 + i, SMALL_SIZE));
        await mtool('mcopy', ['-i', out, f, `::/frag/s${i}.bin`]);
      }
      const free = Number(/([\d ]+) bytes free/.exec(await mtool('mdir', ['-i', out, '::/']))![1].replace(/ /g, ''));
      const filler = path.join(tmp, 'filler');
      writeFileSync(filler, Buffer.alloc(free, 0x5a));
      await mtool('mcopy', ['-i', out, filler, '::/filler']);
      for (let i = 0; i < 40; i += 2) await mtool('mdel', ['-i', out, `::/frag/s${i}.bin`]);
      const big = path.join(tmp, 'fragmented.bin');
      writeFileSync(big, bytesFor(999, FRAGMENTED_SIZE));
      utimesSync(big, TREE_MTIME, TREE_MTIME);
      await mtool('mcopy', ['-m', '-i', out, big, '::/frag/fragmented.bin']);
      await mtool('mdel', ['-i', out, '::/filler']);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
}

/** Time zone of the exFAT writer (a half-hour offset). */
export const EXFAT_WRITER_TZ = 'Asia/Kolkata';

/** An exFAT image of the same tree, written through exfat-fuse on a loop device (this kernel has no exfat). */
export async function exfatImage(): Promise<string> {
  const tree = await fatTree();
  return fixture('exfat-v2.img', async (out) => {
    await sparse(out, 64 * MiB);
    await run('mkfs.exfat', ['-L', 'EXLABEL', '-c', '4K', out]);
    const mnt = scratch('exfat-mnt');
    try {
      await withLoop(out, {}, async (dev) => {
        // the driver runs in UTC+05:30, so the entries carry a non-zero UTC offset
        const m = spawnSync('mount.exfat-fuse', ['-o', 'uid=0,gid=0', dev, mnt], {
          env: { ...process.env, TZ: EXFAT_WRITER_TZ },
          encoding: 'utf8',
        });
        if (m.status !== 0) throw new Error(`mount.exfat-fuse failed (${m.status}): ${m.stderr}`);
        try {
          await run('cp', ['-a', '--no-preserve=ownership', `${tree}/.`, mnt]);
          // a fragmented file: small files, every other one deleted, a large one written into the holes
          mkdirSync(path.join(mnt, 'frag'));
          for (let i = 0; i < 40; i++)
            writeFileSync(path.join(mnt, 'frag', `s${i}.bin`), bytesFor(100 + i, SMALL_SIZE));
          await run('sync', []);
          for (let i = 0; i < 40; i += 2) rmSync(path.join(mnt, 'frag', `s${i}.bin`));
          await run('sync', []);
          writeFileSync(path.join(mnt, 'frag', 'fragmented.bin'), bytesFor(999, FRAGMENTED_SIZE));
          utimesSync(path.join(mnt, 'frag', 'fragmented.bin'), TREE_MTIME, TREE_MTIME);
          await run('sync', []);
        } finally {
          await run('fusermount', ['-u', mnt]);
        }
      });
    } finally {
      rmSync(mnt, { recursive: true, force: true });
    }
  });
}
