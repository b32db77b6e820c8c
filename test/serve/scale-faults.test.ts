import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { strata } from '../helpers/cli.js';
import { Cluster } from '../helpers/scale-cluster.js';
import { pgWithSchema, stopServices, testServices, uniqueName } from '../helpers/services.js';
import { ROOT, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

/**
 * Issue 23's load and fault test, on a real PostgreSQL and a real S3 server (Swift + s3api):
 * three `strata serve` processes behind a round-robin balancer, CLIENTS clients checking in,
 * checking out, listing and deleting for SECONDS while one server is killed with SIGKILL and
 * started again, PostgreSQL is restarted, and the S3 endpoint refuses connections for 10 s.
 * Afterwards: no server died on its own, gc frees what the deleted versions alone held (a
 * second gc finds nothing more), `strata verify` is clean, and every check-in that was
 * acknowledged (and not deleted) checks out byte-identical to the image it came from
 * (sha256 of the image file: check-ins are --exact). A failed request during a fault is
 * allowed; a wrong answer or a lost acknowledged version is not.
 *
 * STRATA_SCALE_CLIENTS (default 20) and STRATA_SCALE_SECONDS (default 150) size the run.
 */
const CLIENTS = Number(process.env.STRATA_SCALE_CLIENTS ?? 20);
const SECONDS = Number(process.env.STRATA_SCALE_SECONDS ?? 150);
// its own PostgreSQL and Swift: it restarts and stops them, which tests running beside it must not see
const svc = testServices({ private: true });
const pgUrl = new URL(svc.pg);
const dir = tempDir('scale-faults');
const schema = uniqueName('flt');
const places = ['--catalog', pgWithSchema(svc.pg, schema), '--store', `${svc.s3}/${uniqueName('flt')}`];
const baseEnv: Record<string, string> = {};
for (const [k, v] of Object.entries(process.env))
  if (v !== undefined && k !== 'STRATA_CATALOG' && k !== 'STRATA_STORE') baseEnv[k] = v;
Object.assign(baseEnv, svc.awsEnv, { PGPASSWORD: decodeURIComponent(pgUrl.password) });
const cluster = new Cluster(dir, places, baseEnv, 3);
const admin = ['--library', path.join(dir, 'admin'), ...places];
const servicesScript = path.join(ROOT, 'scripts', 'test-services.sh');
const sh = promisify(execFile);
let token = '';

interface Img {
  file: string;
  sha: string;
}
/** Images shared by all clients (their chunks stay referenced) and one per client (freed when deleted). */
const shared: Img[] = [];
const own: Img[] = [];

const sha256 = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/** A small ext4 image by mkfs.ext4 -d: 1 MiB of random bytes (new chunks) and text shared by all. */
async function image(name: string): Promise<Img> {
  const tree = path.join(dir, `tree-${name}`);
  mkdirSync(path.join(tree, 'etc'), { recursive: true });
  writeFileSync(path.join(tree, 'payload.bin'), randomBytes(1 << 20));
  writeFileSync(path.join(tree, 'etc', 'shared.txt'), 'the same in every image\n'.repeat(20000));
  writeFileSync(path.join(tree, 'etc', 'name'), `${name}\n`);
  const file = path.join(dir, `${name}.img`);
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, file, '8M']);
  rmSync(tree, { recursive: true });
  return { file, sha: sha256(file) };
}

const remote = (args: string[], url = cluster.url) =>
  strata([...args, '--remote', url], { env: { ...baseEnv, STRATA_TOKEN: token } });

before(async () => {
  const env = { env: baseEnv };
  assert.equal((await strata(['user', 'add', 'alice', '--project', 'ops', '--role', 'admin', ...admin], env)).code, 0);
  const t = await strata(['token', 'create', '--user', 'alice', '--project', 'ops', '--scope', 'write', ...admin], env);
  assert.equal(t.code, 0, t.stderr);
  token = t.stdout.trim();
  for (let i = 0; i < 4; i++) shared.push(await image(`shared${i}`));
  for (let c = 0; c < CLIENTS; c++) own.push(await image(`own${c}`));
  await cluster.start();
});

after(async () => {
  await cluster.close();
  stopServices(svc);
});

interface Acked {
  ref: string;
  sha: string;
  client: number;
}

