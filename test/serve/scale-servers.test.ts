import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { Cluster, type ServeProcess } from '../helpers/scale-cluster.js';
import { pgWithSchema, psql, testServices, uniqueName } from '../helpers/services.js';
import { runBuffer } from '../helpers/tools.js';
import { baseTree, derivedTree, extImageOf, tempDir } from '../library/images.js';

/**
 * Three `strata serve` processes on one PostgreSQL catalog and one S3 store (real servers,
 * scripts/test-services.sh), behind a round-robin balancer that sends each request to the
 * next server: a check-in's chunk uploads and its commit land on different processes, and
 * what one server stored the others read (tokens, uploads and versions live in the catalog
 * and the store, not in a process). Read back against debugfs on the original image.
 */
const svc = testServices();
const pgUrl = new URL(svc.pg);
const dir = tempDir('scale-servers');
const schema = uniqueName('srv');
const places = ['--catalog', pgWithSchema(svc.pg, schema), '--store', `${svc.s3}/${uniqueName('srv')}`];
const baseEnv: Record<string, string> = {};
for (const [k, v] of Object.entries(process.env))
  if (v !== undefined && k !== 'STRATA_CATALOG' && k !== 'STRATA_STORE') baseEnv[k] = v;
Object.assign(baseEnv, svc.awsEnv, { PGPASSWORD: decodeURIComponent(pgUrl.password) });

const cluster = new Cluster(dir, places, baseEnv, 3);
let token = '';

before(async () => {
  const L = ['--library', path.join(dir, 'lib0'), ...places];
  const env = { env: baseEnv };
  assert.equal((await strata(['user', 'add', 'alice', '--project', 'ops', '--role', 'admin', ...L], env)).code, 0);
  const t = await strata(['token', 'create', '--user', 'alice', '--project', 'ops', '--scope', 'write', ...L], env);
  assert.equal(t.code, 0, t.stderr);
  token = t.stdout.trim();
  await cluster.start();
});

after(() => cluster.close());

const remote = (args: string[], url = cluster.url) =>
  strata([...args, '--remote', url], { env: { ...baseEnv, STRATA_TOKEN: token } });

async function ok(p: ReturnType<typeof strata>) {
  const r = await p;
  assert.equal(r.code, 0, r.stderr);
  return r;
}

test('three servers on PostgreSQL + S3 behind a round-robin balancer: check-ins spread over them, read from each', async () => {
  const base = await extImageOf('ext4', await baseTree(), 'base');
  const derived = await extImageOf('ext4', await derivedTree(), 'dedup-derived', 64);
  // two check-ins at once through the balancer
  const [a, b] = await Promise.all([
    ok(remote(['checkin', base, '--name', 'ops/base', '--json'])),
    ok(remote(['checkin', derived, '--name', 'ops/derived', '--json'])),
  ]);
  assert.equal(JSON.parse(a.stdout).ref, 'ops/base@1');
  assert.equal(JSON.parse(b.stdout).ref, 'ops/derived@1');
  assert.ok(
    cluster.hits.every((n) => n > 2),
    `every server took requests: ${cluster.hits}`,
  );
  // each server reads what the others stored
  for (const s of cluster.servers as ServeProcess[]) {
    const mine = (await ok(remote(['cat', 'ops/base@1', '/big-text.txt'], s.url))).stdoutBytes;
    assert.ok(mine.equals(await runBuffer('debugfs', ['-R', 'cat /big-text.txt', base])), s.url);
    const d = (await ok(remote(['cat', 'ops/derived@1', '/0-new-first/payload.bin'], s.url))).stdoutBytes;
    assert.ok(d.equals(await runBuffer('debugfs', ['-R', 'cat /0-new-first/payload.bin', derived])), s.url);
  }
  // a tag set on one is seen by another; a version removed through a third is gone on all
  await ok(remote(['tag', 'ops/base@1', 'stable'], cluster.server(0).url));
  const vs = (await ok(remote(['versions', 'ops/base', '--json'], cluster.server(1).url))).stdout;
  assert.deepEqual(JSON.parse(vs.trim().split('\n')[0]).tags, ['stable']);
  await ok(remote(['rm', 'ops/derived@1'], cluster.server(2).url));
  for (const s of cluster.servers as ServeProcess[]) {
    const gone = await remote(['versions', 'ops/derived', '--json'], s.url);
    assert.equal(gone.code, 1, s.url);
  }
  assert.deepEqual(psql(svc.pg, schema, 'SELECT image, number, state FROM versions ORDER BY image'), [
    'ops/base\t1\tactive',
    'ops/derived\t1\tdeleted',
  ]);
  // gc from one library directory while the servers run; then every server still reads ops/base
  const L = ['--library', path.join(dir, 'lib1'), ...places];
  const gc = JSON.parse(
    (await ok(strata(['gc', '--json', '--library', path.join(dir, 'lib1'), ...places], { env: baseEnv }))).stdout,
  );
  assert.equal(gc.liveVersions, 1);
  for (const s of cluster.servers as ServeProcess[]) {
    const mine = (await ok(remote(['cat', 'ops/base@1', '/sparse.bin'], s.url))).stdoutBytes;
    assert.ok(mine.equals(await runBuffer('debugfs', ['-R', 'cat /sparse.bin', base])), s.url);
  }
  const v = JSON.parse((await ok(strata(['verify', '--json', ...L], { env: baseEnv }))).stdout);
  assert.deepEqual(v.errors, []);
  // a server killed with -9 and started again serves the same library
  cluster.kill(1);
  await cluster.restart(1);
  const again = (await ok(remote(['cat', 'ops/base:stable', '/big-text.txt'], cluster.server(1).url))).stdoutBytes;
  assert.ok(again.equals(await runBuffer('debugfs', ['-R', 'cat /big-text.txt', base])));
});
