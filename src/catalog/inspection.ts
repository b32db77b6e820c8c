import { StrataError } from '../util/errors.js';
import type { Db, SqlValue } from './db.js';

/**
 * What inspection found in each version, and the indexes search needs. Portable SQL
 * (see db.ts). Its own schema, created on first use (the catalog's core tables do not
 * know it):
 *
 * - inspection_versions: one row per inspected version (when, by which Strata, warnings);
 *   a version with no row has not been inspected (yet).
 * - inspection_roots: one row per OS root with the summary fields and the whole
 *   inspection as JSON (what `strata inspect REF` prints).
 * - inspection_packages, inspection_users: one row per package / user of a root.
 * - inspection_file_sets: which file manifest (by digest) each volume of a version has;
 *   inspection_files: path, type, size and content digest of every entry of a file
 *   manifest, stored once per manifest digest (versions that share a file system share
 *   its rows).
 */
export const INSPECTION_SCHEMA = [
  `CREATE TABLE IF NOT EXISTS inspection_versions (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     inspected TEXT NOT NULL,
     strata_version TEXT NOT NULL,
     warnings TEXT NOT NULL,
     PRIMARY KEY (image, number))`,
  `CREATE TABLE IF NOT EXISTS inspection_roots (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     root TEXT NOT NULL,
     os_type TEXT NOT NULL,
     distro TEXT,
     product_name TEXT,
     version_major INTEGER,
     version_minor INTEGER,
     arch TEXT,
     hostname TEXT,
     package_format TEXT,
     package_manager TEXT,
     init_system TEXT,
     data TEXT NOT NULL,
     PRIMARY KEY (image, number, root))`,
  'CREATE INDEX IF NOT EXISTS inspection_roots_distro ON inspection_roots (distro)',
  'CREATE INDEX IF NOT EXISTS inspection_roots_os_type ON inspection_roots (os_type)',
  `CREATE TABLE IF NOT EXISTS inspection_packages (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     root TEXT NOT NULL,
     name TEXT NOT NULL,
     epoch INTEGER NOT NULL,
     version TEXT NOT NULL,
     release TEXT NOT NULL,
     arch TEXT NOT NULL)`,
  'CREATE INDEX IF NOT EXISTS inspection_packages_name ON inspection_packages (name)',
  'CREATE INDEX IF NOT EXISTS inspection_packages_version ON inspection_packages (image, number)',
  `CREATE TABLE IF NOT EXISTS inspection_users (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     root TEXT NOT NULL,
     name TEXT NOT NULL,
     uid BIGINT NOT NULL,
     gid BIGINT NOT NULL,
     home TEXT NOT NULL,
     shell TEXT NOT NULL)`,
  'CREATE INDEX IF NOT EXISTS inspection_users_name ON inspection_users (name)',
  'CREATE INDEX IF NOT EXISTS inspection_users_version ON inspection_users (image, number)',
  `CREATE TABLE IF NOT EXISTS inspection_file_sets (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     volume TEXT NOT NULL,
     files TEXT NOT NULL,
     PRIMARY KEY (image, number, volume))`,
  'CREATE INDEX IF NOT EXISTS inspection_file_sets_files ON inspection_file_sets (files)',
  `CREATE TABLE IF NOT EXISTS inspection_files (
     files TEXT NOT NULL,
     path TEXT NOT NULL,
     dir TEXT NOT NULL,
     name TEXT NOT NULL,
     type TEXT NOT NULL,
     size BIGINT NOT NULL,
     digest TEXT,
     PRIMARY KEY (files, path))`,
  'CREATE INDEX IF NOT EXISTS inspection_files_path ON inspection_files (path)',
  'CREATE INDEX IF NOT EXISTS inspection_files_dir ON inspection_files (dir, name)',
  'CREATE INDEX IF NOT EXISTS inspection_files_name ON inspection_files (name)',
  'CREATE INDEX IF NOT EXISTS inspection_files_digest ON inspection_files (digest)',
];

const ready = new WeakSet<Db>();

