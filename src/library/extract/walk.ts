import { closeSync } from 'node:fs';
import * as nodePath from 'node:path';
import type { FileExtent, FileSystem } from '../../fs/types.js';
import { StrataError } from '../../util/errors.js';
import { checkMemory } from '../../util/memory.js';
import { imagePath, lookupPath, safeName, type WalkItem, walkBatches } from '../listing.js';
import { Destination, destError, ENTRY_ERRORS, type SpecialNode } from './destination.js';
import { BlockSlots, bulkReader, copyData, extentsToCopy, extentsToCopyNow, smallReadCache } from './file-data.js';
import { NativeWriter } from './native-writer.js';

export interface ExtractOptions {
  /** Files written at the same time (default 8). */
  concurrency?: number;
  /** chown to the image's uid/gid (default: when running as root). */
  preserveOwner?: boolean;
  /** Largest single read from the volume (default 8 MiB; 1 MiB when `sourceCached`). */
  chunkSize?: number;
  /**
   * The volume is read through a cache of its own (a library version: the store's decoded
   * frames and read scratch). Then a large run is read in 1 MiB pieces, not 8 MiB ones: eight
   * 8 MiB run buffers beside the store's ~83 MiB of shares and the walk's 24 MiB of blocks
   * stopped a 1,000,000-entry version's extract with LIMIT at 159 MiB (issue 22, sweep3), where
   * the image file's reads pass by the store. (Dropping the blocks too cost twice the CPU at
   * 200,000 entries for 9 MiB less.)
   */
  sourceCached?: boolean;
  /** Each warning as it happens (also collected in the result, up to 1000). */
  onWarning?: (message: string) => void;
  /** When the source path itself is a symlink: extract what it points to, inside the image (default false). */
  follow?: boolean;
  /**
   * What to do with an entry DEST already holds: `keep` it (counted in `existing` and
   * `skipped`, a warning in the result but not through onWarning: one summary is the
   * caller's), `skip` it silently (counted in `existing` only), or `replace` it (a file,
   * symlink or special file is removed, never followed, and written anew; a directory in
   * the way of a non-directory is kept). Default `keep`.
   */
  existing?: 'keep' | 'skip' | 'replace';
}

export interface ExtractResult {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  fifos: number;
  devices: number;
  /** File bytes written (holes excluded). */
  bytes: number;
  /** Entries not extracted (refused names, unsupported types, existing targets, read errors). */
  skipped: number;
  /** Entries DEST already held and that were kept. */
  existing: number;
  /** Entries DEST already held and that were replaced (`existing: 'replace'`). */
  replaced: number;
  warnings: string[];
}

const MAX_KEPT_WARNINGS = 1000;

/**
 * Copy a file or a tree out of a file system into `dest`, never writing outside it.
 *
 * - A directory's contents go into `dest` (created when missing); a single non-directory
 *   is written as `dest/<its name>`.
 * - Every name is checked: '', '.', '..', names with '/' or NUL are refused with a warning,
 *   with their subtree. Files are created with O_EXCL|O_NOFOLLOW, directories with mkdir,
 *   so nothing already in `dest` (a symlink pointing out, a file) is followed or
 *   overwritten; an existing entry that is not a real directory stops that subtree.
 * - Symlinks are created as symlinks (their target is data, never followed); hard links
 *   link to the first extracted path of the inode; fifos via mkfifo; device nodes via
 *   mknod when root, else skipped with a warning; sockets are skipped.
 * - Modes, times (atime/mtime; lutimes for symlinks) and, as root, owners are kept;
 *   directories get theirs after their contents are written.
 * - Sparse files stay sparse: only the file's extents are written (unwritten ones too are
 *   left as holes) and the file is truncated to its size.
 *
 * This is the walk: the tree in batches, a bounded pool of file writers, hard links,
 * what is skipped and why. Every change to the destination goes through destination.ts
 * (creation, owner and mode policy, staying inside DEST); file bytes through file-data.ts.
 */
