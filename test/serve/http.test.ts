import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Access } from '../../src/catalog/access.js';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { encodeChunkRecords } from '../../src/serve/http/client.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { baseTree, derivedTree, extImageOf, tempDir } from '../library/images.js';
import { type Answer, addPeople, Checked, serve } from './http-helpers.js';

/**
 * The library service's access control, over real HTTP on a real port: an access matrix
 * generated over routes x caller (role, project, scope, anonymous, server admin) x
 * image visibility x membership state of the caller's project, each cell asserted
 * (including 404-not-403 and chunk scoping); every answer validated against
 * /openapi.json; hostile clients refused with problem documents and nothing stored.
 */
let dir: string;
let lib: Library;
let server: RunningServer;
let api: Checked;
let tokens: Record<string, string>;
let access: Access;
/** A chunk only the private image own/secret holds (the derived image's new data). */
let secretChunk: string;
let secretLayout: { chunks: string[]; chunkLengths: number[] };
let baseImg: string;
let derivedImg: string;

const VIS = ['private', 'shared', 'public'] as const;
const MEMBERSHIP = ['none', 'pending', 'accepted', 'rejected'] as const;
type Vis = (typeof VIS)[number];
type Mem = (typeof MEMBERSHIP)[number];
const imageName = (v: Vis, m: Mem) => `own/img-${v}-${m}`;

/** Callers: [token name or null, project, role, scope, server admin]. */
const CALLERS: Record<string, { project: string | null; role: string | null; write: boolean; admin: boolean }> = {
  anonymous: { project: null, role: null, write: false, admin: false },
  root: { project: null, role: null, write: true, admin: true },
  'own-admin': { project: 'own', role: 'admin', write: true, admin: false },
  'own-admin-read': { project: 'own', role: 'admin', write: false, admin: false },
  'own-member': { project: 'own', role: 'member', write: true, admin: false },
  'own-reader': { project: 'own', role: 'reader', write: true, admin: false },
  'other-admin': { project: 'other', role: 'admin', write: true, admin: false },
  'other-member': { project: 'other', role: 'member', write: true, admin: false },
  'third-admin': { project: 'third', role: 'admin', write: true, admin: false },
};

/** The rules, written out independently of src/serve/http/policy.ts. */
function mayRead(c: string, v: Vis, m: Mem): boolean {
  const k = CALLERS[c];
  if (k.admin || v === 'public' || k.project === 'own') return true;
  return v === 'shared' && m === 'accepted' && k.project === 'other';
}
const mayWrite = (c: string) => {
  const k = CALLERS[c];
  return k.write && (k.admin || (k.project === 'own' && (k.role === 'admin' || k.role === 'member')));
};
const mayManage = (c: string) => {
  const k = CALLERS[c];
  return k.write && (k.admin || (k.project === 'own' && k.role === 'admin'));
};
const denied = (c: string) => (c === 'anonymous' ? 401 : 403);

before(async () => {
  dir = tempDir('serve-http');
  lib = await Library.open(path.join(dir, 'lib'));
  baseImg = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  derivedImg = await extImageOf('ext4', await derivedTree(), 'dedup-derived', 64);
  ({ tokens, access } = await addPeople(lib));
  for (const v of VIS) {
    for (const m of MEMBERSHIP) {
      const name = imageName(v, m);
      await checkin(lib, baseImg, { name, tags: ['stable'] });
      await access.setImageAccess(name, 'own', v);
      if (m !== 'none') {
        await access.addMember(name, 'other');
        if (m !== 'pending') await access.setMemberStatus(name, 'other', m);
      }
    }
  }
  const s = await checkin(lib, derivedImg, { name: 'own/secret', parents: ['own/img-private-none'] });
  await access.setImageAccess('own/secret', 'own', 'private');
  const base = await lib.layout((await lib.catalog.resolve('own/img-private-none')).manifest);
  const layout = await lib.layout(s.manifest);
  const baseChunks = new Set(base.chunks);
  secretChunk = layout.chunks.find((c) => !baseChunks.has(c)) as string;
  assert.ok(secretChunk, 'the derived image has chunks of its own');
  secretLayout = layout;
  server = await serve(lib);
  api = await Checked.open(server.url);
});

