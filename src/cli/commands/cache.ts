import { readFileSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import { StrataError } from '../../library/index.js';
import type { CacheReport, ClassHits } from '../../serve/index.js';
import { humanSize, printJson } from '../output.js';

/**
 * `cache stats FILE`: what a live cache learned (issue 27), by class of request: read from
 * the counters `strata nbd --cache-stats FILE` writes (at exit, and on SIGUSR1: `--pid`
 * sends it and waits for the file to change), or counted from a `strata nbd --trace` file
 * of a server with `--cache-policy` (each read's class, kind and hit|prefetched|miss).
 */
export function registerCacheCommands(program: Command): void {
  const cache = program.command('cache').description("a live NBD cache's figures (strata nbd --cache-policy)");
  cache
    .command('stats')
    .description('hit rates by class (metadata, data, unused) and what each prefetcher fetched and was used')
    .argument('<file>', 'a --cache-stats file of strata nbd, or its --trace file (JSON lines)')
    .option('--pid <pid>', 'a running strata nbd writing FILE: send it SIGUSR1 and read the counters it writes')
    .option('--kinds', 'from a trace: hit rates by kind of structure too')
    .option('--json', 'print the figures as JSON')
    .action(async (file: string, o: Record<string, unknown>) => {
      const { readCacheReport } = await import('../../serve/index.js');
      if (o.pid !== undefined) await refresh(file, String(o.pid));
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (e) {
        throw new StrataError('NOT_FOUND', `cannot read: ${(e as Error).message}`, { file });
      }
      const r = readCacheReport(text, file);
      if (o.json) return printJson(r);
      const lines: string[] = [];
      if (r.time) lines.push(`counters of ${r.time}`);
      for (const [name, e] of Object.entries(r.exports)) {
        lines.push(`${name || '(default export)'}: ${e.requests} requests${e.policy ? `, policy ${e.policy}` : ''}`);
        lines.push(...table('class', e.byClass));
        if (o.kinds && e.byKind) lines.push(...table('kind', e.byKind));
        lines.push(...prefetcherLines(e));
        if (e.source)
          lines.push(
            `  source: ${e.source.reads} reads, ${humanSize(e.source.bytes)} (on demand ${e.source.demandReads}, ${humanSize(e.source.demandBytes)})`,
          );
      }
      if (Object.keys(r.exports).length === 0) lines.push('no export has a live cache');
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}

function table(what: string, m: Record<string, ClassHits>): string[] {
  const rows = Object.entries(m).sort((a, b) => b[1].requests - a[1].requests);
  const w = Math.max(what.length, ...rows.map(([k]) => k.length));
  const out = [`  ${what.padEnd(w)}  requests      hit  prefetched     miss  hit rate`];
  for (const [k, c] of rows)
    out.push(
      `  ${k.padEnd(w)}  ${String(c.requests).padStart(8)}  ${String(c.hits).padStart(7)}  ${String(c.prefetched).padStart(10)}  ${String(c.misses).padStart(7)}  ${(c.hitRate * 100).toFixed(1).padStart(7)}%`,
    );
  return out;
}

function prefetcherLines(e: CacheReport): string[] {
  const out: string[] = [];
  for (const [p, v] of Object.entries(e.prefetchers ?? {}))
    out.push(
      `  prefetch ${p}: ${v.plans} plans (${v.dropped} dropped at the bound), fetched ${humanSize(v.fetchedBytes)}, used ${humanSize(v.usedBytes)}`,
    );
  return out;
}

/** SIGUSR1 to `pid`, then wait (up to 10 s) for `file` to be rewritten. */
async function refresh(file: string, pidText: string): Promise<void> {
  const pid = Number(pidText);
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new StrataError('USAGE', `bad --pid '${pidText}'`);
  const before = mtimeOf(file);
  try {
    process.kill(pid, 'SIGUSR1');
  } catch (e) {
    throw new StrataError('NOT_FOUND', `cannot signal process ${pid}: ${(e as Error).message}`);
  }
  for (let i = 0; i < 200; i++) {
    await new Promise((r) => setTimeout(r, 50));
    const now = mtimeOf(file);
    if (now !== undefined && now !== before) return;
  }
  throw new StrataError('IO', `process ${pid} did not rewrite the file within 10 s (is it strata nbd --cache-stats?)`, {
    file,
  });
}

function mtimeOf(file: string): number | undefined {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}
