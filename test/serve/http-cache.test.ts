import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { Access } from '../../src/catalog/access.js';
import { checkin } from '../../src/library/checkin.js';
import { inspectAfterCheckin } from '../../src/library/inspection.js';
import { Library } from '../../src/library/library.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { baseTree, extImageOf, tempDir } from '../library/images.js';
import { addPeople, Checked, serve } from './http-helpers.js';

/**
 * The service keeps token checks and serialized metadata answers while the catalog has not
 * changed (Db.changeStamp). What must hold: a change made anywhere (through the server,
 * through another connection to the catalog as another server process or the local CLI
 * makes) is seen by the very next request (a revoked token refused, a visibility change
 * answered 404, a new tag listed); a token's expiry is checked on every use; an answer
 * sent again is byte for byte the first, with an ETag that If-None-Match turns into a 304;
 * writes no answer reads (the request log, rate counters) leave the stamp alone.
 */
let dir: string;
let lib: Library;
let server: RunningServer;
let api: Checked;
let tokens: Record<string, string>;
let access: Access;
/** The same catalog through a connection of its own, as another process would write it. */
let other: Library;
let otherAccess: Access;

const V = '/v1/images/{name}/versions/{version}';
/** A file of the tree (test/library/images.ts makeTree), 40,000 bytes: a small file, sent whole. */
const FILE = '/dir0/sub0/file0.txt';

before(async () => {
  dir = tempDir('serve-cache');
  lib = await Library.open(path.join(dir, 'lib'));
  const img = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  ({ tokens, access } = await addPeople(lib));
  await checkin(lib, img, { name: 'own/base' });
  await inspectAfterCheckin(lib, await lib.catalog.resolve('own/base'), []);
  await access.setImageAccess('own/base', 'own', 'public');
  server = await serve(lib);
  api = await Checked.open(server.url);
  other = await Library.open(path.join(dir, 'lib'));
  otherAccess = await Access.open(other.catalog.db);
});

after(async () => {
  await server?.close();
  await other?.close();
  await lib?.close();
});

test('an answer asked again is the same bytes, with an ETag; If-None-Match gets a 304', async () => {
  const routes: Array<[string, Record<string, string | number>, Record<string, string | number>]> = [
    ['/v1/images', {}, { limit: 20 }],
    [`${V}/files`, { name: 'own/base', version: 1 }, { path: '/dir0/sub0' }],
    [`${V}/files/stat`, { name: 'own/base', version: 1 }, { path: FILE }],
    [`${V}/inspection`, { name: 'own/base', version: 1 }, {}],
    ['/v1/search', {}, { path: FILE }],
  ];
  for (const [tpl, params, query] of routes) {
    const a = await api.call('GET', tpl, { params, query, token: tokens['other-member'] });
    const b = await api.call('GET', tpl, { params, query, token: tokens['other-member'] });
    assert.equal(a.status, 200, tpl);
    assert.equal(b.status, 200, tpl);
    assert.deepEqual(b.bytes, a.bytes, tpl);
    const etag = b.headers.get('etag');
    assert.match(etag ?? '', /^"[A-Za-z0-9_-]{27}"$/, `${tpl}: ETag`);
    assert.equal(a.headers.get('etag'), etag, tpl);
    const c = await api.call('GET', tpl, {
      params,
      query,
      token: tokens['other-member'],
      headers: { 'if-none-match': etag as string },
    });
    assert.equal(c.status, 304, tpl);
    assert.equal(c.bytes.length, 0, tpl);
    // another caller's answer is its own (the admin sees what other-member does not)
    const d = await api.call('GET', tpl, {
      params,
      query,
      token: tokens['own-reader'],
      headers: { 'if-none-match': etag as string },
    });
    assert.notEqual(d.status, 304, `${tpl}: a 304 for another caller's answer`);
  }
});

