/**
 * `strata simulate`: the LRU and LFU hit counts and bytes on generated logs equal those of
 * straightforward implementations written here (arrays and linear scans, nothing shared with
 * src/analytics); every policy misses exactly once per object when the cache holds
 * everything; two-tier beats LRU on a facility-heavy log; chunk level shares a base's
 * pieces; pre-load fetches the facility image the night before and turns a miss into a hit.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { tempDir } from '../library/images.js';

interface Row {
  at: string;
  image: string;
  version: number;
  bytes: number;
  owner?: string;
}
interface Sim {
  requests: number;
  hits: number;
  fetchedBytes: number;
  requestedBytes: number;
  facility: { requests: number; hits: number };
  preload?: { bytes: number; objects: number };
}

const GiB = 1024 ** 3;
let dir: string;
let logFile: string;
let heavyFile: string;
let rows: Row[];

async function simulate(args: string[]): Promise<Sim> {
  const r = await strata(['simulate', ...args, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

async function gen(file: string, args: string[]): Promise<Row[]> {
  const r = await strata(['analytics', 'generate', ...args]);
  assert.equal(r.code, 0, r.stderr);
  writeFileSync(file, r.stdout);
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Row);
}

/** LRU as a list, least recent first. */
function lru(log: Row[], cap: number): { hits: number; fetched: number } {
  const list: Array<{ id: string; size: number }> = [];
  let used = 0;
  let hits = 0;
  let fetched = 0;
  for (const r of log) {
    const id = `${r.image}@${r.version}`;
    const i = list.findIndex((x) => x.id === id);
    if (i >= 0) {
      hits++;
      list.push(...list.splice(i, 1));
      continue;
    }
    fetched += r.bytes;
    if (r.bytes > cap) continue;
    while (used + r.bytes > cap) used -= (list.shift() as { size: number }).size;
    list.push({ id, size: r.bytes });
    used += r.bytes;
  }
  return { hits, fetched };
}

/** LFU counting every request since the start; evicts the fewest, ties the least recently used. */
function lfu(log: Row[], cap: number): { hits: number; fetched: number } {
  const freq = new Map<string, number>();
  const cached = new Map<string, { size: number; last: number }>();
  let used = 0;
  let hits = 0;
  let fetched = 0;
  let t = 0;
  for (const r of log) {
    const id = `${r.image}@${r.version}`;
    freq.set(id, (freq.get(id) ?? 0) + 1);
    t++;
    const c = cached.get(id);
    if (c) {
      hits++;
      c.last = t;
      continue;
    }
    fetched += r.bytes;
    if (r.bytes > cap) continue;
    while (used + r.bytes > cap) {
      let victim = '';
      let best = [Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY];
      for (const [k, v] of cached) {
        const key = [freq.get(k) as number, v.last];
        if (key[0] < best[0] || (key[0] === best[0] && key[1] < best[1])) {
          best = key;
          victim = k;
        }
      }
      used -= (cached.get(victim) as { size: number }).size;
      cached.delete(victim);
    }
    cached.set(id, { size: r.bytes, last: t });
    used += r.bytes;
  }
  return { hits, fetched };
}

