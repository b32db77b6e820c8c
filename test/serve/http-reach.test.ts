import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { DigestSet } from '../../src/library/digest-set.js';
import { Library } from '../../src/library/library.js';
import { reachable } from '../../src/library/library-verbs.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { baseTree, derivedTree, extImageOf, tempDir } from '../library/images.js';
import { addPeople, Checked, serve } from './http-helpers.js';

/**
 * The service keeps each manifest's reachable blobs in a cache bounded by bytes: under a
 * budget that holds one set (or none), sets are dropped and walked again, and every answer
 * built on them (the storage figures, which chunks a caller holds) is the one a server with
 * room for all of them gives, and the one counted here from the versions' blobs with plain
 * Sets of digests and the store's sizes.
 *
 * The library: own/a (ext4 of the base tree, then of the derived tree), other/b (the same
 * base image again: all its blobs shared with own/a's first version) and third/c (ext2 of
 * the base tree: the file data shared, the metadata not).
 */
let dir: string;
let lib: Library;
let tokens: Record<string, string>;
const servers: RunningServer[] = [];
/** Each version's blobs, by image, as the test counts them. */
const blobs = new Map<string, Array<Set<string>>>();
let largestSet = 0;

before(async () => {
  dir = tempDir('serve-reach');
  lib = await Library.open(path.join(dir, 'lib'));
  let access: Awaited<ReturnType<typeof addPeople>>['access'];
  ({ tokens, access } = await addPeople(lib));
  const base = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  const derived = await extImageOf('ext4', await derivedTree(), 'dedup-derived', 64);
  const base2 = await extImageOf('ext2', await baseTree(), 'dedup-base', 64);
  for (const [name, img, project] of [
    ['own/a', base, 'own'],
    ['own/a', derived, 'own'],
    ['other/b', base, 'other'],
    ['third/c', base2, 'third'],
  ] as const) {
    await checkin(lib, img, { name });
    await access.setImageAccess(name, project, 'private');
  }
  for (const name of ['own/a', 'other/b', 'third/c']) {
    const sets: Array<Set<string>> = [];
    for (const v of await lib.catalog.versions(name)) {
      const s = new Set<string>();
      await reachable(lib, v.manifest, s);
      sets.push(s);
      const d = new DigestSet();
      for (const x of s) d.add(x);
      largestSet = Math.max(largestSet, d.trim().byteLength);
    }
    blobs.set(name, sets);
  }
});

after(async () => {
  for (const s of servers) await s.close();
  await lib?.close();
});

async function start(reachCache?: number): Promise<Checked> {
  const s = await serve(lib, reachCache === undefined ? {} : { reachCache });
  servers.push(s);
  return Checked.open(s.url);
}

async function metric(api: Checked, name: string): Promise<number> {
  const r = await fetch(`${api.url}/metrics`, { headers: { authorization: `Bearer ${tokens.root}` } });
  assert.equal(r.status, 200);
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await r.text());
  assert.ok(m, `/metrics has ${name}`);
  return Number(m[1]);
}

/** The storage figures counted here: stored bytes of the union of the blobs, each blob once. */
function expected(names: string[], group: string) {
  const union = new Set<string>();
  let versions = 0;
  for (const n of names) {
    for (const s of blobs.get(n) ?? []) {
      versions++;
      for (const d of s) union.add(d);
    }
  }
  let stored = 0;
  for (const d of union) stored += lib.store.storedSize(d);
  return { name: group, versions, storedBytes: stored };
}

const pick = (u: { name: string; versions: number; storedBytes: number }) => ({
  name: u.name,
  versions: u.versions,
  storedBytes: u.storedBytes,
});

test('the counted sets differ and share blobs as the library was made', () => {
  const [a1, a2] = blobs.get('own/a') ?? [];
  const [b] = blobs.get('other/b') ?? [];
  const [c] = blobs.get('third/c') ?? [];
  assert.deepEqual([...b].sort(), [...a1].sort(), 'other/b is the same image as own/a@1');
  assert.ok(
    [...a2].some((d) => !a1.has(d)),
    'the derived version has blobs of its own',
  );
  assert.ok([...c].some((d) => !a1.has(d)) && [...c].some((d) => a1.has(d)), 'ext2 shares data, not all');
  assert.ok(largestSet > 0);
});

for (const [label, budget] of [
  ['room for all sets', undefined],
  ['room for one set', () => largestSet],
  ['room for none', () => 1],
] as const) {
  test(`storage and held chunks with ${label}`, async () => {
    const max = typeof budget === 'function' ? budget() : undefined;
    const api = await start(max);
    for (let round = 0; round < 2; round++) {
      const st = await api.call('GET', '/v1/storage', { token: tokens.root });
      assert.equal(st.status, 200);
      const body = st.body as {
        images: Array<{ name: string; versions: number; storedBytes: number }>;
        projects: Array<{ name: string; versions: number; storedBytes: number }>;
        total: { name: string; versions: number; storedBytes: number };
      };
      assert.deepEqual(
        body.images.map(pick).sort((x, y) => x.name.localeCompare(y.name)),
        ['other/b', 'own/a', 'third/c'].map((n) => expected([n], n)),
      );
      assert.deepEqual(
        body.projects.map(pick).sort((x, y) => x.name.localeCompare(y.name)),
        [expected(['other/b'], 'other'), expected(['own/a'], 'own'), expected(['third/c'], 'third')],
      );
      assert.deepEqual(pick(body.total), expected(['own/a', 'other/b', 'third/c'], 'total'));
      // other/b adds nothing to own/a's blobs, so the total is own/a's and third/c's
      assert.ok(body.total.storedBytes < body.images.reduce((n, i) => n + i.storedBytes, 0));

      const one = await api.call('GET', '/v1/storage', { token: tokens.root, query: { project: 'own' } });
      assert.equal(one.status, 200);
      assert.deepEqual(pick((one.body as typeof body).total), expected(['own/a'], 'total'));

      // own-member holds what own/a's versions reach, not third/c's metadata
      const [c] = blobs.get('third/c') ?? [];
      const mine = new Set([...(blobs.get('own/a') ?? [])].flatMap((s) => [...s]));
      const digests = [...c];
      const miss = await api.call('POST', '/v1/chunks/missing', { token: tokens['own-member'], json: { digests } });
      assert.equal(miss.status, 200);
      assert.deepEqual(
        [...(miss.body as { missing: string[] }).missing].sort(),
        digests.filter((d) => !mine.has(d)).sort(),
      );
    }
    const bytes = await metric(api, 'strata_reach_cache_bytes');
    const entries = await metric(api, 'strata_reach_cache_entries');
    const misses = await metric(api, 'strata_reach_cache_misses_total');
    const evictions = await metric(api, 'strata_reach_cache_evictions_total');
    const manifests = new Set<string>();
    for (const n of ['own/a', 'other/b', 'third/c'])
      for (const v of await lib.catalog.versions(n)) manifests.add(v.manifest);
    if (max === undefined) {
      assert.equal(entries, manifests.size, 'every set kept');
      assert.equal(misses, manifests.size, 'each walked once');
      assert.equal(evictions, 0);
    } else {
      assert.ok(bytes <= max, `${bytes} bytes kept within ${max}`);
      assert.ok(entries <= 1, `${entries} sets kept`);
      assert.ok(misses > manifests.size, `${misses} walks: sets were dropped and walked again`);
      if (max > 1) assert.ok(evictions > 0 && entries === 1, `${evictions} evictions, ${entries} kept`);
      else assert.equal(entries, 0);
    }
  });
}