/** '/etc/passwd' -> ['/etc', 'passwd']; '/etc' -> ['/', 'etc']. */
export function splitPath(p: string): [string, string] {
  const i = p.lastIndexOf('/');
  return [i <= 0 ? '/' : p.slice(0, i), p.slice(i + 1)];
}

/** Create the inspection tables once per connection. */
export async function ensureInspectionSchema(db: Db): Promise<void> {
  if (ready.has(db)) return;
  await db.transaction(
    async (tx) => {
      for (const s of INSPECTION_SCHEMA) await tx.run(s);
    },
    { lock: 'strata-migrate' },
  );
  ready.add(db);
}

export interface StoredPackage {
  name: string;
  epoch: number;
  version: string;
  release: string;
  arch: string;
}
export interface StoredUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

/** One OS root as the catalog keeps it: summary columns, the full record as JSON. */
export interface StoredRoot {
  root: string;
  osType: string;
  distro: string | null;
  productName: string | null;
  versionMajor: number | null;
  versionMinor: number | null;
  arch: string | null;
  hostname: string | null;
  packageFormat: string | null;
  packageManager: string | null;
  initSystem: string | null;
  packages: StoredPackage[];
  users: StoredUser[];
  /** The whole inspection record (whatever else it holds: kernels, groups, mounts ...). */
  data: Record<string, unknown>;
}

export interface StoredFile {
  path: string;
  type: string;
  size: number;
  digest: string | null;
}

export interface VersionInspection {
  image: string;
  number: number;
  inspected: string;
  strataVersion: string;
  warnings: string[];
  roots: StoredRoot[];
  /** volume id -> file manifest digest, with the manifest's entries when not yet indexed. */
  fileSets: Array<{ volume: string; files: string; entries: () => Iterable<StoredFile> | AsyncIterable<StoredFile> }>;
}

/**
 * Many rows in multi-row INSERTs (portable SQL): a round trip per ~900 values, not per row,
 * which is what a catalog on a database server needs (a Debian root has hundreds of packages).
 */
async function insertMany(tx: Db, into: string, rows: SqlValue[][], suffix = ''): Promise<void> {
  if (rows.length === 0) return;
  const per = Math.max(1, Math.floor(900 / rows[0].length));
  const one = `(${rows[0].map(() => '?').join(', ')})`;
  for (let i = 0; i < rows.length; i += per) {
    const part = rows.slice(i, i + per);
    await tx.run(`INSERT INTO ${into} VALUES ${part.map(() => one).join(', ')}${suffix}`, part.flat());
  }
}

/** Replace what the catalog holds about one version's inspection, in one transaction. */
export async function putInspection(db: Db, v: VersionInspection): Promise<void> {
  await ensureInspectionSchema(db);
  await db.transaction(async (tx) => {
    const key: SqlValue[] = [v.image, v.number];
    for (const t of ['inspection_roots', 'inspection_packages', 'inspection_users', 'inspection_file_sets']) {
      await tx.run(`DELETE FROM ${t} WHERE image = ? AND number = ?`, key);
    }
    await tx.run(
      `INSERT INTO inspection_versions (image, number, inspected, strata_version, warnings) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (image, number) DO UPDATE SET inspected = excluded.inspected,
         strata_version = excluded.strata_version, warnings = excluded.warnings`,
      [...key, v.inspected, v.strataVersion, JSON.stringify(v.warnings)],
    );
    for (const r of v.roots) {
      await tx.run(
        `INSERT INTO inspection_roots (image, number, root, os_type, distro, product_name, version_major,
           version_minor, arch, hostname, package_format, package_manager, init_system, data)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (image, number, root) DO NOTHING`,
        [
          ...key,
          r.root,
          r.osType,
          r.distro,
          r.productName,
          r.versionMajor,
          r.versionMinor,
          r.arch,
          r.hostname,
          r.packageFormat,
          r.packageManager,
          r.initSystem,
          JSON.stringify(r.data),
        ],
      );
      await insertMany(
        tx,
        'inspection_packages (image, number, root, name, epoch, version, release, arch)',
        r.packages.map((p) => [...key, r.root, p.name, p.epoch, p.version, p.release, p.arch]),
      );
      await insertMany(
        tx,
        'inspection_users (image, number, root, name, uid, gid, home, shell)',
        r.users.map((u) => [...key, r.root, u.name, u.uid, u.gid, u.home, u.shell]),
      );
    }
    for (const s of v.fileSets) {
      await tx.run('INSERT INTO inspection_file_sets (image, number, volume, files) VALUES (?, ?, ?, ?)', [
        ...key,
        s.volume,
        s.files,
      ]);
      const have = await tx.get('SELECT path FROM inspection_files WHERE files = ? LIMIT 1', [s.files]);
      if (have) continue;
      // a few thousand rows at a time: a manifest's entries may come as a stream (a million files)
      let rows: SqlValue[][] = [];
      const flush = () =>
        insertMany(
          tx,
          'inspection_files (files, path, dir, name, type, size, digest)',
          rows.splice(0),
          ' ON CONFLICT (files, path) DO NOTHING',
        );
      for await (const f of s.entries()) {
        rows.push([s.files, f.path, ...splitPath(f.path), f.type, f.size, f.digest]);
        if (rows.length >= 4096) await flush();
      }
      await flush();
      rows = [];
    }
  });
}

