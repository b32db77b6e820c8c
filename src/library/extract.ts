import { execFile } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  ftruncateSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  realpathSync,
  symlinkSync,
  writeSync,
} from 'node:fs';
import * as nodePath from 'node:path';
import { promisify } from 'node:util';
import type { FileExtent, FileSystem, Inode, Timestamp } from '../fs/types.js';
import type { ByteSource } from '../io/byte-source.js';
import { CachedSource } from '../io/cached-source.js';
import { StrataError } from '../util/errors.js';
import { imagePath, safeName, type WalkItem, walkBatches } from './listing.js';

const pexec = promisify(execFile);

export interface ExtractOptions {
  /** Files written at the same time (default 8). */
  concurrency?: number;
  /** chown to the image's uid/gid (default: when running as root). */
  preserveOwner?: boolean;
  /** Largest single read from the volume (default 8 MiB). */
  chunkSize?: number;
  /** Each warning as it happens (also collected in the result, up to 1000). */
  onWarning?: (message: string) => void;
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
  warnings: string[];
}

const O_CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const MAX_KEPT_WARNINGS = 1000;
const S_ISGID = 0o2000;

const toSeconds = (t: Timestamp | undefined): number | undefined => (t ? t.sec + t.nsec / 1e9 : undefined);

/** Error codes from the destination that concern one entry, not the whole run. */
const ENTRY_ERRORS = new Set(['EEXIST', 'ENAMETOOLONG', 'EILSEQ', 'ENOTDIR', 'ELOOP', 'EINVAL']);

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
    warnings: [],
  };
  const warn = (m: string) => {
    if (result.warnings.length < MAX_KEPT_WARNINGS) result.warnings.push(m);
    else if (result.warnings.length === MAX_KEPT_WARNINGS) result.warnings.push('... more warnings not kept');
    opts.onWarning?.(m);
  };
  const skip = (m: string) => {
    result.skipped++;
    warn(m);
  };
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const owner = opts.preserveOwner ?? isRoot;
  const chunk = Math.max(65536, opts.chunkSize ?? 8 << 20);
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
  try {
    return await run();
  } finally {
    adoptFsWarnings();
  }

  async function run(): Promise<ExtractResult> {
    const src = imagePath(srcPath);
    const top = await fs.lookup(src);

    let created = false;
    try {
      created = mkdirSync(dest, { recursive: true }) !== undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw destError(e, dest);
    }
    const destReal = realpathSync(dest);
    if (!lstatSync(destReal).isDirectory()) {
      throw new StrataError('USAGE', 'destination exists and is not a directory', { file: dest });
    }

    // --- one entry -----------------------------------------------------------------------
    const firstLink = new Map<number, Promise<string | undefined>>();

    // Syscalls per file are most of an extraction's cost, so none is spent on what creation
    // already got right. A new entry is owned by our effective uid and gid, unless its
    // directory is set-group-ID (then it takes the directory's group): our own directories
    // are not (they get their modes last) unless DEST is, and a directory that was already in
    // DEST may be, so from the first one of those on, every entry is chowned.
    const euid = typeof process.geteuid === 'function' ? process.geteuid() : -1;
    const egid = typeof process.getegid === 'function' ? process.getegid() : -1;
    let ownerFromCreation = (lstatSync(destReal).mode & S_ISGID) === 0;
    const needsChown = (ino: Inode) => owner && (!ownerFromCreation || ino.uid !== euid || ino.gid !== egid);
    // Permission bits are given to open() when the umask leaves them whole and there are no
    // set-ID or sticky bits (a write would clear set-ID bits for a non-root process anyway).
    const umask = currentUmask();
    const modeAtOpen = (perm: number) => ((perm & 0o7000) === 0 && (perm & umask) === 0 ? perm : undefined);

    const setMeta = (target: string, ino: Inode, fd?: number, modeSet = false) => {
      const mt = toSeconds(ino.mtime);
      const at = toSeconds(ino.atime) ?? mt;
      if (fd !== undefined) {
        if (needsChown(ino)) fchownSync(fd, ino.uid, ino.gid);
        if (!modeSet) fchmodSync(fd, ino.mode & 0o7777);
        if (mt !== undefined && at !== undefined) futimesSync(fd, at, mt);
      } else {
        if (needsChown(ino)) lchownSync(target, ino.uid, ino.gid);
        if (mt !== undefined && at !== undefined) lutimesSync(target, at, mt);
      }
    };

    const writeFile = async (item: WalkItem, target: string) => {
      const ino = item.inode;
      const perm = modeAtOpen(ino.mode & 0o7777);
      const fd = openSync(target, O_CREATE_NEW, perm ?? 0o600);
      try {
        let end = 0;
        if (ino.size > 0) {
          const c = await copyData(fs, data, bulk, slots, ino, item.path, fd, chunk);
          result.bytes += c.bytes;
          end = c.end;
        }
        if (end !== ino.size) ftruncateSync(fd, ino.size); // a trailing hole
        setMeta(target, ino, fd, perm !== undefined);
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
          const text = await fs.readlink(ino);
          symlinkSync(text, target);
          setMeta(target, ino);
          result.symlinks++;
          return true;
        }
        case 'fifo':
          if (ino.nlink <= 1) {
            specials.push({ item, target });
            return false;
          }
          try {
            await pexec('mkfifo', ['-m', (ino.mode & 0o7777).toString(8), '--', target]);
          } catch (e) {
            skip(`${item.path}: fifo not created (${firstLine(e)})`);
            return false;
          }
          setMeta(target, ino);
          result.fifos++;
          return true;
        case 'char':
        case 'block': {
          if (!isRoot) {
            skip(`${item.path}: ${ino.type} device not created (needs root)`);
            return false;
          }
          if (ino.nlink <= 1) {
            specials.push({ item, target });
            return false;
          }
          const dev = ino.rdev ?? { major: 0, minor: 0 };
          try {
            await pexec('mknod', [
              '-m',
              (ino.mode & 0o7777).toString(8),
              '--',
              target,
              ino.type === 'char' ? 'c' : 'b',
              String(dev.major),
              String(dev.minor),
            ]);
          } catch (e) {
            skip(`${item.path}: device node not created (${firstLine(e)})`);
            return false;
          }
          setMeta(target, ino);
          result.devices++;
          return true;
        }
        default:
          skip(`${item.path}: ${ino.type} not extracted`);
          return false;
      }
    };

    /**
     * Fifos and device nodes (not hard-linked) are made at the end by one `sh` running
     * mkfifo/mknod for each: a child process per node costs a fork of this whole process.
     * Paths are positional arguments, never part of the script.
     */
    const specials: { item: WalkItem; target: string }[] = [];
    const makeSpecials = async () => {
      const script =
        'while [ $# -gt 0 ]; do if [ "$3" = p ]; then mkfifo -m "$1" -- "$2"; else mknod -m "$1" -- "$2" "$3" "$4" "$5"; fi; shift 5; done';
      for (let i = 0; i < specials.length; i += 256) {
        const batch = specials.slice(i, i + 256);
        const argv: string[] = [];
        for (const { item, target } of batch) {
          const ino = item.inode;
          const dev = ino.rdev ?? { major: 0, minor: 0 };
          const kind = ino.type === 'fifo' ? 'p' : ino.type === 'char' ? 'c' : 'b';
          argv.push((ino.mode & 0o7777).toString(8), target, kind, String(dev.major), String(dev.minor));
        }
        let err = '';
        try {
          await pexec('sh', ['-c', script, 'sh', ...argv]);
        } catch (e) {
          err = firstLine(e);
        }
        for (const { item, target } of batch) {
          const ino = item.inode;
          let st: ReturnType<typeof lstatSync> | undefined;
          try {
            st = lstatSync(target);
          } catch {
            st = undefined;
          }
          const ok =
            st &&
            (ino.type === 'fifo' ? st.isFIFO() : ino.type === 'char' ? st.isCharacterDevice() : st.isBlockDevice());
          if (!ok) {
            skip(`${item.path}: ${ino.type} not created${err ? ` (${err})` : ''}`);
            continue;
          }
          try {
            setMeta(target, ino);
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
              linkSync(firstPath, target);
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
      else if (code === 'EEXIST') skip(`${path}: ${target} already exists, not overwritten`);
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
      if (failure) throw failure;
    };

    // --- a single non-directory ------------------------------------------------------------
    if (top.type !== 'dir') {
      const name = nodePath.posix.basename(src);
      if (!safeName(name)) throw new StrataError('USAGE', `cannot extract ${JSON.stringify(src)} under that name`);
      await extractOne({ path: src, name, inode: top, depth: 0 }, nodePath.join(destReal, name));
      await makeSpecials();
      return result;
    }

    // --- a tree ------------------------------------------------------------------------------
    const dirs: { target: string; inode: Inode; existed?: boolean }[] = [];
    if (created) dirs.push({ target: destReal, inode: top });
    const refused = new Set<string>(); // image paths of directories whose subtree is skipped
    const rel = (p: string) => (src === '/' ? p : p.slice(src.length));

    walk: for await (const batch of walkBatches(fs, src, top, {
      recursive: true,
      onWarning: (m) => skip(m),
      enter: (it) => !refused.has(it.path),
    })) {
      for (const item of batch) {
        if (failure) break walk;
        const target = destReal + rel(item.path);
        if (item.inode.type === 'dir') {
          try {
            mkdirSync(target, 0o700);
            dirs.push({ target, inode: item.inode });
            result.dirs++;
          } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            let ok = false;
            if (code === 'EEXIST') {
              const st = lstatSync(target);
              ok = st.isDirectory() && !st.isSymbolicLink();
              if (!ok) skip(`${item.path}: ${target} exists and is not a directory; subtree not extracted`);
              else {
                dirs.push({ target, inode: item.inode, existed: true });
                if (st.mode & S_ISGID) ownerFromCreation = false;
              }
            } else if (code && ENTRY_ERRORS.has(code)) {
              skip(`${item.path}: directory not created (${code}); subtree not extracted`);
            } else throw destError(e, target);
            if (!ok) refused.add(item.path);
          }
          continue;
        }
        await submit(() => extractOne(item, target));
      }
    }
    await drain();
    await makeSpecials();

    // Directory modes and times last, deepest first, so writing children does not undo them.
    for (let i = dirs.length - 1; i >= 0; i--) {
      const { target, inode, existed } = dirs[i];
      try {
        if (existed ? owner : needsChown(inode)) lchownSync(target, inode.uid, inode.gid);
        chmodSync(target, inode.mode & 0o7777);
        const mt = toSeconds(inode.mtime);
        const at = toSeconds(inode.atime) ?? mt;
        if (mt !== undefined && at !== undefined) lutimesSync(target, at, mt);
      } catch (e) {
        warn(`${target}: directory attributes not set (${(e as NodeJS.ErrnoException).code ?? e})`);
      }
    }
    return result;
  }
}