export async function extractTree(
  fs: FileSystem,
  srcPath: string,
  dest: string,
  opts: ExtractOptions = {},
): Promise<ExtractResult> {
  const result: ExtractResult = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    fifos: 0,
    devices: 0,
    bytes: 0,
    skipped: 0,
    existing: 0,
    replaced: 0,
    warnings: [],
  };
  const existingPolicy = opts.existing ?? 'keep';
  const keep = (m: string) => {
    if (result.warnings.length < MAX_KEPT_WARNINGS) result.warnings.push(m);
    else if (result.warnings.length === MAX_KEPT_WARNINGS) result.warnings.push('... more warnings not kept');
  };
  const warn = (m: string) => {
    keep(m);
    opts.onWarning?.(m);
  };
  /** An entry DEST already holds, kept. */
  const alreadyThere = (m: string) => {
    result.existing++;
    if (existingPolicy === 'skip') return;
    result.skipped++;
    keep(m);
  };
  const skip = (m: string) => {
    result.skipped++;
    warn(m);
  };
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const owner = opts.preserveOwner ?? isRoot;
  const cached = opts.sourceCached === true;
  const chunk = Math.max(65536, opts.chunkSize ?? (cached ? 1 << 20 : 8 << 20));
  const limit = Math.max(1, opts.concurrency ?? 8);
  // Small files sit next to each other on the volume: read them through 1 MiB blocks so a
  // directory of small files costs a few large reads, not one read each.
  const data = smallReadCache(fs.volume);
  const bulk = bulkReader(fs.volume);
  const slots = bulk ? new BlockSlots(bulk, fs.volume.size, 2 * limit + 8) : undefined;

  // Findings of the reader during this run (unsafe names it dropped, bad checksums) are ours too.
  const fsWarningsBefore = fs.warnings.length;
  const adoptFsWarnings = () => {
    for (const w of fs.warnings.slice(fsWarningsBefore)) warn(w);
  };
  // Files written on the thread pool (native-writer.ts), when it can.
  let writer: NativeWriter | undefined;
  try {
    return await run();
  } finally {
    await writer?.settle(); // on a failure too: nothing may still read the image or write into DEST
    adoptFsWarnings();
  }

  async function run(): Promise<ExtractResult> {
    const src = imagePath(srcPath);
    const top = await lookupPath(fs, src, opts.follow ?? false);
    const out = Destination.open(dest, owner);

    /** With `replace`: remove what is at `target` unless it is a real directory; true when it is gone. */
    const clearTarget = (target: string, path: string): boolean => {
      const c = out.clear(target);
      if (c === 'directory') {
        skip(`${path}: ${target} is a directory, not replaced`);
        return false;
      }
      if (c === 'removed') result.replaced++;
      return true;
    };

    // --- one entry -----------------------------------------------------------------------
    const firstLink = new Map<number, Promise<string | undefined>>();

    // Files written by native/extract.c on the thread pool when it can (see native-writer.ts);
    // each is counted, or its failure reported, when its batch is done.
    writer = NativeWriter.for(fs.volume, out, {
      written: (files, bytes) => {
        result.files += files;
        result.bytes += bytes;
      },
      failed: (f, error) => entryFailure(error, f.path, f.target),
    });

    const writeFile = async (item: WalkItem, target: string) => {
      const ino = item.inode;
      // A hard-linked file is written here: its other names link to it as soon as it exists.
      if (writer && ino.nlink <= 1) {
        const extents = ino.size > 0 ? await extentsToCopy(fs, ino).catch(() => null) : [];
        if (extents !== null && (await writer.add({ path: item.path, target, inode: ino }, extents))) return;
      }
      const { fd, modeSet } = out.createFile(target, ino);
      try {
        let end = 0;
        if (ino.size > 0) {
          const extents = await extentsToCopy(fs, ino);
          const c = await copyData(fs, data, bulk, slots, ino, item.path, fd, chunk, extents);
          result.bytes += c.bytes;
          end = c.end;
        }
        out.finishFile(fd, target, ino, end, modeSet);
      } finally {
        closeSync(fd);
      }
      result.files++;
    };

    const makeNode = async (item: WalkItem, target: string): Promise<boolean> => {
      const ino = item.inode;
      switch (ino.type) {
        case 'file':
          await writeFile(item, target);
          return true;
        case 'symlink': {
          out.symlink(await fs.readlink(ino), target, ino);
          result.symlinks++;
          return true;
        }
        case 'fifo':
        case 'char':
        case 'block': {
          if (ino.type !== 'fifo' && !isRoot) {
            skip(`${item.path}: ${ino.type} device not created (needs root)`);
            return false;
          }
          if (ino.nlink <= 1) {
            specials.push({ item, target, inode: ino });
            return false;
          }
          const err = await out.node(target, ino);
          if (err !== undefined) {
            skip(`${item.path}: ${ino.type === 'fifo' ? 'fifo' : 'device node'} not created (${err})`);
            return false;
          }
          out.setMeta(target, ino);
          if (ino.type === 'fifo') result.fifos++;
          else result.devices++;
          return true;
        }
        default:
          skip(`${item.path}: ${ino.type} not extracted`);
          return false;
      }
    };

    /** Fifos and device nodes (not hard-linked) are made at the end, 256 per child process. */
    const specials: Array<SpecialNode & { item: WalkItem }> = [];
    const makeSpecials = async () => {
      const all = specials.splice(0);
      for (let i = 0; i < all.length; i += 256) {
        const batch = all.slice(i, i + 256);
        const err = await out.nodes(batch);
        for (const { item, target, inode: ino } of batch) {
          if (!out.isNode(target, ino)) {
            skip(`${item.path}: ${ino.type} not created${err ? ` (${err})` : ''}`);
            continue;
          }
          try {
            out.setMeta(target, ino);
          } catch (e) {
            entryFailure(e, item.path, target);
            continue;
          }
          if (ino.type === 'fifo') result.fifos++;
          else result.devices++;
        }
      }
    };

    /** Extract one non-directory; hard links after the first become links to it. */
    const extractOne = async (item: WalkItem, target: string): Promise<void> => {
      const ino = item.inode;
      const guarded = async (): Promise<string | undefined> => {
        try {
          if (existingPolicy === 'replace' && !clearTarget(target, item.path)) return undefined;
          return (await makeNode(item, target)) ? target : undefined;
        } catch (e) {
          entryFailure(e, item.path, target);
          return undefined;
        }
      };
      if (ino.nlink > 1) {
        const first = firstLink.get(ino.ino);
        if (first) {
          const firstPath = await first;
          if (firstPath) {
            try {
              if (existingPolicy === 'replace' && !clearTarget(target, item.path)) return;
              out.link(firstPath, target);
              result.hardlinks++;
              return;
            } catch (e) {
              entryFailure(e, item.path, target);
              return;
            }
          }
        } else {
          const p = guarded();
          firstLink.set(ino.ino, p);
          await p;
          return;
        }
      }
      await guarded();
    };

    const entryFailure = (e: unknown, path: string, target: string) => {
      const code = (e as NodeJS.ErrnoException)?.code;
      if (e instanceof StrataError) skip(`${path}: not extracted: ${e.message}`);
      else if (code === 'EEXIST') alreadyThere(`${path}: ${target} already exists, not overwritten`);
      else if (code && ENTRY_ERRORS.has(code)) skip(`${path}: not extracted (${code})`);
      else throw destError(e, target);
    };

    // --- bounded pool ----------------------------------------------------------------------
    const inflight = new Set<Promise<void>>();
    let failure: unknown;
    const submit = async (task: () => Promise<void>) => {
      while (inflight.size >= limit) await Promise.race(inflight);
      if (failure) throw failure;
      const p: Promise<void> = task()
        .catch((e) => {
          failure ??= e;
        })
        .finally(() => inflight.delete(p));
      inflight.add(p);
    };
    const drain = async () => {
      while (inflight.size > 0) await Promise.race(inflight);
      if (!failure) await writer?.finish();
      if (failure) throw failure;
    };

    /**
     * Most files of a tree: a regular file, not hard-linked, whose extents the reader has
     * without I/O, handed to the native writer here, without the pool's promises and frames
     * (those were most of what a file allocated: ~8 KB, 1,000 young-generation collections per
     * 200,000 files). What it does not take goes through extractOne as before, which would
     * end the same way for these files (writeFile's first step).
     */
    const queuedNow = (item: WalkItem, target: string): boolean => {
      const ino = item.inode;
      if (!writer || writer.failed || ino.type !== 'file' || ino.nlink > 1 || existingPolicy === 'replace')
        return false;
      let extents: FileExtent[] | undefined;
      try {
        extents = ino.size > 0 ? extentsToCopyNow(fs, ino) : [];
      } catch {
        return false; // extractOne meets the error again and reports it
      }
      return extents !== undefined && writer.queue({ path: item.path, target, inode: ino }, extents);
    };

    // --- a single non-directory ------------------------------------------------------------
    if (top.type !== 'dir') {
      const name = nodePath.posix.basename(src);
      if (!safeName(name)) throw new StrataError('USAGE', `cannot extract ${JSON.stringify(src)} under that name`);
      await extractOne({ path: src, name, inode: top, depth: 0 }, out.pathOf(`/${name}`));
      await drain();
      await makeSpecials();
      return result;
    }

    // --- a tree ------------------------------------------------------------------------------
    out.adoptRoot(top);
    const refused = new Set<string>(); // image paths of directories whose subtree is skipped
    const rel = (p: string) => (src === '/' ? p : p.slice(src.length));

    // The directories being walked (depth of their entries, index in out's waiting list). One
    // the walk has left is closed; closed ones get their attributes a few thousand at a time,
    // once the writers in flight (and the fifos and devices waiting) are done, so memory
    // follows the depth of the tree, not its size.
    const openDirs: Array<{ depth: number; index: number }> = [];
    const FINISH_EVERY = 4096;
    const finishClosed = async () => {
      await drain();
      await makeSpecials();
      out.finishClosed(warn);
    };

    walk: for await (const batch of walkBatches(fs, src, top, {
      recursive: true,
      onWarning: (m) => skip(m),
      enter: (it) => !refused.has(it.path),
    })) {
      checkMemory('extracting');
      for (const item of batch) {
        if (failure) break walk;
        let close = -1;
        while (openDirs.length > 0 && openDirs[openDirs.length - 1].depth > item.depth) close = openDirs.pop()!.index;
        if (close >= 0) {
          out.closeDirsFrom(close);
          if (out.closedDirs >= FINISH_EVERY) await finishClosed();
        }
        const target = out.pathOf(rel(item.path));
        if (item.inode.type === 'dir') {
          const index = out.openDirs;
          const made = out.mkdir(target, item.inode, existingPolicy === 'replace');
          if (out.openDirs > index) openDirs.push({ depth: item.depth + 1, index });
          if (made.kind === 'created') result.dirs++;
          else if (made.kind === 'replaced') result.replaced++;
          else if (made.kind === 'not-a-dir') {
            skip(`${item.path}: ${target} exists and is not a directory; subtree not extracted`);
            refused.add(item.path);
          } else if (made.kind === 'failed') {
            skip(`${item.path}: directory not created (${made.code}); subtree not extracted`);
            refused.add(item.path);
          }
          continue;
        }
        if (queuedNow(item, target)) {
          if (writer?.full) await writer.send();
          continue;
        }
        await submit(() => extractOne(item, target));
      }
    }
    await drain();
    await makeSpecials();
    out.finishDirs(warn);
    return result;
  }
}
