/**
 * bench:serve-compare — two builds of `strata serve` on one library, in the same run,
 * alternately (ROUNDS rounds): the server process's CPU per request of each metadata
 * route (utime + stime from /proc before and after 300 requests of that route, 4
 * connections: a measure the machine's load moves far less than latency), then 50
 * connections for DUR seconds of the route mix, closed loop and paced (4 requests/s
 * each): requests/s, p50/p90/p99, errors. JSON on stdout. With SERVE_ARGS='--workers N', the
 * CPU is the primary's and its workers' together.
 *
 *   node dist/bench/serve-compare.js LIBRARY TOKEN CLI_A CLI_B
 *
 * LIBRARY is one bench/serve.ts left (its --out folder's server/, which holds
 * bench/derived and the --images more), TOKEN a read token of project bench there,
 * CLI_A/B two dist/cli/strata.cjs (e.g. main's and a branch's). Env: DUR (15), ROUNDS (2).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import autocannon from 'autocannon';

const [libDir, token, ...clis] = process.argv.slice(2);
const DUR = Number(process.env.DUR ?? 15);
const ROUNDS = Number(process.env.ROUNDS ?? 2);
/** Requests per route for the CPU figure (/proc counts 10 ms ticks: 300 requests resolve 0.03 ms). */
const AMOUNT = Number(process.env.AMOUNT ?? 300);
/** Extra arguments to each `strata serve` (e.g. `--workers 2`), split on spaces. */
const SERVE_ARGS = (process.env.SERVE_ARGS ?? '').split(' ').filter(Boolean);
const v = '/v1/images/bench%2Fderived/versions/1';
const ROUTES = [
  '/v1/images?limit=20',
  '/v1/images?prefix=p0/&limit=20',
  `${v}/files?path=/etc`,
  `${v}/files/stat?path=/etc/passwd`,
  `${v}/inspection`,
  '/v1/search?path=/etc/passwd&limit=20',
  v,
  `${v}/files/content?path=/etc/hostname`,
  '/v1/images/p2%2Fimage-0002/versions/1/files/stat?path=/etc/hostname',
  '/v1/images/p5%2Fimage-0005/versions',
];

/** ms of CPU the process and its children (`--workers` N) used so far (clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const stat = (p: number | string) => readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ');
  const f = stat(pid);
  let ms = (Number(f[11]) + Number(f[12])) * 10;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const c = stat(d);
      if (Number(c[1]) === pid) ms += (Number(c[11]) + Number(c[12])) * 10;
    } catch {} // gone meanwhile
  }
  return ms;
}

async function start(cli: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    [
      cli,
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
      ...SERVE_ARGS,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let e = '';
    child.stderr?.on('data', (b: Buffer) => {
      e += b.toString();
      const m = /at (http:\/\/\S+) /.exec(e);
      if (m) resolve(m[1]);
    });
    child.on('exit', () => reject(new Error(`strata serve exited: ${e}`)));
  });
  return { child, url };
}

interface Out {
  cpuMsPerRequest: Record<string, number[]>;
  closed: unknown[];
  paced: unknown[];
}

async function main() {
  if (!libDir || !token || clis.length === 0) throw new Error('usage: serve-compare LIBRARY TOKEN CLI...');
  const headers = { authorization: `Bearer ${token}` };
  const all = ROUTES.map((p) => ({ method: 'GET', path: p, headers }));
  const results: Record<string, Out> = {};
  for (let r = 0; r < ROUNDS; r++) {
    for (const cli of clis) {
      const { child, url } = await start(cli);
      const pid = child.pid as number;
      results[cli] ??= { cpuMsPerRequest: {}, closed: [], paced: [] };
      const out = results[cli];
      try {
        await autocannon({ url, connections: 4, amount: 200, requests: all }); // warm
        for (const p of ROUTES) {
          const c0 = cpuMs(pid);
          const a = await autocannon({
            url,
            connections: 4,
            amount: AMOUNT,
            requests: [{ method: 'GET', path: p, headers }],
          });
          if (a.non2xx || a.errors) throw new Error(`${cli} ${p}: ${a.non2xx} answers not 2xx, ${a.errors} errors`);
          (out.cpuMsPerRequest[p] ??= []).push(Number(((cpuMs(pid) - c0) / AMOUNT).toFixed(2)));
        }
        for (const [k, rate] of [
          ['closed', undefined],
          ['paced', 4],
        ] as const) {
          const a = await autocannon({ url, connections: 50, duration: DUR, connectionRate: rate, requests: all });
          out[k].push({
            requestsPerS: a.requests.average,
            p50Ms: a.latency.p50,
            p90Ms: a.latency.p90,
            p99Ms: a.latency.p99,
            errors: a.errors + a.timeouts + a.non2xx,
          });
        }
      } finally {
        child.kill('SIGTERM');
        await new Promise((res) => child.on('exit', res));
      }
      process.stderr.write(`bench:serve-compare: round ${r} ${cli} done\n`);
    }
  }
  process.stdout.write(
    `${JSON.stringify({ bench: 'serve-compare', library: libDir, durationS: DUR, results }, null, 1)}\n`,
  );
}

main().catch((e) => {
  process.stderr.write(`bench:serve-compare: ${(e as Error).stack}\n`);
  process.exit(1);
});
