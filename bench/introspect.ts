/**
 * Introspective caching (issue 27), simulated on real traces: a Debian bookworm tree
 * (debootstrap minbase, or BENCH_ROOTFS) as a 1200 MiB ext4 image, served by
 * `strata nbd --trace`, mounted by this machine's kernel through nbdfuse and a direct-I/O
 * loop device (so each loop request is one NBD read), and worked on from a cold mount:
 *
 * - `mount`: the mount alone (plus the kernel's probing of the device);
 * - `find`: `find / -xdev | wc -l`;
 * - `grep`: `grep -r` over /etc and /usr/share/doc;
 * - `read`: reading files under /usr/lib, up to 200 MB.
 *
 * Each trace is replayed through src/analytics/cache-sim.ts with the same cache size for
 * the three policies: block LRU (today's), LRU with sequential read-ahead (128 KiB, what a
 * block server does) and introspective (metadata protected, files along their extents,
 * whole directories). Printed per workload and cache size: requests, waits (requests that
 * had to go to the source: round trips a guest waits for), bytes fetched, and the ratios of
 * waits LRU / introspective and read-ahead / introspective. A simulation on real traces,
 * not wall time of a live server: the figure is round trips, the cost on a slow link.
 *
 * The live comparison (a guest booting over NBD from a slow source through the real cache,
 * each policy): bench/introspect-live.ts, `npm run bench:introspect -- --live`.
 *
 *   npm run bench:introspect
 *   BENCH_DIR=/tmp/b BENCH_ROOTFS=/path/to/rootfs BENCH_CACHE_MIB=64,8 npm run bench:introspect
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { CACHE_POLICIES, type CacheSimResult, replayLiveCache, simulateCache } from '../src/analytics/cache-sim.js';
import { MAP_PREFETCHERS } from '../src/blockmap/introspector.js';
import { blockMapOfImage } from '../src/blockmap/of-image.js';
import type { LiveCachePolicy } from '../src/io/introspective-cache.js';
import { benchBaseImage, benchChildEnv, CLI, need, ROOT, sh } from './common.js';
import { live } from './introspect-live.js';

const BENCH = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const log = (m: string) => process.stderr.write(`# ${m}\n`);

const WORKLOADS: Record<string, string> = {
  mount: 'true',
  find: 'find "$M" -xdev | wc -l',
  grep: 'grep -r -l -s strata "$M/etc" "$M/usr/share/doc" | wc -l',
  read: 'find "$M/usr/lib" -type f -size +0 | head -n 100000 | (n=0; while read -r f; do s=$(stat -c %s "$f"); [ $((n + s)) -gt 200000000 ] && break; cat "$f" > /dev/null; n=$((n + s)); done; echo $n)',
};

async function startNbd(image: string, trace: string): Promise<{ uri: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [CLI, 'nbd', image, '--port', '0', '--trace', trace, '--json'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  const uri = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (c) => {
      out += c;
      try {
        resolve(JSON.parse(out).exports[0].uri);
      } catch {}
    });
    child.on('exit', (code) => reject(new Error(`strata nbd exited (${code})`)));
  });
  return { uri, child };
}

/** One workload from a cold mount; returns the trace's reads. */
async function traceOf(image: string, name: string, cmd: string): Promise<Array<{ offset: number; length: number }>> {
  const base = path.join(BENCH, `introspect-${process.pid}-${name}`);
  const trace = `${base}.trace`;
  const fz = `${base}-fuse`;
  const mnt = `${base}-mnt`;
  rmSync(trace, { force: true });
  mkdirSync(fz, { recursive: true });
  mkdirSync(mnt, { recursive: true });
  const nbd = await startNbd(image, trace);
  const fuse = spawn('nbdfuse', [fz, nbd.uri], { stdio: 'inherit' });
  const fuseGone = new Promise((r) => fuse.on('exit', r));
  let loop = '';
  let mounted = false;
  try {
    for (let i = 0; !existsSync(path.join(fz, 'nbd')); i++) {
      if (i > 400) throw new Error('nbdfuse did not come up');
      await new Promise((r) => setTimeout(r, 50));
    }
    loop = sh('losetup', ['--direct-io=on', '-r', '-f', '--show', path.join(fz, 'nbd')]).trim();
    sh('mount', ['-o', 'ro', loop, mnt]);
    mounted = true;
    const out = spawnSync('sh', ['-c', cmd], { env: { ...process.env, M: mnt }, encoding: 'utf8' });
    log(`${name}: ${out.stdout.trim()} ${out.status === 0 ? '' : `(exit ${out.status})`}`);
  } finally {
    if (mounted) spawnSync('umount', [mnt]);
    if (loop) spawnSync('losetup', ['-d', loop]);
    spawnSync('fusermount3', ['-u', fz]);
    await fuseGone;
    nbd.child.kill('SIGTERM');
    await new Promise((r) => nbd.child.on('exit', r));
    rmSync(fz, { recursive: true, force: true });
    rmSync(mnt, { recursive: true, force: true });
  }
  const reads: Array<{ offset: number; length: number }> = [];
  for (const line of readFileSync(trace, 'utf8').split('\n')) {
    if (!line) continue;
    const r = JSON.parse(line) as { op: string; offset: number; length: number };
    if (r.op === 'read') reads.push({ offset: r.offset, length: r.length });
  }
  if (process.env.BENCH_KEEP_TRACES !== '1') rmSync(trace, { force: true });
  else log(`kept ${trace}`);
  return reads;
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  for (const [c, p] of [
    ['nbdfuse', 'libnbd-bin'],
    ['losetup', 'mount'],
    ['fusermount3', 'fuse3'],
  ])
    need(c, p);
  if (process.getuid?.() !== 0) throw new Error('root is needed (loop devices and mounts)');
  mkdirSync(BENCH, { recursive: true });
  const given = process.env.BENCH_ROOTFS;
  if (given && !existsSync(path.join(BENCH, 'rootfs'))) symlinkSync(path.resolve(given), path.join(BENCH, 'rootfs'));
  const image = benchBaseImage(BENCH, log);
  log(`block map of ${image}`);
  const map = await blockMapOfImage(image);
  const sizes = (process.env.BENCH_CACHE_MIB ?? '64,8').split(',').map(Number);
  const only = process.env.BENCH_WORKLOADS?.split(',');
  for (const [name, cmd] of Object.entries(WORKLOADS)) {
    if (only && !only.includes(name)) continue;
    const reads = await traceOf(image, name, cmd);
    for (const mib of sizes) {
      const res = {} as Record<string, CacheSimResult>;
      for (const p of CACHE_POLICIES) res[p] = simulateCache(map, reads, p, { cacheBytes: mib << 20 });
      const brief = (r: CacheSimResult) => ({
        waits: r.waits,
        fetches: r.fetches,
        fetchedMiB: +(r.fetchedBytes / 2 ** 20).toFixed(1),
      });
      process.stdout.write(
        `${JSON.stringify({
          workload: name,
          cacheMiB: mib,
          requests: reads.length,
          requestedMiB: +(res.lru.requestedBytes / 2 ** 20).toFixed(1),
          lru: brief(res.lru),
          readahead: brief(res.readahead),
          introspective: brief(res.introspective),
          waitsLruOverIntro: +(res.lru.waits / Math.max(1, res.introspective.waits)).toFixed(2),
          waitsReadaheadOverIntro: +(res.readahead.waits / Math.max(1, res.introspective.waits)).toFixed(2),
          ...env,
        })}\n`,
      );
    }
  }
}