interface RawRoot {
  root: string;
  os_type: string;
  distro: string | null;
  product_name: string | null;
  version_major: number | null;
  version_minor: number | null;
  arch: string | null;
  hostname: string | null;
  package_format: string | null;
  package_manager: string | null;
  init_system: string | null;
  data: string;
}

/** The stored inspection of a version, undefined when it was never inspected. */
export async function getInspection(
  db: Db,
  image: string,
  number: number,
): Promise<
  { inspected: string; strataVersion: string; warnings: string[]; roots: Array<Record<string, unknown>> } | undefined
> {
  await ensureInspectionSchema(db);
  const v = await db.get<{ inspected: string; strata_version: string; warnings: string }>(
    'SELECT inspected, strata_version, warnings FROM inspection_versions WHERE image = ? AND number = ?',
    [image, number],
  );
  if (!v) return undefined;
  const roots = await db.all<RawRoot>(
    'SELECT root, data FROM inspection_roots WHERE image = ? AND number = ? ORDER BY root',
    [image, number],
  );
  const parse = <T>(text: string, what: string): T => {
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw new StrataError(
        'CORRUPT',
        `stored inspection of ${image}@${number} (${what}) is not JSON: ${(e as Error).message}`,
        {
          structure: 'catalog inspection',
        },
      );
    }
  };
  return {
    inspected: v.inspected,
    strataVersion: v.strata_version,
    warnings: parse<string[]>(v.warnings, 'inspection_versions.warnings'),
    roots: roots.map((r) => parse<Record<string, unknown>>(r.data, `inspection_roots.data of root '${r.root}'`)),
  };
}

/** Drop everything stored about a version's inspection. */
export async function deleteInspection(db: Db, image: string, number: number): Promise<void> {
  await ensureInspectionSchema(db);
  await db.transaction(async (tx) => {
    for (const t of [
      'inspection_versions',
      'inspection_roots',
      'inspection_packages',
      'inspection_users',
      'inspection_file_sets',
    ]) {
      await tx.run(`DELETE FROM ${t} WHERE image = ? AND number = ?`, [image, number]);
    }
  });
}

export interface VersionKey {
  image: string;
  number: number;
}

/** An SQL condition on the rows' `x.image` (the service: images the caller may read), with its parameters. */
export interface ImageCondition {
  sql: string;
  params: SqlValue[];
  /** A join (no parameters) the condition reads, after `FROM table x`. */
  join?: string;
}

const ACTIVE =
  "EXISTS (SELECT 1 FROM versions v WHERE v.image = x.image AND v.number = x.number AND v.state = 'active')";

