/**
 * bench:serve — the library service (issue 17). JSON on stdout.
 *
 * 1. Network check-in of a derived Debian image to a server (`strata serve`, a child
 *    process) holding its base: bytes sent and wall time, beside `rsync` of the raw
 *    derived image over the same loopback onto a copy of the base (rsync daemon; its
 *    delta transfer is what people use) and a local check-in of the derived image into a
 *    library holding the base. Targets: bytes sent <= 1.1x the chunks the base lacks;
 *    time <= 1.5x the local check-in.
 * 2. Load: autocannon, C connections for D seconds, on the metadata routes (image list,
 *    ls, stat, inspection, search, version) and on downloads (1 MiB ranges of the disk):
 *    requests/s, p50/p99 latency, errors.
 *
 * Inputs: the Debian pair of the tests (test/helpers/inspect-pair.ts, 40 MiB ext4 images
 * made by mkfs.ext4 -d from a debootstrapped tree; cached in $STRATA_FIXTURES), or
 * --base FILE --derived FILE (e.g. the 1200 MiB images bench:checkin builds).
 * Options: --duration S (60), --connections C (50), --images N (500: the server's library
 * holds N more images, versions of the base spread over 10 projects, a third each
 * private, shared and public, each one inspected, so lists, search and the access checks
 * run over a library of that size), --rate R (4: requests/s of each client in the paced
 * metadata run; the first runs are closed loops, each client asking again as soon as it is
 * answered), --out DIR, --server-prof DIR (the server runs under `node --cpu-prof`, its
 * profile written to DIR when it exits), --workers N (`strata serve --workers N`: N server
 * processes on the port), --answer-cache SIZE (`strata serve --answer-cache`; 0: every answer
 * computed, the cache-miss path), --runs N (3: local and network check-ins, alternating,
 * each into a fresh copy of its library; medians and per-pair ratios printed).
 * Each load prints, beside autocannon's figures, p50/p99 by route class and by route, the
 * server's and the load generator's CPU per request, and the load average.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import autocannon from 'autocannon';
import { Access } from '../src/catalog/access.js';
import type { VersionRow } from '../src/catalog/catalog.js';
import { checkin } from '../src/library/checkin.js';
import { inspectAfterCheckin } from '../src/library/inspection.js';
import { Library } from '../src/library/library.js';
import { inspectPair } from '../test/helpers/inspect-pair.js';
import { CLI, childCpuMs, need, opt } from './common.js';

const OUT = opt('--out') ?? '/dev/shm/strata-bench-serve';
const DURATION = Number(opt('--duration') ?? 60);
const CONNECTIONS = Number(opt('--connections') ?? 50);
const IMAGES = Number(opt('--images') ?? 500);
const RATE = Number(opt('--rate') ?? 4);
const WORKERS = opt('--workers');
/** `strata serve --answer-cache SIZE` (0: every answer computed, the cache-miss path). */
const ANSWER_CACHE = opt('--answer-cache');
/** Check-ins of each kind, alternating (local, network), each into a fresh copy of its library. */
const RUNS = Number(opt('--runs') ?? 3);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const log = (m: string) => process.stderr.write(`bench:serve: ${m}\n`);

function run(
  cmd: string,
  argv: string[],
  env: Record<string, string> = {},
): Promise<{ s: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    c.stdout.on('data', (b: Buffer) => (out += b));
    c.stderr.on('data', (b: Buffer) => (err += b));
    c.on('error', reject);
    c.on('close', (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code !== 0) reject(new Error(`${cmd} ${argv.join(' ')}: ${code}: ${err}`));
      else resolve({ s, out, err });
    });
  });
}

const PROF = opt('--server-prof');
const FRESH_SERVER = process.argv.includes('--fresh-server');

