import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { ACCESS_MIGRATIONS } from '../catalog/access.js';
import { CATALOG_MIGRATIONS } from '../catalog/catalog.js';
import type { Db, Row, SqlValue } from '../catalog/db.js';
import { appliedMigrations, type Migration, migrate } from '../catalog/migrations.js';
import { isPostgresUrl, redactUrl } from '../catalog/pg.js';
import type { Backend } from '../store/backend.js';
import { RepoLock } from '../store/lock.js';
import { isS3Url } from '../store/s3-backend.js';
import { StrataError } from '../util/errors.js';
import { Library, MARKER, openBackend, openCatalogDb } from './library.js';
import { verifyLibrary } from './library-verbs.js';

/** Every migration a catalog database gets: the catalog's, then the accounts'. */
export const ALL_MIGRATIONS: Migration[] = [...CATALOG_MIGRATIONS, ...ACCESS_MIGRATIONS];

/** `strata db migrate`: apply what is missing; returns the ids applied now and all applied. */
export async function migrateCatalogDb(where: string): Promise<{ applied: string[]; all: string[] }> {
  const db = await openCatalogDb(where);
  try {
    const applied = await migrate(db, ALL_MIGRATIONS);
    return { applied, all: await appliedMigrations(db) };
  } finally {
    await db.close();
  }
}

export interface MigrateProgress {
  step: 'lock' | 'objects' | 'catalog' | 'verify' | 'switch';
  done?: number;
  total?: number;
}

export interface MigrateResult {
  from: { catalog: string; store: string };
  to: { catalog: string; store: string };
  /** Objects copied now (a resumed run copies only what the last one did not). */
  copiedObjects: number;
  copiedBytes: number;
  /** Objects that were there already (same key and size). */
  presentObjects: number;
  /** Objects at the destination that the source lacks, removed (left over from an older copy). */
  removedObjects: number;
  /** Rows per table copied. */
  rows: Record<string, number>;
  /** Distinct manifests of active versions verified at the destination, and their blobs. */
  versions: number;
  blobs: number;
}

/** Objects a library's store holds: config, packs, index files (locks are per process and not copied). */
async function storeObjects(b: Backend): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const p of ['packs/', 'index/']) for (const e of await b.list(p)) out.set(e.key, e.size);
  const config = await b.get('config').catch(() => undefined);
  if (config) out.set('config', config.length);
  return out;
}

