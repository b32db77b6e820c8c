import { StrataError } from '../util/errors.js';
import { sqliteDatabaseClass } from '../util/sqlite.js';
import { readBdbHash } from './rpm-bdb.js';
import { decodeRpmHeader, RPMTAG } from './rpm-header.js';
import type { Package } from './types.js';

const WANT = [RPMTAG.NAME, RPMTAG.VERSION, RPMTAG.RELEASE, RPMTAG.EPOCH, RPMTAG.ARCH];

/** A decoded header as a package (undefined when it has no name). */
function toPackage(h: Map<number, string | number>): Package | undefined {
  const name = h.get(RPMTAG.NAME);
  if (typeof name !== 'string' || name === '') return undefined;
  const str = (t: number) => {
    const v = h.get(t);
    return typeof v === 'string' ? v : '';
  };
  const epoch = h.get(RPMTAG.EPOCH);
  return {
    name,
    epoch: typeof epoch === 'number' ? epoch : 0,
    version: str(RPMTAG.VERSION),
    release: str(RPMTAG.RELEASE),
    arch: str(RPMTAG.ARCH),
  };
}

/**
 * Packages of an rpm >= 4.16 sqlite database (rpmdb.sqlite: table Packages(hnum, blob)),
 * opened from its bytes in memory (better-sqlite3 deserializes a Buffer; nothing is
 * written anywhere). A blob that does not decode is skipped with a warning.
 */
export async function readRpmSqlite(
  bytes: Uint8Array,
  file: string,
  warn: (m: string) => void = () => {},
): Promise<Package[]> {
  const Database = sqliteDatabaseClass();
  let db: InstanceType<typeof Database>;
  // A private copy: rpm keeps its database in WAL mode (header bytes 18 and 19 = 2), which
  // SQLite cannot open from memory; marking the copy as a rollback-journal database (1, 1)
  // reads the same pages. Changes still in a -wal file are not seen (the caller warns).
  const copy = Buffer.from(bytes);
  if (copy.length >= 100 && copy[18] === 2 && copy[19] === 2) {
    copy[18] = 1;
    copy[19] = 1;
  }
  try {
    db = new Database(copy, { readonly: true });
  } catch (e) {
    throw new StrataError('CORRUPT', `not an SQLite database: ${(e as Error).message}`, {
      file,
      structure: 'rpmdb.sqlite',
    });
  }
  try {
    let rows: Array<{ hnum: number; blob: Uint8Array }>;
    try {
      rows = db.prepare('SELECT hnum, blob FROM Packages ORDER BY hnum').all() as typeof rows;
    } catch (e) {
      throw new StrataError('CORRUPT', `no readable Packages table: ${(e as Error).message}`, {
        file,
        structure: 'rpmdb.sqlite Packages',
      });
    }
    const out: Package[] = [];
    for (const r of rows) {
      try {
        const p = toPackage(decodeRpmHeader(r.blob, `rpm header ${r.hnum}`, WANT));
        if (p) out.push(p);
        else warn(`${file}: rpm header ${r.hnum} has no name, skipped`);
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        warn(`${file}: ${e.message}, skipped`);
      }
    }
    return out;
  } finally {
    db.close();
  }
}

/**
 * Packages of an rpm < 4.16 Berkeley DB database (/var/lib/rpm/Packages, a hash keyed by
 * the 4-byte header instance; instance 0 is rpm's counter, not a package).
 */
export function readRpmBdb(bytes: Uint8Array, file: string, warn: (m: string) => void = () => {}): Package[] {
  const out: Package[] = [];
  for (const r of readBdbHash(bytes, file, warn)) {
    if (r.key.length !== 4) continue;
    const hnum = new DataView(r.key.buffer, r.key.byteOffset, 4).getUint32(0, true);
    if (hnum === 0 || r.value.length <= 8) continue;
    try {
      const p = toPackage(decodeRpmHeader(r.value, `rpm header ${hnum}`, WANT));
      if (p) out.push(p);
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      warn(`${file}: ${e.message}, skipped`);
    }
  }
  return out;
}
