import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Access } from '../../src/catalog/access.js';
import type { BootProfile } from '../../src/catalog/profiles.js';
import { Library } from '../../src/library/library.js';
import { RemoteLibrary } from '../../src/serve/http/client.js';
import { ROOT, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { nbdReads, sameAs, startDeploy } from './helpers.js';
import { debugfsBlocks, profileLibrary } from './profile-helpers.js';

/**
 * Boot profiles through the library service (issue 16 item 4 with `--remote`): a real
 * `strata serve` process in front of the profile fixtures' library (N as disk@1, N+1 as
 * disk@2). A deploy of N from the service with `--trace` (libnbd reads: the superblock, a
 * file, the head of another), `strata profile record --remote` sends that trace, the service
 * records the profile (the row read back with sqlite3, the oracle), `profile show --remote`
 * of N+1 falls back to it, and `deploy disk@2 --remote` prefetches the files at the places
 * N+1 put them (debugfs on N+1) and ends identical (qemu-img compare). Reads and writes are
 * authorised like the image's: a reader may read, not record; another project sees nothing.
 */
const BS = 4096;
const CLI = path.join(ROOT, 'dist/cli/strata.cjs');
let dir: string;
let fx: Awaited<ReturnType<typeof profileLibrary>>;
let server: ChildProcess;
let url: string;
const tokens: Record<'writer' | 'reader' | 'stranger', string> = { writer: '', reader: '', stranger: '' };

/** `strata ARGS` with STRATA_TOKEN; stdout, or a rejection carrying stderr. */
function strata(args: string[], token: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { env: { ...process.env, STRATA_TOKEN: token, STRATA_REMOTE: '' }, maxBuffer: 1 << 26 },
      (e, stdout, stderr) => (e ? reject(new Error(`strata ${args.join(' ')}: ${stderr}`)) : resolve(stdout)),
    );
  });
}

