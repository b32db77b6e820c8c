import {
  closeSync,
  fstatSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import type { FileType } from '../../fs/types.js';
import { StrataError } from '../../util/errors.js';
import {
  type Attr,
  Errno,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  type StatfsInfo,
  TYPE_BITS,
  XATTR_CREATE,
  XATTR_REPLACE,
} from './protocol.js';
import type { MountChild, MountNode, MountTree } from './tree.js';
import { UPPER_FORMAT, type UpperNode, type UpperState } from './upper.js';

/** A name of a node: the key of its directory and the name in it. */
type Link = [number, string];

interface ONode extends MountNode {
  /** The version's node this one shows (absent for nodes made on the mount). */
  lower?: MountNode;
  /** Its names in the version, as far as they were seen (directories listed on the mount). */
  lowerLinks: Link[];
  /** Its names now. Empty: deleted. */
  links: Link[];
  /** A directory's entries, once it was listed (from then on the overlay owns the listing). */
  kids?: Map<string, ONode>;
  /** The upper layer's copy of a file's bytes (copied up on first write, or made here). */
  data?: string;
  /** A symlink made on the mount: its target. */
  target?: Uint8Array;
  /** Extended attributes once one changed. */
  xattrs?: Map<string, Uint8Array>;
  changedXattrs?: Set<string>;
  /** What changed in the attributes (for the change set: only these are set). */
  changed: { mode?: boolean; uid?: boolean; gid?: boolean; times?: boolean; content?: boolean };
}

/** What a SETATTR asks for (undefined: leave). `now` fills *_NOW. */
export interface SetAttrs {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: { sec: number; nsec: number };
  mtime?: { sec: number; nsec: number };
}

/** A tree that accepts changes (a writable mount). */
export interface WritableTree extends MountTree {
  readonly writable: true;
  /** Reads of this node must not go through the block cache (its bytes are in the upper layer). */
  direct(node: MountNode): boolean;
  create(dir: MountNode, name: string, mode: number, uid: number, gid: number, truncate?: boolean): Promise<MountNode>;
  mkdir(dir: MountNode, name: string, mode: number, uid: number, gid: number): Promise<MountNode>;
  symlink(dir: MountNode, name: string, target: Uint8Array, uid: number, gid: number): Promise<MountNode>;
  link(node: MountNode, dir: MountNode, name: string): Promise<MountNode>;
  unlink(dir: MountNode, name: string): Promise<void>;
  rmdir(dir: MountNode, name: string): Promise<void>;
  /** Returns the nodes that moved (directories change their parent). */
  rename(dir: MountNode, name: string, to: MountNode, toName: string, flags: number): Promise<MountNode[]>;
  setattr(node: MountNode, s: SetAttrs): Promise<MountNode>;
  write(node: MountNode, offset: number, data: Uint8Array): Promise<number>;
  setxattr(node: MountNode, name: string, value: Uint8Array, flags: number): Promise<void>;
  removexattr(node: MountNode, name: string): Promise<void>;
  /** Write the upper layer's state file now. */
  save(nonce?: string): void;
  /** A file handle was opened / released on the node (a deleted file's bytes go with its last one). */
  opened(node: MountNode): void;
  released(node: MountNode): void;
}

export function isWritable(t: MountTree): t is WritableTree {
  return (t as Partial<WritableTree>).writable === true;
}

export interface OverlayOptions {
  /** The most bytes the upper layer's files may hold together (ENOSPC past it). */
  maxBytes?: number;
  /** Called after each change (the server saves the state file a little later). */
  onChange?: () => void;
}

/** Errors of the upper layer's own files, as the errno the kernel gets. */
function errnoOf(e: unknown): number {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return Errno.ENOSPC;
  if (code === 'EFBIG') return Errno.EFBIG;
  return Errno.EIO;
}

const NEW_INO_BASE = 2 ** 40;
const COPY_CHUNK = 1 << 20;
const now = () => {
  const ms = Date.now();
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1_000_000 };
};

/**
 * A writable mount: the version (`lower`, never changed) under an upper layer in a private
 * folder. A file is copied up whole on its first write (or truncated without copying when
 * cut to 0); deletions are the entries a listed directory no longer holds (directories are
 * listed from the version once, then the overlay owns the listing); new files, directories,
 * symlinks and hard links, renames, modes, owners, times and xattrs are kept here. The
 * state (which nodes changed, their names then and now) is saved as `state.json` in the
 * folder, from which `upperToChangeSet` makes the change set a commit applies.
 */
