import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { Catalog, SCHEMA } from '../../src/catalog/catalog.js';
import { SqliteDb, toPostgres } from '../../src/catalog/db.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

const sample = (
  image: string,
  manifest: string,
  parents: Array<{ image: string; number: number }> = [],
  tags: string[] = [],
) => ({
  image,
  manifest,
  virtualSize: 1000,
  usedBytes: 500,
  storedBytes: 200,
  newBytes: 100,
  exact: false,
  parents,
  tags,
});

test('versions, parents, tags and refs; rows as the sqlite3 CLI reads them', async () => {
  const file = path.join(tempDir('catalog'), 'catalog.db');
  const c = await Catalog.open(SqliteDb.open(file));
  const m1 = 'a'.repeat(63) + '1';
  const m2 = 'b'.repeat(63) + '2';
  await c.addVersion(sample('debian', m1, [], ['12']));
  const v2 = await c.addVersion(sample('debian', m2, [{ image: 'debian', number: 1 }], ['12', 'latest']));
  assert.equal(v2.number, 2);
  assert.equal((await c.resolve('debian')).number, 2);
  assert.equal((await c.resolve('debian@1')).manifest, m1);
  assert.equal((await c.resolve('debian:12')).number, 2, 'tags move');
  assert.equal((await c.resolve('bbbbbbbb')).number, 2, 'digest prefix');
  await assert.rejects(c.resolve('debian:nope'), /no such tag/);
  await assert.rejects(c.resolve('nothing'), /no such image/);
  await assert.rejects(c.addVersion(sample('bad:name', m1)), /bad image name/);
  await c.deleteVersion('debian', 2);
  assert.equal((await c.resolve('debian')).number, 1);
  await assert.rejects(c.resolve('debian:12'), /no such tag/, 'tags on a deleted version go with it');
  assert.deepEqual(await c.liveManifests(), [m1]);
  await c.close();

  // oracle: the sqlite3 tool reading the same file
  const rows = JSON.parse(
    await run('sqlite3', ['-json', file, 'SELECT image, number, manifest, state FROM versions ORDER BY number']),
  );
  assert.deepEqual(rows, [
    { image: 'debian', number: 1, manifest: m1, state: 'active' },
    { image: 'debian', number: 2, manifest: m2, state: 'deleted' },
  ]);
  const parents = JSON.parse(await run('sqlite3', ['-json', file, 'SELECT * FROM version_parents']));
  assert.deepEqual(parents, [{ image: 'debian', number: 2, parent_image: 'debian', parent_number: 1 }]);
});

test('the SQL stays portable: no SQLite-only constructs; ? placeholders become $n for PostgreSQL', () => {
  for (const s of SCHEMA) {
    assert.doesNotMatch(s, /AUTOINCREMENT|OR REPLACE|WITHOUT ROWID|INSERT OR|PRAGMA/i, s);
  }
  assert.equal(
    toPostgres("SELECT a FROM t WHERE b = ? AND c = '?' AND d = ?"),
    "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $2",
  );
});
