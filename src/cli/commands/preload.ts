import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import type { ImageRequest } from '../../analytics/index.js';
import { StrataError } from '../../library/index.js';
import { parseSize } from './convert.js';

/**
 * `preload REF... --cache DIR`: fill a host's chunk cache with versions while it is idle, so
 * a later `deploy --cache DIR` fetches nothing from the source; `export-index`: write the
 * static index that lets a web server serve a library folder to `deploy --library URL`.
 */
const more = (v: string, prev: string[] = []) => [...prev, v];

export function registerPreloadCommands(program: Command): void {
  program
    .command('preload')
    .description("fill a host's chunk cache with library versions (deploy --cache uses it); --auto chooses them")
    .argument('[refs...]', 'library REFs (NAME, NAME:TAG, NAME@N, digest prefix)')
    .requiredOption('--cache <dir>', 'the chunk cache folder')
    .option(
      '--cache-size <size>',
      "bound of the cache folder's size on disk (default 10G); a version that does not fit fails",
    )
    .option('--library <dir>', 'a library folder, or its URL on a web server')
    .option('--remote <url>', 'a library service (strata serve); token from $STRATA_TOKEN')
    .option(
      '--auto',
      "choose the versions from the host's request log (DIR/requests.jsonl that deploy --cache appends): facility images first, then by requests in the window, as `strata simulate --preload` does",
    )
    .option('--log <file>', '--auto: another request log (JSONL, CSV, an NBD --trace); repeat to merge', more, [])
    .option('--idle-capacity <size>', '--auto: bytes that may be fetched now (default: the cache size)')
    .option('--window <days>', '--auto: days of requests counted (default 7)')
    .option('--facility <projects>', '--auto: owner projects of facility images (default facility,system)')
    .option('--no-public', '--auto: do not count public images as facility images')
    .option('--dry-run', '--auto: print the choice, fetch nothing')
    .option('--json', 'machine-readable output')
    .action(async (refs: string[], o: Record<string, unknown>) => {
      const { openDeploySource, ManifestSource, cacheRequestLog, CACHE_DEFAULT_BYTES, ChunkCache } = await import(
        '../../deploy/index.js'
      );
      const cacheBytes = o.cacheSize === undefined ? undefined : parseSize(String(o.cacheSize), 'cache size');
      // one cache for every version named: pinned while they are fetched (none evicts another's chunks)
      const chunkCache = await ChunkCache.open(String(o.cache), cacheBytes ?? CACHE_DEFAULT_BYTES);
      const open = (ref: string) =>
        openDeploySource(ref, {
          library: o.library as string | undefined,
          remote: o.remote as string | undefined,
          chunkCache,
        });
      let auto: Record<string, unknown> | undefined;
      if (o.auto) {
        if (refs.length > 0) throw new StrataError('USAGE', '--auto chooses the versions: give no REF');
        const A = await import('../../analytics/index.js');
        // the host's own log; a host that has deployed nothing yet has none (nothing to choose)
        const own = cacheRequestLog(String(o.cache));
        const logs = (o.log as string[]).length > 0 ? (o.log as string[]) : existsSync(own) ? [own] : [];
        const total = cacheBytes ?? CACHE_DEFAULT_BYTES;
        const idle = o.idleCapacity === undefined ? total : parseSize(String(o.idleCapacity), 'idle capacity');
        const window = o.window === undefined ? undefined : Number(o.window);
        const now = Date.now();
        // only the window's requests count (planPreload): only they are held, in time order, not the whole log
        const runs = A.openRequestLog(logs, { since: now - (window ?? 7) * 86400e3, until: now });
        let log: ImageRequest[];
        try {
          log = [...runs];
        } finally {
          runs.close();
        }
        const facility = {
          projects:
            typeof o.facility === 'string'
              ? o.facility
                  .split(',')
                  .map((x) => x.trim())
                  .filter(Boolean)
              : ['facility', 'system'],
          public: o.public !== false,
        };
        // every candidate's real size and what of it the cache lacks, from its manifest
        const first = A.planPreload(log, { cacheBytes: total, idleBytes: idle, windowDays: window, facility, now });
        const sizes = new Map<string, { bytes: number; missing: number }>();
        const gone: string[] = [];
        for (const e of first.ranked) {
          let src: Awaited<ReturnType<typeof open>>;
          try {
            src = await open(e.ref);
          } catch (err) {
            // a version the log names that the library no longer has (deleted, or another library's)
            if ((err as StrataError).code === 'NOT_FOUND') {
              gone.push(e.ref);
              continue;
            }
            throw err;
          }
          try {
            if (!(src instanceof ManifestSource)) throw new StrataError('USAGE', `${e.ref} is not a library version`);
            const s = await src.cacheShortfall();
            sizes.set(e.ref, { bytes: s.dataBytes, missing: s.missingBytes });
          } finally {
            await src.close();
          }
        }
        const plan = A.planPreload(
          log.filter((r) => sizes.has(`${r.image}@${r.version}`)),
          {
            cacheBytes: total,
            idleBytes: idle,
            windowDays: window,
            facility,
            now,
            sizes: (r) => sizes.get(`${r.image}@${r.version}`) as { bytes: number; missing: number },
          },
        );
        refs = plan.chosen.map((e) => e.ref);
        auto = {
          logs,
          since: new Date(plan.since).toISOString(),
          until: new Date(plan.until).toISOString(),
          windowDays: plan.windowDays,
          cacheBytes: total,
          idleBytes: idle,
          ranked: plan.ranked,
          chosen: refs,
          gone,
        };
        if (!o.json) {
          let t = `${plan.ranked.length} versions requested in the last ${plan.windowDays} days; chosen ${refs.length} (cache ${total} bytes, idle capacity ${idle} bytes):\n`;
          for (const e of plan.ranked)
            t += `  ${refs.includes(e.ref) ? '+' : '-'} ${e.ref}${e.facility ? ' (facility)' : ''}: ${e.requests} requests, ${e.bytes} bytes, ${e.missing} not in the cache\n`;
          for (const g of gone) t += `  ? ${g}: not in the library\n`;
          process.stdout.write(t);
        }
        if (o.dryRun) {
          if (o.json) process.stdout.write(`${JSON.stringify(auto)}\n`);
          return;
        }
      } else if (refs.length === 0) throw new StrataError('USAGE', 'name the versions to preload, or --auto');
      const out: Array<{ ref: string; chunks: number; originBytes: number }> = [];
      await chunkCache.pin();
      for (const ref of refs) {
        const src = await open(ref);
        try {
          if (!(src instanceof ManifestSource)) throw new StrataError('USAGE', `${ref} is not a library version`);
          const r = await src.preload();
          out.push({ ref, ...r });
          if (!o.json)
            process.stdout.write(`${ref}: ${r.chunks} chunks in the cache, ${r.originBytes} bytes fetched\n`);
        } finally {
          await src.close();
        }
      }
      if (o.json) process.stdout.write(`${JSON.stringify(auto ? { ...auto, preloaded: out } : out)}\n`);
    });

  program
    .command('export-index')
    .description(
      'write strata-index.json, so the library folder can be served by any web server (deploy --library URL)',
    )
    .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or ~/.local/share/strata/library)')
    .action(async (o: Record<string, unknown>) => {
      const { Library, exportIndex } = await import('../../library/index.js');
      const lib = await Library.open(o.library as string | undefined, { create: false });
      try {
        const r = await exportIndex(lib);
        process.stdout.write(`${r.file}: ${r.images} images, ${r.versions} versions\n`);
      } finally {
        await lib.close();
      }
    });
}
