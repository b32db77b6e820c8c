/**
 * Version ordering against the ecosystems' own tools: `dpkg --compare-versions` on generated
 * pairs and on the real package versions of the Debian tree, rpm's own comparison
 * (`rpm.vercmp` in rpm's embedded Lua, rpm 4.18) on generated EVR pairs, and for apk (no apk
 * tool is packaged for Debian 12) pairs that follow from its documented ordering rules.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { parseDpkgStatus, splitDpkgVersion } from '../../src/inspect/dpkg.js';
import { compareApk, compareDpkg, compareRpm, fullVersion } from '../../src/inspect/version.js';
import { debianTree } from '../helpers/debian-tree.js';
import { run, scratch } from '../helpers/tools.js';

/** Deterministic generator (xorshift32) so a failure reproduces. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  return {
    int: (n: number) => next() % n,
    pick: (s: string) => s[next() % s.length],
    chance: (p: number) => next() / 2 ** 32 < p,
  };
}

type Rng = ReturnType<typeof rng>;

function randomRun(r: Rng, alphabet: string, min: number, max: number): string {
  let s = '';
  const n = min + r.int(max - min + 1);
  for (let i = 0; i < n; i++) s += r.pick(alphabet);
  return s;
}

/** A near copy of `v`: one character changed, inserted or removed, in `alphabet`. */
function mutate(r: Rng, v: string, alphabet: string): string {
  const i = r.int(v.length + 1);
  const op = r.int(3);
  if (op === 0) return v.slice(0, i) + r.pick(alphabet) + v.slice(i);
  if (op === 1 && v.length > 1) return v.slice(0, i) + v.slice(i + 1);
  return v.slice(0, i) + r.pick(alphabet) + v.slice(i + 1);
}

function dpkgVersion(r: Rng): string {
  const epoch = r.chance(0.2) ? `${r.int(3)}:` : '';
  const hasRev = r.chance(0.7);
  const up = `${r.pick('0123456789')}${randomRun(r, hasRev ? '0123456789.+~aAbz-' : '0123456789.+~aAbz', 0, 7)}`;
  return `${epoch}${up}${hasRev ? `-${randomRun(r, '0123456789.+~abZ', 1, 5)}` : ''}`;
}

function rpmVersion(r: Rng): string {
  const epoch = r.chance(0.25) ? `${r.int(3)}:` : '';
  const v = randomRun(r, '0123456789abcXY._~^+', 1, 8);
  return `${epoch}${v}${r.chance(0.7) ? `-${randomRun(r, '0123456789abc._~^', 1, 5)}` : ''}`;
}

const sign = (n: number) => Math.sign(n);

function pairs(gen: (r: Rng) => string, alphabet: string, n: number, seed: number): Array<[string, string]> {
  const r = rng(seed);
  const out: Array<[string, string]> = [];
  for (let i = 0; i < n; i++) {
    const a = gen(r);
    const b = r.chance(0.5) ? gen(r) : mutate(r, a, alphabet);
    out.push([a, b]);
  }
  return out;
}

/** dpkg's verdict on each pair, one shell running dpkg twice per pair at most. */
async function dpkgVerdicts(list: Array<[string, string]>): Promise<number[]> {
  const dir = scratch('dpkg-vercmp');
  const script = list
    .map(
      ([a, b]) =>
        `if dpkg --compare-versions '${a}' lt '${b}' 2>/dev/null; then echo -1; elif dpkg --compare-versions '${a}' eq '${b}' 2>/dev/null; then echo 0; else echo 1; fi`,
    )
    .join('\n');
  writeFileSync(path.join(dir, 'cmp.sh'), script);
  return (await run('sh', [path.join(dir, 'cmp.sh')])).trim().split('\n').map(Number);
}

