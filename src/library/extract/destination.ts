import { execFile } from 'node:child_process';
import {
  chmodSync,
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
  unlinkSync,
} from 'node:fs';
import { promisify } from 'node:util';
import type { Inode, Timestamp } from '../../fs/types.js';
import { StrataError } from '../../util/errors.js';

const pexec = promisify(execFile);

/**
 * The destination of an extraction: every file-system change `extractTree` makes goes
 * through here, so the rules that keep it inside DEST and the owner and mode policy live in
 * one place.
 *
 * Never outside DEST:
 * - DEST is resolved once (realpath); every target is DEST's real path joined with an image
 *   path whose names the walk already checked ('', '.', '..', '/' and NUL refused), and
 *   `pathOf` refuses any that still holds such a name.
 * - Files are created with O_CREAT|O_EXCL|O_NOFOLLOW and directories with mkdir, so
 *   nothing already in DEST (a symlink pointing out, a file) is followed or overwritten; an
 *   existing entry that is not a real directory stops that subtree (`mkdir` says so).
 * - Symlinks are created, never followed: their target is data. Hard links link to a path
 *   this extraction created.
 *
 * Owner and mode: modes and times (atime/mtime; lutimes for symlinks) are kept; owners when
 * `owner` (root by default). Syscalls per file are most of an extraction's cost, so none is
 * spent on what creation already got right: a new entry is owned by our effective uid and
 * gid, unless its directory is set-group-ID (then it takes the directory's group): our own
 * directories are not (they get their modes last) unless DEST is, and a directory that was
 * already in DEST may be, so from the first one of those on, every entry is chowned.
 * Permission bits are given to open() when the umask leaves them whole and there are no
 * set-ID or sticky bits (a write would clear set-ID bits for a non-root process anyway).
 * Directories get their owner, mode and times after their contents are written, deepest
 * first (`finishDirs`).
 */

const O_CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const S_ISGID = 0o2000;

/** Error codes from the destination that concern one entry, not the whole run. */
export const ENTRY_ERRORS = new Set(['EEXIST', 'ENAMETOOLONG', 'EILSEQ', 'ENOTDIR', 'ELOOP', 'EINVAL']);

/** Names of a path relative to DEST (after its leading '/'): one empty, '.' or '..', or a NUL. */
const UNSAFE_NAMES = /(^|\/)\.{0,2}(\/|$)|\0/;

/**
 * A time for futimes/lutimes: seconds as a number, or a Date before 1970 (Node turns a
 * negative number into the current time; a Date keeps it, to the millisecond). libuv keeps
 * microseconds (it truncates the rest), and a double of ~1.8e9 s is exact to ~0.24 us only:
 * sec + nsec/1e9 can land just below its microsecond and be truncated to the one before
 * (a CI run saw it). Aiming at the middle of the microsecond makes the truncation exact.
 */
const toSeconds = (t: Timestamp | undefined): number | Date | undefined =>
  t
    ? t.sec < 0
      ? new Date(t.sec * 1000 + Math.trunc(t.nsec / 1e6))
      : t.sec + (Math.floor(t.nsec / 1000) * 1000 + 500) / 1e9
    : undefined;

/** A time toSeconds turns into a number whose microsecond libuv keeps exactly. */
const plainTime = (t: Timestamp): boolean =>
  Number.isInteger(t.sec) && t.sec >= 0 && Number.isInteger(t.nsec) && t.nsec >= 0 && t.nsec < 1e9;

/** What `mkdir` did. */
export type MkdirOutcome =
  | { kind: 'created' }
  /** A real directory was there: the walk goes on into it. */
  | { kind: 'existed' }
  /** A file or symlink was there and was replaced by a new directory (`replace`). */
  | { kind: 'replaced' }
  /** Something else was there: its subtree is not extracted. */
  | { kind: 'not-a-dir' }
  /** An error about this entry only (ENTRY_ERRORS). */
  | { kind: 'failed'; code: string };

