import { readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Command } from 'commander';
import type { FacilityRule, ImageRequest, SimPolicy } from '../../analytics/index.js';
import { StrataError } from '../../library/index.js';
import { humanSize, printJson, printLines, writeOut } from '../output.js';
import { addPlaceOptions, placesFrom } from '../places.js';

/**
 * `analytics REPORT` over a request log (a library service's, or a log file), `analytics
 * generate` (a synthetic log of the Emulab study's shape), `simulate` (cache and pre-load
 * replay). A thin face over src/analytics.
 */
const REPORTS = ['popularity', 'working-set', 'lifespan', 'orgs', 'similarity', 'dedup'] as const;
type Report = (typeof REPORTS)[number];

/** `64G`, `1.5T`, `512M`, `4096` -> bytes. */
export function parseBytes(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new StrataError('USAGE', `bad ${what} '${text}' (e.g. 512M, 64G, 1.5T)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[
    m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'
  ];
  return Math.round(Number(m[1]) * mult);
}

function int(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new StrataError('USAGE', `--${what} takes a whole number, not ${String(v)}`);
  return n;
}
function num(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new StrataError('USAGE', `--${what} takes a number, not ${String(v)}`);
  return n;
}

function facilityRule(o: Record<string, unknown>): FacilityRule {
  const projects =
    typeof o.facility === 'string'
      ? o.facility
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : ['facility', 'system'];
  return { projects, public: o.public !== false };
}

/**
 * The request log in time order: log files streamed into RequestRuns (memory by the budget,
 * not by the log; `done` closes its scratch file), a library's catalog as an array.
 */
async function loadLog(o: Record<string, unknown>): Promise<{ log: Iterable<ImageRequest>; done: () => void }> {
  const { openRequestLog, parseTime, readCatalogLog } = await import('../../analytics/index.js');
  const filter = {
    since: typeof o.since === 'string' ? parseTime(o.since, '--since') : undefined,
    until: typeof o.until === 'string' ? parseTime(o.until, '--until') : undefined,
    ops:
      typeof o.ops === 'string'
        ? o.ops
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
        : undefined,
  };
  const files = logFiles(o);
  if (files.length > 0) {
    // several sources (a service's log, hosts' deploy logs, NBD traces) read as one
    const runs = openRequestLog(files, filter);
    return { log: runs, done: () => runs.close() };
  }
  const { Library } = await import('../../library/index.js');
  const lib = await Library.open(o.library as string | undefined, { create: false, ...placesFrom(o) });
  try {
    return { log: await readCatalogLog(lib.catalog.db, filter), done: () => {} };
  } finally {
    await lib.close();
  }
}

/** `--log` given once or more. */
function logFiles(o: Record<string, unknown>): string[] {
  return Array.isArray(o.log) ? o.log.map(String) : typeof o.log === 'string' ? [o.log] : [];
}
const more = (v: string, prev: string[] = []) => [...prev, v];

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export function registerAnalyticsCommands(program: Command): void {
  registerBenchCommand(program);
  const analytics = program
    .command('analytics')
    .description(
      `what a request log says about an image service: ${REPORTS.join(', ')}; generate writes a synthetic log`,
    )
    .argument('<report>', `${REPORTS.join(' | ')} | generate`)
    .option('--library <dir>', 'library whose service request log (and manifests) to read')
    .option(
      '--log <file>',
      'a request log file instead (JSONL or CSV as `strata analytics generate` writes, a host request log of strata deploy, an NBD --trace); repeat to merge several',
      more,
    )
    .option('--since <time>', 'only requests at or after TIME (ISO date or time)')
    .option('--until <time>', 'only requests before TIME')
    .option('--ops <list>', 'only these service operations (comma-separated, e.g. versions.download,versions.get)')
    .option('--facility <projects>', 'owner projects of facility images (default facility,system)')
    .option('--no-public', 'do not count public images as facility images')
    .option('--idle-days <n>', 'lifespan: a gap longer than N days is an idle period (default 1)')
    .option('--max <n>', 'similarity: at most N versions (default 64)')
    .option('--weekly', 'working-set: plot the weekly series (default daily)')
    .option('--json', 'print the report as JSON')
    .option('--svg <file>', 'also draw the report as an SVG plot')
    // generate
    .option('--requests <n>', 'generate: number of requests')
    .option('--seed <n>', 'generate: PRNG seed (same seed, same log)')
    .option('--images <n>', 'generate: images (default 714)')
    .option('--users <n>', 'generate: users (default 1301)')
    .option('--projects <n>', 'generate: projects (default 120)')
    .option('--days <n>', 'generate: days the log spans (default 365)')
    .option('--start <time>', 'generate: first day (default 2026-01-01)')
    .option('--facility-images <n>', 'generate: facility images (default 40)')
    .option('--facility-share <x>', 'generate: share of requests for facility images (default 0.556)')
    .option('--facility-exponent <x>', 'generate: Zipf exponent of facility images (default 0.7)')
    .option('--user-exponent <x>', 'generate: Zipf exponent of user images (default 1.0)');
  addPlaceOptions(analytics);
  analytics.action(async (report: string, o: Record<string, unknown>) => {
    const A = await import('../../analytics/index.js');
    if (report === 'generate') {
      const requests = int(o.requests, 'requests');
      const seed = int(o.seed, 'seed');
      if (requests === undefined || seed === undefined)
        throw new StrataError('USAGE', 'analytics generate needs --requests N and --seed S');
      const opts = {
        requests,
        seed,
        images: int(o.images, 'images'),
        users: int(o.users, 'users'),
        projects: int(o.projects, 'projects'),
        days: int(o.days, 'days'),
        start: typeof o.start === 'string' ? A.parseTime(o.start, '--start') : undefined,
        facilityImages: int(o.facilityImages, 'facility-images'),
        facilityShare: num(o.facilityShare, 'facility-share'),
        facilityExponent: num(o.facilityExponent, 'facility-exponent'),
        userExponent: num(o.userExponent, 'user-exponent'),
      };
      // drawn in one order, printed by time: through RequestRuns (runs on disk), not an array
      const runs = new A.RequestRuns();
      try {
        for (const r of A.generateRequests(opts)) runs.add(r);
        await printLines(runs, A.formatJsonl);
      } finally {
        runs.close();
      }
      return;
    }
    if (!(REPORTS as readonly string[]).includes(report))
      throw new StrataError('USAGE', `unknown report ${JSON.stringify(report)} (${REPORTS.join(', ')}, generate)`);
    if (o.log !== undefined && o.library !== undefined)
      throw new StrataError('USAGE', '--library and --log: give one request log');
    const rule = facilityRule(o);
    const svg = (s: string) => {
      if (typeof o.svg === 'string') writeFileSync(o.svg, s);
    };
    switch (report as Report) {
      case 'similarity': {
        if (logFiles(o).length > 0)
          throw new StrataError('USAGE', 'similarity reads manifests: give --library, not --log');
        const { Library } = await import('../../library/index.js');
        const lib = await Library.open(o.library as string | undefined, { create: false, ...placesFrom(o) });
        try {
          const r = await A.similarity(lib, { max: int(o.max, 'max') });
          svg(A.similaritySvg(r));
          if (o.json) return printJson(r);
          let t = '';
          for (const b of r.best)
            t += `${b.version}: ${b.base === null ? 'no other version' : `closest base ${b.base}, ${pct(b.writeShare as number)} of ${b.usedBlocks} blocks to write`}\n`;
          if (r.omitted) t += `(${r.omitted} more versions left out: --max)\n`;
          return writeOut(t);
        } finally {
          await lib.close();
        }
      }
      case 'dedup': {
        if (logFiles(o).length === 0) {
          const { Library } = await import('../../library/index.js');
          const lib = await Library.open(o.library as string | undefined, { create: false, ...placesFrom(o) });
          try {
            const r = await A.dedupFromLibrary(lib);
            svg(A.dedupSvg(r));
            if (o.json) return printJson(r);
            return writeOut(dedupText(r));
          } finally {
            await lib.close();
          }
        }
        const { log, done } = await loadLog(o);
        let r: ReturnType<typeof A.dedupFromLog>;
        try {
          r = A.dedupFromLog(log);
        } finally {
          done();
        }
        svg(A.dedupSvg(r));
        if (o.json) return printJson(r);
        return writeOut(dedupText(r));
      }
      default:
    }
    const { log, done } = await loadLog(o);
    try {
      switch (report as Report) {
        case 'popularity': {
          const r = A.popularity(log, { facility: rule });
          svg(A.popularitySvg(r));
          if (o.json) return printJson(r);
          const fit = (f: { exponent: number; r2: number; points: number } | null) =>
            f
              ? `tail exponent ${f.exponent.toFixed(2)} (r² ${f.r2.toFixed(2)}, ${f.points} ranks)`
              : 'too few images to fit';
          let t = `${r.requests} requests of ${r.images} images; top image ${pct(r.topShare)} of requests\n`;
          t += `facility images: ${r.facility.images}, ${pct(r.facility.share)} of requests, ${fit(r.facility.fit)}\n`;
          t += `user images: ${r.user.images}, ${pct(r.user.share)} of requests, ${fit(r.user.fit)}\n`;
          t += `fit: ${r.method}\n`;
          for (const x of r.top)
            t += `  ${x.image}${x.facility ? ' (facility)' : ''}: ${x.requests} (${pct(x.requests / r.requests)})\n`;
          return writeOut(t);
        }
        case 'working-set': {
          const r = A.workingSet(log);
          svg(A.workingSetSvg(r, o.weekly ? 'weekly' : 'daily'));
          if (o.json) return printJson(r);
          const s = r.summary;
          return writeOut(
            `daily: ${s.daily.meanImages.toFixed(1)} images (max ${s.daily.maxImages}), ${humanSize(s.daily.meanBytes)} (max ${humanSize(s.daily.maxBytes)}) over ${r.daily.length} days with requests\n` +
              `weekly: ${s.weekly.meanImages.toFixed(1)} images (max ${s.weekly.maxImages}), ${humanSize(s.weekly.meanBytes)} (max ${humanSize(s.weekly.maxBytes)}) over ${r.weekly.length} weeks\n` +
              `all: ${s.totalImages} images, ${humanSize(s.totalBytes)}\n`,
          );
        }
        case 'lifespan': {
          const r = A.lifespan(log, { facility: rule, idleDays: num(o.idleDays, 'idle-days') });
          svg(A.lifespanSvg(r));
          if (o.json) return printJson(r);
          let t = `user images: ${r.user.images}, median span ${r.user.medianSpanDays.toFixed(1)} days, ${r.user.withinDays3} within 3 days, ${r.user.withinDays7} within 7\n`;
          t += `facility images: ${r.facility.images}, median span ${r.facility.medianSpanDays.toFixed(1)} days\n`;
          for (const h of r.histogram)
            t += `  ${h.from}${h.to === null ? '+' : `-${h.to}`} days: ${h.user} user, ${h.facility} facility\n`;
          return writeOut(t);
        }
        case 'orgs': {
          const r = A.orgs(log);
          svg(A.orgsSvg(r));
          if (o.json) return printJson(r);
          let t = '';
          for (const x of r.orgs)
            t += `${x.project}: ${x.requests} requests (${pct(x.share)}), ${x.users} users, ${x.images} images, ${humanSize(x.bytes)}\n`;
          return writeOut(t);
        }
        default:
      }
    } finally {
      done();
    }
  });

  program
    .command('simulate')
    .description('replay a request log through a cache of a given size: hit rate and bytes fetched, with pre-load')
    .requiredOption(
      '--log <file>',
      'request log (JSONL or CSV as `strata analytics generate` writes, a host request log, an NBD --trace); repeat to merge',
      more,
    )
    .requiredOption('--cache <size>', 'cache size (e.g. 64G)')
    .option('--policy <p>', 'lru | lfu | arc | two-tier (default lru)', 'lru')
    .option('--level <l>', 'image | chunk (default image)', 'image')
    .option('--chunk <size>', 'chunk level: piece size (default 64M)')
    .option('--protected-share <x>', 'two-tier: share of the cache for facility images (default 0.5)')
    .option('--preload', 'pre-load while idle (each night): facility images first, then by recent popularity')
    .option('--idle-capacity <size>', 'pre-load: bytes that can be fetched per idle period (default: the cache size)')
    .option('--window <days>', 'pre-load: days of recent popularity (default 7)')
    .option('--facility <projects>', 'owner projects of facility images (default facility,system)')
    .option('--no-public', 'do not count public images as facility images')
    .option('--since <time>', 'only requests at or after TIME')
    .option('--until <time>', 'only requests before TIME')
    .option('--json', 'print the result as JSON')
    .action(async (o: Record<string, unknown>) => {
      const A = await import('../../analytics/index.js');
      const policy = String(o.policy);
      if (!(A.SIM_POLICIES as readonly string[]).includes(policy))
        throw new StrataError('USAGE', `unknown policy ${JSON.stringify(policy)} (${A.SIM_POLICIES.join(', ')})`);
      const level = String(o.level);
      if (level !== 'image' && level !== 'chunk') throw new StrataError('USAGE', '--level is image or chunk');
      const { log, done } = await loadLog({ log: o.log, since: o.since, until: o.until });
      try {
        await simulateReport(A, log, o, policy as SimPolicy, level);
      } finally {
        done();
      }
    });
}

/** `simulate`'s replays (without, and with --preload) and what it prints. */
async function simulateReport(
  A: typeof import('../../analytics/index.js'),
  log: Iterable<ImageRequest>,
  o: Record<string, unknown>,
  policy: SimPolicy,
  level: 'image' | 'chunk',
): Promise<void> {
  const cacheBytes = parseBytes(String(o.cache), 'cache size');
  const base = {
    cacheBytes,
    policy: policy as SimPolicy,
    level: level as 'image' | 'chunk',
    chunkBytes: o.chunk === undefined ? undefined : parseBytes(String(o.chunk), 'chunk size'),
    facility: facilityRule(o),
    protectedShare: num(o.protectedShare, 'protected-share'),
  };
  const plain = A.simulate(log, base);
  const line = (r: typeof plain) =>
    `${r.policy}${r.preload ? ' + pre-load' : ''}: ${pct(r.hitRate)} of ${r.requests} requests hit (facility ${pct(r.facility.hits / Math.max(1, r.facility.requests))}, user ${pct(r.user.hits / Math.max(1, r.user.requests))}), ${humanSize(r.fetchedBytes)} fetched on demand of ${humanSize(r.requestedBytes)} requested\n`;
  if (!o.preload) {
    if (o.json) return printJson(plain);
    return writeOut(line(plain));
  }
  const idleBytes = o.idleCapacity === undefined ? cacheBytes : parseBytes(String(o.idleCapacity), 'idle capacity');
  const pre = A.simulate(log, { ...base, preload: { idleBytes, windowDays: int(o.window, 'window') } });
  const saved = {
    hitRate: pre.hitRate - plain.hitRate,
    onDemandBytes: plain.fetchedBytes - pre.fetchedBytes,
    preloadBytes: pre.preload?.bytes ?? 0,
  };
  if (o.json) return printJson({ without: plain, with: pre, saved });
  return writeOut(
    line(plain) +
      line(pre) +
      `pre-load saved ${humanSize(Math.max(0, saved.onDemandBytes))} fetched on demand (${(saved.hitRate * 100).toFixed(1)} points of hit rate) for ${humanSize(saved.preloadBytes)} fetched while idle\n`,
  );
}

/** `bench run FILE.wml --remote URL`: a workload (src/analytics/wml.ts) against a library service. */
function registerBenchCommand(program: Command): void {
  const bench = program.command('bench').description('image-service benchmarks described by a workload file (WML)');
  bench
    .command('run')
    .description('drive a library service with a workload: throughput and latency per flowop')
    .argument('<file>', 'the workload (.wml; see the examples in workloads/)')
    .requiredOption('--remote <url>', 'the library service (strata serve); token from $STRATA_TOKEN')
    .option('--set <name=value>', 'set a workload variable ($name), repeatable', more)
    .option('--seed <n>', 'seed of the image choice (default 1)')
    .option('--iterations <n>', "each thread runs N passes, whatever the workload's run statement says")
    .option('--check', 'parse the workload and print it, run nothing')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, o: Record<string, unknown>) => {
      const A = await import('../../analytics/index.js');
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (e) {
        throw new StrataError('NOT_FOUND', `cannot read the workload: ${(e as Error).message}`, { file });
      }
      const vars: Record<string, string> = {};
      for (const kv of (o.set as string[] | undefined) ?? []) {
        const eq = kv.indexOf('=');
        if (eq <= 0) throw new StrataError('USAGE', `--set wants NAME=VALUE, not ${kv}`);
        vars[kv.slice(0, eq).replace(/^\$/, '')] = kv.slice(eq + 1);
      }
      const iterations = int(o.iterations, 'iterations');
      if (iterations !== undefined && iterations < 1)
        throw new StrataError('USAGE', `--iterations takes a whole number of at least 1, not ${iterations}`);
      const w = A.parseWml(text, file, vars);
      if (o.check) return printJson(w);
      const r = await A.runWorkload(w, {
        remote: String(o.remote),
        seed: int(o.seed, 'seed'),
        iterations,
        baseDir: dirname(file),
      });
      if (o.json) return printJson(r);
      let t = `${r.file} against ${r.remote}: ${r.seconds.toFixed(1)} s, ${r.passes} passes\n`;
      t += 'flowop                         ops   errors   ops/s    mean ms   p50 ms   p95 ms   p99 ms   bytes\n';
      for (const f of r.flowops)
        t += `${`${f.process}/${f.thread}/${f.flowop} (${f.kind})`.padEnd(30)} ${String(f.count).padStart(5)} ${String(f.errors).padStart(8)} ${f.opsPerSecond.toFixed(1).padStart(7)} ${f.latencyMs.mean.toFixed(1).padStart(10)} ${f.latencyMs.p50.toFixed(1).padStart(8)} ${f.latencyMs.p95.toFixed(1).padStart(8)} ${f.latencyMs.p99.toFixed(1).padStart(8)}   ${humanSize(f.bytes)}${f.firstError ? `  first error: ${f.firstError}` : ''}\n`;
      return writeOut(t);
    });
}

function dedupText(r: {
  source: string;
  versions: number;
  fullBytes: number;
  deltaBytes: number;
  savedShare: number;
  derived: number;
}): string {
  return `${r.versions} versions (${r.derived} stored as deltas), from the ${r.source}: ${humanSize(r.fullBytes)} whole, ${humanSize(r.deltaBytes)} with deltas, ${pct(r.savedShare)} saved\n`;
}
