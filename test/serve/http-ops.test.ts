import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { gzip, gzipSync } from 'node:zlib';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { gc } from '../../src/library/library-verbs.js';
import { encodeChunkRecords, RemoteLibrary } from '../../src/serve/http/client.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { strata } from '../helpers/cli.js';
import { startRangeServer } from '../helpers/range-server.js';
import { ROOT, run } from '../helpers/tools.js';
import { baseTree, derivedTree, extImageOf, tempDir } from '../library/images.js';
import { addPeople, Checked, serve } from './http-helpers.js';

/**
 * The library service's downloads as qcow2 (checked by qemu-img), `strata nbd REF --remote`
 * (read by qemu-img over NBD), import of an image the server fetches from a URL, accounts
 * over the API (users, roles, tokens), gc of chunks uploaded for a version not committed
 * (kept for a grace period, then collected), rate limits shared by two server processes
 * on one catalog, and a graceful close that finishes an upload in flight.
 */
let dir: string;
let lib: Library;
let server: RunningServer;
let api: Checked;
let tokens: Record<string, string>;
let baseImg: string;
let derivedImg: string;
let rawOfBase: string;

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

before(async () => {
  dir = tempDir('serve-ops');
  baseImg = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  derivedImg = await extImageOf('ext4', await derivedTree(), 'dedup-derived', 64);
  lib = await Library.open(path.join(dir, 'lib'));
  ({ tokens } = await addPeople(lib));
  await checkin(lib, baseImg, { name: 'own/base' });
  server = await serve(lib);
  api = await Checked.open(server.url);
  const r = await api.call('GET', '/v1/images/{name}/versions/{version}/disk', {
    params: { name: 'own/base', version: 1 },
    token: tokens['own-reader'],
  });
  assert.equal(r.status, 200);
  rawOfBase = path.join(dir, 'base.raw');
  writeFileSync(rawOfBase, r.bytes);
});

after(async () => {
  await server?.close();
  await lib?.close();
});

