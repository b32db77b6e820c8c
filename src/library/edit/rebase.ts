/**
 * `strata rebase REF --from A0 --to A1`: carry a base image's update (A0 -> A1) into a
 * version derived from A0 (REF), as a three-way merge of file manifests. Every path A1
 * changed is compared with what REF did to it:
 * - REF left it as A0 had it: A1's change is taken;
 * - both made the same change: nothing to do;
 * - both changed it differently: a conflict (content, delete, type, metadata, add), unless
 *   the two changes touch different fields (A1 changed the content, REF the mode: both kept).
 * Conflicts stop the rebase unless `take` (per path or package) or `prefer` says whose side wins; nothing is overwritten
 * silently. Package databases get a finer merge: dpkg's status file (and apt's
 * extended_states) stanza by stanza, a stanza both sides changed differently being a
 * conflict that names the package; /var/lib/dpkg/info/PKG.* files follow their package's
 * stanza; log files both sides only appended to get both appends. An rpm database (binary)
 * is taken as files from the side that changed it; changed on both sides it is one conflict
 * naming the packages each side changed, and its whole folder follows the decision.
 *
 * The plan is a ChangeSet (./changes.ts) that turns REF's files into the merged ones; the
 * writer (applyChanges) makes the new version with parents [REF, A1].
 * @module
 */
import { createHash } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { StrataError } from '../../util/errors.js';
import type { Library } from '../library.js';
import { fileContent, layoutFiles } from '../library-verbs.js';
import type { FileEntry, FilesManifest } from '../manifest.js';
import type { Attrs, Change, ChangeSet } from './changes.js';
import { contentChunks } from './content.js';

export type Side = 'base' | 'theirs' | 'ours';

/** One explicit decision: `--take ours|theirs PATH` or a line of a resolution file. */
export interface Take {
  side: 'ours' | 'theirs';
  /** An absolute path, or "package:NAME". */
  path: string;
}

/**
 * A resolution file: one decision a line, "ours PATH", "theirs PATH" or "theirs
 * package:NAME"; '#' starts a comment. (`strata rebase --dry-run` prints one to start from.)
 */
export function parseResolutions(text: string, file = '<resolutions>'): Take[] {
  const out: Take[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (line === '') return;
    const m = /^(ours|theirs)\s+(\S.*)$/.exec(line);
    if (!m || !(m[2].startsWith('/') || /^package:\S+$/.test(m[2])))
      throw new StrataError(
        'USAGE',
        `${file}:${i + 1}: want "ours PATH", "theirs PATH" or "SIDE package:NAME", not ${JSON.stringify(raw)}`,
        {
          file,
        },
      );
    out.push({ side: m[1] as 'ours' | 'theirs', path: m[2] });
  });
  return out;
}

/** What one side holds at a path, as a conflict shows it. */
export interface SideState {
  type: string;
  size?: number;
  digest?: string;
  target?: string;
  mode?: number;
  uid?: number;
  gid?: number;
}

export interface Conflict {
  path: string;
  /**
   * content: both changed a file's bytes (or a link's target) differently; delete: one side
   * removed what the other changed (or put something inside); type: both changed the type
   * differently; add: both added the path differently; metadata: both changed the same
   * field differently (`fields`); package: both changed one package database stanza
   * differently (`package`); unsupported: A1's change needs an operation a change set lacks.
   */
  kind: 'content' | 'delete' | 'type' | 'add' | 'metadata' | 'package' | 'unsupported';
  package?: string;
  /** An rpm database both sides changed: the packages whose records differ (name.arch). */
  packages?: string[];
  fields?: string[];
  detail?: string;
  base: SideState;
  ours: SideState;
  theirs: SideState;
  /** Set when `prefer` decided it. */
  resolution?: 'ours' | 'theirs';
}

export interface MergedFile {
  path: string;
  how: 'package-stanzas' | 'append';
  /** The packages (stanzas) taken from A1. */
  fromTheirs?: string[];
}

export interface RebasePlan {
  changeSet: ChangeSet;
  /** Every conflict found; those without `resolution` stop the rebase. */
  conflicts: Conflict[];
  merged: MergedFile[];
  summary: {
    theirsChanged: number;
    taken: number;
    same: number;
    oursKept: number;
    conflicts: number;
    unresolved: number;
  };
}

export interface PlanInput {
  base: FilesManifest;
  theirs: FilesManifest;
  ours: FilesManifest;
  /** How A1's files are named in the change set: the ref of A1 (and its volume). */
  theirsRef: string;
  theirsPart?: string;
  /** Whose side a conflict takes; none: conflicts stay unresolved. */
  prefer?: 'ours' | 'theirs';
  /**
   * Per-conflict decisions, before `prefer`: a path decides the conflict at that path and
   * those under it (a directory); "package:NAME" decides that package's stanza conflicts
   * (and its info files). One naming no path of the three trees nor a package conflict is an error (a typo must not pass).
   */
  take?: Take[];
  /** The bytes of a regular file of one side (package databases and logs are merged from them). */
  read(side: Side, e: FileEntry): Promise<Uint8Array>;
}

