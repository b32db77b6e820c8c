/**
 * A change set: what an edit, a writable mount's commit or a rebase does to a version's
 * files, as a list of operations applied in order. This is the contract between the
 * producers (the edit verbs, `strata commit` of a `mount --rw`, `strata rebase`) and the
 * writer that makes the new version's disk (the parent's disk with the file system changed
 * in place, every block the change does not need left identical).
 *
 * Paths are absolute inside the file system ('/etc/hostname'). Operations are applied in
 * order; a later operation sees the effect of an earlier one.
 * @module
 */

/** Where a new file's bytes come from. */
export type ContentSource =
  /** A file on the local disk (read when the change is applied). */
  | { kind: 'file'; path: string }
  /** Bytes held in memory (small contents: scripts, configuration). */
  | { kind: 'bytes'; data: Uint8Array }
  /**
   * A regular file of a stored library version (`ref` is "image@number", `part` the volume
   * when the version has several; `digest` and `size` are its file manifest's, so a reader
   * can check what it got). Read from the store when the change is applied: a rebase
   * carries A1's files without a copy. contentChunks (./content.ts) reads every kind.
   */
  | { kind: 'version'; ref: string; part?: string; path: string; digest?: string; size: number };

export interface Attrs {
  /** Permission bits and set-id/sticky bits (07777); the type comes from the operation. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch (fractions kept where the file system can). */
  mtime?: number;
  atime?: number;
}

export type Change =
  /** Create or replace a regular file (replacing keeps nothing of the old file but its path). */
  | ({ op: 'put'; path: string; content: ContentSource } & Attrs)
  /** Remove a file, symlink or device; a directory only with `recursive`. */
  | { op: 'rm'; path: string; recursive?: boolean }
  /** Create a directory (`parents`: also missing ancestors, and no error if it exists). */
  | ({ op: 'mkdir'; path: string; parents?: boolean } & Attrs)
  /** Create a symbolic link at `path` pointing at `target` (stored as given). */
  | ({ op: 'symlink'; path: string; target: string } & Attrs)
  /** Create a hard link at `path` to the existing `target` path. */
  | { op: 'link'; path: string; target: string }
  /** Rename (move) within the file system. */
  | { op: 'rename'; path: string; to: string }
  /** Change metadata of an existing entry (only the fields given). */
  | ({ op: 'setattr'; path: string } & Attrs)
  /** Set (value given) or remove (value null) one extended attribute. */
  | { op: 'xattr'; path: string; name: string; value: Uint8Array | null };

export interface ChangeSet {
  changes: Change[];
  /** What the new version's description says (shown by `strata log`). */
  message?: string;
}
