import * as path from 'node:path';
import type { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import type { DeployEvent, Deployer as DeployerT } from '../../deploy/index.js';
import { StrataError } from '../../library/index.js';
import { addOpenOptions, openOptionsFrom } from '../common.js';
import { remoteOf } from '../remote.js';
import { parseSize } from './convert.js';
import { cacheOptionsFrom } from './nbd.js';

/**
 * `deploy SOURCE --to TARGET`: serve TARGET over NBD at once while it is filled from SOURCE
 * (a library REF, an image file or URL). A thin face over src/deploy.
 */
export function registerDeployCommand(program: Command): void {
  addOpenOptions(
    program
      .command('deploy')
      .description('serve TARGET over NBD at once and fill it from SOURCE in the background (reads first)')
      .argument('<source>', 'library REF (NAME, NAME:TAG, NAME@N, digest prefix), image file or URL')
      .requiredOption('--to <target>', 'raw file (created sparse when missing) or block device')
      .option(
        '--library <dir>',
        'library for a REF: a folder, or its URL on a web server (default: $STRATA_LIBRARY or ~/.local/share/strata/library)',
      )
      .option('--remote <url>', 'deploy a REF from a library service (strata serve); token from $STRATA_TOKEN')
      .option('--cache <dir>', 'chunk cache shared by the deploys of this host (strata preload fills it)')
      .option(
        '--cache-size <size>',
        'bound of the chunk cache folder on disk, least recently used chunks go first (default 10G)',
      )
      .option('--compare', 'TARGET holds something unknown: hash it along the chunks, fetch only what differs')
      .option('--resume', 'continue the deploy that TARGET.strata-deploy records')
      .option('--bandwidth <rate>', 'cap of the background copy in bytes per second (64M, 1G ...)')
      .option(
        '--source-wait <seconds>',
        'how long the background copy waits for a source it cannot reach, retrying with backoff, before it stops (0: no limit)',
        '3600',
      )
      .option('--fetch-timeout <seconds>', "how long a guest's read waits for a failing source", '120')
      .option('--block-size <size>', 'granularity of the local map (default 64K)')
      .option('-p, --port <n>', 'TCP port (default 10809; 0 picks a free one)')
      .option('-b, --bind <addr>', 'TCP address to listen on', '127.0.0.1')
      .option('-k, --socket <path>', 'listen on a Unix socket instead of TCP')
      .option('-x, --name <name>', 'export name', '')
      .option(
        '--profile <ref|file|none>',
        "boot profile fetched first, in access order (default: the version's own or the nearest earlier one)",
      )
      .option('--trace <file>', 'append every NBD request as a JSON line (a log `strata profile record` reads)')
      .option('--http <[host:]port>', 'serve the same view over HTTP range requests too (iPXE sanboot http://...)')
      .option(
        '--request-log <file>',
        'append this deploy to FILE as a request (the analytics read it; default with --cache: DIR/requests.jsonl)',
      )
      .option(
        '--source-cache <policy>',
        "a live cache in front of SOURCE for the guest's reads: lru, readahead or introspective (the block map's classes and prefetchers, as strata nbd --cache-policy)",
      )
      .option(
        '--source-prefetch <list>',
        'introspective prefetchers: meta, dir, file, siblings, disk, all, none (default all)',
      )
      .option('--source-cache-size <size>', 'bytes of that cache (default 64M)')
      .option('--exit-when-complete', 'exit once TARGET holds everything and no client is connected')
      .option('--json', 'print events as JSON lines on stdout'),
  ).action(async (sourceArg: string, o: Record<string, unknown>) => {
    if (o.socket !== undefined && o.port !== undefined)
      throw new StrataError('USAGE', 'use --port or --socket, not both');
    const port = o.port === undefined ? 10809 : Number(o.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new StrataError('USAGE', `bad port '${o.port}'`);
    const bandwidth = o.bandwidth === undefined ? undefined : parseSize(String(o.bandwidth), 'bandwidth');
    const blockSize = o.blockSize === undefined ? undefined : parseSize(String(o.blockSize), 'block size');
    const json = Boolean(o.json);
    const seconds = (v: unknown, what: string) => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new StrataError('USAGE', `bad ${what} '${v}' (seconds)`);
      return n * 1000;
    };
    const sourceWait = seconds(o.sourceWait, '--source-wait');
    const fetchTimeout = seconds(o.fetchTimeout, '--fetch-timeout');
    if (fetchTimeout === 0) throw new StrataError('USAGE', '--fetch-timeout must be more than 0 seconds');
    const {
      appendDeployRequest,
      cacheRequestLog,
      cachedDeploySource,
      Deployer,
      DeployHttpServer,
      findProfile,
      openDeploySource,
      parseHostPort,
      profilePlan,
    } = await import('../../deploy/index.js');
    const httpAt = o.http === undefined ? undefined : parseHostPort(String(o.http), String(o.bind));
    const { NbdServer, TraceWriter } = await import('../../serve/index.js');
    const line = (x: unknown) => process.stdout.write(`${JSON.stringify(x)}\n`);
    let bar: SingleBar | undefined;
    // a library version's deploy is a request: appended to the host's request log when it starts
    let logRequest: ((dataBytes: number) => void) | undefined;
    const onEvent = (e: DeployEvent) => {
      if (e.event === 'start') logRequest?.(e.dataBytes);
      if (json) line(e);
      else if (e.event === 'complete') {
        // the last tick may be up to a second old: the bar ends full
        bar?.update(bar.getTotal(), { fetched: Math.floor(e.fetchedBytes / 2 ** 20) });
        bar?.stop();
        bar = undefined;
        process.stderr.write(
          `strata deploy: complete: every used range is local (${e.fetchedBytes} bytes fetched in ${e.seconds.toFixed(1)} s); source dropped, serving TARGET alone\n`,
        );
      } else if (e.event === 'retry') process.stderr.write(`strata deploy: retry ${e.attempt}: ${e.error}\n`);
      else if (e.event === 'stalled')
        process.stderr.write(
          `strata deploy: the source does not answer (${e.error}); the copy waits for it (${e.localBytes} bytes local, recorded)\n`,
        );
      else if (e.event === 'resumed')
        process.stderr.write(`strata deploy: the source answers again after ${e.seconds.toFixed(1)} s; copying on\n`);
      else if (e.event === 'error') process.stderr.write(`strata deploy: ${e.error}\n`);
    };
    let sourceCache: Awaited<ReturnType<typeof cacheOptionsFrom>>;
    try {
      sourceCache = await cacheOptionsFrom({ cachePolicy: o.sourceCache, prefetch: o.sourcePrefetch });
    } catch (e) {
      throw new StrataError(
        'USAGE',
        (e as Error).message.replace(/--cache-policy/g, '--source-cache').replace(/--prefetch/g, '--source-prefetch'),
      );
    }
    if (o.sourceCacheSize !== undefined) {
      if (!sourceCache) throw new StrataError('USAGE', '--source-cache-size needs --source-cache');
      sourceCache.cacheSize = parseSize(String(o.sourceCacheSize), 'source cache size');
    }
    const opened = await openDeploySource(sourceArg, {
      library: o.library as string | undefined,
      remote: o.remote as string | undefined,
      cache: o.cache as string | undefined,
      cacheBytes: o.cacheSize === undefined ? undefined : parseSize(String(o.cacheSize), 'cache size'),
      open: openOptionsFrom(o),
    });
    let source: typeof opened & { cacheStats?: () => unknown } = opened;
    if (sourceCache) {
      try {
        source = await cachedDeploySource(opened, sourceCache);
      } catch (e) {
        await opened.close().catch(() => {});
        throw e;
      }
    }
    const requestLog =
      o.requestLog !== undefined
        ? String(o.requestLog)
        : o.cache !== undefined
          ? cacheRequestLog(String(o.cache))
          : undefined;
    if (requestLog && source.ref) {
      const ref = source.ref;
      logRequest = (bytes) =>
        appendDeployRequest(requestLog, { ...ref, bytes, target: path.resolve(String(o.to)), source: source.name });
    }
    let d: DeployerT;
    try {
      // the profile's plan is worked out (the source's block map built) while the export already serves
      const staticLibrary = /^https?:\/\//i.test(String(o.library ?? '')) ? String(o.library) : undefined;
      const remote = o.remote === undefined ? undefined : await remoteOf(o);
      const profile = await findProfile(o.profile as string | undefined, sourceArg, {
        library: o.library as string | undefined,
        // the library service serves its versions' profiles, a library over plain HTTP lists them in its index
        remote,
        staticLibrary: o.remote === undefined ? staticLibrary : undefined,
        sourceIsVersion: source.manifestDigest !== undefined,
      });
      const first = profile
        ? profilePlan(profile, source).then((plan) => {
            const e = {
              event: 'profile',
              profile: `${profile.image}@${profile.number}`,
              ranges: plan.ranges.length,
              bytes: plan.bytes,
              same: plan.same,
              moved: plan.moved,
              missing: plan.missing,
            };
            if (json) line(e);
            else
              process.stderr.write(
                `strata deploy: prefetching the boot profile of ${e.profile} first: ${e.bytes} bytes in ${e.ranges} ranges (${e.moved} entries moved, ${e.missing} gone)\n`,
              );
            return plan.ranges;
          })
        : undefined;
      // a plan that fails is reported by the copier (which then copies in disk order), never unhandled
      first?.catch(() => {});
      d = await Deployer.open(source, String(o.to), {
        resume: Boolean(o.resume),
        compare: Boolean(o.compare),
        bandwidth,
        blockSize,
        sourceWait,
        fetchTimeout,
        onEvent,
        first,
      });
    } catch (e) {
      await source.close().catch(() => {});
      throw e;
    }
    const trace = o.trace ? new TraceWriter(String(o.trace)) : undefined;
    const server = new NbdServer({ exports: [d.export(String(o.name))], trace });
    try {
      await server.listen(o.socket !== undefined ? { socket: String(o.socket) } : { host: String(o.bind), port });
    } catch (e) {
      await server.close().catch(() => {});
      throw new StrataError('IO', `cannot listen: ${(e as Error).message}`);
    }
    const uri = server.uri(String(o.name));
    let http: InstanceType<typeof DeployHttpServer> | undefined;
    let httpInfo: { host: string; port: number; url: string } | undefined;
    if (httpAt) {
      http = new DeployHttpServer(d, httpAt);
      try {
        httpInfo = await http.listen();
      } catch (e) {
        await server.close().catch(() => {});
        throw new StrataError('IO', `cannot listen for HTTP on ${String(o.http)}: ${(e as Error).message}`);
      }
    }
    // the NBD URI first (scripts read the first line), then the HTTP URL
    if (json) line({ event: 'listening', uri, ...server.endpoint });
    else process.stdout.write(`${uri}\n`);
    if (httpInfo) {
      if (json) line({ event: 'http', ...httpInfo });
      else process.stdout.write(`${httpInfo.url}\n`);
    }
    if (!json && process.stderr.isTTY) {
      const { default: cliProgress } = await import('cli-progress');
      bar = new cliProgress.SingleBar(
        {
          stream: process.stderr,
          format: 'deploying [{bar}] {percentage}% local | {fetched} MiB fetched | {rate} MiB/s | ETA {eta_formatted}',
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      const p = d.progress() as Extract<DeployEvent, { event: 'progress' }>;
      bar.start(Math.max(1, Math.ceil(p.neededBytes / 2 ** 20)), 0, { fetched: 0, rate: 0 });
    }
    d.start();
    const tick = setInterval(() => {
      const p = d.progress() as Extract<DeployEvent, { event: 'progress' }>;
      if (json) line(p);
      bar?.update(Math.floor(p.localBytes / 2 ** 20), {
        fetched: Math.floor(p.fetchedBytes / 2 ** 20),
        rate: (p.rate / 2 ** 20).toFixed(1),
      });
    }, 1000);
    try {
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
        // once complete and no client is connected (a client mid-read is not cut off)
        if (o.exitWhenComplete) {
          d.complete.then(() => {
            const idle = setInterval(() => {
              if (server.connectionCount === 0 && (http?.connectionCount ?? 0) === 0) {
                clearInterval(idle);
                resolve();
              }
            }, 100);
          });
        }
      });
    } finally {
      clearInterval(tick);
      bar?.stop();
      await http?.close();
      await server.close();
    }
    // bytes that came from the origin (not the chunk cache), for sources that count them
    const counted = opened as { originBytes?: number; cache?: { hits: number; hitBytes: number } };
    if (json)
      line({
        event: 'exit',
        complete: d.isComplete,
        fetchedBytes: d.fetchedBytes,
        originBytes: counted.originBytes,
        cacheHits: counted.cache?.hits,
        cacheHitBytes: counted.cache?.hitBytes,
        ...(source.cacheStats ? { sourceCache: source.cacheStats() } : {}),
      });
  });
}