export class OverlayTree implements WritableTree {
  readonly writable = true as const;
  readonly name: string;
  readonly readBlock: number;
  private readonly all = new Map<number, ONode>();
  private readonly byLower = new Map<number, ONode>();
  private rootNode?: ONode;
  private nextKey = 1;
  private used = 0;
  private readonly maxBytes: number;
  private readonly dataDir: string;
  private readonly opens = new Map<number, number>();
  private readonly copying = new Map<number, Promise<string>>();

  constructor(
    private readonly lower: MountTree,
    readonly upperDir: string,
    private readonly opts: OverlayOptions = {},
  ) {
    this.name = lower.name;
    this.readBlock = lower.readBlock;
    this.maxBytes = opts.maxBytes ?? Number.POSITIVE_INFINITY;
    this.dataDir = path.join(upperDir, 'data');
    mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
  }

  /** Bytes the upper layer's files hold (their sizes). */
  get usedBytes(): number {
    return this.used;
  }

  private changed(): void {
    this.opts.onChange?.();
  }

  private fromLower(n: MountNode): ONode {
    const have = this.byLower.get(n.key);
    if (have) return have;
    const o: ONode = {
      key: this.nextKey++,
      type: n.type,
      attr: { ...n.attr },
      lower: n,
      lowerLinks: [],
      links: [],
      changed: {},
    };
    this.all.set(o.key, o);
    this.byLower.set(n.key, o);
    return o;
  }

  private fresh(type: FileType, mode: number, uid: number, gid: number): ONode {
    const key = this.nextKey++;
    const t = now();
    const attr: Attr = {
      ino: NEW_INO_BASE + key,
      size: 0,
      blocks: 0,
      atime: t,
      mtime: t,
      ctime: t,
      mode: (TYPE_BITS[type] ?? TYPE_BITS.file).ifmt | (mode & 0o7777),
      nlink: type === 'dir' ? 2 : 1,
      uid,
      gid,
      rdev: 0,
      blksize: 4096,
    };
    const o: ONode = { key, type, attr, lowerLinks: [], links: [], changed: {} };
    this.all.set(key, o);
    return o;
  }

  async root(): Promise<MountNode> {
    if (!this.rootNode) this.rootNode = this.fromLower(await this.lower.root());
    return this.rootNode;
  }

  /** A directory's entries, listed from the version on first use. */
  private async kids(dir: ONode): Promise<Map<string, ONode>> {
    if (dir.type !== 'dir') throw Errno.ENOTDIR;
    if (dir.kids) return dir.kids;
    const kids = new Map<string, ONode>();
    if (dir.lower) {
      const list = await this.lower.list(dir.lower);
      for (let i = 0; i < list.length; i += 512) {
        const part = list.slice(i, i + 512);
        const nodes = await this.lower.nodes(dir.lower, part);
        for (let j = 0; j < part.length; j++) {
          const n = nodes[j];
          if (!n) continue;
          // a directory already met elsewhere is a cycle of a corrupt image: left out
          if (n.type === 'dir' && this.byLower.has(n.key)) continue;
          const o = this.fromLower(n);
          const l: Link = [dir.key, part[j].name];
          o.lowerLinks.push(l);
          o.links.push([...l]);
          kids.set(part[j].name, o);
        }
      }
    }
    if (!dir.kids) dir.kids = kids; // a concurrent listing may have won
    return dir.kids;
  }

  private node(n: MountNode): ONode {
    const o = this.all.get(n.key);
    if (!o || o !== n) throw Errno.ENOENT;
    return o;
  }

  async lookup(dir: MountNode, name: string): Promise<MountNode | undefined> {
    return (await this.kids(this.node(dir))).get(name);
  }

  async list(dir: MountNode): Promise<MountChild[]> {
    return [...(await this.kids(this.node(dir))).entries()].map(([name, o]) => ({ name, key: o.key, type: o.type }));
  }

  async nodes(_dir: MountNode, children: readonly MountChild[]): Promise<MountNode[]> {
    return children.map((c) => this.all.get(c.key) as ONode);
  }

