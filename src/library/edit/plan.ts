import { type Stats, statSync } from 'node:fs';
import type { FileSystem, FileType, Inode } from '../../fs/types.js';
import { listDirectory, lookupName } from '../../fs/walk.js';
import { StrataError } from '../../util/errors.js';
import type { Attrs, Change } from './changes.js';

/**
 * Turns a change set into a debugfs command file, checking every operation against a model
 * of the tree as the earlier operations leave it (the parent's file system, read with our
 * own ext reader, plus what this change set did so far). So a bad operation (rm of a path
 * that is not there, put into a missing directory ...) is reported by its number before
 * debugfs runs, and debugfs only ever sees operations that must succeed: whatever it prints
 * that is not the echo of a command or a known success line is a failure (ENOSPC, a
 * corrupt structure ...).
 *
 * The model also tracks link counts: debugfs's `ln`/`unlink` leave them alone (`rm`,
 * `mkdir` and `rmdir` keep them right), so hard links and directory moves set them.
 */

/** One object of the tree; hard links share one Node. */
interface Node {
  type: FileType;
  nlink: number;
  /** The parent's inode, for a directory that comes from the parent version (its entries are read from there). */
  base?: Inode;
}

/** Where a new file's bytes are for debugfs: a local file path. */
export interface PlannedFile {
  /** The local file debugfs `write`s / `ea_set -f`s from. */
  local: string;
  /** Bytes to write to `local` first (a 'bytes' content source); undefined: `local` exists. */
  data?: Uint8Array;
}

export interface Plan {
  /** debugfs commands, one per line, no newline inside. */
  commands: string[];
  /** For each command, the index of the change it belongs to. */
  changeOf: number[];
  /** Local files the commands read (bytes to write there first). */
  files: PlannedFile[];
  /** Bytes of file contents written (for the caller's summary). */
  contentBytes: number;
}

const TYPE_BITS: Record<string, number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
  socket: 0o140000,
};

/** A path as debugfs's command parser (ss) reads it: in double quotes, a quote doubled. */
export function quote(s: string): string {
  return `"${s.replaceAll('"', '""')}"`;
}

/** Normalise an absolute path: '/a//b/' -> '/a/b'; rejects relative paths, '.', '..', NUL and newlines. */
export function normalisePath(p: string, what = 'path'): string {
  if (typeof p !== 'string' || !p.startsWith('/')) {
    throw new StrataError('USAGE', `${what} ${JSON.stringify(p)} is not absolute (it must start with '/')`);
  }
  if (/[\0\n\r]/.test(p)) throw new StrataError('USAGE', `${what} ${JSON.stringify(p)} holds a NUL or newline`);
  const parts = p.split('/').filter((c) => c !== '');
  for (const c of parts) {
    if (c === '.' || c === '..') throw new StrataError('USAGE', `${what} ${JSON.stringify(p)} holds '${c}'`);
    if (Buffer.byteLength(c) > 255)
      throw new StrataError('USAGE', `${what} ${JSON.stringify(p)}: a name is over 255 bytes`);
  }
  return `/${parts.join('/')}`;
}

const dirname = (p: string) => {
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
};
const basename = (p: string) => p.slice(p.lastIndexOf('/') + 1);
const octal = (n: number) => `0${n.toString(8)}`;

export class TreeModel {
  /** Paths whose state this change set decided (null: gone). */
  private readonly overlay = new Map<string, Node | null>();
  /** Nodes of the parent's inodes, by inode number (hard links share them). */
  private readonly baseNodes = new Map<number, Node>();
  private rootNode?: Node;

  constructor(private readonly fs: FileSystem) {}

  private baseNode(inode: Inode): Node {
    let n = this.baseNodes.get(inode.ino);
    if (!n) {
      n = { type: inode.type, nlink: inode.nlink };
      if (inode.type === 'dir') n.base = inode;
      this.baseNodes.set(inode.ino, n);
    }
    return n;
  }

