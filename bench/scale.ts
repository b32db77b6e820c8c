/**
 * bench:scale — scale-out (issue 23). JSON lines on stdout.
 *
 * 1. Store: check-in of the Debian pair (base, then derived) and checkout of the derived
 *    version, then the same for an ext4 image of --data-mib (256) MiB of incompressible
 *    files (made here by mkfs.ext4 -d; the pair's data is small and compresses well, so its
 *    checkout is mostly start-up), as `strata` child processes, into a library on SQLite + local disk and into one
 *    on PostgreSQL + S3 (OpenStack Swift's s3api: scripts/test-services.sh, started here
 *    unless STRATA_TEST_PG / STRATA_TEST_S3 / AWS_ENDPOINT_URL name running ones). Checkouts
 *    alternate local / S3-cold (empty --cache-dir: every pack comes from S3) / S3-warm (the
 *    cache the cold run filled), BENCH_RUNS times (default 3); best of each; the outputs'
 *    sha256 must be equal. Ratio = local time / S3 time (throughput, target >= 0.7).
 * 2. Service: 1, 2 and 3 `strata serve` processes on that PostgreSQL + S3 library behind the
 *    round-robin balancer of the tests (test/helpers/scale-cluster.ts, in this process; the
 *    load generator runs in a worker thread), autocannon with C connections for D seconds on
 *    a mix of checkout (1 MiB ranges of the derived disk), inspect (inspection, stat, ls) and
 *    list (images, versions) requests: requests/s, p50/p99, errors, the split over servers,
 *    and the ratio to one server. Also the same load with the servers named to autocannon
 *    directly (connections spread over them; no proxy hop).
 *
 * Inputs: the Debian pair of the tests (test/helpers/inspect-pair.ts, 40 MiB ext4 images
 * made by mkfs.ext4 -d from a debootstrapped tree; cached in $STRATA_FIXTURES), or
 * --base FILE --derived FILE. Options: --duration S (20), --connections C (32),
 * --servers 1,2,3, --out DIR (/dev/shm/strata-bench-scale), --skip-store, --skip-load.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import * as path from 'node:path';
import autocannon from 'autocannon';
import { inspectPair } from '../test/helpers/inspect-pair.js';
import { Cluster } from '../test/helpers/scale-cluster.js';
import { pgWithSchema, testServices, uniqueName } from '../test/helpers/services.js';
import { benchChildEnv, CLI, childCpuMs, opt, serviceCpuDelta, serviceCpuS } from './common.js';

const OUT = opt('--out') ?? '/dev/shm/strata-bench-scale';
const DURATION = Number(opt('--duration') ?? 20);
const CONNECTIONS = Number(opt('--connections') ?? 32);
const SERVERS = (opt('--servers') ?? '1,2,3').split(',').map(Number);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const DATA_MIB = Number(opt('--data-mib') ?? 256);
const flag = (f: string) => process.argv.includes(f);
const log = (m: string) => process.stderr.write(`bench:scale: ${m}\n`);
const emit = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);

/** Services' state folder (their CPU is read from /proc around each S3 run). */
let svcDir = '';

/**
 * One `strata` child: wall seconds, its CPU seconds (user + system; children run one at a
 * time), and the CPU seconds the services (Swift, memcached, PostgreSQL) spent meanwhile.
 */
function run(
  argv: string[],
  env: Record<string, string>,
): Promise<{ s: number; out: string; cpuS: number; serverCpuS: number; server: Record<string, number> }> {
  return new Promise((resolve, reject) => {
    const cpu0 = childCpuMs();
    const srv0 = serviceCpuS(svcDir);
    const t0 = process.hrtime.bigint();
    const c = spawn(process.execPath, [CLI, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    c.stdout.on('data', (b: Buffer) => (out += b));
    c.stderr.on('data', (b: Buffer) => (err += b));
    c.on('error', reject);
    c.on('close', (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      const srv = serviceCpuDelta(srv0, serviceCpuS(svcDir));
      const cpuS = (childCpuMs() - cpu0) / 1000;
      if (code !== 0) reject(new Error(`strata ${argv.join(' ')}: exit ${code}: ${err}`));
      else resolve({ s, out, cpuS, serverCpuS: srv.total, server: srv.by });
    });
  });
}

function sha256(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (b) => h.update(b))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });
}

/**
 * An ext4 image (mkfs.ext4 -d, sparse) holding `mib` MiB of incompressible files: the
 * Debian pair's chunks are few and compress well, so its checkout is mostly start-up; this
 * one moves its bytes through the store (S3: ~16 MiB packs).
 */
