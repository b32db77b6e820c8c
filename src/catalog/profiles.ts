import { StrataError } from '../util/errors.js';
import type { Db } from './db.js';

/**
 * Boot working-set profiles as the catalog keeps them (issue 16 item 4): one row per version
 * (table deploy_profiles), the profile as JSON. They live here, beside the versions, so that
 * every face of a library serves them: the CLI on a local library, the library service
 * (GET/PUT/POST .../profile) for `--remote`, whatever the catalog's database (SQLite or
 * PostgreSQL: portable SQL only, see db.ts).
 *
 * A profile is a fact about a version (like its inspection), replaced when a new boot is
 * recorded, and small; a store blob would need its own root for gc.
 *
 * What a profile means (how it is recorded from a trace and applied to another version) is
 * the library's and deploy's business (library/profile-record.ts, deploy/profile.ts); this
 * module holds its shape and checks it, so whoever stores one (a PUT to the service) can
 * refuse a malformed one.
 */
export const PROFILE_SCHEMA = [
  `CREATE TABLE IF NOT EXISTS deploy_profiles (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     recorded TEXT NOT NULL,
     trace TEXT NOT NULL,
     entries BIGINT NOT NULL,
     bytes BIGINT NOT NULL,
     data TEXT NOT NULL,
     PRIMARY KEY (image, number))`,
];

export const PROFILE_KIND = 'strata.profile';

export interface ProfileEntry {
  kind: string;
  volume?: string;
  path?: string;
  inode?: number;
  /** file, directory, journal: offset inside the object where the range starts. */
  fileOffset?: number;
  detail?: string;
  /** Disk offset on the recorded version. */
  disk: number;
  length: number;
}

export interface BootProfile {
  kind: typeof PROFILE_KIND;
  version: 1;
  /** The version it was recorded on. */
  image: string;
  number: number;
  manifest: string;
  recorded: string;
  /** Name of the trace file it was made from. */
  trace: string;
  /** Trace records read, and of them the reads that counted (others: writes, flushes ...). */
  records: number;
  reads: number;
  diskSize: number;
  entries: ProfileEntry[];
}

/** Entries a profile may hold (a boot of a big desktop image reads some 10^5 distinct ranges). */
export const MAX_PROFILE_ENTRIES = 2_000_000;

/** Check a profile read back (from the catalog, a file, a request): the shape planProfile relies on. */
export function checkProfile(p: unknown, where: string): BootProfile {
  const bad = (why: string) => new StrataError('CORRUPT', why, { file: where, structure: 'boot profile' });
  const x = p as BootProfile;
  if (!x || typeof x !== 'object' || x.kind !== PROFILE_KIND || x.version !== 1) {
    throw bad(`not a ${PROFILE_KIND} (version 1)`);
  }
  if (typeof x.image !== 'string' || !Number.isSafeInteger(x.number) || x.number < 1) {
    throw bad('no version (image, number)');
  }
  if (!Array.isArray(x.entries)) throw bad('no entries');
  if (x.entries.length > MAX_PROFILE_ENTRIES) throw bad(`${x.entries.length} entries (at most ${MAX_PROFILE_ENTRIES})`);
  x.entries.forEach((e, i) => {
    if (
      !e ||
      typeof e.kind !== 'string' ||
      !Number.isSafeInteger(e.disk) ||
      e.disk < 0 ||
      !Number.isSafeInteger(e.length) ||
      e.length <= 0 ||
      (e.fileOffset !== undefined && (!Number.isSafeInteger(e.fileOffset) || e.fileOffset < 0)) ||
      (e.path !== undefined && typeof e.path !== 'string') ||
      (e.volume !== undefined && typeof e.volume !== 'string')
    ) {
      throw bad(`entry ${i} is malformed`);
    }
  });
  return x;
}

/** Store (replace) the profile of the version it was recorded on. */
export async function saveProfile(db: Db, p: BootProfile): Promise<void> {
  const bytes = p.entries.reduce((n, e) => n + e.length, 0);
  await db.run(
    `INSERT INTO deploy_profiles (image, number, recorded, trace, entries, bytes, data) VALUES (?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (image, number) DO UPDATE SET recorded = excluded.recorded, trace = excluded.trace,
       entries = excluded.entries, bytes = excluded.bytes, data = excluded.data`,
    [p.image, p.number, p.recorded, p.trace, p.entries.length, bytes, JSON.stringify(p)],
  );
}

/** The profile recorded on exactly this version, if any (`where` names the library in errors). */
export async function loadProfile(
  db: Db,
  image: string,
  number: number,
  where = 'catalog',
): Promise<BootProfile | undefined> {
  const r = await db.get<{ data: string }>('SELECT data FROM deploy_profiles WHERE image = ? AND number = ?', [
    image,
    number,
  ]);
  if (!r) return undefined;
  const name = `${where}#${image}@${number}`;
  let p: unknown;
  try {
    p = JSON.parse(r.data);
  } catch {
    throw new StrataError('CORRUPT', 'stored profile is not JSON', { file: name, structure: 'deploy_profiles' });
  }
  return checkProfile(p, name);
}

/**
 * The profile a deploy of a version uses: the version's own, else the nearest earlier version
 * of the image with one, else the first parent's that has one (one step, no chain walk).
 * `mayUse(image)`: whether another image's profile may be given (the service asks whether
 * the caller may read that image); the version's own image is always allowed.
 */
export async function nearestProfile(
  db: Db,
  v: { image: string; number: number; parents: Array<{ image: string; number: number }> },
  opts: { where?: string; mayUse?: (image: string) => Promise<boolean> } = {},
): Promise<BootProfile | undefined> {
  const own = await loadProfile(db, v.image, v.number, opts.where);
  if (own) return own;
  const r = await db.get<{ number: number }>(
    'SELECT number FROM deploy_profiles WHERE image = ? AND number < ? ORDER BY number DESC LIMIT 1',
    [v.image, v.number],
  );
  if (r) return loadProfile(db, v.image, Number(r.number), opts.where);
  for (const p of v.parents) {
    if (p.image !== v.image && opts.mayUse && !(await opts.mayUse(p.image))) continue;
    const pp = await loadProfile(db, p.image, p.number, opts.where);
    if (pp) return pp;
  }
  return undefined;
}
