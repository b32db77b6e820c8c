import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CLI, strata } from '../helpers/cli.js';
import { pgWithSchema, psql, testServices, uniqueName } from '../helpers/services.js';
import { run, runBuffer } from '../helpers/tools.js';
import { baseTree, extImageOf, tempDir } from './images.js';

/**
 * A library on PostgreSQL + S3 (real servers: scripts/test-services.sh) as a user runs it,
 * and `strata migrate` moving a local library there and back: interrupted and resumed,
 * verified, read back against debugfs on the original image.
 */
const svc = testServices();
const pgUrl = new URL(svc.pg);

/** The environment of a CLI run: the test servers' credentials, no STRATA_CATALOG/STORE of a parametrised run. */
function envFor(lib: string, extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  delete env.STRATA_CATALOG;
  delete env.STRATA_STORE;
  return { ...env, ...svc.awsEnv, PGPASSWORD: decodeURIComponent(pgUrl.password), STRATA_LIBRARY: lib, ...extra };
}

async function ok(args: string[], env: Record<string, string>) {
  const r = await strata(args, { env });
  assert.equal(r.code, 0, `strata ${args.join(' ')}: ${r.stderr}`);
  return r;
}

async function sameFiles(ref: string, image: string, env: Record<string, string>): Promise<void> {
  for (const f of ['/big-text.txt', '/sparse.bin', '/hardlink.bin']) {
    const mine = (await ok(['cat', ref, f], env)).stdoutBytes;
    const theirs = await runBuffer('debugfs', ['-R', `cat ${f}`, image]);
    assert.ok(mine.equals(theirs), `cat ${ref} ${f}`);
  }
}

test('a library on PostgreSQL + S3: checkin, cat, checkout, gc, verify; rows as psql sees them', async () => {
  const dir = tempDir('scale-lib');
  const schema = uniqueName('lib');
  const prefix = uniqueName('lib');
  const env = envFor(path.join(dir, 'lib'));
  const places = ['--catalog', pgWithSchema(svc.pg, schema), '--store', `${svc.s3}/${prefix}`];
  const base = await extImageOf('ext4', await baseTree(), 'base');
  const c1 = JSON.parse((await ok(['checkin', base, '--name', 'tree', '--json', ...places], env)).stdout);
  assert.equal(c1.ref, 'tree@1');
  // the marker remembers where (without the password): later verbs need no options
  const marker = JSON.parse(readFileSync(path.join(dir, 'lib', 'strata-library.json'), 'utf8'));
  assert.equal(marker.store, `${svc.s3}/${prefix}`);
  assert.match(marker.catalog, new RegExp(`schema=${schema}`));
  assert.doesNotMatch(marker.catalog, /strata-test/);
  await ok(['checkin', base, '--name', 'copy'], env);
  assert.deepEqual(
    psql(svc.pg, schema, "SELECT image, number, manifest FROM versions WHERE state = 'active' ORDER BY image"),
    [`copy\t1\t${c1.manifest}`, `tree\t1\t${c1.manifest}`],
  );
  await sameFiles('tree@1', base, env);
  const out = path.join(dir, 'out.raw');
  await ok(['checkout', 'tree@1', out], env);
  await run('e2fsck', ['-fn', out]);
  assert.ok(
    (await runBuffer('debugfs', ['-R', 'cat /big-text.txt', out])).equals(
      await runBuffer('debugfs', ['-R', 'cat /big-text.txt', base]),
    ),
  );
  await ok(['rm', 'copy'], env);
  const gc = JSON.parse((await ok(['gc', '--json'], env)).stdout);
  assert.equal(gc.liveVersions, 1);
  const v = JSON.parse((await ok(['verify', '--json'], env)).stdout);
  assert.deepEqual(v.errors, []);
  assert.equal(v.versions, 1);
  assert.ok(v.packs > 0);
});

