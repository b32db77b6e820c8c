/**
 * Issue 24's Debian pair: A0 is a part of the debootstrapped Debian (its /etc, its dpkg
 * database, a few binaries) with a package strata-base 1.0 installed by dpkg; A1 is A0 with
 * strata-base upgraded to 1.1 (a file changed, one added, one removed, its conffile-like
 * /etc file changed) and strata-tool installed, by dpkg; B1 is A0 with strata-app installed
 * by dpkg and /etc/motd edited. The packages are real .deb files built by dpkg-deb (apt in
 * a chroot would need the network). B2 = rebase(B1, A0, A1) is written by applyChanges.
 * Oracles: e2fsck -fn on B2's disk, the kernel's loop mount of it walked against B1's tree
 * plus A1's changes (from the host trees, lstat and sha256), dpkg-query --admindir listing
 * the union of packages (compared with dpkg-query on A1 and B1), and dpkg --verify finding
 * every file of the three packages as their md5sums say.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { rebaseVersion } from '../../src/library/edit/rebase.js';
import { Library } from '../../src/library/library.js';
import { strata } from '../helpers/cli.js';
import { type DebianTrio, debianTrio } from '../helpers/debian-trio.js';
import { type KernelEntry, treeView } from '../helpers/ext-tree.js';
import { run } from '../helpers/tools.js';
import { tempDir } from './images.js';

/** What a walk compares: type, permission bits, owner, content digest or link target. */
const key = (e: KernelEntry | undefined) =>
  e ? `${e.type} ${(e.mode & 0o7777).toString(8)} ${e.uid}:${e.gid} ${e.sha256 ?? e.target ?? ''}` : 'absent';

/** dpkg-query's list of installed packages under an admin directory: name -> version. */
function installed(admindir: string): Map<string, string> {
  // dpkg-query's own ${field} format
  const format = ['db:Status-Abbrev', 'Package', 'Version'].map((f) => `\${${f}}`).join('|');
  const out = execFileSync('dpkg-query', [`--admindir=${admindir}`, '-W', '-f', `${format}\n`], {
    encoding: 'utf8',
  });
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const [st, name, version] = line.split('|');
    if (st?.trim() === 'ii') m.set(name, version);
  }
  return m;
}

let t: DebianTrio;
let libDir: string;
let lib: Library;

