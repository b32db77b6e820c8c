import { existsSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { closeChain } from '../formats/layer.js';
import { openImage } from '../formats/open.js';
import type { DiskImage, OpenOptions } from '../formats/types.js';
import type { FsOpenOptions } from '../fs/types.js';
import type { ByteSource } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import { memoryBudget, memoryShare, SMALL_BUDGET } from '../util/memory.js';
import { holeStatus } from './backing.js';
import type { Library } from './library.js';
import { libraryLocation, MARKER } from './location.js';
import type { RangedSource } from './version-source.js';

/**
 * The one address grammar of every command that reads an image: a TARGET is
 *
 * - `ref:NAME` (also `ref:NAME:TAG`, `ref:NAME@N`, `ref:DIGEST`): a library version, always;
 * - an `http://` or `https://` URL: an image on a web server;
 * - an existing file: that image (a file wins over a library version of the same name; the
 *   caller is told, see `note`);
 * - anything else: a library version (NAME, NAME:TAG, NAME@N, manifest digest prefix) when a
 *   library is given (`--library DIR`) or the default one exists, else a missing file.
 *
 * A path that cannot be a REF (it starts with '/', './', '../' or '~') is always a file, so
 * a mistyped path is reported as a missing file, never as an unknown library version.
 */
export const REF_PREFIX = 'ref:';

export interface TargetOptions {
  /** `--library DIR`: look REFs up there (else $STRATA_LIBRARY, else the per-user default). */
  library?: string;
  /**
   * `--device FILE` (repeatable): the other devices of a file system over several (btrfs
   * RAID), each a target (file, URL or library version) whose one btrfs volume is used.
   * Opened with the target, handed to the file-system readers as `fsOptions.devices`.
   */
  devices?: string[];
  /**
   * A library version: bytes of decoded frames its store keeps at most (Store.limitFrames),
   * for a reader that visits them in order (a block map's walk).
   */
  storeFrameBytes?: number;
  /**
   * A library version: what its file-system readers are opened with besides `--device`'s
   * (small caches for a reader of the whole version: versionPassOptions).
   */
  versionFsOptions?: FsOpenOptions;
}

/**
 * How a reader that goes once through a whole library version (a block map's walk, an
 * extract of its tree) opens it. The version is read through the store, whose read caches
 * take their own shares of the budget (decoded frames a third up to 48 MiB, read scratch an
 * eighth, spare buffers 3/32: memory.ts SHARES) beside the file system's (metadata 3/16,
 * inode tables 1/16), which together asked for more than the budget (issue 22: the
 * 1,000,000-entry version's map stopped at 160 MiB of data where the image's took ~125, its
 * extract finished at 271 MiB peak RSS, and the 200,000-entry version's extract stopped with
 * the memory error at `--memory 64M`). So the file system's caches are small (1/64 of the
 * budget each: the walk reads each directory block and inode once, and a miss is served from
 * the decoded frames behind them; the 200,000-entry version's extract peaked 24 MiB lower at
 * the same CPU).
 *
 * And the decoded frames the store keeps (Store.limitFrames): at a budget of 128 MiB and
 * more, the frames' share (a third, up to 48 MiB): a map's walk goes back and forth between
 * directory blocks and inode tables, and fewer frames thrash at scale (the 1,000,000-entry
 * version with 16 MiB of frames: 183 MiB peak RSS, but 22 GB read from the packs and over 10
 * minutes, load 15-20, where the share took ~3). In a smaller budget, where memory is what
 * was asked for, a quarter of it (8-16 MiB): at the 200,000-entry version and the default
 * budget, 191 frame decodes with the share, 591 with 16 MiB, 3,170 with 8 MiB.
 */
export function versionPassOptions(): Pick<TargetOptions, 'storeFrameBytes' | 'versionFsOptions'> {
  return {
    storeFrameBytes: memoryBudget() <= SMALL_BUDGET ? memoryShare(1 / 4, 8 << 20, 16 << 20) : undefined,
    versionFsOptions: {
      metadataCacheBytes: memoryShare(1 / 64, 1 << 20, 8 << 20),
      inodeCacheBytes: memoryShare(1 / 64, 1 << 20, 4 << 20),
    },
  };
}

export type Target =
  | { kind: 'file'; path: string; note?: string }
  | { kind: 'url'; url: string }
  | { kind: 'ref'; ref: string; library: string /** Given as ref:NAME. */; forced: boolean };

export type RefTarget = Extract<Target, { kind: 'ref' }>;

const isUrl = (s: string) => /^https?:\/\//i.test(s);
const pathOnly = (s: string) => /^(\/|\.\.?\/|~)/.test(s) || s === '.' || s === '..';

/** Whether a library is at `dir` (or the default location). */
function libraryExists(given?: string): boolean {
  return existsSync(path.join(libraryLocation(given), MARKER));
}

/**
 * What `arg` names, without opening anything but the file system's directory entries. A
 * library version is only confirmed when it is opened (see openTargetImage).
 */
export function classifyTarget(arg: string, opts: TargetOptions = {}): Target {
  if (arg.startsWith(REF_PREFIX)) {
    const ref = arg.slice(REF_PREFIX.length);
    if (ref === '') throw new StrataError('USAGE', `'${arg}' names no library version (ref:NAME, ref:NAME@N ...)`);
    return { kind: 'ref', ref, library: libraryLocation(opts.library), forced: true };
  }
  if (isUrl(arg)) return { kind: 'url', url: arg };
  if (existsSync(arg)) {
    const t: Target = { kind: 'file', path: arg };
    if (!pathOnly(arg) && libraryExists(opts.library) && statSync(arg).isFile()) {
      t.note = `'${arg}' is read as the file here; write ref:${arg} for the library version of that name`;
    }
    return t;
  }
  if (!pathOnly(arg) && (opts.library !== undefined || libraryExists())) {
    return { kind: 'ref', ref: arg, library: libraryLocation(opts.library), forced: false };
  }
  throw new StrataError('NOT_FOUND', 'no such file', { file: arg });
}

/** An opened target: the virtual disk and what it was understood as. */
export interface OpenedTarget {
  image: DiskImage;
  target: Target;
  /** A name for messages: the path, the URL, or NAME@N of a version. */
  name: string;
  /**
   * What the file-system readers of this target's volumes are opened with: the `--device`
   * images' btrfs volumes (see fs/open.ts openVolumeFileSystem). Empty without --device.
   */
  fsOptions: FsOpenOptions;
  /** The `--device` images opened with it (closed by closeTarget). */
  deviceImages: DiskImage[];
}

/**
 * Open the `--device` targets: each one's single btrfs volume. The caller closes the
 * returned images (closeChain) when done, also when this throws (nothing is left open then).
 */
export async function openDeviceTargets(
  args: string[],
  openOptions: OpenOptions = {},
  opts: TargetOptions = {},
): Promise<{ images: DiskImage[]; devices: ByteSource[] }> {
  const images: DiskImage[] = [];
  const devices: ByteSource[] = [];
  try {
    for (const arg of args) {
      const t = await openTargetImage(arg, openOptions, { library: opts.library });
      images.push(t.image);
      const { discoverVolumes } = await import('../volumes/discover.js');
      const found = await discoverVolumes(t.image);
      const btrfs = found.volumes.filter((v) => v.content === 'btrfs');
      if (btrfs.length !== 1) {
        throw new StrataError(
          'USAGE',
          btrfs.length === 0
            ? `--device: no btrfs volume in it (volumes: ${found.volumes.map((v) => `${v.id === '' ? '(whole disk)' : v.id} ${v.content ?? 'unknown'}`).join(', ') || 'none'})`
            : `--device: ${btrfs.length} btrfs volumes in it; give an image of one device`,
          { file: t.name },
        );
      }
      devices.push(btrfs[0].source);
    }
    return { images, devices };
  } catch (e) {
    for (const i of images) await closeChain(i).catch(() => {});
    throw e;
  }
}

/**
 * Open a target as a disk image. A library version is served from the store (chunks read
 * on demand); its image's `close()` also closes the library.
 */
export async function openTargetImage(
  arg: string,
  openOptions: OpenOptions = {},
  opts: TargetOptions = {},
): Promise<OpenedTarget> {
  const t = await openTargetAlone(arg, openOptions, opts);
  const fsOptions: FsOpenOptions = t.target.kind === 'ref' ? { ...opts.versionFsOptions } : {};
  if (!opts.devices || opts.devices.length === 0) return { ...t, fsOptions, deviceImages: [] };
  try {
    const d = await openDeviceTargets(opts.devices, openOptions, opts);
    return { ...t, fsOptions: { ...fsOptions, devices: d.devices }, deviceImages: d.images };
  } catch (e) {
    await closeChain(t.image);
    throw e;
  }
}

async function openTargetAlone(
  arg: string,
  openOptions: OpenOptions,
  opts: TargetOptions,
): Promise<{ image: DiskImage; target: Target; name: string }> {
  const target = classifyTarget(arg, opts);
  if (target.kind === 'file') return { image: await openImage(target.path, openOptions), target, name: target.path };
  if (target.kind === 'url') return { image: await openImage(target.url, openOptions), target, name: target.url };
  const lib = await openTargetLibrary(target);
  try {
    if (opts.storeFrameBytes !== undefined) lib.store.limitFrames(opts.storeFrameBytes);
    const v = await resolveTargetVersion(lib, target);
    const image = versionDiskImage(lib, v, await lib.versionSource(v.manifest, `${v.image}@${v.number}`));
    return { image, target, name: image.name };
  } catch (e) {
    await lib.close();
    throw e;
  }
}

/**
 * The library a version target names; a missing one is reported with the argument. The
 * library's code (catalog, store, node:crypto) is loaded here, when a target is a version,
 * not by every command that opens a file (issue 26: start-up of a short convert).
 */
export async function openTargetLibrary(target: RefTarget): Promise<Library> {
  try {
    const { Library } = await import('./library.js');
    return await Library.open(target.library, { create: false });
  } catch (e) {
    const what = target.forced ? 'no library' : 'no such file, and no library';
    throw new StrataError(
      'NOT_FOUND',
      `${what} at ${target.library} to look it up in as a version`,
      { file: target.ref },
      { cause: e },
    );
  }
}

type VersionRow = Awaited<ReturnType<Library['catalog']['resolve']>>;

/** The catalog row of a version target; an unknown one is reported with the argument. */
export async function resolveTargetVersion(lib: Library, target: RefTarget): Promise<VersionRow> {
  try {
    return await lib.catalog.resolve(target.ref);
  } catch (e) {
    if (e instanceof StrataError && e.code === 'NOT_FOUND') {
      const what = target.forced ? 'no such image, tag or version' : 'no such file, and no such image, tag or version';
      throw new StrataError('NOT_FOUND', `${what} in the library at ${lib.dir}`, { file: target.ref }, { cause: e });
    }
    throw e;
  }
}

/** A stored version as a DiskImage (format raw, read from the store); closing it closes `lib`. */
function versionDiskImage(lib: Library, v: VersionRow, src: RangedSource): DiskImage {
  return {
    name: src.name,
    size: src.size,
    format: 'raw',
    subformat: 'library version',
    fileSize: src.size,
    warnings: [],
    read: (o, l) => src.read(o, l),
    readInto: (o, out) => src.readInto(o, out),
    status: async (o, l) => holeStatus(await src.status(o, l)),
    details: () => ({ library: lib.dir, version: `${v.image}@${v.number}`, manifest: v.manifest }),
    close: async () => {
      await src.close();
      await lib.close();
    },
  };
}

/** Close an opened target (its backing chain, or the library of a version). */
export async function closeTarget(t: OpenedTarget): Promise<void> {
  try {
    await closeChain(t.image);
  } finally {
    for (const d of t.deviceImages.splice(0)) await closeChain(d).catch(() => {});
  }
}
