/**
 * The kernel's FUSE protocol (include/uapi/linux/fuse.h), the part a read-only file server
 * speaks: opcodes, the request and reply headers, and the structures of the replies we send.
 * All little-endian, as the kernel lays them out on x86-64 and aarch64.
 */
import { readSync } from 'node:fs';

export const FUSE_KERNEL_VERSION = 7;
/** The minor version we speak (fuse_init_out as of 7.31: 64 bytes, max_pages). */
export const FUSE_KERNEL_MINOR = 31;
export const FUSE_ROOT_ID = 1;

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  COPY_FILE_RANGE: 47,
  TMPFILE: 51,
  STATX: 52,
} as const;

/** Requests that would change the tree: answered EROFS on a read-only mount. */
export const WRITE_OPS: ReadonlySet<number> = new Set([
  Op.SETATTR,
  Op.SYMLINK,
  Op.MKNOD,
  Op.MKDIR,
  Op.UNLINK,
  Op.RMDIR,
  Op.RENAME,
  Op.LINK,
  Op.WRITE,
  Op.SETXATTR,
  Op.REMOVEXATTR,
  Op.CREATE,
  Op.FALLOCATE,
  Op.RENAME2,
  Op.COPY_FILE_RANGE,
  Op.TMPFILE,
]);

/** fuse_init_in / fuse_init_out flags we use. */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
} as const;

/** fuse_open_out.open_flags */
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_CACHE_DIR = 1 << 3;

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EXDEV: 18,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ENAMETOOLONG: 36,
  ENODATA: 61,
  EOPNOTSUPP: 95,
} as const;

/** fuse_setattr_in.valid bits. */
export const Fattr = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** renameat2 flags as RENAME2 passes them. */
export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
export const RENAME_WHITEOUT = 4;

/** setxattr flags. */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

/** fuse_write_out: the bytes written. */
export function writeOut(size: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(size, 0);
  return b;
}

export const IN_HEADER = 40;
export const OUT_HEADER = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT = 40 + ATTR_SIZE;
export const ATTR_OUT = 16 + ATTR_SIZE;
export const DIRENT_BASE = 24;

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  pid: number;
}

export function parseInHeader(b: Buffer): InHeader {
  return {
    len: b.readUInt32LE(0),
    opcode: b.readUInt32LE(4),
    unique: b.readBigUInt64LE(8),
    nodeid: b.readBigUInt64LE(16),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    pid: b.readUInt32LE(32),
  };
}

/** A reply: the out header (len, -errno, unique) followed by `body`. */
export function reply(unique: bigint, error: number, body?: Uint8Array): Buffer {
  const n = OUT_HEADER + (body?.length ?? 0);
  const b = Buffer.allocUnsafe(n);
  b.writeUInt32LE(n, 0);
  b.writeInt32LE(error === 0 ? 0 : -error, 4);
  b.writeBigUInt64LE(unique, 8);
  if (body) b.set(body, OUT_HEADER);
  return b;
}

/** What a reply's fuse_attr holds. `mode` includes the S_IF* type bits. */
export interface Attr {
  ino: number;
  size: number;
  blocks: number;
  atime: { sec: number; nsec: number };
  mtime: { sec: number; nsec: number };
  ctime: { sec: number; nsec: number };
  /** Birth time, when the file system keeps one (answered to statx only). */
  btime?: { sec: number; nsec: number };
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Kernel-encoded device number (new_encode_dev). */
  rdev: number;
  blksize: number;
}

/** The kernel's new_encode_dev: 12-bit major, 20-bit minor in one u32. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/**
 * The 32-bit words of a reply buffer, for the writers below: one typed-array store per field
 * instead of a Buffer write method call each (a READDIRPLUS entry has ~30 fields, and on a
 * fresh mount those calls ran interpreted: 6,769 entries' writes cost ~20 ms, ~8 ms so).
 * Buffers from Buffer.alloc/allocUnsafe start on an 8-byte boundary; replies are whole words.
 */
export function words(b: Buffer): Uint32Array {
  if (b.byteOffset % 4 !== 0) throw new Error('reply buffer not word-aligned');
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
}