test(`load and faults: ${CLIENTS} clients for ${SECONDS} s; a server SIGKILLed, PostgreSQL restarted, S3 away 10 s`, async () => {
  const acked: Acked[] = [];
  const deleted = new Set<string>();
  const uncertain = new Set<string>();
  /** Images a check-in of failed: a version of them may exist that no client knows of. */
  const failedCheckin = new Set<string>();
  const wrong: string[] = [];
  const failures = new Map<string, number>();
  const ok = { checkin: 0, checkout: 0, list: 0, rm: 0 };
  const fail = (op: string, stderr: string) => {
    const key = `${op}: ${(stderr.trim().split('\n').pop() ?? '').slice(0, 120)}`;
    failures.set(key, (failures.get(key) ?? 0) + 1);
  };
  const t0 = Date.now();
  const end = t0 + SECONDS * 1000;
  const faults: string[] = [];

  const client = async (c: number) => {
    const out = path.join(dir, `out-${c}.raw`);
    let i = 0;
    // spread the starts so the first check-ins do not all land in the same second
    await new Promise((r) => setTimeout(r, c * 150));
    while (Date.now() < end) {
      const roll = Math.random();
      const live = acked.filter((a) => !deleted.has(a.ref) && !uncertain.has(a.ref));
      const mine = live.filter((a) => a.client === c);
      if (roll < 0.4 || live.length === 0) {
        const img = Math.random() < 0.5 ? shared[i % shared.length] : own[c];
        const name = `ops/c${c}-${i++}`;
        const r = await remote(['checkin', img.file, '--name', name, '--exact', '--json']);
        if (r.code === 0) {
          acked.push({ ref: JSON.parse(r.stdout).ref, sha: img.sha, client: c });
          ok.checkin++;
        } else {
          failedCheckin.add(img.sha);
          fail('checkin', r.stderr);
        }
      } else if (roll < 0.65) {
        const a = live[Math.floor(Math.random() * live.length)];
        const r = await remote(['checkout', a.ref, out, '--force']);
        if (r.code === 0) {
          if (!deleted.has(a.ref) && sha256(out) !== a.sha) wrong.push(`${a.ref} checked out with another sha256`);
          ok.checkout++;
        } else if (!deleted.has(a.ref)) fail('checkout', r.stderr);
        rmSync(out, { force: true });
      } else if (roll < 0.85 || mine.length === 0) {
        const r = await remote(['images', '--json']);
        if (r.code === 0) ok.list++;
        else fail('list', r.stderr);
      } else {
        const a = mine[Math.floor(Math.random() * mine.length)];
        // deleted or not, it is no longer one the read-back must find
        uncertain.add(a.ref);
        const r = await remote(['rm', a.ref]);
        if (r.code === 0) {
          deleted.add(a.ref);
          ok.rm++;
        } else fail('rm', r.stderr);
      }
    }
  };

  const at = (share: number) =>
    new Promise((r) => setTimeout(r, Math.max(0, t0 + share * SECONDS * 1000 - Date.now())));
  const chaos = async () => {
    await at(0.15);
    cluster.kill(1);
    faults.push(`${((Date.now() - t0) / 1000).toFixed(0)} s: server 1 SIGKILL`);
    await new Promise((r) => setTimeout(r, 3000));
    await cluster.restart(1);
    faults.push(`${((Date.now() - t0) / 1000).toFixed(0)} s: server 1 back`);
    await at(0.4);
    await sh('bash', [servicesScript, 'restart-pg', svc.dir]);
    faults.push(`${((Date.now() - t0) / 1000).toFixed(0)} s: PostgreSQL restarted`);
    await at(0.65);
    await sh('bash', [servicesScript, 's3-down', svc.dir]);
    faults.push(`${((Date.now() - t0) / 1000).toFixed(0)} s: S3 down`);
    await new Promise((r) => setTimeout(r, 10_000));
    await sh('bash', [servicesScript, 's3-up', svc.dir]);
    faults.push(`${((Date.now() - t0) / 1000).toFixed(0)} s: S3 up`);
  };

  await Promise.all([chaos(), ...Array.from({ length: CLIENTS }, (_, c) => client(c))]);
  const report = () =>
    JSON.stringify({ ok, faults, failures: Object.fromEntries(failures), acked: acked.length, deleted: deleted.size });
  console.log(report());

  assert.deepEqual(cluster.crashes, [], 'a server died on its own');
  assert.deepEqual(wrong, [], report());
  assert.ok(ok.checkin >= CLIENTS && ok.checkout > 0 && ok.list > 0 && ok.rm > 0, report());
  assert.equal(faults.length, 5, report());

  // gc from an admin's library directory: frees what the deleted versions alone held
  const env = { env: baseEnv };
  const gc1 = await strata(['gc', '--json', '--upload-grace', '0s', ...admin], env);
  assert.equal(gc1.code, 0, gc1.stderr);
  const g1 = JSON.parse(gc1.stdout);
  const liveRefs = acked.filter((a) => !uncertain.has(a.ref));
  // gc counts live manifests: check-ins of the same image share one
  const liveImages = new Set(liveRefs.map((a) => a.sha)).size;
  assert.ok(g1.liveVersions >= liveImages, `${g1.liveVersions} live manifests, ${liveImages} acknowledged images`);
  // an image of a client's own whose every acknowledged check-in was deleted, none left in
  // doubt (an rm that failed, a check-in that failed and may have landed): what it alone held
  // is dead, and gc must free it (a client's own image is checked in under several names: one
  // of them deleted frees nothing while another lives)
  const gone = own.filter((o) => {
    const refs = acked.filter((a) => a.sha === o.sha);
    return (
      refs.length > 0 &&
      refs.every((a) => deleted.has(a.ref)) &&
      !failedCheckin.has(o.sha) &&
      !refs.some((a) => uncertain.has(a.ref) && !deleted.has(a.ref))
    );
  });
  if (gone.length > 0) assert.ok(g1.freedBytes > 0, `${gone.length} own images wholly deleted: ${gc1.stdout}`);
  const gc2 = await strata(['gc', '--json', '--upload-grace', '0s', ...admin], env);
  assert.equal(gc2.code, 0, gc2.stderr);
  const g2 = JSON.parse(gc2.stdout);
  assert.equal(g2.freedBytes, 0, `a second gc found more to free: ${gc2.stdout}`);
  assert.equal(g2.liveBlobs, g1.liveBlobs);
  const v = await strata(['verify', '--json', ...admin], env);
  assert.equal(v.code, 0, v.stderr);
  assert.deepEqual(JSON.parse(v.stdout).errors, []);

  // every acknowledged, undeleted check-in reads back byte-exact (four at a time, through the balancer)
  const queue = [...liveRefs];
  const readBack = async (w: number) => {
    const out = path.join(dir, `back-${w}.raw`);
    for (let a = queue.shift(); a; a = queue.shift()) {
      const r = await remote(['checkout', a.ref, out, '--force']);
      assert.equal(r.code, 0, `${a.ref}: ${r.stderr}`);
      assert.equal(sha256(out), a.sha, a.ref);
    }
    rmSync(out, { force: true });
  };
  await Promise.all([0, 1, 2, 3].map(readBack));
  // acknowledged deletions stay deleted
  for (const ref of deleted) {
    const r = await remote(['versions', ref.split('@')[0], '--json']);
    assert.equal(r.code, 1, `${ref} was deleted, still listed: ${r.stdout}`);
  }
});

