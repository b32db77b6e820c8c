/**
 * `strata analytics REPORT` on small request logs whose answers are known by construction:
 * every figure is counted again here by a straightforward test-side model (group, count,
 * least squares written out) over the records the test wrote, never by src/analytics. The
 * same log is read as JSONL, as CSV, and from a library's request_log table (written by
 * the catalog's Access.logRequests, as `strata serve` writes it).
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { Access } from '../../src/catalog/access.js';
import { Library } from '../../src/library/library.js';
import { strata } from '../helpers/cli.js';
import { tempDir } from '../library/images.js';

interface Rec {
  at: number;
  user: string;
  project: string;
  image: string;
  version: number;
  op: string;
  bytes: number;
  owner: string;
  public: boolean;
}

const DAY = 86400e3;
const T0 = Date.UTC(2026, 2, 2); // a Monday
const FACILITY_OWNERS = new Set(['facility', 'system']);

/** Image k of the user class gets round(4000 * k^-1.2) requests; facility images 900, 300, 100; one public user-owned image 50. */
const USER_EXPONENT = 1.2;
function buildLog(): Rec[] {
  let seed = 12345;
  const rnd = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 4294967296;
  };
  const images: Array<{
    name: string;
    owner: string;
    pub: boolean;
    n: number;
    bytes: number;
    first: number;
    days: number;
  }> = [];
  for (let k = 1; k <= 30; k++)
    images.push({
      name: `usr-${k}`,
      owner: `proj-${k % 4}`,
      pub: false,
      n: Math.round(4000 * k ** -USER_EXPONENT),
      bytes: 1000 * k,
      first: (k % 10) * DAY,
      days: 1 + (k % 5),
    });
  images.push({ name: 'fac-a', owner: 'facility', pub: false, n: 900, bytes: 5e6, first: 0, days: 20 });
  images.push({ name: 'fac-b', owner: 'system', pub: false, n: 300, bytes: 7e6, first: 0, days: 20 });
  images.push({ name: 'pub-c', owner: 'proj-1', pub: true, n: 100, bytes: 3e6, first: 2 * DAY, days: 10 });
  const out: Rec[] = [];
  for (const im of images) {
    for (let i = 0; i < im.n; i++) {
      // first and last request pinned to the image's first and last instant: the span is known
      const frac = i === 0 ? 0 : i === im.n - 1 ? 1 : rnd();
      const u = Math.floor(rnd() * 12);
      out.push({
        at: Math.round(T0 + im.first + frac * (im.days * DAY - 1)),
        user: `u${u}`,
        project: im.owner.startsWith('proj') && rnd() < 0.7 ? im.owner : `proj-${u % 4}`,
        image: im.name,
        version: 1,
        op: i % 3 === 0 ? 'versions.get' : 'versions.download',
        bytes: im.bytes,
        owner: im.owner,
        public: im.pub,
      });
    }
  }
  return out.sort((a, b) => a.at - b.at);
}

/** Test-side least squares of log10(count) on log10(rank), counts >= min. */
function lsq(counts: number[], min = 3): number {
  const pts = counts.map((c, i) => [Math.log10(i + 1), Math.log10(c)] as const).filter((_, i) => counts[i] >= min);
  const n = pts.length;
  const mx = pts.reduce((s, p) => s + p[0], 0) / n;
  const my = pts.reduce((s, p) => s + p[1], 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of pts) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return -num / den;
}

const isFac = (r: Rec) => FACILITY_OWNERS.has(r.owner) || r.public;

let log: Rec[];
let dir: string;
let jsonl: string;
let csv: string;
let libDir: string;