describe('strata simulate', { timeout: 600_000 }, () => {
  before(async () => {
    dir = tempDir('analytics-sim');
    logFile = path.join(dir, 'log.jsonl');
    heavyFile = path.join(dir, 'heavy.jsonl');
    rows = await gen(logFile, ['--requests', '20000', '--seed', '11', '--images', '300', '--days', '60']);
  });

  test('LRU and LFU: the same hits and bytes as straightforward implementations, at four cache sizes', async () => {
    for (const gib of [3, 10, 30, 100]) {
      const cap = gib * GiB;
      for (const [policy, model] of [
        ['lru', lru],
        ['lfu', lfu],
      ] as const) {
        const got = await simulate(['--log', logFile, '--cache', `${gib}G`, '--policy', policy]);
        const want = model(rows, cap);
        assert.equal(got.requests, rows.length);
        assert.equal(got.hits, want.hits, `${policy} ${gib}G`);
        assert.equal(got.fetchedBytes, want.fetched, `${policy} ${gib}G`);
        assert.ok(want.hits > 0 && want.hits < rows.length);
      }
    }
  });

  test('a cache that holds everything misses once per object, whatever the policy; one too small for anything never hits', async () => {
    const distinct = new Set(rows.map((r) => `${r.image}@${r.version}`)).size;
    const total = new Map(rows.map((r) => [`${r.image}@${r.version}`, r.bytes]));
    const all = [...total.values()].reduce((s, b) => s + b, 0);
    for (const policy of ['lru', 'lfu', 'arc', 'two-tier']) {
      // two-tier keeps facility images in its protected half, so it gets twice the room
      const got = await simulate(['--log', logFile, '--cache', String(2 * all), '--policy', policy]);
      assert.equal(got.hits, rows.length - distinct, policy);
      assert.equal(got.fetchedBytes, all, policy);
      const tiny = await simulate(['--log', logFile, '--cache', '1M', '--policy', policy]);
      assert.equal(tiny.hits, 0, policy);
      assert.equal(tiny.fetchedBytes, tiny.requestedBytes);
    }
  });

  test('two-tier beats LRU on a facility-heavy log (80% facility requests) at three cache sizes', async () => {
    await gen(heavyFile, ['--requests', '50000', '--seed', '21', '--facility-share', '0.8']);
    for (const size of ['20G', '40G', '80G']) {
      const l = await simulate(['--log', heavyFile, '--cache', size, '--policy', 'lru']);
      const t = await simulate(['--log', heavyFile, '--cache', size, '--policy', 'two-tier']);
      assert.ok(t.hits > l.hits, `${size}: two-tier ${t.hits} vs lru ${l.hits}`);
    }
  });

  test('chunk level: a derived image with nothing changed reads its base’s pieces; all changed reads its own', async () => {
    const f = path.join(dir, 'chunks.jsonl');
    const at = (m: number) => new Date(Date.UTC(2026, 0, 1, 0, m)).toISOString();
    const line = (o: object) => JSON.stringify({ user: 'u', project: 'p', version: 1, op: 'x', ...o });
    writeFileSync(
      f,
      [
        line({ at: at(0), image: 'base', bytes: 4 * 64 * 2 ** 20, owner: 'facility' }),
        line({ at: at(1), image: 'same', bytes: 4 * 64 * 2 ** 20, base: 'base@1', changed: 0 }),
        line({ at: at(2), image: 'other', bytes: 4 * 64 * 2 ** 20, base: 'base@1', changed: 1 }),
      ].join('\n'),
    );
    const img = await simulate(['--log', f, '--cache', '10G', '--level', 'image']);
    assert.equal(img.hits, 0);
    const ch = await simulate(['--log', f, '--cache', '10G', '--level', 'chunk', '--chunk', '64M']);
    assert.equal(ch.hits, 1); // "same": every piece is the base's
    assert.equal(ch.fetchedBytes, 2 * 4 * 64 * 2 ** 20); // base's and "other"'s pieces
  });

  test('pre-load: the facility image fetched the night before turns the next morning’s miss into a hit', async () => {
    const f = path.join(dir, 'preload.jsonl');
    const at = (d: number, h: number) => new Date(Date.UTC(2026, 0, 1 + d, h)).toISOString();
    const line = (o: object) => JSON.stringify({ user: 'u', project: 'p', version: 1, op: 'x', bytes: GiB, ...o });
    writeFileSync(
      f,
      [
        line({ at: at(0, 9), image: 'fac', owner: 'facility' }),
        line({ at: at(0, 10), image: 'usr-1', owner: 'p' }),
        line({ at: at(0, 11), image: 'usr-1', owner: 'p' }),
        line({ at: at(0, 12), image: 'usr-1', owner: 'p' }),
        line({ at: at(1, 9), image: 'fac', owner: 'facility' }),
      ].join('\n'),
    );
    // room for one image: usr-1 pushed fac out on day 0
    const r = JSON.parse(
      (await strata(['simulate', '--log', f, '--cache', '1G', '--policy', 'lru', '--preload', '--json'])).stdout,
    ) as { without: Sim; with: Sim; saved: { onDemandBytes: number; preloadBytes: number } };
    assert.equal(r.without.hits, 2);
    // usr-1 was requested 3 times, fac once, but facility images go first
    assert.equal(r.with.hits, 3);
    assert.equal(r.with.facility.hits, 1);
    assert.equal(r.saved.onDemandBytes, GiB);
    assert.equal(r.saved.preloadBytes, GiB);
    const none = JSON.parse(
      (await strata(['simulate', '--log', f, '--cache', '1G', '--preload', '--idle-capacity', '0', '--json'])).stdout,
    );
    assert.equal(none.with.hits, none.without.hits);
    assert.equal(none.with.preload.bytes, 0);
  });

  test('bad options: a clear error', async () => {
    const p = await strata(['simulate', '--log', logFile, '--cache', '1G', '--policy', 'mru']);
    assert.equal(p.code, 1);
    assert.match(p.stderr, /unknown policy/);
    const s = await strata(['simulate', '--log', logFile, '--cache', 'lots']);
    assert.equal(s.code, 1);
    assert.match(s.stderr, /cache size/);
  });
});
