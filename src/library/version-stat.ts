/**
 * `stat` of a path in a stored version, read from the version's disk as the store rebuilds it.
 *
 * The file manifest keeps what listing, reading, diffing and mounting need (type, mode,
 * owner, size, times, chunk digests). Where a file's bytes sit on the disk and its flags are
 * the file system's, so this opens the version's disk (served from the store, nothing
 * copied), finds the volume the manifest came from and asks its file system, exactly as
 * `strata stat` does on an image file (the birth time comes with it, also for versions
 * checked in before manifests kept it).
 */
import { closeChain } from '../formats/layer.js';
import { openFileSystem } from '../fs/open.js';
import { StrataError } from '../util/errors.js';
import { discoverVolumes } from '../volumes/discover.js';
import { versionImage } from './backing.js';
import type { Library } from './library.js';
import { layoutFilesDigest } from './library-verbs.js';
import { lookupPath, type StatRecord, statRecord, volumeDiskOffset } from './listing.js';

export interface VersionStat extends StatRecord {
  /** The volume (its id in the version's layout; "" for a whole-disk file system). */
  volume: string;
  /** Where the volume starts on the version's disk, when it is one window of it. */
  volumeDiskOffset: number | null;
}

export async function versionStat(
  lib: Library,
  v: { image: string; number: number; manifest: string },
  p: string,
  opts: { part?: string; follow?: boolean } = {},
): Promise<VersionStat> {
  const m = await lib.layoutHead(v.manifest);
  const digest = await layoutFilesDigest(lib, v, m, opts.part);
  const lv = m.volumes.find((x) => x.fs?.files === digest);
  if (!lv) throw new StrataError('CORRUPT', `version ${v.image}@${v.number}: no volume holds file manifest ${digest}`);
  const img = await versionImage(lib, v.manifest);
  try {
    const found = await discoverVolumes(img);
    const volume = found.volumes.find((x) => x.id === lv.id);
    if (!volume) {
      throw new StrataError(
        'CORRUPT',
        `version ${v.image}@${v.number}: volume ${lv.id || '(whole disk)'} of its layout is not on its disk`,
      );
    }
    const fs = await openFileSystem(volume.source);
    try {
      const ino = await lookupPath(fs, p, opts.follow ?? false);
      const base = volumeDiskOffset(volume.source, img);
      return { ...(await statRecord(fs, p, ino, base)), volume: lv.id, volumeDiskOffset: base };
    } finally {
      await fs.close?.();
    }
  } finally {
    await closeChain(img);
  }
}
