/**
 * Issue 24: "packages' databases (dpkg status, rpm db) are merged as files only when no
 * conflict touches them, otherwise the conflict names the package". rpm databases made by
 * rpm itself (4.18, sqlite) from rpmbuild packages, installed with --justdb: A0 holds
 * strata-a 1.0; A1 upgrades it to 1.1 and installs strata-b; REF either upgrades strata-a to
 * 1.2 and installs strata-c (both changed strata-a), or only installs strata-c, or leaves the
 * database alone. The packages a conflict must name are computed from `rpm -qa` on each
 * tree (rpm's own reading, not ours).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { planRebase, type RebasePlan, type Take } from '../../src/library/edit/rebase.js';
import type { FileEntry, FilesManifest } from '../../src/library/manifest.js';
import { fixture, run } from '../helpers/tools.js';

const DB = '/var/lib/rpm';

/** Four rpm roots (base, theirs, ours, oursOther) holding only rpm's database. */
async function rpmRoots(): Promise<Record<'base' | 'theirs' | 'ours' | 'oursOther', string>> {
  const dir = await fixture('rebase-rpm-roots-v1', async (out) => {
    const top = path.join(out, 'build');
    mkdirSync(top, { recursive: true });
    const rpm: Record<string, string> = {};
    for (const [name, version] of [
      ['strata-a', '1.0'],
      ['strata-a', '1.1'],
      ['strata-a', '1.2'],
      ['strata-b', '1.0'],
      ['strata-c', '1.0'],
    ]) {
      const spec = path.join(top, `${name}-${version}.spec`);
      writeFileSync(
        spec,
        `%global debug_package %{nil}\nName: ${name}\nVersion: ${version}\nRelease: 1\nSummary: t\nLicense: MIT\nBuildArch: noarch\n%description\nt\n%files\n`,
      );
      await run('rpmbuild', ['--define', `_topdir ${top}`, '-bb', spec]);
      rpm[`${name}-${version}`] = path.join(top, 'RPMS', 'noarch', `${name}-${version}-1.noarch.rpm`);
    }
    const root = async (n: string, steps: string[][]) => {
      const r = path.join(out, n);
      mkdirSync(r);
      await run('rpm', ['--root', r, '--dbpath', DB, '--initdb']);
      for (const pkgs of steps)
        await run('rpm', ['--root', r, '--dbpath', DB, '-U', '--nodeps', '--justdb', ...pkgs.map((p) => rpm[p])]);
    };
    await root('base', [['strata-a-1.0']]);
    await root('theirs', [['strata-a-1.0'], ['strata-a-1.1', 'strata-b-1.0']]);
    await root('ours', [['strata-a-1.0'], ['strata-a-1.2', 'strata-c-1.0']]);
    await root('oursOther', [['strata-a-1.0'], ['strata-c-1.0']]);
    rmSync(top, { recursive: true, force: true });
  });
  const p = (n: string) => path.join(dir, n);
  return { base: p('base'), theirs: p('theirs'), ours: p('ours'), oursOther: p('oursOther') };
}

/** rpm's own list of a root's packages: name.arch -> [epoch:]version-release (epoch 0 not shown, as rpm shows EVRs). */
async function rpmQa(root: string): Promise<Map<string, string>> {
  const qf = '%{NAME}.%{ARCH} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n';
  const out = await run('rpm', ['--root', root, '--dbpath', DB, '-qa', '--qf', qf]);
  return new Map(
    out
      .trim()
      .split('\n')
      .map((l) => l.replace(/ 0:/, ' ').split(' ') as [string, string]),
  );
}

const T0 = '2020-01-01T00:00:00.000000000Z';
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The file manifest of a root's rpm folder (and its parents), contents by digest. */
function manifest(root: string, contents: Map<string, Buffer>): FilesManifest {
  const dir = (p: string, ino: number): FileEntry =>
    ({ path: p, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, nlink: 2, ino, mtime: T0 }) as FileEntry;
  const entries: FileEntry[] = [dir('/', 2), dir('/var', 3), dir('/var/lib', 4), dir(DB, 5)];
  let ino = 100;
  for (const name of readdirSync(path.join(root, DB)).sort()) {
    const data = readFileSync(path.join(root, DB, name));
    const digest = sha(data);
    contents.set(digest, data);
    entries.push({
      path: `${DB}/${name}`,
      type: 'file',
      mode: statSync(path.join(root, DB, name)).mode & 0o7777,
      uid: 0,
      gid: 0,
      size: data.length,
      nlink: 1,
      ino: ino++,
      mtime: T0,
      digest,
    } as FileEntry);
  }
  return {
    kind: 'strata-files',
    version: 1,
    volume: '',
    fsKind: 'ext4',
    fileChunkSize: 1 << 20,
    entries,
  } as unknown as FilesManifest;
}