after(async () => {
  await server?.close();
  await lib?.close();
});

const tok = (c: string) => (c === 'anonymous' ? undefined : tokens[c]);

/** A 404 for an unreadable image must read exactly like the one for a missing image. */
async function assertLikeMissing(a: Answer, make: (name: string) => Promise<Answer>, name: string) {
  assert.equal(a.status, 404);
  assert.equal(a.type, 'application/problem+json');
  const ghost = await make('own/no-such-image');
  assert.equal(ghost.status, 404);
  const norm = (x: Answer, n: string) => {
    const b = x.body as Record<string, string>;
    return { ...b, detail: b.detail.replaceAll(n, 'NAME'), instance: undefined };
  };
  assert.deepEqual(norm(a, name), norm(ghost, 'own/no-such-image'));
}

describe('access matrix', () => {
  const readRoutes: Array<[string, (c: string, name: string) => Promise<Answer>]> = [
    ['get image', (c, n) => api.call('GET', '/v1/images/{name}', { params: { name: n }, token: tok(c) })],
    ['list versions', (c, n) => api.call('GET', '/v1/images/{name}/versions', { params: { name: n }, token: tok(c) })],
    [
      'get version',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}', { params: { name: n, version: 1 }, token: tok(c) }),
    ],
    [
      'get version by tag',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}', {
          params: { name: n, version: 'stable' },
          token: tok(c),
        }),
    ],
    ['resolve', (c, n) => api.call('GET', '/v1/resolve', { query: { ref: `${n}:stable` }, token: tok(c) })],
    [
      'provenance',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}/provenance', {
          params: { name: n, version: 1 },
          token: tok(c),
        }),
    ],
    [
      'ls',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}/files', {
          params: { name: n, version: 1 },
          query: { path: '/dir0' },
          token: tok(c),
        }),
    ],
    [
      'stat',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}/files/stat', {
          params: { name: n, version: 1 },
          query: { path: '/big-text.txt' },
          token: tok(c),
        }),
    ],
    [
      'extents',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}/files/extents', {
          params: { name: n, version: 1 },
          query: { path: '/big-text.txt' },
          token: tok(c),
        }),
    ],
    [
      'read file',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}/files/content', {
          params: { name: n, version: 1 },
          query: { path: '/link-rel' },
          token: tok(c),
        }),
    ],
    [
      'download',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}/disk', {
          params: { name: n, version: 1 },
          headers: { range: 'bytes=1024-2047' },
          token: tok(c),
        }),
    ],
    [
      'inspection',
      (c, n) =>
        api.call('GET', '/v1/images/{name}/versions/{version}/inspection', {
          params: { name: n, version: 1 },
          token: tok(c),
        }),
    ],
    [
      'diff',
      (c, n) => api.call('GET', '/v1/diff', { query: { a: `${n}@1`, b: 'own/img-public-none@1' }, token: tok(c) }),
    ],
  ];

  for (const c of Object.keys(CALLERS)) {
    test(`reads as ${c}`, async () => {
      for (const v of VIS) {
        for (const m of MEMBERSHIP) {
          const name = imageName(v, m);
          const ok = mayRead(c, v, m);
          for (const [what, call] of readRoutes) {
            const a = await call(c, name);
            if (ok) assert.ok(a.status === 200 || a.status === 206, `${c} ${what} ${name}: ${a.status} ${a.bytes}`);
            else await assertLikeMissing(a, (n) => call(c, n), name);
          }
          // lists and search: there or not, never an error
          const list = await api.call('GET', '/v1/images', { query: { prefix: 'own/img-' }, token: tok(c) });
          assert.equal(list.status, 200);
          const names = (list.body as { items: Array<{ name: string }> }).items.map((i) => i.name);
          assert.equal(names.includes(name), ok, `${c} lists ${name}`);
          const hits = await api.call('GET', '/v1/search', { query: { path: '/big-text.txt' }, token: tok(c) });
          assert.equal(hits.status, 200);
          const found = (hits.body as { items: Array<{ image: string }> }).items.map((h) => h.image);
          assert.equal(found.includes(name), ok, `${c} finds ${name}`);
          const st = await api.call('GET', '/v1/storage', { token: tok(c) });
          assert.equal(st.status, 200);
          assert.equal(
            (st.body as { images: Array<{ name: string }> }).images.some((i) => i.name === name),
            ok,
            `${c} storage ${name}`,
          );
        }
      }
    });

    test(`writes as ${c}`, async () => {
      for (const v of VIS) {
        for (const m of MEMBERSHIP) {
          const name = imageName(v, m);
          const read = mayRead(c, v, m);
          const expect = (allowed: boolean, ok: number) => (!read ? 404 : allowed ? ok : denied(c));
          const tag = await api.call('PUT', '/v1/images/{name}/tags/{tag}', {
            params: { name, tag: `by-${c}` },
            json: { version: 1 },
            token: tok(c),
          });
          assert.equal(tag.status, expect(mayWrite(c), 200), `${c} tag ${name}`);
          const desc = await api.call('PATCH', '/v1/images/{name}', {
            params: { name },
            json: { description: `edited by ${c}` },
            token: tok(c),
          });
          assert.equal(desc.status, expect(mayWrite(c), 200), `${c} describe ${name}`);
          const vis = await api.call('PATCH', '/v1/images/{name}', {
            params: { name },
            json: { visibility: v },
            token: tok(c),
          });
          assert.equal(vis.status, expect(mayManage(c), 200), `${c} visibility ${name}`);
          const mem = await api.call('POST', '/v1/images/{name}/members', {
            params: { name },
            json: { project: 'third' },
            token: tok(c),
          });
          assert.equal(mem.status, expect(mayManage(c), 201), `${c} add member ${name}`);
          const members = await api.call('GET', '/v1/images/{name}/members', { params: { name }, token: tok(c) });
          const ownSide = CALLERS[c].admin || CALLERS[c].project === 'own';
          assert.equal(members.status, !read ? 404 : ownSide ? 200 : 403, `${c} members ${name}`);
          if (!read) {
            await assertLikeMissing(
              tag,
              (n) =>
                api.call('PUT', '/v1/images/{name}/tags/{tag}', {
                  params: { name: n, tag: `by-${c}` },
                  json: { version: 1 },
                  token: tok(c),
                }),
              name,
            );
          }
        }
      }
    });

    test(`chunks as ${c}`, async () => {
      const readSecret = CALLERS[c].admin || CALLERS[c].project === 'own';
      const got = await api.call('GET', '/v1/chunks/{digest}', { params: { digest: secretChunk }, token: tok(c) });
      assert.equal(got.status, readSecret ? 200 : 404, `${c} reads the secret chunk`);
      if (readSecret) assert.equal(createHash('sha256').update(got.bytes).digest('hex'), secretChunk);
      else {
        const ghost = await api.call('GET', '/v1/chunks/{digest}', {
          params: { digest: 'f'.repeat(64) },
          token: tok(c),
        });
        assert.equal(ghost.status, 404);
        assert.equal(
          (got.body as { detail: string }).detail.replace(secretChunk, 'D'),
          (ghost.body as { detail: string }).detail.replace('f'.repeat(64), 'D'),
        );
      }
      // which chunks do you need? a write caller of another project is told the secret one is missing
      const miss = await api.call('POST', '/v1/chunks/missing', { json: { digests: [secretChunk] }, token: tok(c) });
      const writer =
        CALLERS[c].write && (CALLERS[c].admin || CALLERS[c].role === 'admin' || CALLERS[c].role === 'member');
      if (!writer) assert.equal(miss.status, denied(c), `${c} may not ask`);
      else
        assert.deepEqual((miss.body as { missing: string[] }).missing, readSecret ? [] : [secretChunk], `${c} missing`);
    });
  }

  test('a shared image becomes readable once its member project accepts, and not before', async () => {
    const name = 'own/img-shared-pending';
    const before = await api.call('GET', '/v1/images/{name}', { params: { name }, token: tokens['other-member'] });
    assert.equal(before.status, 404);
    const inv = await api.call('GET', '/v1/shared', { token: tokens['other-member'] });
    assert.ok(
      (inv.body as { items: Array<{ image: string; status: string }> }).items.some(
        (i) => i.image === name && i.status === 'pending',
      ),
    );
    // a third project cannot answer for other: the invitation does not exist for it
    const wrong = await api.call('PUT', '/v1/images/{name}/members/{project}', {
      params: { name, project: 'other' },
      json: { status: 'accepted' },
      token: tokens['third-admin'],
    });
    await assertLikeMissing(
      wrong,
      (n) =>
        api.call('PUT', '/v1/images/{name}/members/{project}', {
          params: { name: n, project: 'other' },
          json: { status: 'accepted' },
          token: tokens['third-admin'],
        }),
      name,
    );
    const yes = await api.call('PUT', '/v1/images/{name}/members/{project}', {
      params: { name, project: 'other' },
      json: { status: 'accepted' },
      token: tokens['other-member'],
    });
    assert.equal(yes.status, 200);
    const now = await api.call('GET', '/v1/images/{name}', { params: { name }, token: tokens['other-member'] });
    assert.equal(now.status, 200);
    await access.setMemberStatus(name, 'other', 'pending'); // the matrix's state back
  });
});

