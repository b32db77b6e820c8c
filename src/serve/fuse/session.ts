import { spawn } from 'node:child_process';
import { closeSync, openSync, writeSync, writevSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { type ErrorCode, isStrataError, StrataError } from '../../util/errors.js';
import { memoryBudget, shareOf } from '../../util/memory.js';
import { BlockCache, newReadAhead, type ReadAhead } from './cache.js';
import type { PlusReply, PlusRequest } from './ext-plus.js';
import { ListingEndsView, readRequestPastEnds } from './listing-ends.js';
import type { OpenMountOptions } from './mount-options.js';
import { isWritable, type SetAttrs, type WritableTree } from './overlay.js';
import {
  attrOut,
  DIRENT_BASE,
  direntSize,
  ENTRY_OUT,
  Errno,
  entryOut,
  Fattr,
  FOPEN_CACHE_DIR,
  FOPEN_KEEP_CACHE,
  FUSE_KERNEL_MINOR,
  FUSE_ROOT_ID,
  IN_HEADER,
  type InHeader,
  InitFlag,
  initOut,
  Op,
  OUT_HEADER,
  openOut,
  parseInHeader,
  reply,
  statfsOut,
  statxOut,
  TYPE_BITS,
  type Validity,
  WRITE_OPS,
  words,
  writeDirent,
  writeEntry,
  writeOut,
} from './protocol.js';
import type { MountChild, MountNode, MountTree } from './tree.js';

export interface FuseMountOptions {
  /** Block cache bytes (default: the memory budget's share, util/memory.ts SHARES.fuseBlocks). */
  cacheBytes?: number;
  /** Read-ahead window for sequential readers (default 8 MiB, at most a quarter of the block cache). */
  readAhead?: number;
  /** How long the kernel may keep names and attributes (s; default 3600: the tree never changes). */
  ttl?: number;
  /** Called with each problem met while serving (a bad entry, a failed read ...). */
  onWarning?: (message: string) => void;
}

/**
 * A read-only mount of an image file (or URL) that the reader thread opens and serves
 * itself (serve-worker.ts): each request is read, answered and written on that one thread,
 * with no hop to the main thread and back. What openMountTree takes.
 */
export interface ReaderTree {
  image: string;
  options?: OpenMountOptions;
}

/** What serve-worker.ts gets: the served tree, the session's options, and the memory it shares. */
export interface ServeWorkerData {
  fd: number;
  mountpoint: string;
  tree: ReaderTree;
  opts: Omit<FuseMountOptions, 'onWarning'>;
  shared: SharedState;
  memoryBudget: number;
}

/** Memory both threads see: requests answered by opcode, and the listing ends (read-only). */
interface SharedState {
  counts: SharedArrayBuffer;
  ends?: SharedArrayBuffer;
}

/** Opcodes counted (all of ours are below). */
const OPS = 64;

/** One node the kernel knows: its lookup count, and for directories where it was found. */
interface Held {
  /** The node id the kernel knows it by (a number: ids are given from 2 up, far below 2^53). */
  id: number;
  node: MountNode;
  lookups: number;
  /** Directories: the parent node id and name they were first reached by. */
  parent?: number;
  name?: string;
  /** Read-only mounts (no OPEN, so no handle): the file's read-ahead state. */
  ra?: ReadAhead;
  /** Read-only mounts (no OPENDIR, so no handle): the listing being read, from offset 0 on. */
  listing?: DirHandle['entries'];
  /**
   * A directory handed out by a native READDIRPLUS: `node` is its key and type only (stubDir),
   * loaded (materialize) by the first request that needs more than its own READDIRPLUS.
   */
  stub?: true;
}

interface FileHandle {
  held: Held;
  ra: ReadAhead;
}

interface DirHandle {
  held: Held;
  entries: Array<{ name: Buffer; child?: MountChild }>;
}

const MAX_PAGES = 256; // reads of up to 1 MiB
/**
 * Read-only mounts of trees with stable keys (MountTree.nodeByKey): a node's id is its key plus
 * this (above the root's 1 and every id a counter would give), so a native READDIRPLUS can name
 * entries without a node kept for each.
 */
export const STABLE_ID_BASE = 2 ** 32;
/**
 * Read-only mounts of trees with stable keys: how many files (every node but directories) are
 * kept, least recently used dropped. The kernel's lookups of them are not counted: it may hold
 * millions (it forgets only under memory pressure), and any of them is found again by its key.
 */
const RECENT_FILES = 4096;
const MAX_WRITE = 128 << 10;
const BUFFER = (MAX_PAGES + 1) * 4096 + IN_HEADER;
const decoder = new TextDecoder('utf-8', { fatal: true });
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');
const ZERO_TIME = { sec: 0, nsec: 0 };

/**
 * What every stub directory's node carries as attributes (one object for all: a directory held
 * as a stub costs its Held, node and map entries only, ~20,000 of them at 2,000,000 files): never
 * answered (a stub is loaded first), its inode number is its key (inoOf).
 */
const STUB_ATTR: MountNode['attr'] = Object.freeze({
  ino: 0,
  size: 0,
  blocks: 0,
  atime: ZERO_TIME,
  mtime: ZERO_TIME,
  ctime: ZERO_TIME,
  mode: TYPE_BITS.dir.ifmt,
  nlink: 0,
  uid: 0,
  gid: 0,
  rdev: 0,
  blksize: 0,
});

/** A directory known by its key only (a stub Held's node): its attributes are never answered. */
function stubDir(key: number): MountNode {
  return { key, type: 'dir', attr: STUB_ATTR };
}

/** A held node's inode number (a stub's is its key: the native READDIRPLUS names directories by inode). */
function inoOf(h: Held): number {
  return h.stub ? h.node.key : h.node.attr.ino;
}

/** Run a command; resolves with its status and stderr. `fd` is passed to it as descriptor 3. */
function runTool(cmd: string, args: string[], fd?: number): Promise<{ status: number; stderr: string }> {
  return new Promise((resolve) => {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'ignore', 'pipe'];
    if (fd !== undefined) stdio.push(fd);
    const p = spawn(cmd, args, { stdio });
    let stderr = '';
    p.stderr?.on('data', (d) => {
      stderr += d;
    });
    p.on('error', (e) => resolve({ status: 127, stderr: e.message }));
    p.on('close', (status) => resolve({ status: status ?? 1, stderr: stderr.trim() }));
  });
}