/** A 64-bit little-endian integer at word `i`: whole numbers, negative ones as two's complement. */
function u64(u: Uint32Array, i: number, v: number): void {
  const hi = Math.floor(v / 0x100000000);
  u[i] = v - hi * 0x100000000;
  u[i + 1] = hi;
}

/** A fuse_attr at word `i`. */
function writeAttr(u: Uint32Array, i: number, a: Attr): void {
  u64(u, i, a.ino);
  u64(u, i + 2, a.size);
  u64(u, i + 4, a.blocks);
  // seconds are signed (times before 1970)
  u64(u, i + 6, a.atime.sec);
  u64(u, i + 8, a.mtime.sec);
  u64(u, i + 10, a.ctime.sec);
  u[i + 12] = a.atime.nsec;
  u[i + 13] = a.mtime.nsec;
  u[i + 14] = a.ctime.nsec;
  u[i + 15] = a.mode;
  u[i + 16] = Math.min(a.nlink, 0xffffffff);
  u[i + 17] = a.uid;
  u[i + 18] = a.gid;
  u[i + 19] = a.rdev;
  u[i + 20] = a.blksize;
  u[i + 21] = 0; // flags
}

/** Seconds and nanoseconds of a validity period (entry_valid, attr_valid). */
export interface Validity {
  sec: number;
  nsec: number;
}

/** fuse_entry_out at `at` of `b`. nodeid 0 (readdirplus) means "not looked up". */
/** A fuse_entry_out at byte `at` (a multiple of 8) of the buffer whose words are `u`; node id 0 and no attr: an entry the kernel does not keep. */
export function writeEntry(u: Uint32Array, at: number, nodeid: number, a: Attr | undefined, valid: Validity): void {
  const i = at >>> 2;
  u64(u, i, nodeid);
  u[i + 2] = 0; // generation
  u[i + 3] = 0;
  if (!a) {
    u.fill(0, i + 4, i + ENTRY_OUT / 4);
    return;
  }
  u64(u, i + 4, valid.sec); // entry_valid
  u64(u, i + 6, valid.sec); // attr_valid
  u[i + 8] = valid.nsec;
  u[i + 9] = valid.nsec;
  writeAttr(u, i + 10, a);
}

export function entryOut(nodeid: number, a: Attr, valid: Validity): Buffer {
  const b = Buffer.alloc(ENTRY_OUT);
  writeEntry(words(b), 0, nodeid, a, valid);
  return b;
}

export function attrOut(a: Attr, valid: Validity): Buffer {
  const b = Buffer.alloc(ATTR_OUT);
  const u = words(b);
  u64(u, 0, valid.sec);
  u[2] = valid.nsec;
  writeAttr(u, 4, a);
  return b;
}

export function openOut(fh: number, flags: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(fh), 0);
  b.writeUInt32LE(flags, 8);
  return b;
}

/** Size of one fuse_dirent (plus = fuse_direntplus) for a name of `nameLen` bytes, 8-aligned. */
export function direntSize(nameLen: number, plus: boolean): number {
  return (plus ? ENTRY_OUT : 0) + ((DIRENT_BASE + nameLen + 7) & ~7);
}

/** Write a fuse_dirent at `at`: `off` is the cookie of the entry after it. Returns the next position. */
export function writeDirent(
  b: Buffer,
  u: Uint32Array,
  at: number,
  ino: number,
  off: number,
  dtype: number,
  name: Buffer,
): number {
  const i = at >>> 2;
  u64(u, i, ino);
  u64(u, i + 2, off);
  u[i + 4] = name.length;
  u[i + 5] = dtype;
  b.set(name, at + DIRENT_BASE);
  const end = at + ((DIRENT_BASE + name.length + 7) & ~7);
  for (let k = at + DIRENT_BASE + name.length; k < end; k++) b[k] = 0;
  return end;
}

export interface StatfsInfo {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

export function statfsOut(s: StatfsInfo): Buffer {
  const b = Buffer.alloc(80);
  b.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(s.blocks))), 0);
  b.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(s.bfree))), 8);
  b.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(s.bavail))), 16);
  b.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(s.files))), 24);
  b.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(s.ffree))), 32);
  b.writeUInt32LE(s.bsize, 40);
  b.writeUInt32LE(s.namelen, 44);
  b.writeUInt32LE(s.frsize, 48);
  return b;
}