const DPKG_STATUS = '/var/lib/dpkg/status';
const STANZA_FILES = new Set([DPKG_STATUS, '/var/lib/apt/extended_states']);
const DPKG_INFO = '/var/lib/dpkg/info/';
/** dpkg's backup of the status before its last run: never read for state; REF's is kept. */
const BACKUPS = new Set(['/var/lib/dpkg/status-old', '/var/lib/apt/extended_states.old']);
const MERGE_LIMIT = 256 * 1024 * 1024;
/**
 * rpm's database folders and the file in each that holds the package headers (sqlite since
 * rpm 4.16, Berkeley DB before). The other files there (indexes, -wal, -shm, locks) go with
 * it: a binary database is taken whole from one side, never merged record by record.
 */
const RPM_DIRS = ['/var/lib/rpm/', '/usr/lib/sysimage/rpm/'];
const RPM_MAIN = ['rpmdb.sqlite', 'Packages'];
const rpmDirOf = (p: string) => RPM_DIRS.find((d) => p.startsWith(d) && !p.slice(d.length).includes('/'));

const typeOf = (e: FileEntry | undefined) => e?.type ?? 'absent';

/** What "same content" means per type: bytes for files, target for links, device numbers for devices. */
function contentKey(e: FileEntry | undefined): string {
  if (!e) return 'absent';
  if (e.type === 'file') return `file:${e.size}:${e.digest ?? `none:${e.path}`}`;
  if (e.type === 'symlink') return `symlink:${e.target ?? ''}`;
  if (e.rdev) return `${e.type}:${e.rdev.major}:${e.rdev.minor}`;
  return e.type;
}

function xattrKey(x: Record<string, string> | undefined): string {
  if (!x) return '';
  const keys = Object.keys(x).sort();
  return keys.map((k) => `${k}=${createHash('sha256').update(Buffer.from(x[k], 'base64')).digest('hex')}`).join('\n');
}

const FIELDS = ['mode', 'uid', 'gid', 'xattrs'] as const;
type Field = (typeof FIELDS)[number];
const fieldKey = (e: FileEntry, f: Field): string => (f === 'xattrs' ? xattrKey(e.xattrs) : String(e[f]));

/** Equal in everything a rebase carries (type, content, mode, owner, xattrs, mtime). */
function sameEntry(a: FileEntry | undefined, b: FileEntry | undefined): boolean {
  if (!a || !b) return a === b;
  if (contentKey(a) !== contentKey(b)) return false;
  for (const f of FIELDS) if (fieldKey(a, f) !== fieldKey(b, f)) return false;
  return (a.mtime ?? null) === (b.mtime ?? null);
}

function state(e: FileEntry | undefined): SideState {
  if (!e) return { type: 'absent' };
  const s: SideState = { type: e.type, mode: e.mode, uid: e.uid, gid: e.gid };
  if (e.type === 'file') {
    s.size = e.size;
    if (e.digest) s.digest = e.digest;
  }
  if (e.target !== undefined) s.target = e.target;
  return s;
}

const parentOf = (p: string) => p.slice(0, Math.max(1, p.lastIndexOf('/')));
const depth = (p: string) => p.split('/').length;

/** A manifest's ISO time as whole seconds and exact nanoseconds (the fraction's digits, not a double's). */
function mtimeSeconds(s: string | null | undefined): { mtime: number; mtimeNsec: number } | undefined {
  if (!s) return undefined;
  const m = /^(.*?)(?:\.(\d{1,9})\d*)?Z$/.exec(s);
  const ms = Date.parse(m ? `${m[1]}Z` : s);
  if (Number.isNaN(ms)) return undefined;
  return { mtime: Math.floor(ms / 1000), mtimeNsec: m?.[2] ? Number(m[2].padEnd(9, '0')) : 0 };
}

/** The desired end state of one path: an entry (whose content comes from `from`), or absent. */
interface Want {
  entry: FileEntry | undefined;
  /** Whose bytes a regular file holds (theirs: read from A1; merged: `data`). */
  from: 'ours' | 'theirs' | 'merged';
  data?: Uint8Array;
}

/** One stanza of an RFC 822-like database (dpkg status, apt extended_states), keyed by package and architecture. */
interface Stanza {
  key: string;
  name: string;
  text: string;
}

function parseStanzas(text: string, file: string): Stanza[] {
  const out: Stanza[] = [];
  const seen = new Set<string>();
  for (const raw of text.split(/\n[ \t]*\n/)) {
    const t = raw.replace(/^\n+/, '').replace(/\n+$/, '');
    if (t.trim() === '') continue;
    const name = /^Package:[ \t]*(\S+)/im.exec(t)?.[1];
    if (!name) throw new StrataError('CORRUPT', `a stanza without a Package field`, { file, structure: 'stanza' });
    const arch = /^Architecture:[ \t]*(\S+)/im.exec(t)?.[1] ?? '';
    const key = `${name}:${arch}`;
    if (seen.has(key))
      throw new StrataError('CORRUPT', `package ${key} has two stanzas`, { file, structure: 'stanza' });
    seen.add(key);
    out.push({ key, name, text: t });
  }
  return out;
}

/** The package an info file belongs to: /var/lib/dpkg/info/NAME[:ARCH].EXT -> NAME. */
function infoPackage(p: string): string | undefined {
  if (!p.startsWith(DPKG_INFO)) return undefined;
  const base = p.slice(DPKG_INFO.length);
  if (base.includes('/')) return undefined;
  const dot = base.lastIndexOf('.');
  if (dot <= 0) return undefined;
  return base.slice(0, dot).split(':')[0];
}

