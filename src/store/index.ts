/**
 * The store layer: a content-addressed, deduplicating, zstd-compressed blob store in packs
 * (restic's shape), over a Backend (a local directory today), with a repository lock.
 * @module
 */
export type { Backend, BackendEntry } from './backend.js';
export { LocalBackend } from './local-backend.js';
export { type LockKind, RepoLock } from './lock.js';
export type { BlobType } from './pack.js';
export { type IndexEntry, type PutResult, Store, sha256hex, type VerifyReport } from './store.js';
