import { createHash } from 'node:crypto';
import type { VersionRow } from '../catalog/catalog.js';
import {
  deleteInspection,
  getInspection,
  putInspection,
  type StoredFile,
  type StoredRoot,
  uninspected,
} from '../catalog/inspection.js';
import type { FsOpenOptions } from '../fs/types.js';
import type { OsInspection } from '../inspect/types.js';
import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';
import type { FileEntry } from './manifest.js';

/**
 * Inspection of stored versions: check-in calls `recordInspection` on the new version, and
 * `reinspect` re-runs it on stored versions (after a Strata upgrade). The version is read
 * back through its VersionSource (chunks on demand), so check-in and reinspect see the
 * same bytes; the file index comes from the version's file manifests.
 */
export const INSPECTOR_VERSION = 'strata-inspect/1';

export interface RecordedInspection {
  ref: string;
  roots: OsInspection[];
  warnings: string[];
  inspected: string;
}

const storedFile = (e: FileEntry): StoredFile => ({
  path: e.path,
  type: e.type,
  size: e.type === 'dir' ? 0 : e.size,
  digest: e.digest ?? null,
});

function storedRoot(r: OsInspection): StoredRoot {
  return {
    root: r.root,
    osType: r.osType,
    distro: r.distro,
    productName: r.productName,
    versionMajor: r.versionMajor,
    versionMinor: r.versionMinor,
    arch: r.arch,
    hostname: r.hostname,
    packageFormat: r.packageFormat,
    packageManager: r.packageManager,
    initSystem: r.initSystem,
    packages: r.packages,
    users: r.users,
    data: r as unknown as Record<string, unknown>,
  };
}

/** Inspect a stored version and keep the result (and its file index) in the catalog. */
export async function recordInspection(
  lib: Library,
  v: VersionRow,
  fsOptions: FsOpenOptions = {},
): Promise<RecordedInspection> {
  // the readers are loaded here, not with this module: diff and search only read stored results
  const [{ inspectVolumes }, { discoverVolumes }] = await Promise.all([
    import('../inspect/inspect.js'),
    import('../volumes/discover.js'),
  ]);
  const name = `${v.image}@${v.number}`;
  // a layout in parts is read a part at a time, as the reads need them (not the whole ~100 MB of a million files)
  const src = await lib.versionSource(v.manifest, name);
  const layout = src.layout;
  const warnings: string[] = [];
  let roots: OsInspection[] = [];
  try {
    const found = await discoverVolumes(src);
    warnings.push(...found.warnings);
    const r = await inspectVolumes(found.volumes, name, { diskId: found.diskId, fsOptions });
    roots = r.roots;
    warnings.push(...r.warnings);
  } catch (e) {
    if (!(e instanceof StrataError)) throw e;
    warnings.push(`${name}: ${e.message}`);
  } finally {
    await src.close?.();
  }
  const fileSets = [];
  for (const vol of layout.volumes) {
    if (!vol.fs) continue;
    const digest = vol.fs.files;
    // streamed from the manifest (one part at a time), never all entries at once
    fileSets.push({
      volume: vol.id,
      files: digest,
      entries: async function* () {
        for await (const e of lib.fileEntries(digest)) yield storedFile(e);
      },
    });
  }
  const inspected = new Date().toISOString();
  await putInspection(lib.catalog.db, {
    image: v.image,
    number: v.number,
    inspected,
    strataVersion: INSPECTOR_VERSION,
    warnings: warnings.slice(0, 1000),
    roots: roots.map(storedRoot),
    fileSets,
  });
  return { ref: name, roots, warnings, inspected };
}

/**
 * The stored inspection of a version (inspecting it first when it has none, e.g. a version
 * checked in before inspection was stored, or with `refresh`).
 */
export async function versionInspection(
  lib: Library,
  ref: string,
  opts: { refresh?: boolean } = {},
): Promise<{ ref: string; inspected: string; strataVersion: string; warnings: string[]; roots: OsInspection[] }> {
  const v = await lib.catalog.resolve(ref);
  let got = opts.refresh ? undefined : await getInspection(lib.catalog.db, v.image, v.number);
  if (!got) {
    await recordInspection(lib, v);
    got = await getInspection(lib.catalog.db, v.image, v.number);
    if (!got)
      throw new StrataError('IO', `inspection of ${v.image}@${v.number} was not stored`, { structure: 'catalog' });
  }
  return {
    ref: `${v.image}@${v.number}`,
    inspected: got.inspected,
    strataVersion: got.strataVersion,
    warnings: got.warnings,
    roots: got.roots as unknown as OsInspection[],
  };
}

/**
 * Re-run inspection on stored versions: `ref` alone, else every active version
 * (`missingOnly`: only those with no stored inspection).
 */
export async function reinspect(
  lib: Library,
  opts: { ref?: string; missingOnly?: boolean; onVersion?: (r: RecordedInspection) => void } = {},
): Promise<RecordedInspection[]> {
  let targets: VersionRow[];
  if (opts.ref) targets = [await lib.catalog.resolve(opts.ref)];
  else if (opts.missingOnly) {
    targets = [];
    for (const k of await uninspected(lib.catalog.db)) {
      const v = await lib.catalog.version(k.image, k.number);
      if (v) targets.push(v);
    }
  } else {
    targets = [];
    for (const img of await lib.catalog.images()) targets.push(...(await lib.catalog.versions(img.name)));
  }
  const out: RecordedInspection[] = [];
  for (const v of targets) {
    const r = await recordInspection(lib, v);
    opts.onVersion?.(r);
    out.push(r);
  }
  return out;
}

/** Forget a version's inspection (its rows go; the version itself is untouched). */
export async function forgetInspection(lib: Library, image: string, number: number): Promise<void> {
  await deleteInspection(lib.catalog.db, image, number);
}

/** sha256 hex of a base64 xattr value (how the inspect layer's FileRecord names xattrs). */
export const xattrDigest = (b64: string) => createHash('sha256').update(Buffer.from(b64, 'base64')).digest('hex');

/** Check-in's hook: inspect the new version; a failure is a warning of the check-in, never its failure. */
export async function inspectAfterCheckin(
  lib: Library,
  v: VersionRow,
  warnings: string[],
  fsOptions: FsOpenOptions = {},
): Promise<void> {
  try {
    const r = await recordInspection(lib, v, fsOptions);
    warnings.push(...r.warnings.map((w) => `inspect: ${w}`));
  } catch (e) {
    if (!(e instanceof StrataError)) throw e;
    warnings.push(`inspect: ${e.message}`);
  }
}