const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Plans a rebase: the change set that turns `ours` (REF) into REF + diff(base, theirs),
 * and the conflicts. Pure but for `read` (package databases and logs); nothing is written.
 */
export async function planRebase(input: PlanInput): Promise<RebasePlan> {
  const index = (m: FilesManifest) => {
    const x = new Map<string, FileEntry>();
    for (const e of m.entries) if (e.path !== '/') x.set(e.path, e);
    return x;
  };
  const B = index(input.base);
  const T = index(input.theirs);
  const O = index(input.ours);
  const conflicts: Conflict[] = [];
  const merged: MergedFile[] = [];
  const wants = new Map<string, Want>();
  const summary = { theirsChanged: 0, taken: 0, same: 0, oursKept: 0, conflicts: 0, unresolved: 0 };
  /** A package's name -> how its stanza conflict is labelled ("libfoo:amd64"): its info files' conflicts follow that decision. */
  const pkgLabel = new Map<string, string>();
  const takes = new Map<string, Take & { used: boolean }>();
  for (const t of input.take ?? []) {
    if (t.side !== 'ours' && t.side !== 'theirs')
      throw new StrataError('USAGE', `--take ${t.side}: not ours or theirs`);
    const key = t.path.startsWith('package:') ? t.path : t.path.replace(/\/+$/, '') || '/';
    const had = takes.get(key);
    if (had && had.side !== t.side) throw new StrataError('USAGE', `${key} is taken from both sides`);
    takes.set(key, { ...t, used: false });
  }
  /** Whose side decides a conflict at `p` (of package `pkg`): the nearest --take, else `prefer`. */
  const preferAt = (p: string, pkgGiven?: string): 'ours' | 'theirs' | undefined => {
    // an info file of a package whose stanza conflicted follows that package's decision
    const pkg = pkgGiven ?? pkgLabel.get(infoPackage(p) ?? '');
    for (let q = p; ; q = parentOf(q)) {
      const t = takes.get(q);
      if (t) {
        t.used = true;
        return t.side;
      }
      if (q === '/') break;
    }
    if (pkg !== undefined) {
      const t = takes.get(`package:${pkg}`);
      if (t) {
        t.used = true;
        return t.side;
      }
    }
    return input.prefer;
  };

  const conflict = (c: Omit<Conflict, 'base' | 'ours' | 'theirs'>, p = c.path): Conflict => {
    const x: Conflict = { ...c, base: state(B.get(p)), ours: state(O.get(p)), theirs: state(T.get(p)) };
    const r = preferAt(c.path, c.package);
    if (r) x.resolution = r;
    conflicts.push(x);
    return x;
  };
  const takeTheirs = (p: string) => wants.set(p, { entry: T.get(p), from: 'theirs' });

  // paths A1 changed
  const changed: string[] = [];
  for (const [p, t] of T) if (!sameEntry(B.get(p), t)) changed.push(p);
  for (const p of B.keys()) if (!T.has(p)) changed.push(p);
  changed.sort();
  summary.theirsChanged = changed.length;

  // package databases both sides changed: merged stanza by stanza, their info files follow
  const pkgSource = new Map<string, 'same' | 'theirs' | 'mixed' | 'conflict'>();
  const deferred: string[] = [];
  for (const p of changed) {
    const b = B.get(p);
    const t = T.get(p);
    const o = O.get(p);
    if (sameEntry(b, o) || sameEntry(t, o)) continue;
    if (STANZA_FILES.has(p) && b?.type === 'file' && t?.type === 'file' && o?.type === 'file') {
      try {
        wants.set(p, await mergeStanzaFile(p, b, t, o));
      } catch (err) {
        if (!(err instanceof StrataError)) throw err;
        conflict({ path: p, kind: 'content', detail: `not merged by package: ${err.message}` });
        wants.set(p, preferAt(p) === 'theirs' ? { entry: t, from: 'theirs' } : { entry: o, from: 'ours' });
      }
    }
  }

  // rpm databases both sides changed: one conflict naming the packages, the folder follows it
  const rpmDecision = new Map<string, 'ours' | 'theirs' | undefined>();
  for (const dirPath of RPM_DIRS) {
    for (const main of RPM_MAIN) {
      const p = dirPath + main;
      const b = B.get(p);
      const t = T.get(p);
      const o = O.get(p);
      if (!t || !o || sameEntry(b, o) || sameEntry(t, o) || contentKey(t) === contentKey(o)) continue;
      if (t.type !== 'file' || o.type !== 'file' || (b && b.type !== 'file')) continue;
      const c = conflict({ path: p, kind: 'package', ...(await rpmPackages(p, main, b, t, o)) });
      rpmDecision.set(dirPath, c.resolution);
      if (c.resolution === 'theirs') takeTheirs(p);
    }
  }

  /** What each side did to the packages of an rpm database: the ones both changed differently, else every changed one. */
  async function rpmPackages(
    p: string,
    main: string,
    b: FileEntry | undefined,
    t: FileEntry,
    o: FileEntry,
  ): Promise<{ packages?: string[]; detail: string }> {
    const { readRpmBdb, readRpmSqlite } = await import('../../inspect/rpm-db.js');
    const list = async (side: Side, e: FileEntry | undefined) => {
      const m = new Map<string, string>();
      if (!e) return m;
      if (e.size > MERGE_LIMIT) throw new StrataError('LIMIT', `${p} (${e.size} B) is too large to read`, { file: p });
      const bytes = await input.read(side, e);
      const pkgs =
        main === 'Packages' ? readRpmBdb(bytes, `${p} (${side})`) : await readRpmSqlite(bytes, `${p} (${side})`);
      for (const x of pkgs) m.set(`${x.name}.${x.arch}`, `${x.epoch ? `${x.epoch}:` : ''}${x.version}-${x.release}`);
      return m;
    };
    let mb: Map<string, string>;
    let mt: Map<string, string>;
    let mo: Map<string, string>;
    try {
      [mb, mt, mo] = [await list('base', b), await list('theirs', t), await list('ours', o)];
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      return { detail: `both sides changed the rpm database; its packages could not be read: ${e.message}` };
    }
    const names = [...new Set([...mb.keys(), ...mt.keys(), ...mo.keys()])].sort();
    const show = (m: Map<string, string>, n: string) => m.get(n) ?? 'absent';
    const byTheirs = names.filter((n) => mt.get(n) !== mb.get(n));
    const byOurs = names.filter((n) => mo.get(n) !== mb.get(n));
    const both = byTheirs.filter((n) => byOurs.includes(n) && mt.get(n) !== mo.get(n));
    const say = (ns: string[]) =>
      ns.map((n) => `${n} ${show(mb, n)} -> ours ${show(mo, n)}, theirs ${show(mt, n)}`).join('; ');
    if (both.length > 0)
      return { packages: both, detail: `rpm database: both sides changed ${say(both)} (taken whole from one side)` };
    return {
      packages: [...new Set([...byTheirs, ...byOurs])].sort(),
      detail: `rpm database changed on both sides, not merged record by record (A1: ${byTheirs.join(', ') || 'no package'}; REF: ${byOurs.join(', ') || 'no package'}); taken whole from one side`,
    };
  }

  async function text(side: Side, e: FileEntry): Promise<string> {
    if (e.size > MERGE_LIMIT)
      throw new StrataError('LIMIT', `${e.path} (${e.size} B) is too large to merge`, { file: e.path });
    try {
      return decoder.decode(await input.read(side, e));
    } catch (err) {
      if (err instanceof TypeError)
        throw new StrataError('CORRUPT', `${e.path} of ${side} is not UTF-8 text`, { file: e.path });
      throw err;
    }
  }

  async function mergeStanzaFile(p: string, b: FileEntry, t: FileEntry, o: FileEntry): Promise<Want> {
    const sb = parseStanzas(await text('base', b), `${p} (base)`);
    const st = parseStanzas(await text('theirs', t), `${p} (theirs)`);
    const so = parseStanzas(await text('ours', o), `${p} (ours)`);
    const mb = new Map(sb.map((s) => [s.key, s]));
    const mt = new Map(st.map((s) => [s.key, s]));
    const mo = new Map(so.map((s) => [s.key, s]));
    const isStatus = p === DPKG_STATUS;
    const out: string[] = [];
    const fromTheirs: string[] = [];
    const decide = (key: string): Stanza | undefined => {
      const xb = mb.get(key)?.text;
      const xt = mt.get(key);
      const xo = mo.get(key);
      const name = (xt ?? xo ?? mb.get(key))?.name as string;
      let pick: 'ours' | 'theirs';
      if (xt?.text === xb || xt?.text === xo?.text) pick = 'ours';
      else if (xo?.text === xb) pick = 'theirs';
      else {
        pkgLabel.set(name, key.endsWith(':') ? name : key);
        conflict({
          path: p,
          kind: 'package',
          package: key.endsWith(':') ? name : key,
          detail: `${describeStanza(mb.get(key))} -> ours ${describeStanza(xo)}, theirs ${describeStanza(xt)}`,
        });
        if (isStatus) {
          pkgSource.set(name, 'conflict');
        }
        const pr = preferAt(p, key.endsWith(':') ? name : key);
        if (!pr) return xo;
        pick = pr;
      }
      if (isStatus && xt?.text !== xb) {
        // A1 changed this package: its info files follow the stanza taken (both sides' same
        // change: 'same', and info files that still differ are conflicts of their own)
        const now = pick === 'theirs' && xt?.text !== xo?.text ? 'theirs' : 'same';
        const prev = pkgSource.get(name);
        pkgSource.set(name, prev === undefined || prev === now ? now : 'mixed');
      }
      if (pick === 'theirs' && xt?.text !== xo?.text) fromTheirs.push(key.endsWith(':') ? name : key);
      return pick === 'theirs' ? xt : xo;
    };
    // REF's order; the stanzas only A1 has after them, in A1's order
    for (const s of so) {
      const d = decide(s.key);
      if (d) out.push(d.text);
    }
    for (const s of st) {
      if (mo.has(s.key)) continue;
      const d = decide(s.key);
      if (d) out.push(d.text);
    }
    for (const s of sb) if (!mo.has(s.key) && !mt.has(s.key)) decide(s.key);
    merged.push({ path: p, how: 'package-stanzas', fromTheirs });
    const data = new TextEncoder().encode(out.length > 0 ? `${out.join('\n\n')}\n` : '');
    return { entry: { ...o, size: data.length, digest: undefined }, from: 'merged', data };
  }

  for (const p of changed) {
    if (wants.has(p)) continue; // merged above
    const rpmDir = rpmDirOf(p);
    if (rpmDir !== undefined && rpmDecision.has(rpmDir)) {
      // part of the rpm database's conflict (listed once, by its main file)
      if (rpmDecision.get(rpmDir) === 'theirs') takeTheirs(p);
      continue;
    }
    const b = B.get(p);
    const t = T.get(p);
    const o = O.get(p);
    if (sameEntry(b, o)) {
      takeTheirs(p);
      summary.taken++;
      continue;
    }
    if (sameEntry(t, o)) {
      summary.same++;
      continue;
    }
    const pkg = infoPackage(p);
    const src = pkg === undefined ? undefined : pkgSource.get(pkg);
    if (src === 'theirs') {
      takeTheirs(p);
      continue;
    }
    if (src === 'conflict') {
      // part of the package's conflict (listed once, by the package)
      if (preferAt(p, pkg) === 'theirs') takeTheirs(p);
      continue;
    }
    if (BACKUPS.has(p)) {
      summary.oursKept++;
      continue;
    }
    deferred.push(p);
  }

  for (const p of deferred) {
    const b = B.get(p);
    const t = T.get(p);
    const o = O.get(p);
    const tt = typeOf(t);
    const to = typeOf(o);
    // logs both sides only appended to: base, then REF's lines, then A1's
    if (p.startsWith('/var/log/') && b?.type === 'file' && tt === 'file' && to === 'file') {
      const w = await appendMerge(b, t as FileEntry, o as FileEntry);
      if (w) {
        wants.set(p, w);
        merged.push({ path: p, how: 'append' });
        continue;
      }
    }
    if (tt !== to) {
      conflict({
        path: p,
        kind: typeOf(b) === 'absent' ? 'add' : tt === 'absent' || to === 'absent' ? 'delete' : 'type',
      });
      if (preferAt(p) === 'theirs') takeTheirs(p);
      continue;
    }
    // same type on both sides, field by field
    const e = t as FileEntry;
    const oe = o as FileEntry;
    const bothAdded = typeOf(b) === 'absent';
    const cb = contentKey(b);
    const ct = contentKey(e);
    const co = contentKey(oe);
    let contentFrom: 'ours' | 'theirs' = 'ours';
    let contentClash = false;
    if (ct !== co) {
      if (ct === cb) contentFrom = 'ours';
      else if (co === cb) contentFrom = 'theirs';
      else contentClash = true;
    }
    const clashes: Field[] = [];
    const want: FileEntry = { ...oe };
    for (const f of FIELDS) {
      const kb = b ? fieldKey(b, f) : undefined;
      const kt = fieldKey(e, f);
      const ko = fieldKey(oe, f);
      if (kt === ko || kt === kb) continue;
      if (ko === kb) (want as unknown as Record<string, unknown>)[f] = e[f];
      else clashes.push(f);
    }
    if (contentClash || clashes.length > 0) {
      conflict({
        path: p,
        kind: contentClash ? (bothAdded ? 'add' : 'content') : 'metadata',
        ...(clashes.length > 0 ? { fields: clashes } : {}),
      });
      if (preferAt(p) === 'theirs') takeTheirs(p);
      continue;
    }
    if (contentFrom === 'theirs') {
      want.size = e.size;
      want.digest = e.digest;
      want.chunks = e.chunks;
      want.target = e.target;
      want.rdev = e.rdev;
    }
    // mtime: whoever changed it; both: the side whose content is kept
    if (e.mtime !== oe.mtime && (oe.mtime === b?.mtime || contentFrom === 'theirs')) want.mtime = e.mtime;
    wants.set(p, { entry: want, from: contentFrom });
    summary.taken++;
  }

  async function appendMerge(b: FileEntry, t: FileEntry, o: FileEntry): Promise<Want | undefined> {
    if (b.size > MERGE_LIMIT || t.size > MERGE_LIMIT || o.size > MERGE_LIMIT) return undefined;
    const [xb, xt, xo] = [await input.read('base', b), await input.read('theirs', t), await input.read('ours', o)];
    const prefix = (x: Uint8Array) => x.length >= xb.length && Buffer.compare(x.subarray(0, xb.length), xb) === 0;
    if (!prefix(xt) || !prefix(xo)) return undefined;
    const data = Buffer.concat([xo, xt.subarray(xb.length)]);
    return { entry: { ...o, size: data.length, digest: undefined, mtime: t.mtime }, from: 'merged', data };
  }

  // structure: what A1 removes must not hold what REF put there; what A1 adds needs its directory
  const removedDirs = [...wants]
    .filter(([p, w]) => !w.entry && O.get(p)?.type === 'dir')
    .map(([p]) => p)
    .sort((x, y) => depth(x) - depth(y));
  const reported: string[] = [];
  for (const d of removedDirs) {
    const prefix = `${d}/`;
    const kept: string[] = [];
    for (const p of O.keys()) {
      if (!p.startsWith(prefix)) continue;
      const w = wants.get(p);
      if (!(w && !w.entry)) kept.push(p);
    }
    if (kept.length > 0) {
      // one conflict for the topmost directory; the ones inside it follow its resolution
      if (!reported.some((r) => d.startsWith(`${r}/`))) {
        reported.push(d);
        conflict({
          path: d,
          kind: 'delete',
          detail: `A1 removes the directory; REF holds ${kept.length} entries in it it does not remove: ${kept.slice(0, 5).join(', ')}${kept.length > 5 ? ' ...' : ''}`,
        });
      }
      const pr = preferAt(d);
      if (pr === 'ours') {
        // REF's directory as REF has it, nothing of A1's removals inside
        wants.delete(d);
        for (const p of [...wants.keys()]) if (p.startsWith(`${d}/`)) wants.delete(p);
      } else if (!pr) wants.delete(d);
    }
  }
  const exists = (p: string): boolean => {
    if (p === '/') return true;
    const w = wants.get(p);
    const e = w ? w.entry : O.get(p);
    return e?.type === 'dir';
  };
  const orphaned = new Set<string>();
  for (const [p, w] of [...wants].sort(([a], [b]) => depth(a) - depth(b))) {
    if (!w.entry || exists(parentOf(p))) continue;
    let top = parentOf(p);
    while (parentOf(top) !== '/' && !exists(parentOf(top))) top = parentOf(top);
    const again = orphaned.has(top);
    orphaned.add(top);
    if (!again)
      conflict(
        {
          path: top,
          kind: 'delete',
          detail: `A1 puts ${p} inside it; REF removed it or made it a ${typeOf(O.get(top))}`,
        },
        top,
      );
    if (preferAt(top) === 'theirs') {
      for (let q = parentOf(p); q !== '/' && !exists(q); q = parentOf(q)) {
        if (T.get(q)?.type === 'dir') wants.set(q, { entry: T.get(q), from: 'theirs' });
        else break;
      }
    } else wants.delete(p);
  }

  // the plan
  const theirsRef = input.theirsRef;
  const changes: Change[] = [];
  const attrsOf = (e: FileEntry): Attrs => {
    const a: Attrs = { mode: e.mode & 0o7777, uid: e.uid, gid: e.gid };
    const m = mtimeSeconds(e.mtime);
    if (m !== undefined) Object.assign(a, m);
    return a;
  };
  const removals: Array<{ path: string; recursive: boolean }> = [];
  const creations: Array<[string, Want]> = [];
  const updates: Array<[string, Want]> = [];
  for (const [p, w] of wants) {
    const o = O.get(p);
    const e = w.entry;
    if (!e) {
      if (o) removals.push({ path: p, recursive: o.type === 'dir' });
      continue;
    }
    if (!o || o.type !== e.type || (e.type === 'symlink' && o.target !== e.target) || contentKey(o) !== contentKey(e)) {
      if (o && (o.type !== e.type || e.type !== 'file')) removals.push({ path: p, recursive: o.type === 'dir' });
      creations.push([p, w]);
    } else updates.push([p, w]);
  }
  // deepest first; a directory whose entries are all removed one by one needs no recursion
  removals.sort((x, y) => depth(y.path) - depth(x.path) || (x.path < y.path ? -1 : 1));
  const removing = new Set(removals.map((r) => r.path));
  for (const r of removals) {
    if (r.recursive) {
      const prefix = `${r.path}/`;
      let rest = false;
      for (const p of O.keys()) if (p.startsWith(prefix) && !removing.has(p)) rest = true;
      r.recursive = rest;
    }
    changes.push(r.recursive ? { op: 'rm', path: r.path, recursive: true } : { op: 'rm', path: r.path });
  }
  creations.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const linked = new Map<number, string>();
  const dirTimes: Array<[string, { mtime: number; mtimeNsec: number }]> = [];
  for (const [p, w] of creations) {
    const e = w.entry as FileEntry;
    const a = attrsOf(e);
    if (e.type === 'dir') {
      changes.push({ op: 'mkdir', path: p, ...a });
      if (a.mtime !== undefined) dirTimes.push([p, { mtime: a.mtime, mtimeNsec: a.mtimeNsec ?? 0 }]);
    } else if (e.type === 'symlink') changes.push({ op: 'symlink', path: p, target: e.target ?? '', ...a });
    else if (e.type === 'file') {
      const first = w.from === 'theirs' && e.nlink > 1 ? linked.get(e.ino) : undefined;
      if (first !== undefined) {
        if (O.has(p)) changes.push({ op: 'rm', path: p });
        changes.push({ op: 'link', path: p, target: first });
        continue;
      }
      if (w.from === 'theirs' && e.nlink > 1) linked.set(e.ino, p);
      const content =
        w.from === 'merged'
          ? { kind: 'bytes' as const, data: w.data as Uint8Array }
          : {
              kind: 'version' as const,
              ref: theirsRef,
              ...(input.theirsPart !== undefined ? { part: input.theirsPart } : {}),
              path: p,
              ...(e.digest ? { digest: e.digest } : {}),
              size: e.size,
            };
      changes.push({ op: 'put', path: p, content, ...a });
    } else {
      conflict({ path: p, kind: 'unsupported', detail: `a change set cannot create a ${e.type}` });
      continue;
    }
    for (const [name, v] of Object.entries(e.xattrs ?? {}))
      changes.push({ op: 'xattr', path: p, name, value: new Uint8Array(Buffer.from(v, 'base64')) });
  }
  updates.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [p, w] of updates) {
    const e = w.entry as FileEntry;
    const o = O.get(p) as FileEntry;
    const set: Attrs = {};
    if ((e.mode & 0o7777) !== (o.mode & 0o7777)) set.mode = e.mode & 0o7777;
    if (e.uid !== o.uid) set.uid = e.uid;
    if (e.gid !== o.gid) set.gid = e.gid;
    const m = mtimeSeconds(e.mtime);
    if (e.mtime !== o.mtime && m !== undefined) {
      if (e.type === 'dir') dirTimes.push([p, m]);
      else Object.assign(set, m);
    }
    if (Object.keys(set).length > 0) changes.push({ op: 'setattr', path: p, ...set });
    const xe = e.xattrs ?? {};
    const xo = o.xattrs ?? {};
    for (const name of Object.keys(xo)) if (!(name in xe)) changes.push({ op: 'xattr', path: p, name, value: null });
    for (const [name, v] of Object.entries(xe)) {
      if (xo[name] !== undefined && xattrKey({ n: xo[name] }) === xattrKey({ n: v })) continue;
      changes.push({ op: 'xattr', path: p, name, value: new Uint8Array(Buffer.from(v, 'base64')) });
    }
  }
  // directory times last, deepest first: every entry put inside has been
  dirTimes.sort(([a], [b]) => depth(b) - depth(a));
  for (const [p, t] of dirTimes) changes.push({ op: 'setattr', path: p, ...t });

  conflicts.sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0));
  // a decision that names nothing of the three trees (nor a package conflict) is a typo; one
  // naming a path that stopped conflicting once another decision was made is not
  const unused = [...takes.values()].filter(
    (t) => !t.used && (t.path.startsWith('package:') || !(B.has(t.path) || T.has(t.path) || O.has(t.path))),
  );
  if (unused.length > 0)
    throw new StrataError(
      'USAGE',
      `--take ${unused[0].side} ${unused[0].path} names no conflict of this rebase (nor a path of REF, A0 or A1)${unused.length > 1 ? ` (nor do ${unused.length - 1} more)` : ''}; conflicts: ${conflicts.map((c) => (c.package ? `package:${c.package}` : c.path)).join(', ') || 'none'}`,
    );
  summary.conflicts = conflicts.length;
  summary.unresolved = conflicts.filter((c) => !c.resolution || c.kind === 'unsupported').length;
  for (const c of conflicts) if (c.kind === 'unsupported') delete c.resolution;
  return { changeSet: { changes }, conflicts, merged, summary };
}