/** The FUSE connection number (the minor of the mount's st_dev) from /proc/self/mountinfo. */
async function connectionOf(mountpoint: string): Promise<number | undefined> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const unesc = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o) => String.fromCharCode(Number.parseInt(o, 8)));
  let found: number | undefined;
  for (const line of info.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && unesc(f[4]) === mountpoint && / - fuse(\.\S+)? /.test(line)) {
      found = Number(f[2].split(':')[1]);
    }
  }
  return found;
}

/**
 * A FUSE file server speaking the kernel protocol over /dev/fuse: it mounts `tree` read-only
 * at a folder (as root, `mount -i -t fuse -o fd=N,...`), reads requests on a worker thread,
 * and answers them here (or, given a ReaderTree, opens the image on that thread and answers
 * there: serve-worker.ts). Lookups, attributes, directory listings (plain and plus), reads
 * through a block cache with read-ahead, symlinks, xattrs and statfs; every request that would
 * change the tree gets EROFS, unknown ones ENOSYS.
 *
 * An entry that cannot be served (its inode is unreadable, or it is a directory already
 * reached by another path: a cycle in a corrupt image) answers EIO; the rest keeps serving.
 */
export class FuseSession {
  readonly mountpoint: string;
  private fd = -1;
  private worker?: Worker;
  private readonly byId = new Map<number, Held>();
  private readonly byKey = new Map<number, Held>();
  /** Stable trees: files (not directories) by node id, at most RECENT_FILES, least recently used first. */
  private readonly recent = new Map<number, Held>();
  private nextId = 2;
  private readonly files = new Map<number, FileHandle>();
  private readonly dirs = new Map<number, DirHandle>();
  private nextFh = 1;
  private readonly cache: BlockCache;
  private readonly valid: Validity;
  private readonly warn: (m: string) => void;
  private mounted = false;
  private connection?: number;
  private initDone?: () => void;
  private endedResolve?: (why: string) => void;
  /** Resolves when the kernel ends the connection (unmounted by anyone) with why. */
  readonly ended: Promise<string>;
  /** Requests answered by the server (not the listing ends), by opcode, in shared memory. */
  private readonly opCounts: Int32Array;
  /** The tree takes changes (a `--rw` mount): write requests are served, not EROFS. */
  private readonly rw?: WritableTree;
  /** Read-only mounts: listings' lengths, for the reader thread to answer their end itself. */
  private readonly ends?: ListingEndsView;
  private readonly tree: MountTree;
  /** A tree the reader thread opens and serves (this thread only mounts and unmounts). */
  private readonly served?: ReaderTree;
  private readonly opts: FuseMountOptions;
  /** Node ids are keys plus STABLE_ID_BASE (read-only, a tree with nodeByKey). */
  private readonly stable: boolean;
  /** The out header of a reply written on the serving loop's fast path (serveOn). */
  private readonly head = Buffer.alloc(OUT_HEADER);
  /**
   * The serving loop's (serveOn) reply buffer for reads of more than one block: it answers one
   * request at a time and writes each reply before reading the next, so one buffer serves them
   * all. A new 1 MiB buffer per READ of a large file was garbage until a collection, with the
   * cache's evicted blocks ~40 MiB of the serving thread's buffers during tar at 1,000,000 files.
   */
  private readScratch?: Uint8Array;
  /** The node id whose READDIRPLUS plusReplyNow just declined (the slow path does not ask it again). */
  private nowDeclined = -1;

  /**
   * Serve `tree` (requests read on a worker thread, answered on this one), or the image a
   * ReaderTree names, opened and served on the worker thread itself (read-only).
   */
  constructor(tree: MountTree | ReaderTree, mountpoint: string, opts: FuseMountOptions = {}, shared?: SharedState) {
    this.mountpoint = path.resolve(mountpoint);
    this.opts = opts;
    if ('image' in tree) {
      this.served = tree;
      this.tree = unopened(tree);
    } else this.tree = tree;
    // sized where it serves: on the serving thread of an image mount, from the budget it was given
    this.cache = new BlockCache(this.tree, opts.cacheBytes ?? shareOf('fuseBlocks'), opts.readAhead ?? 8 << 20);
    this.opCounts = new Int32Array(shared?.counts ?? new SharedArrayBuffer(4 * OPS));
    if (isWritable(this.tree)) this.rw = this.tree;
    else this.ends = shared?.ends ? new ListingEndsView(shared.ends) : ListingEndsView.create();
    this.stable = !this.rw && typeof this.tree.nodeByKey === 'function';
    // a writable tree changes under the kernel's caches only through this mount: short-lived anyway
    this.valid = { sec: opts.ttl ?? (this.rw ? 1 : 3600), nsec: 0 };
    this.warn = opts.onWarning ?? (() => {});
    this.ended = new Promise((r) => {
      this.endedResolve = r;
    });
  }

  /** Mount and answer INIT; resolves when the mount is ready for use. */
  async mount(): Promise<void> {
    this.fd = openSync('/dev/fuse', 'r+');
    if (this.served) return this.mountServed(this.served);
    // the reader thread starts (a Node isolate: the longest part of getting ready on a busy
    // machine) while the root is read and mount(8) runs; it reads once told the mount is there
    const worker = new Worker(new URL('./reader-worker.js', import.meta.url), {
      workerData: { fd: this.fd, bufferSize: BUFFER, ends: this.ends?.buffer },
    });
    this.worker = worker;
    worker.on('message', (m: Uint8Array | { end: string }) => {
      if (m instanceof Uint8Array) this.answer(Buffer.from(m.buffer, m.byteOffset, m.byteLength));
      else this.finish(m.end);
    });
    worker.on('error', (e) => this.finish(`reader thread failed: ${e.message}`));
    worker.on('exit', () => this.finish('reader thread ended'));
    const fail = (e: unknown) => this.abandon(worker, e);
    let root: MountNode;
    try {
      root = await this.tree.root();
    } catch (e) {
      return fail(e);
    }
    this.adopt(root);
    await this.mountAndInit(worker, this.tree.name, fail);
  }

