import { spawn } from 'node:child_process';
import { readProfileFile } from '../deploy/profile-store.js';
import type { SearchQuery } from '../library/search.js';
import { RemoteLibrary, remoteCheckin } from '../serve/http/client.js';
import { openVersionExport } from '../serve/nbd/library-export.js';
import { NbdServer } from '../serve/nbd/server.js';
import { StrataError } from '../util/errors.js';
import { generateLog, Rng } from './generate.js';
import { readRequestLog } from './request-log.js';
import type { BootClient, Flowop, ImageSetDef, Workload } from './wml.js';

/**
 * `strata bench run FILE.wml --remote URL`: drives a library service (`strata serve`) with a
 * workload (wml.ts) and reports, per flowop, how many ran, how many failed, the bytes they
 * moved, throughput and latency (mean, p50, p95, p99, max). Every thread is an async loop in
 * this process (the service's HTTP API is the thing measured, not this process's cores).
 */
export interface BenchRunOptions {
  remote: string;
  token?: string;
  /** Seed of the image choice (default 1). */
  seed?: number;
  /** Caps `run SECONDS` (tests). */
  maxSeconds?: number;
  /**
   * Each thread runs this many passes, whatever the workload's `run` says (a short run of a
   * long workload: a smoke test of a shipped example, a quick look before the real run).
   */
  iterations?: number;
  /** Folder the workload's relative file names are taken from (default: the current one). */
  baseDir?: string;
}

export interface FlowopStats {
  process: string;
  thread: string;
  flowop: string;
  kind: string;
  count: number;
  errors: number;
  bytes: number;
  opsPerSecond: number;
  latencyMs: { mean: number; p50: number; p95: number; p99: number; max: number };
  /** The first error, when some failed. */
  firstError?: string;
}

export interface BenchRunResult {
  file: string;
  remote: string;
  seconds: number;
  passes: number;
  flowops: FlowopStats[];
  /** Per image set: the versions and their weights. */
  images: Record<string, Array<{ ref: string; weight: number }>>;
}

/** A weighted choice of versions. */
class Choice {
  private readonly cum: number[] = [];
  constructor(readonly items: Array<{ ref: string; weight: number }>) {
    let c = 0;
    for (const x of items) this.cum.push((c += x.weight));
  }
  pick(rng: Rng): string {
    const total = this.cum[this.cum.length - 1];
    const x = rng.next() * total;
    let lo = 0;
    let hi = this.cum.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.cum[mid] > x) hi = mid;
      else lo = mid + 1;
    }
    return this.items[lo].ref;
  }
}

const listOf = (s: string) =>
  s
    .split(';')
    .map((x) => x.trim())
    .filter(Boolean);

function resolvePath(base: string | undefined, f: string): string {
  if (!base || f.startsWith('/')) return f;
  return `${base.replace(/\/+$/, '')}/${f}`;
}

/** The versions of an image set and their weights. */
export function imageSetChoice(d: ImageSetDef, file: string, baseDir?: string): Array<{ ref: string; weight: number }> {
  const bad = (why: string) =>
    new StrataError('USAGE', `${file}:${d.line}: image set ${d.name}: ${why}`, { file, structure: 'workload' });
  const a = d.attrs;
  if (a.list !== undefined) {
    const refs = listOf(a.list);
    if (refs.length === 0) throw bad('list= names no version');
    return refs.map((ref) => ({ ref, weight: 1 }));
  }
  if (a.log !== undefined) {
    const counts = new Map<string, number>();
    for (const r of readRequestLog(resolvePath(baseDir, a.log))) {
      const ref = r.version === null ? r.image : `${r.image}@${r.version}`;
      counts.set(ref, (counts.get(ref) ?? 0) + 1);
    }
    if (counts.size === 0) throw bad(`the log ${a.log} names no image`);
    return [...counts.entries()].sort((x, y) => y[1] - x[1]).map(([ref, weight]) => ({ ref, weight }));
  }
  // the generator's popularity, in rank order, onto the given versions
  const versions = listOf(a.versions ?? '');
  if (versions.length === 0) throw bad('versions= names no version');
  const log = generateLog({
    requests: Number(a.generate),
    seed: Number(a.seed ?? 1),
    images: a.images === undefined ? undefined : Number(a.images),
    days: a.days === undefined ? undefined : Number(a.days),
  });
  const counts = new Map<string, number>();
  for (const r of log) counts.set(r.image, (counts.get(r.image) ?? 0) + 1);
  const ranked = [...counts.values()].sort((x, y) => y - x);
  return versions.map((ref, i) => ({ ref, weight: ranked[i] ?? 0 })).filter((x) => x.weight > 0);
}

/**
 * The reads [offset, length] of an NBD export at `uri` by a real client, in order, in pieces
 * of at most 4 MiB; the bytes the client got. `nbdsh` (libnbd's Python shell): the ranges on
 * its stdin, it prints the bytes read. `qemu-io` (read-only, raw): one `read` command a piece
 * on its stdin, its "read N/N bytes" lines summed. Asynchronous: the server answering it may
 * be in this very process.
 */