function describeStanza(s: Stanza | undefined): string {
  if (!s) return 'absent';
  const v = /^Version:[ \t]*(\S+)/im.exec(s.text)?.[1];
  const st = /^Status:[ \t]*(.+)$/im.exec(s.text)?.[1];
  return [v, st && `(${st.trim()})`].filter(Boolean).join(' ') || 'present';
}

/** Writes the new version (default: applyChanges, with A1 as its second parent). */
export type ApplyChanges = (
  lib: Library,
  ref: string,
  changes: ChangeSet,
  opts: { alsoParents: string[]; message: string; address?: { part?: string } },
) => Promise<unknown>;

export interface RebaseOptions {
  /** The volume, when the versions have several file systems (the same in all three). */
  part?: string;
  prefer?: 'ours' | 'theirs';
  /** Per-conflict decisions (`--take SIDE PATH`, a resolution file); before `prefer`. */
  take?: Take[];
  message?: string;
  /** Plan only. */
  dryRun?: boolean;
  /** The writer (default applyChanges). */
  apply?: ApplyChanges;
  /** Where A1's files are copied for the writer (default: the OS's temporary folder). */
  workDir?: string;
}

export interface RebaseResult {
  ref: string;
  from: string;
  to: string;
  message: string;
  dryRun: boolean;
  plan: RebasePlan;
  /** What the writer returned (the new version), when it ran. */
  version?: unknown;
}