/** Packages named `name` in active versions (version comparison is the caller's, per ecosystem). */
export async function findPackages(
  db: Db,
  name: string,
  only?: ImageCondition,
): Promise<Array<VersionKey & StoredPackage & { root: string; format: string | null }>> {
  await ensureInspectionSchema(db);
  const rows = await db.all<Record<string, SqlValue>>(
    `SELECT x.image, x.number, x.root, x.name, x.epoch, x.version, x.release, x.arch, r.package_format
       FROM inspection_packages x${only?.join ? ` ${only.join}` : ''}
       JOIN inspection_roots r ON r.image = x.image AND r.number = x.number AND r.root = x.root
      WHERE x.name = ? AND ${ACTIVE}${only ? ` AND ${only.sql}` : ''}`,
    [name, ...(only?.params ?? [])],
  );
  return rows.map((r) => ({
    image: String(r.image),
    number: Number(r.number),
    root: String(r.root),
    name: String(r.name),
    epoch: Number(r.epoch),
    version: String(r.version),
    release: String(r.release),
    arch: String(r.arch),
    format: r.package_format === null ? null : String(r.package_format),
  }));
}

/** Users named `name` in active versions. */
export async function findUsers(
  db: Db,
  name: string,
  only?: ImageCondition,
): Promise<Array<VersionKey & StoredUser & { root: string }>> {
  await ensureInspectionSchema(db);
  const rows = await db.all<Record<string, SqlValue>>(
    `SELECT x.image, x.number, x.root, x.name, x.uid, x.gid, x.home, x.shell FROM inspection_users x${only?.join ? ` ${only.join}` : ''}
      WHERE x.name = ? AND ${ACTIVE}${only ? ` AND ${only.sql}` : ''}`,
    [name, ...(only?.params ?? [])],
  );
  return rows.map((r) => ({
    image: String(r.image),
    number: Number(r.number),
    root: String(r.root),
    name: String(r.name),
    uid: Number(r.uid),
    gid: Number(r.gid),
    home: String(r.home),
    shell: String(r.shell),
  }));
}

/** OS roots whose os type, distro or product name is `os` (case-insensitive; product name by substring). */
export async function findRoots(
  db: Db,
  os: string,
  only?: ImageCondition,
): Promise<Array<VersionKey & { root: string; osType: string; distro: string | null; productName: string | null }>> {
  await ensureInspectionSchema(db);
  const q = os.toLowerCase();
  const rows = await db.all<Record<string, SqlValue>>(
    `SELECT x.image, x.number, x.root, x.os_type, x.distro, x.product_name FROM inspection_roots x${only?.join ? ` ${only.join}` : ''}
      WHERE (LOWER(x.distro) = ? OR LOWER(x.os_type) = ? OR LOWER(x.product_name) LIKE ?) AND ${ACTIVE}${only ? ` AND ${only.sql}` : ''}`,
    [q, q, `%${q.replace(/[%_\\]/g, '')}%`, ...(only?.params ?? [])],
  );
  return rows.map((r) => ({
    image: String(r.image),
    number: Number(r.number),
    root: String(r.root),
    osType: String(r.os_type),
    distro: r.distro === null ? null : String(r.distro),
    productName: r.product_name === null ? null : String(r.product_name),
  }));
}

/** Which file rows a search wants: an index lookup, narrowed further by the caller. */
export type FileWhere =
  | { digest: string }
  | { dir: string; nameFrom?: string; nameTo?: string }
  | { nameFrom: string; nameTo?: string }
  | { from: string; to?: string };

const range = (col: string, from?: string, to?: string): [string, SqlValue[]] =>
  from === undefined || from === ''
    ? ['1 = 1', []]
    : to === undefined
      ? [`${col} >= ?`, [from]]
      : [`${col} >= ? AND ${col} < ?`, [from, to]];

/**
 * Files of active versions matching `where`, narrowed by `keep` (run on each distinct
 * file-manifest row before the versions holding it are looked up): the rows are read once
 * per distinct file manifest, then joined to the versions that share it.
 */
