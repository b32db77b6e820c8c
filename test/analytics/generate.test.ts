/**
 * `strata analytics generate`: the synthetic log has the shape Atkinson, Wong and Ricci
 * report for Emulab (seed 002), over several seeds, counted here from the JSONL the command
 * printed (test-side counting and least squares, not src/analytics):
 * - facility/user split 55.6% / 44.4% within ±1 point (at 100,000 requests one standard
 *   deviation of the share is 0.16 points);
 * - the most requested image under 13% of requests;
 * - user images heavy-tailed: rank-frequency exponent 1 ± 0.15 (least squares on log-log,
 *   ranks with at least 3 requests); facility images lighter: exponent at least 0.15 below;
 * - most user images live a few days: over half span at most 7 days (first to last request);
 * - deterministic: the same seed prints the same bytes, another seed other bytes.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { strata } from '../helpers/cli.js';

interface Row {
  at: string;
  user: string;
  project: string;
  image: string;
  owner: string;
  bytes: number;
}

const N = 100_000;

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

async function generate(seed: number, extra: string[] = []): Promise<string> {
  const r = await strata(['analytics', 'generate', '--requests', String(N), '--seed', String(seed), ...extra]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

describe('strata analytics generate', { timeout: 600_000 }, () => {
  for (const seed of [1, 2, 3, 4]) {
    test(`seed ${seed}: split, top share, tails, lifespans`, async () => {
      const rows = (await generate(seed))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Row);
      assert.equal(rows.length, N);
      const fac = rows.filter((r) => r.owner === 'facility').length / N;
      assert.ok(Math.abs(fac - 0.556) <= 0.01, `facility share ${fac}`);
      const counts = new Map<string, { n: number; fac: boolean; first: number; last: number }>();
      for (const r of rows) {
        const t = Date.parse(r.at);
        const e = counts.get(r.image) ?? { n: 0, fac: r.owner === 'facility', first: t, last: t };
        e.n++;
        e.first = Math.min(e.first, t);
        e.last = Math.max(e.last, t);
        counts.set(r.image, e);
      }
      const all = [...counts.values()].map((e) => e.n).sort((a, b) => b - a);
      assert.ok(all[0] / N < 0.13, `top share ${all[0] / N}`);
      const user = [...counts.values()].filter((e) => !e.fac);
      const facility = [...counts.values()].filter((e) => e.fac);
      const su = lsq(user.map((e) => e.n).sort((a, b) => b - a));
      const sf = lsq(facility.map((e) => e.n).sort((a, b) => b - a));
      assert.ok(Math.abs(su - 1) <= 0.15, `user exponent ${su}`);
      assert.ok(sf <= su - 0.15, `facility exponent ${sf} vs user ${su}`);
      const short = user.filter((e) => e.last - e.first <= 7 * 86400e3).length / user.length;
      assert.ok(short > 0.5, `user images within 7 days: ${short}`);
      // the log is in time order
      for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].at <= rows[i].at);
    });
  }

  test('same seed, same bytes; another seed, another log; parameters are checked', async () => {
    const sha = (s: string) => createHash('sha256').update(s).digest('hex');
    const a = await generate(7);
    const b = await generate(7);
    const c = await generate(8);
    assert.equal(sha(a), sha(b));
    assert.notEqual(sha(a), sha(c));
    const bad = await strata(['analytics', 'generate', '--requests', '10', '--seed', '1', '--facility-share', '2']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /facility-share/);
    const none = await strata(['analytics', 'generate', '--requests', '10']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /--seed/);
  });

  test('--facility-share and --user-exponent move the figures they name', async () => {
    const rows = (await generate(5, ['--facility-share', '0.8', '--user-exponent', '1.4']))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Row);
    const fac = rows.filter((r) => r.owner === 'facility').length / rows.length;
    assert.ok(Math.abs(fac - 0.8) <= 0.01, String(fac));
    const counts = new Map<string, number>();
    for (const r of rows) if (r.owner !== 'facility') counts.set(r.image, (counts.get(r.image) ?? 0) + 1);
    const su = lsq([...counts.values()].sort((x, y) => y - x));
    assert.ok(Math.abs(su - 1.4) <= 0.2, `user exponent ${su}`);
  });
});
