import * as path from 'node:path';
import type { Command } from 'commander';
import { libraryLocation, StrataError } from '../../library/index.js';
import { printJson } from '../output.js';

/**
 * Scale-out verbs: `db migrate` (apply the catalog's versioned schema changes, SQLite or
 * PostgreSQL) and `migrate` (move a library's catalog and chunks to PostgreSQL and S3, or
 * back), verified and resumable.
 */
export function registerScaleCommands(program: Command): void {
  const db = program.command('db').description('the catalog database');
  db.command('migrate')
    .description("apply the catalog's schema migrations not applied yet (SQLite or PostgreSQL)")
    .option('--catalog <url>', "a postgres:// URL (default: $STRATA_CATALOG, else the library's catalog.db)")
    .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or ~/.local/share/strata/library)')
    .option('--json', 'machine-readable output')
    .action(async (o: Record<string, unknown>) => {
      const { migrateCatalogDb, Library } = await import('../../library/index.js');
      let where = (o.catalog as string | undefined) ?? (process.env.STRATA_CATALOG || undefined);
      if (!where) {
        const lib = await Library.open(o.library as string | undefined, { create: false });
        where = lib.places.catalog.startsWith('postgres') ? undefined : lib.places.catalog;
        await lib.close();
        if (!where) throw new StrataError('USAGE', 'the library names a PostgreSQL catalog: give it with --catalog');
      }
      const r = await migrateCatalogDb(where);
      if (o.json) return printJson(r);
      process.stdout.write(
        r.applied.length > 0 ? `applied ${r.applied.join(', ')}\n` : `up to date (${r.all.join(', ')})\n`,
      );
    });

  program
    .command('migrate')
    .description(
      "move a library's catalog and chunks to PostgreSQL and S3 (or back with 'local'), verified; run again to resume",
    )
    .requiredOption('--to <url>', "catalog: postgres://user@host/db, or 'local' (the library's own catalog.db)")
    .requiredOption('--store <url>', "chunks: s3://bucket/prefix, or 'local' (the library's own store/)")
    .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or ~/.local/share/strata/library)')
    .option('--json', 'machine-readable output')
    .action(async (o: Record<string, unknown>) => {
      const { migrateLibrary } = await import('../../library/index.js');
      const dir = libraryLocation(o.library as string | undefined);
      const r = await migrateLibrary(
        path.resolve(dir),
        { catalog: String(o.to), store: String(o.store) },
        {
          progress: (p) => {
            if (!o.json && p.step !== 'objects' && p.step !== 'catalog') process.stderr.write(`strata: ${p.step}\n`);
          },
        },
      );
      if (o.json) return printJson(r);
      process.stdout.write(
        [
          `library ${dir}: catalog ${r.to.catalog}, store ${r.to.store}`,
          `  objects: ${r.copiedObjects} copied (${r.copiedBytes} bytes), ${r.presentObjects} there already, ${r.removedObjects} stale removed`,
          `  rows: ${Object.entries(r.rows)
            .filter(([, n]) => n > 0)
            .map(([t, n]) => `${t} ${n}`)
            .join(', ')}`,
          `  verified: ${r.versions} versions, ${r.blobs} blobs`,
          `  the old catalog and store (${r.from.catalog}, ${r.from.store}) are left as they were`,
          '',
        ].join('\n'),
      );
    });
}
