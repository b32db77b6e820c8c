/**
 * Issue 24's rebase and log over the network: `strata rebase --remote URL` and `strata log
 * --remote URL` against a real `strata serve` (its own process, port 0, tokens from the
 * catalog), on the Debian trio (test/helpers/debian-trio.ts). A project reader may read the
 * log but is refused a rebase (403), another project sees nothing (404), and neither makes a
 * version; a member's rebase makes one on the server whose disk e2fsck -fn finds clean,
 * whose files debugfs (libext2fs, not our reader) reads as A1's changes on B1's own files,
 * and whose dpkg database (dumped by debugfs) dpkg-query lists as the union of packages.
 * The log a service answers prints exactly what the local log prints, and leaves out the
 * parents the caller may not read.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { Library } from '../../src/library/library.js';
import { strata } from '../helpers/cli.js';
import { type DebianTrio, debianTrio } from '../helpers/debian-trio.js';
import { tempDir } from '../library/images.js';
import { addPeople, Checked, serveProcess } from './http-helpers.js';

let dir: string;
let libDir: string;
let tokens: Record<string, string>;
let url: string;
let stop: (() => Promise<void>) | undefined;
let t: DebianTrio;

const as = (user: string) => ({ env: { STRATA_TOKEN: tokens[user] } });

async function versionsOf(name: string): Promise<number[]> {
  const r = await strata(['versions', name, '--json', '--remote', url], as('root'));
  assert.equal(r.code, 0, r.stderr);
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .flatMap((l) => {
      const x = JSON.parse(l);
      return Array.isArray(x) ? x.map((v: { number: number }) => v.number) : [x.number];
    });
}

/** The server's version checked out raw: what debugfs and e2fsck read. */
async function serverDisk(ref: string): Promise<string> {
  const raw = path.join(dir, `${ref.replace(/[^a-z0-9]+/gi, '-')}.raw`);
  const lib = await Library.open(libDir, { create: false });
  try {
    await checkout(lib, ref, raw);
  } finally {
    await lib.close();
  }
  return raw;
}
const debugfs = (raw: string, cmd: string) =>
  execFileSync('debugfs', ['-R', cmd, raw], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** dpkg-query's installed packages under an admin directory: "name version" lines, sorted. */
function installed(admindir: string): string[] {
  const field = (f: string) => `\${${f}}`; // dpkg-query's own ${field} format
  const format = `${field('db:Status-Abbrev')}|${field('Package')} ${field('Version')}\n`;
  const out = execFileSync('dpkg-query', [`--admindir=${admindir}`, '-W', '-f', format], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l.startsWith('ii'))
    .map((l) => l.slice(l.indexOf('|') + 1))
    .sort();
}

const rebaseArgs = (ref: string) => ['rebase', ref, '--from', 'own/base@1', '--to', 'own/base@2'];

before(async () => {
  t = await debianTrio();
  dir = tempDir('http-rebase');
  libDir = path.join(dir, 'lib');
  const lib = await Library.open(libDir);
  try {
    const people = await addPeople(lib);
    tokens = people.tokens;
    await checkin(lib, t.img.a0, { name: 'own/base', inspect: false });
    await checkin(lib, t.img.a1, { name: 'own/base', parents: ['own/base@1'], inspect: false });
    await checkin(lib, t.img.b1, { name: 'own/app', parents: ['own/base@1'], inspect: false });
    // an image of another project, and one of ours made from it (the log must not show it to us)
    await checkin(lib, t.img.a0, { name: 'other/os', inspect: false });
    await checkin(lib, t.img.b1, { name: 'own/derived', parents: ['other/os@1'], inspect: false });
    for (const n of ['own/base', 'own/app', 'own/derived']) await people.access.setImageAccess(n, 'own', 'private');
    await people.access.setImageAccess('other/os', 'other', 'private');
  } finally {
    await lib.close();
  }
  ({ url, stop } = await serveProcess(libDir));
});

after(async () => {
  await stop?.();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('rebase and log with --remote against strata serve', { timeout: 900_000 }, () => {
  test('a reader is refused a rebase (403), other projects and anonymous see nothing (404); no version', async () => {
    const api = await Checked.open(url);
    const post = async (token: string | undefined, body: Record<string, unknown>) =>
      (
        await api.call('POST', '/v1/images/{name}/rebases', {
          params: { name: 'own/app' },
          token,
          json: { ref: 'own/app@1', from: 'own/base@1', to: 'own/base@2', ...body },
        })
      ).status;
    assert.equal(await post(tokens['own-reader'], {}), 403);
    assert.equal(await post(tokens['own-reader'], { dryRun: true }), 403);
    assert.equal(await post(tokens['own-admin-read'], {}), 403); // a read-scoped token of an admin
    assert.equal(await post(undefined, {}), 404);
    assert.equal(await post(tokens['other-member'], {}), 404);
    // a member may not carry in what it cannot read: other/os is another project's
    assert.equal(await post(tokens['own-member'], { to: 'other/os@1' }), 404);
    assert.equal(await post(tokens['own-member'], { ref: 'own/base@1' }), 400); // REF of another image than the path's
    assert.equal(await post(tokens['own-member'], { prefer: 'mine' }), 400);
    // the CLI says why
    const reader = await strata([...rebaseArgs('own/app@1'), '--remote', url], as('own-reader'));
    assert.notEqual(reader.code, 0);
    assert.match(reader.stderr, /own-reader .*reader.* may not write to own\/app/);
    assert.deepEqual(await versionsOf('own/app'), [1]);
  });

  test("a member's rebase makes B2 on the server: e2fsck clean, debugfs reads A1's changes on B1's files, dpkg lists the union", async () => {
    const dry = await strata([...rebaseArgs('own/app@1'), '--dry-run', '--json', '--remote', url], as('own-member'));
    assert.equal(dry.code, 0, dry.stderr);
    const plan = JSON.parse(dry.stdout);
    assert.equal(plan.dryRun, true);
    assert.equal(plan.version, undefined);
    assert.deepEqual(plan.conflicts, []);
    assert.deepEqual(await versionsOf('own/app'), [1], 'a dry run writes nothing');

    // the route's 200 (nothing written) checked against the server's /openapi.json
    const api = await Checked.open(url);
    const checked = await api.call('POST', '/v1/images/{name}/rebases', {
      params: { name: 'own/app' },
      token: tokens['own-member'],
      json: { ref: 'own/app@1', from: 'own/base@1', to: 'own/base@2', dryRun: true },
    });
    assert.equal(checked.status, 200);
    assert.deepEqual((checked.body as { changes: unknown[] }).changes, plan.changes);

    const r = await strata([...rebaseArgs('own/app@1'), '--json', '--remote', url], as('own-member'));
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.ref, 'own/app@1');
    assert.equal(j.message, 'rebase own/app@1 from own/base@1 onto own/base@2');
    assert.equal(j.version.ref, 'own/app@2');
    assert.equal(j.version.createdBy, 'own-member');
    assert.deepEqual(j.changes, plan.changes, 'the change set the dry run planned');
    const lib = await Library.open(libDir, { create: false });
    try {
      const v = await lib.catalog.resolve('own/app@2');
      assert.deepEqual(v.parents.map((p) => `${p.image}@${p.number}`).sort(), ['own/app@1', 'own/base@2']);
    } finally {
      await lib.close();
    }

    const raw = await serverDisk('own/app@2');
    const fsck = spawnSync('e2fsck', ['-fn', raw], { encoding: 'utf8' });
    assert.equal(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
    const host = (tree: string, p: string) => readFileSync(path.join(tree, p), 'utf8');
    for (const p of ['/usr/share/strata-base/data.txt', '/usr/lib/strata-base/new.txt', '/etc/strata-base.conf'])
      assert.equal(debugfs(raw, `cat ${p}`), host(t.a1, p), `${p}: A1's`);
    assert.equal(debugfs(raw, 'cat /usr/bin/strata-tool'), host(t.a1, '/usr/bin/strata-tool'));
    assert.equal(debugfs(raw, 'cat /etc/motd'), host(t.b1, '/etc/motd'), "B1's own edit");
    assert.equal(debugfs(raw, 'cat /opt/strata-app/app.txt'), host(t.b1, '/opt/strata-app/app.txt'));
    assert.doesNotMatch(debugfs(raw, 'ls /usr/lib/strata-base'), /old\.txt/, 'A1 removed old.txt');
    // the dpkg database as libext2fs reads it, listed by dpkg-query: B1's packages with A1's upgrade and addition
    const admin = path.join(dir, 'b2-dpkg');
    mkdirSync(admin);
    execFileSync('debugfs', ['-R', `rdump /var/lib/dpkg ${admin}`, raw], { stdio: 'pipe' });
    const want = new Map(installed(path.join(t.b1, 'var/lib/dpkg')).map((l) => l.split(' ') as [string, string]));
    for (const l of installed(path.join(t.a1, 'var/lib/dpkg'))) {
      const [n, v] = l.split(' ');
      want.set(n, v);
    }
    const have = installed(path.join(admin, 'dpkg'));
    assert.deepEqual(have, [...want].map(([n, v]) => `${n} ${v}`).sort());
    assert.ok(have.includes('strata-base 1.1') && have.includes('strata-tool 1.0') && have.includes('strata-app 1.0'));
    rmSync(raw);
  });

  test('a conflict stops a remote rebase (exit 1, no version); --take and --resolve decide it on the server', async () => {
    const mine = path.join(dir, 'mine.txt');
    writeFileSync(mine, 'REF changed this\n');
    const put = await strata(
      ['put', 'own/app@1', '/usr/share/strata-base/data.txt', mine, '--json', '--remote', url],
      as('own-member'),
    );
    assert.equal(put.code, 0, put.stderr);
    const ref = JSON.parse(put.stdout).ref as string;
    const before = await versionsOf('own/app');
    const stopped = await strata([...rebaseArgs(ref), '--remote', url], as('own-member'));
    assert.equal(stopped.code, 1, stopped.stderr);
    assert.match(stopped.stdout, /^conflict content: \/usr\/share\/strata-base\/data\.txt/m);
    assert.match(stopped.stdout, /nothing written/);
    assert.deepEqual(await versionsOf('own/app'), before, 'no version');
    // the printed resolution file, switched to A1's side, passed back
    const file = path.join(dir, 'resolutions.txt');
    const template = stopped.stdout.slice(stopped.stdout.indexOf('# resolution file'));
    writeFileSync(file, template.replace(/^ours /gm, 'theirs '));
    const theirs = await strata([...rebaseArgs(ref), '--resolve', file, '--json', '--remote', url], as('own-member'));
    assert.equal(theirs.code, 0, theirs.stderr);
    const ours = await strata(
      [...rebaseArgs(ref), '--take', 'ours', '/usr/share/strata-base/data.txt', '--remote', url],
      as('own-member'),
    );
    assert.equal(ours.code, 0, ours.stderr);
    const made = /^wrote (own\/app@\d+) /m.exec(ours.stdout)?.[1];
    assert.ok(made, ours.stdout);
    const a = await serverDisk(JSON.parse(theirs.stdout).version.ref);
    const b = await serverDisk(made);
    assert.equal(debugfs(a, 'cat /usr/share/strata-base/data.txt'), 'data v2, longer than before\n');
    assert.equal(debugfs(b, 'cat /usr/share/strata-base/data.txt'), 'REF changed this\n');
    rmSync(a);
    rmSync(b);
    // the route's 201 (a version written) checked against the server's /openapi.json
    const api = await Checked.open(url);
    const made201 = await api.call('POST', '/v1/images/{name}/rebases', {
      params: { name: 'own/app' },
      token: tokens['own-member'],
      json: {
        ref,
        from: 'own/base@1',
        to: 'own/base@2',
        take: [{ side: 'theirs', path: '/usr/share/strata-base/data.txt' }],
        message: 'by the API',
      },
    });
    assert.equal(made201.status, 201);
    const b201 = made201.body as {
      message: string;
      version: { ref: string; parent: string; parents: Array<{ image: string; number: number }> };
    };
    assert.equal(b201.message, 'by the API');
    assert.equal(b201.version.parent, ref);
    assert.deepEqual(
      b201.version.parents.map((p) => `${p.image}@${p.number}`),
      [ref, 'own/base@2'],
    );
    // a decision naming no conflict is the server's 422, said by the CLI
    const typo = await strata([...rebaseArgs(ref), '--take', 'theirs', '/no/such', '--remote', url], as('own-member'));
    assert.notEqual(typo.code, 0);
    assert.match(typo.stderr, /names no conflict/);
  });

  test('log --remote prints what the local log prints; a reader may; parents it may not read are left out', async () => {
    for (const ref of ['own/app@2', 'own/app']) {
      const local = await strata(['log', ref, '--library', libDir]);
      assert.equal(local.code, 0, local.stderr);
      const remote = await strata(['log', ref, '--remote', url], as('own-reader'));
      assert.equal(remote.code, 0, remote.stderr);
      assert.equal(remote.stdout, local.stdout);
      const lj = await strata(['log', ref, '--json', '--library', libDir]);
      const rj = await strata(['log', ref, '--json', '--remote', url], as('own-reader'));
      assert.deepEqual(JSON.parse(rj.stdout), JSON.parse(lj.stdout));
    }
    const api = await Checked.open(url);
    const checked = await api.call('GET', '/v1/images/{name}/versions/{version}/log', {
      params: { name: 'own/app', version: 2 },
      query: { limit: 2 },
      token: tokens['own-reader'],
    });
    assert.equal(checked.status, 200);
    assert.deepEqual(
      (checked.body as Array<{ ref: string }>).map((s) => s.ref),
      ['own/app@2', 'own/app@1'],
    );
    // the chain of the rebased version: own/app@2 <- own/app@1 <- own/base@1, A1 named as the other parent
    const steps = JSON.parse((await strata(['log', 'own/app@2', '--json', '--remote', url], as('own-reader'))).stdout);
    assert.deepEqual(
      steps.map((s: { ref: string }) => s.ref),
      ['own/app@2', 'own/app@1', 'own/base@1'],
    );
    assert.deepEqual(steps[0].parents, ['own/app@1', 'own/base@2']);
    assert.ok(steps[0].changes.changed >= 1, JSON.stringify(steps[0].changes));
    const limited = await strata(['log', 'own/app@2', '--limit', '1', '--remote', url], as('own-reader'));
    assert.equal(limited.stdout, (await strata(['log', 'own/app@2', '--limit', '1', '--library', libDir])).stdout);
    // own/derived was made from other/os: root sees that parent, an own reader does not
    const rootLog = await strata(['log', 'own/derived', '--json', '--remote', url], as('root'));
    assert.deepEqual(
      JSON.parse(rootLog.stdout).map((s: { ref: string }) => s.ref),
      ['own/derived@1', 'other/os@1'],
    );
    const ownLog = await strata(['log', 'own/derived', '--remote', url], as('own-reader'));
    assert.equal(ownLog.code, 0, ownLog.stderr);
    assert.doesNotMatch(ownLog.stdout, /other\/os/);
    assert.match(ownLog.stdout, /^own\/derived@1 /);
    assert.match(ownLog.stdout, /^ {4}\(no parent\)$/m);
    assert.equal(ownLog.stdout.match(/^\S/gm)?.length, 1, 'one step');
    // other projects and anonymous callers see no such image
    for (const who of [{ env: { STRATA_TOKEN: tokens['other-member'] } }, { env: { STRATA_TOKEN: '' } }]) {
      const r = await strata(['log', 'own/app@2', '--remote', url], who);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /no such|not found|404/i);
    }
  });
});
