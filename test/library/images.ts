import { createHash } from 'node:crypto';
import {
  closeSync,
  cpSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { bytesOf } from '../helpers/ext-tree.js';
import { fixture, run, scratch } from '../helpers/tools.js';

/**
 * Trees and images for the library tests, made by real tools (mkfs.ext* -d, debugfs,
 * qemu-img) and cached with fixture().
 */
export const MiB = 1024 * 1024;

const made: string[] = [];
/**
 * A scratch directory removed when the test process exits: library tests write stores,
 * checkouts and partition slices of tens of MiB each, which must not pile up in the
 * shared fixture cache.
 */
export function tempDir(name: string): string {
  if (made.length === 0) {
    process.on('exit', () => {
      for (const d of made) rmSync(d, { recursive: true, force: true });
    });
  }
  const d = scratch(name);
  made.push(d);
  return d;
}
const VERSION = 'v1';

/** Compressible text: words from a seeded sequence. */
export function textOf(seed: string, n: number): Buffer {
  const words = ['strata', 'image', 'chunk', 'store', 'debian', 'kernel', 'package', 'library', 'version', 'manifest'];
  const out: string[] = [];
  let len = 0;
  let i = 0;
  while (len < n) {
    const h = createHash('sha256').update(`${seed}:${i++}`).digest();
    for (let k = 0; k < 16 && len < n; k++) {
      const w = `${words[h[k] % words.length]}${h[k + 16] % 7 === 0 ? '\n' : ' '}`;
      out.push(w);
      len += w.length;
    }
  }
  return Buffer.from(out.join('')).subarray(0, n);
}

/**
 * A tree of ~20 MiB: text and binary files of many sizes (some above the 1 MiB file chunk),
 * a sparse file, an empty file, symlinks, a hard link, nested directories.
 */
export function makeTree(dir: string, seed = 'base'): void {
  mkdirSync(dir, { recursive: true });
  for (let d = 0; d < 8; d++) {
    const sub = path.join(dir, `dir${d}`, `sub${d % 3}`);
    mkdirSync(sub, { recursive: true });
    for (let f = 0; f < 30; f++) {
      const size = ((d * 31 + f * 17) % 23) * 997 + (f % 5 === 0 ? 40000 : 10);
      const body = f % 2 === 0 ? textOf(`${seed}:${d}:${f}`, size) : bytesOf(`${seed}:${d}:${f}`, size);
      writeFileSync(path.join(sub, `file${f}.${f % 2 === 0 ? 'txt' : 'bin'}`), body);
    }
  }
  writeFileSync(path.join(dir, 'big-random.bin'), bytesOf(`${seed}:big`, 5 * MiB + 123));
  writeFileSync(path.join(dir, 'big-text.txt'), textOf(`${seed}:bigtext`, 3 * MiB + 7));
  writeFileSync(path.join(dir, 'empty'), '');
  const sp = path.join(dir, 'sparse.bin');
  writeFileSync(sp, bytesOf(`${seed}:sparse-head`, 5000));
  const fd = openSync(sp, 'r+');
  writeSync(fd, bytesOf(`${seed}:sparse-tail`, 3000), 0, 3000, 9 * MiB);
  closeSync(fd);
  truncateSync(sp, 9 * MiB + 3000);
  symlinkSync('dir0/sub0/file0.txt', path.join(dir, 'link-rel'));
  symlinkSync(`/${'x'.repeat(100)}/long/target/that/is/not/inline/${'y'.repeat(40)}`, path.join(dir, 'link-slow'));
  linkSync(path.join(dir, 'dir1', 'sub1', 'file3.bin'), path.join(dir, 'hardlink.bin'));
}

/** Paths the derived tree adds or changes (relative to the tree). */
export const DERIVED_CHANGES = [
  '0-new-first/payload.bin',
  'dir2/sub2/file4.txt',
  'dir5/sub2/file7.bin',
  'dir7/new-config.txt',
];

/** The derived tree: base plus DERIVED_CHANGES (one new file sorts first, so mkfs places the rest elsewhere). */
export function makeDerivedTree(base: string, dir: string): void {
  cpSync(base, dir, { recursive: true, verbatimSymlinks: true });
  const put = (rel: string, body: Buffer) => {
    mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    writeFileSync(path.join(dir, rel), body);
  };
  put(DERIVED_CHANGES[0], bytesOf('derived:first', 3 * MiB));
  put(DERIVED_CHANGES[1], Buffer.concat([readFileSync(path.join(base, DERIVED_CHANGES[1])), textOf('edit', 500)]));
  put(DERIVED_CHANGES[2], bytesOf('derived:edit7', 20000));
  put(DERIVED_CHANGES[3], textOf('derived:new', 30000));
}

export async function baseTree(): Promise<string> {
  return fixture(`lib-tree-${VERSION}-base`, async (out) => makeTree(out, 'base'));
}

export async function derivedTree(): Promise<string> {
  const base = await baseTree();
  return fixture(`lib-tree-${VERSION}-derived`, async (out) => makeDerivedTree(base, out));
}

/** mkfs.<kind> -d TREE into a SIZE image; free space then gets garbage (a file written and removed with debugfs). */
export async function extImageOf(
  kind: 'ext2' | 'ext3' | 'ext4',
  tree: string,
  key: string,
  sizeMiB = 48,
): Promise<string> {
  return fixture(`lib-${VERSION}-${key}-${kind}.img`, async (out) => {
    await run(`mkfs.${kind}`, ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, out, `${sizeMiB}M`]);
    const junk = `${out}.junk`;
    writeFileSync(junk, bytesOf(`junk:${key}`, 4 * MiB));
    await run('debugfs', ['-w', '-R', `write ${junk} junk`, out]);
    await run('debugfs', ['-w', '-R', 'rm junk', out]);
    unlinkSync(junk); // the garbage stays in the freed blocks
  });
}

/** Free block ranges as dumpe2fs lists them ("Free blocks: a-b, c"), in bytes. */
export async function freeRanges(image: string): Promise<Array<[number, number]>> {
  const out = await run('dumpe2fs', [image]);
  const bs = Number(/Block size:\s+(\d+)/.exec(out)?.[1]);
  const ranges: Array<[number, number]> = [];
  for (const m of out.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1].split(',').map((s) => s.trim())) {
      if (!part) continue;
      const [a, b] = part.split('-').map(Number);
      ranges.push([a * bs, ((b ?? a) + 1) * bs]);
    }
  }
  return ranges;
}

export function sha256File(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** sha256 of the virtual disk as qemu sees it (qemu-img convert -O raw). */
export async function qemuSha(image: string): Promise<string> {
  const dir = scratch('qemu-sha');
  try {
    const out = path.join(dir, 'disk.raw');
    await run('qemu-img', ['convert', '-O', 'raw', image, out]);
    return sha256File(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