/**
 * Write a file's bytes at their offsets, leaving holes unwritten. Plain extents are read
 * straight from the volume in large chunks (adjacent extents merged); encoded or inline ones
 * through the file system.
 */
async function copyData(
  fs: FileSystem,
  volume: ByteSource,
  bulk: BulkReader | undefined,
  slots: BlockSlots | undefined,
  ino: Inode,
  path: string,
  fd: number,
  chunk: number,
): Promise<{ bytes: number; end: number }> {
  const size = ino.size;
  let extents: FileExtent[] | undefined;
  try {
    extents = [];
    for await (const e of fs.extents(ino)) {
      if (e.unwritten || e.length <= 0 || e.fileOffset >= size) continue;
      extents.push(e);
    }
  } catch (e) {
    if (!(e instanceof StrataError) || e.code !== 'UNSUPPORTED') throw e;
    extents = undefined;
  }
  if (!extents) {
    // No extent map from this file system: copy everything through read().
    let written = 0;
    for (let off = 0; off < size; off += chunk) {
      const b = await fs.read(ino, off, Math.min(chunk, size - off));
      writeAll(fd, b, off);
      written += b.length;
    }
    return { bytes: written, end: written };
  }
  extents.sort((a, b) => a.fileOffset - b.fileOffset);
  let written = 0;
  let last = 0;
  let i = 0;
  while (i < extents.length) {
    const e = extents[i];
    const end = Math.min(size, e.fileOffset + e.length);
    if (e.encoded || e.inline || e.diskLength !== undefined) {
      for (let off = e.fileOffset; off < end; off += chunk) {
        const b = await fs.read(ino, off, Math.min(chunk, end - off));
        writeAll(fd, b, off);
        written += b.length;
      }
      last = Math.max(last, end);
      i++;
      continue;
    }
    // Merge following plain extents contiguous both in the file and on the volume.
    let runEnd = end;
    let j = i + 1;
    while (j < extents.length) {
      const n = extents[j];
      if (n.encoded || n.inline || n.diskLength !== undefined) break;
      if (n.fileOffset !== runEnd || n.volumeOffset !== e.volumeOffset + (runEnd - e.fileOffset)) break;
      runEnd = Math.min(size, n.fileOffset + n.length);
      j++;
    }
    const volStart = e.volumeOffset;
    if (volStart < 0 || volStart + (runEnd - e.fileOffset) > volume.size) {
      throw new StrataError('CORRUPT', `extent at file offset ${e.fileOffset} lies past the end of the volume`, {
        file: volume.name,
        structure: `${fs.kind} inode ${ino.ino} (${path}) extent`,
        offset: volStart,
      });
    }
    if (runEnd - e.fileOffset >= BIG_READ && bulk) {
      // Large runs: reuse one pooled buffer instead of faulting in fresh memory per chunk.
      const buf = takeBuffer(chunk);
      try {
        for (let off = e.fileOffset; off < runEnd; off += chunk) {
          const n = Math.min(chunk, runEnd - off);
          const got = await bulk(volStart + (off - e.fileOffset), buf.subarray(0, n));
          if (got < n) buf.fill(0, got, n);
          writeAll(fd, buf.subarray(0, n), off);
          written += n;
        }
      } finally {
        giveBuffer(buf);
      }
    } else {
      for (let off = e.fileOffset; off < runEnd; off += chunk) {
        const n = Math.min(chunk, runEnd - off);
        const at = volStart + (off - e.fileOffset);
        if (slots) await slots.use(at, n, (view) => writeAll(fd, view, off));
        else writeAll(fd, await volume.read(at, n), off);
        written += n;
      }
    }
    last = Math.max(last, runEnd);
    i = j;
  }
  return { bytes: written, end: last };
}

