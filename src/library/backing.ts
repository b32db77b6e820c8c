import type { DiskImage } from '../formats/types.js';
import { type Extent, pushExtent } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';
import type { RangedSource } from './version-source.js';

/**
 * How a qcow2 overlay records a library version as its backing file: the backing file
 * name is `strata-library:<manifest digest>` (64 hex digits, the version's layout
 * manifest), backing format `raw`. Strata resolves it back through the library it is
 * given (`strata checkin OVERLAY --library DIR`); qemu does not know the protocol and
 * cannot open it, so qemu tools look at such an overlay alone, e.g.
 * `qemu-img check 'json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"OVERLAY"}}'`.
 */
export const LIBRARY_BACKING_PREFIX = 'strata-library:';

export function libraryBackingName(manifestDigest: string): string {
  return `${LIBRARY_BACKING_PREFIX}${manifestDigest}`;
}

/** The manifest digest a backing name refers to, or undefined when it is not a library reference. */
export function parseLibraryBacking(name: string, file?: string): string | undefined {
  if (!name.startsWith(LIBRARY_BACKING_PREFIX)) return undefined;
  const digest = name.slice(LIBRARY_BACKING_PREFIX.length);
  if (!/^[0-9a-f]{64}$/.test(digest)) {
    throw new StrataError('CORRUPT', `library backing reference '${name}' is not a manifest digest`, {
      file,
      structure: 'backing file name',
    });
  }
  return digest;
}

/**
 * A stored version's source as the status the NBD server and overlays want: what the
 * store holds is `data`, the rest (free space skipped at check-in, or never written) is a
 * hole (`unallocated`, reads as zeros).
 */
export function holeStatus(extents: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) pushExtent(out, e.offset, e.length, e.kind === 'zero' ? 'unallocated' : e.kind);
  return out;
}

/** The version whose layout manifest is `digest`, as a DiskImage (format raw) a qcow2 overlay can back onto. */
export async function versionImage(lib: Library, digest: string, file?: string): Promise<DiskImage> {
  let src: RangedSource;
  try {
    src = await lib.versionSource(digest, `${lib.dir}#${digest.slice(0, 12)}`);
  } catch (e) {
    throw new StrataError(
      'NOT_FOUND',
      `backing version (manifest ${digest}) is not in the library at ${lib.dir}: ${(e as Error).message}`,
      { file, structure: 'backing file name' },
      { cause: e },
    );
  }
  return versionDiskImage(src);
}

/** A version's source (local store or a library service's chunks) as a raw DiskImage to back an overlay. */
export function versionDiskImage(src: RangedSource): DiskImage {
  return {
    name: src.name,
    size: src.size,
    format: 'raw',
    fileSize: src.size,
    warnings: [],
    read: (o, l) => src.read(o, l),
    readInto: (o, out) => src.readInto(o, out),
    status: async (o, l) => holeStatus(await src.status(o, l)),
    close: () => src.close(),
  };
}
