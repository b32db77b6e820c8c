import type { ByteSource } from '../io/byte-source.js';

/** File types, named as `ls --json` prints them. */
export type FileType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' | 'unknown';

/** A timestamp with nanoseconds: seconds since the epoch (may exceed 2^31) plus 0..999,999,999 ns. */
export interface Timestamp {
  sec: number;
  nsec: number;
}

/** An inode (or the file-system's equivalent record), enough for stat and ls -l. */
export interface Inode {
  /** The inode number or the file system's stable id for the object. */
  ino: number;
  type: FileType;
  /** Permission and special bits (07777), without the type bits. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  atime?: Timestamp;
  mtime?: Timestamp;
  ctime?: Timestamp;
  /** Birth time (ext4 and xfs v5 crtime, btrfs otime, NTFS and FAT creation): statx's btime. */
  crtime?: Timestamp;
  /** Device number for char/block nodes. */
  rdev?: { major: number; minor: number };
  /** File-system specific flags (ext inode flags, NTFS attributes ...), for stat. */
  flags?: number;
  /** Bytes the file occupies on the volume (allocated blocks). */
  allocatedBytes?: number;
  /** Owner and group as Windows SIDs ("S-1-5-32-544"), from an NTFS security descriptor. */
  ownerSid?: string;
  groupSid?: string;
}

/**
 * A directory's entries without an object per entry (NameListingBuilder in name-listing.ts
 * makes them): entry i is named by bytes [starts[i], starts[i + 1]) of `names`, the UTF-8
 * encoding of the name `readdirAll` gives it (so a name the reader decodes with replacement
 * characters is here as those characters' bytes), with inode `inos[i]` and type
 * `TYPE_OF_CODE[types[i]]` (name-listing.ts: the codes of ext's and XFS's file_type field).
 */
export interface NameListing {
  count: number;
  names: Uint8Array;
  starts: Uint32Array;
  inos: Float64Array;
  types: Uint8Array;
}

export interface DirEntry {
  /** One path component: never empty, never contains '/' or NUL, never '.' or '..'. */
  name: string;
  ino: number;
  /** Type from the directory entry when the file system records it, else from the inode. */
  type: FileType;
}

/**
 * Where a range of a file's bytes lives on the volume.
 * - Plain extent: file bytes [fileOffset, fileOffset+length) are volume bytes
 *   [volumeOffset, volumeOffset+length).
 * - `encoded` (compressed/inline-encoded): the disk bytes [volumeOffset, volumeOffset+diskLength)
 *   decode to the file range [fileOffset, fileOffset+length); the two lengths differ.
 * - `unwritten`: allocated but reads as zeros (ext4 uninitialized, preallocated).
 * - `inline`: the data lives inside metadata (ext4 inline_data, NTFS resident); volumeOffset
 *   points at the bytes inside the metadata structure when known.
 * - `shared`: other files (reflinks, snapshots) may map the same disk bytes.
 * - `device`: (a file system over several devices, btrfs RAID) the bytes are not on this
 *   volume but on the device with this id, at `volumeOffset` there; read them through
 *   `read()`. Block maps, check-in and extract leave such an extent's volume range alone.
 * Holes are simply absent.
 */
/** What a caller of FileSystem.extents needs (see there). */
export interface ExtentOptions {
  /** false: `shared` is not wanted (default true). */
  shared?: boolean;
}

export interface FileExtent {
  fileOffset: number;
  length: number;
  volumeOffset: number;
  diskLength?: number;
  encoded?: string;
  unwritten?: boolean;
  inline?: boolean;
  shared?: boolean;
  device?: number;
}

/** A byte range of the volume and what owns it. */
export interface OwnedRange {
  offset: number;
  length: number;
  /** Structure kind: 'superblock', 'group-descriptors', 'block-bitmap', 'inode-bitmap', 'inode-table', 'journal', 'extent-tree', 'directory', 'xattr-block', ... */
  kind: string;
  /** e.g. 'group 3', 'inode 12'. */
  detail?: string;
  ino?: number;
  /**
   * For inode tables: the range holds inode records `first`, `first + 1`, ... each `size`
   * bytes long, the first at `offset`.
   */
  inodes?: { first: number; size: number };
}

/** A set of [offset, offset+length) ranges in ascending order, non-overlapping, merged. */
export interface ByteRange {
  offset: number;
  length: number;
}

export interface FsInfo {
  kind: string; // 'ext2' | 'ext3' | 'ext4' | 'xfs' | ...
  label?: string;
  uuid?: string;
  blockSize: number;
  totalBytes: number;
  freeBytes: number;
  totalInodes?: number;
  freeInodes?: number;
  features?: string[];
  /** Anything else from the superblock worth showing (created, mounted, state ...). */
  extra?: Record<string, unknown>;
}

