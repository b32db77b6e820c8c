import { readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { classifyTarget, type Library, openTargetLibrary, StrataError } from '../../library/index.js';
import type { ExportCacheOptions, NbdExport } from '../../serve/index.js';
import {
  addDeviceOption,
  addOpenOptions,
  devicesFrom,
  noteTarget,
  openOptionsFrom,
  targetOptionsFrom,
} from '../common.js';
import { printJson } from '../output.js';
import { remoteOf } from '../remote.js';
import { parseSize } from './convert.js';

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/**
 * `nbd TARGET...`: serve images, or library versions, over NBD until SIGINT/SIGTERM. Each
 * TARGET is read by the one grammar (library/target.ts): a file, a URL, or a library REF
 * (NAME, NAME:TAG, NAME@N, manifest digest prefix; ref:NAME forces it) in --library DIR
 * (else $STRATA_LIBRARY, else the default).
 */
export function registerNbdCommand(program: Command): void {
  addDeviceOption(
    addOpenOptions(
      program
        .command('nbd')
        .description('serve images as NBD exports (read-only unless --overlay), like qemu-nbd')
        .argument(
          '<target...>',
          'image files (any format Strata reads, with backing chains), URLs or library versions (ref:NAME forces one)',
        )
        .option('--library <dir>', 'library for REFs (default: $STRATA_LIBRARY or ~/.local/share/strata/library)')
        .option(
          '--remote <url>',
          'serve versions of a library service: every TARGET is a REF there, chunks fetched on demand (token from $STRATA_TOKEN)',
        )
        .option('-p, --port <n>', 'TCP port (default 10809; 0 picks a free one)')
        .option('-b, --bind <addr>', 'TCP address to listen on', '127.0.0.1')
        .option('-k, --socket <path>', 'listen on a Unix socket instead of TCP')
        .option(
          '-x, --name <name>',
          'export name, one per image in order (default: file name, or the REF)',
          collect,
          [],
        )
        .option('--overlay <file>', 'send writes of the image at the same position to this qcow2 overlay', collect, [])
        .option('--trace <file>', 'append every request as a JSON line {time, op, offset, length, latency}')
        .option(
          '--cache-size <size>',
          'block cache in front of each image (default 0: the page cache serves files; 64M for library versions)',
        )
        .option(
          '--cache-policy <policy>',
          'live cache (default 64M): lru (block LRU), readahead (LRU + 128K sequential read-ahead), introspective (by the block map: metadata protected, prefetch by meaning)',
        )
        .option(
          '--prefetch <list>',
          "introspective prefetchers, comma-separated: meta (inode records of a directory's entries), dir (the directory and its subdirectories), file (a file along its extents), siblings (the next small files of a directory), disk (the disk's next bytes after any request: read-ahead whose window grows while used), all, none (default all)",
        )
        .option(
          '--cache-map <file>',
          'introspective: a map saved by `strata blockmap --save` (default: built at start)',
        )
        .option(
          '--cache-stats <file>',
          "write the live cache's counters (hit rates by class, prefetchers) as JSON to this file on SIGUSR1 and at exit",
        )
        .option('--json', 'print the exports and their URIs as JSON'),
    ),
  ).action(async (images: string[], o: Record<string, unknown>) => {
    const names = o.name as string[];
    const overlays = o.overlay as string[];
    if (names.length > images.length) throw new StrataError('USAGE', 'more --name than images');
    if (overlays.length > images.length) throw new StrataError('USAGE', 'more --overlay than images');
    if (o.socket !== undefined && o.port !== undefined)
      throw new StrataError('USAGE', 'use --port or --socket, not both');
    const port = o.port === undefined ? 10809 : Number(o.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new StrataError('USAGE', `bad port '${o.port}'`);
    const cacheSize = o.cacheSize === undefined ? undefined : parseSize(String(o.cacheSize), 'cache size');
    const cache = await cacheOptionsFrom(o);
    const devices = devicesFrom(o);
    if (devices.length > 0 && (cache?.policy !== 'introspective' || cache.map !== undefined))
      throw new StrataError(
        'USAGE',
        '--device feeds the block map of --cache-policy introspective (built here, not --cache-map); an export serves its own image: serve each device as its own export',
      );
    if (devices.length > 0 && o.remote)
      throw new StrataError('USAGE', '--device applies to image files, not to --remote');

    const { openImageExport, openLibraryExport, openVersionExport, NbdServer, TraceWriter } = await import(
      '../../serve/index.js'
    );
    const exports: NbdExport[] = [];
    let lib: Library | undefined;
    const closeAll = async () => {
      for (const x of exports) await x.close().catch(() => {});
      await lib?.close().catch(() => {});
    };
    const remote = o.remote ? await remoteOf(o) : undefined;
    try {
      for (const [i, image] of images.entries()) {
        if (remote) {
          const ref = image.replace(/^ref:/, '');
          const { v, source } = await remote.versionSource(ref);
          exports.push(
            await openVersionExport(source, {
              name: names[i] ?? ref,
              description: `version ${v.image}@${v.number} of ${remote.url} (manifest ${v.manifest})`,
              manifest: v.manifest,
              overlay: overlays[i],
              cacheSize,
              cache,
            }),
          );
          continue;
        }
        const target = classifyTarget(image, targetOptionsFrom(o));
        noteTarget(target);
        if (target.kind === 'ref') {
          // a library version (ref:NAME, or not a file and a library is there)
          lib ??= await openTargetLibrary(target);
          exports.push(
            await openLibraryExport(lib, target.ref, { name: names[i], overlay: overlays[i], cacheSize, cache }),
          );
          continue;
        }
        exports.push(
          await openImageExport(image, {
            name: names[i],
            overlay: overlays[i],
            cacheSize: cacheSize ?? 0,
            cache,
            open: openOptionsFrom(o),
            devices,
          }),
        );
      }
    } catch (e) {
      await closeAll();
      throw e;
    }
    const trace = o.trace ? new TraceWriter(String(o.trace)) : undefined;
    const server = new NbdServer({ exports, trace });
    try {
      await server.listen(o.socket !== undefined ? { socket: String(o.socket) } : { host: String(o.bind), port });
    } catch (e) {
      await server.close().catch(() => {});
      await lib?.close().catch(() => {});
      throw new StrataError('IO', `cannot listen: ${(e as Error).message}`);
    }
    const list = exports.map((e) => ({
      name: e.name,
      uri: server.uri(e.name),
      size: e.source.size,
      readOnly: !e.writer,
    }));
    if (o.json) printJson({ exports: list, ...server.endpoint });
    else {
      for (const e of list) process.stdout.write(`${e.uri}\t${e.readOnly ? 'read-only' : 'read-write'}\t${e.name}\n`);
      if (list.length === 1) process.stdout.write(`${server.uri('')}\t(default export)\n`);
    }
    const statsFile = o.cacheStats === undefined ? undefined : String(o.cacheStats);
    const dumpStats = () => {
      if (!statsFile) return;
      const all: Record<string, unknown> = {};
      for (const e of exports) all[e.name] = e.cacheStats?.() ?? null;
      writeFileSync(statsFile, `${JSON.stringify({ time: new Date().toISOString(), exports: all }, null, 1)}\n`);
    };
    const onUsr1 = () => dumpStats();
    if (statsFile) process.on('SIGUSR1', onUsr1);
    await new Promise<void>((resolve) => {
      const stop = () => resolve();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    try {
      dumpStats();
      process.off('SIGUSR1', onUsr1);
      await server.close();
    } finally {
      await lib?.close();
    }
  });
}

/** --cache-policy, --prefetch and --cache-map as the exports' live cache options (undefined: the plain block cache). */
export async function cacheOptionsFrom(o: Record<string, unknown>): Promise<ExportCacheOptions | undefined> {
  const policy = o.cachePolicy === undefined ? undefined : String(o.cachePolicy);
  if (policy === undefined) {
    if (o.prefetch !== undefined || o.cacheMap !== undefined)
      throw new StrataError('USAGE', '--prefetch and --cache-map need --cache-policy introspective');
    return undefined;
  }
  if (policy !== 'lru' && policy !== 'readahead' && policy !== 'introspective')
    throw new StrataError('USAGE', `bad --cache-policy '${policy}': lru, readahead or introspective`);
  if (policy !== 'introspective' && (o.prefetch !== undefined || o.cacheMap !== undefined))
    throw new StrataError('USAGE', '--prefetch and --cache-map need --cache-policy introspective');
  let prefetch: string[] | undefined;
  if (o.prefetch !== undefined) {
    const list = String(o.prefetch)
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x !== '');
    const known = ['meta', 'dir', 'file', 'siblings', 'disk'];
    if (list.includes('none')) {
      if (list.length > 1) throw new StrataError('USAGE', '--prefetch none goes alone');
      prefetch = [];
    } else if (list.includes('all')) prefetch = known;
    else {
      for (const p of list)
        if (!known.includes(p))
          throw new StrataError('USAGE', `bad prefetcher '${p}' in --prefetch: ${known.join(', ')}, all or none`);
      prefetch = list;
    }
  }
  let map: ExportCacheOptions['map'];
  if (o.cacheMap !== undefined) {
    const { loadBlockMap } = await import('../../library/index.js');
    map = loadBlockMap(readFileSync(String(o.cacheMap)), String(o.cacheMap));
  }
  return { policy, prefetch, map };
}