  async get(path: string): Promise<Node | null> {
    if (path === '/') {
      if (!this.rootNode) this.rootNode = this.baseNode(await this.fs.root());
      return this.rootNode;
    }
    const o = this.overlay.get(path);
    if (o !== undefined) return o;
    const parent = await this.get(dirname(path));
    if (parent?.type !== 'dir' || !parent.base) return null;
    const e = await lookupName(this.fs, parent.base, basename(path));
    if (!e) return null;
    return this.baseNode(await this.fs.inode(e.ino));
  }

  /** Names in a directory (the parent's entries, less removed ones, plus new ones), sorted. */
  async children(path: string): Promise<string[]> {
    const node = await this.get(path);
    const names = new Set<string>();
    if (node?.base) for (const e of await listDirectory(this.fs, node.base)) names.add(e.name);
    const prefix = path === '/' ? '/' : `${path}/`;
    for (const [p, n] of this.overlay) {
      if (!p.startsWith(prefix) || p.indexOf('/', prefix.length) !== -1) continue;
      const name = p.slice(prefix.length);
      if (n) names.add(name);
      else names.delete(name);
    }
    return [...names].sort();
  }

  set(path: string, node: Node): void {
    this.overlay.set(path, node);
  }

  /** `path` is gone, and with it whatever this change set put under it. */
  remove(path: string): void {
    this.dropUnder(path);
    this.overlay.set(path, null);
  }

  private dropUnder(path: string): void {
    const prefix = `${path}/`;
    for (const p of [...this.overlay.keys()]) if (p.startsWith(prefix)) this.overlay.delete(p);
  }

  /** Move what the change set put under `from` to under `to` (a directory rename). */
  moveUnder(from: string, to: string): void {
    const prefix = `${from}/`;
    const moved: Array<[string, Node | null]> = [];
    for (const [p, n] of this.overlay) if (p.startsWith(prefix)) moved.push([to + p.slice(from.length), n]);
    this.dropUnder(from);
    for (const [p, n] of moved) this.overlay.set(p, n);
  }
}

export interface PlanOptions {
  /** Makes a local path for the bytes of change `i` (a 'bytes' content or an xattr value). */
  tempFile: (i: number, what: string) => string;
  /** Seconds since the epoch stamped on new files without an mtime (default now). */
  now?: number;
}