/**
 * `--replay TRACE DISK`: a trace the live benchmark kept (BENCH_TRACE_OUT: the guest's
 * requests in order, and the times of its markers) replayed through the live cache under
 * each policy (src/analytics/cache-sim.ts replayLiveCache): source reads per phase (boot,
 * find, grep, read), at once and without a guest.
 */
async function replay(): Promise<void> {
  const i = process.argv.indexOf('--replay');
  const [tracePath, disk] = process.argv.slice(i + 1, i + 3);
  if (!tracePath || !disk) throw new Error('usage: --replay TRACE.json DISK');
  const t = JSON.parse(readFileSync(tracePath, 'utf8')) as {
    reads: Array<[number, number, number]>;
    markers: Array<[string, number]>;
  };
  const map = await blockMapOfImage(disk);
  const accesses = t.reads.map(([offset, length]) => ({ offset, length }));
  const names = ['boot', ...t.markers.map(([m]) => m.toLowerCase())];
  const cuts = t.markers
    .map(([, time]) => t.reads.findIndex((r) => r[2] > time))
    .map((x) => (x < 0 ? t.reads.length : x));
  const configs: Array<[LiveCachePolicy, string[] | undefined, string]> = [
    ['lru', undefined, 'lru'],
    ['readahead', undefined, 'readahead'],
    ['introspective', undefined, 'introspective:all'],
    ['introspective', [], 'introspective:none'],
    ...MAP_PREFETCHERS.map((p) => ['introspective', [p], `introspective:${p}`] as [LiveCachePolicy, string[], string]),
    ['introspective', MAP_PREFETCHERS.filter((p) => p !== 'disk'), 'introspective:all-but-disk'],
  ];
  const only = process.env.BENCH_CONFIGS?.split(',');
  const cacheBytes = Number(process.env.BENCH_CACHE_MIB ?? 64) << 20;
  for (const [policy, prefetch, label] of configs) {
    if (only && !only.includes(label)) continue;
    const r = await replayLiveCache(
      map,
      accesses,
      policy,
      { ...JSON.parse(process.env.BENCH_TUNING ?? '{}'), prefetch, capacity: cacheBytes },
      cuts,
    );
    const marks = [0, ...(r.at ?? []).map((a) => a.sourceReads), r.sourceReads];
    const phases: Record<string, number> = {};
    // markers come in order: BOOTED, FIND, GREP, READ: the phase named by the marker that ends it
    const phaseNames = ['boot', 'find', 'grep', 'read', 'after'];
    for (let k = 0; k + 1 < marks.length; k++) phases[phaseNames[k] ?? names[k]] = marks[k + 1] - marks[k];
    process.stdout.write(
      `${JSON.stringify({ replay: true, config: label, requests: r.requests, sourceReads: r.sourceReads, demandReads: r.demandReads, sourceMiB: +(r.sourceBytes / 2 ** 20).toFixed(1), phases, prefetchReads: Object.fromEntries(Object.entries(r.stats.prefetchers).map(([k, v]) => [k, v.fetches])) })}\n`,
    );
  }
}

(process.argv.includes('--live') ? live() : process.argv.includes('--replay') ? replay() : main()).catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