async function startServe(libDir: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(
    process.execPath,
    [
      ...(PROF ? ['--cpu-prof', '--cpu-prof-dir', PROF] : []),
      CLI,
      'serve',
      '--library',
      libDir,
      '--listen',
      '127.0.0.1:0',
      '--quiet',
      '--rate-limit',
      '0',
      '--default-project',
      'bench',
      ...(WORKERS ? ['--workers', WORKERS] : []),
      ...(ANSWER_CACHE ? ['--answer-cache', ANSWER_CACHE] : []),
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (b: Buffer) => {
      err += b.toString();
      const m = /at (http:\/\/\S+) /.exec(err);
      if (m) resolve(m[1]);
    });
    child.on('exit', () => reject(new Error(`strata serve exited: ${err}`)));
  });
  return { url, child };
}

/** ms of CPU a process and its children (`--workers` N) used so far (/proc, 10 ms ticks). */
function cpuMs(pid: number): number {
  const stat = (p: number | string) => readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ');
  let ms = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const c = stat(d);
      if (Number(d) === pid || Number(c[1]) === pid) ms += (Number(c[11]) + Number(c[12])) * 10;
    } catch {} // gone meanwhile
  }
  return ms;
}

/** p50 and p99 (ms, to 0.1) of some latencies. */
function quantiles(ms: number[]): { n: number; p50Ms: number; p99Ms: number } {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => (s.length ? Math.round(s[Math.min(s.length - 1, Math.floor(p * s.length))] * 10) / 10 : 0);
  return { n: s.length, p50Ms: q(0.5), p99Ms: q(0.99) };
}

/** The class of a metadata route, for the figures by class. */
function routeClass(p: string): string {
  if (p.startsWith('/v1/search')) return 'search';
  if (p.includes('/inspection')) return 'inspection';
  if (p.includes('/files')) return 'files';
  if (/^\/v1\/images(\?|\/[^/]+\/versions(\?|$))/.test(p)) return 'lists';
  return 'version';
}

/**
 * IMAGES more images in the server's library: each a version of the base's manifest (no
 * new chunks: a check-in of each would take hours here, and what is measured is the
 * catalog and the access checks), in projects p0..p9 (bench is a member of p0 and p1),
 * visibility private, shared (accepted by bench for half of them) or public; each
 * inspected, as a check-in would, so search finds them.
 */
