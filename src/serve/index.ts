/**
 * The serve layer's public surface: an NBD server (fixed newstyle, structured replies,
 * base:allocation block status) exporting images and library versions, read-only or with a
 * copy-on-write overlay.
 * @module
 */

// the library service over HTTP, its typed client and its accounts. Each name comes from
// the module that defines it, not ./http/index.js: the CLI's bundle loads what a name's
// line points at (scripts/bundle.mjs), and the client verbs (--remote) must not load
// fastify, ajv and the server's schemas (most of a remote check-in's start-up time).
export {
  Access,
  type Principal,
  parseDuration,
  type Role,
  type Scope,
  type TokenRow,
  type Visibility,
} from '../catalog/access.js';
export type { BufferPool } from '../util/buffer-pool.js';
// FUSE: a mount of an image's file system or a library version's file manifest
export {
  changeSetDigest,
  checkUpperState,
  FsTree,
  type FuseMountOptions,
  FuseSession,
  isWritable,
  type LocalChunkCache,
  ManifestTree,
  type MountChild,
  type MountNode,
  type MountTree,
  type OpenMountOptions,
  OverlayTree,
  openMountTree,
  openRemoteMountTree,
  type ReaderTree,
  type RemoteBlobStats,
  RemoteBlobs,
  type UpperState,
  upperToChangeSet,
  type WritableTree,
} from './fuse/index.js';
export {
  encodeChunkRecords,
  type MemberRow,
  type Page,
  type RemoteCheckinOptions,
  type RemoteCheckinResult,
  type RemoteEditResult,
  RemoteError,
  type RemoteFileEntry,
  type RemoteImage,
  RemoteLibrary,
  RemoteSink,
  type RemoteVersion,
  remoteCheckin,
  remoteCheckout,
  type Usage,
} from './http/client.js';
export { demoLibrary } from './http/demo.js';
export { PROBLEM_TYPE, type Problem } from './http/problem.js';
export { buildServer, type RunningServer, type ServeOptions, startServer } from './http/server.js';
export { keepServiceMemory, keptStats } from './keep-memory.js';
export type { Budget } from './nbd/budget.js';
export {
  type CacheReport,
  type ClassHits,
  type ExportCacheOptions,
  openExportCache,
  readCacheReport,
} from './nbd/cache.js';
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
