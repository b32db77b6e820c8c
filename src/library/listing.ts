import { DIR_CODE, UNKNOWN_CODE } from '../fs/name-listing.js';
import type { DirEntry, FileExtent, FileSystem, FileType, Inode, NameListing, Timestamp } from '../fs/types.js';
import { listDirectory, listNames, loadInodes, resolvePath } from '../fs/walk.js';
import type { ByteSource } from '../io/byte-source.js';
import { offsetIn } from '../io/filter-source.js';
import { StrataError } from '../util/errors.js';
import { checkMemory } from '../util/memory.js';

/**
 * Records for `ls` and `stat`, and the tree walk both `ls -R` and `extract` use. Nothing
 * here prints: the CLI formats these records, other library verbs reuse them.
 */

/** One `ls --json` line. `mode` is the permission and special bits (07777); `type` carries the kind. */
export interface LsRecord {
  path: string;
  type: FileType;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  ino: number;
  /** ISO 8601 UTC with nanoseconds, or null when the file system keeps no mtime. */
  mtime: string | null;
  target?: string;
  rdev?: { major: number; minor: number };
}

/**
 * The last seconds formatted by isoTime: files of one package share their mtime, so listings
 * repeat it; a check-in formats mtime, atime, ctime and crtime of each inode in turn, which
 * one remembered second missed every time (2 of 30 s of CPU of a 200,000-file check-in).
 */
const SECS = 4;
const lastSecs = new Float64Array(SECS).fill(Number.NaN);
const lastBases: Array<string | null> = new Array(SECS).fill(null);
let nextSlot = 0;

/** Seconds + nanoseconds as `2024-01-02T03:04:05.123456789Z` (years past 2038 and before 1970 included). */
export function isoTime(ts: Timestamp | undefined): string | null {
  if (!ts) return null;
  const sec = Math.floor(ts.sec);
  const nsec = Math.min(999_999_999, Math.max(0, Math.trunc(ts.nsec)));
  let slot = lastSecs.indexOf(sec);
  if (slot === -1) {
    const d = new Date(sec * 1000);
    // toISOString gives "...:05.000Z" (or "+275760-..." style for extreme years): keep what precedes the dot.
    const iso = Number.isNaN(d.getTime()) ? null : d.toISOString();
    slot = nextSlot;
    nextSlot = (nextSlot + 1) % SECS;
    lastBases[slot] = iso === null ? null : iso.slice(0, iso.lastIndexOf('.'));
    lastSecs[slot] = sec;
  }
  const base = lastBases[slot];
  if (base === null) return null;
  return `${base}.${String(nsec).padStart(9, '0')}Z`;
}

const TYPE_CHAR: Record<FileType, string> = {
  file: '-',
  dir: 'd',
  symlink: 'l',
  char: 'c',
  block: 'b',
  fifo: 'p',
  socket: 's',
  unknown: '?',
};

/** `-rwsr-xr-x` style, as ls -l prints it. */
export function modeString(type: FileType, mode: number): string {
  const rwx = (bits: number, special: boolean, ch: string) =>
    `${bits & 4 ? 'r' : '-'}${bits & 2 ? 'w' : '-'}${special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-'}`;
  return (
    TYPE_CHAR[type] +
    rwx((mode >> 6) & 7, (mode & 0o4000) !== 0, 's') +
    rwx((mode >> 3) & 7, (mode & 0o2000) !== 0, 's') +
    rwx(mode & 7, (mode & 0o1000) !== 0, 't')
  );
}

/** Join a directory path and one component: "/" + "etc" = "/etc". */
export function joinPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/** Normalise a user path inside the image to an absolute one without empty or '.' parts. */
export function imagePath(p: string | undefined): string {
  if (!p || p === '/') return '/';
  if (p.includes('\0')) throw new StrataError('USAGE', `path contains NUL: ${JSON.stringify(p)}`);
  const parts = p.split('/').filter((x) => x !== '' && x !== '.');
  return `/${parts.join('/')}`;
}

/**
 * The inode at `p`, with a final symlink followed when `follow` (cat, stat, extract) the way
 * the kernel would inside the image's own root: an absolute target starts at the image's
 * root, '..' stops there, and a loop (more than 40 links) is an error naming the path.
 */
export async function lookupPath(fs: FileSystem, p: string, follow: boolean): Promise<Inode> {
  return follow ? resolvePath(fs, p, { followLast: true }) : fs.lookup(p);
}

export async function lsRecord(fs: FileSystem, path: string, ino: Inode): Promise<LsRecord> {
  return lsRecordWith(path, ino, ino.type === 'symlink' ? await fs.readlink(ino) : undefined);
}