  direct(node: MountNode): boolean {
    return this.node(node).data !== undefined;
  }

  async read(node: MountNode, offset: number, length: number): Promise<Uint8Array> {
    const o = this.node(node);
    if (o.data === undefined) {
      if (!o.lower) return new Uint8Array(0);
      return this.lower.read(o.lower, offset, length);
    }
    const n = Math.max(0, Math.min(length, o.attr.size - offset));
    const out = Buffer.alloc(n);
    if (n === 0) return out;
    const fd = openSync(o.data, 'r');
    try {
      let got = 0;
      while (got < n) {
        const r = readSync(fd, out, got, n - got, offset + got);
        if (r === 0) break; // past the end of a sparse tail: zeros
        got += r;
      }
    } finally {
      closeSync(fd);
    }
    return out;
  }

  async readlink(node: MountNode): Promise<Uint8Array> {
    const o = this.node(node);
    if (o.target) return o.target;
    if (o.lower) return this.lower.readlink(o.lower);
    return new Uint8Array(0);
  }

  async xattrs(node: MountNode): Promise<Map<string, Uint8Array>> {
    const o = this.node(node);
    if (o.xattrs) return o.xattrs;
    if (o.lower) return this.lower.xattrs(o.lower);
    return new Map();
  }

  async statfs(): Promise<StatfsInfo> {
    const s = await this.lower.statfs();
    if (Number.isFinite(this.maxBytes)) {
      const free = Math.max(0, this.maxBytes - this.used) / s.bsize;
      return { ...s, bfree: free, bavail: free };
    }
    return s;
  }

  async close(): Promise<void> {
    try {
      this.save();
    } finally {
      await this.lower.close();
    }
  }

  opened(node: MountNode): void {
    this.opens.set(node.key, (this.opens.get(node.key) ?? 0) + 1);
  }

  released(node: MountNode): void {
    const n = (this.opens.get(node.key) ?? 1) - 1;
    if (n > 0) this.opens.set(node.key, n);
    else {
      this.opens.delete(node.key);
      const o = this.all.get(node.key);
      if (o) this.dropData(o);
    }
  }

  /** A file with no name left and no open handle: its upper bytes are not needed any more. */
  private dropData(o: ONode): void {
    if (o.links.length > 0 || o.data === undefined || this.opens.has(o.key)) return;
    try {
      unlinkSync(o.data);
    } catch {
      // already gone
    }
    this.used -= o.attr.size;
    o.data = undefined;
    o.attr.size = 0;
  }

  // --- changes ---

  private reserve(grow: number, where: string): void {
    if (grow <= 0) return;
    if (this.used + grow > this.maxBytes) {
      throw Errno.ENOSPC;
    }
    this.used += grow;
    void where;
  }

  /**
   * Give a file its upper copy: the version's bytes up to `keep` (all by default). Requests
   * that come while a copy is under way wait for it (one copy, no write lost under another).
   */
  private async copyUp(o: ONode, keep = Number.POSITIVE_INFINITY): Promise<string> {
    for (let p = this.copying.get(o.key); p; p = this.copying.get(o.key)) await p.catch(() => {});
    if (o.data !== undefined) return o.data;
    const p = this.copyUpNow(o, keep);
    this.copying.set(o.key, p);
    try {
      return await p;
    } finally {
      this.copying.delete(o.key);
    }
  }

  private async copyUpNow(o: ONode, keep: number): Promise<string> {
    if (o.data !== undefined) return o.data;
    if (o.type !== 'file') throw Errno.EINVAL;
    const size = Math.min(o.attr.size, keep);
    this.reserve(size, 'copy-up');
    const file = path.join(this.dataDir, String(o.key));
    const fd = openSync(file, 'w', 0o600);
    try {
      for (let at = 0; at < size; at += COPY_CHUNK) {
        const b = o.lower ? await this.lower.read(o.lower, at, Math.min(COPY_CHUNK, size - at)) : new Uint8Array(0);
        if (b.some((x) => x !== 0)) writeSync(fd, b, 0, b.length, at);
      }
      ftruncateSync(fd, size);
    } catch (e) {
      this.used -= size;
      throw typeof e === 'number' ? e : errnoOf(e);
    } finally {
      closeSync(fd);
    }
    o.data = file;
    o.attr.size = size;
    o.changed.content = true;
    return file;
  }