before(async () => {
  dir = tempDir('deploy-profile-remote');
  fx = await profileLibrary(dir);
  const l = await Library.open(fx.lib, { create: false });
  try {
    const access = await Access.open(l.catalog.db);
    await access.addProject('default');
    await access.addProject('other');
    for (const u of ['writer', 'reader', 'stranger']) await access.addUser(u);
    await access.setRole('default', 'writer', 'member');
    await access.setRole('default', 'reader', 'reader');
    await access.setRole('other', 'stranger', 'member');
    tokens.writer = (await access.createToken({ user: 'writer', project: 'default', scope: 'write' })).token;
    tokens.reader = (await access.createToken({ user: 'reader', project: 'default', scope: 'read' })).token;
    tokens.stranger = (await access.createToken({ user: 'stranger', project: 'other', scope: 'write' })).token;
  } finally {
    await l.close();
  }
  server = spawn(
    process.execPath,
    [CLI, 'serve', '--library', fx.lib, '--listen', '127.0.0.1:0', '--quiet', '--rate-limit', '0'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  url = await new Promise<string>((resolve, reject) => {
    let err = '';
    server.stderr?.on('data', (b: Buffer) => {
      err += b.toString();
      const m = /at (http:\/\/\S+) /.exec(err);
      if (m) resolve(m[1]);
    });
    server.on('exit', () => reject(new Error(`strata serve exited: ${err}`)));
  });
});

after(() => {
  server?.kill('SIGTERM');
});

describe('boot profiles from the library service', () => {
  test('deploy --remote --trace, profile record --remote, profile show --remote, deploy --remote of N+1 with the profile of N', async () => {
    const env = { ...process.env, STRATA_TOKEN: tokens.reader };
    const log = path.join(dir, 'remote.trace');
    const fstab = await debugfsBlocks(fx.n, '/etc/fstab');
    const vmlinuz = await debugfsBlocks(fx.n, '/boot/vmlinuz');
    const d1 = await startDeploy(['disk@1', '--remote', url, '--to', path.join(dir, 't1.raw'), '--trace', log], env);
    try {
      assert.equal(
        d1.events.find((e) => e.event === 'profile'),
        undefined,
        'N has no profile yet, and none is no error',
      );
      const got = await nbdReads(d1.uri, [
        [1024, 1024],
        [fstab[0] * BS, BS],
        [vmlinuz[0] * BS, 16 * BS],
      ]);
      assert.equal(got.readUInt16LE(56), 0xef53, "the superblock's magic: the read went through");
    } finally {
      d1.child.kill('SIGTERM');
      assert.equal(await d1.exited, 0, d1.stderr());
    }

    // a read token may not record; a write token of the image's project may
    await assert.rejects(
      strata(['profile', 'record', 'disk@1', '--trace', log, '--remote', url], tokens.reader),
      /write/i,
    );
    const rec = JSON.parse(
      await strata(['profile', 'record', 'disk@1', '--trace', log, '--remote', url, '--json'], tokens.writer),
    );
    assert.equal(rec.reads, 3);
    assert.deepEqual(rec.byKind.map((k: { kind: string; bytes: number }) => [k.kind, k.bytes]).sort(), [
      ['file', BS + 16 * BS],
      ['superblock', 1024],
    ]);
    // the service stored it in its catalog: the row as sqlite3 reads it
    const row = await run('sqlite3', [
      path.join(fx.lib, 'catalog.db'),
      'SELECT image, number, entries, bytes, trace FROM deploy_profiles',
    ]);
    assert.equal(row.trim(), `disk|1|3|${1024 + BS + 16 * BS}|${log}`);

    // N+1 has none of its own: the service gives N's; another project does not see the image at all
    const shown = JSON.parse(await strata(['profile', 'show', 'disk@2', '--remote', url, '--json'], tokens.reader));
    assert.equal(shown.profile.number, 1, 'N+1 shows the profile of N');
    assert.deepEqual(
      shown.summary.byFile.map((f: { path: string; bytes: number }) => [f.path, f.bytes]),
      [
        ['/etc/fstab', BS],
        ['/boot/vmlinuz', 16 * BS],
      ],
    );
    await assert.rejects(
      strata(['profile', 'show', 'disk@2', '--remote', url], tokens.stranger),
      (e: Error) => /disk/.test(e.message) && !/profile recorded/.test(e.message),
    );
    const remote = new RemoteLibrary(url, tokens.reader);
    assert.equal(await remote.profile('disk@2', { exact: true }), undefined, 'exact: N+1 has none of its own');

    // deploy N+1 from the service: the plan is the superblock where it was and the files where N+1 put them
    const target = path.join(dir, 't2.raw');
    const d2 = await startDeploy(
      ['disk@2', '--remote', url, '--to', target, '--bandwidth', '2M', '--exit-when-complete'],
      env,
    );
    assert.equal(await d2.exited, 0, d2.stderr());
    const ev = d2.events.find((e) => e.event === 'profile');
    assert.ok(ev, `a profile event: ${d2.stderr()}`);
    assert.equal(ev.profile, 'disk@1');
    assert.equal(ev.bytes, 1024 + BS + 16 * BS);
    assert.equal(ev.same, 1);
    assert.equal(ev.moved, 2);
    assert.equal(ev.missing, 0);
    const fstab2 = await debugfsBlocks(fx.n1, '/etc/fstab');
    assert.notEqual(fstab2[0], fstab[0], 'N+1 moved the file');
    assert.equal(await sameAs(fx.v2, target), true, 'qemu-img compare: TARGET holds N+1');

    // --profile REF names a version of the service (here the one N+1 falls back to anyway: the same plan)
    const d3 = await startDeploy(
      [
        'disk@2',
        '--remote',
        url,
        '--to',
        path.join(dir, 't3.raw'),
        '--profile',
        'disk@1',
        '--bandwidth',
        '2M',
        '--exit-when-complete',
      ],
      env,
    );
    assert.equal(await d3.exited, 0, d3.stderr());
    assert.equal(d3.events.find((e) => e.event === 'profile')?.bytes, ev.bytes);
  });

  test('PUT of a profile: authorised as a write of the image, checked against the version it names', async () => {
    const writer = new RemoteLibrary(url, tokens.writer);
    const reader = new RemoteLibrary(url, tokens.reader);
    const stranger = new RemoteLibrary(url, tokens.stranger);
    const p = (await reader.profile('disk@1', { exact: true })) as BootProfile;
    assert.ok(p, 'the profile recorded by the first test');
    // N's profile as if recorded on N+1: its manifest is N's, so the service refuses it
    await assert.rejects(writer.putProfile({ ...p, number: 2 }), /recorded on manifest .* not on disk@2/);
    await assert.rejects(reader.putProfile(p), (e: Error & { status?: number }) => e.status === 403);
    await assert.rejects(stranger.putProfile(p), (e: Error & { status?: number }) => e.status === 404);
    const broken = { ...p, entries: [{ kind: 'file', disk: -5, length: 4096 }] };
    await assert.rejects(writer.putProfile(broken as BootProfile), /entry 0 is malformed/);
    // one entry fewer, stored: the row changes (sqlite3), and so does what a deploy of N+1 is given
    const put = await writer.putProfile({ ...p, entries: p.entries.slice(0, 2), trace: 'edited' });
    assert.deepEqual([put.entries, put.bytes], [2, 1024 + BS]);
    const row = await run('sqlite3', [
      path.join(fx.lib, 'catalog.db'),
      "SELECT entries, bytes, trace FROM deploy_profiles WHERE image = 'disk' AND number = 1",
    ]);
    assert.equal(row.trim(), `2|${1024 + BS}|edited`);
    assert.equal((await reader.profile('disk@2'))?.entries.length, 2);
    // a trace that is not one: refused, naming the line
    await assert.rejects(
      writer.recordProfile('disk@1', Buffer.from('{"offset": 1}\nnot json\n'), 'bad.trace'),
      /bad\.trace.*line 1/,
    );
  });
});