test('strata migrate: local -> PostgreSQL + S3 (cut short, then resumed), verified, and back', async () => {
  const dir = tempDir('scale-migrate');
  const lib = path.join(dir, 'lib');
  const env = envFor(lib);
  const base = await extImageOf('ext4', await baseTree(), 'base');
  await ok(['checkin', base, '--name', 'tree', '--tag', 'stable'], env);
  await ok(['checkin', base, '--name', 'other'], env);
  const schema = uniqueName('mig');
  const store = `${svc.s3}/${uniqueName('mig')}`;
  // cut short: the objects go over, then the catalog database refuses the password
  const wrong = new URL(pgWithSchema(svc.pg, schema));
  wrong.password = 'wrong';
  const cut = await strata(['migrate', '--to', wrong.toString(), '--store', store], {
    env: { ...env, PGPASSWORD: 'wrong' },
  });
  assert.equal(cut.code, 1);
  assert.match(
    cut.stderr,
    /^strata: postgres:\/\/strata:\*\*\*@.*: cannot use the catalog database: password authentication failed/m,
  );
  assert.equal(
    cut.stderr
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('strata: ') && !/^strata: (lock|verify|switch)$/.test(l.trim())).length,
    1,
  );
  // the library still works where it was
  await sameFiles('tree:stable', base, env);
  const resumed = JSON.parse(
    (await ok(['migrate', '--to', pgWithSchema(svc.pg, schema), '--store', store, '--json'], env)).stdout,
  );
  assert.equal(resumed.copiedObjects, 0, 'every object was there from the first run');
  assert.ok(resumed.presentObjects > 2);
  assert.equal(resumed.rows.versions, 2);
  assert.equal(resumed.versions, 1, 'one manifest verified (both versions are the same image)');
  assert.deepEqual(psql(svc.pg, schema, 'SELECT image, number FROM versions ORDER BY image'), ['other\t1', 'tree\t1']);
  assert.deepEqual(psql(svc.pg, schema, 'SELECT image, tag, number FROM tags'), ['tree\tstable\t1']);
  const marker = JSON.parse(readFileSync(path.join(lib, 'strata-library.json'), 'utf8'));
  assert.equal(marker.store, store);
  // now on PostgreSQL + S3: a new version lands there
  const derived = await ok(['checkin', base, '--name', 'after'], env);
  assert.equal(derived.code, 0);
  assert.deepEqual(psql(svc.pg, schema, "SELECT COUNT(*) FROM versions WHERE image = 'after'"), ['1']);
  await sameFiles('tree:stable', base, env);
  // and back
  const back = JSON.parse((await ok(['migrate', '--to', 'local', '--store', 'local', '--json'], env)).stdout);
  assert.equal(back.rows.versions, 3);
  assert.equal(back.versions, 1);
  const m2 = JSON.parse(readFileSync(path.join(lib, 'strata-library.json'), 'utf8'));
  assert.equal(m2.catalog, undefined);
  assert.equal(m2.store, undefined);
  const rows = (await run('sqlite3', [path.join(lib, 'catalog.db'), 'SELECT image FROM versions ORDER BY image']))
    .trim()
    .split('\n');
  assert.deepEqual(rows, ['after', 'other', 'tree']);
  await sameFiles('after@1', base, env);
  const v = JSON.parse((await ok(['verify', '--json'], env)).stdout);
  assert.deepEqual(v.errors, []);
  assert.equal(v.versions, 1);
});

