import {
  type FileWhere,
  fileRowsByManifest,
  fileSetsOf,
  findPackages,
  findRoots,
  findUsers,
  hasRoot,
  hasUser,
  holdsFileManifest,
  holdsPackage,
  type ImageCondition,
  inJsonList,
  packageVersions,
  type StoredFile,
  tagsOf,
  type VersionCondition,
  versionsWhere,
} from '../catalog/inspection.js';
import { compareVersions, fullVersion, type PackageFormat } from '../inspect/version.js';
import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';

/**
 * `strata search`: which versions of the library hold a path, a file content, a package
 * (optionally in a version range, compared by the package's own ecosystem's ordering),
 * an OS or a user. Answers from the catalog's inspection tables, never from the store;
 * several criteria must all hold (AND).
 */
export interface SearchQuery {
  /** Glob: `*` and `?` within one path component, `**` across components, `[...]`; without a leading '/' it matches at any depth. */
  path?: string;
  digest?: string;
  /** NAME, or NAME followed by <, <=, =, >=, > and a version. */
  package?: string;
  os?: string;
  user?: string;
}

export interface SearchHit {
  image: string;
  number: number;
  ref: string;
  tags: string[];
  paths?: Array<{ volume: string; path: string; type: string; size: number; digest: string | null }>;
  packages?: Array<{ root: string; name: string; version: string; arch: string; format: string | null }>;
  users?: Array<{ root: string; name: string; uid: number; gid: number; home: string; shell: string }>;
  roots?: Array<{ root: string; osType: string; distro: string | null; productName: string | null }>;
}

/** A glob as a RegExp over whole paths, and the literal prefix every match starts with. */
export function globMatcher(glob: string): { re: RegExp; prefix: string } {
  if (glob === '' || glob.length > 4096) throw new StrataError('USAGE', 'bad --path glob (empty or too long)');
  const anchored = glob.startsWith('/');
  let re = anchored ? '^' : '^(?:.*/)?';
  let prefix = '';
  let literal = anchored;
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*') {
      literal = false;
      if (glob[i + 1] === '*') {
        i++;
        if (glob[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else re += '.*';
      } else re += '[^/]*';
    } else if (c === '?') {
      literal = false;
      re += '[^/]';
    } else if (c === '[') {
      const end = glob.indexOf(']', i + 2);
      if (end < 0) throw new StrataError('USAGE', `bad --path glob: unclosed [ in ${glob}`);
      literal = false;
      let body = glob.slice(i + 1, end);
      const neg = body.startsWith('!') || body.startsWith('^');
      if (neg) body = body.slice(1);
      re += `[${neg ? '^' : ''}${body.replace(/[\\\]]/g, '\\$&')}]`;
      i = end;
    } else {
      if (literal) prefix += c;
      re += c.replace(/[.+^${}()|\\/]/g, '\\$&');
    }
  }
  return { re: new RegExp(`${re}$`, 's'), prefix };
}

const after = (prefix: string) =>
  prefix ? prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1) : undefined;
