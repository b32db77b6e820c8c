import {
  type FileWhere,
  findFiles,
  findPackages,
  findRoots,
  findUsers,
  type ImageCondition,
  tagsOf,
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
  /** Keep only the versions of images this says yes to, before tags are read. */
  keep?: (image: string) => Promise<boolean>;
  /**
   * Keep only the versions whose image meets this SQL condition on `x.image` (the service:
   * images the caller may read, Access.readableWhere): filtered in the catalog's queries.
   */
  only?: ImageCondition;
  /** Only these hits (in the order below) are finished (merged matches, tags); `total` counts all. */
  page?: { offset: number; limit: number };
}

export async function search(lib: Library, q: SearchQuery, opts: SearchOptions = {}): Promise<SearchHit[]> {
  return (await searchPage(lib, q, opts)).hits;
}

/**
 * `search` with the hits' count: the versions matching are found with one query per
 * criterion (two for a path: the file rows once per distinct file manifest, then the
 * versions holding them), access filtered in those queries when `only` is given; the
 * matches are merged and tags read only for the page's hits.
 */
export async function searchPage(
  lib: Library,
  q: SearchQuery,
  opts: SearchOptions = {},
): Promise<{ hits: SearchHit[]; total: number }> {
  const only = opts.only;
  const db = lib.catalog.db;
  const sets: Array<Map<string, Partial<SearchHit>>> = [];
  const add = <T>(rows: Array<T & { image: string; number: number }>, put: (h: Partial<SearchHit>, r: T) => void) => {
    const m = new Map<string, Partial<SearchHit>>();
    for (const r of rows) {
      const k = keyOf(r);
      let h = m.get(k);
      if (!h) m.set(k, (h = { image: r.image, number: r.number }));
      put(h, r);
    }
    sets.push(m);
  };
  let asked = false;
  if (q.path !== undefined) {
    asked = true;
    const { re, where } = globPlan(q.path);
    const rows = await findFiles(db, where, (p) => re.test(p), only);
    add(rows, (h, f) => {
      (h.paths ??= []).push({ volume: f.volume, path: f.path, type: f.type, size: f.size, digest: f.digest });
    });
  }
  if (q.digest !== undefined) {
    asked = true;
    const d = q.digest.toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(d))
      throw new StrataError('USAGE', `--digest wants a sha256 (64 hex digits), not ${q.digest}`);
    add(await findFiles(db, { digest: d }, undefined, only), (h, f) => {
      (h.paths ??= []).push({ volume: f.volume, path: f.path, type: f.type, size: f.size, digest: f.digest });
    });
  }
  if (q.package !== undefined) {
    asked = true;
    const spec = parsePackageSpec(q.package);
    const rows = (await findPackages(db, spec.name, only)).filter((p) => {
      if (!spec.op || spec.version === undefined) return true;
      const fmt = (p.format ?? 'deb') as PackageFormat;
      return OPS[spec.op](compareVersions(fmt, fullVersion(fmt, p), spec.version));
    });
    add(rows, (h, p) => {
      const fmt = (p.format ?? 'deb') as PackageFormat;
      (h.packages ??= []).push({
        root: p.root,
        name: p.name,
        version: fullVersion(fmt, p),
        arch: p.arch,
        format: p.format,
      });
    });
  }
  if (q.os !== undefined) {
    asked = true;
    add(await findRoots(db, q.os, only), (h, r) => {
      (h.roots ??= []).push({ root: r.root, osType: r.osType, distro: r.distro, productName: r.productName });
    });
  }
  if (q.user !== undefined) {
    asked = true;
    add(await findUsers(db, q.user, only), (h, u) => {
      (h.users ??= []).push({ root: u.root, name: u.name, uid: u.uid, gid: u.gid, home: u.home, shell: u.shell });
    });
  }
  if (!asked) throw new StrataError('USAGE', 'search needs at least one of --path, --digest, --package, --os, --user');
  // AND: versions in every set, their matches merged
  let keys = [...sets[0].keys()];
  for (const s of sets.slice(1)) keys = keys.filter((k) => s.has(k));
  if (opts.keep) {
    const kept: string[] = [];
    const seen = new Map<string, boolean>();
    for (const k of keys) {
      const image = (sets[0].get(k) as Partial<SearchHit>).image as string;
      let ok = seen.get(image);
      if (ok === undefined) seen.set(image, (ok = await opts.keep(image)));
      if (ok) kept.push(k);
    }
    keys = kept;
  }
  // the order of the answer (image, then number), then the page
  const order = keys.map((k) => sets[0].get(k) as { image: string; number: number });
  order.sort((a, b) => (a.image < b.image ? -1 : a.image > b.image ? 1 : a.number - b.number));
  keys = order.map((h) => `${h.image}@${h.number}`);
  const total = keys.length;
  if (opts.page) keys = keys.slice(opts.page.offset, opts.page.offset + opts.page.limit);
  const merged: SearchHit[] = keys.map((k) => {
    const h: SearchHit = { image: '', number: 0, ref: k, tags: [] };
    for (const s of sets) {
      const p = s.get(k) as Partial<SearchHit>;
      for (const f of ['paths', 'packages', 'users', 'roots'] as const) {
        const v = p[f];
        if (v) (h[f] as unknown[]) = [...((h[f] as unknown[]) ?? []), ...v];
      }
      h.image = p.image as string;
      h.number = p.number as number;
    }
    return h;
  });
  const tags = await tagsOf(db, merged);
  for (const h of merged) {
    h.tags = tags.get(h.ref) ?? [];
    h.paths?.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : a.volume < b.volume ? -1 : 1));
    h.packages?.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.arch < b.arch ? -1 : 1));
  }
  return { hits: merged, total };
}
