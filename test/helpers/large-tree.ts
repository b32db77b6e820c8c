/**
 * A large ext4 tree for the memory tests and bench/large (issue 22): `entries` directory
 * entries with the path shapes of this machine's /usr (its directories, files and symlinks
 * repeated under /copy-N/ until the count is reached), small contents, made with the real
 * `mkfs.ext4 -d`. The source tree is written to a scratch directory, packed, then removed;
 * the image is sparse (unused space stays holes), so it costs about the used bytes.
 */
import { execFileSync } from 'node:child_process';
import {
  accessSync,
  constants,
  lstatSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';

export interface Shape {
  /** Path relative to the copy's root ("usr/share/doc"). */
  rel: string;
  type: 'dir' | 'file' | 'symlink';
  size: number;
  target?: string;
}

/** The directories, regular files and symlinks below `root` (sorted depth-first; others skipped). */
export function shapesOf(root: string, limit: number): Shape[] {
  const out: Shape[] = [];
  const visit = (dir: string, rel: string) => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const n of names) {
      if (out.length >= limit) return;
      const p = path.join(dir, n);
      const r = rel ? `${rel}/${n}` : n;
      let st: ReturnType<typeof lstatSync>;
      try {
        st = lstatSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) {
        out.push({ rel: r, type: 'dir', size: 0 });
        visit(p, r);
      } else if (st.isFile()) out.push({ rel: r, type: 'file', size: st.size });
      else if (st.isSymbolicLink()) out.push({ rel: r, type: 'symlink', size: 0, target: readlinkSync(p) });
    }
  };
  out.push({ rel: path.basename(root), type: 'dir', size: 0 });
  visit(root, path.basename(root));
  return out;
}

export interface LargeTreeOptions {
  entries: number;
  /** Largest file content (bytes); a file's content is its /usr size, capped. */
  maxFileBytes: number;
  /** Where the shapes come from (default /usr). */
  from?: string;
}

/**
 * Write the tree into `dir` (which must not exist). Returns the entry count below `dir`
 * (directories, files and symlinks, the /copy-N/ directories included), equal to
 * `opts.entries`. Contents: the path repeated, cut to min(size, maxFileBytes). Every
 * mtime is fixed (2024-01-02) so listings do not depend on when the tree was made.
 */
export function writeLargeTree(dir: string, opts: LargeTreeOptions): number {
  const shapes = shapesOf(opts.from ?? '/usr', opts.entries);
  if (shapes.length === 0) throw new Error(`no shapes found in ${opts.from ?? '/usr'}`);
  mkdirSync(dir);
  const when = new Date('2024-01-02T03:04:05Z');
  const dirs: string[] = [];
  let n = 0;
  for (let copy = 0; n < opts.entries; copy++) {
    const base = path.join(dir, `copy-${copy}`);
    mkdirSync(base);
    dirs.push(base);
    n++;
    for (const s of shapes) {
      if (n >= opts.entries) break;
      const p = path.join(base, s.rel);
      if (s.type === 'dir') {
        mkdirSync(p);
        dirs.push(p);
      } else if (s.type === 'symlink') symlinkSync(s.target as string, p);
      else {
        const want = Math.min(s.size, opts.maxFileBytes);
        const unit = `${copy}/${s.rel}\n`;
        writeFileSync(p, unit.repeat(Math.ceil(want / unit.length)).slice(0, want));
        utimesSync(p, when, when);
      }
      n++;
    }
  }
  // directories last, deepest first, so adding their entries does not move the times again
  for (let i = dirs.length - 1; i >= 0; i--) utimesSync(dirs[i], when, when);
  return n;
}

/**
 * Where the source tree is written while mkfs reads it: tmpfs when there is one (writing and
 * removing a million small files on a disk file system costs minutes of journal and discard
 * work), else next to the image.
 */
function scratchFor(image: string): string {
  const tag = `strata-large-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  try {
    accessSync('/dev/shm', constants.W_OK);
    return path.join('/dev/shm', tag);
  } catch {
    return `${image}.${tag}`;
  }
}

/**
 * `mkfs.ext4 -d` of a generated tree into `image` (a sparse file; inode tables and journal
 * initialised lazily, so they stay holes). The source tree lives in a scratch directory
 * (tmpfs when there is one) while mkfs runs and is removed afterwards. `blockSize` 1024
 * keeps small files small.
 */
export function makeLargeExt4(image: string, opts: LargeTreeOptions & { blockSize?: number }): void {
  const scratchDir = scratchFor(image);
  const src = path.join(scratchDir, 'tree');
  mkdirSync(scratchDir, { recursive: true });
  try {
    const n = writeLargeTree(src, opts);
    const bs = opts.blockSize ?? 4096;
    const perFile = Math.max(bs, Math.ceil(opts.maxFileBytes / bs) * bs);
    // room for every entry's data block, its inode, the directories and the journal; holes cost nothing
    const bytes = n * (perFile + 512) + (512 << 20);
    const mib = Math.ceil(bytes / (1 << 20));
    execFileSync(
      'mkfs.ext4',
      [
        '-q',
        '-F',
        '-b',
        String(bs),
        '-E',
        'lazy_itable_init=1,lazy_journal_init=1,nodiscard',
        '-N',
        String(Math.ceil(n * 1.1) + 1024),
        '-L',
        'large',
        '-d',
        src,
        image,
        `${mib}M`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, E2FSPROGS_FAKE_TIME: '1704164645' } },
    );
  } finally {
    rmSync(scratchDir, { recursive: true, force: true });
  }
}
