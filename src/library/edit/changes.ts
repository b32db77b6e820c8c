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
import { StrataError } from '../../util/errors.js';

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
  | { kind: 'version'; ref: string; part?: string; path: string; digest?: string; size: number }
  /**
   * Blobs of the library's store, in order, `size` bytes in all: what a client of the library
   * service uploaded as chunks first (POST /v1/chunks), so a big file is not in the edit's body.
   */
  | { kind: 'chunks'; chunks: string[]; size: number };

export interface Attrs {
  /** Permission bits and set-id/sticky bits (07777); the type comes from the operation. */
  mode?: number;
  uid?: number;
  gid?: number;
  /**
   * Seconds since the epoch. A fraction is kept where the file system can (ext4 inodes of
   * more than 128 bytes hold nanoseconds in their extra time fields); `mtimeNsec`/`atimeNsec`
   * (0..999,999,999), when given, are the exact nanoseconds and override the fraction (a
   * double cannot hold nanoseconds of today's times exactly).
   */
  mtime?: number;
  atime?: number;
  mtimeNsec?: number;
  atimeNsec?: number;
}

/** "SECONDS[.FRACTION]" as exact whole seconds and nanoseconds; undefined when it is not that. */
export function parseSeconds(s: string): { seconds: number; nsec: number } | undefined {
  const m = /^(-?\d{1,12})(?:\.(\d{1,9}))?$/.exec(s);
  if (!m) return undefined;
  const whole = Number(m[1]);
  const frac = m[2] ? Number(m[2].padEnd(9, '0')) : 0;
  // -1.25 is 1.25 s before the epoch: second -2, plus 0.75 s
  if (m[1].startsWith('-') && frac > 0) return { seconds: whole - 1, nsec: 1e9 - frac };
  return { seconds: whole, nsec: frac };
}

export type Change =
  /**
   * Create or replace a regular file (replacing keeps nothing of the old file but its path);
   * `parents`: make missing ancestor directories (root's, 0755) first.
   */
  | ({ op: 'put'; path: string; content: ContentSource; parents?: boolean } & Attrs)
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

/**
 * A change set as JSON for the library service (POST /v1/images/{name}/edits): contents
 * travel as base64 ({ kind: 'bytes', base64 }) or, uploaded first, as the digests of their
 * chunks ({ kind: 'chunks', chunks, size }), xattr values as base64 strings (null removes). A 'file' content (a path on the sender's disk) is read and sent as bytes by
 * toWire's caller; the server takes bytes only (a path or a version there would read what
 * the caller may not).
 */
export type WireChange = Record<string, unknown> & { op: string; path: string };

export function changeToWire(c: Change, data?: Uint8Array): WireChange {
  if (c.op === 'put' && c.content.kind === 'chunks') {
    return { ...c, content: { kind: 'chunks', chunks: c.content.chunks, size: c.content.size } };
  }
  if (c.op === 'put') {
    const bytes = c.content.kind === 'bytes' ? c.content.data : data;
    if (!bytes) throw new StrataError('USAGE', `put ${c.path}: its bytes must be read before they are sent`);
    return { ...c, content: { kind: 'bytes', base64: Buffer.from(bytes).toString('base64') } };
  }
  if (c.op === 'xattr') return { ...c, value: c.value === null ? null : Buffer.from(c.value).toString('base64') };
  return { ...c };
}

const WIRE_FIELDS: Record<string, string[]> = {
  put: ['path', 'content', 'parents', 'mode', 'uid', 'gid', 'mtime', 'atime', 'mtimeNsec', 'atimeNsec'],
  rm: ['path', 'recursive'],
  mkdir: ['path', 'parents', 'mode', 'uid', 'gid', 'mtime', 'atime', 'mtimeNsec', 'atimeNsec'],
  symlink: ['path', 'target', 'mode', 'uid', 'gid', 'mtime', 'atime', 'mtimeNsec', 'atimeNsec'],
  link: ['path', 'target'],
  rename: ['path', 'to'],
  setattr: ['path', 'mode', 'uid', 'gid', 'mtime', 'atime', 'mtimeNsec', 'atimeNsec'],
  xattr: ['path', 'name', 'value'],
};

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const DIGEST = /^[0-9a-f]{64}$/;

/** The server's side: a wire change back to a Change, every field checked for its type (plan.ts checks the values). */
export function changeFromWire(w: unknown, i: number): Change {
  const where = `change ${i + 1}`;
  if (!w || typeof w !== 'object' || Array.isArray(w)) throw new StrataError('USAGE', `${where} is not an object`);
  const o = w as Record<string, unknown>;
  const fields = typeof o.op === 'string' ? WIRE_FIELDS[o.op] : undefined;
  if (!fields) throw new StrataError('USAGE', `${where}: unknown operation ${JSON.stringify(o.op)}`);
  const out: Record<string, unknown> = { op: o.op };
  for (const [k, v] of Object.entries(o)) {
    if (k === 'op') continue;
    if (!fields.includes(k)) throw new StrataError('USAGE', `${where} (${o.op}): unknown field ${k}`);
    if (['path', 'target', 'to', 'name'].includes(k)) {
      if (typeof v !== 'string') throw new StrataError('USAGE', `${where} (${o.op}): ${k} is not a string`);
    } else if (['parents', 'recursive'].includes(k)) {
      if (typeof v !== 'boolean') throw new StrataError('USAGE', `${where} (${o.op}): ${k} is not a boolean`);
    } else if (k === 'content') {
      const c = v as Record<string, unknown> | null;
      if (c && c.kind === 'chunks') {
        if (
          !Array.isArray(c.chunks) ||
          !c.chunks.every((d) => typeof d === 'string' && DIGEST.test(d)) ||
          typeof c.size !== 'number' ||
          !Number.isSafeInteger(c.size) ||
          c.size < 0 ||
          Object.keys(c).some((x) => !['kind', 'chunks', 'size'].includes(x))
        )
          throw new StrataError(
            'USAGE',
            `${where} (put): content is not { kind: 'chunks', chunks: [sha256...], size }`,
          );
        out.content = { kind: 'chunks', chunks: [...(c.chunks as string[])], size: c.size };
        continue;
      }
      if (c?.kind !== 'bytes' || typeof c.base64 !== 'string' || !BASE64.test(c.base64))
        throw new StrataError(
          'USAGE',
          `${where} (put): content is not { kind: 'bytes', base64 } or { kind: 'chunks', chunks, size }`,
        );
      out.content = { kind: 'bytes', data: new Uint8Array(Buffer.from(c.base64, 'base64')) };
      continue;
    } else if (k === 'value') {
      if (v === null) out.value = null;
      else if (typeof v === 'string' && BASE64.test(v)) out.value = new Uint8Array(Buffer.from(v, 'base64'));
      else throw new StrataError('USAGE', `${where} (xattr): value is neither base64 nor null`);
      continue;
    } else if (typeof v !== 'number') throw new StrataError('USAGE', `${where} (${o.op}): ${k} is not a number`);
    out[k] = v;
  }
  if (typeof out.path !== 'string') throw new StrataError('USAGE', `${where} (${o.op}): no path`);
  if (o.op === 'put' && !out.content) throw new StrataError('USAGE', `${where} (put): no content`);
  if (o.op === 'xattr' && !('value' in out)) throw new StrataError('USAGE', `${where} (xattr): no value`);
  return out as unknown as Change;
}
