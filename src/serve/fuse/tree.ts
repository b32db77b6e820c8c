import type { FileType, Inode, Timestamp } from '../../fs/types.js';
import type { PlusReply, PlusRequest } from './ext-plus.js';
import { type Attr, encodeDev, type StatfsInfo, TYPE_BITS } from './protocol.js';

/**
 * What a FUSE mount serves, whatever holds it: a file system read from an image, or a
 * library version's file manifest. A node is one file-system object; hard links are one
 * node (one key), so the kernel sees one inode with several names.
 */
export interface MountNode {
  /** The backend's key for the object: stable while the tree is open, equal for hard links. */
  key: number;
  type: FileType;
  attr: Attr;
}

export interface MountChild {
  name: string;
  key: number;
  type: FileType;
}

export interface MountTree {
  /** For messages and the mount's source column. */
  readonly name: string;
  /** The block size reads are cached in (a multiple of 4 KiB). */
  readonly readBlock: number;
  root(): Promise<MountNode>;
  /** The child called `name` of a directory, or undefined. */
  lookup(dir: MountNode, name: string): Promise<MountNode | undefined>;
  /** A directory's children (names that can be a path component only), in the backend's order. */
  list(dir: MountNode): Promise<MountChild[]>;
  /** Nodes of children listed by `list` (one batch). */
  nodes(dir: MountNode, children: readonly MountChild[]): Promise<MountNode[]>;
  /** File bytes [offset, offset+length) clipped to the size. */
  read(node: MountNode, offset: number, length: number): Promise<Uint8Array>;
  readlink(node: MountNode): Promise<Uint8Array>;
  xattrs(node: MountNode): Promise<Map<string, Uint8Array>>;
  statfs(): Promise<StatfsInfo>;
  close(): Promise<void>;
  /**
   * Trees whose keys are stable numbers the node can be found again by (an image's inode
   * numbers): a read-only mount then gives node ids derived from the keys, and may hand out
   * entries without keeping a node for each (found again by this when the kernel names one).
   */
  nodeByKey?(key: number): Promise<MountNode>;
  /** A READDIRPLUS reply at offset 0 built natively (ext images), or undefined: the session builds it. */
  plusReply?(dir: MountNode, req: PlusRequest): Promise<PlusReply | undefined>;
  /**
   * The same reply at once, from the directory's key alone (an ext image read straight from
   * its file), or undefined: plusReply or the session build it. `dir` may be a node the
   * session has not loaded (its key and type only).
   */
  plusReplyNow?(dir: MountNode, req: PlusRequest): PlusReply | undefined;
}

const ZERO: Timestamp = { sec: 0, nsec: 0 };
/** A timestamp the kernel takes: whole seconds, nanoseconds in [0, 1e9). Readers' own pass as they are (no copy per entry of a listing). */
function clampNs(t: Timestamp | undefined): Timestamp {
  if (!t) return ZERO;
  const { sec, nsec } = t;
  if (Number.isInteger(sec) && Number.isInteger(nsec) && nsec >= 0 && nsec <= 999_999_999) return t;
  return { sec: Math.trunc(sec), nsec: Math.min(999_999_999, Math.max(0, Math.trunc(nsec))) };
}

/**
 * An attr from inode facts (mode without type bits). `blksize` overrides `o.blksize`: a
 * reader's inode is passed as it is (a spread copy of it, raw bytes and all, was the most
 * expensive step of a READDIRPLUS reply).
 */
export function makeAttr(
  o: Pick<
    Inode,
    | 'ino'
    | 'type'
    | 'mode'
    | 'uid'
    | 'gid'
    | 'size'
    | 'nlink'
    | 'atime'
    | 'mtime'
    | 'ctime'
    | 'crtime'
    | 'rdev'
    | 'allocatedBytes'
  > & { blksize?: number },
  blksize?: number,
): Attr {
  const size = o.type === 'char' || o.type === 'block' || o.type === 'fifo' || o.type === 'socket' ? 0 : o.size;
  return {
    ino: o.ino,
    size,
    blocks: Math.ceil((o.allocatedBytes ?? size) / 512),
    atime: clampNs(o.atime),
    mtime: clampNs(o.mtime),
    ctime: clampNs(o.ctime),
    ...(o.crtime ? { btime: clampNs(o.crtime) } : {}),
    mode: (TYPE_BITS[o.type] ?? TYPE_BITS.unknown).ifmt | (o.mode & 0o7777),
    nlink: o.nlink,
    uid: o.uid,
    gid: o.gid,
    rdev: o.rdev && (o.type === 'char' || o.type === 'block') ? encodeDev(o.rdev.major, o.rdev.minor) : 0,
    blksize: blksize ?? o.blksize ?? 4096,
  };
}
