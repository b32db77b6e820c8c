import { homedir } from 'node:os';
import * as path from 'node:path';

/**
 * Where a library is, without opening it: kept apart from library.ts so that commands that
 * only ask whether a TARGET names a library version (convert, info and map of a file:
 * src/library/target.ts) do not load the catalog, the store and node:crypto with it (issue
 * 26: a short convert is mostly start-up).
 */

/** The file that marks a directory as a library. */
export const MARKER = 'strata-library.json';

/** `--library DIR`, else $STRATA_LIBRARY, else $XDG_DATA_HOME/strata/library (~/.local/share/strata/library). */
export function libraryLocation(given?: string): string {
  if (given) return path.resolve(given);
  if (process.env.STRATA_LIBRARY) return path.resolve(process.env.STRATA_LIBRARY);
  const data = process.env.XDG_DATA_HOME || path.join(homedir(), '.local', 'share');
  return path.join(data, 'strata', 'library');
}
