/**
 * Inspection stored at check-in, `strata inspect REF`, `strata reinspect` and `strata
 * search` over a library holding two versions made from a base and a derived tree (see
 * test/helpers/inspect-pair.ts), then over ~1,000 versions. Every expected answer is computed from the
 * trees by real tools (find, sha256 of the files, dpkg-query, dpkg --compare-versions,
 * /etc/passwd, /etc/os-release), never from Strata's output.
 */
import assert from 'node:assert/strict';
import { existsSync, lstatSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { getInspection, putInspection } from '../../src/catalog/inspection.js';
import type { OsInspection } from '../../src/inspect/types.js';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { type SearchHit, search } from '../../src/library/search.js';
import { jsonLines, strata as runCli } from '../helpers/cli.js';
import { dpkgCompare, dpkgPackages, hostTree, inspectPair, type Pair } from '../helpers/inspect-pair.js';
import { run } from '../helpers/tools.js';
import { tempDir } from './images.js';

let pair: Pair;
let libDir: string;
/** The CLI's stdout; `search` finding nothing exits 1 (grep(1)), which is an answer here, not a failure. */
const strata = async (...args: string[]) => {
  const r = await runCli([...args, '--library', libDir]);
  if (r.code !== 0 && !(args[0] === 'search' && r.code === 1 && r.stdout === '')) {
    throw new Error(`strata ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
  }
  return r.stdout;
};
/** `--json` of these verbs lists records: JSON Lines. */
const json = async <T extends unknown[]>(...args: string[]) => jsonLines(await strata(...args, '--json')) as T;
/** version -> its tree on the host */
const trees = () => ({ 'deb@1': pair.base, 'deb@2': pair.derived });

async function findNames(tree: string, args: string[]): Promise<string[]> {
  const out = await run('find', [tree, ...args]);
  return out
    .split('\n')
    .filter(Boolean)
    .map((p) => `/${path.relative(tree, p)}`)
    .sort();
}

const users = (tree: string) =>
  readFileSync(path.join(tree, 'etc/passwd'), 'utf8')
    .split('\n')
    .filter((l) => l.includes(':'))
    .map((l) => l.split(':'));

/** The trees copy /etc without /usr/lib/os-release (its symlink dangles): Debian by /etc/debian_version. */
function treeDistro(tree: string): string {
  assert.ok(!existsSync(path.join(tree, 'etc/os-release')));
  assert.ok(lstatSync(path.join(tree, 'etc/debian_version')).isFile());
  return 'debian';
}

describe('library inspection and search', { timeout: 600_000 }, () => {
  before(async () => {
    pair = await inspectPair();
    libDir = tempDir('lib-search');
    const lib = await Library.open(libDir);
    try {
      await checkin(lib, pair.a, { name: 'deb', tags: ['base'] });
      await checkin(lib, pair.b, { name: 'deb', tags: ['derived'] });
    } finally {
      await lib.close();
    }
  });

  test('check-in stored the inspection: inspect REF equals inspect of the image, and the tree', async () => {
    for (const [ref, img, tree] of [
      ['deb@1', pair.a, pair.base],
      ['deb:derived', pair.b, pair.derived],
    ]) {
      const stored = await json<OsInspection[]>('inspect', ref);
      const direct = jsonLines<OsInspection>((await runCli(['inspect', img, '--json'])).stdout);
      assert.equal(stored.length, 1);
      assert.deepEqual(stored, direct);
      const pk = await dpkgPackages(tree);
      assert.deepEqual(
        new Map(
          stored[0].packages.map((p) => [
            p.name,
            `${p.epoch ? `${p.epoch}:` : ''}${p.version}${p.release ? `-${p.release}` : ''}`,
          ]),
        ),
        pk,
      );
      assert.deepEqual(
        stored[0].users.map((u) => u.name).sort(),
        users(tree)
          .map((u) => u[0])
          .sort(),
      );
      assert.equal(stored[0].distro, treeDistro(tree));
    }
    // the catalog rows are there without touching the image files
    const lib = await Library.open(libDir, { create: false });
    try {
      const got = await getInspection(lib.catalog.db, 'deb', 2);
      assert.ok(got && got.roots.length === 1);
    } finally {
      await lib.close();
    }
  });

  test('reinspect re-runs inspection on stored versions and keeps the same answer', async () => {
    const before = await json<OsInspection[]>('inspect', 'deb@2');
    const r = await json<Array<{ ref: string; roots: number }>>('reinspect');
    assert.deepEqual(
      r.map((x) => `${x.ref} ${x.roots}`),
      ['deb@1 1', 'deb@2 1'],
    );
    assert.deepEqual(await json<OsInspection[]>('inspect', 'deb@2', '--refresh'), before);
  });

  test('--path globs: the paths find(1) lists in each tree', async () => {
    for (const [glob, findArgs] of [
      ['/etc/*.conf', (t: string) => [path.join(t, 'etc'), '-mindepth', '1', '-maxdepth', '1', '-name', '*.conf']],
      ['ls-copy', (t: string) => [t, '-name', 'ls-copy']],
      ['/usr/bin/?a*', (t: string) => [path.join(t, 'usr/bin'), '-mindepth', '1', '-maxdepth', '1', '-name', '?a*']],
      ['/etc/**/*.sh', (t: string) => [path.join(t, 'etc'), '-mindepth', '1', '-name', '*.sh']],
    ] as const) {
      const want: Record<string, string[]> = {};
      for (const [ref, tree] of Object.entries(trees())) {
        const [top, ...rest] = findArgs(tree) as string[];
        const names = (await findNames(top, rest)).map((p) =>
          path.join(path.relative(tree, top) === '' ? '/' : `/${path.relative(tree, top)}`, p),
        );
        if (names.length) want[ref] = names;
      }
      assert.ok(Object.keys(want).length > 0, glob);
      const hits = await json<SearchHit[]>('search', '--path', glob);
      const got: Record<string, string[]> = {};
      for (const h of hits) got[h.ref] = (h.paths ?? []).map((p) => p.path);
      assert.deepEqual(got, want, glob);
    }
    const hits = await json<SearchHit[]>('search', '--path', 'ls-copy');
    assert.deepEqual(
      hits.map((h) => [h.ref, h.tags]),
      [['deb@2', ['derived']]],
    );
  });

  test('--digest: every path in both trees with that content', async () => {
    const ta = await hostTree(pair.base);
    const tb = await hostTree(pair.derived);
    for (const probe of ['/etc/hostname', '/usr/bin/ls', '/etc/passwd']) {
      const sha = ta.get(probe)?.sha as string;
      const want: Record<string, string[]> = {};
      for (const [ref, t] of [
        ['deb@1', ta],
        ['deb@2', tb],
      ] as const) {
        const ps = [...t].filter(([, r]) => r.sha === sha).map(([p]) => p);
        if (ps.length) want[ref] = ps.sort();
      }
      const got: Record<string, string[]> = {};
      for (const h of await json<SearchHit[]>('search', '--digest', sha))
        got[h.ref] = (h.paths ?? []).map((p) => p.path);
      assert.deepEqual(got, want, probe);
    }
    // /usr/bin/ls is also /usr/local/newdir/ls-copy in B
    const ls = ta.get('/usr/bin/ls')?.sha as string;
    const h = await json<SearchHit[]>('search', '--digest', ls);
    assert.deepEqual(
      h.find((x) => x.ref === 'deb@2')?.paths?.map((p) => p.path),
      ['/usr/bin/ls', '/usr/local/newdir/ls-copy'],
    );
  });

  test('--package with version bounds: as dpkg-query and dpkg --compare-versions answer', async () => {
    const pk = { 'deb@1': await dpkgPackages(pair.base), 'deb@2': await dpkgPackages(pair.derived) };
    const ops: Record<string, string> = { '<': 'lt', '<=': 'le', '=': 'eq', '>=': 'ge', '>': 'gt' };
    for (const spec of [
      'bash',
      'bash>=5',
      'bash>6',
      'bash<6',
      'gzip<1.12',
      'gzip<=1.12-1',
      'gzip=1.12-1',
      'hostname',
      'strata-probe>0.9',
      'strata-probe>=1:0',
      'no-such-pkg',
    ]) {
      const m = /^([^<>=]+)(<=|>=|<|>|=)?(.*)$/.exec(spec) as RegExpExecArray;
      const want: Record<string, string[]> = {};
      for (const [ref, map] of Object.entries(pk)) {
        const v = map.get(m[1]);
        if (v === undefined) continue;
        if (m[2] && !(await dpkgCompare(v, ops[m[2]], m[3]))) continue;
        want[ref] = [`${m[1]} ${v}`];
      }
      const got: Record<string, string[]> = {};
      for (const h of await json<SearchHit[]>('search', '--package', spec))
        got[h.ref] = (h.packages ?? []).map((p) => `${p.name} ${p.version}`);
      assert.deepEqual(got, want, spec);
    }
  });

  test('--user, --os, and criteria combined (all must hold)', async () => {
    for (const name of ['probe', 'root', 'deploy', 'nobody-here']) {
      const want = Object.entries(trees())
        .filter(([, t]) => users(t).some((u) => u[0] === name))
        .map(([ref]) => ref);
      const hits = await json<SearchHit[]>('search', '--user', name);
      assert.deepEqual(
        hits.map((h) => h.ref),
        want,
        name,
      );
      for (const h of hits) {
        const line = users(trees()[h.ref as 'deb@1']).find((u) => u[0] === name) as string[];
        assert.deepEqual(
          h.users?.map((u) => [u.name, String(u.uid), String(u.gid), u.home, u.shell]),
          [[line[0], line[2], line[3], line[5], line[6]]],
        );
      }
    }
    const id = treeDistro(pair.base);
    assert.deepEqual(
      (await json<SearchHit[]>('search', '--os', id)).map((h) => h.ref),
      ['deb@1', 'deb@2'],
    );
    assert.deepEqual(await json<SearchHit[]>('search', '--os', 'windows'), []);
    assert.deepEqual(
      (await json<SearchHit[]>('search', '--package', 'bash', '--user', 'probe')).map((h) => h.ref),
      ['deb@2'],
    );
    assert.deepEqual(await json<SearchHit[]>('search', '--package', 'hostname', '--user', 'probe'), []);
    const text = await strata('search', '--user', 'probe');
    assert.match(text, /^deb@2 \(derived\)$/m);
    // an error is 2, like grep(1): 1 means "nothing found"
    const bad = await runCli(['search', '--digest', 'xyz', '--library', libDir]);
    assert.match(bad.stderr, /sha256/);
    assert.equal(bad.code, 2);
  });

  test('~1,000 versions: search answers the expected sets (catalog rows added through the catalog API)', async () => {
    const lib = await Library.open(libDir, { create: false });
    const N = 1000;
    try {
      const src = [await lib.catalog.resolve('deb@1'), await lib.catalog.resolve('deb@2')];
      const stored = [await getInspection(lib.catalog.db, 'deb', 1), await getInspection(lib.catalog.db, 'deb', 2)];
      const fileSets = [];
      for (const v of src) {
        const layout = await lib.layout(v.manifest);
        const vol = layout.volumes.find((x) => x.fs);
        fileSets.push({ volume: vol?.id ?? '', files: vol?.fs?.files as string });
      }
      const t0 = performance.now();
      for (let i = 0; i < N; i++) {
        const k = i % 2;
        const v = await lib.catalog.addVersion({
          image: `many/${String(i).padStart(4, '0')}`,
          manifest: src[k].manifest,
          virtualSize: src[k].virtualSize,
          usedBytes: src[k].usedBytes,
          storedBytes: 0,
          newBytes: 0,
          exact: false,
          parents: [],
          tags: [k === 0 ? 'from-base' : 'from-derived'],
        });
        const roots = stored[k]?.roots as unknown as OsInspection[];
        await putInspection(lib.catalog.db, {
          image: v.image,
          number: v.number,
          inspected: new Date().toISOString(),
          strataVersion: 'test',
          warnings: [],
          roots: roots.map((r) => ({ ...r, data: r as unknown as Record<string, unknown> })),
          fileSets: [{ ...fileSets[k], entries: () => [] }],
        });
      }
      const fill = performance.now() - t0;
      const many = (k: number) =>
        Array.from({ length: N }, (_, i) => i)
          .filter((i) => i % 2 === k)
          .map((i) => `many/${String(i).padStart(4, '0')}@1`);
      const cases: Array<[Parameters<typeof search>[1], string[]]> = [
        [{ package: 'bash>6' }, ['deb@2', ...many(1)]],
        [{ package: 'hostname' }, ['deb@1', ...many(0)]],
        [{ user: 'probe' }, ['deb@2', ...many(1)]],
        [{ path: '/usr/local/newdir/ls-copy' }, ['deb@2', ...many(1)]],
        [{ path: '/etc/issue' }, ['deb@1', ...many(0)]],
        [{ package: 'gzip<1.12', user: 'probe' }, ['deb@2', ...many(1)]],
      ];
      const times: string[] = [];
      for (const [q, want] of cases) {
        const t = performance.now();
        const hits = await search(lib, q);
        times.push(`${JSON.stringify(q)} ${(performance.now() - t).toFixed(1)} ms`);
        assert.deepEqual(
          hits.map((h) => h.ref),
          want.sort(),
          JSON.stringify(q),
        );
        for (const h of hits)
          if (h.image.startsWith('many/'))
            assert.deepEqual(h.tags, [Number(h.image.slice(5)) % 2 === 0 ? 'from-base' : 'from-derived']);
      }
      // a deleted version is no longer found; its stored rows do not matter
      await lib.catalog.deleteVersion('many/0000', 1);
      assert.deepEqual(
        (await search(lib, { package: 'hostname' })).map((h) => h.ref),
        ['deb@1', ...many(0).slice(1)],
      );
      // a damaged stored inspection is an error naming the version and the table
      await lib.catalog.db.run("UPDATE inspection_roots SET data = '{oops' WHERE image = ? AND number = ?", [
        'many/0002',
        1,
      ]);
      await assert.rejects(getInspection(lib.catalog.db, 'many/0002', 1), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'CORRUPT');
        assert.match(e.message, /many\/0002@1.*inspection_roots\.data/);
        return true;
      });
      // figures for the note (never asserted: tests do not time)
      console.log(`# ${N + 2} versions, filled in ${fill.toFixed(0)} ms; in-process search: ${times.join('; ')}`);
    } finally {
      await lib.close();
    }
    const t = performance.now();
    const hits = await json<SearchHit[]>('search', '--package', 'bash>6');
    console.log(
      `# strata search --package 'bash>6' (CLI, process start included): ${(performance.now() - t).toFixed(0)} ms`,
    );
    assert.equal(hits.length, N / 2 + 1);
  });
});