  /** Mounting failed: end the thread, close /dev/fuse, throw `e`. */
  private async abandon(worker: Worker, e: unknown): Promise<never> {
    await worker.terminate().catch(() => {});
    this.worker = undefined;
    closeSync(this.fd);
    this.fd = -1;
    throw e;
  }

  /** The root node, the one the kernel knows from the start (node id 1). */
  private adopt(root: MountNode): void {
    const held: Held = { id: FUSE_ROOT_ID, node: root, lookups: 1 };
    this.byId.set(held.id, held);
    this.byKey.set(root.key, held);
  }

  /** mount(8) on our descriptor, then the reader thread reads: resolves once INIT is answered. */
  private async mountAndInit(worker: Worker, name: string, fail: (e: unknown) => Promise<never>): Promise<void> {
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const source = `strata:${name}`.replace(/[\s,]/g, '_');
    const optsStr = `fd=3,rootmode=40000,user_id=${uid},group_id=${gid},allow_other,default_permissions,${this.rw ? 'rw' : 'ro'},subtype=strata`;
    const r = await runTool('mount', ['-i', '-t', 'fuse', '-o', optsStr, source, this.mountpoint], this.fd);
    if (r.status !== 0) {
      return fail(
        new StrataError('IO', `cannot mount at ${this.mountpoint}: ${r.stderr || `mount exited ${r.status}`}`),
      );
    }
    this.mounted = true;
    const ready = new Promise<void>((resolve) => {
      this.initDone = resolve;
    });
    worker.postMessage('read');
    await Promise.race([ready, this.ended.then((why) => Promise.reject(new StrataError('IO', why)))]);
    // only unmount needs it (to abort a connection nobody answers): not waited for here
    connectionOf(this.mountpoint).then((c) => {
      this.connection = c;
    });
  }

  /**
   * A ReaderTree: the serving thread opens the image (its errors and warnings come back here
   * before anything is mounted), then mount(8), then it reads, answers and writes on its own.
   */
  private async mountServed(spec: ReaderTree): Promise<void> {
    const data: ServeWorkerData = {
      fd: this.fd,
      mountpoint: this.mountpoint,
      tree: spec,
      opts: { cacheBytes: this.opts.cacheBytes, readAhead: this.opts.readAhead, ttl: this.opts.ttl },
      shared: { counts: this.opCounts.buffer as SharedArrayBuffer, ends: this.ends?.buffer },
      memoryBudget: memoryBudget(),
    };
    const worker = new Worker(new URL('./serve-worker.js', import.meta.url), { workerData: data });
    this.worker = worker;
    let opened: (r: { name: string } | { error: { code: string; message: string } }) => void = () => {};
    const open = new Promise<{ name: string } | { error: { code: string; message: string } }>((r) => {
      opened = r;
    });
    worker.on('message', (m: ServeMessage) => {
      if ('warn' in m) this.warn(m.warn);
      else if ('opened' in m) opened({ name: m.opened });
      else if ('error' in m) opened({ error: m.error });
      else if ('init' in m) this.initDone?.();
      else this.finish(m.end);
    });
    worker.on('error', (e) => {
      opened({ error: { code: 'IO', message: `serving thread failed: ${e.message}` } });
      this.finish(`serving thread failed: ${e.message}`);
    });
    worker.on('exit', () => {
      opened({ error: { code: 'IO', message: 'serving thread ended' } });
      this.finish('serving thread ended');
    });
    const fail = (e: unknown) => this.abandon(worker, e);
    const r = await open;
    if ('error' in r) return fail(new StrataError(r.error.code as ErrorCode, r.error.message));
    await this.mountAndInit(worker, r.name, fail);
  }

  /**
   * The serving thread's loop (serve-worker.ts): read a request, answer it, write the reply,
   * one at a time on this thread (a request that waits for the image lets the event loop run
   * meanwhile). Listing ends are answered straight from the shared table. Resolves with why
   * the connection ended.
   */
  async serveOn(fd: number, root: MountNode, onInit: () => void): Promise<string> {
    this.fd = fd;
    this.adopt(root);
    this.initDone = onInit;
    const buf = Buffer.allocUnsafe(BUFFER);
    this.readScratch = new Uint8Array(MAX_PAGES * 4096);
    for (;;) {
      // listing ends are answered inside (natively where the addon is)
      const n = readRequestPastEnds(fd, buf, this.ends);
      if (typeof n === 'string') return n;
      if (this.plusFast(buf, n)) continue;
      // read-only requests keep nothing of their body once answered: the buffer is reused
      await this.answer(buf.subarray(0, n));
    }
  }

  /**
   * The serving loop's fast path: a READDIRPLUS at offset 0 that the tree builds at once
   * (plusReplyNow) is answered and written here, with no promise and no request object made;
   * false for every other request, and when the tree declines (answer() then serves it).
   */
  private plusFast(buf: Buffer, n: number): boolean {
    if (!this.tree.plusReplyNow || n < IN_HEADER + 24 || buf.readUInt32LE(4) !== Op.READDIRPLUS) return false;
    if (buf.readUInt32LE(0) > n || buf.readUInt32LE(IN_HEADER + 8) !== 0 || buf.readUInt32LE(IN_HEADER + 12) !== 0)
      return false;
    const nodeid = buf.readUInt32LE(16) + buf.readUInt32LE(20) * 2 ** 32;
    const held = this.byId.get(nodeid);
    if (held?.node.type !== 'dir') return false;
    const out = this.plusNow(held, nodeid, buf.readUInt32LE(IN_HEADER + 16));
    if (!out) return false;
    Atomics.add(this.opCounts, Op.READDIRPLUS, 1);
    const head = this.head;
    head.writeUInt32LE(OUT_HEADER + out.length, 0);
    buf.copy(head, 8, 8, 16); // the request's unique
    this.send(head, out);
    return true;
  }

