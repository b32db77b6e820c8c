import { openVolumeFileSystem } from '../fs/open.js';
import type { FileExtent, FileSystem, FsOpenOptions, Inode } from '../fs/types.js';
import { walk } from '../fs/walk.js';
import type { ByteSource } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import { checkMemory, isMemoryLimit, memoryShare } from '../util/memory.js';
import { type DiscoverResult, discoverVolumes } from '../volumes/discover.js';
import type { Volume } from '../volumes/types.js';
import { BlockMap, type MapVolume } from './block-map.js';
import { CLAIM_BYTES, Claims, MAX_VOLUMES, type StringStore, translate } from './claims.js';
import { type Kind, kindOfRegion } from './kinds.js';
import { type RecordSink, resolveClaims, sweepInSteps } from './resolve.js';
import { volumeLayout } from './volume-layout.js';

export interface BuildOptions {
  /** Volumes found already (saves a second discovery). */
  discovered?: DiscoverResult;
  /** Open a volume's file system (default: openVolumeFileSystem with fsOptions); undefined when it holds none. */
  openFs?: (volume: Volume) => Promise<FileSystem | undefined>;
  /** What the volumes' file systems are opened with (the other devices of a btrfs RAID; see openVolumeFileSystem). */
  fsOptions?: FsOpenOptions;
}

/** Content names that are not file systems (as probeContent gives them). */
const NOT_FS = new Set(['LVM2_member', 'swap', 'swsuspend', 'crypto_LUKS', 'jbd', 'gpt', 'mbr', 'lvm2-pv']);

/**
 * Build the block map of a whole virtual disk from the volumes layer (discoverVolumes and
 * its table parsers) and the FileSystem interface only (walk, extents, metadataRegions,
 * allocation, info), so every file system behind that interface is mapped without a
 * change here. Problems that leave part of the disk unexplained (a volume whose file
 * system cannot be opened, an unreadable directory) become warnings, and those bytes keep
 * the coarser owner below them (`volume`, `allocated`).
 */
export async function buildBlockMap(disk: ByteSource, opts: BuildOptions = {}): Promise<BlockMap> {
  const warnings: string[] = [];
  const claims = new Claims(disk.size);
  try {
    const volumes = await gatherClaims(disk, opts, claims, warnings);
    const cols = resolveClaims(claims, warnings);
    return new BlockMap(disk.size, cols, claims.names.all(), volumes, warnings);
  } finally {
    claims.dispose();
  }
}

/** A record of a streamed map (see BlockMap for the fields; `name` is an id for `StreamedMap.name`). */
export interface StreamedMap {
  diskSize: number;
  volumes: MapVolume[];
  warnings: string[];
  /** The name (path or detail) of an id a record carries. */
  name(id: number): string;
  /** How many names there are (ids 0 .. nameCount-1; the saved form lists them all). */
  nameCount(): number;
}

/**
 * The block map of a whole virtual disk, as buildBlockMap makes it, but handed record by
 * record to `sink` in disk order instead of kept (issue 22: a tree of millions of files).
 * Memory is bounded by the budget (`--memory`): past a share of it the claims are sorted
 * into runs in a scratch directory (under the system's temporary directory, removed at the
 * end) and merged from there, and the names (paths) are kept in a scratch file too.
 * `begin` is called once the claims are in (volumes and warnings known), before the first
 * record.
 */
export async function streamBlockMap(
  disk: ByteSource,
  begin: (m: StreamedMap) => void,
  sink: RecordSink,
  opts: BuildOptions & {
    drain?: () => Promise<void>;
    /** Called after the last record, while `name` still answers (blockmap --save writes the names then). */
    end?: (m: StreamedMap) => void | Promise<void>;
    /** Claims held before a run is spilled, name bytes kept in memory (default: a tenth of the budget each). */
    maxClaims?: number;
    maxNameBytes?: number;
  } = {},
): Promise<StreamedMap> {
  const warnings: string[] = [];
  // 52 bytes a claim held: a tenth of the budget in claims, another tenth in names
  const claims = new Claims(disk.size, {
    maxClaims: opts.maxClaims ?? Math.floor(memoryShare(0.1, 1 << 20, 1 << 30) / CLAIM_BYTES),
    maxNameBytes: opts.maxNameBytes ?? memoryShare(0.1, 1 << 20, 1 << 30),
  });
  try {
    const volumes = await gatherClaims(disk, opts, claims, warnings);
    const m: StreamedMap = {
      diskSize: disk.size,
      volumes,
      warnings,
      name: (id) => claims.names.get(id),
      nameCount: () => claims.names.count,
    };
    begin(m);
    for (const _ of sweepInSteps(claims, warnings, sink, 4096)) {
      checkMemory('writing the block map');
      if (opts.drain) await opts.drain();
    }
    await opts.end?.(m);
    return m;
  } finally {
    claims.dispose();
  }
}