function writeAll(fd: number, b: Uint8Array, position: number): void {
  let done = 0;
  while (done < b.length) {
    const bytesWritten = writeSync(fd, b, done, b.length - done, position + done);
    if (bytesWritten <= 0) throw new StrataError('IO', 'write made no progress', { offset: position + done });
    done += bytesWritten;
  }
}

/** The process's umask (read by setting and restoring it: Node has no side-effect-free read). */
function currentUmask(): number {
  try {
    const m = process.umask(0o022);
    process.umask(m);
    return m;
  } catch {
    return 0o7777; // worker threads cannot change it: then every mode is set with fchmod
  }
}

function destError(e: unknown, target: string): StrataError {
  if (e instanceof StrataError) return e;
  const err = e as NodeJS.ErrnoException;
  return new StrataError('IO', `cannot write: ${err.code ?? ''} ${err.message}`.trim(), { file: target });
}

function firstLine(e: unknown): string {
  const err = e as { stderr?: string; message?: string };
  return (err.stderr || err.message || String(e)).split('\n')[0].trim();
}

/** Reads under 256 KiB go through a 32 MiB cache of 1 MiB blocks; larger ones straight to the source. */
function smallReadCache(v: ByteSource): ByteSource {
  return new CachedSource(v, { blockSize: 1 << 20, capacity: 32 << 20, directFrom: 256 << 10 });
}