  private touch(o: ONode, content: boolean): void {
    const t = now();
    o.attr.ctime = t;
    if (content) o.attr.mtime = t;
  }

  private async free(dir: ONode, name: string): Promise<Map<string, ONode>> {
    const kids = await this.kids(dir);
    if (kids.has(name)) throw Errno.EEXIST;
    if (Buffer.byteLength(name) > 255) throw Errno.ENAMETOOLONG;
    return kids;
  }

  private attach(dir: ONode, kids: Map<string, ONode>, name: string, o: ONode): void {
    kids.set(name, o);
    o.links.push([dir.key, name]);
    if (o.type === 'dir') dir.attr.nlink++;
    this.touch(dir, true);
    this.changed();
  }

  async create(dir: MountNode, name: string, mode: number, uid: number, gid: number): Promise<MountNode> {
    const d = this.node(dir);
    const kids = await this.free(d, name);
    const o = this.fresh('file', mode, uid, gid);
    o.data = path.join(this.dataDir, String(o.key));
    try {
      writeFileSync(o.data, '', { mode: 0o600 });
    } catch (e) {
      throw errnoOf(e);
    }
    o.kids = undefined;
    this.attach(d, kids, name, o);
    return o;
  }

  async mkdir(dir: MountNode, name: string, mode: number, uid: number, gid: number): Promise<MountNode> {
    const d = this.node(dir);
    const kids = await this.free(d, name);
    const o = this.fresh('dir', mode, uid, gid);
    o.kids = new Map();
    o.attr.size = 4096;
    this.attach(d, kids, name, o);
    return o;
  }

  async symlink(dir: MountNode, name: string, target: Uint8Array, uid: number, gid: number): Promise<MountNode> {
    const d = this.node(dir);
    const kids = await this.free(d, name);
    const o = this.fresh('symlink', 0o777, uid, gid);
    o.target = Buffer.from(target);
    o.attr.size = target.length;
    this.attach(d, kids, name, o);
    return o;
  }

  async link(node: MountNode, dir: MountNode, name: string): Promise<MountNode> {
    const o = this.node(node);
    if (o.type === 'dir') throw Errno.EPERM;
    const d = this.node(dir);
    const kids = await this.free(d, name);
    o.attr.nlink++;
    this.touch(o, false);
    this.attach(d, kids, name, o);
    return o;
  }

  private detach(dir: ONode, name: string, o: ONode): void {
    dir.kids?.delete(name);
    const i = o.links.findIndex(([p, n]) => p === dir.key && n === name);
    if (i >= 0) o.links.splice(i, 1);
    if (o.type === 'dir') {
      dir.attr.nlink = Math.max(2, dir.attr.nlink - 1);
      o.attr.nlink = 0;
    } else o.attr.nlink = Math.max(0, o.attr.nlink - 1);
    this.dropData(o);
    this.touch(o, false);
    this.touch(dir, true);
    this.changed();
  }

  async unlink(dir: MountNode, name: string): Promise<void> {
    const d = this.node(dir);
    const o = (await this.kids(d)).get(name);
    if (!o) throw Errno.ENOENT;
    if (o.type === 'dir') throw Errno.EISDIR;
    this.detach(d, name, o);
  }

  async rmdir(dir: MountNode, name: string): Promise<void> {
    const d = this.node(dir);
    const o = (await this.kids(d)).get(name);
    if (!o) throw Errno.ENOENT;
    if (o.type !== 'dir') throw Errno.ENOTDIR;
    if ((await this.kids(o)).size > 0) throw Errno.ENOTEMPTY;
    this.detach(d, name, o);
  }