describe('version ordering', () => {
  test('dpkg: 400 generated pairs agree with dpkg --compare-versions', async () => {
    const list = pairs(dpkgVersion, '0123456789.+~aAbz', 400, 0xdeb);
    // Only versions dpkg accepts (a mutation may break one), or the comparison means nothing.
    const ok = (v: string) => /^(\d+:)?\d[A-Za-z0-9.+~-]*$/.test(v) && !v.endsWith('-');
    const valid = list.filter(([a, b]) => ok(a) && ok(b));
    assert.ok(valid.length > 250, `only ${valid.length} usable pairs`);
    const want = await dpkgVerdicts(valid);
    const got = valid.map(([a, b]) => sign(compareDpkg(a, b)));
    const bad = valid.filter((_, i) => got[i] !== want[i]).map(([a, b]) => `${a} vs ${b}`);
    assert.deepEqual(bad, [], `disagreements with dpkg: ${bad.slice(0, 10).join('; ')}`);
    assert.ok(new Set(want).size === 3, 'the pairs must cover <, = and >');
  });

  test('dpkg: the real package versions of the Debian tree, sorted by us, are in dpkg order', async () => {
    const tree = await debianTree();
    const pk = parseDpkgStatus(readFileSync(path.join(tree, 'var/lib/dpkg/status'), 'utf8'));
    const versions = [...new Set(pk.map((p) => fullVersion('deb', p)))].sort(compareDpkg);
    assert.ok(versions.length > 40);
    const adjacent = versions.slice(1).map((v, i): [string, string] => [versions[i], v]);
    assert.deepEqual(
      await dpkgVerdicts(adjacent),
      adjacent.map(() => -1),
    );
  });

  test('dpkg version split: 1:2.36-9+deb12u4 -> epoch 1, version 2.36, release 9+deb12u4', () => {
    assert.deepEqual(splitDpkgVersion('1:2.36-9+deb12u4'), { epoch: 1, version: '2.36', release: '9+deb12u4' });
    assert.deepEqual(splitDpkgVersion('2.36'), { epoch: 0, version: '2.36', release: '' });
    assert.deepEqual(splitDpkgVersion('1.2-3-4'), { epoch: 0, version: '1.2-3', release: '4' });
  });

  test('rpm: 600 generated EVR pairs agree with rpm.vercmp (rpm 4.18)', async () => {
    const list = pairs(rpmVersion, '0123456789abcXY._~^+', 600, 0x4e4);
    const lua = `%{lua: local t = {${list.map(([a, b]) => `{[==[${a}]==],[==[${b}]==]}`).join(',')}}; for _, p in ipairs(t) do print(rpm.vercmp(p[1], p[2]) .. ",") end}`;
    const out = (await run('rpm', ['--eval', lua])).trim().replace(/,$/, '').split(',').map(Number);
    assert.equal(out.length, list.length);
    const bad = list.filter(([a, b], i) => sign(compareRpm(a, b)) !== out[i]).map(([a, b]) => `${a} vs ${b}`);
    assert.deepEqual(bad, [], `disagreements with rpm: ${bad.slice(0, 10).join('; ')}`);
    assert.ok(new Set(out).size === 3, 'the pairs must cover <, = and >');
  });

  test('apk: the documented ordering rules (pkgver of the APKBUILD reference, Gentoo-style suffixes)', () => {
    // Each pair follows from the written rules, not from any program: numeric components
    // compare as numbers and a longer version is newer; one letter after the numbers is
    // newer than none; _alpha < _beta < _pre < _rc < (release) < _cvs/_svn/_git/_hg/_p,
    // each with an optional number; -rN is the package release, compared last.
    const cases: Array<[string, '<' | '=' | '>', string]> = [
      ['1.0', '<', '1.1'],
      ['1.1', '<', '1.10'],
      ['1.9', '<', '1.10'],
      ['9', '<', '10'],
      ['1.0', '<', '1.0.1'],
      ['1.0', '<', '1.0.0'],
      ['1.0', '=', '1.0'],
      ['2.0', '>', '1.99.99'],
      ['1.0a', '>', '1.0'],
      ['1.0a', '<', '1.0b'],
      ['1.0b', '<', '1.0.1'],
      ['1.0_alpha', '<', '1.0_beta'],
      ['1.0_beta', '<', '1.0_pre'],
      ['1.0_pre', '<', '1.0_rc'],
      ['1.0_rc', '<', '1.0'],
      ['1.0_alpha', '<', '1.0'],
      ['0.9', '<', '1.0_alpha'],
      ['1.0_alpha1', '<', '1.0_alpha2'],
      ['1.0_rc1', '<', '1.0_rc2'],
      ['1.0_beta9', '<', '1.0_pre1'],
      ['1.0', '<', '1.0_p1'],
      ['1.0_p1', '<', '1.0_p2'],
      ['1.2.3', '<', '1.2.3_p1'],
      ['1.0', '<', '1.0_git20200101'],
      ['1.0_git1', '<', '1.0_git2'],
      ['1.0', '<', '1.0-r1'],
      ['1.0-r0', '<', '1.0-r1'],
      ['1.0-r9', '<', '1.0-r10'],
      ['1.0-r5', '<', '1.1-r0'],
      ['1.0_rc1-r3', '<', '1.0-r0'],
      ['3.0.13-r0', '>', '3.0.8-r4'],
      ['1.36.1-r2', '=', '1.36.1-r2'],
    ];
    const want = { '<': -1, '=': 0, '>': 1 } as const;
    const bad: string[] = [];
    for (const [a, op, b] of cases) {
      if (sign(compareApk(a, b)) !== want[op]) bad.push(`${a} ${op} ${b}`);
      if (sign(compareApk(b, a)) !== -want[op]) bad.push(`reversed: ${a} ${op} ${b}`);
    }
    assert.deepEqual(bad, []);
  });
});
