import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { Access } from '../../src/catalog/access.js';
import { Catalog } from '../../src/catalog/catalog.js';
import { PgDb } from '../../src/catalog/pg.js';
import {
  type BootProfile,
  loadProfile,
  nearestProfile,
  PROFILE_KIND,
  saveProfile,
} from '../../src/catalog/profiles.js';
import { ALL_MIGRATIONS, migrateCatalogDb } from '../../src/library/migrate.js';
import { pgWithSchema, psql, testServices, uniqueName } from '../helpers/services.js';

/**
 * The catalog on a real PostgreSQL 15 (scripts/test-services.sh): the same statements as
 * SQLite, read back by psql (the oracle), with concurrent writers from separate pools
 * (separate servers in production) and the start-up errors a user sees.
 */
const svc = testServices();

const sample = (image: string, manifest: string, tags: string[] = []) => ({
  image,
  manifest,
  virtualSize: 5 * 1024 ** 3,
  usedBytes: 500,
  storedBytes: 200,
  newBytes: 100,
  exact: true,
  parents: [],
  tags,
});

test('catalog on PostgreSQL: versions, tags, refs; rows as psql reads them; migrations recorded once', async () => {
  const schema = uniqueName('cat');
  const url = pgWithSchema(svc.pg, schema);
  const c = await Catalog.open(await PgDb.open(url));
  try {
    const m1 = `${'a'.repeat(63)}1`;
    const m2 = `${'b'.repeat(63)}2`;
    await c.addVersion(sample('debian', m1, ['12']));
    const v2 = await c.addVersion({
      ...sample('debian', m2, ['12', 'latest']),
      parents: [{ image: 'debian', number: 1 }],
    });
    assert.equal(v2.number, 2);
    assert.equal(v2.virtualSize, 5 * 1024 ** 3, 'BIGINT comes back as a number');
    assert.equal((await c.resolve('debian:12')).number, 2);
    assert.equal((await c.resolve('bbbbbbbb')).number, 2);
    assert.deepEqual(
      (await c.images()).map((i) => [i.name, i.versions, i.latest]),
      [['debian', 2, 2]],
    );
    await c.deleteVersion('debian', 1);
    assert.deepEqual(
      psql(svc.pg, schema, 'SELECT image, number, manifest, virtual_size, state FROM versions ORDER BY number'),
      [`debian\t1\t${m1}\t5368709120\tdeleted`, `debian\t2\t${m2}\t5368709120\tactive`],
    );
    assert.deepEqual(psql(svc.pg, schema, 'SELECT tag, number FROM tags ORDER BY tag'), ['12\t2', 'latest\t2']);
    assert.deepEqual(psql(svc.pg, schema, 'SELECT id FROM schema_migrations ORDER BY id'), [
      'catalog-1',
      'inspection-1',
      'profiles-1',
      'version-message-1',
    ]);
    await Access.open(c.db);
    const again = await migrateCatalogDb(url);
    assert.deepEqual(again.applied, [], 'nothing left to apply');
    assert.deepEqual([...again.all].sort(), ALL_MIGRATIONS.map((m) => m.id).sort());
  } finally {
    await c.close();
  }
});

test('three pools (three servers) adding versions of one image and moving one tag at once: numbers 1..N, none lost, no error', async () => {
  const url = pgWithSchema(svc.pg, uniqueName('race'));
  // several processes starting at once migrate at once
  const dbs = await Promise.all([PgDb.open(url), PgDb.open(url), PgDb.open(url)]);
  const cats = await Promise.all(dbs.map((d) => Catalog.open(d)));
  try {
    const per = 12;
    const made = await Promise.all(
      cats.flatMap((c, k) =>
        Array.from({ length: per }, (_, i) => c.addVersion(sample('img', `${k}${i}`.padStart(64, 'c'), [`t${i % 3}`]))),
      ),
    );
    const numbers = made.map((v) => v.number).sort((a, b) => a - b);
    assert.deepEqual(
      numbers,
      Array.from({ length: per * cats.length }, (_, i) => i + 1),
    );
    const rows = psql(
      svc.pg,
      url.split('schema=')[1],
      'SELECT COUNT(*), COUNT(DISTINCT manifest), MAX(number) FROM versions',
    );
    assert.deepEqual(rows, [`${per * 3}\t${per * 3}\t${per * 3}`]);
    assert.deepEqual(psql(svc.pg, url.split('schema=')[1], 'SELECT COUNT(*) FROM schema_migrations'), ['4']);
    // one tag row moved by every pool at once: SERIALIZABLE transactions, retried when PostgreSQL aborts one
    await Promise.all(cats.flatMap((c) => Array.from({ length: 10 }, (_, i) => c.setTag('img', 'moving', i + 1))));
    const tag = psql(
      svc.pg,
      url.split('schema=')[1],
      "SELECT COUNT(*), MIN(number) BETWEEN 1 AND 10 FROM tags WHERE tag = 'moving'",
    );
    assert.deepEqual(tag, ['1\tt']);
  } finally {
    for (const c of cats) await c.close();
  }
});

