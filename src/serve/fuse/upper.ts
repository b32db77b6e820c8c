import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as path from 'node:path';
import type { FileType } from '../../fs/types.js';
import type { Attrs, Change, ChangeSet } from '../../library/edit/changes.js';
import { StrataError } from '../../util/errors.js';

export const UPPER_FORMAT = 'strata-upper-1';

/** A name: the id of the directory node and the name in it. */
export type UpperLink = [number, string];

/**
 * One node of a writable mount's upper layer state: a node that changed, or a directory on
 * the way to one. Names are given twice, as they were in the version (`lowerLinks`, the
 * ones seen) and as they are now (`links`; empty: deleted).
 */
export interface UpperNode {
  id: number;
  type: FileType;
  /** It comes from the version (false: made on the mount). */
  lower: boolean;
  lowerLinks: UpperLink[];
  links: UpperLink[];
  /** New bytes: a file of the upper folder (relative path) and its size. */
  content?: string;
  size?: number;
  /** A new symlink's target. */
  target?: string;
  /** Only what changed (all of them for new nodes). Times in seconds since the epoch. */
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  atime?: number;
  /** Changed xattrs: base64 value, null = removed. */
  xattrs?: Record<string, string | null>;
}

export interface UpperState {
  format: typeof UPPER_FORMAT;
  /** The id of the root directory. */
  root: number;
  /** Bytes held by the upper folder's files. */
  used: number;
  nodes: UpperNode[];
  /** Echo of a `strata commit` request (the server saved on its asking). */
  nonce?: string;
}

/** Check a parsed state file's shape (it is read back from disk). */
export function checkUpperState(x: unknown, file: string): UpperState {
  const bad = (why: string) => new StrataError('CORRUPT', why, { file, structure: 'upper layer state' });
  const s = x as UpperState;
  if (!s || typeof s !== 'object' || s.format !== UPPER_FORMAT || !Array.isArray(s.nodes)) {
    throw bad(`not a ${UPPER_FORMAT} state`);
  }
  const isLink = (l: unknown) =>
    Array.isArray(l) && l.length === 2 && Number.isSafeInteger(l[0]) && typeof l[1] === 'string' && l[1] !== '';
  for (const n of s.nodes) {
    if (!Number.isSafeInteger(n?.id) || typeof n.type !== 'string') throw bad('a node without id or type');
    if (!Array.isArray(n.links) || !n.links.every(isLink)) throw bad(`node ${n.id}: bad links`);
    if (!Array.isArray(n.lowerLinks) || !n.lowerLinks.every(isLink)) throw bad(`node ${n.id}: bad lowerLinks`);
    for (const [, name] of [...n.links, ...n.lowerLinks]) {
      if (name.includes('/') || name === '.' || name === '..')
        throw bad(`node ${n.id}: bad name ${JSON.stringify(name)}`);
    }
    if (
      n.content !== undefined &&
      (typeof n.content !== 'string' || n.content.startsWith('..') || path.isAbsolute(n.content))
    ) {
      throw bad(`node ${n.id}: content outside the upper folder`);
    }
  }
  return s;
}

interface Op {
  kind: 'rm' | 'move' | 'create' | 'link';
  node: UpperNode;
  /** rm/move: the name it has now (updated as the plan goes) ... */
  from?: UpperLink;
  /** ... move/create/link: the name it gets. */
  to?: UpperLink;
  done?: boolean;
}

/**
 * The change set of a writable mount's upper layer: a minimal, ordered list of operations
 * that turns the version into what the mount shows. Deletions come before re-creations,
 * parents before children; a directory deleted with all it held is one recursive `rm`; a
 * file replaced by a new one at its path is one `put`; renames stay renames (a renamed
 * folder is one operation whatever it holds), and a cycle of renames (a swap) goes through
 * a temporary name. Contents are files of the upper folder `upperDir`.
 */