/**
 * lsRecord without the file system: `target` is the symlink's text (ignored for other
 * types). Synchronous, for listings of many entries where only symlinks need a read.
 */
export function lsRecordWith(path: string, ino: Inode, target: string | undefined): LsRecord {
  const r: LsRecord = {
    path,
    type: ino.type,
    size: ino.size,
    mode: ino.mode & 0o7777,
    uid: ino.uid,
    gid: ino.gid,
    nlink: ino.nlink,
    ino: ino.ino,
    mtime: isoTime(ino.mtime),
  };
  if (ino.type === 'symlink' && target !== undefined) r.target = target;
  if ((ino.type === 'char' || ino.type === 'block') && ino.rdev) r.rdev = ino.rdev;
  return r;
}

const utf8 = new TextEncoder();
/** Byte order of the UTF-8 names (what `LC_ALL=C ls` uses): stable and locale-free. */
export function compareNames(a: string, b: string): number {
  if (a === b) return 0;
  // Fast path: for BMP-only strings without surrogates, UTF-16 order equals UTF-8 order.
  let ascii = true;
  for (let i = 0; i < a.length && ascii; i++) if (a.charCodeAt(i) >= 0xd800) ascii = false;
  for (let i = 0; i < b.length && ascii; i++) if (b.charCodeAt(i) >= 0xd800) ascii = false;
  if (ascii) return a < b ? -1 : 1;
  return Buffer.compare(utf8.encode(a), utf8.encode(b));
}

/** Is this directory-entry name one we may turn into a path component? */
export function safeName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0');
}

export interface WalkItem {
  path: string;
  name: string;
  inode: Inode;
  depth: number;
}

export interface WalkOptions {
  recursive?: boolean;
  /** Parallel inode reads per directory (default 32). */
  concurrency?: number;
  /** Called for entries skipped as unsafe or looping (the walk goes on). */
  onWarning?: (message: string) => void;
  /** Deepest directory nesting followed (default 4096). */
  maxDepth?: number;
  /** With `recursive`: return false to not descend into this directory. */
  enter?: (item: WalkItem) => boolean;
}

/**
 * The children of `dir` (sorted by name), and with `recursive`, their subtrees depth-first
 * in pre-order: a directory comes right before its contents. Holds one sorted listing per
 * open directory level, never the whole tree. Names that cannot be a path component ('',
 * '.', '..', '/', NUL) and directory loops are skipped with a warning.
 *
 * Handed out in batches: consecutive items of one directory up to and including the next
 * subdirectory that will be entered (whose own items come in the following batches). One
 * await per batch instead of several per entry; a consumer handles a batch before the walk
 * asks `enter` about its last item. A directory is listed and all its inodes loaded in one
 * call each (the reader's batch fast paths where it has them).
 */
