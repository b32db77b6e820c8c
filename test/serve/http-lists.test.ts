import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import type { Access } from '../../src/catalog/access.js';
import { checkin } from '../../src/library/checkin.js';
import { inspectAfterCheckin } from '../../src/library/inspection.js';
import { Library } from '../../src/library/library.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { baseTree, extImageOf, tempDir } from '../library/images.js';
import { addPeople, Checked, serve } from './http-helpers.js';

/**
 * The image list and search of the service filter access, project, visibility and name
 * prefix in the catalog's queries and page there. On a library of many images (owned by
 * three projects, every visibility, shares pending and accepted, and images with no owner
 * row, which belong to the server's default project), each caller's pages put together
 * must be exactly the images the rules below (written out here, not taken from
 * src/serve/http/policy.ts) let it read, in name order, with the right total; and the
 * single-image route must agree with the same rules.
 */
let dir: string;
let lib: Library;
let server: RunningServer;
let api: Checked;
let tokens: Record<string, string>;
let access: Access;

type Vis = 'private' | 'shared' | 'public';
interface Img {
  name: string;
  /** null: no owner row (the default project 'own', private) */
  project: string | null;
  vis: Vis;
  /** projects whose share was accepted / is pending */
  accepted: string[];
  pending: string[];
}
const IMAGES: Img[] = [];

const CALLERS: Record<string, { project: string | null; admin: boolean }> = {
  anonymous: { project: null, admin: false },
  root: { project: null, admin: true },
  'own-member': { project: 'own', admin: false },
  'own-reader': { project: 'own', admin: false },
  'other-member': { project: 'other', admin: false },
  'third-admin': { project: 'third', admin: false },
};

function mayRead(c: string, i: Img): boolean {
  const k = CALLERS[c];
  const owner = i.project ?? 'own';
  const vis = i.project === null ? 'private' : i.vis;
  if (k.admin || vis === 'public' || k.project === owner) return true;
  return vis === 'shared' && k.project !== null && i.accepted.includes(k.project);
}
const tok = (c: string) => (c === 'anonymous' ? undefined : tokens[c]);

before(async () => {
  dir = tempDir('serve-lists');
  lib = await Library.open(path.join(dir, 'lib'));
  const img = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  ({ tokens, access } = await addPeople(lib));
  await checkin(lib, img, { name: 'own/base' });
  await access.setImageAccess('own/base', 'own', 'private');
  IMAGES.push({ name: 'own/base', project: 'own', vis: 'private', accepted: [], pending: [] });
  const base = await lib.catalog.resolve('own/base');
  const projects = ['own', 'other', 'third'];
  const vis: Vis[] = ['private', 'shared', 'public'];
  for (let i = 0; i < 36; i++) {
    // every 9th image has no owner row; names of a project do not all start with it
    const loose = i % 9 === 4;
    const project = loose ? null : projects[i % 3];
    const v = vis[Math.floor(i / 3) % 3];
    const name = `${loose ? 'loose' : project}/img-${String(i).padStart(2, '0')}`;
    const row = await lib.catalog.addVersion({
      image: name,
      manifest: base.manifest,
      createdBy: 'test',
      virtualSize: base.virtualSize,
      usedBytes: base.usedBytes,
      storedBytes: base.storedBytes,
      newBytes: 0,
      exact: base.exact,
      parents: [{ image: base.image, number: base.number }],
      tags: [],
    });
    // a second version of some, so search has more than one hit per image
    if (i % 5 === 0) {
      const r2 = await lib.catalog.addVersion({
        image: name,
        manifest: base.manifest,
        createdBy: 'test',
        virtualSize: base.virtualSize,
        usedBytes: base.usedBytes,
        storedBytes: base.storedBytes,
        newBytes: 0,
        exact: base.exact,
        parents: [{ image: name, number: row.number }],
        tags: [],
      });
      await inspectAfterCheckin(lib, r2, []);
    }
    await inspectAfterCheckin(lib, row, []);
    const it: Img = { name, project, vis: v, accepted: [], pending: [] };
    if (project !== null) {
      await access.setImageAccess(name, project, v);
      // shares: to the two other projects, one accepted and one pending, turn about
      const others = projects.filter((p) => p !== project);
      await access.addMember(name, others[i % 2]);
      await access.setMemberStatus(name, others[i % 2], 'accepted');
      await access.addMember(name, others[(i + 1) % 2]);
      it.accepted.push(others[i % 2]);
      it.pending.push(others[(i + 1) % 2]);
    }
    IMAGES.push(it);
  }
  IMAGES.sort((a, b) => (a.name < b.name ? -1 : 1));
  server = await serve(lib);
  api = await Checked.open(server.url);
});

