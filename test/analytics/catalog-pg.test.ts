/**
 * The request log read from a PostgreSQL catalog (the same table and statements as SQLite,
 * through the catalog's Db): rows written as `strata serve` writes them (Access.logRequests),
 * counted by psql (the database's own client) and by the test, then read by readCatalogLog.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readCatalogLog } from '../../src/analytics/request-log.js';
import { Access } from '../../src/catalog/access.js';
import { Catalog } from '../../src/catalog/catalog.js';
import { PgDb } from '../../src/catalog/pg.js';
import { pgWithSchema, psql, testServices, uniqueName } from '../helpers/services.js';

test('request_log on PostgreSQL: image requests, owners, time filter', { timeout: 300_000 }, async () => {
  const svc = testServices();
  const schema = uniqueName('analytics');
  const db = await PgDb.open(pgWithSchema(svc.pg, schema));
  try {
    await Catalog.open(db);
    const access = await Access.open(db);
    await access.setImageAccess('fac', 'facility', 'public');
    await access.setImageAccess('mine', 'p1', 'private');
    const t0 = Date.UTC(2026, 5, 1);
    const rows = [];
    for (let i = 0; i < 50; i++) {
      rows.push({
        at: new Date(t0 + i * 3600e3).toISOString(),
        user: `u${i % 3}`,
        project: i % 2 ? 'p1' : 'p2',
        token: null,
        method: 'GET',
        route: '/v1/images/:name/versions/:version/download',
        op: 'versions.download',
        image: i % 5 === 0 ? 'mine' : 'fac',
        version: 1,
        status: i === 7 ? 404 : 200,
        bytesIn: 0,
        bytesOut: 1000 + i,
        micros: 10,
      });
    }
    rows.push({ ...rows[0], image: null, op: 'images.list', version: null });
    await access.logRequests(rows);
    const counted = psql(svc.pg, schema, 'SELECT count(*) FROM request_log WHERE image IS NOT NULL AND status < 400');
    const got = await readCatalogLog(db);
    assert.equal(got.length, Number(counted[0]));
    assert.equal(got.length, 49);
    assert.equal(got.filter((r) => r.image === 'mine').length, 10);
    assert.ok(
      got.every((r) => (r.image === 'fac' ? r.owner === 'facility' && r.public : r.owner === 'p1' && !r.public)),
    );
    for (let i = 1; i < got.length; i++) assert.ok(got[i - 1].at <= got[i].at);
    const since = t0 + 10 * 3600e3;
    const until = t0 + 20 * 3600e3;
    const part = await readCatalogLog(db, { since, until });
    assert.equal(part.length, 10);
  } finally {
    await db.close();
  }
});
