import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import type { BlockMap } from '../blockmap/block-map.js';
import { buildBlockMap } from '../blockmap/build.js';
import { readTraceBatches } from '../blockmap/trace.js';
import type { Db } from '../catalog/db.js';
import { Library } from '../library/library.js';
import { VersionSource } from '../library/version-source.js';
import { StrataError } from '../util/errors.js';
import type { DeploySource } from './deployer.js';
import {
  type BootProfile,
  checkProfile,
  PROFILE_KIND,
  type ProfilePlan,
  ProfileRecorder,
  planProfile,
} from './profile.js';

/**
 * Where profiles live: the catalog, one row per version (table deploy_profiles, created on
 * first use like the inspection tables), the profile as JSON. Why the catalog and not the
 * store: a profile is a fact about a version (like its inspection), replaced when a new
 * boot is recorded, and small; a store blob would need its own root for gc. A version's
 * deploy uses its own profile, else the nearest earlier version of the same image that has
 * one, else a parent's (the profile of N applies to N+1 through the files it names).
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

const ready = new WeakSet<Db>();

async function ensureSchema(db: Db): Promise<void> {
  if (ready.has(db)) return;
  await db.transaction(async (tx) => {
    for (const s of PROFILE_SCHEMA) await tx.run(s);
  });
  ready.add(db);
}

/** Store (replace) the profile of the version it was recorded on. */
export async function saveProfile(lib: Library, p: BootProfile): Promise<void> {
  const db = lib.catalog.db;
  await ensureSchema(db);
  const bytes = p.entries.reduce((n, e) => n + e.length, 0);
  await db.run(
    `INSERT INTO deploy_profiles (image, number, recorded, trace, entries, bytes, data) VALUES (?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (image, number) DO UPDATE SET recorded = excluded.recorded, trace = excluded.trace,
       entries = excluded.entries, bytes = excluded.bytes, data = excluded.data`,
    [p.image, p.number, p.recorded, p.trace, p.entries.length, bytes, JSON.stringify(p)],
  );
}

/** The profile recorded on exactly this version, if any. */
export async function loadProfile(lib: Library, image: string, number: number): Promise<BootProfile | undefined> {
  const db = lib.catalog.db;
  await ensureSchema(db);
  const r = await db.get<{ data: string }>('SELECT data FROM deploy_profiles WHERE image = ? AND number = ?', [
    image,
    number,
  ]);
  if (!r) return undefined;
  let p: unknown;
  try {
    p = JSON.parse(r.data);
  } catch {
    throw new StrataError('CORRUPT', 'stored profile is not JSON', {
      file: `${lib.dir}#${image}@${number}`,
      structure: 'deploy_profiles',
    });
  }
  return checkProfile(p, `${lib.dir}#${image}@${number}`);
}

/**
 * The profile a deploy of REF uses: the version's own, else the nearest earlier version of
 * the image with one, else the first parent's (one step, no chain walk). Undefined: none.
 */
export async function profileFor(lib: Library, ref: string): Promise<BootProfile | undefined> {
  const v = await lib.catalog.resolve(ref);
  const own = await loadProfile(lib, v.image, v.number);
  if (own) return own;
  const db = lib.catalog.db;
  const r = await db.get<{ number: number }>(
    'SELECT number FROM deploy_profiles WHERE image = ? AND number < ? ORDER BY number DESC LIMIT 1',
    [v.image, v.number],
  );
  if (r) return loadProfile(lib, v.image, Number(r.number));
  for (const p of v.parents) {
    const pp = await loadProfile(lib, p.image, p.number);
    if (pp) return pp;
  }
  return undefined;
}

/** The block map of a library version, built from the store (metadata read through its chunks). */
export async function versionBlockMap(lib: Library, manifest: string, name: string): Promise<BlockMap> {
  const m = await lib.layout(manifest);
  const src = new VersionSource(lib.store, m, name);
  try {
    return await buildBlockMap(src);
  } finally {
    await src.close();
  }
}

/** The block map of what a deploy copies, built by reading the source (nothing is written to TARGET). */
export async function sourceBlockMap(source: DeploySource): Promise<BlockMap> {
  return buildBlockMap({
    name: source.name,
    size: source.size,
    read: async (o, l) => {
      const b = Buffer.alloc(Math.max(0, Math.min(l, source.size - o)));
      const n = await source.readInto(o, b);
      return n < b.length ? b.subarray(0, n) : b;
    },
    readInto: (o, out) => source.readInto(o, out),
    status: (o, l) => source.status(o, l),
  });
}

