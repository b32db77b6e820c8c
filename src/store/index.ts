/**
 * The store layer: a content-addressed, deduplicating, zstd-compressed blob store in packs
 * (restic's shape), over a Backend (a local directory today), with a repository lock.
 * @module
 */
export type { Backend, BackendEntry } from './backend.js';
export { HttpBackend, type HttpBackendOptions } from './http-backend.js';
export { LocalBackend } from './local-backend.js';
export { type LockKind, RepoLock } from './lock.js';
export type { BlobType } from './pack.js';
export {
  describeFinding,
  type IndexEntry,
  type PackFile,
  type PruneHooks,
  type PrunePlan,
  type PruneResult,
  type PruneStep,
  type PutResult,
  planPrune,
  Store,
  type StoreFinding,
  type StoreFindingKind,
  sha256hex,
  type VerifyReport,
} from './store.js';
