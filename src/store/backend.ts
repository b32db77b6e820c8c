/**
 * Where the store keeps its files: a tiny key/value interface (restic's backends), so an
 * S3-compatible object store can replace the local directory without touching the store.
 *
 * Keys are relative paths made of [a-z0-9/._-] ("packs/ab/ab12...", "index/..."). `put` is
 * atomic: a reader sees either nothing or the whole object, never a part of it.
 */
export interface BackendEntry {
  key: string;
  size: number;
  /** Last modification, ms since the epoch. */
  mtimeMs: number;
}

export interface BackendStream {
  size: number;
  body: AsyncIterable<Uint8Array>;
  /** Stop reading (the rest is not wanted). */
  cancel(): void;
}

export interface Backend {
  /** A human name for errors: the directory or bucket URL. */
  readonly name: string;
  /** Store `data` (the concatenation of the parts) under `key`, atomically (replaces an existing object). */
  put(key: string, data: Uint8Array | Uint8Array[]): Promise<void>;
  /** Store `data` under `key` only when nothing is there yet; false when something was. */
  putIfAbsent(key: string, data: Uint8Array): Promise<boolean>;
  /** The whole object; NOT_FOUND when absent. */
  get(key: string): Promise<Uint8Array>;
  /** `length` bytes at `offset` of the object (short only at its end). */
  getRange(key: string, offset: number, length: number): Promise<Uint8Array>;
  /** Optional: `out.length` bytes at `offset` into `out`; returns how many were read. */
  getRangeInto?(key: string, offset: number, out: Uint8Array): Promise<number>;
  /**
   * Optional: the whole object as it arrives (its size first, then its bytes in order), so a
   * cache can answer reads of its front before the rest is there. NOT_FOUND when absent.
   */
  getStream?(key: string): Promise<BackendStream>;
  /** Optional: remove leftovers of interrupted puts older than `ageMs` (local temporary files). */
  sweepTemporary?(ageMs: number): Promise<number>;
  /**
   * Optional: these objects will be read in this order soon (a checkout's packs): a remote
   * backend's cache may fetch them ahead of the reader. Replaces an earlier list.
   */
  prefetch?(keys: readonly string[]): void;
  /**
   * Optional: a listing of `prefix` kept from an earlier process (a cache's, see
   * cache-backend.ts Remembered), at most once; possibly stale. Undefined when there is none.
   */
  listRemembered?(prefix: string): BackendEntry[] | undefined;
  /** Every object whose key starts with `prefix` (e.g. "packs/"), in no particular order. */
  list(prefix: string): Promise<BackendEntry[]>;
  /** Remove an object; no error when it is already gone. */
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

const KEY = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/;

/** Keys come from our own code, but a hostile index could name anything: refuse odd ones. */
export function checkKey(key: string): boolean {
  return key.length <= 512 && KEY.test(key);
}
