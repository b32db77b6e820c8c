import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { Library } from '../../src/library/library.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { strata } from '../helpers/cli.js';
import { baseTree, extImageOf, tempDir } from '../library/images.js';
import { serve } from './http-helpers.js';

/**
 * The accounts verbs (`strata user add`, `token create|list|revoke`) and the remote
 * write verbs (`tag`, `rm`) as a user runs them: the CLI as a child process, a server on
 * a real port over the same library.
 */
let libDir: string;
let lib: Library;
let server: RunningServer;

before(async () => {
  libDir = path.join(tempDir('serve-cli'), 'lib');
  const img = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  const c = await strata(['checkin', img, '--name', 'ops/base', '--library', libDir, '--json']);
  assert.equal(c.code, 0, c.stderr);
  lib = await Library.open(libDir);
  server = await serve(lib, { defaultProject: 'ops' });
});

after(async () => {
  await server?.close();
  await lib?.close();
});

const cli = (args: string[], token?: string) =>
  strata([...args, '--remote', server.url], { env: { STRATA_TOKEN: token ?? '' } });

test('users, tokens, and remote tag and rm with them', async () => {
  const L = ['--library', libDir];
  assert.equal((await strata(['user', 'add', 'alice', '--project', 'ops', '--role', 'admin', ...L])).code, 0);
  assert.equal((await strata(['user', 'add', 'bob', '--project', 'ops', '--role', 'reader', ...L])).code, 0);
  const made = await strata([
    'token',
    'create',
    '--user',
    'alice',
    '--project',
    'ops',
    '--scope',
    'write',
    '--expires',
    '30d',
    '--json',
    ...L,
  ]);
  assert.equal(made.code, 0, made.stderr);
  const alice = JSON.parse(made.stdout) as { token: string; id: string; expires: string; scope: string };
  assert.equal(alice.scope, 'write');
  const days = (Date.parse(alice.expires) - Date.now()) / 86400e3;
  assert.ok(days > 29.9 && days <= 30, String(days));
  const plain = await strata(['token', 'create', '--user', 'bob', '--project', 'ops', '--scope', 'write', ...L]);
  assert.equal(plain.code, 0);
  const bob = plain.stdout.trim();
  assert.match(bob, /^strata_[A-Za-z0-9_-]{43}$/);
  // the secret is not kept: the list shows ids only
  const list = await strata(['token', 'list', '--json', ...L]);
  assert.ok(!list.stdout.includes(alice.token.slice(7)) && !list.stdout.includes(bob.slice(7)));
  assert.equal(
    (await strata(['token', 'create', '--user', 'bob', '--project', 'ops', '--expires', '2x', ...L])).code,
    1,
  );
  assert.equal((await strata(['token', 'create', '--user', 'bob', '--project', 'nope', ...L])).code, 1);

  // bob reads but may not write, even with a write token
  assert.equal((await cli(['images', '--json'], bob)).code, 0);
  const denied = await cli(['tag', 'ops/base@1', 'stable'], bob);
  assert.equal(denied.code, 1);
  assert.match(denied.stderr, /may not write to ops\/base/);
  const tagged = await cli(['tag', 'ops/base@1', 'stable'], alice.token);
  assert.equal(tagged.code, 0, tagged.stderr);
  const vs = JSON.parse((await cli(['versions', 'ops/base', '--json'], alice.token)).stdout) as Array<{
    tags: string[];
  }>;
  assert.deepEqual(vs[0].tags, ['stable']);
  assert.deepEqual((await lib.catalog.resolve('ops/base:stable')).number, 1);

  // without a token the private image does not exist
  const anon = await cli(['versions', 'ops/base', '--json']);
  assert.equal(anon.code, 1);
  assert.match(anon.stderr, /no such image: ops\/base/);

  // revoked: refused
  assert.equal((await strata(['token', 'revoke', alice.id, ...L])).code, 0);
  const after = await cli(['rm', 'ops/base@1'], alice.token);
  assert.equal(after.code, 1);
  assert.match(after.stderr, /unknown, expired or revoked/);
  assert.equal((await lib.catalog.versions('ops/base')).length, 1);

  // a new token for alice removes the version
  const again = (
    await strata(['token', 'create', '--user', 'alice', '--project', 'ops', '--scope', 'write', ...L])
  ).stdout.trim();
  const rm = await cli(['rm', 'ops/base@1'], again);
  assert.equal(rm.code, 0, rm.stderr);
  assert.equal((await lib.catalog.versions('ops/base')).length, 0);
});