async function plan(base: string, theirs: string, ours: string, take?: Take[]): Promise<RebasePlan> {
  const contents = new Map<string, Buffer>();
  return planRebase({
    base: manifest(base, contents),
    theirs: manifest(theirs, contents),
    ours: manifest(ours, contents),
    theirsRef: 'a@2',
    ...(take ? { take } : {}),
    async read(_side, e) {
      const d = contents.get(e.digest as string);
      assert.ok(d, `read of unknown content ${e.path}`);
      return d;
    },
  });
}

/** Packages whose record differs between two rpm -qa lists. */
const changedBetween = (a: Map<string, string>, b: Map<string, string>) =>
  [...new Set([...a.keys(), ...b.keys()])].filter((n) => a.get(n) !== b.get(n)).sort();

/** The files of A1's rpm folder that differ from A0's (what taking A1's database must put or remove). */
function filesChanged(base: string, theirs: string): string[] {
  const read = (r: string) =>
    new Map(readdirSync(path.join(r, DB)).map((n) => [`${DB}/${n}`, sha(readFileSync(path.join(r, DB, n)))]));
  const b = read(base);
  const t = read(theirs);
  return [...new Set([...b.keys(), ...t.keys()])].filter((p) => b.get(p) !== t.get(p)).sort();
}

describe('rebase: rpm databases', { timeout: 600_000 }, () => {
  test('both sides changed one package: one conflict naming it, nothing of the folder written', async () => {
    const r = await rpmRoots();
    const [qb, qt, qo] = [await rpmQa(r.base), await rpmQa(r.theirs), await rpmQa(r.ours)];
    const both = changedBetween(qb, qt).filter((n) => changedBetween(qb, qo).includes(n) && qt.get(n) !== qo.get(n));
    assert.deepEqual(both, ['strata-a.noarch'], 'the fixture: rpm says both changed strata-a');
    const p = await plan(r.base, r.theirs, r.ours);
    assert.equal(p.conflicts.length, 1, JSON.stringify(p.conflicts, null, 1));
    const c = p.conflicts[0];
    assert.equal(c.path, `${DB}/rpmdb.sqlite`);
    assert.equal(c.kind, 'package');
    assert.deepEqual(c.packages, both);
    assert.match(
      c.detail ?? '',
      new RegExp(`ours ${qo.get('strata-a.noarch')}, theirs ${qt.get('strata-a.noarch')}`.replace(/\./g, '\\.')),
    );
    assert.equal(c.resolution, undefined);
    assert.equal(p.summary.unresolved, 1);
    assert.deepEqual(
      p.changeSet.changes.filter((x) => x.path.startsWith(`${DB}/`)),
      [],
      'no file of the database written',
    );
  });

  test('both sides changed different packages: still one conflict (a binary database), naming them all', async () => {
    const r = await rpmRoots();
    const [qb, qt, qo] = [await rpmQa(r.base), await rpmQa(r.theirs), await rpmQa(r.oursOther)];
    const p = await plan(r.base, r.theirs, r.oursOther);
    assert.equal(p.conflicts.length, 1, JSON.stringify(p.conflicts, null, 1));
    assert.deepEqual(
      p.conflicts[0].packages,
      [...new Set([...changedBetween(qb, qt), ...changedBetween(qb, qo)])].sort(),
    );
    assert.deepEqual(p.conflicts[0].packages, ['strata-a.noarch', 'strata-b.noarch', 'strata-c.noarch']);
  });

  test("--take theirs on the database takes A1's whole folder; REF that left it alone gets A1's with no conflict", async () => {
    const r = await rpmRoots();
    const want = filesChanged(r.base, r.theirs);
    assert.ok(want.includes(`${DB}/rpmdb.sqlite`));
    const check = (p: RebasePlan) => {
      const ops = p.changeSet.changes.filter((x) => x.path.startsWith(`${DB}/`));
      assert.deepEqual(
        [...new Set(ops.filter((x) => x.op === 'put' || x.op === 'rm').map((x) => x.path))].sort(),
        want,
      );
      for (const x of ops)
        if (x.op === 'put') assert.equal(x.content.kind === 'version' && x.content.ref, 'a@2', `${x.path}: A1's bytes`);
    };
    const taken = await plan(r.base, r.theirs, r.ours, [{ side: 'theirs', path: `${DB}/rpmdb.sqlite` }]);
    assert.equal(taken.conflicts[0].resolution, 'theirs');
    assert.equal(taken.summary.unresolved, 0);
    check(taken);
    const untouched = await plan(r.base, r.theirs, r.base);
    assert.deepEqual(untouched.conflicts, []);
    check(untouched);
  });
});