async function manyImages(lib: Library, access: Access, base: VersionRow): Promise<void> {
  const t0 = Date.now();
  for (let p = 0; p < 10; p++) await access.addProject(`p${p}`);
  await access.setRole('p0', 'bench', 'member');
  await access.setRole('p1', 'bench', 'reader');
  const vis = ['private', 'shared', 'public'] as const;
  for (let i = 0; i < IMAGES; i++) {
    const name = `p${i % 10}/image-${String(i).padStart(4, '0')}`;
    const row = await lib.catalog.addVersion({
      image: name,
      description: `bench image ${i}`,
      manifest: base.manifest,
      createdBy: 'bench',
      sourceName: base.sourceName ?? undefined,
      sourceFormat: base.sourceFormat ?? undefined,
      virtualSize: base.virtualSize,
      usedBytes: base.usedBytes,
      storedBytes: base.storedBytes,
      newBytes: 0,
      exact: base.exact,
      parents: [{ image: base.image, number: base.number }],
      tags: i % 4 === 0 ? ['stable'] : [],
    });
    const v = vis[i % 3];
    await access.setImageAccess(name, `p${i % 10}`, v);
    if (v === 'shared') {
      await access.addMember(name, 'bench');
      if (i % 2 === 0) await access.setMemberStatus(name, 'bench', 'accepted');
    }
    await inspectAfterCheckin(lib, row, []);
  }
  log(`${IMAGES} more images in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

async function main() {
  need('rsync', 'rsync');
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const pair = opt('--base') && opt('--derived') ? undefined : await inspectPair();
  const base = opt('--base') ?? (pair as { a: string }).a;
  const derived = opt('--derived') ?? (pair as { b: string }).b;

  // a server library holding the base, with a write token
  const srvDir = path.join(OUT, 'server');
  const lib = await Library.open(srvDir);
  await checkin(lib, base, { name: 'bench/base' });
  const access = await Access.open(lib.catalog.db);
  await access.addUser('bench');
  await access.addProject('bench');
  await access.setRole('bench', 'bench', 'member');
  const token = (await access.createToken({ user: 'bench', project: 'bench', scope: 'write' })).token;
  const baseRow = await lib.catalog.resolve('bench/base');
  const baseChunks = new Set((await lib.layout(baseRow.manifest)).chunks);
  await manyImages(lib, access, baseRow);
  await lib.close();

  // the local check-in, into a library holding the base
  const locDir = path.join(OUT, 'local');
  const loc = await Library.open(locDir);
  await checkin(loc, base, { name: 'bench/base' });
  await loc.close();
  // RUNS pairs, alternating: a local check-in into a copy of the local library (holding the
  // base), then a network check-in to a server on a copy of the server's library (the last
  // pair's server, on the library itself, stays up for the load). Time is the CLI process's,
  // start-up included; CPU is its user + system (the server's apart).
  const localRuns: Array<{ s: number; cpuMs: number }> = [];
  const netRuns: Array<{ s: number; cpuMs: number; serverCpuMs: number; serverWarmupCheckinS?: number }> = [];
  let localOut = '';
  let netOut = '';
  let srv: { url: string; child: ChildProcess } | undefined;
  for (let i = 0; i < RUNS; i++) {
    const ld = `${locDir}-${i}`;
    cpSync(locDir, ld, { recursive: true });
    const lc0 = childCpuMs();
    const l = await run(process.execPath, [
      CLI,
      'checkin',
      derived,
      '--name',
      'bench/derived',
      '--library',
      ld,
      '--json',
    ]);
    localRuns.push({ s: r3(l.s), cpuMs: childCpuMs() - lc0 });
    if (i === 0) localOut = l.out;
    else rmSync(ld, { recursive: true, force: true });
    const last = i === RUNS - 1;
    const sd = last ? srvDir : `${srvDir}-${i}`;
    if (!last) cpSync(srvDir, sd, { recursive: true });
    const s = await startServe(sd);
    // A server that holds a base got it over the network, as a server does: it has served a
    // check-in before the one timed (the base again, under another name: every chunk held, the
    // whole commit path run). --fresh-server times the first check-in of a just-started server.
    let warmupS: number | undefined;
    if (!FRESH_SERVER) {
      const w = await run(
        process.execPath,
        [CLI, 'checkin', base, '--name', 'bench/base-net', '--remote', s.url, '--json'],
        { STRATA_TOKEN: token },
      );
      warmupS = r3(w.s);
    }
    const sc0 = cpuMs(s.child.pid as number);
    const nc0 = childCpuMs();
    const n = await run(
      process.execPath,
      [CLI, 'checkin', derived, '--name', 'bench/derived', '--parent', 'bench/base', '--remote', s.url, '--json'],
      { STRATA_TOKEN: token },
    );
    netRuns.push({
      s: r3(n.s),
      cpuMs: childCpuMs() - nc0,
      serverCpuMs: cpuMs(s.child.pid as number) - sc0,
      ...(warmupS !== undefined ? { serverWarmupCheckinS: warmupS } : {}),
    });
    netOut = n.out;
    if (last) srv = s;
    else {
      const gone = new Promise((r) => s.child.once('exit', r));
      s.child.kill('SIGTERM');
      await gone;
      rmSync(sd, { recursive: true, force: true });
    }
    log(
      `check-in pair ${i + 1}/${RUNS}: local ${l.s.toFixed(2)} s, network ${n.s.toFixed(2)} s, load ${loadavg()[0].toFixed(1)}`,
    );
  }
  const localR = JSON.parse(localOut) as { manifest: string };
  const loc2 = await Library.open(`${locDir}-0`);
  const dl = await loc2.layout(localR.manifest);
  let lackBytes = 0;
  let lackChunks = 0;
  dl.chunks.forEach((c, i) => {
    if (!baseChunks.has(c)) {
      lackBytes += dl.chunkLengths[i];
      lackChunks++;
    }
  });
  let manifestBytes = 0;
  for (const v of dl.volumes) if (v.fs) manifestBytes += (await loc2.store.get(v.fs.files)).length;
  await loc2.close();

  if (!srv) throw new Error('--runs must be at least 1');
  let result: Record<string, unknown> = {};
  try {
    const netR = JSON.parse(netOut) as {
      manifest: string;
      chunkBytesSent: number;
      requestBytes: number;
      chunksSent: number;
    };
    if (netR.manifest !== localR.manifest) throw new Error('network and local check-in made different manifests');
    const net = { s: median(netRuns.map((x) => x.s)) };
    const local = { s: median(localRuns.map((x) => x.s)) };

    // rsync daemon on loopback: the derived raw image onto a copy of the base
    const rsDir = path.join(OUT, 'rsync');
    mkdirSync(path.join(rsDir, 'mod'), { recursive: true });
    copyFileSync(base, path.join(rsDir, 'mod', 'disk.img'));
    const port = 20000 + Math.floor(Math.random() * 20000);
    writeFileSync(
      path.join(rsDir, 'rsyncd.conf'),
      `use chroot = no\npid file = ${rsDir}/rsyncd.pid\n[mod]\npath = ${rsDir}/mod\nread only = no\nuid = ${process.getuid?.() ?? 0}\ngid = ${process.getgid?.() ?? 0}\n`,
    );
    const daemon = spawn('rsync', ['--daemon', '--no-detach', `--port=${port}`, `--config=${rsDir}/rsyncd.conf`], {
      stdio: 'ignore',
    });
    await new Promise((r) => setTimeout(r, 500));
    let rsync: { s: number; sent: number };
    try {
      const r = await run('rsync', [
        '--stats',
        '--inplace',
        '--no-whole-file',
        derived,
        `rsync://127.0.0.1:${port}/mod/disk.img`,
      ]);
      const sent = Number(/Total bytes sent: ([\d,]+)/.exec(r.out)?.[1].replace(/,/g, ''));
      rsync = { s: r.s, sent };
    } finally {
      daemon.kill('SIGTERM');
    }

    // load
    log(`load: ${CONNECTIONS} connections, ${DURATION} s per mix`);
    const v = '/v1/images/bench%2Fderived/versions/1';
    const auth = { authorization: `Bearer ${token}` };
    // what a browser of the library asks: pages of the image list, a folder, a file's
    // stat and text, an inspection, a search, a version, other projects' images
    const meta = [
      '/v1/images?limit=20',
      '/v1/images?prefix=p0/&limit=20',
      `${v}/files?path=/etc`,
      `${v}/files/stat?path=/etc/passwd`,
      `${v}/inspection`,
      '/v1/search?path=/etc/passwd&limit=20',
      v,
      `${v}/files/content?path=/etc/hostname`,
      ...(IMAGES > 2
        ? ['/v1/images/p2%2Fimage-0002/versions/1/files/stat?path=/etc/hostname', '/v1/images/p5%2Fimage-0005/versions']
        : []),
    ];
    const pid = srv.child.pid as number;
    const load = async (paths: string[], headers: Record<string, string> = {}, connectionRate?: number) => {
      const per = paths.map(() => [] as number[]);
      const load0 = loadavg()[0];
      const cpu0 = cpuMs(pid);
      const own0 = process.cpuUsage();
      const run = autocannon({
        url: srv.url,
        connections: CONNECTIONS,
        duration: DURATION,
        connectionRate,
        requests: paths.map((p) => ({ method: 'GET', path: p, headers: { ...auth, ...headers } })),
      });
      // each answer's latency by its route (autocannon reports them all together)
      run.on('response', (client, _status, _bytes, ms) => per[client.requestIterator.currentRequestIndex]?.push(ms));
      const r = await run;
      const own = process.cpuUsage(own0);
      const serverCpu = cpuMs(pid) - cpu0;
      const classes: Record<string, number[]> = {};
      paths.forEach((p, i) => {
        classes[routeClass(p)] ??= [];
        classes[routeClass(p)].push(...per[i]);
      });
      return {
        requestsPerS: r.requests.average,
        p50Ms: r.latency.p50,
        p99Ms: r.latency.p99,
        errors: r.errors + r.timeouts,
        non2xx: r.non2xx,
        requests: r.requests.total,
        byClass: Object.fromEntries(Object.entries(classes).map(([k, v]) => [k, quantiles(v)])),
        byRoute: Object.fromEntries(paths.map((p, i) => [p, quantiles(per[i])])),
        // CPU per request, of the server (all its processes) and of this process (autocannon),
        // a measure the machine's load moves far less than latency
        serverCpuMsPerRequest: Math.round((serverCpu / Math.max(1, r.requests.total)) * 1000) / 1000,
        loadGeneratorCpuMsPerRequest:
          Math.round(((own.user + own.system) / 1000 / Math.max(1, r.requests.total)) * 1000) / 1000,
        loadAverage: [load0, loadavg()[0]].map((x) => Math.round(x * 10) / 10),
      };
    };
    const metaLoad = await load(meta);
    // the same clients at RATE requests/s each (a person browsing clicks far less often
    // than a closed loop asks): latency is then the service's time, not a queue of 50
    const metaPaced = await load(meta, {}, RATE);
    const downloads = await load([`${v}/disk`], { range: 'bytes=1048576-2097151' });

    result = {
      bench: 'serve',
      images: { base, derived },
      checkin: {
        chunksBaseLacks: lackChunks,
        chunkBytesBaseLacks: lackBytes,
        fileManifestBytes: manifestBytes,
        runs: RUNS,
        network: {
          s: net.s,
          server: FRESH_SERVER ? 'just started' : 'has served one check-in (the base, by the network)',
          runs: netRuns,
          chunksSent: netR.chunksSent,
          chunkBytesSent: netR.chunkBytesSent,
          requestBytes: netR.requestBytes,
        },
        local: { s: local.s, runs: localRuns },
        rsync: { s: rsync.s, bytesSent: rsync.sent },
        ratioSentToLacking: netR.requestBytes / lackBytes,
        ratioTimeToLocal: r3(net.s / local.s),
        ratioTimeToLocalByPair: netRuns.map((x, i) => r3(x.s / localRuns[i].s)),
        ratioCpuToLocal: r3(
          median(netRuns.map((x) => x.cpuMs + x.serverCpuMs)) / median(localRuns.map((x) => x.cpuMs)),
        ),
        ratioSentToRsync: netR.requestBytes / rsync.sent,
      },
      load: {
        connections: CONNECTIONS,
        durationS: DURATION,
        images: IMAGES + 2,
        metadata: metaLoad,
        metadataPaced: { perClientPerS: RATE, ...metaPaced },
        downloads1MiB: downloads,
      },
      // the targets, as this run measured them (latency targets mean something only on a quiet machine)
      targets: {
        bytesSentAtMost1_1xLacking: netR.requestBytes <= 1.1 * lackBytes,
        timeAtMost1_5xLocal: net.s <= 1.5 * local.s,
        metadataP99Under50Ms: metaLoad.p99Ms < 50,
        noErrors: [metaLoad, metaPaced, downloads].every((x) => x.errors === 0 && x.non2xx === 0),
      },
    };
  } finally {
    srv.child.kill('SIGTERM');
  }
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}

main().catch((e) => {
  process.stderr.write(`bench:serve: ${(e as Error).stack}\n`);
  process.exit(1);
});