/** Check `changes` against the parent's tree and write them as debugfs commands. */
export async function planChanges(fs: FileSystem, changes: Change[], opts: PlanOptions): Promise<Plan> {
  const model = new TreeModel(fs);
  // inodes over 128 bytes hold the extra time fields (nanoseconds, epoch bits)
  const inodeSize = Number((await fs.info()).extra?.inodeSize ?? 128);
  const extraTimes = inodeSize > 128;
  const plan: Plan = { commands: [], changeOf: [], files: [], contentBytes: 0 };
  const now = Math.floor(opts.now ?? Date.now() / 1000);
  let current = 0;
  const emit = (cmd: string) => {
    plan.commands.push(cmd);
    plan.changeOf.push(current);
  };
  const fail = (c: Change, code: 'NOT_FOUND' | 'USAGE', why: string): never => {
    throw new StrataError(code, `change ${current + 1} (${c.op} ${c.path}): ${why}`);
  };
  const setAttrs = (path: string, type: FileType, a: Attrs, defaults: Attrs = {}) => {
    const mode = a.mode ?? defaults.mode;
    const uid = a.uid ?? defaults.uid;
    const gid = a.gid ?? defaults.gid;
    const mtime = a.mtime ?? defaults.mtime;
    const atime = a.atime ?? defaults.atime;
    const mtimeNsec = a.mtime !== undefined ? a.mtimeNsec : defaults.mtimeNsec;
    const atimeNsec = a.atime !== undefined ? a.atimeNsec : defaults.atimeNsec;
    if (mode !== undefined && type !== 'symlink')
      emit(`sif ${quote(path)} mode ${octal(TYPE_BITS[type] | (mode & 0o7777))}`);
    // debugfs's uid/gid fields set the high 16 bits too
    if (uid !== undefined) emit(`sif ${quote(path)} uid ${uid}`);
    if (gid !== undefined) emit(`sif ${quote(path)} gid ${gid}`);
    if (mtime !== undefined) setTime(path, 'mtime', mtime, mtimeNsec);
    if (atime !== undefined) setTime(path, 'atime', atime, atimeNsec);
  };
  /**
   * The seconds, then (inodes with extra fields) the extra word: nanoseconds << 2 and the
   * two epoch bits that extend the signed 32-bit seconds (the kernel's ext4_encode_extra_time).
   * Always written there, so no nanoseconds of debugfs's own clock are left behind.
   */
  const setTime = (path: string, field: 'mtime' | 'atime', seconds: number, nsec?: number) => {
    const whole = Math.floor(seconds);
    emit(`sif ${quote(path)} ${field} @${whole}`);
    if (!extraTimes) return;
    const ns = nsec ?? Math.min(999_999_999, Math.round((seconds - whole) * 1e9));
    const epoch = Math.floor((whole + 2 ** 31) / 2 ** 32) & 3;
    emit(`sif ${quote(path)} ${field}_extra ${ns * 4 + epoch}`);
  };
  const checkAttrs = (c: Change & Attrs) => {
    if (c.mode !== undefined && (!Number.isInteger(c.mode) || c.mode < 0 || c.mode > 0o7777))
      fail(c, 'USAGE', `mode ${c.mode} is not 0..07777`);
    for (const k of ['uid', 'gid'] as const) {
      const v = c[k];
      if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 0xffffffff))
        fail(c, 'USAGE', `${k} ${v} is not 0..2^32-1`);
    }
    for (const k of ['mtime', 'atime'] as const) {
      const v = c[k];
      if (v !== undefined && (!Number.isFinite(v) || v < -(2 ** 31) || v >= 2 ** 34))
        fail(c, 'USAGE', `${k} ${v} is out of range`);
    }
    for (const k of ['mtimeNsec', 'atimeNsec'] as const) {
      const v = c[k];
      if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 999_999_999))
        fail(c, 'USAGE', `${k} ${v} is not 0..999999999`);
    }
  };
  /** The parent directory of `path` must exist (and be one). */
  const needParent = async (c: Change, path: string) => {
    const p = await model.get(dirname(path));
    if (!p) fail(c, 'NOT_FOUND', `no directory ${dirname(path)}`);
    else if (p.type !== 'dir') fail(c, 'USAGE', `${dirname(path)} is not a directory`);
    return p as Node;
  };
  /** Remove `path` (node `n`), recursively for a directory; keeps link counts right. */
  const removeTree = async (path: string, n: Node) => {
    if (n.type === 'dir') {
      for (const name of await model.children(path)) {
        const child = `${path === '/' ? '' : path}/${name}`;
        const cn = await model.get(child);
        if (cn) await removeTree(child, cn);
      }
      emit(`rmdir ${quote(path)}`);
      const parent = await model.get(dirname(path));
      if (parent) parent.nlink--;
    } else {
      emit(`rm ${quote(path)}`);
      n.nlink--;
    }
    model.remove(path);
  };

  /** mkdir `p` (with missing ancestors when `parents`; an existing directory is then fine). */
  const makeDir = async (c: Change, p: string, attrs: Attrs, parents: boolean): Promise<void> => {
    const n = await model.get(p);
    if (n) {
      if (n.type === 'dir' && parents) return;
      fail(c, 'USAGE', `${p} exists`);
    }
    const parent = await model.get(dirname(p));
    if (!parent) {
      if (!parents) fail(c, 'NOT_FOUND', `no directory ${dirname(p)}`);
      await makeDir(c, dirname(p), {}, true);
    } else if (parent.type !== 'dir') fail(c, 'USAGE', `${dirname(p)} is not a directory`);
    emit(`mkdir ${quote(p)}`);
    const pn = (await model.get(dirname(p))) as Node;
    pn.nlink++;
    model.set(p, { type: 'dir', nlink: 2 });
    setAttrs(p, 'dir', attrs, { mode: 0o755, uid: 0, gid: 0 });
  };

  for (let i = 0; i < changes.length; i++) {
    current = i;
    const c = changes[i];
    if (!c || typeof c !== 'object' || typeof c.op !== 'string') {
      throw new StrataError('USAGE', `change ${i + 1} is not an operation`);
    }
    const path = normalisePath(c.path, `change ${i + 1} (${c.op}): path`);
    switch (c.op) {
      case 'put': {
        checkAttrs(c);
        if (path === '/') fail(c, 'USAGE', 'cannot replace the root directory');
        if (c.parents && dirname(path) !== '/') await makeDir(c, dirname(path), {}, true);
        await needParent(c, path);
        const old = await model.get(path);
        if (old?.type === 'dir') fail(c, 'USAGE', 'is a directory');
        let local: string;
        if (c.content?.kind === 'file') {
          local = c.content.path;
          let st: Stats;
          try {
            st = statSync(local);
          } catch {
            return fail(c, 'NOT_FOUND', `no local file ${local}`);
          }
          if (!st.isFile()) fail(c, 'USAGE', `local ${local} is not a regular file`);
          plan.contentBytes += st.size;
          plan.files.push({ local });
        } else if (c.content?.kind === 'bytes' && c.content.data instanceof Uint8Array) {
          local = opts.tempFile(i, 'content');
          plan.contentBytes += c.content.data.length;
          plan.files.push({ local, data: c.content.data });
        } else {
          return fail(c, 'USAGE', 'content is neither a file nor bytes');
        }
        if (/[\n\r]/.test(local)) fail(c, 'USAGE', `local path ${JSON.stringify(local)} holds a newline`);
        if (old) {
          emit(`rm ${quote(path)}`);
          old.nlink--;
          model.remove(path);
        }
        emit(`write ${quote(local)} ${quote(path)}`);
        model.set(path, { type: 'file', nlink: 1 });
        // debugfs copies the local file's mode; a new file is root's 0644 unless told
        setAttrs(path, 'file', c, { mode: 0o644, uid: 0, gid: 0, mtime: now, atime: now });
        break;
      }
      case 'rm': {
        if (path === '/') fail(c, 'USAGE', 'cannot remove the root directory');
        const n = await model.get(path);
        if (!n) return fail(c, 'NOT_FOUND', 'no such file or directory');
        if (n.type === 'dir' && !c.recursive) {
          if ((await model.children(path)).length > 0)
            fail(c, 'USAGE', 'is a non-empty directory (remove it recursively)');
        }
        await removeTree(path, n);
        break;
      }
      case 'mkdir': {
        checkAttrs(c);
        if (path === '/') {
          if (!c.parents) fail(c, 'USAGE', '/ exists');
          break;
        }
        await makeDir(c, path, c, Boolean(c.parents));
        break;
      }
      case 'symlink': {
        checkAttrs(c);
        if (typeof c.target !== 'string' || c.target === '' || /[\0\n\r]/.test(c.target))
          fail(c, 'USAGE', 'the link target is empty or holds a NUL or newline');
        if (Buffer.byteLength(c.target) >= 4096) fail(c, 'USAGE', 'the link target is 4096 bytes or longer');
        await needParent(c, path);
        if (await model.get(path)) fail(c, 'USAGE', 'exists');
        emit(`symlink ${quote(path)} ${quote(c.target)}`);
        model.set(path, { type: 'symlink', nlink: 1 });
        setAttrs(path, 'symlink', c, { uid: 0, gid: 0 });
        break;
      }
      case 'link': {
        const target = normalisePath(c.target, `change ${i + 1} (link): target`);
        const t = await model.get(target);
        if (!t) return fail(c, 'NOT_FOUND', `no such file ${target}`);
        if (t.type === 'dir') fail(c, 'USAGE', `${target} is a directory (no hard links to directories)`);
        await needParent(c, path);
        if (await model.get(path)) fail(c, 'USAGE', 'exists');
        if (t.nlink >= 65000) fail(c, 'USAGE', `${target} has too many links`);
        emit(`ln ${quote(target)} ${quote(path)}`);
        t.nlink++;
        emit(`sif ${quote(path)} links_count ${t.nlink}`);
        model.set(path, t);
        break;
      }
      case 'rename': {
        const to = normalisePath(c.to, `change ${i + 1} (rename): to`);
        if (path === '/' || to === '/') fail(c, 'USAGE', 'cannot rename the root directory');
        const n = await model.get(path);
        if (!n) return fail(c, 'NOT_FOUND', 'no such file or directory');
        if (to === path) break;
        if (to.startsWith(`${path}/`)) fail(c, 'USAGE', `cannot move a directory into itself (${to})`);
        const newParent = await needParent(c, to);
        const old = await model.get(to);
        if (old) {
          if (old.type === 'dir') fail(c, 'USAGE', `${to} is a directory`);
          if (n.type === 'dir') fail(c, 'USAGE', `${to} exists and is not a directory`);
          emit(`rm ${quote(to)}`);
          old.nlink--;
          model.remove(to);
        }
        emit(`ln ${quote(path)} ${quote(to)}`);
        emit(`unlink ${quote(path)}`);
        if (n.type === 'dir' && dirname(path) !== dirname(to)) {
          // the moved directory's '..' names its new parent; the parents' link counts follow
          const oldParent = (await model.get(dirname(path))) as Node;
          emit(`cd ${quote(to)}`);
          emit('unlink ..');
          emit(`ln ${quote(dirname(to))} ..`);
          emit('cd /');
          oldParent.nlink--;
          newParent.nlink++;
          emit(`sif ${quote(dirname(path))} links_count ${oldParent.nlink}`);
          emit(`sif ${quote(dirname(to))} links_count ${newParent.nlink}`);
        }
        model.moveUnder(path, to);
        model.remove(path);
        model.set(to, n);
        break;
      }
      case 'setattr': {
        checkAttrs(c);
        const n = await model.get(path);
        if (!n) return fail(c, 'NOT_FOUND', 'no such file or directory');
        if (c.mode !== undefined && n.type === 'symlink') fail(c, 'USAGE', 'a symbolic link has no mode of its own');
        setAttrs(path, n.type, c);
        break;
      }
      case 'xattr': {
        const n = await model.get(path);
        if (!n) return fail(c, 'NOT_FOUND', 'no such file or directory');
        if (typeof c.name !== 'string' || !/^[^\0\n\r]{1,255}$/.test(c.name) || !c.name.includes('.'))
          fail(c, 'USAGE', `xattr name ${JSON.stringify(c.name)} is not NAMESPACE.NAME`);
        if (c.value === null) emit(`ea_rm ${quote(path)} ${quote(c.name)}`);
        else if (c.value instanceof Uint8Array) {
          const local = opts.tempFile(i, 'xattr');
          plan.files.push({ local, data: c.value });
          emit(`ea_set -f ${quote(local)} ${quote(path)} ${quote(c.name)}`);
        } else fail(c, 'USAGE', 'xattr value is neither bytes nor null');
        break;
      }
      default:
        throw new StrataError(
          'USAGE',
          `change ${i + 1}: unknown operation ${JSON.stringify((c as { op: string }).op)}`,
        );
    }
  }
  return plan;
}