/** fuse_init_out (64 bytes). */
export function initOut(o: {
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  timeGran: number;
  maxPages: number;
}): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  b.writeUInt32LE(o.minor, 4);
  b.writeUInt32LE(o.maxReadahead, 8);
  b.writeUInt32LE(o.flags >>> 0, 12);
  b.writeUInt16LE(o.maxBackground, 16);
  b.writeUInt16LE(o.congestionThreshold, 18);
  b.writeUInt32LE(o.maxWrite, 20);
  b.writeUInt32LE(o.timeGran, 24);
  b.writeUInt16LE(o.maxPages, 28);
  return b;
}

/** S_IF* type bits and DT_* directory-entry types, by file type. */
export const TYPE_BITS: Record<string, { ifmt: number; dt: number }> = {
  file: { ifmt: 0o100000, dt: 8 },
  dir: { ifmt: 0o040000, dt: 4 },
  symlink: { ifmt: 0o120000, dt: 10 },
  char: { ifmt: 0o020000, dt: 2 },
  block: { ifmt: 0o060000, dt: 6 },
  fifo: { ifmt: 0o010000, dt: 1 },
  socket: { ifmt: 0o140000, dt: 12 },
  unknown: { ifmt: 0o100000, dt: 0 },
};

/** statx mask bits (include/uapi/linux/stat.h). */
export const STATX_BASIC_STATS = 0x7ff;
export const STATX_BTIME = 0x800;

/**
 * fuse_statx_out (7.39): the attributes of fuse_attr plus the birth time when the node has
 * one (STATX_BTIME in the mask; without it the kernel reports no btime, as for a file
 * system that keeps none). 288 bytes: validity, flags, spare, then fuse_statx (256).
 */
export function statxOut(a: Attr, valid: Validity): Buffer {
  const b = Buffer.alloc(288);
  b.writeBigUInt64LE(BigInt(valid.sec), 0);
  b.writeUInt32LE(valid.nsec, 8);
  const s = 32; // fuse_statx
  b.writeUInt32LE(STATX_BASIC_STATS | (a.btime ? STATX_BTIME : 0), s);
  b.writeUInt32LE(a.blksize, s + 4);
  // attributes (u64) at s + 8 stay 0
  b.writeUInt32LE(Math.min(a.nlink, 0xffffffff) >>> 0, s + 16);
  b.writeUInt32LE(a.uid >>> 0, s + 20);
  b.writeUInt32LE(a.gid >>> 0, s + 24);
  b.writeUInt16LE(a.mode & 0xffff, s + 28);
  b.writeBigUInt64LE(BigInt(a.ino), s + 32);
  b.writeBigUInt64LE(BigInt(a.size), s + 40);
  b.writeBigUInt64LE(BigInt(a.blocks), s + 48);
  // attributes_mask (u64) at s + 56 stays 0
  const time = (at: number, t: { sec: number; nsec: number } | undefined) => {
    if (!t) return;
    b.writeBigInt64LE(BigInt(t.sec), at);
    b.writeUInt32LE(t.nsec, at + 8);
  };
  time(s + 64, a.atime);
  time(s + 80, a.btime);
  time(s + 96, a.ctime);
  time(s + 112, a.mtime);
  // the kernel's new_encode_dev, undone
  b.writeUInt32LE((a.rdev >>> 8) & 0xfff, s + 128);
  b.writeUInt32LE((a.rdev & 0xff) | ((a.rdev >>> 12) & 0xfff00), s + 132);
  return b;
}

/**
 * Read one request from /dev/fuse into `buf` (blocking): its length, or a string saying why
 * the connection ended ('unmounted' when the kernel ended it, ENODEV). Interrupted reads
 * (ENOENT: the request was interrupted before we read it; EINTR, EAGAIN) are retried.
 */
export function readRequest(fd: number, buf: Buffer): number | string {
  for (;;) {
    try {
      const n = readSync(fd, buf, 0, buf.length, null);
      return n > 0 ? n : 'unmounted';
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') continue;
      return code === 'ENODEV' ? 'unmounted' : `read /dev/fuse: ${(e as Error).message}`;
    }
  }
}