/** The three start-up failures, as one line each: what, where (store URL, endpoint, bucket) and what to do. */
function startupCases(schema: string): Array<[string, Record<string, string>, string[], RegExp]> {
  const ep = svc.awsEnv.AWS_ENDPOINT_URL.replace(/[.]/g, '\\.');
  const bucket = svc.s3.replace(/^s3:\/\//, '');
  return [
    [
      'wrong S3 secret',
      { AWS_SECRET_ACCESS_KEY: 'wrong' },
      ['--catalog', pgWithSchema(svc.pg, schema), '--store', `${svc.s3}/x`],
      new RegExp(
        `^strata: ${svc.s3}/x: S3 endpoint ${ep}: the S3 server refused the credentials \\((SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied)\\) for bucket ${bucket}, access key ${svc.awsEnv.AWS_ACCESS_KEY_ID} from AWS_ACCESS_KEY_ID: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY .*\n$`,
      ),
    ],
    [
      'missing bucket',
      {},
      ['--catalog', pgWithSchema(svc.pg, schema), '--store', 's3://no-such-bucket/x'],
      new RegExp(
        `^strata: s3://no-such-bucket/x: S3 endpoint ${ep}: no such bucket: no-such-bucket \\(the server answered 404\\); create it \\(e\\.g\\. aws s3 mb s3://no-such-bucket --endpoint-url ${ep}\\) or name an existing bucket in --store / STRATA_STORE\n$`,
      ),
    ],
    [
      'refused database',
      {},
      ['--catalog', `postgres://strata@127.0.0.1:9/strata`, '--store', `${svc.s3}/x`],
      /^strata: postgres:\/\/strata@127\.0\.0\.1:9\/strata: cannot use the catalog database: connect ECONNREFUSED 127\.0\.0\.1:9; check --catalog \/ STRATA_CATALOG .*\n$/,
    ],
  ];
}

test('start-up errors through the CLI: wrong S3 secret, missing bucket, refused database: one line each', async () => {
  const dir = tempDir('scale-errors');
  for (const [i, [what, extra, places, want]] of startupCases(uniqueName('err')).entries()) {
    const r = await strata(['init', ...places], { env: envFor(path.join(dir, `lib${i}`), extra) });
    assert.equal(r.code, 1, `${what}: ${r.stderr}`);
    assert.match(r.stderr, want, what);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});

test('no password for the catalog database: one clear line, and the process ends (it lingered until the server timed the login out)', async () => {
  const dir = tempDir('scale-nopass');
  const env = envFor(path.join(dir, 'lib'));
  delete env.PGPASSWORD;
  const home = path.join(dir, 'home'); // no ~/.pgpass either
  const noPass = new URL(pgWithSchema(svc.pg, uniqueName('np')));
  noPass.password = '';
  const r = await new Promise<{ code: number; stderr: string }>((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [CLI, 'init', '--catalog', noPass.toString(), '--store', `${svc.s3}/${uniqueName('np')}`],
      { env: { ...env, HOME: home }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b));
    // PostgreSQL's authentication_timeout is 60 s: a process still there at 45 s waits for it
    const t = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? -1, stderr });
    });
  });
  assert.equal(r.code, 1, `exit ${r.code} (-1: killed, still running at 45 s): ${r.stderr}`);
  assert.match(
    r.stderr,
    /^strata: postgres:\/\/strata@.*: cannot use the catalog database: .*password.*; check --catalog/,
  );
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
});

/** `strata serve ARGS`: its exit code and stderr; killed (code -1, a failure) if it is still up after 120 s. */
function serveOnce(args: string[], env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--quiet', ...args], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b));
    const t = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? -1, stderr });
    });
  });
}

test('strata serve refuses to start on a wrong S3 secret, a missing bucket or a refused database: one line each', async () => {
  const dir = tempDir('scale-serve-errors');
  for (const [i, [what, extra, places, want]] of startupCases(uniqueName('serr')).entries()) {
    const r = await serveOnce(
      ['--library', path.join(dir, `lib${i}`), ...places],
      envFor(path.join(dir, `lib${i}`), extra),
    );
    assert.equal(r.code, 1, `${what}: ${r.stderr}`);
    assert.match(r.stderr, want, what);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  // a working library whose secret changed since: the store comes from its marker, the same line
  const lib = path.join(dir, 'ok');
  const schema = uniqueName('sok');
  const good = envFor(lib);
  await ok(['init', '--catalog', pgWithSchema(svc.pg, schema), '--store', `${svc.s3}/${uniqueName('sok')}`], good);
  const r = await serveOnce(['--library', lib], { ...good, AWS_SECRET_ACCESS_KEY: 'rotated' });
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    /^strata: s3:\/\/.*: S3 endpoint .*: the S3 server refused the credentials .* check AWS_ACCESS_KEY_ID/,
  );
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
});
