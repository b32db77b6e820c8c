/**
 * The serve layer's public surface: an NBD server (fixed newstyle, structured replies,
 * base:allocation block status) exporting images and library versions, read-only or with a
 * copy-on-write overlay.
 * @module
 */

export type { BufferPool } from '../util/buffer-pool.js';
// FUSE: a mount of an image's file system or a library version's file manifest
export {
  checkUpperState,
  FsTree,
  type FuseMountOptions,
  FuseSession,
  isWritable,
  ManifestTree,
  type MountChild,
  type MountNode,
  type MountTree,
  type OpenMountOptions,
  OverlayTree,
  openMountTree,
  type UpperState,
  upperToChangeSet,
  type WritableTree,
} from './fuse/index.js';
// the library service over HTTP, its typed client and its accounts
export {
  Access,
  buildServer,
  demoLibrary,
  encodeChunkRecords,
  type MemberRow,
  type Page,
  PROBLEM_TYPE,
  type Principal,
  type Problem,
  parseDuration,
  type RemoteCheckinOptions,
  type RemoteCheckinResult,
  type RemoteEditResult,
  RemoteError,
  type RemoteFileEntry,
  type RemoteImage,
  RemoteLibrary,
  RemoteSink,
  type RemoteVersion,
  type Role,
  type RunningServer,
  remoteCheckin,
  remoteCheckout,
  type Scope,
  type ServeOptions,
  startServer,
  type TokenRow,
  type Usage,
  type Visibility,
} from './http/index.js';
export type { Budget } from './nbd/budget.js';
export { type ExportCacheOptions, openExportCache } from './nbd/cache.js';
export type { ConnectionHost } from './nbd/connection.js';
export { type ExportWriter, type NbdExport, sourceExport } from './nbd/export.js';
export { type ImageExportOptions, openImageExport } from './nbd/image-export.js';
export {
  DEFAULT_LIBRARY_CACHE,
  type LibraryExportOptions,
  openLibraryExport,
  openVersionExport,
} from './nbd/library-export.js';
export { type ListenOptions, type NbdEndpoint, NbdServer, type NbdServerOptions } from './nbd/server.js';
export { type TraceRecord, TraceWriter } from './nbd/trace.js';