/** A fifo or device node to create. */
export interface SpecialNode {
  target: string;
  inode: Inode;
}

export class Destination {
  /** Directories made or adopted and not yet finished, in pre-order: the walk's open path. */
  private readonly dirs: { target: string; inode: Inode; existed?: boolean }[] = [];
  /** Groups of directories the walk has left, waiting for finishClosed. */
  private closed: { target: string; inode: Inode; existed?: boolean }[][] = [];
  private closedCount = 0;
  private readonly euid = typeof process.geteuid === 'function' ? process.geteuid() : -1;
  private readonly egid = typeof process.getegid === 'function' ? process.getegid() : -1;
  private readonly umask = currentUmask();
  private ownerFromCreation: boolean;

  private constructor(
    /** DEST's real path. */
    readonly root: string,
    /** True when this extraction created DEST. */
    readonly created: boolean,
    /** chown entries to the image's uid and gid. */
    private readonly owner: boolean,
  ) {
    this.ownerFromCreation = (lstatSync(root).mode & S_ISGID) === 0;
  }

  /** Create DEST when missing (with its parents); USAGE when it exists and is not a directory. */
  static open(dest: string, owner: boolean): Destination {
    let created = false;
    try {
      created = mkdirSync(dest, { recursive: true }) !== undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw destError(e, dest);
    }
    const root = realpathSync(dest);
    if (!lstatSync(root).isDirectory()) {
      throw new StrataError('USAGE', 'destination exists and is not a directory', { file: dest });
    }
    return new Destination(root, created, owner);
  }

  /** The target of `rel` ('' for DEST itself, else '/a/b' made of checked names). */
  pathOf(rel: string): string {
    if (rel !== '' && (rel[0] !== '/' || UNSAFE_NAMES.test(rel.slice(1)))) {
      throw new StrataError(
        'DENIED',
        `refusing to write ${JSON.stringify(rel)}: not a plain path under the destination`,
        {
          file: this.root,
        },
      );
    }
    return this.root + rel;
  }

  /** DEST itself gets `top`'s owner, mode and times at the end (only when this extraction created it). */
  adoptRoot(top: Inode): void {
    if (this.created) this.dirs.push({ target: this.root, inode: top });
  }

  private needsChown(ino: Inode): boolean {
    return this.owner && (!this.ownerFromCreation || ino.uid !== this.euid || ino.gid !== this.egid);
  }

  private modeAtOpen(perm: number): number | undefined {
    return (perm & 0o7000) === 0 && (perm & this.umask) === 0 ? perm : undefined;
  }

  /** Owner (when needed) and times of `target`; its mode too through `fd` unless `modeSet`. */
  setMeta(target: string, ino: Inode, fd?: number, modeSet = false): void {
    const mt = toSeconds(ino.mtime);
    const at = toSeconds(ino.atime) ?? mt;
    if (fd !== undefined) {
      if (this.needsChown(ino)) fchownSync(fd, ino.uid, ino.gid);
      if (!modeSet) fchmodSync(fd, ino.mode & 0o7777);
      if (mt !== undefined && at !== undefined) futimesSync(fd, at, mt);
    } else {
      if (this.needsChown(ino)) lchownSync(target, ino.uid, ino.gid);
      if (mt !== undefined && at !== undefined) lutimesSync(target, at, mt);
    }
  }

  /** A new regular file, open for writing (never one that exists, never through a symlink). */
  createFile(target: string, ino: Inode): { fd: number; modeSet: boolean } {
    const perm = this.modeAtOpen(ino.mode & 0o7777);
    const fd = openSync(target, O_CREATE_NEW, perm ?? 0o600);
    return { fd, modeSet: perm !== undefined };
  }