describe('qcow2 download', () => {
  test('a version streams as qcow2 that qemu-img checks clean and reads as the raw download', async () => {
    const r = await api.call('GET', '/v1/images/{name}/versions/{version}/disk', {
      params: { name: 'own/base', version: 1 },
      query: { format: 'qcow2' },
      token: tokens['own-reader'],
    });
    assert.equal(r.status, 200);
    assert.equal(Number(r.headers.get('content-length')), r.bytes.length);
    assert.match(r.headers.get('content-disposition') ?? '', /\.qcow2"/);
    const q = path.join(dir, 'base.qcow2');
    writeFileSync(q, r.bytes);
    await run('qemu-img', ['check', '-f', 'qcow2', q]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', rawOfBase, q]);
    // holes stay holes: the qcow2 is smaller than the disk, which has free space
    const info = JSON.parse(await run('qemu-img', ['info', '--output=json', q])) as { 'virtual-size': number };
    assert.equal(info['virtual-size'], readFileSync(rawOfBase).length);
    assert.ok(r.bytes.length < info['virtual-size'], `${r.bytes.length} < ${info['virtual-size']}`);
  });

  test('ranges of the qcow2 put together are the whole file', async () => {
    const call = (range?: string) =>
      api.call('GET', '/v1/images/{name}/versions/{version}/disk', {
        params: { name: 'own/base', version: 1 },
        query: { format: 'qcow2' },
        token: tokens['own-reader'],
        headers: range ? { range } : {},
      });
    const whole = await call();
    const n = whole.bytes.length;
    const cuts = [0, 100, 65536 + 17, Math.floor(n / 2) + 3, n - 7, n];
    const parts: Buffer[] = [];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const p = await call(`bytes=${cuts[i]}-${cuts[i + 1] - 1}`);
      assert.equal(p.status, 206);
      assert.equal(p.headers.get('content-range'), `bytes ${cuts[i]}-${cuts[i + 1] - 1}/${n}`);
      parts.push(p.bytes);
    }
    assert.equal(sha(Buffer.concat(parts)), sha(whole.bytes));
  });

  test('a qcow2 download of an image the caller may not read is a 404', async () => {
    const r = await api.call('GET', '/v1/images/{name}/versions/{version}/disk', {
      params: { name: 'own/base', version: 1 },
      query: { format: 'qcow2' },
      token: tokens['other-member'],
    });
    assert.equal(r.status, 404);
  });
});

describe('strata nbd REF --remote', () => {
  test('serves a version of the service over NBD; qemu-img reads the same disk', async () => {
    const child = spawn(
      process.execPath,
      [path.join(ROOT, 'dist/cli/strata.cjs'), 'nbd', 'own/base', '--remote', server.url, '--port', '0', '--json'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, STRATA_TOKEN: tokens['own-reader'] } },
    );
    let out = '';
    let err = '';
    child.stderr.on('data', (c) => (err += c));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const listing = await new Promise<{ exports: Array<{ uri: string; size: number }> }>((resolve, reject) => {
        child.stdout.on('data', (c) => {
          out += c;
          try {
            resolve(JSON.parse(out));
          } catch {}
        });
        exited.then(() => reject(new Error(`strata nbd exited: ${err}`)));
      });
      const uri = listing.exports[0].uri;
      assert.equal(listing.exports[0].size, readFileSync(rawOfBase).length);
      await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', rawOfBase, uri]);
      // block status: free space is reported as holes (qemu-img map of the export shows zero runs)
      const map = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', uri])) as Array<{
        data: boolean;
      }>;
      assert.ok(map.some((e) => !e.data) && map.some((e) => e.data));
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited, 0, err);
    }
  });

  test('--overlay: qemu-io writes into a local overlay; checkin --remote of it sends what changed, parent the version it backs onto', async () => {
    // free blocks of the base's ext4 (dumpe2fs, not our reader): writes there keep the file system sound
    const dump = await run('dumpe2fs', [rawOfBase]);
    const blockSize = Number(/^Block size:\s+(\d+)/m.exec(dump)?.[1]);
    const free = [...dump.matchAll(/^\s+Free blocks: (\d+)-(\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
    const [first, last] = free.filter(([a, b]) => b - a >= 64).pop() ?? [0, -1];
    assert.ok(last - first >= 64, 'a free run of 64 blocks in the base');
    const at = (first + 8) * blockSize;
    const overlay = path.join(dir, 'remote-overlay.qcow2');
    const child = spawn(
      process.execPath,
      [
        path.join(ROOT, 'dist/cli/strata.cjs'),
        'nbd',
        'own/base',
        '--remote',
        server.url,
        '--overlay',
        overlay,
        '--port',
        '0',
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, STRATA_TOKEN: tokens['own-reader'] } },
    );
    let out = '';
    let err = '';
    child.stderr.on('data', (c) => (err += c));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const listing = await new Promise<{ exports: Array<{ uri: string; readOnly: boolean }> }>((resolve, reject) => {
        child.stdout.on('data', (c) => {
          out += c;
          try {
            resolve(JSON.parse(out));
          } catch {}
        });
        exited.then(() => reject(new Error(`strata nbd exited: ${err}`)));
      });
      assert.equal(listing.exports[0].readOnly, false);
      await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a ${at} 65536`, listing.exports[0].uri]);
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited, 0, err);
    }
    // the overlay alone is a clean qcow2 naming the version's manifest as its backing file
    const alone = `json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"${overlay}"}}`;
    await run('qemu-img', ['check', alone]);
    const base = await api.call('GET', '/v1/resolve', { query: { ref: 'own/base' }, token: tokens['own-reader'] });
    const info = JSON.parse(await run('qemu-img', ['info', '--output=json', overlay])) as {
      'backing-filename'?: string;
    };
    assert.equal(info['backing-filename'], `strata-library:${(base.body as { manifest: string }).manifest}`);

    // what the disk should now be: the base with the 64 KiB written
    const expected = Buffer.from(readFileSync(rawOfBase));
    expected.fill(0x5a, at, at + 65536);
    const r = await strata(['checkin', overlay, '--name', 'own/booted', '--exact', '--remote', server.url, '--json'], {
      env: { STRATA_TOKEN: tokens['own-member'] },
    });
    assert.equal(r.code, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { ref: string; chunks: number; chunksSent: number; chunkBytesSent: number };
    assert.equal(got.ref, 'own/booted@1');
    // the base's chunks are the server's already: what goes up is the changed part, not the disk
    assert.ok(got.chunksSent > 0 && got.chunksSent < got.chunks / 4, JSON.stringify(got));
    assert.ok(got.chunkBytesSent < expected.length / 4, JSON.stringify(got));
    const dl = await api.call('GET', '/v1/images/{name}/versions/{version}/disk', {
      params: { name: 'own/booted', version: 1 },
      token: tokens['own-reader'],
    });
    assert.equal(dl.status, 200);
    assert.equal(dl.bytes.length, expected.length);
    if (!dl.bytes.equals(expected)) {
      let i = 0;
      while (dl.bytes[i] === expected[i]) i++;
      let j = expected.length - 1;
      while (dl.bytes[j] === expected[j]) j--;
      assert.fail(
        `the checked-in disk differs from the base with the write in ${i}-${j} (write at ${at}-${at + 65536})`,
      );
    }
    const prov = await api.call('GET', '/v1/images/{name}/versions/{version}/provenance', {
      params: { name: 'own/booted', version: 1 },
      token: tokens['own-reader'],
    });
    assert.deepEqual((prov.body as { parents: unknown[] }).parents, [{ image: 'own/base', number: 1 }]);

    // a caller who may not read the version the overlay backs onto gets it named as missing; nothing is made
    const denied = await strata(['checkin', overlay, '--name', 'other/booted', '--remote', server.url], {
      env: { STRATA_TOKEN: tokens['other-member'] },
    });
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /backing version \(manifest [0-9a-f]{64}\) is not readable/);
    const none = await api.call('GET', '/v1/images/{name}', { params: { name: 'other/booted' }, token: tokens.root });
    assert.equal(none.status, 404);
  });

  test('without a token a private version is missing, and nbd says so', async () => {
    const r = await strata(['nbd', 'own/base', '--remote', server.url, '--port', '0'], {
      env: { STRATA_TOKEN: '' },
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no such version: own\/base/);
  });
});

describe('import on the server', () => {
  test('a URL import by a project member makes the version a local check-in makes', async () => {
    const web = await startRangeServer({ 'derived.img': derivedImg });
    try {
      const r = await api.call('POST', '/v1/images/{name}/import', {
        params: { name: 'own/fetched' },
        token: tokens['own-member'],
        json: { url: web.url('derived.img'), parents: ['own/base'], tags: ['web'] },
      });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const v = r.body as { manifest: string; image: string; number: number; parents: unknown[] };
      // the same cut as a local check-in of the file: the same chunks in the same order
      const other = await Library.open(path.join(dir, 'compare'));
      try {
        const local = await checkin(other, derivedImg, { name: 'x' });
        const theirs = await lib.layout(v.manifest);
        const ours = await other.layout(local.manifest);
        assert.deepEqual(theirs.chunks, ours.chunks);
        assert.deepEqual(theirs.ranges, ours.ranges);
        assert.equal(theirs.sourceName, web.url('derived.img'));
      } finally {
        await other.close();
      }
      assert.deepEqual(v.parents, [{ image: 'own/base', number: 1 }]);
      assert.ok(web.requests > 0);
    } finally {
      await web.close();
    }
  });

  test('refused: another project’s name space, a server path without admin, both or neither source', async () => {
    const web = await startRangeServer({ 'derived.img': derivedImg });
    try {
      const imports = async () => (await lib.catalog.images()).map((i) => i.name).sort();
      const before = await imports();
      const cases: Array<[string, string, unknown, number]> = [
        ['other-member', 'own/x1', { url: web.url('derived.img') }, 400],
        ['own-member', 'own/x2', { path: derivedImg }, 403],
        ['anonymous', 'own/x3', { url: web.url('derived.img') }, 401],
        ['own-reader', 'own/x4', { url: web.url('derived.img') }, 403],
        ['own-member', 'own/x5', { url: web.url('derived.img'), path: derivedImg }, 400],
        ['own-member', 'own/x6', {}, 400],
        ['own-member', 'own/x7', { url: 'file:///etc/passwd' }, 400],
      ];
      for (const [who, name, body, status] of cases) {
        const r = await api.call('POST', '/v1/images/{name}/import', {
          params: { name },
          token: who === 'anonymous' ? undefined : tokens[who],
          json: body,
        });
        assert.equal(r.status, status, `${who} ${name} ${JSON.stringify(r.body)}`);
        assert.equal(r.type, 'application/problem+json');
      }
      assert.deepEqual(await imports(), before);
    } finally {
      await web.close();
    }
  });

  test('a fetched overlay naming a library version as its backing file is refused', async () => {
    const secret = (await lib.catalog.resolve('own/base')).manifest;
    const o = path.join(tempDir('serve-ops-overlay'), 'evil.qcow2');
    await run('qemu-img', [
      'create',
      '-f',
      'qcow2',
      '-u',
      '-b',
      `strata-library:${secret}`,
      '-F',
      'raw',
      o,
      String(readFileSync(rawOfBase).length),
    ]);
    const web = await startRangeServer({ 'evil.qcow2': o });
    try {
      const r = await api.call('POST', '/v1/images/{name}/import', {
        params: { name: 'other/evil' },
        token: tokens['other-member'],
        json: { url: web.url('evil.qcow2') },
      });
      assert.equal(r.status, 403, JSON.stringify(r.body));
      assert.match((r.body as { detail: string }).detail, /names a library version/);
      assert.equal(await lib.catalog.image('other/evil'), undefined);
    } finally {
      await web.close();
    }
  });
});

describe('accounts over the API', () => {
  test('who may add users and projects, give roles, make, list and revoke tokens', async () => {
    const call = (m: string, tpl: string, who: string, o: Parameters<Checked['call']>[2] = {}) =>
      api.call(m, tpl, { ...o, token: who === 'anonymous' ? undefined : tokens[who] });
    // users and projects: server admins only
    for (const [who, status] of [
      ['anonymous', 401],
      ['own-admin', 403],
      ['own-admin-read', 403],
      ['root', 201],
    ] as const) {
      const r = await call('POST', '/v1/users', who, { json: { name: `u-${who}` } });
      assert.equal(r.status, status, who);
      const p = await call('POST', '/v1/projects', who, { json: { name: `p-${who}` } });
      assert.equal(p.status, status, who);
    }
    assert.equal((await call('POST', '/v1/users', 'root', { json: { name: 'u-root' } })).status, 409);
    assert.equal((await call('GET', '/v1/users', 'own-admin')).status, 403);
    const users = await call('GET', '/v1/users', 'root');
    assert.ok((users.body as { items: Array<{ name: string }> }).items.some((u) => u.name === 'u-root'));
    // roles: a project's admins (write token) and server admins, in that project only
    for (const [who, project, status] of [
      ['own-member', 'own', 403],
      ['own-admin-read', 'own', 403],
      ['other-admin', 'own', 403],
      ['own-admin', 'other', 403],
      ['own-admin', 'own', 200],
      ['root', 'other', 200],
    ] as const) {
      const r = await call('PUT', '/v1/projects/{project}/users/{user}', who, {
        params: { project, user: 'u-root' },
        json: { role: 'reader' },
      });
      assert.equal(r.status, status, `${who} in ${project}`);
    }
    // tokens: a member makes its own in its token's project, never for others or elsewhere
    const mk = await call('POST', '/v1/tokens', 'own-member', { json: { scope: 'read', expires: '1d' } });
    assert.equal(mk.status, 201);
    const t = mk.body as { token: string; id: string; project: string; user: string; expires: string };
    assert.equal(t.user, 'own-member');
    assert.equal(t.project, 'own');
    assert.ok(t.expires);
    const me = await fetch(`${server.url}/v1/whoami`, { headers: { authorization: `Bearer ${t.token}` } });
    assert.equal(((await me.json()) as { scope: string }).scope, 'read');
    assert.equal((await call('POST', '/v1/tokens', 'own-member', { json: { user: 'own-admin' } })).status, 403);
    assert.equal((await call('POST', '/v1/tokens', 'own-member', { json: { project: 'other' } })).status, 403);
    assert.equal((await call('POST', '/v1/tokens', 'own-admin-read', { json: {} })).status, 403);
    assert.equal((await call('POST', '/v1/tokens', 'anonymous', { json: {} })).status, 401);
    assert.equal(
      (await call('POST', '/v1/tokens', 'root', { json: { user: 'u-root', project: 'own', scope: 'write' } })).status,
      201,
    );
    // listing: one's own; another user's token cannot be revoked and reads as missing
    const mine = (await call('GET', '/v1/tokens', 'own-member')).body as { items: Array<{ id: string; user: string }> };
    assert.ok(mine.items.every((x) => x.user === 'own-member'));
    assert.ok(mine.items.some((x) => x.id === t.id));
    const foreign = await call('DELETE', '/v1/tokens/{id}', 'other-member', { params: { id: t.id } });
    assert.equal(foreign.status, 404);
    const ghost = await call('DELETE', '/v1/tokens/{id}', 'other-member', { params: { id: '0123456789abcdef' } });
    assert.deepEqual(
      { ...(foreign.body as object), detail: '', instance: '' },
      { ...(ghost.body as object), detail: '', instance: '' },
    );
    assert.equal((await call('DELETE', '/v1/tokens/{id}', 'own-member', { params: { id: t.id } })).status, 204);
    const dead = await fetch(`${server.url}/v1/whoami`, { headers: { authorization: `Bearer ${t.token}` } });
    assert.equal(dead.status, 401);
    assert.equal((await call('DELETE', '/v1/tokens/{id}', 'own-member', { params: { id: t.id } })).status, 404);
    // roles can be taken away again
    assert.equal(
      (
        await call('DELETE', '/v1/projects/{project}/users/{user}', 'own-admin', {
          params: { project: 'own', user: 'u-root' },
        })
      ).status,
      204,
    );
    assert.equal((await call('GET', '/v1/projects', 'root')).status, 200);
  });

  test('the CLI makes and revokes tokens through --remote', async () => {
    const env = { env: { STRATA_TOKEN: tokens['own-admin'] } };
    const c = await strata(['token', 'create', '--scope', 'read', '--remote', server.url, '--json'], env);
    assert.equal(c.code, 0, c.stderr);
    const t = JSON.parse(c.stdout) as { token: string; id: string };
    const remote = new RemoteLibrary(server.url, t.token);
    assert.equal((await remote.whoami()).user, 'own-admin');
    const l = await strata(['token', 'list', '--remote', server.url, '--json'], env);
    assert.ok((JSON.parse(l.stdout) as Array<{ id: string }>).some((x) => x.id === t.id));
    const r = await strata(['token', 'revoke', t.id, '--remote', server.url], env);
    assert.equal(r.code, 0, r.stderr);
    await assert.rejects(remote.whoami(), /unknown, expired or revoked/);
    const u = await strata(
      ['user', 'add', 'cli-user', '--project', 'own', '--role', 'reader', '--remote', server.url],
      {
        env: { STRATA_TOKEN: tokens.root },
      },
    );
    assert.equal(u.code, 0, u.stderr);
    assert.match(u.stdout, /own:reader/);
  });
});

describe('gc and upload sessions', () => {
  test('uploaded chunks no version names survive gc within the grace period, and go after it', async () => {
    const data = randomBytes(200_000);
    const digest = sha(data);
    const up = await api.call('POST', '/v1/chunks', {
      token: tokens['own-member'],
      body: encodeChunkRecords([{ digest, data }]),
    });
    assert.equal(up.status, 200);
    const missing = async () =>
      (
        (
          await api.call('POST', '/v1/chunks/missing', {
            token: tokens['own-member'],
            json: { digests: [digest] },
          })
        ).body as { missing: string[] }
      ).missing;
    assert.deepEqual(await missing(), []);
    const kept = await gc(lib, { uploadGraceMs: 3600_000 });
    assert.ok(kept.uploadBlobs >= 1);
    assert.ok(lib.store.has(digest));
    assert.deepEqual(await missing(), []);
    const read = await api.call('GET', '/v1/chunks/{digest}', { params: { digest }, token: tokens['own-member'] });
    assert.equal(sha(read.bytes), digest);
    // past the grace period: collected, and the service says so (the client would send it again)
    await gc(lib, { uploadGraceMs: 0 });
    assert.equal(lib.store.has(digest), false);
    assert.deepEqual(await missing(), [digest]);
    // versions are untouched
    const v = await api.call('GET', '/v1/images/{name}/versions/{version}/disk', {
      params: { name: 'own/base', version: 1 },
      token: tokens['own-reader'],
    });
    assert.equal(sha(v.bytes), sha(readFileSync(rawOfBase)));
  });
});

describe('compressed request bodies', () => {
  test('gzip bodies are read; a bomb past the limit is 413, garbage is 400; nothing stored', async () => {
    const post = (tpl: string, body: Uint8Array, type: string) =>
      fetch(`${server.url}${tpl}`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${tokens['own-member']}`,
          'content-type': type,
          'content-encoding': 'gzip',
        },
        body,
      });
    const data = randomBytes(4096);
    const digest = sha(data);
    const ok = await post('/v1/chunks/missing', gzipSync(JSON.stringify({ digests: [digest] })), 'application/json');
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { missing: [digest] });
    // 256 MiB of zeros in ~256 KiB of gzip: refused once the decompressed bytes pass the chunk batch limit
    // (made off the event loop: a blocked loop makes fetch reuse a connection the server closed meanwhile)
    const bomb = await promisify(gzip)(Buffer.alloc(256 << 20), { level: 9 });
    const b = await post('/v1/chunks', bomb, 'application/octet-stream');
    assert.equal(b.status, 413);
    assert.equal(b.headers.get('content-type')?.split(';')[0], 'application/problem+json');
    const g = await post('/v1/chunks', Buffer.from('not gzip at all, not at all'), 'application/octet-stream');
    assert.ok(g.status === 400, `garbage: ${g.status} ${await g.text()}`);
    const z = await fetch(`${server.url}/v1/chunks/missing`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${tokens['own-member']}`,
        'content-type': 'application/json',
        'content-encoding': 'br',
      },
      body: '{}',
    });
    assert.equal(z.status, 415);
    assert.equal(lib.store.has(sha(Buffer.alloc(0))), false);
  });
});

describe('rate limits across processes', () => {
  test('two servers on one catalog share a token’s count, and a restart does not reset it', async () => {
    const libDir = path.join(dir, 'lib');
    const second = await Library.open(libDir);
    const a = await serve(second, { rateLimit: 5, rateSyncMs: 0 });
    const third = await Library.open(libDir);
    const b = await serve(third, { rateLimit: 5, rateSyncMs: 0 });
    const tok = tokens['third-admin'];
    const hit = async (url: string) =>
      (await fetch(`${url}/v1/whoami`, { headers: { authorization: `Bearer ${tok}` } })).status;
    try {
      const got = [await hit(a.url), await hit(b.url), await hit(a.url), await hit(b.url), await hit(a.url)];
      // the minute may turn over between requests: then the count starts again, and
      // everything is admitted; otherwise the sixth, on either server, is refused
      const minute = Math.floor(Date.now() / 60_000);
      assert.deepEqual(got, [200, 200, 200, 200, 200]);
      const sixth = await hit(b.url);
      const seventh = await hit(a.url);
      if (Math.floor(Date.now() / 60_000) === minute) {
        assert.equal(sixth, 429);
        assert.equal(seventh, 429);
        await a.close();
        const again = await serve(second, { rateLimit: 5, rateSyncMs: 0 });
        const after = await hit(again.url);
        await again.close();
        if (Math.floor(Date.now() / 60_000) === minute) assert.equal(after, 429);
      }
    } finally {
      await a.close().catch(() => {});
      await b.close();
      await second.close();
      await third.close();
    }
  });
});

/** An upload whose body stops after its first MiB until `release()`. */
function gatedUpload(url: string, token: string, body: Uint8Array) {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  let sentFirst: () => void = () => {};
  const firstSent = new Promise<void>((r) => (sentFirst = r));
  const stream = new ReadableStream<Uint8Array>({
    async start(c) {
      c.enqueue(body.subarray(0, 1 << 20));
      sentFirst();
      await gate;
      c.enqueue(body.subarray(1 << 20));
      c.close();
    },
  });
  const response = fetch(`${url}/v1/chunks`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/octet-stream',
      'content-length': String(body.length),
    },
    body: stream,
    duplex: 'half',
  } as RequestInit);
  return { response, firstSent, release };
}

/** `strata serve` as a process on port 0 (default project own): the child, its URL, its exit code to come, its stderr so far. */
async function serveChild(libDir: string, args: string[] = []) {
  const child = spawn(
    process.execPath,
    [
      path.join(ROOT, 'dist/cli/strata.cjs'),
      'serve',
      '--library',
      libDir,
      '--listen',
      '127.0.0.1:0',
      '--quiet',
      '--default-project',
      'own',
      ...args,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (c) => {
      err += c;
      const m = /serving .*? at (http:\/\/[^\s)]+)/.exec(err);
      if (m) resolve(m[1]);
    });
    exited.then(() => reject(new Error(`strata serve exited: ${err}`)));
  });
  return { child, url, exited, stderr: () => err };
}

describe('graceful close', () => {
  test('strata serve on SIGTERM finishes an upload in flight, stores it, and exits 0', async () => {
    const libDir = path.join(dir, 'sigterm-lib');
    const l = await Library.open(libDir);
    const { tokens: t } = await addPeople(l);
    await l.close();
    const { child, url, exited, stderr } = await serveChild(libDir);
    const data = randomBytes(3 << 20);
    const digest = sha(data);
    const up = gatedUpload(url, t['own-member'], encodeChunkRecords([{ digest, data }]));
    await up.firstSent;
    await new Promise((r) => setTimeout(r, 300)); // the request is in the server's hands
    child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    up.release();
    const res = await up.response;
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(((await res.json()) as { added: number }).added, 1);
    assert.equal(await exited, 0, stderr());
    assert.match(stderr(), /SIGTERM: finishing requests in flight/);
    const again = await Library.open(libDir);
    try {
      assert.equal(sha(await again.store.get(digest)), digest);
      const logged = await again.catalog.db.all<{ op: string }>(
        "SELECT op FROM request_log WHERE op = 'chunks.upload'",
      );
      assert.equal(logged.length, 1);
    } finally {
      await again.close();
    }
  });

  test('strata serve --workers 2: two processes answer on one port, both see a chunk one stored; SIGTERM stops both', async () => {
    const libDir = path.join(dir, 'workers-lib');
    const l = await Library.open(libDir);
    const { tokens: t } = await addPeople(l);
    await l.close();
    const { child, url, exited, stderr } = await serveChild(libDir, ['--workers', '2']);
    // a fresh connection each (no keep-alive): the primary hands them to the workers in turn
    const get = (p: string, token?: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        http
          .get(`${url}${p}`, { agent: false, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          })
          .on('error', reject);
      });
    // the workers (the primary's children) are up once the port answers; wait for both
    const workers = () =>
      readdirSync('/proc').filter((d) => {
        try {
          return (
            /^\d+$/.test(d) &&
            readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1].split(' ')[1] === String(child.pid)
          );
        } catch {
          return false;
        }
      });
    assert.equal(workers().length, 2, 'two worker processes');
    const healthz = async () => {
      let n = 0;
      for (const line of (await get('/metrics')).body.split('\n')) {
        const x = /^strata_http_requests_total\{[^}]*route="\/healthz"[^}]*\} (\d+)$/.exec(line);
        if (x) n += Number(x[1]);
      }
      return n;
    };
    // each worker counts its own requests: two /metrics answers in a row from the two workers
    // add up to the healthz requests sent (from one worker both would show them all); the
    // second worker may still be starting, so ask again until it answers (a minute at most)
    let sent = 0;
    let counts: number[] = [];
    for (let round = 0; round < 60; round++) {
      for (let i = 0; i < 4; i++, sent++) assert.equal((await get('/healthz')).status, 200);
      counts = [await healthz(), await healthz()];
      if (counts[0] > 0 && counts[1] > 0 && counts[0] + counts[1] === sent) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.ok(counts[0] > 0 && counts[1] > 0 && counts[0] + counts[1] === sent, `healthz counts ${counts} of ${sent}`);
    // a chunk uploaded through one connection is read back through the next (the other worker)
    const data = randomBytes(100_000);
    const digest = sha(data);
    const up = await fetch(`${url}/v1/chunks`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t['own-member']}`, 'content-type': 'application/octet-stream' },
      body: encodeChunkRecords([{ digest, data }]),
    });
    assert.equal(up.status, 200, await up.clone().text());
    // asked on two fresh connections (both workers)
    const missing = () =>
      new Promise<string[]>((resolve, reject) => {
        const req = http.request(
          `${url}/v1/chunks/missing`,
          {
            method: 'POST',
            agent: false,
            headers: { authorization: `Bearer ${t['own-member']}`, 'content-type': 'application/json' },
          },
          (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve((JSON.parse(body) as { missing: string[] }).missing));
          },
        );
        req.on('error', reject);
        req.end(JSON.stringify({ digests: [digest, sha(Buffer.from('never uploaded'))] }));
      });
    // the worker that stored it says it is held; the other may not know it until its index
    // refreshes (it then asks for it again: the store keeps one copy, a commit refreshes first)
    const never = sha(Buffer.from('never uploaded'));
    const answers = [await missing(), await missing()];
    for (const a of answers) assert.ok(a.includes(never), `${never} is missing: ${a}`);
    assert.ok(
      answers.some((a) => a.length === 1),
      `one worker holds ${digest}: ${JSON.stringify(answers)}`,
    );
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr());
    assert.equal((stderr().match(/SIGTERM: finishing requests in flight/g) ?? []).length, 2, stderr());
    assert.deepEqual(workers(), []);
    const again = await Library.open(libDir);
    try {
      assert.equal(sha(await again.store.get(digest)), digest);
    } finally {
      await again.close();
    }
  });

  test('close() waits for an upload in flight, which is stored; then connections are refused', async () => {
    const libDir = path.join(dir, 'close-lib');
    const l = await Library.open(libDir);
    const { tokens: t } = await addPeople(l);
    const s = await serve(l, { requestLogMs: 60_000 });
    const data = randomBytes(3 << 20);
    const digest = sha(data);
    const body = encodeChunkRecords([{ digest, data }]);
    const up = gatedUpload(s.url, t['own-member'], body);
    await up.firstSent;
    await new Promise((r) => setTimeout(r, 200)); // the request is in the server's hands
    let closed = false;
    const closing = s.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(closed, false, 'close() waits for the upload');
    up.release();
    const res = await up.response;
    assert.equal(res.status, 200, await res.clone().text());
    assert.deepEqual(await res.json(), { received: 1, added: 1, bytes: body.length });
    await closing;
    await assert.rejects(fetch(`${s.url}/healthz`));
    // the request log, written in batches, was flushed by close()
    const logged = await l.catalog.db.all<{ op: string; status: number }>(
      "SELECT op, status FROM request_log WHERE op = 'chunks.upload'",
    );
    assert.deepEqual(logged, [{ op: 'chunks.upload', status: 200 }]);
    await l.close();
    const again = await Library.open(libDir);
    try {
      assert.equal(sha(await again.store.get(digest)), digest);
    } finally {
      await again.close();
    }
  });
});