describe('hostile clients', () => {
  const problemOf = (a: Answer, status: number) => {
    assert.equal(a.status, status, JSON.stringify(a.body));
    assert.equal(a.type, 'application/problem+json');
    const p = a.body as { type: string; title: string; status: number; detail: string };
    assert.equal(p.status, status);
    assert.ok(p.detail.length > 0 && p.type.startsWith('/problems/'));
    return p;
  };
  const versionsOf = async (name: string) => (await lib.catalog.versions(name)).length;

  test('a manifest naming a chunk the caller does not hold is refused; nothing is made', async () => {
    const layout = {
      kind: 'strata.layout',
      version: 1,
      virtualSize: 1 << 20,
      sourceName: 'stolen',
      sourceFormat: 'raw',
      scheme: 'none',
      exact: false,
      fileChunkSize: 1 << 20,
      diskChunkSize: 65536,
      volumes: [],
      chunks: [secretChunk],
      chunkLengths: [secretLayout.chunkLengths[secretLayout.chunks.indexOf(secretChunk)]],
      ranges: { disk: [0], length: [4096], chunk: [0], at: [0] },
      warnings: [],
    };
    const a = await api.call('POST', '/v1/images/{name}/versions', {
      params: { name: 'other/stolen' },
      json: { layout },
      token: tokens['other-admin'],
    });
    const p = problemOf(a, 409);
    assert.match(p.detail, /not held/);
    assert.equal(await lib.catalog.image('other/stolen'), undefined);
    // and into an image of a project it is no member of: 404 for a private one, like a missing one
    const b = await api.call('POST', '/v1/images/{name}/versions', {
      params: { name: 'own/img-private-none' },
      json: { layout },
      token: tokens['other-admin'],
    });
    problemOf(b, 400); // to it, own/... is a name outside its project, refused by the name rule as a missing one would be
    assert.equal(await versionsOf('own/img-private-none'), 1);
    // a manifest that lies about the chunk's length
    const c = await api.call('POST', '/v1/images/{name}/versions', {
      params: { name: 'own/liar' },
      json: { layout: { ...layout, chunkLengths: [layout.chunkLengths[0] + 1] } },
      token: tokens['own-admin'],
    });
    problemOf(c, 422);
    assert.equal(await lib.catalog.image('own/liar'), undefined);
    // a manifest that is not one
    const d = await api.call('POST', '/v1/images/{name}/versions', {
      params: { name: 'own/junk' },
      json: { layout: { kind: 'strata.layout', version: 1, ranges: 'no' } },
      token: tokens['own-admin'],
    });
    problemOf(d, 422);
    assert.equal(await lib.catalog.image('own/junk'), undefined);
  });

  test('wrong digests and torn records are refused and nothing is stored', async () => {
    const data = Buffer.from('bytes that are not what the digest says '.repeat(100));
    const claimed = createHash('sha256').update('something else').digest('hex');
    const good = Buffer.from('a perfectly good chunk '.repeat(50));
    const goodDigest = createHash('sha256').update(good).digest('hex');
    const body = encodeChunkRecords([
      { digest: goodDigest, data: good },
      { digest: claimed, data },
    ]);
    const a = await api.call('POST', '/v1/chunks', { body, token: tokens['own-member'] });
    problemOf(a, 422);
    assert.equal(lib.store.has(claimed), false);
    assert.equal(lib.store.has(goodDigest), false, 'a batch with one bad record stores none of it');
    const torn = await api.call('POST', '/v1/chunks', {
      body: body.subarray(0, body.length - 10),
      token: tokens['own-member'],
    });
    problemOf(torn, 400);
    assert.equal(lib.store.has(goodDigest), false);
    const asReader = await api.call('POST', '/v1/chunks', {
      body: encodeChunkRecords([{ digest: goodDigest, data: good }]),
      token: tokens['own-reader'],
    });
    problemOf(asReader, 403);
    assert.equal(lib.store.has(goodDigest), false);
  });

  test('paths with .. are refused', async () => {
    for (const p of ['/dir0/../etc', '../../etc/passwd', '/..']) {
      const a = await api.call('GET', '/v1/images/{name}/versions/{version}/files/content', {
        params: { name: 'own/img-public-none', version: 1 },
        query: { path: p },
        token: tokens['own-admin'],
      });
      assert.match(problemOf(a, 400).detail, /\.\./);
    }
    const bad = await api.call('GET', '/v1/images/{name}', { params: { name: 'own/../own/img-public-none' } });
    problemOf(bad, 400);
  });

  test('expired, revoked, unknown and malformed tokens are refused', async () => {
    const expired = await access.createToken({
      user: 'own-admin',
      project: 'own',
      scope: 'write',
      now: Date.now() - 2 * 86400e3,
      expiresInMs: 86400e3,
    });
    const revoked = await access.createToken({ user: 'own-admin', project: 'own', scope: 'write' });
    assert.ok(await access.revokeToken(revoked.row.id));
    for (const t of [expired.token, revoked.token, `${tokens['own-admin']}x`, 'strata_nope']) {
      const a = await api.call('GET', '/v1/images/{name}', { params: { name: 'own/img-public-none' }, token: t });
      problemOf(a, 401);
      const w = await api.call('PUT', '/v1/images/{name}/tags/{tag}', {
        params: { name: 'own/img-private-none', tag: 'evil' },
        json: { version: 1 },
        token: t,
      });
      problemOf(w, 401);
    }
    assert.equal((await lib.catalog.resolve('own/img-private-none')).tags.includes('evil'), false);
    // a member removed from the project: the token dies with the membership
    const t = await access.createToken({ user: 'own-member', project: 'own', scope: 'read' });
    await access.removeRole('own', 'own-member');
    problemOf(await api.call('GET', '/v1/whoami', { token: t.token }), 401);
    await access.setRole('own', 'own-member', 'member');
  });

  test('another project cannot create images in the owner’s name space', async () => {
    const a = await api.call('POST', '/v1/images', { json: { name: 'own/planted' }, token: tokens['other-admin'] });
    problemOf(a, 400);
    assert.equal(await lib.catalog.image('own/planted'), undefined);
    const b = await api.call('POST', '/v1/images', {
      json: { name: 'other/mine', visibility: 'private' },
      token: tokens['other-admin'],
    });
    assert.equal(b.status, 201);
    assert.equal((b.body as { project: string }).project, 'other');
    // the owner's admin does not see it
    const c = await api.call('GET', '/v1/images/{name}', {
      params: { name: 'other/mine' },
      token: tokens['own-admin'],
    });
    problemOf(c, 404);
    const d = await api.call('DELETE', '/v1/images/{name}', {
      params: { name: 'other/mine' },
      token: tokens['other-member'],
    });
    problemOf(d, 403);
    const e = await api.call('DELETE', '/v1/images/{name}', {
      params: { name: 'other/mine' },
      token: tokens['other-admin'],
    });
    assert.equal(e.status, 204);
    assert.equal(await lib.catalog.image('other/mine'), undefined);
  });

  test('bodies past the limits are refused with a problem; nothing stored', async () => {
    const small = await serve(lib, { bodyLimit: 4096, uploadLimit: 64 * 1024, commitLimit: 8192 });
    try {
      const api2 = await Checked.open(small.url);
      const big = Buffer.alloc(100 * 1024, 7);
      const digest = createHash('sha256').update(big).digest('hex');
      const a = await api2.call('POST', '/v1/chunks', {
        body: encodeChunkRecords([{ digest, data: big }]),
        token: tokens['own-member'],
      });
      problemOf(a, 413);
      assert.equal(lib.store.has(digest), false);
      const b = await api2.call('POST', '/v1/chunks/missing', {
        json: { digests: Array.from({ length: 200 }, () => 'a'.repeat(64)) },
        token: tokens['own-member'],
      });
      problemOf(b, 413);
      const c = await api2.call('POST', '/v1/images/{name}/versions', {
        params: { name: 'own/huge' },
        json: { layout: { kind: 'strata.layout', pad: 'x'.repeat(10000) } },
        token: tokens['own-member'],
      });
      problemOf(c, 413);
      assert.equal(await lib.catalog.image('own/huge'), undefined);
    } finally {
      await small.close();
    }
  });

  test('a Range past the end is 416; a range inside is 206 with the right bytes', async () => {
    const name = 'own/img-public-none';
    const whole = await api.call('GET', '/v1/images/{name}/versions/{version}/files/content', {
      params: { name, version: 1 },
      query: { path: '/big-text.txt' },
    });
    assert.equal(whole.status, 200);
    const part = await api.call('GET', '/v1/images/{name}/versions/{version}/files/content', {
      params: { name, version: 1 },
      query: { path: '/big-text.txt' },
      headers: { range: 'bytes=1048570-1048600' },
    });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 1048570-1048600/${whole.bytes.length}`);
    assert.deepEqual(part.bytes, whole.bytes.subarray(1048570, 1048601));
    const past = await api.call('GET', '/v1/images/{name}/versions/{version}/files/content', {
      params: { name, version: 1 },
      query: { path: '/big-text.txt' },
      headers: { range: `bytes=${whole.bytes.length + 5}-` },
    });
    problemOf(past, 416);
    // the same file in a tar (the folder route's own oracle test is http-tar.test.ts): GNU tar reads it back
    const tar = await api.call('GET', '/v1/images/{name}/versions/{version}/files/tar', {
      params: { name, version: 1 },
      query: { path: '/big-text.txt' },
    });
    assert.equal(tar.status, 200);
    const fromTar = execFileSync('tar', ['-xOf', '-', 'big-text.txt'], { input: tar.bytes, maxBuffer: 1 << 26 });
    assert.deepEqual(fromTar, whole.bytes);
  });

  test('a rate limit per token answers 429 with a problem', async () => {
    const limited = await serve(lib, { rateLimit: 5 });
    try {
      const api2 = await Checked.open(limited.url);
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++)
        statuses.push((await api2.call('GET', '/v1/whoami', { token: tokens['own-reader'] })).status);
      assert.ok(statuses.includes(429), statuses.join(','));
      // another token has its own budget
      assert.equal((await api2.call('GET', '/v1/whoami', { token: tokens['own-admin'] })).status, 200);
    } finally {
      await limited.close();
    }
  });
});

describe('operations', () => {
  test('healthz, metrics and the request log', async () => {
    const h = await api.call('GET', '/healthz');
    assert.equal(h.status, 200);
    const m = await api.call('GET', '/metrics');
    assert.equal(m.status, 200);
    const text = m.bytes.toString('utf8');
    assert.match(text, /strata_http_requests_total\{method="GET",route="\/v1\/images\/:name",status="404"\} \d+/);
    assert.match(
      text,
      /strata_http_request_duration_seconds_bucket\{route="\/v1\/images\/:name\/versions\/:version\/disk",le="\+Inf"\} \d+/,
    );
    assert.match(text, /strata_store_bytes \d+/);
    const rows = await lib.catalog.db.all<{
      username: string;
      op: string;
      image: string;
      status: number;
      bytes_out: number;
    }>(
      "SELECT username, op, image, status, bytes_out FROM request_log WHERE op = 'versions.download' AND status = 206",
    );
    assert.ok(rows.length > 0);
    assert.ok(rows.every((r) => r.bytes_out === 1024 && r.image.startsWith('own/img-')));
    assert.ok(rows.some((r) => r.username === 'own-admin'));
  });

  test('close() lets a download in flight finish, then refuses new connections', async () => {
    const s2 = await serve(lib);
    const res = await fetch(`${s2.url}/v1/images/own%2Fimg-public-none/versions/1/disk`);
    assert.equal(res.status, 200);
    const size = Number(res.headers.get('content-length'));
    const closing = s2.close();
    let got = 0;
    for await (const b of res.body as unknown as AsyncIterable<Uint8Array>) got += b.length;
    await closing;
    assert.equal(got, size);
    assert.equal(size, (await lib.catalog.resolve('own/img-public-none')).virtualSize);
    await assert.rejects(fetch(`${s2.url}/healthz`));
  });

  test('every route of the document was answered and validated', () => {
    const routes = new Set<string>();
    for (const [p, ops] of Object.entries(api.doc.paths))
      for (const m of Object.keys(ops)) routes.add(`${m.toUpperCase()} ${p}`);
    const seen = new Set([...api.seen.keys()].map((k) => k.split(' ').slice(0, 2).join(' ')));
    // the upload-side routes are covered by http-remote.test.ts; import by http-ops.test.ts
    const elsewhere = new Set([
      'POST /v1/images/{name}/import',
      // edits: http-edit.test.ts (against a strata serve process)
      'POST /v1/images/{name}/edits',
      // rebase and log: http-rebase.test.ts (against a strata serve process)
      'POST /v1/images/{name}/rebases',
      'GET /v1/images/{name}/versions/{version}/log',
      'DELETE /v1/images/{name}/versions/{version}',
      'DELETE /v1/images/{name}/tags/{tag}',
      'DELETE /v1/images/{name}/members/{project}',
      'HEAD /v1/images/{name}/versions/{version}/disk',
      // boot profiles: against a real `strata serve` in test/deploy/profile-remote.test.ts
      'GET /v1/images/{name}/versions/{version}/profile',
      'PUT /v1/images/{name}/versions/{version}/profile',
      'POST /v1/images/{name}/versions/{version}/profile',
      // accounts: their own matrix in http-ops.test.ts
      'GET /v1/users',
      'POST /v1/users',
      'GET /v1/projects',
      'POST /v1/projects',
      'PUT /v1/projects/{project}/users/{user}',
      'DELETE /v1/projects/{project}/users/{user}',
      'GET /v1/tokens',
      'POST /v1/tokens',
      'DELETE /v1/tokens/{id}',
    ]);
    const missing = [...routes].filter((r) => !seen.has(r) && !elsewhere.has(r) && !r.startsWith('HEAD '));
    assert.deepEqual(missing, []);
  });
});