async function gatherClaims(
  disk: ByteSource,
  opts: BuildOptions,
  claims: Claims,
  warnings: string[],
): Promise<MapVolume[]> {
  const found = opts.discovered ?? (await discoverVolumes(disk));
  warnings.push(...found.warnings);
  if (found.volumes.length > MAX_VOLUMES - 1) {
    throw new StrataError('LIMIT', `${found.volumes.length} volumes is more than a block map holds`, {
      file: disk.name,
    });
  }
  claims.add(0, disk.size, 'unpartitioned');
  const layout = await volumeLayout(disk, found, warnings);
  for (const s of layout.structures) {
    const volume = s.volumeId === undefined ? undefined : found.volumes.findIndex((v) => v.id === s.volumeId);
    claims.add(s.offset, s.length, s.kind, {
      name: s.detail,
      volume: volume !== undefined && volume >= 0 ? volume : undefined,
    });
  }
  const volumes: MapVolume[] = [];
  const open = opts.openFs ?? ((v: Volume) => defaultOpen(v, opts.fsOptions));
  for (const [index, v] of found.volumes.entries()) {
    const mv: MapVolume = { id: v.id, scheme: v.scheme, type: v.type };
    if (v.content) mv.content = v.content;
    volumes.push(mv);
    if (v.size === 0 || v.flags?.includes('extended') || v.content === 'LVM2_member') continue;
    const runs = layout.runs.get(v.id);
    const label = v.id === '' ? 'the whole disk' : `volume ${v.id}`;
    if (!runs) {
      warnings.push(`${label}: not mapped (its bytes are not a linear range of the disk)`);
      continue;
    }
    const put = (offset: number, length: number, kind: Kind, f: PutFields = {}) => {
      const base = f.objectOffset ?? 0;
      translate(runs, offset, length, (d, len, skip) =>
        claims.add(d, len, kind, { ...f, volume: index, objectOffset: base + skip }),
      );
    };
    put(0, v.size, 'volume', { name: v.content ?? 'unknown content' });
    let fs: FileSystem | undefined;
    try {
      fs = await open(v);
    } catch (e) {
      if (!(e instanceof StrataError) || isMemoryLimit(e)) throw e;
      warnings.push(`${label}: ${e.message}`);
    }
    if (!fs) continue;
    try {
      await claimFileSystem(fs, mv, put, claims.names, warnings, label);
    } catch (e) {
      if (!(e instanceof StrataError) || isMemoryLimit(e)) throw e;
      warnings.push(`${label}: ${e.message}`);
    } finally {
      await fs.close?.();
    }
  }
  return volumes;
}

async function defaultOpen(v: Volume, fsOptions: FsOpenOptions = {}): Promise<FileSystem | undefined> {
  if (!v.content || NOT_FS.has(v.content)) return undefined;
  return openVolumeFileSystem(v.source, fsOptions);
}

interface PutFields {
  ino?: number;
  name?: string;
  nameOf?: () => number;
  objectOffset?: number;
  shared?: boolean;
}

type Put = (offset: number, length: number, kind: Kind, f?: PutFields) => void;

/**
 * A file system's claims, in volume offsets: free space under everything, the allocated
 * ranges over it, then the tree (directories and file data, by path) and the metadata
 * regions the reader reports.
 */
async function claimFileSystem(
  fs: FileSystem,
  mv: MapVolume,
  put: Put,
  names: StringStore,
  warnings: string[],
  label: string,
): Promise<void> {
  const info = await fs.info();
  mv.fs = info.kind;
  mv.blockSize = fs.blockSize;
  const bs = fs.blockSize;
  put(0, Math.min(info.totalBytes, fs.volume.size), 'free');
  for (const r of await fs.allocation()) put(r.offset, r.length, 'allocated');

  // The tree and the metadata regions are read concurrently (both wait on reads most of
  // the time); the tree is claimed as it is walked (in walk order, each item dropped once
  // claimed), the regions after it, so ties resolve the same way every time.
  const dirs = new Set<number>();
  const [, regions] = await Promise.all([
    walkTree(fs, warnings, label, (t) => {
      // one name id for all of an item's extents (paths are unique: each inode is walked once)
      // (stored at its first non-empty claim, as interning did)
      let id = -1;
      const nameOf = () => (id < 0 ? (id = names.add(t.path)) : id);
      for (const e of t.extents) claimExtent(put, bs, t.ino, nameOf, t.kind, e);
      if (t.kind === 'directory') dirs.add(t.ino);
    }),
    collect(fs.metadataRegions()),
  ]);

  const journals = new Set<number>();
  for (const r of regions) {
    const m = kindOfRegion(r.kind, r.detail);
    if (m.kind === 'directory' && r.ino !== undefined && dirs.has(r.ino)) continue;
    if (m.kind === 'journal' && r.ino !== undefined) {
      journals.add(r.ino);
      continue;
    }
    if (m.kind === 'inode-table' && r.inodes) {
      mv.inodeSize = r.inodes.size;
      put(r.offset, r.length, m.kind, { ino: r.inodes.first, name: r.detail });
      continue;
    }
    const detail = [m.detail, r.detail].filter((x) => x !== undefined && x !== `inode ${r.ino}`).join(', ');
    put(r.offset, r.length, m.kind, { ino: r.ino, name: detail === '' ? undefined : detail });
  }
  // the journal by its extents, so each piece knows its offset inside the journal
  for (const j of journals) {
    const nameOf = () => names.intern('internal journal');
    for await (const e of fs.extents(await fs.inode(j))) claimExtent(put, bs, j, nameOf, 'journal', e);
  }
}