/** Runs at least this long are read with pooled buffers. */
const BIG_READ = 256 << 10;

type BulkReader = (offset: number, out: Uint8Array) => Promise<number>;

/** `readInto` of the volume (partition slices forward it to the disk); undefined when there is none. */
function bulkReader(src: ByteSource): BulkReader | undefined {
  if (src.readInto) return (offset, out) => src.readInto!(offset, out);
  return undefined;
}

const pool: Uint8Array[] = [];
function takeBuffer(size: number): Uint8Array {
  const b = pool.pop();
  return b && b.length === size ? b : new Uint8Array(size);
}
function giveBuffer(b: Uint8Array): void {
  if (pool.length < 32) pool.push(b);
}

interface Slot {
  block: number;
  buf: Uint8Array;
  loading: Promise<number>;
  pins: number;
}

/**
 * A small cache of 1 MiB blocks read with readInto into buffers that are reused, for the
 * many small files of a tree: neighbours on the volume cost one read, and no fresh memory
 * is faulted in per file. A block is pinned while a caller waits for it and while its
 * callback (synchronous) runs, so a slot is never refilled under a reader.
 */
class BlockSlots {
  private readonly slots: Slot[] = [];
  private readonly byBlock = new Map<number, Slot>();
  private static readonly BS = 1 << 20;

