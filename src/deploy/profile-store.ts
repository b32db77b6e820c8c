import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import type { BlockMap } from '../blockmap/block-map.js';
import { buildBlockMap } from '../blockmap/build.js';
import {
  loadProfile as loadCatalogProfile,
  nearestProfile,
  saveProfile as saveCatalogProfile,
} from '../catalog/profiles.js';
import { httpGetAll } from '../io/http-source.js';
import { Library } from '../library/library.js';
import { recordVersionProfile } from '../library/profile-record.js';
import {
  parseStaticIndex,
  resolveStatic,
  STATIC_INDEX,
  STATIC_PROFILES,
  staticProfileOf,
} from '../library/static-index.js';
import type { RemoteLibrary } from '../serve/http/client.js';
import { StrataError } from '../util/errors.js';
import type { DeploySource } from './deployer.js';
import { type BootProfile, checkProfile, type ProfilePlan, planProfile } from './profile.js';

export { versionBlockMap } from '../library/profile-record.js';

/**
 * Where profiles live: the catalog (catalog/profiles.ts, table deploy_profiles), so the
 * library service serves them too (GET/PUT/POST /v1/images/NAME/versions/N/profile). A
 * version's deploy uses its own profile, else the nearest earlier version of the same image
 * that has one, else a parent's (the profile of N applies to N+1 through the files it names).
 */

/** Store (replace) the profile of the version it was recorded on. */
export async function saveProfile(lib: Library, p: BootProfile): Promise<void> {
  await saveCatalogProfile(lib.catalog.db, p);
}

/** The profile recorded on exactly this version, if any. */
export async function loadProfile(lib: Library, image: string, number: number): Promise<BootProfile | undefined> {
  return loadCatalogProfile(lib.catalog.db, image, number, lib.dir);
}

/**
 * The profile a deploy of REF uses: the version's own, else the nearest earlier version of
 * the image with one, else the first parent's (one step, no chain walk). Undefined: none.
 */
export async function profileFor(lib: Library, ref: string): Promise<BootProfile | undefined> {
  const v = await lib.catalog.resolve(ref);
  return nearestProfile(lib.catalog.db, v, { where: lib.dir });
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
  const name = opts.traceName ?? (typeof trace === 'string' ? trace : 'trace');
  const chunks = typeof trace === 'string' ? openTraceFile(trace) : trace;
  return recordVersionProfile(lib, v, chunks, name, { save: opts.save, map: opts.map });
}

/** The trace file's bytes as they are read (a missing or odd file: NOT_FOUND naming it). */
export function openTraceFile(file: string): AsyncIterable<Uint8Array> {
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
 * error then), else none. The REF is looked up in the library service (`remote`), a library
 * over plain HTTP (`staticLibrary`: its static index), else the local library.
 */
export async function findProfile(
  spec: string | undefined,
  sourceArg: string,
  opts: { library?: string; sourceIsVersion: boolean; remote?: RemoteLibrary; staticLibrary?: string },
): Promise<BootProfile | undefined> {
  if (spec === 'none') return undefined;
  if (spec !== undefined && existsSync(spec)) return readProfileFile(spec);
  if (spec === undefined && !opts.sourceIsVersion) return undefined;
  const ref = spec ?? sourceArg;
  if (opts.remote) {
    const p = await opts.remote.profile(ref);
    if (!p && spec !== undefined) {
      throw new StrataError('NOT_FOUND', `no boot profile recorded for ${ref} or a version before it`, {
        file: opts.remote.url,
      });
    }
    return p;
  }
  if (opts.staticLibrary !== undefined) {
    const p = await staticLibraryProfile(opts.staticLibrary, ref);
    if (!p && spec !== undefined) {
      throw new StrataError('NOT_FOUND', `no boot profile recorded for ${ref} or a version before it`, {
        file: `${opts.staticLibrary.replace(/\/+$/, '')}/${STATIC_INDEX}`,
      });
    }
    return p;
  }
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

/**
 * The profile of REF in a library served over plain HTTP: its static index names the
 * version's (or the nearest earlier version's) profile file by its sha256, checked here (the
 * web server is not trusted).
 */
export async function staticLibraryProfile(url: string, ref: string): Promise<BootProfile | undefined> {
  const base = url.replace(/\/+$/, '');
  const indexUrl = `${base}/${STATIC_INDEX}`;
  const ix = parseStaticIndex(await httpGetAll(indexUrl), indexUrl);
  const v = resolveStatic(ix, ref);
  const at = staticProfileOf(ix, v.image, v.number);
  if (!at) return undefined;
  const fileUrl = `${base}/${STATIC_PROFILES}/${at.digest}.json`;
  let bytes: Uint8Array;
  try {
    bytes = await httpGetAll(fileUrl);
  } catch (e) {
    throw new StrataError(
      'CORRUPT',
      `the library index names a boot profile of ${at.image}@${at.number} that the server does not give (${(e as Error).message}); rewrite the index with 'strata export-index' where the library lives`,
      { file: fileUrl, structure: 'static index' },
      { cause: e },
    );
  }
  const got = createHash('sha256').update(bytes).digest('hex');
  if (got !== at.digest) {
    throw new StrataError('CORRUPT', `boot profile hashes to ${got}, not ${at.digest}`, {
      file: fileUrl,
      structure: 'boot profile',
    });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new StrataError('CORRUPT', 'profile is not JSON', { file: fileUrl, structure: 'boot profile' });
  }
  return checkProfile(doc, fileUrl);
}

/** The plan of a profile on what a deploy copies: the source's block map built, the profile applied. */
export async function profilePlan(profile: BootProfile, source: DeploySource): Promise<ProfilePlan> {
  return planProfile(profile, await sourceBlockMap(source));
}