describe('rebase on the Debian pair', { timeout: 900_000 }, () => {
  before(async () => {
    t = await debianTrio();
    libDir = tempDir('rebase-debian');
    lib = await Library.open(libDir, { create: true });
    await checkin(lib, t.img.a0, { name: 'base', inspect: false });
    await checkin(lib, t.img.a1, { name: 'base', parents: ['base@1'], inspect: false });
    await checkin(lib, t.img.b1, { name: 'app', parents: ['base@1'], inspect: false });
  });
  after(async () => {
    await lib?.close();
    if (libDir) rmSync(libDir, { recursive: true, force: true });
  });

  test('B2 = B1 + diff(A0, A1): e2fsck clean, the kernel sees the merged tree, dpkg lists the union', async () => {
    const dry = await rebaseVersion(lib, 'app@1', 'base@1', 'base@2', { dryRun: true });
    assert.deepEqual(dry.plan.conflicts, []);
    assert.equal(dry.version, undefined);
    const status = dry.plan.merged.find((m) => m.path === '/var/lib/dpkg/status');
    assert.deepEqual(status?.fromTheirs?.sort(), ['strata-base:all', 'strata-tool:all']);

    const r = await rebaseVersion(lib, 'app@1', 'base@1', 'base@2', { workDir: libDir });
    assert.equal(r.message, 'rebase app@1 from base@1 onto base@2');
    const made = await lib.catalog.resolve('app@2');
    assert.equal(made.message, r.message);
    assert.deepEqual(
      made.parents.map((x) => `${x.image}@${x.number}`).sort(),
      ['app@1', 'base@2'],
      'provenance: REF and A1',
    );

    const raw = path.join(libDir, 'b2.raw');
    await checkout(lib, 'app@2', raw, { format: 'raw' });
    const fsck = spawnSync('e2fsck', ['-fn', raw], { encoding: 'utf8' });
    assert.equal(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);

    const mnt = tempDir('rebase-debian-mnt');
    mkdirSync(mnt, { recursive: true });
    await run('mount', ['-o', 'ro,loop', raw, mnt]);
    try {
      const got = treeView(mnt);
      const [b0, a1, b1] = [treeView(t.base), treeView(t.a1), treeView(t.b1)];
      // expected by construction: A1's state where A1 changed a path, B1's elsewhere; the
      // dpkg status is checked by dpkg-query below, its backup (status-old) is B1's
      const merged = '/var/lib/dpkg/status';
      let fromA1 = 0;
      for (const p of new Set([...b0.keys(), ...a1.keys(), ...b1.keys(), ...got.keys()])) {
        if (p === merged || p === '/lost+found') continue;
        const theirs = key(a1.get(p)) !== key(b0.get(p)) && p !== '/var/lib/dpkg/status-old';
        if (theirs) fromA1++;
        const want = theirs ? key(a1.get(p)) : key(b1.get(p));
        assert.equal(key(got.get(p)), want, `${p}: ${theirs ? "A1's" : "B1's"} state`);
      }
      assert.ok(fromA1 >= 8, `paths A1 changed: ${fromA1}`);
      for (const p of ['/usr/lib/strata-base/new.txt', '/usr/bin/strata-tool', '/opt/strata-app/app.txt'])
        assert.ok(got.has(p), p);
      assert.ok(!got.has('/usr/lib/strata-base/old.txt'), 'A1 removed old.txt');
      assert.equal(key(got.get('/etc/motd')), key(b1.get('/etc/motd')), "B1's own edit");

      // packages: B1's, with A1's upgrade and addition
      const want = installed(path.join(t.b1, 'var/lib/dpkg'));
      for (const [n, v] of installed(path.join(t.a1, 'var/lib/dpkg'))) want.set(n, v);
      const have = installed(path.join(mnt, 'var/lib/dpkg'));
      assert.deepEqual([...have].sort(), [...want].sort());
      assert.equal(have.get('strata-base'), '1.1');
      assert.equal(have.get('strata-tool'), '1.0');
      assert.equal(have.get('strata-app'), '1.0');
      // every file of the three packages as its md5sums says (dpkg prints nothing then)
      const v = spawnSync('dpkg', [`--root=${mnt}`, '--verify', 'strata-base', 'strata-tool', 'strata-app'], {
        encoding: 'utf8',
      });
      assert.equal(v.status, 0, v.stderr);
      assert.equal(v.stdout, '');
    } finally {
      await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]));
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  test('strata rebase: the plan as JSON and as lines; a version written with both parents; usage errors exit 2', async () => {
    const dry = await strata([
      'rebase',
      'app@1',
      '--from',
      'base@1',
      '--to',
      'base@2',
      '--dry-run',
      '--json',
      '--library',
      libDir,
    ]);
    assert.equal(dry.code, 0, dry.stderr);
    const j = JSON.parse(dry.stdout);
    assert.equal(j.dryRun, true);
    assert.deepEqual(j.conflicts, []);
    const put = j.changes.find((c: { op: string; path: string }) => c.path === '/usr/share/strata-base/data.txt');
    assert.equal(put.op, 'put');
    assert.equal(put.content.kind, 'version');
    assert.equal(put.content.ref, 'base@2');
    assert.ok(
      j.changes.some((c: { op: string; path: string }) => c.op === 'rm' && c.path === '/usr/lib/strata-base/old.txt'),
    );
    const human = await strata(['rebase', 'app@1', '--from', 'base@1', '--to', 'base@2', '--library', libDir]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^rebase app@1 from base@1 onto base@2: /);
    assert.match(human.stdout, /merged \/var\/lib\/dpkg\/status \(package-stanzas: .*strata-base:all/);
    const v = await lib.catalog.resolve('app@3');
    assert.deepEqual(v.parents.map((x) => `${x.image}@${x.number}`).sort(), ['app@1', 'base@2']);
    const both = await strata([
      'rebase',
      'app@1',
      '--from',
      'base@1',
      '--to',
      'base@2',
      '--ours',
      '--theirs',
      '--library',
      libDir,
    ]);
    assert.equal(both.code, 2, both.stderr);
    assert.match(both.stderr, /--ours.*cannot be used with.*--theirs/);
  });

  test('a conflict stops it with a resolution file to edit; --resolve and --take decide it per path', async () => {
    // REF's own change of a file A1 changes too
    const mine = path.join(libDir, '..', 'mine.txt');
    writeFileSync(mine, 'REF changed this\n');
    const edited = await strata([
      'put',
      'app@1',
      '/usr/share/strata-base/data.txt',
      mine,
      '--json',
      '--library',
      libDir,
    ]);
    assert.equal(edited.code, 0, edited.stderr);
    const ref = JSON.parse(edited.stdout).ref as string;
    const args = ['rebase', ref, '--from', 'base@1', '--to', 'base@2', '--library', libDir];
    const before = (await lib.catalog.versions('app')).length;
    const stop = await strata(args);
    assert.equal(stop.code, 1, stop.stderr);
    assert.match(stop.stdout, /conflict content: \/usr\/share\/strata-base\/data\.txt/);
    assert.match(stop.stdout, /nothing written/);
    assert.equal((await lib.catalog.versions('app')).length, before, 'no version');
    // the printed resolution file: REF's side by default; switched to A1's and passed back
    const template = stop.stdout.slice(stop.stdout.indexOf('# resolution file'));
    assert.match(template, /^ours \/usr\/share\/strata-base\/data\.txt$/m);
    const file = path.join(libDir, '..', 'resolutions.txt');
    writeFileSync(file, template.replace(/^ours /gm, 'theirs '));
    const resolved = await strata([...args, '--resolve', file, '--json']);
    assert.equal(resolved.code, 0, resolved.stderr);
    const r = JSON.parse(resolved.stdout);
    assert.deepEqual(
      r.conflicts.map((c: { path: string; resolution: string }) => `${c.path} ${c.resolution}`),
      ['/usr/share/strata-base/data.txt theirs'],
    );
    const kept = await strata([...args, '--take', 'ours', '/usr/share/strata-base/data.txt', '--json']);
    assert.equal(kept.code, 0, kept.stderr);
    // the written files as debugfs (libext2fs) reads them: A1's bytes, then REF's
    const cat = async (v: string) => {
      const raw = path.join(libDir, '..', `${v.replace('@', '-')}.raw`);
      await checkout(lib, v, raw);
      try {
        return execFileSync('debugfs', ['-R', 'cat /usr/share/strata-base/data.txt', raw], { encoding: 'utf8' });
      } finally {
        rmSync(raw, { force: true });
      }
    };
    assert.equal(await cat(r.version.ref), await cat('base@2'));
    assert.equal(await cat(JSON.parse(kept.stdout).version.ref), 'REF changed this\n');
    // --interactive asks each conflict on standard input: an unclear answer is asked again
    const versions = async () => (await lib.catalog.versions('app')).length;
    const n = await versions();
    const ended = await strata([...args, '--interactive'], { input: '' });
    assert.notEqual(ended.code, 0);
    assert.match(ended.stderr, /keep ours or take theirs for \/usr\/share\/strata-base\/data\.txt\? \[o\/t\]/);
    assert.match(ended.stderr, /no answer for \/usr\/share\/strata-base\/data\.txt/);
    assert.equal(await versions(), n, 'no answer: no version');
    const asked = await strata([...args, '--interactive', '--json'], { input: 'maybe\nt\n' });
    assert.equal(asked.code, 0, asked.stderr);
    assert.equal(asked.stderr.match(/\[o\/t\]/g)?.length, 2, 'asked twice');
    const ai = JSON.parse(asked.stdout);
    assert.equal(ai.conflicts[0].resolution, 'theirs');
    assert.equal(await cat(ai.version.ref), await cat('base@2'));
    // a decision naming nothing is refused
    const typo = await strata([...args, '--take', 'theirs', '/usr/share/strata-base/no-such']);
    assert.notEqual(typo.code, 0);
    assert.match(typo.stderr, /names no conflict/);
  });
});