/**
 * `strata profile record REF --trace FILE`: resolve the trace's reads, in order, against the
 * version's block map, and store the working set with the version. `trace` is a path or the
 * trace's text chunks (with `traceName`).
 */
export async function recordProfile(
  lib: Library,
  ref: string,
  trace: string | AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  opts: { traceName?: string; save?: boolean; map?: BlockMap } = {},
): Promise<BootProfile> {
  const v = await lib.catalog.resolve(ref);
  const map = opts.map ?? (await versionBlockMap(lib, v.manifest, `${v.image}@${v.number}`));
  const name = opts.traceName ?? (typeof trace === 'string' ? trace : 'trace');
  const chunks = typeof trace === 'string' ? openTraceFile(trace) : trace;
  const rec = new ProfileRecorder(map);
  for await (const b of readTraceBatches(chunks, name)) rec.addBatch(b);
  if (rec.reads === 0) {
    throw new StrataError('USAGE', `the trace holds no reads (${rec.records} records)`, { file: name });
  }
  const p: BootProfile = {
    kind: PROFILE_KIND,
    version: 1,
    image: v.image,
    number: v.number,
    manifest: v.manifest,
    recorded: new Date().toISOString(),
    trace: name,
    records: rec.records,
    reads: rec.reads,
    diskSize: map.diskSize,
    entries: rec.entries,
  };
  if (opts.save !== false) await saveProfile(lib, p);
  return p;
}

function openTraceFile(file: string): AsyncIterable<Uint8Array> {
  try {
    if (!statSync(file).isFile()) throw new Error('not a regular file');
  } catch (e) {
    throw new StrataError('NOT_FOUND', `cannot read the trace: ${(e as Error).message}`, { file }, { cause: e });
  }
  return createReadStream(file);
}

/** A profile saved as JSON (`strata profile show --json`'s `profile`, or a file written by hand). */
export function readProfileFile(file: string): BootProfile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new StrataError('NOT_FOUND', `cannot read the profile: ${(e as Error).message}`, { file }, { cause: e });
  }
  let p: unknown;
  try {
    p = JSON.parse(text);
  } catch {
    throw new StrataError('CORRUPT', 'profile is not JSON', { file, structure: 'boot profile' });
  }
  return checkProfile(p, file);
}

/**
 * The profile a deploy of `sourceArg` uses. `spec`: 'none' (no profile), an existing file
 * (a profile as JSON), a library REF (that version's profile, or the nearest one before
 * it), or undefined: the source's own REF when it is a library version (no profile is no
 * error then), else none.
 */
export async function findProfile(
  spec: string | undefined,
  sourceArg: string,
  opts: { library?: string; sourceIsVersion: boolean; remote?: string },
): Promise<BootProfile | undefined> {
  if (spec === 'none') return undefined;
  if (spec !== undefined && existsSync(spec)) return readProfileFile(spec);
  if (spec === undefined && !opts.sourceIsVersion) return undefined;
  if (opts.remote !== undefined) {
    // profiles live in a catalog table (deploy_profiles); neither the library service nor a
    // static index serves them yet, and a local library's profile would be another library's
    throw new StrataError(
      'USAGE',
      `--profile ${spec}: a library at ${opts.remote} cannot give its boot profiles (the service has no profile route, strata-index.json lists none); pass a profile file (strata profile show REF --json where the library lives, its "profile") or 'none'`,
      { file: opts.remote },
    );
  }
  const ref = spec ?? sourceArg;
  const lib = await Library.open(opts.library, { create: false });
  try {
    const p = await profileFor(lib, ref);
    if (!p && spec !== undefined) {
      throw new StrataError('NOT_FOUND', `no boot profile recorded for ${ref} or a version before it`, {
        file: lib.dir,
      });
    }
    return p;
  } finally {
    await lib.close();
  }
}

/** The plan of a profile on what a deploy copies: the source's block map built, the profile applied. */
export async function profilePlan(profile: BootProfile, source: DeploySource): Promise<ProfilePlan> {
  return planProfile(profile, await sourceBlockMap(source));
}