  private finish(why: string): void {
    if (this.endedResolve) {
      const r = this.endedResolve;
      this.endedResolve = undefined;
      this.mounted = false;
      r(why);
    }
  }

  /**
   * Unmount (lazily when busy, then abort the connection so nothing waits on us), end the
   * reader thread, and close the tree.
   */
  async unmount(): Promise<void> {
    if (this.mounted) {
      const r = await runTool('umount', [this.mountpoint]);
      if (r.status !== 0) await runTool('umount', ['-l', this.mountpoint]);
      const t = setTimeout(() => {
        if (this.connection !== undefined) {
          writeFile(`/sys/fs/fuse/connections/${this.connection}/abort`, '1').catch(() => {});
        }
      }, 2000);
      await this.ended;
      clearTimeout(t);
    }
    await this.worker?.terminate().catch(() => {});
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
    this.byId.clear();
    this.byKey.clear();
    this.recent.clear();
    this.cache.clear();
    await this.tree.close();
  }

  /** Requests answered by the server (listing ends answered on their own are not), by opcode. */
  get counts(): Map<number, number> {
    const m = new Map<number, number>();
    for (let op = 0; op < OPS; op++) {
      const n = Atomics.load(this.opCounts, op);
      if (n) m.set(op, n);
    }
    return m;
  }

  /** READDIRs past a listing's end that the reader thread answered itself (read-only mounts). */
  get readerAnswered(): number {
    return this.ends?.answeredCount ?? 0;
  }

  /** A reply with a body: header and body in one writev(2), the body not copied (READ replies are up to 1 MiB). */
  private sendOk(unique: bigint, body: Buffer | undefined): void {
    if (!body || body.length < 4096) {
      this.send(reply(unique, 0, body));
      return;
    }
    const head = Buffer.allocUnsafe(OUT_HEADER);
    head.writeUInt32LE(OUT_HEADER + body.length, 0);
    head.writeInt32LE(0, 4);
    head.writeBigUInt64LE(unique, 8);
    this.send(head, body);
  }

  private send(b: Buffer, body?: Buffer): void {
    try {
      if (body) writevSync(this.fd, [b, body]);
      else writeSync(this.fd, b);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // ENOENT: the request was interrupted and is gone; ENODEV: unmounted meanwhile
      if (code !== 'ENOENT' && code !== 'ENODEV' && code !== 'EBADF')
        this.warn(`write /dev/fuse: ${(e as Error).message}`);
    }
  }

  /** Answer one request (no reply to FORGET and INTERRUPT); resolves once the reply is written. */
  private answer(b: Buffer): Promise<void> | undefined {
    if (b.length < IN_HEADER) return;
    const h = parseInHeader(b);
    const body = b.subarray(IN_HEADER, Math.min(b.length, h.len));
    if (h.opcode < OPS) Atomics.add(this.opCounts, h.opcode, 1);
    // no reply to these
    if (h.opcode === Op.FORGET) {
      this.forget(Number(h.nodeid), Number(body.readBigUInt64LE(0)));
      return;
    }
    if (h.opcode === Op.BATCH_FORGET) {
      const n = body.readUInt32LE(0);
      for (let i = 0; i < n && 8 + i * 16 + 16 <= body.length; i++) {
        this.forget(Number(body.readBigUInt64LE(8 + i * 16)), Number(body.readBigUInt64LE(16 + i * 16)));
      }
      return;
    }
    if (h.opcode === Op.INTERRUPT) return; // every request finishes soon; the kernel accepts the late reply
    return this.handle(h.opcode, Number(h.nodeid), body, h).then(
      (out) => this.sendOk(h.unique, out),
      (e) => {
        const errno = typeof e === 'number' ? e : Errno.EIO;
        if (typeof e !== 'number') {
          this.warn(isStrataError(e) ? (e as Error).message : `internal error: ${(e as Error)?.stack ?? e}`);
        }
        this.send(reply(h.unique, errno));
      },
    );
  }

  private forget(id: number, n: number): void {
    const held = this.byId.get(id);
    if (!held || id === FUSE_ROOT_ID) return;
    held.lookups -= n;
    if (held.lookups <= 0) {
      this.byId.delete(id);
      if (this.byKey.get(held.node.key) === held) this.byKey.delete(held.node.key);
    }
  }

  private held(id: number): Held {
    const h = this.byId.get(id) ?? this.recentGet(id);
    if (!h) throw Errno.ENOENT; // a node id the kernel should no longer use
    return h;
  }

  /** A file of a stable tree kept in `recent`, made the most recently used. */
  private recentGet(id: number): Held | undefined {
    const h = this.recent.get(id);
    if (h) {
      this.recent.delete(id);
      this.recent.set(id, h);
    }
    return h;
  }

  /** Keep a file of a stable tree (its node id is its key plus STABLE_ID_BASE) among the recent ones. */
  private keepRecent(id: number, node: MountNode): Held {
    const have = this.recentGet(id);
    if (have) return have;
    const h: Held = { id, node, lookups: 1 };
    this.recent.set(id, h);
    if (this.recent.size > RECENT_FILES) this.recent.delete(this.recent.keys().next().value as number);
    return h;
  }

  /**
   * Hand a child node to the kernel (one more lookup). A directory already known under
   * another parent or name (a hard-linked directory or a cycle: only corrupt images have
   * them) or the root met again is refused: undefined.
   */
  private give(parent: Held, name: string, node: MountNode, stub = false): Held | undefined {
    // a key too large to carry in a safe integer gets a counted id (below 2^32, never recalled)
    const stable = this.stable && node.key >= 0 && Number.isSafeInteger(node.key + STABLE_ID_BASE);
    // files of a stable tree: not counted, kept among the recent ones (found again by key when dropped)
    if (stable && node.type !== 'dir') return this.keepRecent(node.key + STABLE_ID_BASE, node);
    const have = this.byKey.get(node.key);
    if (have) {
      if (have.id === FUSE_ROOT_ID) return undefined;
      if (node.type === 'dir' && (have.parent !== parent.id || have.name !== name)) return undefined;
      if (have.stub && !stub) {
        // the node itself now: the stub is loaded
        have.node = node;
        have.stub = undefined;
      }
      have.lookups++;
      return have;
    }
    const h: Held = { id: stable ? node.key + STABLE_ID_BASE : this.nextId++, node, lookups: 1 };
    if (stub) h.stub = true;
    if (node.type === 'dir') {
      h.parent = parent.id;
      h.name = name;
    }
    this.byId.set(h.id, h);
    this.byKey.set(node.key, h);
    return h;
  }