export async function findFiles(
  db: Db,
  where: FileWhere,
  keep: (path: string) => boolean = () => true,
  only?: ImageCondition,
): Promise<Array<VersionKey & StoredFile & { volume: string }>> {
  await ensureInspectionSchema(db);
  let cond: string;
  let params: SqlValue[];
  if ('digest' in where) [cond, params] = ['digest = ?', [where.digest]];
  else if ('dir' in where) {
    const [c, p] = range('name', where.nameFrom, where.nameTo);
    [cond, params] = [`dir = ? AND ${c}`, [where.dir, ...p]];
  } else if ('nameFrom' in where) [cond, params] = range('name', where.nameFrom, where.nameTo);
  else [cond, params] = range('path', where.from, where.to);
  const rows = (
    await db.all<{ files: string; path: string; type: string; size: number; digest: string | null }>(
      `SELECT files, path, type, size, digest FROM inspection_files WHERE ${cond}`,
      params,
    )
  ).filter((r) => keep(r.path));
  const byManifest = new Map<string, typeof rows>();
  for (const r of rows) {
    const l = byManifest.get(r.files) ?? [];
    l.push(r);
    byManifest.set(r.files, l);
  }
  const out: Array<VersionKey & StoredFile & { volume: string }> = [];
  const manifests = [...byManifest.keys()];
  for (let i = 0; i < manifests.length; i += 500) {
    const part = manifests.slice(i, i + 500);
    const sets = await db.all<{ image: string; number: number; volume: string; files: string }>(
      `SELECT x.image, x.number, x.volume, x.files FROM inspection_file_sets x${only?.join ? ` ${only.join}` : ''}
        WHERE x.files IN (${part.map(() => '?').join(', ')}) AND ${ACTIVE}${only ? ` AND ${only.sql}` : ''}`,
      [...part, ...(only?.params ?? [])],
    );
    for (const s of sets) {
      for (const r of byManifest.get(s.files) ?? []) {
        out.push({
          image: s.image,
          number: Number(s.number),
          volume: s.volume,
          path: r.path,
          type: r.type,
          size: Number(r.size),
          digest: r.digest,
        });
      }
    }
  }
  return out;
}

/**
 * A condition a version must meet, on `v.image` and `v.number` (an EXISTS over one of the
 * inspection tables), for `versionsWhere`.
 */
export interface VersionCondition {
  sql: string;
  params: SqlValue[];
}

/**
 * `col IN (the values)` with one parameter, whatever their number: a JSON array that SQLite
 * (json_each) and PostgreSQL (jsonb_array_elements_text) unpack, so one statement serves
 * any count and stays prepared once.
 */
export function inJsonList(db: Db, col: string, values: string[]): VersionCondition {
  return db.dialect === 'postgres'
    ? { sql: `${col} IN (SELECT jsonb_array_elements_text(CAST(? AS jsonb)))`, params: [JSON.stringify(values)] }
    : { sql: `${col} IN (SELECT value FROM json_each(?))`, params: [JSON.stringify(values)] };
}

/**
 * The file rows matching `where` and `keep`, grouped by file manifest digest: read once per
 * distinct file manifest (versions sharing a file system share them), never per version.
 */
export async function fileRowsByManifest(
  db: Db,
  where: FileWhere,
  keep: (path: string) => boolean = () => true,
): Promise<Map<string, StoredFile[]>> {
  await ensureInspectionSchema(db);
  let cond: string;
  let params: SqlValue[];
  if ('digest' in where) [cond, params] = ['digest = ?', [where.digest]];
  else if ('dir' in where) {
    const [c, p] = range('name', where.nameFrom, where.nameTo);
    [cond, params] = [`dir = ? AND ${c}`, [where.dir, ...p]];
  } else if ('nameFrom' in where) [cond, params] = range('name', where.nameFrom, where.nameTo);
  else [cond, params] = range('path', where.from, where.to);
  type FileRow = { files: string; path: string; type: string; size: number; digest: string | null };
  const sql = `SELECT files, path, type, size, digest FROM inspection_files WHERE ${cond}`;
  const out = new Map<string, StoredFile[]>();
  const add = (r: FileRow) => {
    if (!keep(r.path)) return;
    let l = out.get(r.files);
    if (!l) out.set(r.files, (l = []));
    l.push({ path: r.path, type: r.type, size: Number(r.size), digest: r.digest });
  };
  // a glob's literal prefix can cover most of a million-file tree: rows one at a time, the
  // matches kept (an array of every row in range took ~270 MB for 1,000,000 files)
  if (db.each) await db.each<FileRow>(sql, params, add);
  else for (const r of await db.all<FileRow>(sql, params)) add(r);
  return out;
}