// biome-ignore lint/suspicious/noExplicitAny: the reports' JSON, several shapes
async function report(args: string[]): Promise<any> {
  const r = await strata(['analytics', ...args, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

describe('strata analytics reports', { timeout: 300_000 }, () => {
  before(async () => {
    log = buildLog();
    dir = tempDir('analytics-reports');
    jsonl = path.join(dir, 'log.jsonl');
    writeFileSync(jsonl, log.map((r) => JSON.stringify({ ...r, at: new Date(r.at).toISOString() })).join('\n') + '\n');
    // CSV with the columns in another order, and the times as milliseconds
    csv = path.join(dir, 'log.csv');
    const cols = ['image', 'at', 'op', 'user', 'project', 'bytes', 'version', 'owner', 'public'] as const;
    writeFileSync(csv, `${cols.join(',')}\n${log.map((r) => cols.map((c) => String(r[c])).join(',')).join('\n')}\n`);
    // the same requests in a library's request_log, owners and visibility in image_access
    libDir = path.join(dir, 'lib');
    const lib = await Library.open(libDir);
    try {
      const access = await Access.open(lib.catalog.db);
      for (const im of new Map(log.map((r) => [r.image, r])).values())
        await access.setImageAccess(im.image, im.owner, im.public ? 'public' : 'private');
      await access.logRequests(
        log.map((r) => ({
          at: new Date(r.at).toISOString(),
          user: r.user,
          project: r.project,
          token: null,
          method: 'GET',
          route: '/v1/images/:name/versions/:version',
          op: r.op,
          image: r.image,
          version: r.version,
          status: 200,
          bytesIn: 0,
          bytesOut: r.bytes,
          micros: 100,
        })),
      );
      // requests that are not image requests, or failed, are not counted
      await access.logRequests([
        {
          user: 'u1',
          project: 'proj-1',
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
        {
          user: 'u1',
          project: 'proj-1',
          token: null,
          method: 'GET',
          route: '/v1/images/:name',
          op: 'images.get',
          image: 'fac-a',
          version: null,
          status: 404,
          bytesIn: 0,
          bytesOut: 10,
          micros: 5,
        },
      ]);
    } finally {
      await lib.close();
    }
  });

  test('popularity: counts, facility/user split, top share and the tail exponent, from JSONL, CSV and the catalog', async () => {
    const counts = new Map<string, { n: number; fac: boolean }>();
    for (const r of log) {
      const e = counts.get(r.image) ?? { n: 0, fac: isFac(r) };
      e.n++;
      counts.set(r.image, e);
    }
    const ranked = [...counts.entries()].sort((a, b) => b[1].n - a[1].n || (a[0] < b[0] ? -1 : 1));
    const userCounts = ranked.filter(([, e]) => !e.fac).map(([, e]) => e.n);
    const facRequests = log.filter(isFac).length;
    for (const src of [
      ['--log', jsonl],
      ['--log', csv],
      ['--library', libDir],
    ]) {
      const r = await report(['popularity', ...src]);
      assert.equal(r.requests, log.length, src.join(' '));
      assert.deepEqual(
        r.ranked.map((x: { image: string; requests: number; facility: boolean }) => [x.image, x.requests, x.facility]),
        ranked.map(([k, e]) => [k, e.n, e.fac]),
      );
      assert.equal(r.facility.requests, facRequests);
      assert.equal(r.facility.images, 3); // fac-a, fac-b (owner system), pub-c (public)
      assert.equal(r.topShare, ranked[0][1].n / log.length);
      assert.ok(Math.abs(r.user.fit.exponent - lsq(userCounts)) < 1e-9);
      // and the exponent the counts were built with (rounding moves it a little)
      assert.ok(Math.abs(r.user.fit.exponent - USER_EXPONENT) < 0.02, String(r.user.fit.exponent));
    }
  });

  test('--facility and --no-public change which images are facility images', async () => {
    const r = await report(['popularity', '--log', jsonl, '--facility', 'facility', '--no-public']);
    assert.deepEqual(
      r.ranked.filter((x: { facility: boolean }) => x.facility).map((x: { image: string }) => x.image),
      ['fac-a'],
    );
  });

  test('--since/--until keep the requests of [since, until)', async () => {
    const since = T0 + 3 * DAY;
    const until = T0 + 6 * DAY + 12 * 3600e3;
    const want = log.filter((r) => r.at >= since && r.at < until).length;
    for (const src of [
      ['--log', jsonl],
      ['--library', libDir],
    ]) {
      const r = await report([
        'popularity',
        ...src,
        '--since',
        new Date(since).toISOString(),
        '--until',
        new Date(until).toISOString(),
      ]);
      assert.equal(r.requests, want);
      assert.ok(want > 0 && want < log.length);
    }
    const ops = await report(['popularity', '--log', jsonl, '--ops', 'versions.get']);
    assert.equal(ops.requests, log.filter((r) => r.op === 'versions.get').length);
  });

  test('working set: distinct images and their bytes per UTC day and per week', async () => {
    const group = (key: (at: number) => string) => {
      const m = new Map<string, Map<string, number>>();
      for (const r of log) {
        const k = key(r.at);
        const e = m.get(k) ?? new Map<string, number>();
        e.set(r.image, r.bytes);
        m.set(k, e);
      }
      return [...m.entries()].map(([start, e]) => ({
        start,
        images: e.size,
        bytes: [...e.values()].reduce((s, b) => s + b, 0),
      }));
    };
    const day = (at: number) => new Date(at).toISOString().slice(0, 10);
    // weeks start on Monday; T0 is a Monday
    const week = (at: number) => new Date(T0 + Math.floor((at - T0) / (7 * DAY)) * 7 * DAY).toISOString().slice(0, 10);
    const r = await report(['working-set', '--log', jsonl]);
    const strip = (xs: Array<{ start: string; images: number; bytes: number }>) =>
      xs.map((x) => ({ start: x.start, images: x.images, bytes: x.bytes }));
    assert.deepEqual(strip(r.daily), group(day));
    assert.deepEqual(strip(r.weekly), group(week));
    assert.equal(r.summary.totalImages, 33);
  });

  test('lifespan: first and last request, span, idle periods', async () => {
    const r = await report(['lifespan', '--log', jsonl, '--idle-days', '0.5']);
    for (const im of r.images) {
      const mine = log.filter((x) => x.image === im.image);
      const first = mine[0].at;
      const last = mine[mine.length - 1].at;
      assert.equal(im.first, new Date(first).toISOString());
      assert.equal(im.last, new Date(last).toISOString());
      assert.equal(im.requests, mine.length);
      let idle = 0;
      for (let i = 1; i < mine.length; i++) if (mine[i].at - mine[i - 1].at > 0.5 * DAY) idle++;
      assert.equal(im.idlePeriods, idle, im.image);
    }
    // by construction: usr-k lives 1 + k%5 days (minus a millisecond)
    const u7 = r.images.find((x: { image: string }) => x.image === 'usr-7');
    assert.ok(Math.abs(u7.spanDays - 3) < 1e-6);
    const within3 = Array.from({ length: 30 }, (_, i) => i + 1).filter((k) => 1 + (k % 5) <= 3).length;
    assert.equal(r.user.withinDays3, within3);
  });

  test('orgs: requests, users and images per project', async () => {
    const r = await report(['orgs', '--log', jsonl]);
    const want = new Map<string, { n: number; users: Set<string>; images: Set<string> }>();
    for (const x of log) {
      const e = want.get(x.project) ?? { n: 0, users: new Set(), images: new Set() };
      e.n++;
      e.users.add(x.user);
      e.images.add(x.image);
      want.set(x.project, e);
    }
    assert.equal(r.orgs.length, want.size);
    for (const o of r.orgs) {
      const e = want.get(o.project);
      assert.ok(e, o.project);
      assert.equal(o.requests, e.n);
      assert.equal(o.users, e.users.size);
      assert.equal(o.images, e.images.size);
    }
  });

  test('dedup from a log with bases: derived versions store their changed share', async () => {
    const f = path.join(dir, 'derived.jsonl');
    const rows = [
      { at: T0, user: 'a', project: 'p', image: 'base', version: 1, op: 'x', bytes: 1000 },
      {
        at: T0 + 1,
        user: 'a',
        project: 'p',
        image: 'd1',
        version: 1,
        op: 'x',
        bytes: 2000,
        base: 'base@1',
        changed: 0.1,
      },
      {
        at: T0 + 2,
        user: 'a',
        project: 'p',
        image: 'd1',
        version: 1,
        op: 'x',
        bytes: 2000,
        base: 'base@1',
        changed: 0.1,
      },
      {
        at: T0 + 3,
        user: 'a',
        project: 'p',
        image: 'd2',
        version: 1,
        op: 'x',
        bytes: 500,
        base: 'base@1',
        changed: 0.5,
      },
    ];
    writeFileSync(f, rows.map((x) => JSON.stringify(x)).join('\n'));
    const r = await report(['dedup', '--log', f]);
    assert.equal(r.fullBytes, 3500);
    assert.equal(r.deltaBytes, 1000 + 200 + 250);
    assert.equal(r.derived, 2);
  });

  test('bad input: a clear error naming the file and the line', async () => {
    const f = path.join(dir, 'bad.jsonl');
    writeFileSync(
      f,
      `${JSON.stringify({ at: T0, user: 'a', project: 'p', image: 'i', op: 'x', bytes: 1 })}\n{"at": 5, "user": "a"\n`,
    );
    const r = await strata(['analytics', 'popularity', '--log', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /line 2/);
    assert.ok(r.stderr.includes(f), r.stderr);
    writeFileSync(f, 'at,user,project,image,op\n1,a,p,i,x\n');
    const c = await strata(['analytics', 'popularity', '--log', f]);
    assert.equal(c.code, 1);
    assert.match(c.stderr, /no bytes column/);
    const none = await strata(['analytics', 'popularity', '--library', path.join(dir, 'nolib')]);
    assert.equal(none.code, 1);
    const unknown = await strata(['analytics', 'nonsense', '--log', jsonl]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /unknown report/);
  });
});
