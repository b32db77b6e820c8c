import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer, request, type Server } from 'node:http';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { CLI, strata } from '../helpers/cli.js';
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

interface Running {
  child: ChildProcess;
  url: string;
  lib: string;
}
const servers: Running[] = [];
let balancer: Server;
let lbUrl = '';
let token = '';
const hits = [0, 0, 0];

function startServe(k: number): Promise<Running> {
  const lib = path.join(dir, `lib${k}`);
  const child = spawn(
    process.execPath,
    [CLI, 'serve', '--listen', '127.0.0.1:0', '--library', lib, ...places, '--default-project', 'ops', '--quiet'],
    { env: baseEnv, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (b: Buffer) => {
      err += b.toString();
      const m = / at (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
      if (m) resolve({ child, url: m[1], lib });
    });
    child.on('exit', (code) => reject(new Error(`server ${k} exited ${code}: ${err}`)));
  });
}

before(async () => {
  const L = ['--library', path.join(dir, 'lib0'), ...places];
  const env = { env: baseEnv };
  assert.equal((await strata(['user', 'add', 'alice', '--project', 'ops', '--role', 'admin', ...L], env)).code, 0);
  const t = await strata(['token', 'create', '--user', 'alice', '--project', 'ops', '--scope', 'write', ...L], env);
  assert.equal(t.code, 0, t.stderr);
  token = t.stdout.trim();
  for (let k = 0; k < 3; k++) servers.push(await startServe(k));
  let next = 0;
  balancer = createServer((req, res) => {
    const k = next++ % servers.length;
    hits[k]++;
    const up = new URL(servers[k].url);
    const fwd = request(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    fwd.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(fwd);
  });
  await new Promise<void>((r) => balancer.listen(0, '127.0.0.1', r));
  lbUrl = `http://127.0.0.1:${(balancer.address() as { port: number }).port}`;
});

after(async () => {
  for (const s of servers) s.child.kill('SIGTERM');
  await new Promise((r) => balancer?.close(r));
});

const remote = (args: string[], url = lbUrl) =>
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
    hits.every((n) => n > 2),
    `every server took requests: ${hits}`,
  );
  // each server reads what the others stored
  for (const s of servers) {
    const mine = (await ok(remote(['cat', 'ops/base@1', '/big-text.txt'], s.url))).stdoutBytes;
    assert.ok(mine.equals(await runBuffer('debugfs', ['-R', 'cat /big-text.txt', base])), s.url);
    const d = (await ok(remote(['cat', 'ops/derived@1', '/0-new-first/payload.bin'], s.url))).stdoutBytes;
    assert.ok(d.equals(await runBuffer('debugfs', ['-R', 'cat /0-new-first/payload.bin', derived])), s.url);
  }
  // a tag set on one is seen by another; a version removed through a third is gone on all
  await ok(remote(['tag', 'ops/base@1', 'stable'], servers[0].url));
  const vs = (await ok(remote(['versions', 'ops/base', '--json'], servers[1].url))).stdout;
  assert.deepEqual(JSON.parse(vs.trim().split('\n')[0]).tags, ['stable']);
  await ok(remote(['rm', 'ops/derived@1'], servers[2].url));
  for (const s of servers) {
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
  for (const s of servers) {
    const mine = (await ok(remote(['cat', 'ops/base@1', '/sparse.bin'], s.url))).stdoutBytes;
    assert.ok(mine.equals(await runBuffer('debugfs', ['-R', 'cat /sparse.bin', base])), s.url);
  }
  const v = JSON.parse((await ok(strata(['verify', '--json', ...L], { env: baseEnv }))).stdout);
  assert.deepEqual(v.errors, []);
  // a server killed with -9 and started again serves the same library
  servers[1].child.kill('SIGKILL');
  servers[1] = await startServe(1);
  const again = (await ok(remote(['cat', 'ops/base:stable', '/big-text.txt'], servers[1].url))).stdoutBytes;
  assert.ok(again.equals(await runBuffer('debugfs', ['-R', 'cat /big-text.txt', base])));
});