  /**
   * A node id handed out in a native READDIRPLUS reply (or forgotten since) that this side
   * keeps no node for: found again by its key. Directories are always kept while the kernel
   * knows them (their parent and name guard against cycles), so one not kept is unknown.
   */
  private async recall(id: number): Promise<void> {
    const tree = this.tree;
    if (!tree.nodeByKey) return;
    const key = id - STABLE_ID_BASE;
    const root = this.byId.get(FUSE_ROOT_ID);
    if (!Number.isSafeInteger(key) || key < 0 || key === root?.node.key) return;
    const node = await tree.nodeByKey(key).catch(() => undefined);
    if (!node || node.type === 'dir' || this.byId.has(id)) return;
    this.keepRecent(id, node);
  }

  private async handle(op: number, nodeid: number, body: Buffer, h: InHeader): Promise<Buffer | undefined> {
    if (this.stable && nodeid >= STABLE_ID_BASE && !this.byId.has(nodeid) && !this.recent.has(nodeid))
      await this.recall(nodeid);
    // a directory handed out natively is loaded by the first request that needs it (its own READDIRPLUS may not)
    const stub = this.byId.get(nodeid);
    if (stub?.stub && op !== Op.READDIRPLUS) await this.materialize(stub);
    switch (op) {
      case Op.INIT:
        return this.init(body);
      case Op.DESTROY:
        return undefined;
      case Op.LOOKUP: {
        const parent = this.held(nodeid);
        if (parent.node.type !== 'dir') throw Errno.ENOTDIR;
        const name = cString(body);
        const node = await this.tree.lookup(parent.node, name);
        // read-only: the name is absent for good, and the kernel may remember that (node id 0)
        if (!node) {
          if (this.rw) throw Errno.ENOENT;
          return negativeEntry(this.valid);
        }
        const h = this.give(parent, name, node);
        if (!h) {
          this.warn(`${this.tree.name}: ${name} (inode ${node.attr.ino}) is a directory met twice (a cycle), refused`);
          throw Errno.EIO;
        }
        return entryOut(h.id, h.node.attr, this.valid);
      }
      case Op.GETATTR:
        return attrOut(this.held(nodeid).node.attr, this.valid);
      case Op.STATX:
        // the kernel asks for statx (not getattr) when the caller wants the birth time
        return statxOut(this.held(nodeid).node.attr, this.valid);
      case Op.OPEN: {
        // Read-only: a file needs no handle (reads name the node), so OPEN answers ENOSYS and
        // the kernel stops sending OPEN and RELEASE (fc->no_open, files then keep their page
        // cache): a small file read by tar costs one round trip (READ), not three
        if (!this.rw) throw Errno.ENOSYS;
        const held = this.held(nodeid);
        if ((body.readUInt32LE(0) & 3) !== 0 && !this.rw) throw Errno.EROFS;
        if (held.node.type === 'dir') throw Errno.EISDIR;
        const fh = this.nextFh++;
        this.files.set(fh, { held, ra: newReadAhead() });
        this.rw?.opened(held.node);
        return openOut(fh, FOPEN_KEEP_CACHE);
      }
      case Op.READ: {
        const fh = Number(body.readBigUInt64LE(0));
        const offset = Number(body.readBigUInt64LE(8));
        const size = body.readUInt32LE(16);
        const f = this.files.get(fh);
        const held = f?.held ?? this.held(nodeid);
        const ra = f?.ra ?? (held.ra ??= newReadAhead());
        if (this.rw?.direct(held.node)) {
          const d = await this.rw.read(held.node, offset, Math.min(size, MAX_PAGES * 4096));
          return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
        }
        const data = await this.cache.read(held.node, offset, Math.min(size, MAX_PAGES * 4096), ra, this.readScratch);
        return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      }
      case Op.RELEASE: {
        const fh = Number(body.readBigUInt64LE(0));
        const f = this.files.get(fh);
        this.files.delete(fh);
        if (f) this.rw?.released(f.held.node);
        return undefined;
      }
      case Op.OPENDIR: {
        // Read-only: ENOSYS once, and the kernel stops sending OPENDIR and RELEASEDIR (its
        // no_opendir; a directory then keeps its listing cached, FOPEN_CACHE_DIR being the
        // default): READDIR names the node, whose listing is read when offset 0 is asked
        if (!this.rw) throw Errno.ENOSYS;
        const held = this.held(nodeid);
        if (held.node.type !== 'dir') throw Errno.ENOTDIR;
        const fh = this.nextFh++;
        this.dirs.set(fh, { held, entries: await this.entries(held) });
        return openOut(fh, FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR);
      }
      case Op.READDIR:
      case Op.READDIRPLUS:
        return this.readdir(nodeid, body, op === Op.READDIRPLUS);
      case Op.RELEASEDIR:
        this.dirs.delete(Number(body.readBigUInt64LE(0)));
        return undefined;
      case Op.READLINK: {
        const held = this.held(nodeid);
        if (held.node.type !== 'symlink') throw Errno.EINVAL;
        return Buffer.from(await this.tree.readlink(held.node));
      }
      case Op.GETXATTR: {
        const size = body.readUInt32LE(0);
        const name = cString(body.subarray(8));
        const v = (await this.tree.xattrs(this.held(nodeid).node)).get(name);
        if (!v) throw Errno.ENODATA;
        return sized(size, Buffer.from(v));
      }
      case Op.LISTXATTR: {
        const size = body.readUInt32LE(0);
        const names = [...(await this.tree.xattrs(this.held(nodeid).node)).keys()];
        return sized(size, Buffer.from(names.map((n) => `${n}\0`).join(''), 'utf8'));
      }
      case Op.STATFS:
        return statfsOut(await this.tree.statfs());
      case Op.ACCESS:
        this.held(nodeid);
        if (body.readUInt32LE(0) & 2 && !this.rw) throw Errno.EROFS;
        return undefined;
      case Op.FSYNC:
      case Op.FSYNCDIR:
        this.rw?.save();
        return undefined;
      case Op.FLUSH:
        // read-only: nothing to flush, and ENOSYS makes the kernel stop asking on every close
        if (!this.rw) throw Errno.ENOSYS;
        return undefined;
      default:
        if (this.rw && WRITE_OPS.has(op)) return this.change(this.rw, op, nodeid, body, h);
        throw WRITE_OPS.has(op) ? Errno.EROFS : Errno.ENOSYS;
    }
  }