  async rename(dir: MountNode, name: string, to: MountNode, toName: string, flags: number): Promise<MountNode[]> {
    const d = this.node(dir);
    const t = this.node(to);
    const from = await this.kids(d);
    const into = await this.kids(t);
    const src = from.get(name);
    if (!src) throw Errno.ENOENT;
    if (Buffer.byteLength(toName) > 255) throw Errno.ENAMETOOLONG;
    const dst = into.get(toName);
    if (flags & RENAME_EXCHANGE) {
      if (!dst) throw Errno.ENOENT;
      if (dst === src) return [];
      this.move(d, name, t, toName, src, from, into);
      into.set(toName, src);
      from.set(name, dst);
      const i = dst.links.findIndex(([p, n]) => p === t.key && n === toName);
      dst.links[i] = [d.key, name];
      if (src.type === 'dir' && dst.type !== 'dir') {
        t.attr.nlink++;
        d.attr.nlink--;
      } else if (dst.type === 'dir' && src.type !== 'dir') {
        d.attr.nlink++;
        t.attr.nlink--;
      }
      this.touch(dst, false);
      this.changed();
      return [src, dst];
    }
    if (dst) {
      if (flags & RENAME_NOREPLACE) throw Errno.EEXIST;
      if (dst === src) return []; // two names of one file: nothing to do
      if (src.type === 'dir') {
        if (dst.type !== 'dir') throw Errno.ENOTDIR;
        if ((await this.kids(dst)).size > 0) throw Errno.ENOTEMPTY;
      } else if (dst.type === 'dir') throw Errno.EISDIR;
      this.detach(t, toName, dst);
    }
    from.delete(name);
    this.move(d, name, t, toName, src, from, into);
    into.set(toName, src);
    if (src.type === 'dir' && d !== t) {
      d.attr.nlink--;
      t.attr.nlink++;
    }
    this.changed();
    return [src];
  }

  private move(d: ONode, name: string, t: ONode, toName: string, src: ONode, _from: unknown, _into: unknown): void {
    const i = src.links.findIndex(([p, n]) => p === d.key && n === name);
    src.links[i] = [t.key, toName];
    this.touch(src, false);
    this.touch(d, true);
    this.touch(t, true);
  }

  async setattr(node: MountNode, s: SetAttrs): Promise<MountNode> {
    const o = this.node(node);
    if (s.size !== undefined) {
      if (o.type === 'dir') throw Errno.EISDIR;
      if (o.type !== 'file') throw Errno.EINVAL;
      const file = await this.copyUp(o, s.size);
      if (s.size !== o.attr.size) {
        this.reserve(s.size - o.attr.size, 'truncate');
        try {
          const fd = openSync(file, 'r+');
          try {
            ftruncateSync(fd, s.size);
          } finally {
            closeSync(fd);
          }
        } catch (e) {
          this.used -= Math.max(0, s.size - o.attr.size);
          throw errnoOf(e);
        }
        if (s.size < o.attr.size) this.used -= o.attr.size - s.size;
        o.attr.size = s.size;
      }
      o.changed.content = true;
      this.touch(o, true);
    }
    if (s.mode !== undefined) {
      o.attr.mode = (o.attr.mode & ~0o7777) | (s.mode & 0o7777);
      o.changed.mode = true;
    }
    if (s.uid !== undefined && s.uid !== o.attr.uid) {
      o.attr.uid = s.uid;
      o.changed.uid = true;
    }
    if (s.gid !== undefined && s.gid !== o.attr.gid) {
      o.attr.gid = s.gid;
      o.changed.gid = true;
    }
    if (s.atime || s.mtime) {
      if (s.atime) o.attr.atime = s.atime;
      if (s.mtime) o.attr.mtime = s.mtime;
      o.changed.times = true;
    }
    o.attr.ctime = now();
    o.attr.blocks = Math.ceil(o.attr.size / 512);
    this.changed();
    return o;
  }

  async write(node: MountNode, offset: number, data: Uint8Array): Promise<number> {
    const o = this.node(node);
    const file = await this.copyUp(o);
    const end = offset + data.length;
    const grow = end - o.attr.size;
    this.reserve(grow, 'write');
    try {
      const fd = openSync(file, 'r+');
      try {
        let done = 0;
        while (done < data.length) done += writeSync(fd, data, done, data.length - done, offset + done);
      } finally {
        closeSync(fd);
      }
    } catch (e) {
      if (grow > 0) this.used -= grow;
      throw errnoOf(e);
    }
    if (end > o.attr.size) o.attr.size = end;
    o.attr.blocks = Math.ceil(o.attr.size / 512);
    o.changed.content = true;
    this.touch(o, true);
    this.changed();
    return data.length;
  }