const WILD = /[*?[]/;

/**
 * How to look a glob up: by its literal directory (and the literal start of its last
 * component) when it has one, by the last component when it is a bare name pattern, else
 * by the literal prefix of the whole path; the RegExp then decides.
 */
export function globPlan(glob: string): { re: RegExp; where: FileWhere } {
  const { re, prefix } = globMatcher(glob);
  const slash = glob.lastIndexOf('/');
  const base = glob.slice(slash + 1);
  const baseLiteral = base.split(WILD)[0];
  const name = { nameFrom: baseLiteral, nameTo: after(baseLiteral) };
  if (glob.startsWith('/') && !WILD.test(glob.slice(0, slash)) && !base.includes('**')) {
    return { re, where: { dir: slash === 0 ? '/' : glob.slice(0, slash), ...name } };
  }
  if (slash < 0 && !base.includes('**') && baseLiteral !== '') return { re, where: name };
  return { re, where: { from: prefix, to: after(prefix) } };
}

/** NAME[<|<=|=|>=|>VER] */
export function parsePackageSpec(spec: string): { name: string; op?: '<' | '<=' | '=' | '>=' | '>'; version?: string } {
  const m = /^([^<>=\s]+)\s*(?:(<=|>=|<|>|==?)\s*(\S.*))?$/.exec(spec.trim());
  if (!m) throw new StrataError('USAGE', `bad --package ${JSON.stringify(spec)} (NAME or NAME<=VERSION ...)`);
  if (!m[2]) return { name: m[1] };
  return { name: m[1], op: (m[2] === '==' ? '=' : m[2]) as '<' | '<=' | '=' | '>=' | '>', version: m[3].trim() };
}

const OPS = {
  '<': (c: number) => c < 0,
  '<=': (c: number) => c <= 0,
  '=': (c: number) => c === 0,
  '>=': (c: number) => c >= 0,
  '>': (c: number) => c > 0,
};

const keyOf = (x: { image: string; number: number }) => `${x.image}@${x.number}`;

export interface SearchOptions {
  /**
   * Keep only the versions whose image meets this SQL condition on `v.image` (the service:
   * images the caller may read, Access.readableWhere): a condition of the catalog's query.
   */
  only?: ImageCondition;
  /** Only these hits (in the order below) are read and finished; `total` counts all. */
  page?: { offset: number; limit: number };
}

export async function search(lib: Library, q: SearchQuery, opts: SearchOptions = {}): Promise<SearchHit[]> {
  return (await searchPage(lib, q, opts)).hits;
}

/**
 * `search` with the hits' count. Each criterion becomes a condition on a version (a path
 * or digest: the file manifests holding a match, their rows read once per distinct
 * manifest; a package version range: the package's distinct versions, compared here by
 * its ecosystem's ordering), and the versions meeting them all, access included, are one
 * query that pages and counts in the catalog (it used to read a row per matching version
 * to count them). Then only the page's hits are finished: what matched in each, and tags.
 */
export async function searchPage(
  lib: Library,
  q: SearchQuery,
  opts: SearchOptions = {},
): Promise<{ hits: SearchHit[]; total: number }> {
  const db = lib.catalog.db;
  const conds: VersionCondition[] = [];
  const fileSets: Array<Map<string, StoredFile[]>> = [];
  const none = { hits: [], total: 0 };
  let asked = false;
  if (q.path !== undefined) {
    asked = true;
    const { re, where } = globPlan(q.path);
    const m = await fileRowsByManifest(db, where, (p) => re.test(p));
    if (m.size === 0) return none;
    fileSets.push(m);
    conds.push(holdsFileManifest(db, [...m.keys()]));
  }
  if (q.digest !== undefined) {
    asked = true;
    const d = q.digest.toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(d))
      throw new StrataError('USAGE', `--digest wants a sha256 (64 hex digits), not ${q.digest}`);
    const m = await fileRowsByManifest(db, { digest: d });
    if (m.size === 0) return none;
    fileSets.push(m);
    conds.push(holdsFileManifest(db, [...m.keys()]));
  }
  let spec: ReturnType<typeof parsePackageSpec> | undefined;
  const specHolds = (p: { format: string | null; epoch: number; version: string; release: string }) => {
    if (!spec?.op || spec.version === undefined) return true;
    const fmt = (p.format ?? 'deb') as PackageFormat;
    return OPS[spec.op](compareVersions(fmt, fullVersion(fmt, p), spec.version));
  };
  if (q.package !== undefined) {
    asked = true;
    spec = parsePackageSpec(q.package);
    if (spec.op && spec.version !== undefined) {
      const versions = (await packageVersions(db, spec.name)).filter(specHolds);
      if (versions.length === 0) return none;
      conds.push(holdsPackage(spec.name, versions));
    } else conds.push(holdsPackage(spec.name));
  }
  if (q.os !== undefined) {
    asked = true;
    conds.push(hasRoot(q.os));
  }
  if (q.user !== undefined) {
    asked = true;
    conds.push(hasUser(q.user));
  }
  if (!asked) throw new StrataError('USAGE', 'search needs at least one of --path, --digest, --package, --os, --user');
  const { keys, total } = await versionsWhere(db, conds, opts.only, opts.page);
  const hits: SearchHit[] = keys.map((k) => ({ image: k.image, number: k.number, ref: keyOf(k), tags: [] }));
  if (hits.length === 0) return { hits, total };
  const byRef = new Map(hits.map((h) => [h.ref, h]));
  // what matched in the page's versions
  if (fileSets.length > 0) {
    const sets = await fileSetsOf(db, keys);
    for (const m of fileSets) {
      for (const h of hits) {
        for (const [volume, files] of sets.get(h.ref) ?? []) {
          for (const f of m.get(files) ?? []) {
            (h.paths ??= []).push({ volume, path: f.path, type: f.type, size: f.size, digest: f.digest });
          }
        }
      }
    }
  }
  const pageImages: ImageCondition = inJsonList(db, 'x.image', [...new Set(keys.map((k) => k.image))]);
  if (spec) {
    for (const p of await findPackages(db, spec.name, pageImages)) {
      const h = byRef.get(keyOf(p));
      if (!h || !specHolds(p)) continue;
      const fmt = (p.format ?? 'deb') as PackageFormat;
      (h.packages ??= []).push({
        root: p.root,
        name: p.name,
        version: fullVersion(fmt, p),
        arch: p.arch,
        format: p.format,
      });
    }
  }
  if (q.os !== undefined) {
    for (const r of await findRoots(db, q.os, pageImages)) {
      const h = byRef.get(keyOf(r));
      if (h) (h.roots ??= []).push({ root: r.root, osType: r.osType, distro: r.distro, productName: r.productName });
    }
  }
  if (q.user !== undefined) {
    for (const u of await findUsers(db, q.user, pageImages)) {
      const h = byRef.get(keyOf(u));
      if (h)
        (h.users ??= []).push({ root: u.root, name: u.name, uid: u.uid, gid: u.gid, home: u.home, shell: u.shell });
    }
  }
  const tags = await tagsOf(db, hits);
  for (const h of hits) {
    h.tags = tags.get(h.ref) ?? [];
    h.paths?.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : a.volume < b.volume ? -1 : 1));
    h.packages?.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.arch < b.arch ? -1 : 1));
  }
  return { hits, total };
}