  /** The reply to a request that made `node` under `dir`: an entry, the node given to the kernel. */
  private made(dir: Held, name: string, node: MountNode): Buffer {
    const h = this.give(dir, name, node);
    if (!h) throw Errno.EIO;
    return entryOut(h.id, h.node.attr, this.valid);
  }

  /** Requests that change a writable tree. */
  private async change(
    t: WritableTree,
    op: number,
    nodeid: number,
    body: Buffer,
    h: { uid: number; gid: number },
  ): Promise<Buffer | undefined> {
    switch (op) {
      case Op.CREATE: {
        const dir = this.held(nodeid);
        const mode = body.readUInt32LE(4);
        const name = cString(body.subarray(16));
        if ((mode & 0o170000) !== 0o100000 && (mode & 0o170000) !== 0) throw Errno.EPERM;
        const node = await t.create(dir.node, name, mode, h.uid, h.gid);
        const entry = this.made(dir, name, node);
        const fh = this.nextFh++;
        this.files.set(fh, { held: this.byKey.get(node.key) as Held, ra: newReadAhead() });
        t.opened(node);
        return Buffer.concat([entry, openOut(fh, 0)]);
      }
      case Op.MKDIR: {
        const dir = this.held(nodeid);
        const name = cString(body.subarray(8));
        return this.made(dir, name, await t.mkdir(dir.node, name, body.readUInt32LE(0), h.uid, h.gid));
      }
      case Op.SYMLINK: {
        const dir = this.held(nodeid);
        const z = body.indexOf(0);
        const name = cString(body.subarray(0, z + 1));
        const rest = body.subarray(z + 1);
        const z2 = rest.indexOf(0);
        const target = rest.subarray(0, z2 < 0 ? rest.length : z2);
        return this.made(dir, name, await t.symlink(dir.node, name, target, h.uid, h.gid));
      }
      case Op.LINK: {
        const old = this.held(Number(body.readBigUInt64LE(0)));
        const dir = this.held(nodeid);
        const name = cString(body.subarray(8));
        return this.made(dir, name, await t.link(old.node, dir.node, name));
      }
      case Op.UNLINK:
        await t.unlink(this.held(nodeid).node, cString(body));
        return undefined;
      case Op.RMDIR:
        await t.rmdir(this.held(nodeid).node, cString(body));
        return undefined;
      case Op.RENAME:
      case Op.RENAME2: {
        const dir = this.held(nodeid);
        const to = this.held(Number(body.readBigUInt64LE(0)));
        const flags = op === Op.RENAME2 ? body.readUInt32LE(8) : 0;
        const names = body.subarray(op === Op.RENAME2 ? 16 : 8);
        const z = names.indexOf(0);
        const name = cString(names.subarray(0, z + 1));
        const toName = cString(names.subarray(z + 1));
        if (flags & ~3) throw Errno.EINVAL; // RENAME_WHITEOUT: an overlayfs detail we do not serve
        const moved = await t.rename(dir.node, name, to.node, toName, flags);
        // directories remember where they were reached (the '..' of their listing, the cycle check)
        for (const n of moved) {
          const held = this.byKey.get(n.key);
          if (!held || n.type !== 'dir') continue;
          const now = n === moved[0] ? { p: to.id, name: toName } : { p: dir.id, name };
          held.parent = now.p;
          held.name = now.name;
        }
        return undefined;
      }
      case Op.SETATTR: {
        const held = this.held(nodeid);
        const valid = body.readUInt32LE(0);
        const s: SetAttrs = {};
        const nowTs = () => {
          const ms = Date.now();
          return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1_000_000 };
        };
        if (valid & Fattr.SIZE) s.size = Number(body.readBigUInt64LE(16));
        if (valid & Fattr.MODE) s.mode = body.readUInt32LE(68);
        if (valid & Fattr.UID) s.uid = body.readUInt32LE(76);
        if (valid & Fattr.GID) s.gid = body.readUInt32LE(80);
        if (valid & Fattr.ATIME_NOW) s.atime = nowTs();
        else if (valid & Fattr.ATIME) s.atime = { sec: Number(body.readBigInt64LE(32)), nsec: body.readUInt32LE(56) };
        if (valid & Fattr.MTIME_NOW) s.mtime = nowTs();
        else if (valid & Fattr.MTIME) s.mtime = { sec: Number(body.readBigInt64LE(40)), nsec: body.readUInt32LE(60) };
        if (s.size !== undefined && !Number.isSafeInteger(s.size)) throw Errno.EFBIG;
        const node = await t.setattr(held.node, s);
        return attrOut(node.attr, this.valid);
      }
      case Op.WRITE: {
        const fh = Number(body.readBigUInt64LE(0));
        const offset = Number(body.readBigUInt64LE(8));
        const size = body.readUInt32LE(16);
        const held = this.files.get(fh)?.held ?? this.held(nodeid);
        if (held.node.type !== 'file') throw Errno.EINVAL;
        const data = body.subarray(40, 40 + size);
        if (data.length !== size) throw Errno.EINVAL;
        if (!Number.isSafeInteger(offset + size)) throw Errno.EFBIG;
        return writeOut(await t.write(held.node, offset, data));
      }
      case Op.SETXATTR: {
        const size = body.readUInt32LE(0);
        const flags = body.readUInt32LE(4);
        const rest = body.subarray(8);
        const z = rest.indexOf(0);
        if (z < 0) throw Errno.EINVAL;
        const name = cString(rest.subarray(0, z + 1));
        const value = rest.subarray(z + 1, z + 1 + size);
        await t.setxattr(this.held(nodeid).node, name, value, flags);
        return undefined;
      }
      case Op.REMOVEXATTR:
        await t.removexattr(this.held(nodeid).node, cString(body));
        return undefined;
      case Op.COPY_FILE_RANGE:
        throw Errno.ENOSYS; // the kernel (or cp) falls back to read and write
      default:
        // MKNOD (a change set has no device nodes), FALLOCATE, TMPFILE
        throw Errno.EOPNOTSUPP;
    }
  }

  private init(body: Buffer): Buffer {
    const minor = body.readUInt32LE(4);
    const maxReadahead = body.readUInt32LE(8);
    const flags = body.readUInt32LE(12);
    const want =
      InitFlag.ASYNC_READ |
      InitFlag.BIG_WRITES |
      InitFlag.DO_READDIRPLUS |
      InitFlag.READDIRPLUS_AUTO |
      InitFlag.PARALLEL_DIROPS |
      InitFlag.MAX_PAGES |
      InitFlag.CACHE_SYMLINKS;
    const out = initOut({
      minor: Math.min(minor, FUSE_KERNEL_MINOR),
      maxReadahead: Math.min(maxReadahead, 1 << 20),
      flags: flags & want,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite: MAX_WRITE,
      timeGran: 1,
      maxPages: MAX_PAGES,
    });
    queueMicrotask(() => this.initDone?.());
    return out;
  }

  /** A directory's listing as READDIR hands it out: '.', '..', then the children. */
  private async entries(held: Held): Promise<DirHandle['entries']> {
    const children = await this.tree.list(held.node);
    const entries: DirHandle['entries'] = [{ name: DOT }, { name: DOTDOT }];
    // the names encoded in one go ('/' is in none): one call per listing, not one per entry
    const joined = children.map((c) => c.name).join('/');
    const bytes = Buffer.from(joined, 'utf8');
    if (bytes.length === joined.length) {
      // all ASCII: a name's bytes are as many as its characters
      let at = 0;
      for (const c of children) {
        entries.push({ name: bytes.subarray(at, at + c.name.length), child: c });
        at += c.name.length + 1;
      }
    } else for (const c of children) entries.push({ name: Buffer.from(c.name, 'utf8'), child: c });
    return entries;
  }

  /**
   * A directory whose listing the kernel now has whole, back to a stub (its node dropped, loaded
   * again by the next request that needs it: the kernel keeps its attributes for the TTL). Every
   * directory the kernel knows is held, and one read past its first READDIRPLUS reply (over ~30
   * entries) was loaded and kept whole: at 2,000,000 files the serving thread's live heap grew
   * through `find` by ~2 KiB a directory (~40 MiB), its peak RSS with it. Stable trees only, and
   * only where the node's inode number is its key (what a stub answers: inoOf); not the root.
   */
  private demote(held: Held): void {
    if (held.stub || !this.stable || held.id === FUSE_ROOT_ID) return;
    const node = held.node;
    if (node.type !== 'dir' || node.attr.ino !== node.key) return;
    held.node = stubDir(node.key);
    held.stub = true;
  }

  /** A stub directory's node loaded by its key (see Held.stub). */
  private async materialize(held: Held): Promise<void> {
    if (!held.stub || !this.tree.nodeByKey) return;
    const node = await this.tree.nodeByKey(held.node.key);
    if (!held.stub) return; // loaded meanwhile
    held.node = node;
    held.stub = undefined;
  }

  /** What a native READDIRPLUS of `held` is told. */
  private plusRequest(held: Held, size: number): PlusRequest | undefined {
    const root = this.byId.get(FUSE_ROOT_ID);
    if (!root) return undefined;
    const parent = held.parent !== undefined ? this.byId.get(held.parent) : undefined;
    return {
      size,
      self: inoOf(held),
      parent: inoOf(parent ?? held),
      root: root.node.key,
      valid: this.valid,
      idBase: STABLE_ID_BASE,
    };
  }

  /**
   * A native READDIRPLUS reply's directories handed out as give() does (a directory met again
   * elsewhere, or the root, is refused: its entry is cleared), as stubs: no inode is decoded
   * for them here. Notes the listing's end when the reply holds all of it.
   */
  private handOut(held: Held, nodeid: number, r: PlusReply): Buffer {
    for (let k = 0; k < r.dirs.length; k++) {
      const at = r.dirs[k].at + ENTRY_OUT;
      const name = r.out.toString('utf8', at + DIRENT_BASE, at + DIRENT_BASE + r.out.readUInt32LE(at + 16));
      // the word view only for a refused entry (corrupt images): none made per directory
      if (!this.give(held, name, stubDir(r.dirs[k].ino), true))
        writeEntry(words(r.out), r.dirs[k].at, 0, undefined, this.valid);
    }
    if (r.written >= r.total) {
      held.listing = undefined;
      this.demote(held);
      this.ends?.set(BigInt(nodeid), r.total);
    }
    return r.out;
  }

  /** READDIRPLUS at offset 0 built by the tree at once (plusReplyNow), or undefined. */
  private plusNow(held: Held, nodeid: number, size: number): Buffer | undefined {
    const now = this.tree.plusReplyNow;
    const req = now && this.stable ? this.plusRequest(held, size) : undefined;
    const r = req && now?.(held.node, req);
    if (!r) {
      this.nowDeclined = nodeid;
      return undefined;
    }
    return this.handOut(held, nodeid, r);
  }

  /**
   * READDIRPLUS at offset 0 built by the tree (native, ext): the same bytes the code below
   * writes. Its entries' node ids are their keys plus STABLE_ID_BASE; the directories among
   * them are handed out by handOut. Undefined when the tree leaves the directory to us.
   */
  private async nativePlus(held: Held, nodeid: number, size: number): Promise<Buffer | undefined> {
    if (this.nowDeclined !== nodeid) {
      const now = this.plusNow(held, nodeid, size);
      if (now) return now;
    }
    this.nowDeclined = -1;
    const tree = this.tree;
    if (!tree.plusReply || !this.stable) return undefined;
    await this.materialize(held);
    const req = this.plusRequest(held, size);
    const r = req && (await tree.plusReply(held.node, req));
    return r ? this.handOut(held, nodeid, r) : undefined;
  }

  private async readdir(nodeid: number, body: Buffer, plus: boolean): Promise<Buffer> {
    const fh = Number(body.readBigUInt64LE(0));
    const offset = Number(body.readBigUInt64LE(8));
    const size = body.readUInt32LE(16);
    let d: DirHandle | undefined;
    if (this.rw) {
      d = this.dirs.get(fh);
      if (!d) throw Errno.EBADF;
    } else {
      // no handles (OPENDIR answered ENOSYS): the listing rides on the node, read afresh at offset 0
      const held = this.held(nodeid);
      if (held.node.type !== 'dir') throw Errno.ENOTDIR;
      if (plus && offset === 0 && (this.tree.plusReply || this.tree.plusReplyNow)) {
        const r = await this.nativePlus(held, nodeid, size);
        if (r) return r;
      }
      await this.materialize(held);
      if (offset === 0 || !held.listing) held.listing = await this.entries(held);
      d = { held, entries: held.listing };
    }
    const dir = d.held;
    // which entries fit
    let used = 0;
    let end = offset;
    while (end < d.entries.length) {
      const n = direntSize(d.entries[end].name.length, plus);
      if (used + n > size) break;
      used += n;
      end++;
    }
    const slice = d.entries.slice(offset, end);
    let nodes: Array<MountNode | undefined> = [];
    if (plus) {
      const kids = slice.filter((e) => e.child).map((e) => e.child as MountChild);
      let loaded: MountNode[] = [];
      try {
        loaded = await this.tree.nodes(dir.node, kids);
      } catch (e) {
        // one bad inode must not hide the directory: load them one by one, the bad ones stay unknown
        this.warn((e as Error).message);
        loaded = await Promise.all(
          kids.map((c) =>
            this.tree.nodes(dir.node, [c]).then(
              (r) => r[0],
              () => undefined as unknown as MountNode,
            ),
          ),
        );
      }
      let k = 0;
      nodes = slice.map((e) => (e.child ? loaded[k++] : undefined));
    }
    // the end: the kernel has it all (and caches it), the listing is not kept here
    if (end >= d.entries.length && !this.rw) {
      d.held.listing = undefined;
      this.demote(d.held);
      // the kernel asks once more to learn the end: the reader thread answers that (written before our reply)
      this.ends?.set(BigInt(nodeid), d.entries.length);
    }
    // every byte is written below (entries and dirents clear their own padding)
    const out = Buffer.allocUnsafe(used);
    const u = words(out);
    let at = 0;
    for (let i = 0; i < slice.length; i++) {
      const e = slice[i];
      const cookie = offset + i + 1;
      let ino: number;
      let dtype: number;
      if (!e.child) {
        // '.' and '..'
        const other = i + offset === 1 && dir.parent !== undefined ? this.byId.get(dir.parent) : undefined;
        ino = inoOf(other ?? dir);
        dtype = TYPE_BITS.dir.dt;
        if (plus) {
          writeEntry(u, at, 0, undefined, this.valid);
          at += ENTRY_OUT;
        }
      } else {
        const c = e.child;
        dtype = (TYPE_BITS[c.type] ?? TYPE_BITS.unknown).dt;
        const node = nodes[i];
        ino = node?.attr.ino ?? c.key;
        if (plus) {
          const h = node ? this.give(dir, c.name, node) : undefined;
          writeEntry(u, at, h?.id ?? 0, h?.node.attr, this.valid);
          at += ENTRY_OUT;
        }
      }
      at = writeDirent(out, u, at, ino, cookie, dtype, e.name);
    }
    return out;
  }
}