/** Versions one of whose volumes has one of these file manifests. */
export function holdsFileManifest(db: Db, manifests: string[]): VersionCondition {
  const c = inJsonList(db, 'fs.files', manifests);
  return {
    sql: `EXISTS (SELECT 1 FROM inspection_file_sets fs WHERE fs.image = v.image AND fs.number = v.number AND ${c.sql})`,
    params: c.params,
  };
}

/** The distinct versions of package `name` in the catalog (epoch, version, release, format). */
export async function packageVersions(
  db: Db,
  name: string,
): Promise<Array<{ epoch: number; version: string; release: string; format: string | null }>> {
  await ensureInspectionSchema(db);
  const rows = await db.all<{ epoch: number; version: string; release: string; format: string | null }>(
    `SELECT DISTINCT p.epoch, p.version, p.release, r.package_format AS format
       FROM inspection_packages p
       JOIN inspection_roots r ON r.image = p.image AND r.number = p.number AND r.root = p.root
      WHERE p.name = ?`,
    [name],
  );
  return rows.map((r) => ({
    epoch: Number(r.epoch),
    version: String(r.version),
    release: String(r.release),
    format: r.format === null ? null : String(r.format),
  }));
}

/** Versions holding package `name`, in one of `versions` when given (all when not). */
export function holdsPackage(
  name: string,
  versions?: Array<{ epoch: number; version: string; release: string; format: string | null }>,
): VersionCondition {
  const params: SqlValue[] = [name];
  let which = '';
  if (versions) {
    which = ` AND (${versions.map(() => "(p.epoch = ? AND p.version = ? AND p.release = ? AND COALESCE(r.package_format, '') = ?)").join(' OR ') || '1 = 0'})`;
    for (const x of versions) params.push(x.epoch, x.version, x.release, x.format ?? '');
  }
  return {
    sql: `EXISTS (SELECT 1 FROM inspection_packages p
       JOIN inspection_roots r ON r.image = p.image AND r.number = p.number AND r.root = p.root
      WHERE p.image = v.image AND p.number = v.number AND p.name = ?${which})`,
    params,
  };
}

/** Versions with a root whose os type or distro is `os`, or whose product name holds it (as findRoots). */
export function hasRoot(os: string): VersionCondition {
  const q = os.toLowerCase();
  return {
    sql: `EXISTS (SELECT 1 FROM inspection_roots r WHERE r.image = v.image AND r.number = v.number
       AND (LOWER(r.distro) = ? OR LOWER(r.os_type) = ? OR LOWER(r.product_name) LIKE ?))`,
    params: [q, q, `%${q.replace(/[%_\\]/g, '')}%`],
  };
}

/** Versions with a user named `name`. */
export function hasUser(name: string): VersionCondition {
  return {
    sql: 'EXISTS (SELECT 1 FROM inspection_users u WHERE u.image = v.image AND u.number = v.number AND u.name = ?)',
    params: [name],
  };
}

/**
 * The active versions meeting every condition (and `only`, on `v.image`), in image and
 * number order, and how many there are: one query for the page (its own rows, whatever the
 * number of matches) and one that counts, when the page does not tell. `page` absent: all.
 */
