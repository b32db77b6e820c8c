import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { run, scratch } from '../helpers/tools.js';

/** What dumpe2fs says about an ext file system's layout. */
export interface Dumpe2fs {
  blockSize: number;
  blockCount: number;
  firstBlock: number;
  inodesPerGroup: number;
  inodeSize: number;
  /** [first, last] block ranges (inclusive) by structure. */
  superblocks: number[];
  gdt: Array<[number, number]>;
  reservedGdt: Array<[number, number]>;
  bitmaps: number[];
  /** Inode table of group g: blocks [first, last]. */
  inodeTables: Array<{ group: number; first: number; last: number }>;
  free: Array<[number, number]>;
}

export async function dumpe2fs(image: string): Promise<Dumpe2fs> {
  const out = await run('dumpe2fs', [image]);
  const num = (re: RegExp) => {
    const m = re.exec(out);
    if (!m) throw new Error(`dumpe2fs: no ${re}`);
    return Number(m[1]);
  };
  const d: Dumpe2fs = {
    blockSize: num(/^Block size:\s+(\d+)/m),
    blockCount: num(/^Block count:\s+(\d+)/m),
    firstBlock: num(/^First block:\s+(\d+)/m),
    inodesPerGroup: num(/^Inodes per group:\s+(\d+)/m),
    inodeSize: num(/^Inode size:\s+(\d+)/m),
    superblocks: [],
    gdt: [],
    reservedGdt: [],
    bitmaps: [],
    inodeTables: [],
    free: [],
  };
  const range = (s: string): [number, number] => {
    const [a, b] = s.split('-').map(Number);
    return [a, b ?? a];
  };
  let group = -1;
  for (const line of out.split('\n')) {
    const g = /^Group (\d+):/.exec(line);
    if (g) group = Number(g[1]);
    if (group < 0) continue;
    for (const m of line.matchAll(/(?:Primary|Backup) superblock at (\d+)/g)) d.superblocks.push(Number(m[1]));
    for (const m of line.matchAll(/Group descriptors at (\d+-\d+)/g)) d.gdt.push(range(m[1]));
    for (const m of line.matchAll(/Reserved GDT blocks at (\d+-\d+)/g)) d.reservedGdt.push(range(m[1]));
    for (const m of line.matchAll(/(?:Block|Inode) bitmap at (\d+)/g)) d.bitmaps.push(Number(m[1]));
    for (const m of line.matchAll(/Inode table at (\d+)-(\d+)/g)) {
      d.inodeTables.push({ group, first: Number(m[1]), last: Number(m[2]) });
    }
    const f = /^\s+Free blocks: (.*)$/.exec(line);
    if (f && f[1].trim() !== '') for (const r of f[1].split(',')) d.free.push(range(r.trim()));
  }
  return d;
}

/** Run debugfs with a command file (one process for many commands); returns stdout. */
export async function debugfsBatch(image: string, commands: string[]): Promise<string> {
  const dir = scratch('debugfs');
  const file = path.join(dir, 'cmds');
  writeFileSync(file, `${commands.join('\n')}\n`);
  return run('debugfs', ['-f', file, image]);
}

/** `debugfs icheck`: block -> owning inode (undefined when debugfs finds none). */
export async function icheck(image: string, blocks: number[]): Promise<Map<number, number | undefined>> {
  const out = new Map<number, number | undefined>();
  for (let i = 0; i < blocks.length; i += 500) {
    const chunk = blocks.slice(i, i + 500);
    const text = await run('debugfs', ['-R', `icheck ${chunk.join(' ')}`, image]);
    for (const line of text.split('\n')) {
      const m = /^(\d+)\s+(\d+|<block not found>)/.exec(line);
      if (m) out.set(Number(m[1]), m[2].startsWith('<') ? undefined : Number(m[2]));
    }
  }
  return out;
}

/** `debugfs ncheck`: inode -> every path naming it. */
export async function ncheck(image: string, inodes: number[]): Promise<Map<number, string[]>> {
  const out = new Map<number, string[]>();
  for (let i = 0; i < inodes.length; i += 500) {
    const chunk = inodes.slice(i, i + 500);
    if (chunk.length === 0) continue;
    const text = await run('debugfs', ['-R', `ncheck ${chunk.join(' ')}`, image]);
    for (const line of text.split('\n')) {
      const m = /^(\d+)\t(.*)$/.exec(line);
      if (!m) continue;
      const l = out.get(Number(m[1])) ?? [];
      // debugfs prints paths with a doubled leading slash for entries of the root
      l.push(m[2].replace(/^\/+/, '/'));
      out.set(Number(m[1]), l);
    }
  }
  return out;
}

/** `debugfs bmap`: physical block of (inode, logical block) for many pairs at once. */
export async function bmap(image: string, pairs: Array<[number, number]>): Promise<number[]> {
  const text = await debugfsBatch(
    image,
    pairs.map(([ino, l]) => `bmap <${ino}> ${l}`),
  );
  const res = text
    .split('\n')
    .filter((l) => /^\d+$/.test(l.trim()))
    .map(Number);
  if (res.length !== pairs.length) throw new Error(`debugfs bmap answered ${res.length} of ${pairs.length}: ${text}`);
  return res;
}

/** The Sleuth Kit: `ifind -d BLOCK` -> inode (undefined for "Inode not found" and metadata). */
export async function tskIfind(image: string, block: number): Promise<number | undefined> {
  const out = (await run('ifind', ['-d', String(block), image])).trim();
  return /^\d+$/.test(out) ? Number(out) : undefined;
}

/** The Sleuth Kit: `ffind INODE` -> its names. */
export async function tskFfind(image: string, ino: number): Promise<string[]> {
  const out = await run('ffind', ['-a', image, String(ino)]);
  return out
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('*'));
}

/** The Sleuth Kit: `istat INODE` -> every block it lists (direct and indirect). */
export async function tskIstatBlocks(image: string, ino: number): Promise<{ direct: number[]; indirect: number[] }> {
  const out = await run('istat', [image, String(ino)]);
  const direct: number[] = [];
  const indirect: number[] = [];
  let into: number[] | undefined;
  for (const line of out.split('\n')) {
    if (/^Direct Blocks:/.test(line)) into = direct;
    else if (/^Indirect Blocks:/.test(line)) into = indirect;
    else if (/^\S/.test(line) && !/^\d/.test(line)) into = undefined;
    else if (into) for (const n of line.trim().split(/\s+/)) if (/^\d+$/.test(n)) into.push(Number(n));
  }
  return { direct, indirect };
}
