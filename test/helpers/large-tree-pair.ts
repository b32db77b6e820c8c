import { createCipheriv, createHash } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fixture, run } from './tools.js';

/**
 * The large generated tree of the bounded-memory tests and of bench/large and
 * bench/large-store (issue 22; the one generator, the /usr-shaped one of
 * test/helpers/large-tree.ts having been folded into this): `entries` paths (directories of
 * 100 entries under 97 package directories, small files of real-ish shapes, a few larger
 * ones, duplicates, symlinks, hard links) put on ext4 by `mkfs.ext4 -d`. It depends on
 * nothing of the machine it is made on (the same bytes everywhere). The "changed" variant is
 * the same tree with 1% of its files edited, removed or added (no directory added or
 * removed, so a kernel-side `rsync -rcn --delete` lists exactly the files that differ).
 */
const VERSION = 'v3';
const FILES_PER_DIR = 100;
const T = 1_700_000_000;

const h = (s: string) => createHash('sha256').update(s).digest();

/**
 * `n` bytes that only `seed` decides: the AES-128-CTR keystream under a key hashed from it
 * (v2 hashed every 32 bytes with sha256, ~100 times slower: a 1,000,000-entry tree took most
 * of an hour to write on a loaded 2-core machine). Half the files text-like (compressible).
 */
const ZEROS = Buffer.alloc(1 << 16);
function body(seed: string, n: number): Buffer {
  const key = h(seed);
  const c = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  const parts: Buffer[] = [];
  for (let left = n; left > 0; left -= ZEROS.length)
    parts.push(c.update(ZEROS.subarray(0, Math.min(left, ZEROS.length))));
  const out = parts.length === 1 ? parts[0] : Buffer.concat(parts);
  if (key[0] & 1) for (let k = 0; k < n; k++) out[k] = 97 + (out[k] % 16);
  return out;
}

/** The fixed mtime (seconds) of the tree's directories and of every file's base (`T + i % 100000`). */
export const LARGE_TREE_TIME = T;

/** How many paths below the root the base tree holds (its `entries` and the package directories; mkfs's /lost+found not counted). */
export function largeTreePaths(entries: number): number {
  const dirs = Math.max(1, Math.ceil(entries / (FILES_PER_DIR + 1)));
  return entries + Math.min(dirs, 97);
}

/** Which change (if any) file `i` gets in the changed variant: 1 in 100 files. */
export function changeOf(i: number): 'edit' | 'remove' | 'add' | undefined {
  if (i % 100 !== 37) return undefined;
  const k = Math.floor(i / 100) % 3;
  return k === 0 ? 'edit' : k === 1 ? 'remove' : 'add';
}

/** Write the tree into `dir`. */
export function makeLargeTree(dir: string, entries: number, changed = false): void {
  const dirs = Math.max(1, Math.ceil(entries / (FILES_PER_DIR + 1)));
  let made = 0;
  const common = [body('common:a', 1200), body('common:b', 300), body('common:c', 5000)];
  for (let d = 0; d < dirs && made < entries; d++) {
    const dp = path.join(dir, `pkg${String(d % 97).padStart(2, '0')}`, `d${d}`);
    mkdirSync(dp, { recursive: true });
    made++;
    let last: string | undefined;
    for (let f = 0; f < FILES_PER_DIR && made < entries; f++, made++) {
      const i = d * FILES_PER_DIR + f;
      const c = changed ? changeOf(i) : undefined;
      const p = path.join(dp, `${f % 3 === 0 ? 'lib' : 'file'}-${i}.${['so', 'txt', 'conf', 'py', 'h'][f % 5]}`);
      if (c === 'remove') continue;
      if (i % 997 === 5) symlinkSync(`../d${Math.max(0, d - 1)}/file-${i - 100}.txt`, p);
      else if (i % 991 === 7 && last) linkSync(last, p);
      else {
        const n = i % 5003 === 11 ? 1_500_000 + (i % 7) * 4096 : (h(`size:${i}`).readUInt16LE(0) % 6000) + 1;
        const b = i % 13 === 0 ? common[i % 3] : body(`f:${i}`, n);
        writeFileSync(p, c === 'edit' ? Buffer.concat([b, Buffer.from(`edited ${i}\n`)]) : b);
        utimesSync(p, T + (i % 100000), T + (i % 100000));
        last = p;
      }
      if (c === 'add') {
        const q = path.join(dp, `added-${i}.txt`);
        writeFileSync(q, body(`added:${i}`, 700));
        utimesSync(q, T, T);
      }
    }
    utimesSync(dp, T, T);
  }
  for (let k = 0; k < Math.min(dirs, 97); k++) utimesSync(path.join(dir, `pkg${String(k).padStart(2, '0')}`), T, T);
}

/** The tree on an ext4 image (cached; the image is sparse). */
export async function largeTreeImage(entries: number, changed = false): Promise<string> {
  return fixture(`large-tree-${VERSION}-${entries}-${changed ? 'changed' : 'base'}.img`, async (out) => {
    // the tree in memory when there is a tmpfs (hundreds of thousands of small files on a disk are slow to write)
    const tree = existsSync('/dev/shm') ? mkdtempSync('/dev/shm/strata-large-tree-') : `${out}.tree`;
    rmSync(tree, { recursive: true, force: true });
    try {
      makeLargeTree(tree, entries, changed);
      const sizeMiB = Math.ceil((entries * 6 * 1024 + entries * 300) / 2 ** 20) + 256;
      await run('mkfs.ext4', [
        '-q',
        '-F',
        '-b',
        '4096',
        '-N',
        String(Math.ceil(entries * 1.1) + 1024),
        '-E',
        'root_owner=0:0',
        '-d',
        tree,
        out,
        `${sizeMiB}M`,
      ]);
    } finally {
      rmSync(tree, { recursive: true, force: true });
    }
  });
}