export async function versionsWhere(
  db: Db,
  conds: VersionCondition[],
  only?: ImageCondition,
  page?: { offset: number; limit: number },
): Promise<{ keys: VersionKey[]; total: number }> {
  await ensureInspectionSchema(db);
  const where = ["v.state = 'active'", ...conds.map((c) => c.sql)];
  const params = conds.flatMap((c) => c.params);
  if (only) {
    where.push(only.sql);
    params.push(...only.params);
  }
  const from = `FROM versions v${only?.join ? ` ${only.join}` : ''} WHERE ${where.join(' AND ')}`;
  // the page in the versions' key order (SQLite walks the primary key and stops at the
  // page's end), then the count alone: two plain queries cost less than one with a window
  // count, which materialises and sorts every match first
  const rows = await db.all<{ image: string; number: number }>(
    `SELECT v.image, v.number ${from} ORDER BY v.image, v.number${page ? ' LIMIT ? OFFSET ?' : ''}`,
    page ? [...params, page.limit, page.offset] : params,
  );
  const total =
    !page || (rows.length < page.limit && (rows.length > 0 || page.offset === 0))
      ? (page?.offset ?? 0) + rows.length
      : Number((await db.get<{ n: number }>(`SELECT COUNT(*) AS n ${from}`, params))?.n ?? 0);
  return { keys: rows.map((r) => ({ image: r.image, number: Number(r.number) })), total };
}

/** The file manifests of each volume of these versions ("image@number" -> [volume, files digest]). */
export async function fileSetsOf(db: Db, keys: VersionKey[]): Promise<Map<string, Array<[string, string]>>> {
  await ensureInspectionSchema(db);
  const out = new Map<string, Array<[string, string]>>();
  if (keys.length === 0) return out;
  const want = new Set(keys.map((k) => `${k.image}@${k.number}`));
  const c = inJsonList(db, 'x.image', [...new Set(keys.map((k) => k.image))]);
  const rows = await db.all<{ image: string; number: number; volume: string; files: string }>(
    `SELECT x.image, x.number, x.volume, x.files FROM inspection_file_sets x WHERE ${c.sql}`,
    c.params,
  );
  for (const r of rows) {
    const k = `${r.image}@${Number(r.number)}`;
    if (!want.has(k)) continue;
    let l = out.get(k);
    if (!l) out.set(k, (l = []));
    l.push([r.volume, r.files]);
  }
  return out;
}

/**
 * The file manifest of each volume of one version as its stored inspection recorded them
 * (the volumes of its layout that have a file system), in volume order; undefined when the
 * version has no stored inspection.
 */
export async function versionFileSets(
  db: Db,
  image: string,
  number: number,
): Promise<Array<{ volume: string; files: string }> | undefined> {
  await ensureInspectionSchema(db);
  const seen = await db.get('SELECT 1 AS x FROM inspection_versions WHERE image = ? AND number = ?', [image, number]);
  if (!seen) return undefined;
  const rows = await db.all<{ volume: string; files: string }>(
    'SELECT volume, files FROM inspection_file_sets WHERE image = ? AND number = ? ORDER BY volume',
    [image, number],
  );
  return rows.map((r) => ({ volume: String(r.volume), files: String(r.files) }));
}

/** Versions (active) with no stored inspection. */
export async function uninspected(db: Db): Promise<VersionKey[]> {
  await ensureInspectionSchema(db);
  const rows = await db.all<{ image: string; number: number }>(
    `SELECT v.image, v.number FROM versions v WHERE v.state = 'active' AND NOT EXISTS
       (SELECT 1 FROM inspection_versions i WHERE i.image = v.image AND i.number = v.number) ORDER BY v.image, v.number`,
  );
  return rows.map((r) => ({ image: r.image, number: Number(r.number) }));
}

/** Tags of each version among `keys` ("image@number" -> tags). */
export async function tagsOf(db: Db, keys: VersionKey[]): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  const images = [...new Set(keys.map((k) => k.image))];
  for (let i = 0; i < images.length; i += 500) {
    const part = images.slice(i, i + 500);
    const rows = await db.all<{ image: string; tag: string; number: number }>(
      `SELECT image, tag, number FROM tags WHERE image IN (${part.map(() => '?').join(', ')}) ORDER BY tag`,
      part,
    );
    for (const r of rows) {
      const k = `${r.image}@${Number(r.number)}`;
      const l = out.get(k) ?? [];
      l.push(r.tag);
      out.set(k, l);
    }
  }
  return out;
}