export async function* walkBatches(
  fs: FileSystem,
  dirPath: string,
  dir: Inode,
  opts: WalkOptions = {},
): AsyncGenerator<WalkItem[]> {
  const conc = opts.concurrency ?? 32;
  const maxDepth = opts.maxDepth ?? 4096;
  const warn = opts.onWarning ?? (() => {});
  const seenDirs = new Set<number>([dir.ino]);

  type Listing = { items: WalkItem[]; warnings: string[] };
  const listDir = async (path: string, d: Inode): Promise<Listing> => {
    const entries: DirEntry[] = [];
    const warnings: string[] = [];
    for (const e of await listDirectory(fs, d)) {
      if (!safeName(e.name)) {
        warnings.push(`${path}: refused directory entry ${JSON.stringify(e.name)} (inode ${e.ino})`);
        continue;
      }
      entries.push(e);
    }
    entries.sort((a, b) => compareNames(a.name, b.name));
    const depth = path === '/' ? 1 : path.split('/').length;
    const inodes = await loadInodes(
      fs,
      entries.map((e) => e.ino),
      conc,
    );
    const items = entries.map((e, i) => ({ path: joinPath(path, e.name), name: e.name, inode: inodes[i], depth }));
    return { items, warnings };
  };

  // Stack of listings being consumed. While a directory's entries are handed out, the
  // listings of its next few subdirectories are already being read (LOOKAHEAD per level), so
  // a slow source (qcow2, HTTP) is kept busy. Their warnings are only reported when entered.
  const LOOKAHEAD = opts.recursive ? 4 : 0;
  type Level = { items: WalkItem[]; i: number; ahead: Map<number, Promise<Listing>>; scan: number };
  const open = (l: Listing): Level => {
    for (const w of l.warnings) warn(w);
    return { items: l.items, i: 0, ahead: new Map(), scan: 0 };
  };
  const prefetch = (lv: Level) => {
    if (lv.scan < lv.i) lv.scan = lv.i;
    while (lv.scan < lv.items.length && lv.ahead.size < LOOKAHEAD) {
      const it = lv.items[lv.scan];
      if (it.inode.type === 'dir' && !seenDirs.has(it.inode.ino)) {
        const p = listDir(it.path, it.inode);
        p.catch(() => {}); // reported when awaited
        lv.ahead.set(lv.scan, p);
      }
      lv.scan++;
    }
  };
  const stack: Level[] = [open(await listDir(dirPath, dir))];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.i >= top.items.length) {
      stack.pop();
      continue;
    }
    prefetch(top);
    // The batch: up to and including the next directory (the only items the walk may enter).
    const from = top.i;
    let to = from;
    if (opts.recursive) while (to < top.items.length - 1 && top.items[to].inode.type !== 'dir') to++;
    else to = top.items.length - 1;
    top.i = to + 1;
    checkMemory('walking the file tree');
    yield from === 0 && to === top.items.length - 1 ? top.items : top.items.slice(from, to + 1);
    const item = top.items[to];
    if (!opts.recursive || item.inode.type !== 'dir') continue;
    const ahead = top.ahead.get(to);
    top.ahead.delete(to);
    if (opts.enter && !opts.enter(item)) continue;
    if (seenDirs.has(item.inode.ino)) {
      warn(`${item.path}: directory inode ${item.inode.ino} seen twice (loop or hard-linked directory), not entered`);
      continue;
    }
    if (stack.length >= maxDepth) {
      warn(`${item.path}: deeper than ${maxDepth} levels, not entered`);
      continue;
    }
    seenDirs.add(item.inode.ino);
    stack.push(open(await (ahead ?? listDir(item.path, item.inode))));
  }
}

/** Bytes of output gathered before walkNameLines hands a chunk out. */
const LINES_CHUNK = 1 << 20;

/**
 * `ls` without `-l`: the lines walkBatches's items would print (each item's path with
 * `recursive`, else its name, then "\n"), as UTF-8 chunks of whole lines, ~1 MiB each.
 * Same order, warnings and loop and depth checks as walkBatches, but no string or object
 * per entry: each directory is one NameListing (the reader's `readdirNames`), sorted by its
 * name bytes (the byte order compareNames gives), and lines are copied byte by byte into
 * the chunk. Inodes are loaded for directories (and entries of unknown type) only.
 */
