import { closeSync, fstatSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { FileType, Timestamp } from '../../fs/types.js';
import { ROOT_ENTRY } from '../../library/library-verbs.js';
import { compareTreePaths, type FileEntry } from '../../library/manifest.js';
import { StrataError } from '../../util/errors.js';
import type { Attr } from './protocol.js';
import { makeAttr } from './tree.js';

/**
 * A library version's file manifest as an index on disk, built once per mount from the
 * manifest streamed in walk order (one part of 4,096 entries in memory at a time), so that a
 * mount of a version of millions of files serves lookups, listings and reads with nothing
 * per entry in memory (issue 22: the tree of objects it replaced held ~1 KB per entry, over
 * 1 GiB at 1,000,000 files). Three scratch files, unlinked as soon as they are open (a killed
 * mount leaves nothing behind, closing them frees their space):
 *
 * - records: one fixed record of REC bytes per slot: slot 0 the root, slot i+1 the manifest's
 *   entry i. A node's key is its slot (a hard link's: its first entry's), so the node of a key
 *   is one read at key * REC. The record holds the attributes as the kernel is told them, the
 *   parent's slot, the node's key, where its bytes of the heap start and, for a directory,
 *   where its children are.
 * - heap: per entry, its name, link target, xattrs (JSON) and chunk list (33 bytes a chunk).
 * - children: per directory, its children in walk order (names by code unit: what a lookup
 *   searches by halves): a count, the children's offsets, then each child's slot, type and name.
 *
 * Reads go through a few pages kept per file (PagedFile), the kernel's page cache below.
 */

/** Bytes of a record (a divisor of the page size: no record spans two pages). */
const REC = 128;
const R = {
  ino: 0,
  size: 8,
  blocks: 16,
  atime: 24,
  mtime: 32,
  ctime: 40,
  btime: 48,
  nlink: 56,
  atimeNs: 64,
  mtimeNs: 68,
  ctimeNs: 72,
  btimeNs: 76,
  mode: 80,
  uid: 84,
  gid: 88,
  rdev: 92,
  heap: 96,
  kidsAt: 104,
  kids: 112,
  key: 116,
  parent: 120,
  type: 124,
  flags: 125,
} as const;
const HAS_BTIME = 1;
/** A slot whose entry is not in the tree (a duplicate, an orphan, a bad name). */
const ABSENT = 0xff;
const NO_PARENT = 0xffffffff;
/** Bytes of a chunk in the heap: 0 a digest (32 bytes follow), 1 a hole (zeros), 2 not a digest. */
const CHUNK = 33;
/** Heap header: name, target and xattr lengths, chunk count (uint32 each). */
const HEAP_HEAD = 16;
/** A child in a children block, before its name: slot, type, name length. */
const KID_HEAD = 9;

export const TYPE_CODES: readonly FileType[] = ['file', 'dir', 'symlink', 'char', 'block', 'fifo', 'socket', 'unknown'];
const TYPE_CODE = new Map<string, number>(TYPE_CODES.map((t, i) => [t, i]));
const UNKNOWN = TYPE_CODES.indexOf('unknown');
const DIR = TYPE_CODE.get('dir') as number;

/** `2024-01-02T03:04:05.123456789Z` (as isoTime writes it) as seconds and nanoseconds. */
export function parseIsoTime(s: string | null | undefined): Timestamp | undefined {
  if (!s) return undefined;
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/.exec(s);
  if (!m) return undefined;
  const ms = Date.parse(`${m[1]}Z`);
  if (Number.isNaN(ms)) return undefined;
  return { sec: Math.floor(ms / 1000), nsec: m[2] ? Number(m[2].padEnd(9, '0')) : 0 };
}

/** The attributes a manifest entry is served with (the root's, without an entry: 0755, root's, the epoch). */
function entryAttr(e: FileEntry, type: FileType): Attr {
  return makeAttr({
    ino: e.ino,
    type,
    mode: e.mode,
    uid: e.uid,
    gid: e.gid,
    size: e.size,
    nlink: e.nlink,
    atime: parseIsoTime(e.atime),
    mtime: parseIsoTime(e.mtime),
    ctime: parseIsoTime(e.ctime),
    crtime: parseIsoTime(e.crtime),
    rdev: e.rdev,
  });
}

function readFully(fd: number, buf: Uint8Array, length: number, position: number, what: string): void {
  let n = 0;
  while (n < length) {
    const r = readSync(fd, buf, n, length - n, position + n);
    if (r === 0) throw new StrataError('IO', `mount index: short read of the ${what} file at ${position + n}`);
    n += r;
  }
}

function writeFully(fd: number, buf: Uint8Array, position: number): void {
  let n = 0;
  while (n < buf.length) n += writeSync(fd, buf, n, buf.length - n, position + n);
}

/** A scratch file written by appending through a buffer; bytes already written can be patched. */
class AppendFile {
  private buf = Buffer.allocUnsafe(1 << 20);
  private used = 0;
  private flushed = 0;

  constructor(readonly fd: number) {}

  get size(): number {
    return this.flushed + this.used;
  }

  /** Room for `n` more bytes; returns where in `buf` they go. */
  reserve(n: number): { buf: Buffer; at: number } {
    if (this.used + n > this.buf.length) {
      this.flush();
      if (n > this.buf.length) this.buf = Buffer.allocUnsafe(n);
    }
    const at = this.used;
    this.used += n;
    return { buf: this.buf, at };
  }

  append(b: Uint8Array): void {
    const r = this.reserve(b.length);
    r.buf.set(b, r.at);
  }

  /** Overwrite bytes at file position `pos` (written already, or still in the buffer). */
  patch(pos: number, b: Uint8Array): void {
    const split = Math.min(b.length, Math.max(0, this.flushed - pos));
    if (split > 0) writeFully(this.fd, b.subarray(0, split), pos);
    if (split < b.length) this.buf.set(b.subarray(split), pos + split - this.flushed);
  }

  flush(): void {
    if (this.used === 0) return;
    writeFully(this.fd, this.buf.subarray(0, this.used), this.flushed);
    this.flushed += this.used;
    this.used = 0;
  }
}

/** The children of an open directory, gathered until its subtree ends. */
class Kids {
  data = Buffer.allocUnsafe(256);
  used = 0;
  offsets = new Uint32Array(16);
  count = 0;

  add(slot: number, type: number, name: string): void {
    const len = Buffer.byteLength(name, 'utf8');
    if (this.used + KID_HEAD + len > this.data.length) {
      const b = Buffer.allocUnsafe(Math.max(2 * this.data.length, this.used + KID_HEAD + len));
      this.data.copy(b, 0, 0, this.used);
      this.data = b;
    }
    if (this.count === this.offsets.length) {
      const o = new Uint32Array(2 * this.offsets.length);
      o.set(this.offsets);
      this.offsets = o;
    }
    this.offsets[this.count++] = this.used;
    const d = this.data;
    d.writeUInt32LE(slot, this.used);
    d[this.used + 4] = type;
    d.writeUInt32LE(len, this.used + 5);
    d.write(name, this.used + KID_HEAD, len, 'utf8');
    this.used += KID_HEAD + len;
  }
}

/** Thrown by the builder when entries are not in strict walk order (the caller sorts them). */
class NotInOrder extends Error {}

/** What the index knows as a whole. */
export interface IndexFacts {
  /** Nodes (hard links once, the root included) and their 4 KiB blocks, for statfs. */
  nodes: number;
  blocks: number;
  slots: number;
}

/** The three scratch files, open and already unlinked. */
function openScratch(): number[] {
  const dir = mkdtempSync(path.join(tmpdir(), 'strata-mount-'));
  const fds: number[] = [];
  try {
    for (const name of ['records', 'heap', 'children']) fds.push(openSync(path.join(dir, name), 'w+', 0o600));
    return fds;
  } catch (e) {
    for (const fd of fds) closeSync(fd);
    throw e;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const HEX = /^[0-9a-f]{64}$/;

/**
 * Builds the index from entries in walk order (compareTreePaths): the open directories are a
 * stack (a path's parent, when the tree has it, is on it), each with its children gathered
 * until its subtree ends. The tree it describes is the one ManifestTree served before from
 * memory: an entry whose parent directory is not in the tree, a repeated path, a name that
 * is empty, '.' or '..' are left out; hard links (same inode and type, not directories) are
 * one node, the first entry's.
 */
class Builder {
  private readonly recs: AppendFile;
  private readonly heap: AppendFile;
  private readonly kids: AppendFile;
  private readonly rec = Buffer.alloc(REC);
  private readonly u32 = new Uint32Array(1);
  private readonly stack: Array<{ slot: number; path: string; prefix: string; kids: Kids }> = [];
  private slot = 1;
  private prev: string | undefined;
  private nodes = 1;
  private blocks = 0;
  /** Entries that may be hard links: inode, type, slot, size in blocks. */
  private links = { ino: new Float64Array(1024), slot: new Uint32Array(1024), type: new Uint8Array(1024), n: 0 };
  private linkBlocks = new Float64Array(1024);

  constructor(
    fds: number[],
    private readonly where: string,
  ) {
    this.recs = new AppendFile(fds[0]);
    this.heap = new AppendFile(fds[1]);
    this.kids = new AppendFile(fds[2]);
    // slot 0: the root, as shown when the manifest keeps no entry for it
    const root: FileEntry = { ...ROOT_ENTRY, nlink: 2 };
    this.writeRecord(root, DIR, 0, NO_PARENT);
    this.stack.push({ slot: 0, path: '/', prefix: '/', kids: new Kids() });
  }

  /** Record and heap bytes of `e` at `slot` (appended when it is the next slot, else patched over). */
  private writeRecord(e: FileEntry, type: number, slot: number, parent: number, name = ''): Attr {
    const attr = entryAttr(e, TYPE_CODES[type]);
    const r = this.rec;
    r.writeDoubleLE(attr.ino, R.ino);
    r.writeDoubleLE(attr.size, R.size);
    r.writeDoubleLE(attr.blocks, R.blocks);
    r.writeDoubleLE(attr.atime.sec, R.atime);
    r.writeDoubleLE(attr.mtime.sec, R.mtime);
    r.writeDoubleLE(attr.ctime.sec, R.ctime);
    r.writeDoubleLE(attr.btime?.sec ?? 0, R.btime);
    r.writeDoubleLE(attr.nlink, R.nlink);
    r.writeUInt32LE(attr.atime.nsec, R.atimeNs);
    r.writeUInt32LE(attr.mtime.nsec, R.mtimeNs);
    r.writeUInt32LE(attr.ctime.nsec, R.ctimeNs);
    r.writeUInt32LE(attr.btime?.nsec ?? 0, R.btimeNs);
    const u = this.u32;
    for (const [f, v] of [
      [R.mode, attr.mode],
      [R.uid, attr.uid],
      [R.gid, attr.gid],
      [R.rdev, attr.rdev],
    ] as const) {
      u[0] = v; // as the reply's 32-bit field takes it
      r.writeUInt32LE(u[0], f);
    }
    r.writeDoubleLE(this.writeHeap(e, type, name), R.heap);
    r.writeDoubleLE(0, R.kidsAt);
    r.writeUInt32LE(0, R.kids);
    r.writeUInt32LE(slot, R.key);
    r.writeUInt32LE(parent, R.parent);
    r[R.type] = type;
    r[R.flags] = attr.btime ? HAS_BTIME : 0;
    r[126] = 0;
    r[127] = 0;
    if (slot * REC === this.recs.size) this.recs.append(r);
    else this.recs.patch(slot * REC, r);
    return attr;
  }

  private writeHeap(e: FileEntry, type: number, name: string): number {
    const at = this.heap.size;
    const target = type === TYPE_CODE.get('symlink') || typeof e.target === 'string' ? String(e.target ?? '') : '';
    const xattrs = e.xattrs && typeof e.xattrs === 'object' ? JSON.stringify(e.xattrs) : '';
    const chunks = type === TYPE_CODE.get('file') && Array.isArray(e.chunks) ? e.chunks : [];
    const nameLen = Buffer.byteLength(name, 'utf8');
    const targetLen = Buffer.byteLength(target, 'utf8');
    const xattrLen = Buffer.byteLength(xattrs, 'utf8');
    const { buf, at: o } = this.heap.reserve(HEAP_HEAD + nameLen + targetLen + xattrLen + CHUNK * chunks.length);
    buf.writeUInt32LE(nameLen, o);
    buf.writeUInt32LE(targetLen, o + 4);
    buf.writeUInt32LE(xattrLen, o + 8);
    buf.writeUInt32LE(chunks.length, o + 12);
    let p = o + HEAP_HEAD;
    p += buf.write(name, p, nameLen, 'utf8');
    p += buf.write(target, p, targetLen, 'utf8');
    p += buf.write(xattrs, p, xattrLen, 'utf8');
    for (const c of chunks) {
      if (c === null) buf[p] = 1;
      else if (typeof c === 'string' && HEX.test(c)) {
        buf[p] = 0;
        buf.write(c, p + 1, 32, 'hex');
      } else buf[p] = 2;
      p += CHUNK;
    }
    return at;
  }

  /** The directory on top of the stack is complete: its children go to their file. */
  private pop(): void {
    const d = this.stack.pop();
    if (!d) return;
    const k = d.kids;
    const at = this.kids.size;
    const head = Buffer.allocUnsafe(4 + 4 * k.count);
    head.writeUInt32LE(k.count, 0);
    Buffer.from(k.offsets.buffer, 0, 4 * k.count).copy(head, 4);
    this.kids.append(head);
    this.kids.append(k.data.subarray(0, k.used));
    const patch = Buffer.allocUnsafe(12);
    patch.writeDoubleLE(at, 0);
    patch.writeUInt32LE(k.count, 8);
    this.recs.patch(d.slot * REC + R.kidsAt, patch);
  }

  add(e: FileEntry): void {
    const slot = this.slot++;
    if (slot >= NO_PARENT) {
      throw new StrataError('LIMIT', `file manifest holds more than ${NO_PARENT - 1} entries`, {
        file: this.where,
        structure: 'file manifest',
      });
    }
    const p = e?.path;
    if (typeof p !== 'string') {
      throw new StrataError('CORRUPT', `entry ${slot - 1} has no path`, {
        file: this.where,
        structure: 'file manifest',
      });
    }
    const prev = this.prev;
    this.prev = p;
    const c = prev === undefined ? -1 : compareTreePaths(prev, p);
    if (c > 0) throw new NotInOrder();
    if (c === 0 || !this.place(e, slot)) this.absent(slot);
  }

  /** Put the entry at `slot` into the tree; false when it is left out (the root's own entry included: slot 0 takes it). */
  private place(e: FileEntry, slot: number): boolean {
    const p = e.path;
    const type = TYPE_CODE.get(e.type) ?? UNKNOWN;
    if (!p.startsWith('/')) return false;
    if (p === '/') {
      // the root's own entry (first in walk order) replaces slot 0's stand-in
      if (slot === 1 && type === DIR) {
        const attr = this.writeRecord(e, DIR, 0, NO_PARENT);
        this.blocks = Math.ceil(attr.size / 4096);
      }
      return false;
    }
    const cut = p.lastIndexOf('/');
    const leaf = p.slice(cut + 1);
    if (leaf === '' || leaf === '.' || leaf === '..') return false;
    const parent = cut === 0 ? '/' : p.slice(0, cut);
    let top = this.stack[this.stack.length - 1];
    while (this.stack.length > 1 && parent !== top.path && !parent.startsWith(top.prefix)) {
      this.pop();
      top = this.stack[this.stack.length - 1];
    }
    if (top.path !== parent) return false;
    const attr = this.writeRecord(e, type, slot, top.slot, leaf);
    top.kids.add(slot, type, leaf);
    this.nodes++;
    const blocks = Math.ceil(attr.size / 4096);
    this.blocks += blocks;
    if (type === DIR) this.stack.push({ slot, path: p, prefix: `${p}/`, kids: new Kids() });
    else if (e.nlink > 1 && Number.isFinite(e.ino)) this.maybeLink(e.ino, type, slot, blocks);
    return true;
  }

  private absent(slot: number): void {
    const r = this.rec;
    r.fill(0);
    r[R.type] = ABSENT;
    r.writeUInt32LE(slot, R.key);
    r.writeUInt32LE(NO_PARENT, R.parent);
    this.recs.append(r);
  }

  private maybeLink(ino: number, type: number, slot: number, blocks: number): void {
    const l = this.links;
    if (l.n === l.ino.length) {
      const n = 2 * l.n;
      const grow = <T extends Float64Array | Uint32Array | Uint8Array>(a: T): T => {
        const b = new (a.constructor as new (n: number) => T)(n);
        b.set(a);
        return b;
      };
      l.ino = grow(l.ino);
      l.slot = grow(l.slot);
      l.type = grow(l.type);
      this.linkBlocks = grow(this.linkBlocks);
    }
    l.ino[l.n] = ino;
    l.slot[l.n] = slot;
    l.type[l.n] = type;
    this.linkBlocks[l.n] = blocks;
    l.n++;
  }

  /** Every entry added: the open directories closed, hard links pointed at their first entry. */
  finish(): IndexFacts {
    while (this.stack.length > 0) this.pop();
    const l = this.links;
    const order = new Uint32Array(l.n);
    for (let i = 0; i < l.n; i++) order[i] = i;
    order.sort((a, b) => l.ino[a] - l.ino[b] || l.type[a] - l.type[b] || l.slot[a] - l.slot[b]);
    const key = Buffer.allocUnsafe(4);
    let first = 0;
    for (let i = 0; i < l.n; i++) {
      const a = order[i];
      const b = i > 0 ? order[i - 1] : -1;
      if (b < 0 || l.ino[a] !== l.ino[b] || l.type[a] !== l.type[b]) {
        first = a; // a group's first entry (by slot): its key is itself
        continue;
      }
      key.writeUInt32LE(l.slot[first], 0);
      this.recs.patch(l.slot[a] * REC + R.key, key);
      this.nodes--;
      this.blocks -= this.linkBlocks[a];
    }
    this.recs.flush();
    this.heap.flush();
    this.kids.flush();
    return { nodes: this.nodes, blocks: this.blocks, slots: this.slot };
  }
}

/** A read-only file read in pages, the most recently used few kept. */
class PagedFile {
  private readonly pages = new Map<number, Buffer>();
  private static readonly BITS = 16;
  private static readonly SIZE = 1 << PagedFile.BITS;

  constructor(
    readonly fd: number,
    private readonly length: number,
    private readonly what: string,
    private readonly keep = 16,
  ) {}

  private page(n: number): Buffer {
    const hit = this.pages.get(n);
    if (hit) {
      this.pages.delete(n);
      this.pages.set(n, hit);
      return hit;
    }
    const from = n * PagedFile.SIZE;
    const len = Math.min(PagedFile.SIZE, this.length - from);
    const b = Buffer.allocUnsafe(len);
    readFully(this.fd, b, len, from, this.what);
    this.pages.set(n, b);
    if (this.pages.size > this.keep) this.pages.delete(this.pages.keys().next().value as number);
    return b;
  }

  /** Bytes [pos, pos+len): a view of a kept page when they lie in one (valid until the next read), else a copy. */
  read(pos: number, len: number): Buffer {
    if (pos < 0 || len < 0 || pos + len > this.length) {
      throw new StrataError('CORRUPT', `mount index: read of ${len} bytes at ${pos} past the ${this.what} file`);
    }
    const n = Math.floor(pos / PagedFile.SIZE);
    const off = pos - n * PagedFile.SIZE;
    if (off + len <= PagedFile.SIZE) return this.page(n).subarray(off, off + len);
    const out = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const p = pos + done;
      const pn = Math.floor(p / PagedFile.SIZE);
      const po = p - pn * PagedFile.SIZE;
      const take = Math.min(len - done, PagedFile.SIZE - po);
      this.page(pn).copy(out, done, po, po + take);
      done += take;
    }
    return out;
  }

  clear(): void {
    this.pages.clear();
  }
}

/** One node of the index: its record's facts. */
export interface IndexRecord {
  key: number;
  type: FileType;
  attr: Attr;
  parent: number;
  heap: number;
  kidsAt: number;
  kids: number;
}

/** A child of a directory as its children block holds it. */
export interface IndexChild {
  slot: number;
  type: number;
  /** The name's bytes (a view: valid until the next read of the index). */
  name: Buffer;
}

/** Where an entry's pieces are in the heap. */
export interface HeapHead {
  at: number;
  nameLen: number;
  targetLen: number;
  xattrLen: number;
  chunks: number;
  /** Where chunk 0 is in the heap file. */
  chunksAt: number;
}

/** An index on disk, open for reading. */
export class ManifestIndex {
  private readonly recs: PagedFile;
  private readonly heap: PagedFile;
  private readonly kidsFile: PagedFile;
  private readonly fds: number[];

  private constructor(
    fds: number[],
    sizes: number[],
    readonly facts: IndexFacts,
  ) {
    this.fds = fds;
    this.recs = new PagedFile(fds[0], sizes[0], 'records');
    this.heap = new PagedFile(fds[1], sizes[1], 'heap');
    this.kidsFile = new PagedFile(fds[2], sizes[2], 'children');
  }

  /**
   * The index of the entries `source()` yields (a manifest's, streamed). Entries not in walk
   * order (a manifest written by other means) are read again, all of them, and sorted first.
   */
  static async build(
    source: () => AsyncIterable<FileEntry> | Iterable<FileEntry>,
    where: string,
  ): Promise<ManifestIndex> {
    let fds = openScratch();
    try {
      let facts: IndexFacts;
      try {
        const b = new Builder(fds, where);
        for await (const e of source()) b.add(e);
        facts = b.finish();
      } catch (e) {
        if (!(e instanceof NotInOrder)) throw e;
        for (const fd of fds) closeSync(fd);
        fds = openScratch();
        const all: FileEntry[] = [];
        for await (const x of source()) all.push(x);
        const order = all.map((_x, i) => i);
        order.sort((a, b) => compareTreePaths(all[a].path, all[b].path) || a - b);
        const b = new Builder(fds, where);
        for (const i of order) b.add(all[i]);
        facts = b.finish();
      }
      return new ManifestIndex(
        fds,
        fds.map((fd) => fstatSync(fd).size),
        facts,
      );
    } catch (e) {
      for (const fd of fds) closeSync(fd);
      throw e;
    }
  }

  /** The record of `slot` (a node's key, or a child's slot); undefined for a slot left out of the tree. */
  record(slot: number): IndexRecord | undefined {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.facts.slots) return undefined;
    const r = this.recs.read(slot * REC, REC);
    const t = r[R.type];
    if (t === ABSENT) return undefined;
    const type = TYPE_CODES[t] ?? 'unknown';
    const attr: Attr = {
      ino: r.readDoubleLE(R.ino),
      size: r.readDoubleLE(R.size),
      blocks: r.readDoubleLE(R.blocks),
      atime: { sec: r.readDoubleLE(R.atime), nsec: r.readUInt32LE(R.atimeNs) },
      mtime: { sec: r.readDoubleLE(R.mtime), nsec: r.readUInt32LE(R.mtimeNs) },
      ctime: { sec: r.readDoubleLE(R.ctime), nsec: r.readUInt32LE(R.ctimeNs) },
      mode: r.readUInt32LE(R.mode),
      nlink: r.readDoubleLE(R.nlink),
      uid: r.readUInt32LE(R.uid),
      gid: r.readUInt32LE(R.gid),
      rdev: r.readUInt32LE(R.rdev),
      blksize: 4096,
    };
    if (r[R.flags] & HAS_BTIME) attr.btime = { sec: r.readDoubleLE(R.btime), nsec: r.readUInt32LE(R.btimeNs) };
    return {
      key: r.readUInt32LE(R.key),
      type,
      attr,
      parent: r.readUInt32LE(R.parent),
      heap: r.readDoubleLE(R.heap),
      kidsAt: r.readDoubleLE(R.kidsAt),
      kids: r.readUInt32LE(R.kids),
    };
  }

  /** The key of the node at `slot` (its own slot, or a hard link's first). */
  keyOf(slot: number): number {
    return this.recs.read(slot * REC + R.key, 4).readUInt32LE(0);
  }

  /** Child `i` of a directory (its record's kidsAt, kids). */
  child(kidsAt: number, kids: number, i: number): IndexChild {
    const off = this.kidsFile.read(kidsAt + 4 + 4 * i, 4).readUInt32LE(0);
    const at = kidsAt + 4 + 4 * kids + off;
    const h = this.kidsFile.read(at, KID_HEAD);
    const slot = h.readUInt32LE(0);
    const type = h[4];
    const len = h.readUInt32LE(5);
    return { slot, type, name: this.kidsFile.read(at + KID_HEAD, len) };
  }

  /** The child of a directory called `name` (its slot), found by halves; undefined if none. */
  find(kidsAt: number, kids: number, name: string): number | undefined {
    let lo = 0;
    let hi = kids - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.child(kidsAt, kids, mid);
      const n = c.name.toString('utf8');
      if (n === name) return c.slot;
      if (n < name) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** Where an entry's name, target, xattrs and chunks are (its record's heap). */
  heapHead(at: number): HeapHead {
    const h = this.heap.read(at, HEAP_HEAD);
    const nameLen = h.readUInt32LE(0);
    const targetLen = h.readUInt32LE(4);
    const xattrLen = h.readUInt32LE(8);
    const chunks = h.readUInt32LE(12);
    return { at, nameLen, targetLen, xattrLen, chunks, chunksAt: at + HEAP_HEAD + nameLen + targetLen + xattrLen };
  }

  name(h: HeapHead): string {
    return this.heap.read(h.at + HEAP_HEAD, h.nameLen).toString('utf8');
  }

  /** A symlink's target (a copy). */
  target(h: HeapHead): Buffer {
    return Buffer.from(this.heap.read(h.at + HEAP_HEAD + h.nameLen, h.targetLen));
  }

  /** The xattrs as the manifest has them (JSON of name -> base64), '' when none. */
  xattrs(h: HeapHead): string {
    return this.heap.read(h.at + HEAP_HEAD + h.nameLen + h.targetLen, h.xattrLen).toString('utf8');
  }

  /** Chunk `i` of a file: its digest, null for a hole, or false when the manifest's is not a digest. */
  chunk(h: HeapHead, i: number): string | null | false {
    const c = this.heap.read(h.chunksAt + CHUNK * i, CHUNK);
    if (c[0] === 1) return null;
    if (c[0] !== 0) return false;
    return c.toString('hex', 1, CHUNK);
  }

  /** The path of a slot, for messages: its parents' names joined. */
  pathOf(slot: number): string {
    const names: string[] = [];
    let s = slot;
    for (let depth = 0; s !== 0 && depth < 4096; depth++) {
      const r = this.record(s);
      if (!r) break;
      names.push(this.name(this.heapHead(r.heap)));
      s = r.parent;
    }
    return `/${names.reverse().join('/')}`;
  }

  close(): void {
    this.recs.clear();
    this.heap.clear();
    this.kidsFile.clear();
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}
