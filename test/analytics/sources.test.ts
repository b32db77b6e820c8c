import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseRequestLog } from '../../src/analytics/request-log.js';
import { planPreload } from '../../src/analytics/simulate.js';
import { nbdReads, sameAs, startDeploy, twoVersions } from '../deploy/helpers.js';
import { CLI, strata } from '../helpers/cli.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

/**
 * Issue 25's other request-log sources, from real runs: the NBD server's --trace (strata nbd
 * read by libnbd's nbdsh and qemu-img) and the host request log that `strata deploy --cache`
 * appends; and `strata preload --auto` choosing from that log on a fresh host's cache, its
 * effect checked by a later deploy that fetches nothing (the deploy's own origin count) and
 * writes a TARGET qemu-img compare finds identical to `strata checkout`'s.
 */
let dir: string;
let lib: string;
let v2: string;

before(async () => {
  dir = tempDir('analytics-sources');
  ({ lib, v2 } = await twoVersions(dir));
});

after(() => {});

async function strataNbd(args: string[]) {
  const child = spawn(process.execPath, [CLI, 'nbd', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const listening = await new Promise<{ exports: Array<{ uri: string; name: string }> }>((resolve, reject) => {
    child.stdout.on('data', (c) => {
      out += c;
      try {
        resolve(JSON.parse(out));
      } catch {}
    });
    exited.then(() => reject(new Error(`strata nbd exited: ${err}`)));
  });
  return {
    exports: listening.exports,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

describe('NBD trace as a request log', () => {
  test('each connection to an export is one request of its version, its bytes what the reads asked for', async () => {
    const trace = path.join(dir, 'nbd-trace.jsonl');
    const nbd = await strataNbd(['--library', lib, '--port', '0', '--trace', trace, 'disk@1', 'disk@2']);
    const uri = (name: string) => nbd.exports.find((e) => e.name === name)?.uri as string;
    assert.ok(uri('disk@1') && uri('disk@2'), JSON.stringify(nbd.exports));
    // known reads (libnbd: one NBD read per pread), then a whole-disk read by qemu-img
    const a: Array<[number, number]> = [
      [0, 65536],
      [1 << 20, 4096],
    ];
    const b: Array<[number, number]> = [[4096, 8192]];
    const c: Array<[number, number]> = [
      [0, 512],
      [2 << 20, 131072],
      [3 << 20, 1024],
    ];
    await nbdReads(uri('disk@2'), a);
    await nbdReads(uri('disk@2'), b);
    await nbdReads(uri('disk@1'), c);
    assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', v2, uri('disk@2')]), /identical/);
    await nbd.stop();
    const sum = (rs: Array<[number, number]>) => rs.reduce((s, [, n]) => s + n, 0);
    const reqs = parseRequestLog(readFileSync(trace, 'utf8'), trace);
    assert.equal(reqs.length, 4, JSON.stringify(reqs));
    assert.deepEqual(
      reqs.map((r) => [r.image, r.version, r.op]),
      [
        ['disk', 2, 'nbd'],
        ['disk', 2, 'nbd'],
        ['disk', 1, 'nbd'],
        ['disk', 2, 'nbd'],
      ],
    );
    assert.deepEqual(
      reqs.slice(0, 3).map((r) => r.bytes),
      [sum(a), sum(b), sum(c)],
    );
    // qemu-img compare read at least the version's data (a whole-disk read, holes skipped)
    assert.ok(reqs[3].bytes > sum(a), String(reqs[3].bytes));
    // the CLI reads the trace as it reads any log, and merges it with another
    const pop = JSON.parse((await strata(['analytics', 'popularity', '--log', trace, '--json'])).stdout);
    assert.equal(pop.requests, 4);
    assert.equal(pop.images, 1);
    const gen = path.join(dir, 'gen.jsonl');
    const g = await strata(['analytics', 'generate', '--requests', '50', '--seed', '3', '--days', '2']);
    assert.equal(g.code, 0, g.stderr);
    writeFileSync(gen, g.stdout);
    const both = await strata(['analytics', 'orgs', '--log', trace, '--log', gen, '--json']);
    assert.equal(both.code, 0, both.stderr);
    const nbdOrg = JSON.parse(both.stdout).orgs.find((x: { project: string }) => x.project === 'nbd');
    assert.equal(nbdOrg.requests, 4);
    assert.equal(
      JSON.parse(both.stdout).orgs.reduce((s: number, x: { requests: number }) => s + x.requests, 0),
      54,
    );
  });

  test('a damaged trace line is an error naming the file, the line and its offset', () => {
    const good = JSON.stringify({ time: 1, export: 'x@1', conn: 1, op: 'read', offset: 0, length: 10, latency: 1 });
    const text = `${good}\n${good.replace('"length":10', '"length":-3')}\n`;
    assert.throws(
      () => parseRequestLog(text, 'trace.jsonl'),
      (e: Error) =>
        /line 2: bad length -3/.test(e.message) && /trace\.jsonl/.test(e.message) && /offset/.test(e.message),
    );
  });
});

describe('deploy request log and preload --auto', () => {
  test('deploys append their version to the cache folder log; preload --auto on a new host fetches the most wanted', async () => {
    const c1 = path.join(dir, 'cache1');
    const deployed: Array<{ ref: string; dataBytes: number }> = [];
    for (const [i, ref] of ['disk@1', 'disk@2', 'disk@2'].entries()) {
      const target = path.join(dir, `t${i}.raw`);
      const d = await startDeploy([ref, '--library', lib, '--cache', c1, '--to', target, '--exit-when-complete']);
      const start = await d.event('start');
      assert.equal(await d.exited, 0, d.stderr());
      deployed.push({ ref, dataBytes: Number(start.dataBytes) });
    }
    const logFile = path.join(c1, 'requests.jsonl');
    const lines = readFileSync(logFile, 'utf8').trim().split('\n');
    assert.equal(lines.length, 3);
    const recs = lines.map((l) => JSON.parse(l));
    assert.deepEqual(
      recs.map((r) => [`${r.image}@${r.version}`, r.op, r.bytes]),
      deployed.map((d) => [d.ref, 'deploy', d.dataBytes]),
    );
    assert.ok(recs.every((r) => r.target.startsWith(dir) && Date.parse(r.at) > Date.now() - 3600_000));
    // the analytics read it as a request log
    const pop = JSON.parse((await strata(['analytics', 'popularity', '--log', logFile, '--json'])).stdout);
    assert.equal(pop.requests, 3);

    // a fresh host with that history, a cache that holds one version: disk@2 (asked twice) wins
    const c2 = path.join(dir, 'cache2');
    const size = String(Math.floor(deployed[1].dataBytes * 1.5));
    const dry = await strata([
      'preload',
      '--auto',
      '--dry-run',
      '--json',
      '--library',
      lib,
      '--cache',
      c2,
      '--cache-size',
      size,
      '--log',
      logFile,
    ]);
    assert.equal(dry.code, 0, dry.stderr);
    const plan = JSON.parse(dry.stdout);
    assert.deepEqual(
      plan.ranked.map((e: { ref: string; requests: number }) => [e.ref, e.requests]),
      [
        ['disk@2', 2],
        ['disk@1', 1],
      ],
    );
    assert.deepEqual(plan.chosen, ['disk@2']);
    const pre = await strata([
      'preload',
      '--auto',
      '--json',
      '--library',
      lib,
      '--cache',
      c2,
      '--cache-size',
      size,
      '--log',
      logFile,
    ]);
    assert.equal(pre.code, 0, pre.stderr);
    const done = JSON.parse(pre.stdout);
    assert.deepEqual(
      done.preloaded.map((p: { ref: string }) => p.ref),
      ['disk@2'],
    );
    assert.ok(done.preloaded[0].originBytes > 0);
    // the deploy of the chosen version on that host fetches nothing from the library
    const target = path.join(dir, 'after-auto.raw');
    const d = await startDeploy(['disk@2', '--library', lib, '--cache', c2, '--to', target, '--exit-when-complete']);
    assert.equal(await d.exited, 0, d.stderr());
    const exit = d.events.find((e) => e.event === 'exit') as Record<string, unknown>;
    assert.equal(exit.originBytes, 0, JSON.stringify(exit));
    assert.equal(await sameAs(v2, target), true, 'qemu-img compare: TARGET holds disk@2');
    // a second run: nothing missing any more, so the whole idle capacity is left
    const again = JSON.parse(
      (
        await strata([
          'preload',
          '--auto',
          '--dry-run',
          '--json',
          '--library',
          lib,
          '--cache',
          c2,
          '--cache-size',
          size,
          '--log',
          logFile,
        ])
      ).stdout,
    );
    assert.equal(again.ranked.find((e: { ref: string }) => e.ref === 'disk@2').missing, 0);
  });
});

describe('the pre-load plan on logs whose answer is known by construction', () => {
  const DAY = 86_400_000;
  const now = Date.parse('2026-03-10T00:00:00Z');
  const req = (daysAgo: number, image: string, version: number, bytes: number, owner = 'alice') => ({
    at: now - daysAgo * DAY,
    user: 'u',
    project: 'p',
    image,
    version,
    op: 'deploy',
    bytes,
    owner,
  });
  test('facility versions first, then by requests in the window; what does not fit is passed over', () => {
    const log = [
      // user image asked 5 times, facility image twice, another user image 3 times, one older than the window
      ...Array.from({ length: 5 }, () => req(1, 'u1', 1, 100)),
      req(2, 'base', 1, 300, 'facility'),
      req(3, 'base', 1, 300, 'facility'),
      ...Array.from({ length: 3 }, () => req(2, 'u2', 4, 50)),
      ...Array.from({ length: 9 }, () => req(8.5, 'old', 1, 10)),
    ];
    const p = planPreload(log, { cacheBytes: 420, idleBytes: 1000, now });
    assert.deepEqual(
      p.ranked.map((e) => [e.ref, e.requests, e.facility]),
      [
        ['base@1', 2, true],
        ['u1@1', 5, false],
        ['u2@4', 3, false],
      ],
    );
    // 300 + 100 = 400 fits 420; u2 (50) would not
    assert.deepEqual(
      p.chosen.map((e) => e.ref),
      ['base@1', 'u1@1'],
    );
    // the idle capacity bounds what is fetched: base (300 missing) does not fit 200, the rest does
    const q = planPreload(log, { cacheBytes: 420, idleBytes: 200, now });
    assert.deepEqual(
      q.chosen.map((e) => e.ref),
      ['u1@1', 'u2@4'],
    );
    // what the host holds already costs nothing to fetch
    const r = planPreload(log, {
      cacheBytes: 420,
      idleBytes: 200,
      now,
      sizes: (x) => ({ bytes: x.bytes, missing: x.image === 'base' ? 0 : x.bytes }),
    });
    assert.deepEqual(
      r.chosen.map((e) => e.ref),
      ['base@1', 'u1@1'],
    );
  });
});
