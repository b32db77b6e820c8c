/**
 * bench:analytics — issue 25's benchmark: every `strata analytics` report over a generated
 * 1,000,000-request log (target: each under 5 s), and the pre-load choice's hit rate
 * against LRU and LFU at three cache sizes, as a table.
 *
 * - The log: `strata analytics generate --requests N --seed 1` (N = --requests, default
 *   1,000,000), written once under --dir (default the OS temp folder), timed.
 * - Reports: each run in its own child process (`strata analytics REPORT --log FILE
 *   --json`, the CLI as a user runs it: reading and parsing the log included), best of
 *   --runs (default 2); wall ms, CPU ms and the child's peak RSS (GNU time's %M %U %S).
 *   Then, in this process, each report's own compute time on the parsed log (reading and
 *   parsing the JSONL is most of a CLI run: it is timed apart).
 * - Peer: there is no peer tool for these reports. A sanity peer for the one report with an
 *   obvious independent implementation: a plain python3 script (json module, a dict) that
 *   counts requests per image; its counts must equal ours, and its time is printed beside
 *   ours (ratio = ours / peer).
 * - Simulation: image level, cache sizes of 1/4, 1/2 and 1 times the largest daily working
 *   set (bytes); policies lru, lfu, arc, two-tier, and lru with the night pre-load (idle
 *   capacity = the cache size). One JSON line per size, then the table as text.
 *
 * Output: JSON lines on stdout; the table last.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import {
  dedupFromLog,
  lifespan,
  orgs,
  popularity,
  readRequestLog,
  simulate,
  workingSet,
} from '../src/analytics/index.js';
import { benchChildEnv, CLI, opt } from './common.js';

const REPORTS = ['popularity', 'working-set', 'lifespan', 'orgs', 'dedup'];

function timed(
  cmd: string,
  args: string[],
  out?: string,
): { ms: number; cpuMs: number; rssKiB: number; stdout: string } {
  const haveTime = existsSync('/usr/bin/time');
  const t0 = process.hrtime.bigint();
  const r = haveTime
    ? spawnSync('/usr/bin/time', ['-f', '%M %U %S', cmd, ...args], { maxBuffer: 1 << 30, encoding: 'utf8' })
    : spawnSync(cmd, args, { maxBuffer: 1 << 30, encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  if (out) writeFileSync(out, r.stdout);
  const m = haveTime ? /(\d+) ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr) : null;
  return {
    ms,
    cpuMs: m ? (Number(m[2]) + Number(m[3])) * 1000 : Number.NaN,
    rssKiB: m ? Number(m[1]) : Number.NaN,
    stdout: r.stdout,
  };
}

function main(): void {
  const env = benchChildEnv();
  const n = Number(opt('--requests') ?? 1_000_000);
  const runs = Number(opt('--runs') ?? 2);
  const dir = opt('--dir') ?? path.join(tmpdir(), 'strata-bench-analytics');
  mkdirSync(dir, { recursive: true });
  const log = path.join(dir, `log-${n}-seed1.jsonl`);
  const gen = timed(process.execPath, [CLI, 'analytics', 'generate', '--requests', String(n), '--seed', '1'], log);
  console.log(
    JSON.stringify({
      case: 'generate',
      requests: n,
      bytes: statSync(log).size,
      ms: Math.round(gen.ms),
      cpuMs: Math.round(gen.cpuMs),
      peakRssMiB: Math.round(gen.rssKiB / 1024),
      ...env,
    }),
  );

  let popReport: { ranked: Array<{ image: string; requests: number }> } | undefined;
  for (const report of REPORTS) {
    let best = { ms: Number.POSITIVE_INFINITY, cpuMs: 0, rssKiB: 0, stdout: '' };
    for (let i = 0; i < runs; i++) {
      const r = timed(process.execPath, [CLI, 'analytics', report, '--log', log, '--json']);
      if (r.ms < best.ms) best = r;
    }
    if (report === 'popularity') popReport = JSON.parse(best.stdout);
    console.log(
      JSON.stringify({
        case: report,
        requests: n,
        ms: Math.round(best.ms),
        cpuMs: Math.round(best.cpuMs),
        peakRssMiB: Math.round(best.rssKiB / 1024),
        under5s: best.ms < 5000,
      }),
    );
  }

  // the sanity peer: requests per image by a plain python3 script
  const py = path.join(dir, 'count.py');
  writeFileSync(
    py,
    [
      'import sys, json',
      'counts = {}',
      'with open(sys.argv[1]) as f:',
      '    for line in f:',
      '        if line.strip():',
      '            im = json.loads(line)["image"]',
      '            counts[im] = counts.get(im, 0) + 1',
      'print(json.dumps(counts))',
      '',
    ].join('\n'),
  );
  let peer = { ms: Number.POSITIVE_INFINITY, cpuMs: 0, rssKiB: 0, stdout: '' };
  for (let i = 0; i < runs; i++) {
    const r = timed('python3', [py, log]);
    if (r.ms < peer.ms) peer = r;
  }
  const theirs = JSON.parse(peer.stdout) as Record<string, number>;
  const ours = Object.fromEntries((popReport?.ranked ?? []).map((x) => [x.image, x.requests]));
  const same =
    Object.keys(theirs).length === Object.keys(ours).length && Object.entries(theirs).every(([k, v]) => ours[k] === v);
  const o = timed(process.execPath, [CLI, 'analytics', 'popularity', '--log', log, '--json']);
  const oursMs = o.ms;
  console.log(
    JSON.stringify({
      case: 'popularity-vs-python3-count',
      oursMs: Math.round(oursMs),
      peerMs: Math.round(peer.ms),
      oursCpuMs: Math.round(o.cpuMs),
      peerCpuMs: Math.round(peer.cpuMs),
      cpuRatio: Math.round((o.cpuMs / peer.cpuMs) * 100) / 100,
      ratio: Math.round((oursMs / peer.ms) * 100) / 100,
      peerPeakRssMiB: Math.round(peer.rssKiB / 1024),
      sameCounts: same,
      note: 'no peer exists for the reports; the python3 count is a sanity peer for popularity only',
    }),
  );

  // simulation, in this process (the log read once)
  const t0 = performance.now();
  const requests = readRequestLog(log);
  const readMs = performance.now() - t0;
  const compute: Record<string, number> = {};
  const time = <T>(name: string, f: () => T): T => {
    const t = performance.now();
    const r = f();
    compute[name] = Math.round(performance.now() - t);
    return r;
  };
  time('popularity', () => popularity(requests));
  const ws = time('working-set', () => workingSet(requests));
  time('lifespan', () => lifespan(requests));
  time('orgs', () => orgs(requests));
  time('dedup', () => dedupFromLog(requests));
  console.log(JSON.stringify({ case: 'reports-in-process', readAndParseMs: Math.round(readMs), computeMs: compute }));
  const daily = ws.summary.daily.maxBytes;
  const GiB = 1024 ** 3;
  const rows: Array<Record<string, number | string>> = [];
  for (const f of [0.25, 0.5, 1]) {
    const cacheBytes = Math.round((daily * f) / GiB) * GiB;
    const row: Record<string, number | string> = { cacheGiB: cacheBytes / GiB, ofDailyWorkingSet: f };
    const t = performance.now();
    for (const policy of ['lru', 'lfu', 'arc', 'two-tier'] as const)
      row[policy] = simulate(requests, { cacheBytes, policy }).hitRate;
    const pre = simulate(requests, { cacheBytes, policy: 'lru', preload: { idleBytes: cacheBytes } });
    row['lru+preload'] = pre.hitRate;
    row.preloadGiB = Math.round((pre.preload?.bytes ?? 0) / GiB);
    row.ms = Math.round(performance.now() - t);
    rows.push(row);
    console.log(JSON.stringify({ case: 'simulate', readMs: Math.round(readMs), ...row }));
  }
  const pct = (x: number | string) => `${(Number(x) * 100).toFixed(1)}%`;
  const head = ['cache', 'LRU', 'LFU', 'ARC', 'two-tier', 'LRU + pre-load', 'pre-loaded'];
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows.map(
      (r) =>
        `| ${r.cacheGiB} GiB (${r.ofDailyWorkingSet}× daily set) | ${pct(r.lru)} | ${pct(r.lfu)} | ${pct(r.arc)} | ${pct(r['two-tier'])} | ${pct(r['lru+preload'])} | ${r.preloadGiB} GiB |`,
    ),
  ];
  console.log(lines.join('\n'));
  console.log(
    JSON.stringify({
      summary: true,
      selfPeakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
      logBytes: statSync(log).size,
    }),
  );
}

main();
