import type { Command } from 'commander';
import { StrataError } from '../../library/index.js';
import { parseSize } from './convert.js';

/**
 * `preload REF... --cache DIR`: fill a host's chunk cache with versions while it is idle, so
 * a later `deploy --cache DIR` fetches nothing from the source; `export-index`: write the
 * static index that lets a web server serve a library folder to `deploy --library URL`.
 */
export function registerPreloadCommands(program: Command): void {
  program
    .command('preload')
    .description("fill a host's chunk cache with library versions (deploy --cache uses it)")
    .argument('<refs...>', 'library REFs (NAME, NAME:TAG, NAME@N, digest prefix)')
    .requiredOption('--cache <dir>', 'the chunk cache folder')
    .option('--cache-size <size>', 'bound of the cache (default 10G)')
    .option('--library <dir>', 'a library folder, or its URL on a web server')
    .option('--remote <url>', 'a library service (strata serve); token from $STRATA_TOKEN')
    .option('--json', 'machine-readable output')
    .action(async (refs: string[], o: Record<string, unknown>) => {
      const { openDeploySource, ManifestSource } = await import('../../deploy/index.js');
      const out: Array<{ ref: string; chunks: number; originBytes: number }> = [];
      for (const ref of refs) {
        const src = await openDeploySource(ref, {
          library: o.library as string | undefined,
          remote: o.remote as string | undefined,
          cache: String(o.cache),
          cacheBytes: o.cacheSize === undefined ? undefined : parseSize(String(o.cacheSize), 'cache size'),
        });
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
      if (o.json) process.stdout.write(`${JSON.stringify(out)}\n`);
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
