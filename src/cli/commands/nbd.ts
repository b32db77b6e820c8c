import type { Command } from 'commander';
import { classifyTarget, type Library, openTargetLibrary, StrataError } from '../../library/index.js';
import type { NbdExport } from '../../serve/index.js';
import { addOpenOptions, noteTarget, openOptionsFrom, targetOptionsFrom } from '../common.js';
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
      .option('-x, --name <name>', 'export name, one per image in order (default: file name, or the REF)', collect, [])
      .option('--overlay <file>', 'send writes of the image at the same position to this qcow2 overlay', collect, [])
      .option('--trace <file>', 'append every request as a JSON line {time, op, offset, length, latency}')
      .option(
        '--cache-size <size>',
        'block cache in front of each image (default 0: the page cache serves files; 64M for library versions)',
      )
      .option('--json', 'print the exports and their URIs as JSON'),
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
            }),
          );
          continue;
        }
        const target = classifyTarget(image, targetOptionsFrom(o));
        noteTarget(target);
        if (target.kind === 'ref') {
          // a library version (ref:NAME, or not a file and a library is there)
          lib ??= await openTargetLibrary(target);
          exports.push(await openLibraryExport(lib, target.ref, { name: names[i], overlay: overlays[i], cacheSize }));
          continue;
        }
        exports.push(
          await openImageExport(image, {
            name: names[i],
            overlay: overlays[i],
            cacheSize: cacheSize ?? 0,
            open: openOptionsFrom(o),
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
    await new Promise<void>((resolve) => {
      const stop = () => resolve();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    try {
      await server.close();
    } finally {
      await lib?.close();
    }
  });
}