async function tables(db: Db): Promise<string[]> {
  const rows =
    db.dialect === 'sqlite'
      ? await db.all<{ name: string }>(
          "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
      : await db.all<{ name: string }>(
          "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name",
        );
  return rows.map((r) => r.name).filter((n) => /^[a-z_][a-z0-9_]*$/.test(n));
}

/** Replace every row of the destination's tables by the source's, in one transaction. */
async function copyRows(from: Db, to: Db, progress?: (p: MigrateProgress) => void): Promise<Record<string, number>> {
  const have = new Set(await tables(to));
  const names = (await tables(from)).filter((t) => have.has(t) && t !== 'schema_migrations');
  const counts: Record<string, number> = {};
  const data = new Map<string, Row[]>();
  for (const t of names) data.set(t, await from.all<Row>(`SELECT * FROM ${t}`));
  await to.transaction(
    async (tx) => {
      let done = 0;
      for (const t of names) {
        await tx.run(`DELETE FROM ${t}`);
        const rows = data.get(t) as Row[];
        counts[t] = rows.length;
        if (rows.length === 0) continue;
        const cols = Object.keys(rows[0]);
        const per = Math.max(1, Math.floor(2000 / cols.length));
        for (let i = 0; i < rows.length; i += per) {
          const part = rows.slice(i, i + per);
          const params: SqlValue[] = [];
          for (const r of part) for (const c of cols) params.push(r[c] ?? null);
          const one = `(${cols.map(() => '?').join(', ')})`;
          await tx.run(`INSERT INTO ${t} (${cols.join(', ')}) VALUES ${part.map(() => one).join(', ')}`, params);
          done += part.length;
          progress?.({ step: 'catalog', done });
        }
      }
    },
    { lock: 'strata-migrate' },
  );
  return counts;
}

/**
 * Move a library's catalog and chunks to other places (`toCatalog`: a postgres:// URL or
 * 'local', the library directory's own catalog.db; `toStore`: an s3:// URL or 'local', its
 * store/ folder), verified, then switch the library directory's marker to them.
 *
 * Under the library's exclusive lock (no check-in or gc runs meanwhile): objects are
 * copied packs first, then index files (an index file never names a pack not there yet),
 * skipping what the destination already has with the same size, so a run cut short is
 * resumed by running it again; the catalog's rows are replaced in one transaction; then the
 * destination is verified (every pack re-hashed, every blob of every active version
 * present, row counts equal) and only then does the marker change. The source is left as
 * it was (remove it once satisfied).
 */
export async function migrateLibrary(
  dir: string | undefined,
  to: { catalog: string; store: string },
  opts: { cacheDir?: string; progress?: (p: MigrateProgress) => void } = {},
): Promise<MigrateResult> {
  const src = await Library.open(dir, { create: false });
  const root = src.dir;
  const toCatalog = to.catalog === 'local' ? path.join(root, 'catalog.db') : to.catalog;
  const toStore = to.store === 'local' ? path.join(root, 'store') : to.store;
  if (to.catalog !== 'local' && !isPostgresUrl(to.catalog))
    throw new StrataError('USAGE', `--to takes a postgres:// URL or 'local', not ${JSON.stringify(to.catalog)}`);
  if (to.store !== 'local' && !isS3Url(to.store))
    throw new StrataError('USAGE', `--store takes an s3:// URL or 'local', not ${JSON.stringify(to.store)}`);
  const from = { ...src.places };
  const shownTo = { catalog: isPostgresUrl(toCatalog) ? redactUrl(toCatalog) : toCatalog, store: toStore };
  if (from.catalog === shownTo.catalog && from.store === shownTo.store) {
    await src.close();
    throw new StrataError('USAGE', 'the library is there already', { file: root });
  }
  const progress = opts.progress;
  let lock: RepoLock | undefined;
  let dest: Backend | undefined;
  let destDb: Db | undefined;
  try {
    progress?.({ step: 'lock' });
    lock = await RepoLock.acquire(src.store.backend, 'exclusive', 'migrate', 60_000);
    dest = await openBackend(toStore);
    const result: MigrateResult = {
      from,
      to: shownTo,
      copiedObjects: 0,
      copiedBytes: 0,
      presentObjects: 0,
      removedObjects: 0,
      rows: {},
      versions: 0,
      blobs: 0,
    };
    // objects: packs, then index files, then config
    const want = await storeObjects(src.store.backend);
    const there = await storeObjects(dest);
    const order = [...want.keys()].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : 1));
    let n = 0;
    for (const key of order) {
      n++;
      if (there.get(key) === want.get(key)) {
        result.presentObjects++;
        continue;
      }
      const body = await src.store.backend.get(key);
      if (body.length !== want.get(key))
        throw new StrataError('CORRUPT', `object changed size while copying (${body.length} != ${want.get(key)})`, {
          file: `${src.store.name}/${key}`,
        });
      await dest.put(key, body);
      result.copiedObjects++;
      result.copiedBytes += body.length;
      progress?.({ step: 'objects', done: n, total: order.length });
    }
    // left over from an older copy (packs gc removed since): index files first
    for (const key of [...there.keys()].sort((a, b) => rank(b) - rank(a))) {
      if (want.has(key)) continue;
      await dest.delete(key);
      result.removedObjects++;
    }
    // catalog rows
    destDb = await openCatalogDb(toCatalog);
    await migrate(destDb, ALL_MIGRATIONS);
    result.rows = await copyRows(src.catalog.db, destDb, progress);
    await destDb.close();
    destDb = undefined;
    await dest.close();
    dest = undefined;
    // verify the destination as a library, before anything points at it
    progress?.({ step: 'verify' });
    const check = await Library.open(root, { create: false, catalog: placeArg(toCatalog), store: placeArg(toStore) });
    try {
      const v = await verifyLibrary(check);
      if (v.findings.length > 0 || v.errors.length > 0)
        throw new StrataError(
          'CORRUPT',
          `the copy does not verify (${v.findings.length} findings: ${v.errors.slice(0, 3).join('; ')}); the library still uses ${from.catalog}`,
          { file: root },
        );
      const counts = await check.catalog.db.all<{ t: string; n: number }>(
        Object.keys(result.rows)
          .map((t) => `SELECT '${t}' AS t, COUNT(*) AS n FROM ${t}`)
          .join(' UNION ALL '),
      );
      for (const c of counts) {
        if (Number(c.n) !== result.rows[c.t])
          throw new StrataError('CORRUPT', `table ${c.t}: ${c.n} rows copied, ${result.rows[c.t]} in the source`, {
            file: shownTo.catalog,
          });
      }
      const a = await storeObjects(src.store.backend);
      const b = await storeObjects(check.store.backend);
      for (const [k, size] of a) {
        if (b.get(k) !== size) throw new StrataError('CORRUPT', `object ${k} missing or of another size in the copy`);
      }
      result.versions = v.versions;
      result.blobs = v.blobs;
    } finally {
      await check.close();
    }
    // switch
    progress?.({ step: 'switch' });
    const markerFile = path.join(root, MARKER);
    const marker = JSON.parse(readFileSync(markerFile, 'utf8')) as Record<string, unknown>;
    delete marker.catalog;
    delete marker.store;
    if (to.catalog !== 'local') marker.catalog = withoutPassword(toCatalog);
    if (to.store !== 'local') marker.store = toStore;
    writeFileSync(`${markerFile}.tmp`, `${JSON.stringify(marker)}\n`);
    renameSync(`${markerFile}.tmp`, markerFile);
    return result;
  } finally {
    await destDb?.close().catch(() => {});
    await dest?.close().catch(() => {});
    await lock?.release().catch(() => {});
    await src.close();
  }
}

/** What Library.open takes to name a place explicitly ('local' ones are the directory's own). */
function placeArg(where: string): string {
  return isPostgresUrl(where) || isS3Url(where) ? where : 'local';
}

function rank(key: string): number {
  return key.startsWith('packs/') ? 0 : key.startsWith('index/') ? 1 : 2;
}

function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    u.password = '';
    return u.toString();
  } catch {
    return url;
  }
}