  constructor(
    private readonly read: BulkReader,
    private readonly size: number,
    private readonly max: number,
  ) {}

  async use(offset: number, length: number, fn: (view: Uint8Array) => void): Promise<void> {
    const bs = BlockSlots.BS;
    const idx = Math.floor(offset / bs);
    if (length === 0) return fn(new Uint8Array(0));
    if (Math.floor((offset + length - 1) / bs) !== idx) {
      // crosses a block boundary (rare for small files): read it on its own
      const b = new Uint8Array(length);
      const got = await this.read(offset, b);
      if (got < length) b.fill(0, got);
      return fn(b);
    }
    let s = this.byBlock.get(idx);
    if (!s) {
      s = this.slots.find((x) => x.pins === 0);
      if (s) this.byBlock.delete(s.block);
      else {
        s = { block: -1, buf: new Uint8Array(bs), loading: Promise.resolve(0), pins: 0 };
        if (this.slots.length < this.max) this.slots.push(s);
      }
      const slot = s;
      const start = idx * bs;
      const want = Math.max(0, Math.min(bs, this.size - start));
      slot.block = idx;
      slot.loading = this.read(start, slot.buf.subarray(0, want));
      slot.loading.catch(() => {
        if (this.byBlock.get(idx) === slot) this.byBlock.delete(idx);
      });
      this.byBlock.set(idx, slot);
    }
    // most recently used at the end: reuse scans from the front
    const at = this.slots.indexOf(s);
    if (at >= 0 && at !== this.slots.length - 1) {
      this.slots.splice(at, 1);
      this.slots.push(s);
    }
    s.pins++;
    try {
      const got = await s.loading;
      const from = offset - idx * BlockSlots.BS;
      if (from + length > got) {
        throw new StrataError('TRUNCATED', `read of ${length} bytes at ${offset} past the end of the volume`, {
          offset,
        });
      }
      fn(s.buf.subarray(from, from + length));
    } finally {
      s.pins--;
      if (s.pins === 0 && !this.slots.includes(s) && this.byBlock.get(idx) === s) this.byBlock.delete(idx);
    }
  }
}
