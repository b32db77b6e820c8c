/**
 * Issue 24 over the network: the edit verbs with `--remote` against a real `strata serve`
 * (its own process, port 0, tokens from the catalog). A project reader is refused (403), an
 * anonymous or other project's caller sees no image (404), none makes a version; a member's edit makes one on
 * the server whose disk e2fsck -fn finds clean and whose files debugfs (libext2fs, not our
 * reader) reads as sent; a bad operation is a 422 naming it, and makes no version.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { Library } from '../../src/library/library.js';
import { strata } from '../helpers/cli.js';
import { fixture, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { addPeople, Checked, serveProcess } from './http-helpers.js';

let dir: string;
let libDir: string;
let tokens: Record<string, string>;
let stop: (() => Promise<void>) | undefined;
let url: string;

async function baseImage(): Promise<string> {
  const root = await fixture('http-edit-v1', async (out) => {
    const src = path.join(out, 'src');
    mkdirSync(path.join(src, 'etc'), { recursive: true });
    writeFileSync(path.join(src, 'etc', 'hostname'), 'before\n');
    writeFileSync(path.join(src, 'etc', 'motd'), 'hello\n');
    mkdirSync(path.join(src, 'var', 'cache'), { recursive: true });
    for (let i = 0; i < 30; i++) writeFileSync(path.join(src, 'var', 'cache', `c${i}`), `cache ${i}\n`.repeat(500));
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-I', '256', '-d', src, path.join(out, 'disk.img'), '32M']);
  });
  return path.join(root, 'disk.img');
}

/** debugfs on the server's version, checked out raw: the oracle for what was written. */
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

async function versionsOf(name: string): Promise<number[]> {
  const r = await strata(['versions', name, '--json', '--remote', url], { env: { STRATA_TOKEN: tokens.root } });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .flatMap((l) => {
      const x = JSON.parse(l);
      return Array.isArray(x) ? x.map((v: { number: number }) => v.number) : [x.number];
    });
}

before(async () => {
  dir = tempDir('http-edit');
  libDir = path.join(dir, 'lib');
  const lib = await Library.open(libDir);
  try {
    ({ tokens } = await addPeople(lib));
    await checkin(lib, await baseImage(), { name: 'own/ed' });
  } finally {
    await lib.close();
  }
  ({ url, stop } = await serveProcess(libDir));
});

after(() => stop?.());