/** A read-only file system over a volume. Every method fails with StrataError on bad input. */
export interface FileSystem {
  readonly kind: string;
  readonly blockSize: number;
  readonly volume: ByteSource;
  /** Non-fatal findings: checksum mismatches (naming the structure), needs_recovery, ... */
  readonly warnings: string[];
  info(): Promise<FsInfo>;
  root(): Promise<Inode>;
  /** Inode by number (ext), object id, ... */
  inode(ino: number): Promise<Inode>;
  /** Resolve an absolute path ("/etc/passwd"); follows symlinks in directories but not the last component. */
  lookup(path: string): Promise<Inode>;
  readdir(dir: Inode): AsyncIterable<DirEntry>;
  /**
   * Optional fast path: one name in a directory (undefined when absent). Readers with an
   * index or a name cache implement it; `resolvePath` falls back to scanning `readdir`.
   */
  lookupChild?(dir: Inode, name: string): Promise<DirEntry | undefined>;
  /**
   * Optional fast paths for walks over many entries: a whole directory, and many inodes, each
   * in one promise instead of one per entry (`listDirectory` and `loadInodes` fall back to
   * `readdir` and `inode`). Same results and errors as the one-at-a-time methods.
   */
  readdirAll?(dir: Inode): Promise<DirEntry[]>;
  /**
   * Optional fast path for names-only walks (`ls -R`): a whole directory as one NameListing,
   * names as UTF-8 bytes in one buffer, no object or string per entry. Same entries, order,
   * types and errors as `readdirAll` (`listNames` in walk.ts falls back to it).
   */
  readdirNames?(dir: Inode): Promise<NameListing>;
  inodes?(inos: readonly number[]): Promise<Inode[]>;
  read(file: Inode, offset: number, length: number): Promise<Uint8Array>;
  readlink(link: Inode): Promise<string>;
  xattrs(file: Inode): Promise<Map<string, Uint8Array>>;
  /**
   * The file's extents by file offset. `opts.shared === false` says the caller ignores
   * `shared`: a reader may then skip the reference lookups it costs (btrfs searches the
   * extent tree for every data extent; XFS the refcount B+tree of a reflinked file), and
   * leaves `shared` unset. Extract and check-in pass it; stat and the block map do not.
   */
  extents(file: Inode, opts?: ExtentOptions): AsyncIterable<FileExtent>;
  /**
   * Optional: what `extents` yields, as an array, when the reader has it at hand without I/O
   * (no awaits: a walk over many small files spends less on promises); undefined otherwise,
   * and then the caller uses `extents`. Throws what `extents` would for a bad map.
   */
  extentsNow?(file: Inode): FileExtent[] | undefined;
  /** The volume's in-use byte ranges (metadata + file data), merged, ascending. */
  allocation(): Promise<ByteRange[]>;
  /** Metadata structures and the bytes they own. */
  metadataRegions(): AsyncIterable<OwnedRange>;
  /**
   * Optional, for file systems holding several trees (btrfs subvolumes and snapshots): the
   * trees there are, and another view of this file system with one of them (by id or path,
   * as `subvolumes()` lists them) as `/`. The view shares this one's volume and caches; it
   * needs no close of its own. Inspect uses them to honour fstab's `subvol=`.
   */
  subvolumes?(): Promise<SubvolumeInfo[]>;
  withSubvolume?(nameOrId: string | number): Promise<FileSystem>;
  close?(): Promise<void>;
}

/** One tree of a file system with several (a btrfs subvolume or snapshot). */
export interface SubvolumeInfo {
  id: number;
  /** Path from the top level ('/' for the top level itself). */
  path: string;
  readOnly: boolean;
  /** Whether this is the tree the file system presents as `/`. */
  current: boolean;
}

/**
 * How a file system is opened: `subvol` names the btrfs subvolume to present as `/` (path or
 * id); `devices` are the other devices of a file system over several (btrfs RAID: the volume
 * opened is one of them, these the rest, in any order).
 */
export interface FsOpenOptions {
  subvol?: string;
  devices?: ByteSource[];
  /**
   * Bytes the driver's metadata block cache may hold (default: its share of the memory
   * budget). A hint, not a choice of what is read: a driver without such a cache ignores it.
   * A check-in's walk reads each directory block once, so it sets a small one (issue 22).
   */
  metadataCacheBytes?: number;
  /**
   * Bytes the driver's inode-table cache may hold (default: its share of the memory budget).
   * A hint like metadataCacheBytes: a check-in's walk reads each inode once, in table order
   * within a directory, so it sets a small one (issue 22).
   */
  inodeCacheBytes?: number;
}

/** A file-system driver: detect by content and open. */
export interface FsDriver {
  readonly kind: string;
  /** `head` is at least the first 128 KiB of the volume (or all of it if smaller). */
  probe(head: Uint8Array, size: number): boolean;
  /** The FsOpenOptions this driver honours (others given are a USAGE error, see openFileSystem). */
  readonly options?: ReadonlyArray<keyof FsOpenOptions>;
  open(volume: ByteSource, options?: FsOpenOptions): Promise<FileSystem>;
}