export async function* walkNameLines(
  fs: FileSystem,
  dirPath: string,
  dir: Inode,
  opts: Pick<WalkOptions, 'recursive' | 'onWarning' | 'maxDepth' | 'concurrency'> = {},
): AsyncGenerator<Uint8Array> {
  const recursive = opts.recursive === true;
  const maxDepth = opts.maxDepth ?? 4096;
  const conc = opts.concurrency ?? 32;
  const warn = opts.onWarning ?? (() => {});
  const seenDirs = new Set<number>([dir.ino]);

  /** One directory: its entries in name order (safe names only), and the inodes of its subdirectories. */
  type Listing = {
    /** The bytes every line of this directory starts with ("/usr/" below "/usr"; "" without recursive). */
    prefix: Uint8Array;
    l: NameListing;
    /** Entry numbers in name order: order[0, n). */
    order: Uint32Array;
    n: number;
    /** Per position in `order`: the inode of a directory (or unknown-type entry); undefined when there are none. */
    inodes: (Inode | undefined)[] | undefined;
    warnings: string[];
  };
  const text = (b: Uint8Array) => td.decode(b);
  const listDir = async (prefix: Uint8Array, d: Inode): Promise<Listing> => {
    const l = await listNames(fs, d);
    const { names, starts, types } = l;
    const warnings: string[] = [];
    const order = new Uint32Array(l.count);
    let n = 0;
    for (let i = 0; i < l.count; i++) {
      if (safeNameBytes(names, starts[i], starts[i + 1])) order[n++] = i;
      else
        warnings.push(
          `${pathOf(prefix)}: refused directory entry ${JSON.stringify(text(names.subarray(starts[i], starts[i + 1])))} (inode ${l.inos[i]})`,
        );
    }
    const cmp = (a: number, b: number) => {
      const sa = starts[a];
      const sb = starts[b];
      const la = starts[a + 1] - sa;
      const lb = starts[b + 1] - sb;
      const m = Math.min(la, lb);
      for (let k = 0; k < m; k++) {
        const c = names[sa + k] - names[sb + k];
        if (c !== 0) return c;
      }
      return la - lb;
    };
    // directories a tool wrote in name order need no sort (the check is n - 1 comparisons)
    let sorted = true;
    for (let k = 1; k < n && sorted; k++) sorted = cmp(order[k - 1], order[k]) <= 0;
    if (!sorted) order.subarray(0, n).sort(cmp);
    let wanted: number[] | undefined;
    for (let k = 0; k < n; k++) {
      const t = types[order[k]];
      if (t === DIR_CODE || t === UNKNOWN_CODE) (wanted ??= []).push(l.inos[order[k]]);
    }
    let inodes: (Inode | undefined)[] | undefined;
    if (wanted) {
      const loaded = await loadInodes(fs, wanted, conc);
      inodes = new Array<Inode | undefined>(n);
      for (let k = 0, j = 0; k < n; k++) {
        const t = types[order[k]];
        if (t === DIR_CODE || t === UNKNOWN_CODE) inodes[k] = loaded[j++];
      }
    }
    return { prefix, l, order, n, inodes, warnings };
  };
  /** The path a prefix stands for, for messages ("/" for "/", "/usr" for "/usr/"). */
  const pathOf = (prefix: Uint8Array) =>
    recursive ? (prefix.length <= 1 ? '/' : text(prefix.subarray(0, prefix.length - 1))) : dirPath;
  /** The prefix of the lines below entry k of `lv`. */
  const childPrefix = (lv: Listing, k: number): Uint8Array => {
    const i = lv.order[k];
    const s = lv.l.starts[i];
    const e = lv.l.starts[i + 1];
    const p = new Uint8Array(lv.prefix.length + (e - s) + 1);
    p.set(lv.prefix);
    p.set(lv.l.names.subarray(s, e), lv.prefix.length);
    p[p.length - 1] = 0x2f;
    return p;
  };

  const LOOKAHEAD = recursive ? 4 : 0;
  type Level = { lv: Listing; k: number; ahead: Map<number, Promise<Listing>>; scan: number };
  const open = (lv: Listing): Level => {
    for (const w of lv.warnings) warn(w);
    return { lv, k: 0, ahead: new Map(), scan: 0 };
  };
  const prefetch = (level: Level) => {
    if (level.scan < level.k) level.scan = level.k;
    while (level.scan < level.lv.n && level.ahead.size < LOOKAHEAD) {
      const ino = level.lv.inodes?.[level.scan];
      if (ino !== undefined && ino.type === 'dir' && !seenDirs.has(ino.ino)) {
        const p = listDir(childPrefix(level.lv, level.scan), ino);
        p.catch(() => {}); // reported when awaited
        level.ahead.set(level.scan, p);
      }
      level.scan++;
    }
  };

  let out = new Uint8Array(LINES_CHUNK + 4096);
  let used = 0;
  const topPrefix = recursive ? utf8.encode(dirPath === '/' ? '/' : `${dirPath}/`) : new Uint8Array(0);
  const stack: Level[] = [open(await listDir(topPrefix, dir))];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const lv = top.lv;
    if (top.k >= lv.n) {
      stack.pop();
      continue;
    }
    prefetch(top);
    // lines up to and including the next directory (the only entries the walk may enter)
    const { names, starts } = lv.l;
    const { prefix, order, inodes } = lv;
    let k = top.k;
    for (; k < lv.n; k++) {
      const i = order[k];
      const s = starts[i];
      const e = starts[i + 1];
      const need = prefix.length + (e - s) + 1;
      if (used + need > out.length) {
        if (used > 0) yield out.subarray(0, used);
        out = new Uint8Array(Math.max(LINES_CHUNK, need) + 4096);
        used = 0;
      }
      for (let x = 0; x < prefix.length; x++) out[used++] = prefix[x];
      for (let x = s; x < e; x++) out[used++] = names[x];
      out[used++] = 0x0a;
      if (recursive && inodes !== undefined && inodes[k]?.type === 'dir') break;
    }
    top.k = k + 1;
    checkMemory('walking the file tree');
    if (used >= LINES_CHUNK) {
      yield out.subarray(0, used);
      out = new Uint8Array(LINES_CHUNK + 4096);
      used = 0;
    }
    if (k >= lv.n) continue;
    // entry k is a directory: enter it
    const ino = (inodes as Inode[])[k];
    const ahead = top.ahead.get(k);
    top.ahead.delete(k);
    if (seenDirs.has(ino.ino)) {
      const p = childPrefix(lv, k);
      warn(
        `${text(p.subarray(0, p.length - 1))}: directory inode ${ino.ino} seen twice (loop or hard-linked directory), not entered`,
      );
      continue;
    }
    if (stack.length >= maxDepth) {
      const p = childPrefix(lv, k);
      warn(`${text(p.subarray(0, p.length - 1))}: deeper than ${maxDepth} levels, not entered`);
      continue;
    }
    seenDirs.add(ino.ino);
    stack.push(open(await (ahead ?? listDir(childPrefix(lv, k), ino))));
  }
  if (used > 0) yield out.subarray(0, used);
}