/** `strata rebase REF --from A0 --to A1` on a library: plan, and unless conflicts stop it or it is a dry run, write. */
export async function rebaseVersion(
  lib: Library,
  ref: string,
  from: string,
  to: string,
  opts: RebaseOptions = {},
): Promise<RebaseResult> {
  const vo = await lib.catalog.resolve(ref);
  const vb = await lib.catalog.resolve(from);
  const vt = await lib.catalog.resolve(to);
  const name = (v: { image: string; number: number }) => `${v.image}@${v.number}`;
  const [fo, fb, ft] = [
    await layoutFiles(lib, vo, await lib.layoutHead(vo.manifest), opts.part),
    await layoutFiles(lib, vb, await lib.layoutHead(vb.manifest), opts.part),
    await layoutFiles(lib, vt, await lib.layoutHead(vt.manifest), opts.part),
  ];
  if (fo.fsKind !== ft.fsKind || fb.fsKind !== ft.fsKind) {
    throw new StrataError(
      'USAGE',
      `rebase needs one kind of file system on all three (REF ${fo.fsKind}, A0 ${fb.fsKind}, A1 ${ft.fsKind})`,
    );
  }
  const bySide = { base: fb, theirs: ft, ours: fo };
  const plan = await planRebase({
    base: fb,
    theirs: ft,
    ours: fo,
    theirsRef: name(vt),
    ...(opts.part !== undefined ? { theirsPart: opts.part } : {}),
    ...(opts.prefer ? { prefer: opts.prefer } : {}),
    ...(opts.take ? { take: opts.take } : {}),
    async read(side, e) {
      const parts: Uint8Array[] = [];
      for await (const c of fileContent(lib, bySide[side], e)) parts.push(c);
      return Buffer.concat(parts);
    },
  });
  const message = opts.message ?? `rebase ${name(vo)} from ${name(vb)} onto ${name(vt)}`;
  plan.changeSet.message = message;
  const out: RebaseResult = {
    ref: name(vo),
    from: name(vb),
    to: name(vt),
    message,
    dryRun: Boolean(opts.dryRun),
    plan,
  };
  if (opts.dryRun || plan.summary.unresolved > 0 || plan.changeSet.changes.length === 0) return out;
  // A1's files as local files for the writer (it reads 'file' and 'bytes' contents)
  const work = await mkdtemp(path.join(opts.workDir ?? tmpdir(), 'strata-rebase-'));
  try {
    const changes = plan.changeSet.changes.slice();
    for (let i = 0; i < changes.length; i++) {
      const c = changes[i];
      if (c.op !== 'put' || c.content.kind !== 'version') continue;
      const local = path.join(work, `content-${i}`);
      const fh = await open(local, 'w');
      try {
        for await (const chunk of contentChunks(lib, c.content)) await fh.write(chunk);
      } finally {
        await fh.close();
      }
      changes[i] = { ...c, content: { kind: 'file', path: local } };
    }
    const apply: ApplyChanges =
      opts.apply ??
      (async (l, r, cs, o) =>
        (await import('./apply.js')).applyChanges(l, r, cs, {
          alsoParents: o.alsoParents,
          message: o.message,
          ...(o.address ? { address: o.address } : {}),
          ...(opts.workDir ? { workDir: opts.workDir } : {}),
        }));
    out.version = await apply(
      lib,
      name(vo),
      { changes, message },
      {
        alsoParents: [name(vt)],
        message,
        ...(opts.part !== undefined ? { address: { part: opts.part } } : {}),
      },
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return out;
}

/**
 * A rebase's result as JSON (what `strata rebase --json` prints and the service's
 * POST /v1/images/{name}/rebases answers): contents held in memory shown by their size, not
 * their bytes; `version` is what the writer returned, when it ran.
 */
export interface RebaseJson {
  ref: string;
  from: string;
  to: string;
  message: string;
  dryRun: boolean;
  summary: RebasePlan['summary'];
  conflicts: Conflict[];
  merged: MergedFile[];
  changes: unknown[];
  version?: unknown;
}

export function rebaseJson(r: RebaseResult, version: unknown = r.version): RebaseJson {
  const changes = r.plan.changeSet.changes.map((c) => {
    if (c.op === 'put' && c.content.kind === 'bytes')
      return { ...c, content: { kind: 'bytes', size: c.content.data.length } };
    if (c.op === 'xattr' && c.value) return { ...c, value: Buffer.from(c.value).toString('base64') };
    return c;
  });
  return {
    ref: r.ref,
    from: r.from,
    to: r.to,
    message: r.message,
    dryRun: r.dryRun,
    summary: r.plan.summary,
    conflicts: r.plan.conflicts,
    merged: r.plan.merged,
    changes,
    ...(version !== undefined ? { version } : {}),
  };
}

/** One line for a conflict: its kind, package or fields, both sides, and its decision. */
export function conflictLine(c: Conflict): string {
  const what = c.package ? ` package ${c.package}` : c.fields ? ` (${c.fields.join(', ')})` : '';
  const side = (x: Conflict['ours']) => (x.type === 'file' ? `file ${x.size} B` : x.type);
  const res = c.resolution ? ` -> ${c.resolution}` : '';
  return `conflict ${c.kind}${what}: ${c.path}: ours ${side(c.ours)}, theirs ${side(c.theirs)}${c.detail ? `; ${c.detail}` : ''}${res}`;
}

/**
 * `strata rebase`'s lines (local or --remote alike): what A1 changed and what was taken,
 * merged files, conflicts, and while conflicts stop it (or on a dry run) a resolution file
 * to edit and pass back with --resolve.
 */
export function rebaseText(j: RebaseJson): string {
  const s = j.summary;
  const stopped = s.unresolved > 0;
  const lines = [
    `rebase ${j.ref} from ${j.from} onto ${j.to}: A1 changed ${s.theirsChanged} paths; ${s.taken} taken, ${s.same} already so in REF, ${j.changes.length} operations`,
  ];
  for (const m of j.merged)
    lines.push(`merged ${m.path} (${m.how}${m.fromTheirs?.length ? `: ${m.fromTheirs.join(', ')} from A1` : ''})`);
  for (const c of j.conflicts) lines.push(conflictLine(c));
  if (stopped)
    lines.push(
      `${s.unresolved} conflicts: nothing written (--take ours|theirs PATH, --resolve FILE, --ours or --theirs decides)`,
    );
  else if (j.dryRun) lines.push('dry run: nothing written');
  else if (j.version && typeof (j.version as { ref?: unknown }).ref === 'string')
    lines.push(`wrote ${(j.version as { ref: string }).ref} (parents ${j.ref} and ${j.to})`);
  else if (j.changes.length === 0) lines.push('nothing to change: no version written');
  if (j.conflicts.length > 0 && (stopped || j.dryRun)) {
    lines.push('', '# resolution file (keep ours or change to theirs; pass with --resolve FILE):');
    for (const c of j.conflicts) {
      lines.push(`# ${conflictLine(c)}`);
      lines.push(`${c.resolution ?? 'ours'} ${c.package ? `package:${c.package}` : c.path}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