  /**
   * What `createFile` and `finishFile` would give a new file of `ino`, for a writer that
   * creates it elsewhere (extract/native-writer.ts): the mode open() gets, whether fchmod and
   * fchown follow, and the access and modification times as seconds and nanoseconds cut to
   * the microsecond (what futimes keeps; none when the inode has no mtime). Undefined for a
   * time setMeta passes as a Date (before 1970) or a nanosecond field out of range: those
   * files stay on createFile's path.
   */
  newFileAttrs(
    ino: Inode,
  ): { openMode: number; chmod: boolean; chown: boolean; times?: [number, number, number, number] } | undefined {
    const perm = ino.mode & 0o7777;
    const atOpen = this.modeAtOpen(perm);
    let times: [number, number, number, number] | undefined;
    const m = ino.mtime;
    if (m) {
      const a = ino.atime ?? m;
      if (!plainTime(m) || !plainTime(a)) return undefined;
      times = [a.sec, a.nsec - (a.nsec % 1000), m.sec, m.nsec - (m.nsec % 1000)];
    }
    return { openMode: atOpen ?? 0o600, chmod: atOpen === undefined, chown: this.needsChown(ino), times };
  }

  /** After a file's data: its size (a trailing hole) when the data ended short of it, then owner, mode, times. */
  finishFile(fd: number, target: string, ino: Inode, dataEnd: number, modeSet: boolean): void {
    if (dataEnd !== ino.size) ftruncateSync(fd, ino.size);
    this.setMeta(target, ino, fd, modeSet);
  }

  symlink(text: string, target: string, ino: Inode): void {
    symlinkSync(text, target);
    this.setMeta(target, ino);
  }

  /** A hard link to `first`, a path this extraction created. */
  link(first: string, target: string): void {
    linkSync(first, target);
  }

  /** A fifo or device node now (one child process); the error's first line when it failed. */
  async node(target: string, ino: Inode): Promise<string | undefined> {
    const mode = (ino.mode & 0o7777).toString(8);
    try {
      if (ino.type === 'fifo') await pexec('mkfifo', ['-m', mode, '--', target]);
      else {
        const dev = ino.rdev ?? { major: 0, minor: 0 };
        const kind = ino.type === 'char' ? 'c' : 'b';
        await pexec('mknod', ['-m', mode, '--', target, kind, String(dev.major), String(dev.minor)]);
      }
    } catch (e) {
      return firstLine(e);
    }
    return undefined;
  }

  /**
   * Many fifos and device nodes at once, by one `sh` running mkfifo/mknod for each: a child
   * process per node costs a fork of this whole process. Paths are positional arguments,
   * never part of the script. Returns the first line of the shell's error ('' when none);
   * which nodes exist is for `isNode` to say.
   */
  async nodes(batch: readonly SpecialNode[]): Promise<string> {
    const script =
      'while [ $# -gt 0 ]; do if [ "$3" = p ]; then mkfifo -m "$1" -- "$2"; else mknod -m "$1" -- "$2" "$3" "$4" "$5"; fi; shift 5; done';
    const argv: string[] = [];
    for (const { inode: ino, target } of batch) {
      const dev = ino.rdev ?? { major: 0, minor: 0 };
      const kind = ino.type === 'fifo' ? 'p' : ino.type === 'char' ? 'c' : 'b';
      argv.push((ino.mode & 0o7777).toString(8), target, kind, String(dev.major), String(dev.minor));
    }
    try {
      await pexec('sh', ['-c', script, 'sh', ...argv]);
    } catch (e) {
      return firstLine(e);
    }
    return '';
  }

  /** Whether `target` is a node of `ino`'s type (fifo, char or block). */
  isNode(target: string, ino: Inode): boolean {
    let st: ReturnType<typeof lstatSync> | undefined;
    try {
      st = lstatSync(target);
    } catch {
      return false;
    }
    return ino.type === 'fifo' ? st.isFIFO() : ino.type === 'char' ? st.isCharacterDevice() : st.isBlockDevice();
  }

