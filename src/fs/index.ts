/**
 * The file-system layer: read-only file systems over a volume (ext2/3/4, FAT12/16/32, exFAT,
 * ISO 9660), opened by
 * probing the drivers of FS_DRIVERS, and path resolution and walks over any of them.
 * @module
 */
export { extDriver } from './ext/index.js';
export { exfatDriver, fatDriver } from './fat/index.js';
export { isoDriver } from './iso9660/index.js';
export { NtfsFileSystem, type NtfsOpenOptions, ntfsDriver } from './ntfs/index.js';
export {
  devicesOf,
  FS_DRIVERS,
  openFileSystem,
  openVolumeFileSystem,
  PROBE_BYTES,
  recognizeUnsupported,
} from './open.js';
export type {
  ByteRange,
  DirEntry,
  ExtentOptions,
  FileExtent,
  FileSystem,
  FileType,
  FsDriver,
  FsInfo,
  Inode,
  OwnedRange,
  Timestamp,
} from './types.js';
export {
  listDirectory,
  loadInodes,
  lookupName,
  MAX_SYMLINKS,
  type ResolveOptions,
  resolvePath,
  type WalkItem,
  type WalkOptions,
  walk,
} from './walk.js';