export async function nbdClientReads(
  uri: string,
  ranges: Array<[number, number]>,
  client: BootClient,
): Promise<number> {
  const pieces: Array<[number, number]> = [];
  const step = 4 << 20;
  for (const [off, len] of ranges)
    for (let o = off; o < off + len; o += step) pieces.push([o, Math.min(step, off + len - o)]);
  const [cmd, args, input] =
    client === 'nbdsh'
      ? [
          'nbdsh',
          [
            '-c',
            [
              'import json, sys',
              `h.connect_uri(${JSON.stringify(uri)})`,
              'n = 0',
              'for o, l in json.load(sys.stdin):',
              '    n += len(h.pread(l, o))',
              'print(n)',
            ].join('\n'),
          ],
          JSON.stringify(pieces),
        ]
      : ['qemu-io', ['-r', '-f', 'raw', uri], `${pieces.map(([o, l]) => `read ${o} ${l}`).join('\n')}\nquit\n`];
  const out = await new Promise<string>((resolve, reject) => {
    // nbdsh runs `env python3`: the system's, the one with libnbd's module, ahead of any other on PATH
    const env = client === 'nbdsh' ? { ...process.env, PATH: `/usr/bin:/bin:${process.env.PATH ?? ''}` } : process.env;
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
    let so = '';
    let se = '';
    child.stdout.on('data', (c) => (so += c));
    child.stderr.on('data', (c) => (se += c));
    child.on('error', (e) =>
      reject(new StrataError('IO', `boot: cannot run ${cmd} (the NBD client): ${e.message}`, { file: cmd })),
    );
    child.on('close', (code) => {
      if (code === 0) resolve(so);
      else reject(new StrataError('IO', `boot: ${cmd} exited ${code}: ${se.trim() || so.trim()}`, { file: uri }));
    });
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
  if (client === 'nbdsh') {
    const n = Number(out.trim());
    if (!Number.isSafeInteger(n))
      throw new StrataError('IO', `boot: nbdsh printed ${JSON.stringify(out)}`, { file: uri });
    return n;
  }
  // qemu-io reports each read (after its prompt when commands come on stdin); an error is printed, not an exit status
  let n = 0;
  let reads = 0;
  for (const m of out.matchAll(/(?:^|qemu-io> )read (\d+)\/(\d+) bytes at offset \d+/gm)) {
    n += Number(m[1]);
    reads++;
  }
  if (reads !== pieces.length)
    throw new StrataError('IO', `boot: qemu-io answered ${reads} of ${pieces.length} reads: ${out.slice(-500)}`, {
      file: uri,
    });
  return n;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Read a response body to its end; its byte count. */
async function drain(res: Response): Promise<number> {
  let n = 0;
  if (!res.body) return 0;
  for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) n += c.length;
  return n;
}

export async function runWorkload(w: Workload, o: BenchRunOptions): Promise<BenchRunResult> {
  const remote = new RemoteLibrary(o.remote, o.token ?? (process.env.STRATA_TOKEN || undefined));
  const sets = new Map<string, Choice>();
  const images: BenchRunResult['images'] = {};
  for (const d of w.images) {
    const items = imageSetChoice(d, w.file, o.baseDir);
    sets.set(d.name, new Choice(items));
    images[d.name] = items;
  }
  const profiles = new Map<string, Array<{ disk: number; length: number }>>();
  const rootRng = new Rng(o.seed ?? 1);
  const iterations = o.iterations ?? w.iterations;
  const seconds =
    o.iterations !== undefined || w.seconds === undefined
      ? undefined
      : Math.min(w.seconds, o.maxSeconds ?? Number.POSITIVE_INFINITY);
  const t0 = performance.now();
  const deadline = seconds === undefined ? Number.POSITIVE_INFINITY : t0 + seconds * 1000;
  const stats = new Map<Flowop, { s: FlowopStats; lat: number[] }>();
  let passes = 0;

  const exec = async (f: Flowop, rng: Rng): Promise<number> => {
    const a = f.attrs;
    const pick = () => (sets.get(a.images) as Choice).pick(rng);
    switch (f.kind) {
      case 'think':
        await sleep(Number(a.ms));
        return 0;
      case 'checkout':
        return drain((await remote.download(pick())).res);
      case 'ls':
        return (await remote.ls(pick(), a.path ?? '/', { recursive: a.recursive === 'true' })).length;
      case 'cat':
        return drain(await remote.cat(pick(), a.path));
      case 'search': {
        const q: SearchQuery = {};
        for (const k of ['path', 'package', 'os', 'user', 'digest'] as const) if (a[k] !== undefined) q[k] = a[k];
        return (await remote.search(q)).length;
      }
      case 'diff': {
        let x = a.a;
        let y = a.b;
        if (x === undefined || y === undefined) {
          const c = sets.get(a.images) as Choice;
          x = c.pick(rng);
          // another version of the set when it has one
          for (let k = 0; k < 8 && (y === undefined || y === x); k++) y = c.pick(rng);
        }
        const d = await remote.diff(x, y as string);
        return JSON.stringify(d).length;
      }
      case 'boot': {
        // a host booting the version: our NBD server in this process exports it (its chunks
        // fetched from the service on demand, as `strata nbd REF --remote URL` does) and a
        // real NBD client makes the profile's reads
        const ref = pick();
        const file = resolvePath(o.baseDir, a.profile);
        let p = profiles.get(file);
        if (!p) {
          p = readProfileFile(file).entries.map((e) => ({ disk: e.disk, length: e.length }));
          profiles.set(file, p);
        }
        const { v, source } = await remote.versionSource(ref);
        const exp = await openVersionExport(source, {
          name: ref,
          description: `version ${v.image}@${v.number} of ${remote.url} (manifest ${v.manifest})`,
          manifest: v.manifest,
        });
        const server = new NbdServer({ exports: [exp] });
        try {
          await server.listen({ host: '127.0.0.1', port: 0 });
          const ranges = p
            .filter((r) => r.disk < source.size)
            .map((r) => [r.disk, Math.min(r.length, source.size - r.disk)] as [number, number]);
          return await nbdClientReads(server.uri(ref), ranges, (a.client ?? 'nbdsh') as BootClient);
        } finally {
          await server.close();
        }
      }
      case 'deploy': {
        const { source } = await remote.versionSource(pick());
        const ranges = (await source.status(0, source.size))
          .filter((e) => e.kind === 'data')
          .map((e) => ({ disk: e.offset, length: e.length }));
        let n = 0;
        const step = 4 << 20;
        for (const r of ranges) {
          for (let off = r.disk; off < r.disk + r.length && off < source.size; off += step) {
            const len = Math.min(step, r.disk + r.length - off, source.size - off);
            const buf = new Uint8Array(len);
            n += await source.readInto(off, buf);
          }
        }
        await source.close();
        return n;
      }
      case 'checkin': {
        const r = await remoteCheckin(remote, resolvePath(o.baseDir, a.file), { name: a.image });
        return r.requestBytes;
      }
      default:
        throw new StrataError('USAGE', `flowop ${f.kind} cannot run`);
    }
  };

  const workers: Array<Promise<void>> = [];
  for (const p of w.processes)
    for (let pi = 0; pi < p.instances; pi++)
      for (const t of p.threads) {
        for (const f of t.flowops)
          if (!stats.has(f))
            stats.set(f, {
              s: {
                process: p.name,
                thread: t.name,
                flowop: f.name,
                kind: f.kind,
                count: 0,
                errors: 0,
                bytes: 0,
                opsPerSecond: 0,
                latencyMs: { mean: 0, p50: 0, p95: 0, p99: 0, max: 0 },
              },
              lat: [],
            });
        for (let ti = 0; ti < t.instances; ti++) {
          const rng = new Rng(rootRng.u32());
          workers.push(
            (async () => {
              for (let pass = 0; ; pass++) {
                if (iterations !== undefined && pass >= iterations) return;
                const start = performance.now();
                if (start >= deadline) return;
                for (const f of t.flowops) {
                  if (performance.now() >= deadline) return;
                  const st = stats.get(f) as { s: FlowopStats; lat: number[] };
                  const a = performance.now();
                  try {
                    // (not `bytes += await ...`: that reads bytes before the await, and other threads add meanwhile)
                    const moved = await exec(f, rng);
                    st.s.bytes += moved;
                    st.s.count++;
                    st.lat.push(performance.now() - a);
                  } catch (e) {
                    st.s.errors++;
                    st.s.firstError ??= (e as Error).message;
                  }
                }
                passes++;
                // (no wait after the last pass: a slow rate would hold the run's end)
                if (t.rate !== undefined && (iterations === undefined || pass + 1 < iterations)) {
                  const wait = start + 1000 / t.rate - performance.now();
                  if (wait > 0) await sleep(Math.min(wait, Math.max(0, deadline - performance.now())));
                }
              }
            })(),
          );
        }
      }
  await Promise.all(workers);
  const elapsed = (performance.now() - t0) / 1000;
  const q = (xs: number[], p: number) => (xs.length ? xs[Math.min(xs.length - 1, Math.floor(p * xs.length))] : 0);
  const round = (x: number) => Math.round(x * 1000) / 1000;
  const flowops = [...stats.values()].map(({ s, lat }) => {
    lat.sort((x, y) => x - y);
    s.opsPerSecond = round(s.count / Math.max(elapsed, 1e-9));
    s.latencyMs = {
      mean: round(lat.reduce((x, y) => x + y, 0) / Math.max(1, lat.length)),
      p50: round(q(lat, 0.5)),
      p95: round(q(lat, 0.95)),
      p99: round(q(lat, 0.99)),
      max: round(lat.at(-1) ?? 0),
    };
    return s;
  });
  return { file: w.file, remote: remote.url, seconds: round(elapsed), passes, flowops, images };
}