test('gc and check-in on different servers, many rounds: no chunk of a committed version lost', async () => {
  const rounds = Number(process.env.STRATA_SCALE_ROUNDS ?? 8);
  const env = { env: baseEnv };
  const kept: Acked[] = [];
  for (let r = 0; r < rounds; r++) {
    const img = await image(`round${r}`);
    // the check-in goes to one server, gc runs beside it as an admin would, deleting the round before's version
    const prev = kept.at(-1);
    if (prev && r % 2 === 1) {
      assert.equal((await remote(['rm', prev.ref], cluster.server(2).url)).code, 0);
      kept.pop();
    }
    const [ci, gc] = await Promise.all([
      remote(['checkin', img.file, '--name', `ops/round${r}`, '--exact', '--json'], cluster.server(r % 2).url),
      new Promise((res) => setTimeout(res, 300 * (r % 4))).then(() => strata(['gc', '--json', ...admin], env)),
    ]);
    assert.equal(ci.code, 0, ci.stderr);
    assert.equal(gc.code, 0, gc.stderr);
    kept.push({ ref: JSON.parse(ci.stdout).ref, sha: img.sha, client: -1 });
    for (const a of kept) {
      const out = path.join(dir, 'round.raw');
      const c = await remote(['checkout', a.ref, out, '--force'], cluster.server((r + 1) % 3).url);
      assert.equal(c.code, 0, `round ${r}, ${a.ref}: ${c.stderr}`);
      assert.equal(sha256(out), a.sha, `round ${r}, ${a.ref}`);
    }
  }
  const v = await strata(['verify', '--json', ...admin], env);
  assert.deepEqual(JSON.parse(v.stdout).errors, []);
});