function claimExtent(put: Put, bs: number, ino: number, nameOf: () => number, kind: Kind, e: FileExtent): void {
  if (e.inline || e.device !== undefined) return; // inside metadata, or on another device
  let len = e.diskLength ?? e.length;
  if (!e.encoded) len = Math.ceil(len / bs) * bs;
  put(e.volumeOffset, len, kind, { ino, nameOf, objectOffset: e.fileOffset, shared: e.shared });
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

interface TreeItem {
  ino: number;
  path: string;
  kind: 'file' | 'directory';
  extents: FileExtent[];
  /** Its extents are all in (or could not be read). */
  ready: boolean;
}

/** Most extent lists asked for at once while walking. */
const EXTENT_CONCURRENCY = 16;

/** Items walked whose extents are not all claimed yet: past this, the walk waits for the oldest. */
const MAX_QUEUED = 256;

/**
 * Every directory and file (regular or symlink) reachable from the root, each inode once
 * (the first path in walk order: names sorted per directory), with its extents, handed to
 * `claim` in walk order. Extent lists are fetched a few at a time while the walk goes on;
 * an item is handed over (and forgotten) as soon as it and every item before it are
 * complete, so memory follows the queue, not the tree.
 */
async function walkTree(
  fs: FileSystem,
  warnings: string[],
  label: string,
  claim: (item: TreeItem) => void,
): Promise<void> {
  const queue: Array<{ item: TreeItem; done: Promise<void> }> = [];
  let head = 0;
  const handOver = () => {
    while (head < queue.length && queue[head].item.ready) claim(queue[head++].item);
    if (head > 1024 && head * 2 > queue.length) {
      queue.splice(0, head);
      head = 0;
    }
  };
  let errors = 0;
  const onError = (err: StrataError, path: string) => {
    if (++errors <= 20) warnings.push(`${label}: ${path}: ${err.message}`);
  };
  const pending = new Set<Promise<void>>();
  const fetch = (ino: Inode, item: TreeItem) => {
    const p = (async () => {
      try {
        for await (const e of fs.extents(ino)) item.extents.push(e);
      } catch (e) {
        if (!(e instanceof StrataError) || isMemoryLimit(e)) throw e;
        onError(e, item.path);
      }
      item.ready = true;
    })().finally(() => pending.delete(p));
    p.catch(() => {}); // observed by the race/all below; never an unhandled rejection if the walk fails first
    pending.add(p);
    return p;
  };
  const add = async (ino: Inode, path: string, kind: TreeItem['kind']) => {
    checkMemory('building the block map');
    const item: TreeItem = { ino: ino.ino, path, kind, extents: [], ready: false };
    queue.push({ item, done: fetch(ino, item) });
    if (pending.size >= EXTENT_CONCURRENCY) await Promise.race(pending);
    handOver();
    while (queue.length - head > MAX_QUEUED) {
      await queue[head].done;
      handOver();
    }
  };
  const seen = new Set<number>();
  const root = await fs.root();
  seen.add(root.ino);
  await add(root, '/', 'directory');
  for await (const item of walk(fs, root, '/', { onError })) {
    const ino = item.inode;
    // only an inode that can be reached twice is remembered (not a Set of every file of a huge tree)
    if (ino.type === 'dir' || ino.nlink > 1) {
      if (seen.has(ino.ino)) continue;
      seen.add(ino.ino);
    }
    if (ino.type === 'dir') await add(ino, item.path, 'directory');
    else if (ino.type === 'file' || ino.type === 'symlink') await add(ino, item.path, 'file');
  }
  await Promise.all(pending);
  handOver();
  if (errors > 20) warnings.push(`${label}: ${errors - 20} more unreadable entries`);
}