describe('edit verbs with --remote against strata serve', { timeout: 600_000 }, () => {
  test('a reader is refused (403), anonymous and other projects see no image (404); none makes a version', async () => {
    const file = path.join(dir, 'new-hostname');
    writeFileSync(file, 'after\n');
    // the route itself: status codes and bodies checked against the server's /openapi.json
    const api = await Checked.open(url);
    const post = async (token: string | undefined, changes: unknown[]) =>
      (await api.call('POST', '/v1/images/{name}/edits', { params: { name: 'own/ed' }, token, json: { changes } }))
        .status;
    const hostname = [{ op: 'put', path: '/etc/hostname', content: { kind: 'bytes', base64: 'YWZ0ZXIK' } }];
    assert.equal(await post(tokens['own-reader'], hostname), 403);
    assert.equal(await post(tokens['own-admin-read'], hostname), 403); // a read-scoped token of an admin
    assert.equal(await post(undefined, hostname), 404); // anonymous: a private image is not readable, so absent
    assert.equal(await post(tokens['other-member'], hostname), 404);
    // a path on the server is never read; unknown fields are refused
    const local = [{ op: 'put', path: '/x', content: { kind: 'file', path: '/etc/passwd' } }];
    assert.equal(await post(tokens['own-member'], local), 422);
    assert.equal(await post(tokens['own-member'], [{ op: 'rm', path: '/etc/motd', force: true }]), 422);
    assert.equal(await post(tokens['own-member'], []), 400);
    // the CLI says why
    const reader = await strata(['put', 'own/ed', '/etc/hostname', file, '--remote', url], {
      env: { STRATA_TOKEN: tokens['own-reader'] },
    });
    assert.notEqual(reader.code, 0);
    assert.match(reader.stderr, /own-reader .*reader.* may not write to own\/ed/);
    assert.deepEqual(await versionsOf('own/ed'), [1]);
  });

  test("a member's put, edit --script and rm make versions debugfs reads back; e2fsck clean", async () => {
    const env = { STRATA_TOKEN: tokens['own-member'] };
    const file = path.join(dir, 'hostname');
    writeFileSync(file, 'edited-remotely\n');
    const put = await strata(
      ['put', 'own/ed', '/etc/hostname', file, '--mode', '600', '--mtime', '1700000000.5', '--json', '--remote', url],
      { env },
    );
    assert.equal(put.code, 0, put.stderr);
    const p = JSON.parse(put.stdout);
    assert.equal(p.ref, 'own/ed@2');
    assert.equal(p.parent, 'own/ed@1');
    assert.equal(p.createdBy, 'own-member');

    const payload = Buffer.alloc(200_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
    writeFileSync(path.join(dir, 'payload.bin'), payload);
    writeFileSync(
      path.join(dir, 'batch'),
      [
        'put -p /opt/app/bin/payload payload.bin --mode 755',
        'ln -s /opt/app/bin/payload /usr-local-payload',
        'chown 1000:100 /etc/motd',
        'rm -r /var/cache',
        'setxattr /etc/motd user.from remote',
      ].join('\n'),
    );
    const ed = await strata(['edit', 'own/ed', '--script', path.join(dir, 'batch'), '-m', 'batch', '--remote', url], {
      env,
    });
    assert.equal(ed.code, 0, ed.stderr);
    assert.match(ed.stdout, /own\/ed@3 <- own\/ed@2: 5 changes on ext4/);
    const rm = await strata(['rm', 'own/ed', '/etc/motd', '--remote', url], { env });
    assert.equal(rm.code, 0, rm.stderr);
    // the answer's shape, checked against the document
    const api = await Checked.open(url);
    const made = await api.call('POST', '/v1/images/{name}/edits', {
      params: { name: 'own/ed' },
      token: tokens['own-member'],
      json: { from: 'own/ed@1', changes: [{ op: 'mkdir', path: '/srv', mode: 0o700 }], message: 'api' },
    });
    assert.equal(made.status, 201);
    assert.equal((made.body as { ref: string }).ref, 'own/ed@5');
    assert.equal((made.body as { parent: string }).parent, 'own/ed@1');
    assert.deepEqual(await versionsOf('own/ed'), [1, 2, 3, 4, 5]);

    const v3 = await serverDisk('own/ed@3');
    assert.equal(execFileSync('e2fsck', ['-fn', v3], { encoding: 'utf8', stdio: 'pipe' }).length > 0, true);
    assert.equal(debugfs(v3, 'cat /etc/hostname'), 'edited-remotely\n');
    assert.ok(Buffer.from(execFileSync('debugfs', ['-R', 'cat /opt/app/bin/payload', v3])).equals(payload));
    const st = debugfs(v3, 'stat /etc/hostname');
    assert.match(st, /Mode: {2}0600/);
    assert.match(st, /^ mtime: 0x6553f100:77359400/m); // 1700000000, 0.5 s << 2
    assert.match(debugfs(v3, 'stat /etc/motd'), /User: {2}1000 {3}Group: {3}100/);
    assert.match(debugfs(v3, 'stat /usr-local-payload'), /Fast link dest: "\/opt\/app\/bin\/payload"/);
    assert.match(debugfs(v3, 'ea_get /etc/motd user.from'), /remote/);
    assert.match(debugfs(v3, 'ls /var'), /^(?![\s\S]*cache)/);
    const v4 = await serverDisk('own/ed@4');
    execFileSync('e2fsck', ['-fn', v4], { stdio: 'pipe' });
    assert.doesNotMatch(debugfs(v4, 'ls -l /etc'), /motd/);
    assert.match(debugfs(v4, 'ls -l /etc'), /hostname/);
  });

  test('a bad operation is a 422 naming it, and makes no version', async () => {
    const before = await versionsOf('own/ed');
    const r = await strata(['rm', 'own/ed@1', '/no/such', '--remote', url], {
      env: { STRATA_TOKEN: tokens['own-member'] },
    });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /422|change 1 \(rm \/no\/such\)/);
    assert.match(r.stderr, /no such file/);
    assert.deepEqual(await versionsOf('own/ed'), before);
  });
});