after(async () => {
  await server?.close();
  await lib?.close();
});

/** Every page of a list route put together (limit `n`), and the totals each page said. */
async function allPages(
  tpl: string,
  query: Record<string, string>,
  c: string,
  n: number,
): Promise<{ items: Array<Record<string, unknown>>; totals: number[] }> {
  const items: Array<Record<string, unknown>> = [];
  const totals: number[] = [];
  for (let offset = 0; ; offset += n) {
    const a = await api.call('GET', tpl, { query: { ...query, limit: n, offset }, token: tok(c) });
    assert.equal(a.status, 200, `${c} ${tpl} ${JSON.stringify(query)}: ${a.bytes}`);
    const b = a.body as { items: Array<Record<string, unknown>>; total: number };
    totals.push(b.total);
    items.push(...b.items);
    if (b.items.length < n) break;
  }
  return { items, totals };
}

test('the single-image route answers by the rules', async () => {
  for (const c of Object.keys(CALLERS)) {
    for (const i of IMAGES) {
      const a = await api.call('GET', '/v1/images/{name}', { params: { name: i.name }, token: tok(c) });
      assert.equal(a.status, mayRead(c, i) ? 200 : 404, `${c} GET ${i.name}`);
    }
  }
});

test('image list pages, filters and totals are the readable images, in name order', async () => {
  for (const c of Object.keys(CALLERS)) {
    const want = IMAGES.filter((i) => mayRead(c, i));
    assert.ok(want.length > 0);
    const { items, totals } = await allPages('/v1/images', {}, c, 7);
    assert.deepEqual(
      items.map((x) => x.name),
      want.map((i) => i.name),
      `${c} lists`,
    );
    for (const t of totals) assert.equal(t, want.length, `${c} total`);
    for (const x of items) {
      const i = IMAGES.find((y) => y.name === x.name) as Img;
      assert.equal(x.project, i.project ?? 'own', `${c} ${i.name} project`);
      assert.equal(x.visibility, i.project === null ? 'private' : i.vis, `${c} ${i.name} visibility`);
    }
    for (const project of ['own', 'other', 'third']) {
      const got = await allPages('/v1/images', { project }, c, 5);
      const w = want.filter((i) => (i.project ?? 'own') === project).map((i) => i.name);
      assert.deepEqual(
        got.items.map((x) => x.name),
        w,
        `${c} lists project ${project}`,
      );
      for (const t of got.totals) assert.equal(t, w.length);
    }
    for (const v of ['private', 'shared', 'public']) {
      const got = await allPages('/v1/images', { visibility: v }, c, 50);
      const w = want.filter((i) => (i.project === null ? 'private' : i.vis) === v).map((i) => i.name);
      assert.deepEqual(
        got.items.map((x) => x.name),
        w,
        `${c} lists visibility ${v}`,
      );
    }
    for (const prefix of ['own/', 'loose/', 'other/img-1', 'o', 'nothing/']) {
      const got = await allPages('/v1/images', { prefix }, c, 4);
      const w = want.filter((i) => i.name.startsWith(prefix)).map((i) => i.name);
      assert.deepEqual(
        got.items.map((x) => x.name),
        w,
        `${c} lists prefix ${prefix}`,
      );
      for (const t of got.totals) assert.equal(t, w.length);
    }
  }
});

test('search pages are the readable versions holding the path, in image and number order', async () => {
  for (const c of Object.keys(CALLERS)) {
    const want: string[] = [];
    for (const i of IMAGES.filter((x) => mayRead(c, x))) {
      for (const v of await lib.catalog.versions(i.name)) want.push(`${i.name}@${v.number}`);
    }
    const { items, totals } = await allPages('/v1/search', { path: '/big-text.txt' }, c, 6);
    assert.deepEqual(
      items.map((h) => h.ref),
      want,
      `${c} search`,
    );
    for (const t of totals) assert.equal(t, want.length, `${c} search total`);
    for (const h of items) {
      assert.deepEqual(
        (h.paths as Array<{ path: string }>).map((p) => p.path),
        ['/big-text.txt'],
      );
    }
    // two criteria (AND): a path and an OS the inspection found (or none): still only readable versions
    const os = await allPages('/v1/search', { path: '/big-text.txt', user: 'root' }, c, 50);
    for (const h of os.items) assert.ok(want.includes(h.ref as string), `${c} search by user finds ${h.ref}`);
  }
});