function dataImage(mib: number): string {
  const tree = path.join(OUT, 'data-tree');
  const img = path.join(OUT, `data-${mib}.img`);
  mkdirSync(tree, { recursive: true });
  for (let i = 0; i < mib; i++) writeFileSync(path.join(tree, `f${i}.bin`), randomBytes(1024 * 1024));
  execFileSync('truncate', ['-s', `${mib + 64 + Math.ceil(mib / 8)}M`, img]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', tree, img]);
  rmSync(tree, { recursive: true, force: true });
  return img;
}

async function storeBench(
  label: string,
  images: string[],
  env: Record<string, string>,
  places: string[],
  s3lib: string,
): Promise<void> {
  const cache = path.join(OUT, `s3-cache-${label}`);
  const local = path.join(OUT, `local-lib-${label}`);
  const L = ['--library', local];
  const S = ['--library', s3lib, ...places, '--cache-dir', cache];
  const name = `ops/${label}`;
  const ref = `${name}@${images.length}`;
  const checkins: Record<string, number[]> = { local: [], s3: [] };
  for (const img of images) {
    checkins.local.push((await run(['checkin', img, '--name', name, ...L], env)).s);
    checkins.s3.push((await run(['checkin', img, '--name', name, ...S], env)).s);
  }
  emit({
    case: `checkin ${label}`,
    images,
    localS: checkins.local,
    s3S: checkins.s3,
    ratios: checkins.local.map((l, i) => l / checkins.s3[i]),
  });
  const best: Record<string, number> = { local: Infinity, s3Cold: Infinity, s3Warm: Infinity };
  // the least CPU (user + system) each case took: the strata child's, and the services' meanwhile
  const cpu: Record<string, number> = { local: Infinity, s3Cold: Infinity, s3Warm: Infinity };
  const serverCpu: Record<string, number> = { local: Infinity, s3Cold: Infinity, s3Warm: Infinity };
  const sums = new Set<string>();
  for (let r = 0; r < RUNS; r++) {
    const outs = {
      local: path.join(OUT, `out-${label}-local.raw`),
      s3Cold: path.join(OUT, `out-${label}-s3-cold.raw`),
      s3Warm: path.join(OUT, `out-${label}-s3-warm.raw`),
    };
    for (const o of Object.values(outs)) rmSync(o, { force: true });
    const r1 = {
      local: await run(['checkout', ref, outs.local, ...L], env),
      s3Cold: await (async () => {
        rmSync(cache, { recursive: true, force: true });
        return await run(['checkout', ref, outs.s3Cold, ...S], env);
      })(),
      s3Warm: await run(['checkout', ref, outs.s3Warm, ...S], env),
    };
    const t = { local: r1.local.s, s3Cold: r1.s3Cold.s, s3Warm: r1.s3Warm.s };
    for (const k of Object.keys(t) as Array<keyof typeof t>) {
      best[k] = Math.min(best[k], t[k]);
      cpu[k] = Math.min(cpu[k], r1[k].cpuS);
      serverCpu[k] = Math.min(serverCpu[k], r1[k].serverCpuS);
    }
    const cpuOf = Object.fromEntries(
      Object.entries(r1).map(([k, x]) => [k, { cpuS: x.cpuS, serverCpuS: x.serverCpuS, server: x.server }]),
    );
    for (const o of Object.values(outs)) sums.add(await sha256(o));
    log(`checkout ${label} run ${r + 1}: ${JSON.stringify(t)} cpu ${JSON.stringify(cpuOf)}`);
  }
  if (sums.size !== 1) throw new Error(`checkouts differ: ${[...sums].join(' ')}`);
  for (const o of ['local', 's3-cold', 's3-warm']) rmSync(path.join(OUT, `out-${label}-${o}.raw`), { force: true });
  emit({
    case: `checkout ${label}`,
    ref,
    bytes: statSync(images[images.length - 1]).size,
    runs: RUNS,
    localS: best.local,
    s3ColdS: best.s3Cold,
    s3WarmS: best.s3Warm,
    ratioCold: best.local / best.s3Cold,
    ratioWarm: best.local / best.s3Warm,
    target: 0.7,
    cpuS: cpu,
    serverCpuS: serverCpu,
    // throughput if CPU were the only limit (the 2 cores busy with nothing else): local CPU / (S3 client + services)
    cpuRatioCold: cpu.local / (cpu.s3Cold + serverCpu.s3Cold),
    cpuRatioWarm: cpu.local / (cpu.s3Warm + serverCpu.s3Warm),
    load1: loadavg()[0],
  });
}

async function loadBench(env: Record<string, string>, places: string[], s3lib: string): Promise<void> {
  const L = ['--library', s3lib, ...places];
  await run(['user', 'add', 'bench', '--project', 'ops', '--role', 'admin', ...L], env);
  const token = (
    await run(['token', 'create', '--user', 'bench', '--project', 'ops', '--scope', 'read', ...L], env)
  ).out.trim();
  const v = '/v1/images/ops%2Fdebian/versions/2';
  const auth = { authorization: `Bearer ${token}` };
  const mix: Array<{ method: string; path: string; headers: Record<string, string> }> = [
    // checkout: 1 MiB ranges of the disk, at several places
    ...[1, 5, 9, 13].map((mib) => ({
      method: 'GET',
      path: `${v}/disk`,
      headers: { ...auth, range: `bytes=${mib * 1048576}-${(mib + 1) * 1048576 - 1}` },
    })),
    // inspect
    { method: 'GET', path: `${v}/inspection`, headers: auth },
    { method: 'GET', path: `${v}/files/stat?path=/etc/passwd`, headers: auth },
    { method: 'GET', path: `${v}/files?path=/etc`, headers: auth },
    // list
    { method: 'GET', path: '/v1/images', headers: auth },
    { method: 'GET', path: '/v1/images/ops%2Fdebian/versions', headers: auth },
  ];
  let one = 0;
  let oneDirect = 0;
  for (const n of SERVERS) {
    const dir = path.join(OUT, `cluster${n}`);
    mkdirSync(dir, { recursive: true });
    // each server a library folder (marker, pack cache) of its own, as on separate machines
    const cluster = new Cluster(dir, places.slice(0, 4), env, n, ['--rate-limit', '0']);
    await cluster.start();
    try {
      for (const via of ['balancer', 'direct'] as const) {
        const urls = via === 'balancer' ? cluster.url : cluster.servers.map((s) => (s as { url: string }).url);
        // a short warm-up fills each server's pack cache and index, then the measured run
        await autocannon({ url: urls, connections: CONNECTIONS, duration: 3, requests: mix, workers: 1 });
        const hits0 = [...cluster.hits];
        const r = await autocannon({
          url: urls,
          connections: CONNECTIONS,
          duration: DURATION,
          requests: mix,
          workers: 1,
        });
        const rps = r.requests.average;
        if (n === SERVERS[0] && via === 'balancer') one = rps;
        if (n === SERVERS[0] && via === 'direct') oneDirect = rps;
        emit({
          case: 'load',
          servers: n,
          via,
          connections: CONNECTIONS,
          durationS: DURATION,
          requestsPerS: rps,
          ratioToFirst: rps / (via === 'balancer' ? one : oneDirect),
          p50Ms: r.latency.p50,
          p99Ms: r.latency.p99,
          errors: r.errors + r.timeouts,
          non2xx: r.non2xx,
          requests: r.requests.total,
          split: via === 'balancer' ? cluster.hits.map((h, k) => h - hits0[k]) : undefined,
          cores: cpus().length,
          load1: loadavg()[0],
        });
      }
    } finally {
      await cluster.close();
    }
    if (cluster.crashes.length) throw new Error(`servers crashed: ${cluster.crashes.join('\n')}`);
  }
}

async function main() {
  emit({ bench: 'scale', ...benchChildEnv(), cores: cpus().length, load1: loadavg()[0] });
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const svc = testServices();
  svcDir = svc.dir;
  const pair = opt('--base') && opt('--derived') ? undefined : await inspectPair();
  const base = opt('--base') ?? (pair as { a: string }).a;
  const derived = opt('--derived') ?? (pair as { b: string }).b;
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && k !== 'STRATA_CATALOG' && k !== 'STRATA_STORE') env[k] = v;
  Object.assign(env, svc.awsEnv, { PGPASSWORD: decodeURIComponent(new URL(svc.pg).password) });
  const places = [
    '--catalog',
    pgWithSchema(svc.pg, uniqueName('bench')),
    '--store',
    `${svc.s3}/${uniqueName('bench')}`,
    '--cache-dir',
    path.join(OUT, 's3-cache'),
  ];
  const s3lib = path.join(OUT, 's3-lib');
  if (!flag('--skip-store')) {
    await storeBench('debian', [base, derived], env, places.slice(0, 4), s3lib);
    // --data-mib 0: the Debian pair alone (its checkout is the start-up case)
    if (DATA_MIB > 0) {
      const img = dataImage(DATA_MIB);
      await storeBench('data', [img], env, places.slice(0, 4), s3lib);
      rmSync(img, { force: true });
    }
  } else {
    for (const img of [base, derived])
      await run(['checkin', img, '--name', 'ops/debian', '--library', s3lib, ...places], env);
  }
  if (!flag('--skip-load')) await loadBench(env, places, s3lib);
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`bench:scale: ${(e as Error).stack}\n`);
    process.exit(1);
  },
);