test('start-up errors: a refused connection and a wrong password, one clear error each', async () => {
  // a port nobody listens on
  const port = await new Promise<number>((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  const refused = new URL(svc.pg);
  refused.port = String(port);
  await assert.rejects(PgDb.open(refused.toString()), (e: Error) => {
    assert.match(e.message, /cannot use the catalog database: .*ECONNREFUSED/);
    assert.match(e.message, /\*\*\*/, 'the password is not shown');
    assert.doesNotMatch(e.message, /strata-test/);
    return true;
  });
  const wrong = new URL(svc.pg);
  wrong.password = 'not-the-password';
  await assert.rejects(PgDb.open(wrong.toString()), /cannot use the catalog database: password authentication failed/);
  await assert.rejects(PgDb.open(`${svc.pg}?schema=Bad-Name`), /bad schema name/);
});

test('a connection the server ends in the middle of a transaction: the process lives, the transaction runs again', async () => {
  // what a PostgreSQL restart does to a busy server: FATAL 57P01 on a checked-out client
  const db = await PgDb.open(pgWithSchema(svc.pg, uniqueName('term')));
  try {
    let runs = 0;
    const r = await db.transaction(async (tx) => {
      runs++;
      const me = await tx.get<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      if (runs === 1) {
        // another session ends this one, and the notice arrives while the client waits between queries
        psql(svc.pg, 'public', `SELECT pg_terminate_backend(${me?.pid})`);
        await new Promise((res) => setTimeout(res, 500));
      }
      return (await tx.get<{ n: number }>('SELECT 41 + 1 AS n'))?.n;
    });
    assert.equal(r, 42);
    assert.equal(runs, 2);
  } finally {
    await db.close();
  }
});

test('boot profiles on PostgreSQL: stored, replaced, the nearest found; rows as psql reads them', async () => {
  const schema = uniqueName('prof');
  const c = await Catalog.open(await PgDb.open(pgWithSchema(svc.pg, schema)));
  try {
    const v1 = await c.addVersion(sample('img', `${'d'.repeat(63)}1`));
    const v2 = await c.addVersion({ ...sample('img', `${'d'.repeat(63)}2`), parents: [{ image: 'img', number: 1 }] });
    const other = await c.addVersion({
      ...sample('derived', `${'d'.repeat(63)}3`),
      parents: [{ image: 'img', number: 1 }],
    });
    const profile = (number: number, entries: number): BootProfile => ({
      kind: PROFILE_KIND,
      version: 1,
      image: 'img',
      number,
      manifest: `${'d'.repeat(63)}${number}`,
      recorded: '2026-12-06T00:00:00.000Z',
      trace: `boot-${entries}.trace`,
      records: entries,
      reads: entries,
      diskSize: 5 * 1024 ** 3,
      entries: Array.from({ length: entries }, (_, i) => ({
        kind: 'file',
        path: `/f${i}`,
        fileOffset: 0,
        disk: 4096 * (i + 1),
        length: 4096,
      })),
    });
    assert.equal(await nearestProfile(c.db, v2), undefined, 'none yet');
    await saveProfile(c.db, profile(1, 3));
    await saveProfile(c.db, profile(1, 5)); // a new boot recorded on the same version replaces the row
    assert.deepEqual(psql(svc.pg, schema, 'SELECT image, number, entries, bytes, trace FROM deploy_profiles'), [
      'img\t1\t5\t20480\tboot-5.trace',
    ]);
    assert.equal((await loadProfile(c.db, 'img', 1))?.entries.length, 5);
    assert.equal(await loadProfile(c.db, 'img', 2), undefined);
    assert.equal((await nearestProfile(c.db, v2))?.number, 1, 'N+1 falls back to N');
    assert.equal((await nearestProfile(c.db, other))?.number, 1, "another image falls back to its parent's");
    assert.equal(
      await nearestProfile(c.db, other, { mayUse: async (image) => image !== 'img' }),
      undefined,
      "not to a parent's the caller may not read",
    );
    assert.equal((await nearestProfile(c.db, v1))?.image, 'img');
  } finally {
    await c.close();
  }
});

test('readable image pages on PostgreSQL: access, filters, the window count and a page past the end', async () => {
  const schema = uniqueName('acl');
  const c = await Catalog.open(await PgDb.open(pgWithSchema(svc.pg, schema)));
  try {
    const a = await Access.open(c.db);
    for (const p of ['own', 'other']) await a.addProject(p);
    // name -> [owner project or null (no row: default own/private), visibility, accepted by other]
    const imgs: Record<string, [string | null, 'private' | 'shared' | 'public', boolean]> = {
      'own/a': ['own', 'private', false],
      'own/b': ['own', 'shared', true],
      'own/c': ['own', 'shared', false],
      'own/d': ['own', 'public', false],
      'other/e': ['other', 'private', false],
      'loose/f': [null, 'private', false],
    };
    for (const [name, [project, vis, accepted]] of Object.entries(imgs)) {
      await c.createImage(name);
      if (project === null) continue;
      await a.setImageAccess(name, project, vis);
      if (vis === 'shared') {
        await a.addMember(name, 'other');
        if (accepted) await a.setMemberStatus(name, 'other', 'accepted');
      }
    }
    const defaults = { project: 'own', visibility: 'private' as const };
    const who = (project: string | null, admin = false) => ({
      user: project ? 'u' : null,
      project,
      role: project ? ('reader' as const) : null,
      scope: 'read' as const,
      admin,
      tokenId: null,
    });
    const page = async (p: ReturnType<typeof who>, q: Record<string, string | number> = {}) =>
      a.readableImages(p, defaults, { limit: 50, offset: 0, ...q });
    const names = (r: { items: Array<{ image: string }> }) => r.items.map((i) => i.image);
    assert.deepEqual(names(await page(who('other'))), ['other/e', 'own/b', 'own/d']);
    assert.deepEqual(names(await page(who(null))), ['own/d']);
    assert.deepEqual(names(await page(who('own'))), ['loose/f', 'own/a', 'own/b', 'own/c', 'own/d']);
    assert.equal((await page(who(null, true))).total, 6);
    const p2 = await page(who('own'), { limit: 2, offset: 1 });
    assert.deepEqual(names(p2), ['own/a', 'own/b']);
    assert.equal(p2.total, 5, 'the window count');
    const past = await page(who('own'), { limit: 2, offset: 40 });
    assert.deepEqual(past, { items: [], total: 5 }, 'a page past the end still counts');
    assert.deepEqual(names(await page(who('own'), { project: 'own', visibility: 'private' })), ['loose/f', 'own/a']);
    assert.deepEqual(names(await page(who('other'), { prefix: 'own/' })), ['own/b', 'own/d']);
    const row = (await page(who('own'), { prefix: 'loose/' })).items[0];
    assert.deepEqual(row, { image: 'loose/f', project: 'own', visibility: 'private' });
  } finally {
    await c.close();
  }
});

test('held blobs since a time on PostgreSQL: read through a cursor in pages, exactly the rows psql selects; the one client is free after', async () => {
  const schema = uniqueName('held');
  // one connection: a cursor left open (or a client not given back) would stop the next query
  const db = await PgDb.open(pgWithSchema(svc.pg, schema), { max: 1 });
  const c = await Catalog.open(db);
  try {
    const a = await Access.open(c.db);
    for (const p of ['own', 'other']) await a.addProject(p);
    const hex = (i: number) => i.toString(16).padStart(64, '0');
    // more rows than two FETCH pages, some held by both projects, some old
    const own = Array.from({ length: 9000 }, (_, i) => hex(i));
    const other = Array.from({ length: 3000 }, (_, i) => hex(8000 + i));
    await a.holdBlobs('own', own);
    await a.holdBlobs('other', other);
    psql(svc.pg, schema, `UPDATE held_blobs SET created = '2000-01-01T00:00:00.000Z' WHERE digest < '${hex(500)}'`);
    const since = '2001-01-01T00:00:00.000Z';
    const got: string[] = [];
    await a.eachRecentlyHeld(since, (d) => got.push(d));
    const want = psql(svc.pg, schema, `SELECT digest FROM held_blobs WHERE created >= '${since}' ORDER BY digest`);
    assert.equal(want.length, 9000 - 500 + 3000);
    assert.deepEqual(got.sort(), want);
    await assert.rejects(
      db.each?.('SELECT no_such_column FROM held_blobs', [], () => {}) ?? Promise.resolve(),
      /no_such_column/,
    );
    assert.equal((await c.images()).length, 0, 'the connection answers after a cursor that failed');
  } finally {
    await c.close();
  }
});