export function upperToChangeSet(state: UpperState, upperDir: string, message?: string): ChangeSet {
  const byId = new Map<number, UpperNode>();
  for (const n of state.nodes) byId.set(n.id, n);
  const rootId = state.root;
  const same = (a: UpperLink, b: UpperLink) => a[0] === b[0] && a[1] === b[1];

  // the model: where each node is during the plan (starts as in the version)
  const cur = new Map<number, UpperLink[]>();
  const kids = new Map<number, Map<string, number>>();
  const kidsOf = (id: number) => {
    let m = kids.get(id);
    if (!m) {
      m = new Map();
      kids.set(id, m);
    }
    return m;
  };
  for (const n of state.nodes) {
    cur.set(
      n.id,
      n.lowerLinks.map((l) => [...l] as UpperLink),
    );
    for (const [p, name] of n.lowerLinks) kidsOf(p).set(name, n.id);
  }
  const present = (id: number) => id === rootId || (cur.get(id)?.length ?? 0) > 0;
  const pathOf = (id: number, depth = 0): string => {
    if (id === rootId) return '/';
    const l = cur.get(id)?.[0];
    if (!l || depth > 4096)
      throw new StrataError('CORRUPT', `node ${id} has no place in the tree`, { structure: 'upper layer state' });
    const p = pathOf(l[0], depth + 1);
    return p === '/' ? `/${l[1]}` : `${p}/${l[1]}`;
  };
  const at = (l: UpperLink) => {
    const p = pathOf(l[0]);
    return p === '/' ? `/${l[1]}` : `${p}/${l[1]}`;
  };
  const finalPathOf = (id: number, depth = 0): string => {
    if (id === rootId) return '/';
    const l = byId.get(id)?.links[0];
    if (!l || depth > 4096)
      throw new StrataError('CORRUPT', `node ${id} has no place in the tree`, { structure: 'upper layer state' });
    const p = finalPathOf(l[0], depth + 1);
    return p === '/' ? `/${l[1]}` : `${p}/${l[1]}`;
  };
  /** Is `anc` `id` or one of its ancestors now? */
  const under = (id: number, anc: number): boolean => {
    for (let x = id, i = 0; i < 4096; i++) {
      if (x === anc) return true;
      if (x === rootId) return false;
      const l = cur.get(x)?.[0];
      if (!l) return false;
      x = l[0];
    }
    return false;
  };
  const unplace = (id: number, l: UpperLink) => {
    const ls = cur.get(id) ?? [];
    const i = ls.findIndex((x) => same(x, l));
    if (i >= 0) ls.splice(i, 1);
    if (kids.get(l[0])?.get(l[1]) === id) kids.get(l[0])?.delete(l[1]);
  };
  const place = (id: number, l: UpperLink) => {
    const ls = cur.get(id) ?? [];
    ls.push([...l] as UpperLink);
    cur.set(id, ls);
    kidsOf(l[0]).set(l[1], id);
  };
  const dropTree = (id: number) => {
    for (const [name, k] of [...(kids.get(id) ?? [])]) {
      unplace(k, [id, name]);
      if (!present(k)) dropTree(k);
    }
  };

  // what must happen to each node's names
  const ops: Op[] = [];
  const changes: Change[] = [];
  for (const n of state.nodes) {
    if (n.id === rootId) continue;
    const dels = n.lowerLinks.filter((l) => !n.links.some((x) => same(x, l)));
    const adds = n.links.filter((l) => !n.lowerLinks.some((x) => same(x, l)));
    if (!n.lower) {
      for (const [i, l] of adds.entries()) ops.push({ kind: i === 0 ? 'create' : 'link', node: n, to: l });
      continue;
    }
    const pairs = Math.min(dels.length, adds.length);
    for (let i = 0; i < pairs; i++) ops.push({ kind: 'move', node: n, from: dels[i], to: adds[i] });
    for (let i = pairs; i < dels.length; i++) ops.push({ kind: 'rm', node: n, from: dels[i] });
    for (let i = pairs; i < adds.length; i++) ops.push({ kind: 'link', node: n, to: adds[i] });
  }
  // an old file whose name a new file takes: the new file's put replaces it, no rm
  for (const r of ops) {
    if (r.kind !== 'rm' || r.node.type === 'dir') continue;
    const l = r.from as UpperLink;
    if (ops.some((c) => c.kind === 'create' && c.node.type === 'file' && same(c.to as UpperLink, l))) r.done = true;
  }
  const pending = (id: number) => ops.some((o) => !o.done && o.node.id === id && o.kind !== 'rm');
  const attrsOf = (n: UpperNode): Attrs => {
    const a: Attrs = {};
    if (n.mode !== undefined) a.mode = n.mode;
    if (n.uid !== undefined) a.uid = n.uid;
    if (n.gid !== undefined) a.gid = n.gid;
    if (n.mtime !== undefined) a.mtime = n.mtime;
    if (n.atime !== undefined) a.atime = n.atime;
    return a;
  };
  const contentOf = (n: UpperNode) => {
    if (n.content === undefined) {
      throw new StrataError('CORRUPT', `new file (node ${n.id}) has no content`, { structure: 'upper layer state' });
    }
    return { kind: 'file' as const, path: path.join(upperDir, n.content) };
  };

  /** Can `o` happen now? */
  const ready = (o: Op): boolean => {
    if (o.kind === 'rm') {
      const [p, name] = o.from as UpperLink;
      if (kids.get(p)?.get(name) !== o.node.id) return true; // gone with an ancestor
      // a folder that goes as a whole takes this with it
      for (let x = p, i = 0; x !== rootId && i < 4096; i++) {
        if (ops.some((r) => r.kind === 'rm' && !r.done && r.node.id === x)) return false;
        const up = cur.get(x)?.[0];
        if (!up) break;
        x = up[0];
      }
      if (o.node.type !== 'dir') return !(pending(o.node.id) && (cur.get(o.node.id)?.length ?? 0) <= 1);
      // a directory goes when nothing in it still has somewhere to be
      const stack = [o.node.id];
      while (stack.length > 0) {
        const d = stack.pop() as number;
        for (const k of kids.get(d)?.values() ?? []) {
          const kn = byId.get(k);
          const outside = (cur.get(k) ?? []).some((l) => !under(l[0], o.node.id));
          if (kn && kn.links.length > 0 && !outside) return false;
          stack.push(k);
        }
      }
      return true;
    }
    const [p, name] = o.to as UpperLink;
    if (!present(p)) return false;
    const there = kids.get(p)?.get(name);
    if (there !== undefined) {
      // a new file over an old one that is going: one put replaces it
      const old = byId.get(there);
      const goes = old && old.type !== 'dir' && !old.links.some((l) => same(l, [p, name]));
      if (!(o.kind === 'create' && o.node.type === 'file' && goes)) return false;
    }
    if (o.kind === 'move' && o.node.type === 'dir' && under(p, o.node.id)) return false;
    if (o.kind === 'link' && !present(o.node.id)) return false;
    return true;
  };

  const run = (o: Op) => {
    const n = o.node;
    if (o.kind === 'rm') {
      const l = o.from as UpperLink;
      if (kids.get(l[0])?.get(l[1]) === n.id) {
        changes.push(n.type === 'dir' ? { op: 'rm', path: at(l), recursive: true } : { op: 'rm', path: at(l) });
        unplace(n.id, l);
        if (!present(n.id)) dropTree(n.id);
      }
    } else if (o.kind === 'move') {
      const from = o.from as UpperLink;
      const to = o.to as UpperLink;
      changes.push({ op: 'rename', path: at(from), to: at(to) });
      unplace(n.id, from);
      place(n.id, to);
    } else {
      const to = o.to as UpperLink;
      const there = kids.get(to[0])?.get(to[1]);
      if (there !== undefined) {
        // replaced by the put below: its rm is done by it
        unplace(there, to);
        for (const r of ops) if (r.kind === 'rm' && r.node.id === there && same(r.from as UpperLink, to)) r.done = true;
      }
      const p = at(to);
      if (o.kind === 'link') {
        const src = cur.get(n.id)?.[0] as UpperLink;
        changes.push({ op: 'link', path: p, target: at(src) });
      } else if (n.type === 'dir') {
        const { mtime: _t, atime: _a, ...a } = attrsOf(n);
        changes.push({ op: 'mkdir', path: p, ...a });
      } else if (n.type === 'symlink') {
        const { mode: _m, ...a } = attrsOf(n);
        changes.push({ op: 'symlink', path: p, target: n.target ?? '', ...a });
      } else if (n.type === 'file') changes.push({ op: 'put', path: p, content: contentOf(n), ...attrsOf(n) });
      else {
        throw new StrataError('UNSUPPORTED', `a new ${n.type} (${p}) cannot be part of a change set`, {
          structure: 'upper layer state',
        });
      }
      place(n.id, to);
    }
    o.done = true;
  };

  // structural phase: deletions first, then renames, then new names; a stuck cycle of
  // renames moves one of them aside under a temporary name
  const order = ['rm', 'move', 'create', 'link'] as const;
  const sortKey = (o: Op) => {
    try {
      if (!o.to) return at(o.from as UpperLink);
      const p = finalPathOf(o.to[0]);
      return p === '/' ? `/${o.to[1]}` : `${p}/${o.to[1]}`;
    } catch {
      return '';
    }
  };
  const byKind = order.map((k) => ops.filter((o) => o.kind === k).sort((a, b) => cmpPath(sortKey(a), sortKey(b))));
  let temp = 0;
  for (let guard = 0; guard < ops.length * 4 + 16; guard++) {
    let progressed = false;
    for (const list of byKind) {
      for (const o of list) {
        if (!o.done && ready(o)) {
          run(o);
          progressed = true;
          break;
        }
      }
      if (progressed) break;
    }
    if (progressed) continue;
    const left = ops.filter((o) => !o.done);
    if (left.length === 0) break;
    const stuck = left.find((o) => o.kind === 'move');
    if (!stuck) {
      throw new StrataError('CORRUPT', `cannot order the changes (${left.length} left, first ${left[0].kind})`, {
        structure: 'upper layer state',
      });
    }
    const from = stuck.from as UpperLink;
    let tmpName: string;
    do tmpName = `.strata-rename-${++temp}-${from[1]}`.slice(0, 255);
    while (kids.get(from[0])?.has(tmpName));
    const tmp: UpperLink = [from[0], tmpName];
    changes.push({ op: 'rename', path: at(from), to: at(tmp) });
    unplace(stuck.node.id, from);
    place(stuck.node.id, tmp);
    stuck.from = tmp;
  }
  if (ops.some((o) => !o.done)) {
    throw new StrataError('CORRUPT', 'cannot order the changes (no progress)', { structure: 'upper layer state' });
  }

  // contents, metadata and xattrs, parents before children
  const live = state.nodes.filter((n) => n.links.length > 0 || n.id === rootId);
  const finalPaths = new Map(live.map((n) => [n.id, finalPathOf(n.id)]));
  live.sort((a, b) => cmpPath(finalPaths.get(a.id) as string, finalPaths.get(b.id) as string));
  for (const n of live) {
    const p = finalPaths.get(n.id) as string;
    const a = attrsOf(n);
    if (n.lower) {
      if (n.content !== undefined && n.type === 'file') {
        changes.push({ op: 'put', path: p, content: contentOf(n), ...a });
        // other names of a hard-linked file get the new bytes too
        for (const l of n.links.slice(1)) {
          const q = at(l);
          changes.push({ op: 'rm', path: q }, { op: 'link', path: q, target: p });
        }
      } else if (Object.keys(a).length > 0) {
        if (n.type === 'symlink') delete a.mode;
        if (Object.keys(a).length > 0) changes.push({ op: 'setattr', path: p, ...a });
      }
    } else if (n.type === 'dir' && (n.mtime !== undefined || n.atime !== undefined)) {
      changes.push({
        op: 'setattr',
        path: p,
        ...(n.mtime !== undefined ? { mtime: n.mtime } : {}),
        ...(n.atime !== undefined ? { atime: n.atime } : {}),
      });
    }
    for (const [name, v] of Object.entries(n.xattrs ?? {})) {
      changes.push({ op: 'xattr', path: p, name, value: v === null ? null : Buffer.from(v, 'base64') });
    }
  }
  return message === undefined ? { changes } : { changes, message };
}

/** Paths in pre-order: a parent before its children, siblings by name. */
function cmpPath(a: string, b: string): number {
  const x = a.split('/');
  const y = b.split('/');
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  }
  return x.length - y.length;
}

/**
 * A digest of what a change set does (its operations in order, a file's content by the
 * sha256 of its bytes, not by where they lie; the message left out): two commits of an upper
 * folder that did not change between them have the same digest.
 */
export async function changeSetDigest(set: ChangeSet): Promise<string> {
  const h = createHash('sha256');
  for (const c of set.changes) {
    let content: unknown;
    if (c.op === 'put') {
      const src = c.content;
      if (src.kind === 'file') {
        const f = createHash('sha256');
        for await (const b of createReadStream(src.path)) f.update(b as Buffer);
        content = { sha256: f.digest('hex') };
      } else if (src.kind === 'bytes') content = { sha256: createHash('sha256').update(src.data).digest('hex') };
      else content = src;
    }
    const value = c.op === 'xattr' && c.value ? Buffer.from(c.value).toString('base64') : undefined;
    h.update(JSON.stringify({ ...c, ...(content ? { content } : {}), ...(value !== undefined ? { value } : {}) }));
    h.update('\n');
  }
  return h.digest('hex');
}