/** safeName of the UTF-8 name bytes b[s, e). */
function safeNameBytes(b: Uint8Array, s: number, e: number): boolean {
  const n = e - s;
  if (n === 0 || (b[s] === 0x2e && (n === 1 || (n === 2 && b[s + 1] === 0x2e)))) return false;
  for (let k = s; k < e; k++) if (b[k] === 0x2f || b[k] === 0) return false;
  return true;
}

const td = new TextDecoder();

/** One extent as `stat --json` prints it. */
export interface StatExtent {
  fileOffset: number;
  length: number;
  volumeOffset: number;
  /** Offset in the virtual disk, when the volume is a plain window of it. */
  diskOffset: number | null;
  flags: string[];
  /** Bytes on disk when they differ from `length` (compressed extents). */
  diskLength?: number;
}

export interface StatRecord extends LsRecord {
  atime: string | null;
  ctime: string | null;
  crtime: string | null;
  flags?: number;
  allocatedBytes?: number;
  /** Windows owner and group SIDs (NTFS). */
  ownerSid?: string;
  groupSid?: string;
  xattrs: string[];
  extents: StatExtent[];
}

/** Where the volume starts inside `disk`, when it is a chain of plain slices of it. */
export function volumeDiskOffset(volume: ByteSource, disk: ByteSource): number | null {
  return offsetIn(volume, disk);
}

export function extentFlags(e: FileExtent): string[] {
  const f: string[] = [];
  if (e.unwritten) f.push('unwritten');
  if (e.inline) f.push('inline');
  if (e.shared) f.push('shared');
  if (e.encoded) f.push(`encoded:${e.encoded}`);
  if (e.device !== undefined) f.push(`device:${e.device}`);
  return f;
}

export async function statRecord(
  fs: FileSystem,
  path: string,
  ino: Inode,
  diskBase: number | null,
): Promise<StatRecord> {
  const base = await lsRecord(fs, path, ino);
  const xattrs = [...(await fs.xattrs(ino)).keys()].sort();
  const extents: StatExtent[] = [];
  if (ino.type === 'file' || ino.type === 'dir' || ino.type === 'symlink') {
    for await (const e of fs.extents(ino)) {
      const x: StatExtent = {
        fileOffset: e.fileOffset,
        length: e.length,
        volumeOffset: e.volumeOffset,
        diskOffset: diskBase === null || e.inline || e.device !== undefined ? null : diskBase + e.volumeOffset,
        flags: extentFlags(e),
      };
      if (e.diskLength !== undefined) x.diskLength = e.diskLength;
      extents.push(x);
    }
  }
  const r: StatRecord = {
    ...base,
    atime: isoTime(ino.atime),
    ctime: isoTime(ino.ctime),
    crtime: isoTime(ino.crtime),
    xattrs,
    extents,
  };
  if (ino.flags !== undefined) r.flags = ino.flags;
  if (ino.allocatedBytes !== undefined) r.allocatedBytes = ino.allocatedBytes;
  if (ino.ownerSid !== undefined) r.ownerSid = ino.ownerSid;
  if (ino.groupSid !== undefined) r.groupSid = ino.groupSid;
  return r;
}

/** `ls -l` style line (numeric owners, like `ls -ln`). */
export function longLine(r: LsRecord, name: string): string {
  const size = r.rdev ? `${r.rdev.major}, ${r.rdev.minor}` : String(r.size);
  const when = r.mtime ? `${r.mtime.slice(0, 10)} ${r.mtime.slice(11, 16)}` : '????-??-?? ??:??';
  const target = r.target !== undefined ? ` -> ${r.target}` : '';
  return `${modeString(r.type, r.mode)} ${String(r.nlink).padStart(3)} ${String(r.uid).padStart(5)} ${String(r.gid).padStart(5)} ${size.padStart(10)} ${when} ${name}${target}`;
}