  /**
   * A directory for `ino` (mode 0700 until `finishDirs`), or a real directory already there.
   * With `replace`, a file or symlink in its place is removed (never followed) first.
   */
  mkdir(target: string, ino: Inode, replace = false): MkdirOutcome {
    try {
      mkdirSync(target, 0o700);
      this.dirs.push({ target, inode: ino });
      return { kind: 'created' };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        let st = lstatSync(target);
        let replaced = false;
        if (!st.isDirectory() && replace) {
          unlinkSync(target); // a file or symlink where the image has a directory
          mkdirSync(target, 0o700);
          replaced = true;
          st = lstatSync(target);
        }
        if (!st.isDirectory() || st.isSymbolicLink()) return { kind: 'not-a-dir' };
        this.dirs.push({ target, inode: ino, existed: true });
        if (st.mode & S_ISGID) this.ownerFromCreation = false;
        return { kind: replaced ? 'replaced' : 'existed' };
      }
      if (code && ENTRY_ERRORS.has(code)) return { kind: 'failed', code };
      throw destError(e, target);
    }
  }

  /**
   * Make room for a new entry at `target`: remove a file, symlink or special file there (the
   * link itself, never what it points to). `absent` when nothing was there, `removed`, or
   * `directory` when a real directory is in the way (it is kept).
   */
  clear(target: string): 'absent' | 'removed' | 'directory' {
    let st: ReturnType<typeof lstatSync>;
    try {
      st = lstatSync(target);
    } catch {
      return 'absent';
    }
    if (st.isDirectory()) return 'directory';
    unlinkSync(target);
    return 'removed';
  }

  /** How many directories wait for their attributes (the index the next mkdir gets). */
  get openDirs(): number {
    return this.dirs.length;
  }

  /**
   * The directories from index `from` on are complete (the walk has left them: in pre-order
   * they are one directory and its descendants). They are set aside for `finishClosed`, so
   * the list of waiting directories is the path being walked, not the whole tree.
   */
  closeDirsFrom(from: number): void {
    if (from >= this.dirs.length) return;
    this.closed.push(this.dirs.splice(from));
    this.closedCount += this.closed[this.closed.length - 1].length;
  }

  /** Directories closed but not finished. */
  get closedDirs(): number {
    return this.closedCount;
  }

  /**
   * Owners, modes and times of the closed directories (call when nothing is being written
   * into them): each closed group deepest first, groups in the order they were closed (a
   * group closed later may hold the parent of an earlier one, never a child).
   */
  finishClosed(warn: (message: string) => void): void {
    for (const group of this.closed) for (let i = group.length - 1; i >= 0; i--) this.finishDir(group[i], warn);
    this.closed = [];
    this.closedCount = 0;
  }

  /** Directory owners, modes and times last, deepest first, so writing children does not undo them. */
  finishDirs(warn: (message: string) => void): void {
    this.finishClosed(warn);
    for (let i = this.dirs.length - 1; i >= 0; i--) this.finishDir(this.dirs[i], warn);
    this.dirs.length = 0;
  }

  private finishDir(d: { target: string; inode: Inode; existed?: boolean }, warn: (message: string) => void): void {
    {
      const { target, inode, existed } = d;
      try {
        if (existed ? this.owner : this.needsChown(inode)) lchownSync(target, inode.uid, inode.gid);
        chmodSync(target, inode.mode & 0o7777);
        const mt = toSeconds(inode.mtime);
        const at = toSeconds(inode.atime) ?? mt;
        if (mt !== undefined && at !== undefined) lutimesSync(target, at, mt);
      } catch (e) {
        warn(`${target}: directory attributes not set (${(e as NodeJS.ErrnoException).code ?? e})`);
      }
    }
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

/** An error writing `target` as a StrataError (IO) naming it. */
export function destError(e: unknown, target: string): StrataError {
  if (e instanceof StrataError) return e;
  const err = e as NodeJS.ErrnoException;
  return new StrataError('IO', `cannot write: ${err.code ?? ''} ${err.message}`.trim(), { file: target });
}

function firstLine(e: unknown): string {
  const err = e as { stderr?: string; message?: string };
  return (err.stderr || err.message || String(e)).split('\n')[0].trim();
}