test('a small file is one answer, cached; a range of it is not taken from the cache', async () => {
  const params = { name: 'own/base', version: 1 };
  const whole = await api.call('GET', `${V}/files/content`, { params, query: { path: FILE } });
  assert.equal(whole.status, 200);
  assert.deepEqual(
    whole.bytes,
    readFileSync(path.join(await baseTree(), FILE)),
    'the bytes of the tree mkfs was given',
  );
  const again = await api.call('GET', `${V}/files/content`, { params, query: { path: FILE } });
  assert.deepEqual(again.bytes, whole.bytes);
  assert.equal(again.headers.get('content-disposition'), whole.headers.get('content-disposition'));
  const part = await api.call('GET', `${V}/files/content`, {
    params,
    query: { path: FILE },
    headers: { range: 'bytes=2-5' },
  });
  assert.equal(part.status, 206);
  assert.deepEqual(part.bytes, whole.bytes.subarray(2, 6));
});

test('a change through another connection is seen by the next request', async () => {
  const t = tokens['other-member'];
  const ask = () =>
    api.call('GET', `${V}/files/stat`, {
      params: { name: 'own/base', version: 1 },
      query: { path: FILE },
      token: t,
    });
  const list = async () =>
    (
      (await api.call('GET', '/v1/images', { query: { limit: 50 }, token: t })).body as {
        items: Array<{ name: string }>;
      }
    ).items.map((i) => i.name);
  assert.equal((await ask()).status, 200);
  assert.equal((await ask()).status, 200);
  assert.deepEqual(await list(), ['own/base']);
  await otherAccess.setImageAccess('own/base', 'own', 'private');
  assert.equal((await ask()).status, 404, 'made private elsewhere: other-member must not read it');
  assert.deepEqual(await list(), []);
  await otherAccess.setImageAccess('own/base', 'own', 'public');
  assert.equal((await ask()).status, 200);

  // a tag added elsewhere is in the next version list
  const tags = async () =>
    (
      (await api.call('GET', '/v1/images/{name}/versions', { params: { name: 'own/base' }, token: t })).body as {
        items: Array<{ tags: string[] }>;
      }
    ).items[0].tags;
  assert.deepEqual(await tags(), []);
  await other.catalog.setTag('own/base', 'stable', 1);
  assert.deepEqual(await tags(), ['stable']);
});

test('a token revoked elsewhere is refused at its next use; an expiry at the first use past it', async () => {
  const t = await access.createToken({ user: 'other-member', project: 'other', scope: 'read' });
  const whoami = (token: string) => api.call('GET', '/v1/whoami', { token });
  const images = (token: string) => api.call('GET', '/v1/images', { query: { limit: 20 }, token });
  assert.equal((await whoami(t.token)).status, 200);
  assert.equal((await images(t.token)).status, 200);
  await otherAccess.revokeToken(t.row.id);
  assert.equal((await whoami(t.token)).status, 401);
  assert.equal((await images(t.token)).status, 401);

  // the user leaves the project elsewhere: the token is dead
  const u = await access.createToken({ user: 'third-admin', project: 'third', scope: 'read' });
  assert.equal((await images(u.token)).status, 200);
  await otherAccess.removeRole('third', 'third-admin');
  assert.equal((await images(u.token)).status, 401);

  const e = await access.createToken({ user: 'other-member', project: 'other', scope: 'read', expiresInMs: 1500 });
  assert.equal((await images(e.token)).status, 200);
  await new Promise((r) => setTimeout(r, 1600));
  assert.equal((await images(e.token)).status, 401, 'expired: refused though the catalog did not change');
});

test('the request log and rate counters do not change the stamp; other writes do, from any connection', async () => {
  const db = lib.catalog.db;
  assert.ok(db.changeStamp, 'SQLite tells its changes');
  const s0 = db.changeStamp?.();
  await access.logRequests([
    {
      user: 'x',
      project: null,
      token: null,
      method: 'GET',
      route: '/v1/images',
      op: 'images.list',
      image: null,
      version: null,
      status: 200,
      bytesIn: 0,
      bytesOut: 10,
      micros: 5,
    },
  ]);
  await access.addRequests('k', 1, 3);
  await access.dropRateWindows(0);
  assert.equal(db.changeStamp?.(), s0);
  await access.setImageAccess('own/base', 'own', 'public');
  const s1 = db.changeStamp?.();
  assert.notEqual(s1, s0, 'a write of this connection');
  await otherAccess.addProject('fourth');
  assert.notEqual(db.changeStamp?.(), s1, "another connection's commit");
});