  private async ownXattrs(o: ONode): Promise<Map<string, Uint8Array>> {
    if (!o.xattrs) o.xattrs = new Map(o.lower ? await this.lower.xattrs(o.lower) : []);
    if (!o.changedXattrs) o.changedXattrs = new Set();
    return o.xattrs;
  }

  async setxattr(node: MountNode, name: string, value: Uint8Array, flags: number): Promise<void> {
    const o = this.node(node);
    const x = await this.ownXattrs(o);
    if (flags & XATTR_CREATE && x.has(name)) throw Errno.EEXIST;
    if (flags & XATTR_REPLACE && !x.has(name)) throw Errno.ENODATA;
    x.set(name, Buffer.from(value));
    o.changedXattrs?.add(name);
    this.touch(o, false);
    this.changed();
  }

  async removexattr(node: MountNode, name: string): Promise<void> {
    const o = this.node(node);
    const x = await this.ownXattrs(o);
    if (!x.has(name)) throw Errno.ENODATA;
    x.delete(name);
    o.changedXattrs?.add(name);
    this.touch(o, false);
    this.changed();
  }

  // --- the state file ---

  /** The upper layer's state: every changed node, and the directories that lead to them. */
  snapshot(): UpperState {
    const keep = new Set<ONode>();
    const need = (o: ONode | undefined) => {
      if (!o || keep.has(o)) return;
      keep.add(o);
      for (const [p] of [...o.lowerLinks, ...o.links]) need(this.all.get(p));
    };
    if (this.rootNode) need(this.rootNode);
    for (const o of this.all.values()) {
      const moved =
        o.links.length !== o.lowerLinks.length ||
        o.links.some(([p, n]) => !o.lowerLinks.some(([q, m]) => p === q && n === m));
      if (
        !o.lower ||
        moved ||
        o.changed.content ||
        o.changed.mode ||
        o.changed.uid ||
        o.changed.gid ||
        o.changed.times ||
        o.changedXattrs?.size
      )
        need(o);
    }
    const ts = (t: { sec: number; nsec: number }) => t.sec + t.nsec / 1e9;
    const nodes: UpperNode[] = [];
    for (const o of keep) {
      const u: UpperNode = {
        id: o.key,
        type: o.type,
        lower: o.lower !== undefined,
        lowerLinks: o.lowerLinks.map((l) => [...l] as Link),
        links: o.links.map((l) => [...l] as Link),
      };
      const isNew = !o.lower;
      if (o.data !== undefined && (isNew || o.changed.content)) {
        u.content = path.relative(this.upperDir, o.data);
        u.size = o.attr.size;
      }
      if (o.target) u.target = Buffer.from(o.target).toString('utf8');
      if (isNew || o.changed.content || o.changed.mode) u.mode = o.attr.mode & 0o7777;
      if (isNew || o.changed.content || o.changed.uid) u.uid = o.attr.uid;
      if (isNew || o.changed.content || o.changed.gid) u.gid = o.attr.gid;
      if ((o.type !== 'dir' && (isNew || o.changed.content)) || o.changed.times) {
        u.mtime = ts(o.attr.mtime);
        u.atime = ts(o.attr.atime);
      }
      const names = isNew ? [...(o.xattrs?.keys() ?? [])] : [...(o.changedXattrs ?? [])];
      if (names.length > 0) {
        u.xattrs = {};
        for (const n of names.sort()) {
          const v = o.xattrs?.get(n);
          u.xattrs[n] = v ? Buffer.from(v).toString('base64') : null;
        }
      }
      nodes.push(u);
    }
    nodes.sort((a, b) => a.id - b.id);
    return { format: UPPER_FORMAT, root: this.rootNode?.key ?? 1, used: this.used, nodes };
  }

  save(nonce?: string): void {
    const state = this.snapshot();
    if (nonce !== undefined) state.nonce = nonce;
    const file = path.join(this.upperDir, 'state.json');
    const tmp = `${file}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify(state));
    const fd = openSync(tmp, 'r');
    try {
      fstatSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  }
}

/** A folder that holds no upper layer (for messages). */
export function notUpper(dir: string): StrataError {
  return new StrataError('NOT_FOUND', 'not the mount point or upper folder of a writable mount', { file: dir });
}
