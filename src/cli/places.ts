import type { Command } from 'commander';

/**
 * `--catalog`, `--store`, `--cache-dir`: where a library's catalog and chunks live when not
 * in its directory (PostgreSQL, S3; see LibraryPlaces in src/library/library.ts).
 */
export function addPlaceOptions(cmd: Command): Command {
  return cmd
    .option(
      '--catalog <url>',
      "catalog in PostgreSQL: postgres://user@host/db (default: $STRATA_CATALOG, else the library's own)",
    )
    .option('--store <url>', "chunks in S3: s3://bucket/prefix (default: $STRATA_STORE, else the library's own)")
    .option(
      '--cache-dir <dir>',
      'read-through cache of an S3 store (default: $STRATA_CACHE_DIR, else cache/ in the library)',
    );
}

export function placesFrom(o: Record<string, unknown>): { catalog?: string; store?: string; cacheDir?: string } {
  const out: { catalog?: string; store?: string; cacheDir?: string } = {};
  if (typeof o.catalog === 'string') out.catalog = o.catalog;
  if (typeof o.store === 'string') out.store = o.store;
  if (typeof o.cacheDir === 'string') out.cacheDir = o.cacheDir;
  return out;
}