/** A LOOKUP reply saying the name does not exist, for as long as `valid` (node id 0). */
function negativeEntry(valid: Validity): Buffer {
  const b = Buffer.alloc(ENTRY_OUT);
  b.writeBigUInt64LE(BigInt(valid.sec), 16); // entry_valid (attr_valid means nothing without a node)
  b.writeUInt32LE(valid.nsec, 32);
  return b;
}

/** A NUL-terminated name from a request body. */
function cString(b: Buffer): string {
  const z = b.indexOf(0);
  const raw = z < 0 ? b : b.subarray(0, z);
  try {
    return decoder.decode(raw);
  } catch {
    return raw.toString('latin1') + '\uFFFD'; // matches no entry
  }
}

/** getxattr/listxattr replies: the size alone when asked with 0, ERANGE when it does not fit. */
function sized(size: number, v: Buffer): Buffer {
  if (size === 0) {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(v.length, 0);
    return b;
  }
  if (v.length > size) throw Errno.ERANGE;
  return v;
}

/** What the serving thread tells the main thread. */
export type ServeMessage =
  | { warn: string }
  | { opened: string }
  | { error: { code: string; message: string } }
  | { init: true }
  | { end: string };

/** The main thread's stand-in for a tree the serving thread opens: a name, and a close that has nothing to do. */
function unopened(spec: ReaderTree): MountTree {
  const no = () => Promise.reject(new StrataError('USAGE', 'this tree is served on the reader thread'));
  return {
    name: path.basename(spec.image),
    readBlock: 128 << 10,
    root: no,
    lookup: no,
    list: no,
    nodes: no,
    read: no,
    readlink: no,
    xattrs: no,
    statfs: no,
    close: async () => {},
  };
}
