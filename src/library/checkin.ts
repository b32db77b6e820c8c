import { createHash } from 'node:crypto';
import { hostname, userInfo } from 'node:os';
import { resolvedStatus } from '../formats/layer.js';
import { openImage } from '../formats/open.js';
import type { DiskImage, OpenOptions } from '../formats/types.js';
import { openVolumeFileSystem } from '../fs/open.js';
import type { FileExtent, FileSystem, FsOpenOptions, Inode } from '../fs/types.js';
import { walk } from '../fs/walk.js';
import { isZero } from '../io/byte-source.js';
import { mmapLargeAllocations, releaseBuffer, trimHeap } from '../io/native.js';
import { PlannedSource } from '../io/planned-source.js';
import { RepoLock } from '../store/lock.js';
import { writeLimits } from '../store/packer.js';
import { digestKey, digestPrefix, SortedDigestIndex } from '../store/sorted-index.js';
import type { PutResult } from '../store/store.js';
import { BufferPool } from '../util/buffer-pool.js';
import { StrataError } from '../util/errors.js';
import { eachLimit, mapLimit } from '../util/map-limit.js';
import { collectGarbage, memoryBudget } from '../util/memory.js';
import { discoverVolumes } from '../volumes/discover.js';
import type { Volume } from '../volumes/types.js';
import { holdsFileSystem } from './address.js';
import { parseLibraryBacking, versionImage } from './backing.js';
import {
  ChunkRecords,
  ClippedRanges,
  type ColumnReader,
  FirstUseNumbered,
  grown,
  InverseColumn,
  type RangeCursor,
  RangeRuns,
  Scratch,
  SpilledColumn,
} from './checkin-columns.js';
import { inspectAfterCheckin } from './inspection.js';
import type { Library } from './library.js';
import { isoTime, volumeDiskOffset } from './listing.js';
import {
  encodeFilesHead,
  encodeFilesPart,
  encodeManifest,
  FILE_PART_ENTRIES,
  FILES_KIND,
  type FileEntry,
  type FilesManifest,
  type FilesManifestHead,
  LAYOUT_KIND,
  LAYOUT_PART_ENTRIES,
  LAYOUT_PART_KIND,
  type LayoutManifest,
  type LayoutManifestHead,
  type LayoutVolume,
} from './manifest.js';
import { openDeviceTargets } from './target.js';
import { MergedSpans, mergeSpans, type Span, subtractSpans } from './used-regions.js';

/**
 * Check an image into the library, cut along its structure (DESIGN.md "Stored image"):
 * - file data by file offset, in FILE_CHUNK pieces (so a file dedups wherever it sits);
 * - other used bytes of each file system (metadata, directories, journal, file tails,
 *   unwritten extents) by disk offset, in DISK_CHUNK-aligned windows;
 * - outside readable file systems (partition tables, LVM metadata, swap, unknown content,
 *   disks with no file system): the container's data ranges, block-wise by disk offset;
 * - all-zero chunks are never stored; free space is skipped unless `exact`.
 *
 * File chunk size, measured with `npm run bench:checkin -- --sweep` (base + derived
 * 1200 MiB bookworm minbase images, bench/README.md): 64 KiB file chunks stored 122.2 MB
 * in total (derived new 23.5 MB), 256 KiB 119.8 MB (22.4 MB), 1 MiB 118.0 MB (22.0 MB),
 * and 1 MiB was also the fastest: most files are smaller than a chunk and dedup whole,
 * changed large files (packages upgraded) rarely keep aligned 64 KiB pieces, and larger
 * chunks compress better with fewer index entries. Disk-offset chunks stay at 64 KiB:
 * metadata changes are scattered 4 KiB blocks. (Content-defined chunking inside large
 * files was not tried: the sweep shows little to gain within files on this pair.)
 */
export const FILE_CHUNK = 1024 * 1024;
export const DISK_CHUNK = 64 * 1024;
/** Status windows for the data scan (some drivers bound status requests like reads). */
const STATUS_WINDOW = 64 * 1024 * 1024;
/** Files and windows cut concurrently (reads overlap hashing and compression). */
const CONCURRENCY = 8;

export interface CheckinOptions {
  name: string;
  /** The image's description (shared by its versions). */
  description?: string;
  /** What this version changed, in words (kept with the version; `strata log` shows it). */
  message?: string;
  /** What the catalog records as the version's source (default: the image path given). */
  sourceName?: string;
  /** Parent version refs; default: the library version an overlay backs onto, else the image's latest version, if any. */
  parents?: string[];
  tags?: string[];
  exact?: boolean;
  openOptions?: OpenOptions;
  /**
   * The other devices of a btrfs over several (RAID), as targets (`--device FILE`). The
   * version stores IMAGE's virtual disk (the device given as IMAGE) as always; its file
   * tree is read through every device, so each file's data is cut by file and complete
   * whichever device holds it. Reading the stored disk as btrfs later needs the devices again.
   */
  devices?: string[];
  /**
   * Follow a backing reference to a library version (`strata-library:DIGEST`, what `strata
   * nbd --overlay` records). Default true; the service turns it off for images it fetches
   * for a caller, who might otherwise name a version they may not read.
   */
  libraryBacking?: boolean;
  createdBy?: string;
  fileChunkSize?: number;
  diskChunkSize?: number;
  /** How long to wait for a running gc (ms). */
  lockWaitMs?: number;
  onProgress?: (done: number, total: number) => void;
  /** What the check-in may hold that grows with the image (default 256 MiB); over it, a LIMIT error. */
  memoryBytes?: number;
  /** Inspect the new version and store what it finds in the catalog (default true). */
  inspect?: boolean;
  /**
   * Chunks and ranges per part of a version 2 layout manifest (default LAYOUT_PART_ENTRIES;
   * tests set a small one to write version 2 for a small image). Never from a memory budget:
   * the manifest's digest depends on it.
   */
  layoutPartEntries?: number;
  /**
   * Ranges per sorted run, chunk records held before they go to the scratch file and chunks in
   * the hash table before it is merged into the sorted index (defaults from the memory budget
   * and BUILDER_TABLE_ENTRIES; tests set a small one).
   */
  spillEntries?: number;
}

export interface CheckinResult {
  image: string;
  number: number;
  ref: string;
  manifest: string;
  virtualSize: number;
  /** Plain bytes the version's ranges cover (what checkout writes). */
  usedBytes: number;
  /** Encoded bytes this check-in added to the store (chunks and manifests). */
  newBytes: number;
  /** Encoded bytes of every distinct chunk and manifest the version references. */
  storedBytes: number;
  /** usedBytes / newBytes. */
  dedupRatio: number;
  chunks: number;
  newChunks: number;
  volumes: LayoutVolume[];
  warnings: string[];
}

/**
 * The layout's chunk list and ranges in canonical order (Builder.canonical): `order()` reads
 * the builder's chunk numbers in layout order (layout chunk `k` is builder chunk
 * `order()`'s k-th), `ranges()` streams the layout's ranges, chunks numbered as in the layout,
 * `rangeCount` of them, covering `usedBytes`. Both come from the scratch file (issue 22).
 */
export interface CanonicalLayout {
  chunkCount: number;
  rangeCount: number;
  usedBytes: number;
  order(): ColumnReader;
  ranges(): RangeCursor;
}

/**
 * Accumulates chunks and ranges; stores each chunk once. What grows with the image stays off
 * the heap (issue 22, checkin-columns.ts): a chunk's digest and length are a record in a
 * scratch file; the chunks by digest are a hash table of at most `tableEntries` chunks (the
 * newest), merged into a sorted index file (SortedDigestIndex) when full, so the table is the same
 * size at 200,000 files and at 5,000,000; in memory per chunk only its "added" bit and the
 * index's fences (~0.2 bytes), and at the end a bit or two more for the canonical order
 * (itself in the scratch file). Ranges go in sorted runs of `runEntries` to the scratch
 * file, merged when the layout is written.
 */
class Builder {
  private readonly scratch = new Scratch();
  private readonly records: ChunkRecords;
  /** Bit i set where this check-in added chunk i to the store. */
  private addedBits = new Uint8Array(128);
  /**
   * Open addressing (linear probing, a power of two of slots, at most `tableEntries` full,
   * at most BUILDER_LOAD) over the chunks numbered from `tableFrom`: a slot is 0 (empty) or
   * (chunk number + 1) << 6 | 6 bits of the digest, placed by the digest's first 4 bytes.
   * A lookup reads a record back (the scratch file's window, or one pread) only where those 6
   * bits match. Full, its chunks go to `index` and it is cleared (before: the table held
   * every chunk and doubled, ~5.7-11.4 bytes a chunk, 16 MiB at 2,000,000 files).
   */
  private table: Uint32Array;
  private readonly tableEntries: number;
  /** Slots of the table once it has grown to hold `tableEntries` (it starts small, for small images). */
  private readonly maxSlots: number;
  private tableFrom = 0;
  /** The chunks below `tableFrom`, sorted by digest in a scratch file. */
  private readonly index: SortedDigestIndex;
  chunkCount = 0;
  private readonly runs: RangeRuns;
  /** File manifests (tree blobs) this check-in added to the store. */
  readonly addedTrees: string[] = [];
  /** The file manifests, encoded, by digest. */
  readonly trees = new Map<string, Uint8Array>();
  newChunks = 0;
  done = 0;
  /** Chunk buffers: reused once the store has taken a chunk's bytes (a chunk and a block: 64 KiB steps, not powers of two). */
  readonly pool = new BufferPool(16, false, { classes: 'step' });
  private readonly cmpA = Buffer.alloc(32);

  constructor(
    private readonly sink: BlobSink,
    private readonly progress?: () => void,
    runEntries = 1 << 16,
    recordsInMemory = 16384,
    tableEntries = BUILDER_TABLE_ENTRIES,
  ) {
    this.records = new ChunkRecords(this.scratch, recordsInMemory);
    this.index = new SortedDigestIndex(() => this.scratch.open('index'));
    this.tableEntries = Math.max(1, tableEntries);
    this.maxSlots = 16;
    while (this.maxSlots * BUILDER_LOAD < this.tableEntries) this.maxSlots *= 2;
    this.table = new Uint32Array(Math.min(4096, this.maxSlots));
    this.runs = new RangeRuns(
      this.scratch,
      (d1, c1, a1, d2, c2, a2) => d1 - d2 || (c1 === c2 ? 0 : this.cmpChunks(c1, c2)) || a1 - a2,
      runEntries,
    );
  }

  get rangeCount(): number {
    return this.runs.count;
  }

  /** Bytes held whatever the image's size: the hash table. */
  get tableBytes(): number {
    return this.table.byteLength;
  }

  /** The hex digest of chunk `i` (readers in roughly ascending order read through a window). */
  hex(i: number): string {
    return this.records.record(i).toString('hex', 0, 32);
  }

  chunkLength(i: number): number {
    return this.records.record(i).readUInt32LE(32);
  }

  added(i: number): boolean {
    return (this.addedBits[i >>> 3] & (1 << (i & 7))) !== 0;
  }

  /** The chunk number of `digest` (32 bytes), inserting it when new (`inserted` then true). */
  private lookup(digest: Buffer, length: number): { idx: number; inserted: boolean } {
    const mask = this.table.length - 1;
    const fp = digest[4] & SLOT_FP_MASK;
    for (let h = digest.readUInt32BE(0) & mask; ; h = (h + 1) & mask) {
      const t = this.table[h];
      if (t === 0) {
        const old = this.index.find(digestPrefix(digest), (i) => digest.compare(this.records.exact(i), 0, 32) === 0);
        if (old >= 0) return { idx: old, inserted: false };
        if (this.chunkCount >= MAX_CHUNKS) {
          throw new StrataError('LIMIT', `a check-in holds at most ${MAX_CHUNKS} chunks`, {
            structure: 'check-in chunk table',
          });
        }
        const idx = this.records.push(digest, length);
        this.chunkCount++;
        if (this.chunkCount > this.addedBits.length * 8)
          this.addedBits = grown(this.addedBits, this.addedBits.length * 2);
        this.table[h] = (((idx + 1) << SLOT_FP_BITS) | fp) >>> 0;
        const live = this.chunkCount - this.tableFrom;
        if (live >= this.tableEntries) this.spillTable();
        else if (live > this.table.length * BUILDER_LOAD) this.rehash(this.table.length * 2);
        return { idx, inserted: true };
      }
      if ((t & SLOT_FP_MASK) === fp) {
        const i = (t >>> SLOT_FP_BITS) - 1;
        if (digest.compare(this.records.exact(i), 0, 32) === 0) return { idx: i, inserted: false };
      }
    }
  }

  /** The table at `slots` slots, from the records of its chunks (read back in order). */
  private rehash(slots: number): void {
    const table = new Uint32Array(slots);
    this.table = new Uint32Array(0); // the old one is garbage while the new one fills
    const mask = slots - 1;
    for (let i = this.tableFrom; i < this.chunkCount; i++) {
      const r = this.records.record(i);
      let h = r.readUInt32BE(0) & mask;
      while (table[h] !== 0) h = (h + 1) & mask;
      table[h] = (((i + 1) << SLOT_FP_BITS) | (r[4] & SLOT_FP_MASK)) >>> 0;
    }
    this.table = table;
  }

  /** The table's chunks into the sorted index (their records read back in order), the table cleared. */
  private spillTable(): void {
    const keys = new Float64Array(this.chunkCount - this.tableFrom);
    for (let i = this.tableFrom; i < this.chunkCount; i++) {
      keys[i - this.tableFrom] = digestKey(digestPrefix(this.records.record(i)), i);
    }
    keys.sort();
    this.index.merge(keys);
    this.table.fill(0);
    this.tableFrom = this.chunkCount;
  }

  /** Store `buf` (unless all zeros) and map `pieces` ([disk offset, length, offset in buf]) to it. */
  async add(buf: Uint8Array, pieces: Array<[number, number, number]>, solo = false): Promise<string | null> {
    // progress counts disk bytes (what the total counts), not chunk bytes: a sparse file's
    // holes are chunk bytes no disk byte stands for
    for (const p of pieces) this.done += p[1];
    this.progress?.();
    if (isZero(buf)) return null;
    const raw = createHash('sha256').update(buf).digest();
    const digest = raw.toString('hex');
    const { idx, inserted } = this.lookup(raw, buf.length);
    // the ranges first: the chunk number is fixed, and a concurrent add of the same bytes
    // (which finds it) must not wait for the store
    for (const [d, len, a] of pieces) this.runs.add(d, len, idx, a);
    if (inserted) {
      const r = await this.sink.put('data', buf, digest, { solo });
      if (r.added) {
        this.addedBits[idx >>> 3] |= 1 << (idx & 7);
        this.newChunks++;
      }
    }
    return digest;
  }

  /** Compare chunks `a` and `b` by digest (as their hex strings compare): rare, two ranges at one disk offset. */
  private cmpChunks(a: number, b: number): number {
    this.records.exact(a).copy(this.cmpA, 0, 0, 32);
    return this.cmpA.compare(this.records.exact(b), 0, 32);
  }

  /**
   * The manifest's chunk list and ranges in a canonical order, whatever order concurrent
   * cutting added them in (so the same image gives the same manifest digest): ranges by
   * disk offset (overlaps from two inodes claiming one block clipped), chunks numbered by
   * first use, chunks no range uses (inline file data) last, by digest. Called once, when
   * cutting is over; the hash table is dropped. One pass over the ranges numbers the chunks:
   * a bit a chunk in memory, the order itself written to the scratch file; the layout's
   * ranges (FirstUseNumbered) count the numbers again as they pass, and read the number of a
   * chunk used before from the order's inverse (InverseColumn), a file too. Before, an
   * Int32Array and a Uint32Array of every chunk: 8 bytes a chunk, 37 MiB at 5,000,000 files.
   */
  canonical(): CanonicalLayout {
    this.table = new Uint32Array(0);
    const chunkCount = this.chunkCount;
    // a bit a chunk: numbered yet (the numbers themselves go to the scratch file in order)
    const used = new Uint8Array(Math.ceil(chunkCount / 8));
    const order = new SpilledColumn(this.scratch, 'order');
    let rangeCount = 0;
    let usedBytes = 0;
    const ranges = () => new ClippedRanges(this.runs.sorted());
    for (const r = ranges(); r.next(); ) {
      const c = r.chunk;
      if ((used[c >>> 3] & (1 << (c & 7))) === 0) {
        used[c >>> 3] |= 1 << (c & 7);
        order.push(c);
      }
      rangeCount++;
      usedBytes += r.length;
    }
    const numbered = order.count;
    const unused: number[] = [];
    for (let i = 0; i < chunkCount; i++) if ((used[i >>> 3] & (1 << (i & 7))) === 0) unused.push(i);
    unused.sort((a, b) => this.cmpChunks(a, b));
    for (const i of unused) order.push(i);
    order.flush();
    // a chunk's layout number, for its ranges after the first (made when one is first asked for)
    let renumber: InverseColumn | undefined;
    const numberOf = (c: number) => {
      renumber ??= new InverseColumn(this.scratch, order, chunkCount, numbered);
      return renumber.get(c);
    };
    return {
      chunkCount,
      rangeCount,
      usedBytes,
      order: () => order.reader(),
      ranges: () => new FirstUseNumbered(ranges(), chunkCount, numberOf),
    };
  }

  /** Remove the scratch files. */
  close(): void {
    this.scratch.close();
    this.pool.clear(); // its chunk buffers and planned windows: nothing reads them after the cut
  }
}

/** The Builder's table: 6 bits of the digest beside a chunk number in each 32-bit slot. */
const SLOT_FP_BITS = 6;
const SLOT_FP_MASK = (1 << SLOT_FP_BITS) - 1;
/** Chunk numbers + 1 fit the slot's other 26 bits. */
const MAX_CHUNKS = 2 ** (32 - SLOT_FP_BITS) - 2;
/** Slots in use at most. */
const BUILDER_LOAD = 0.7;
/**
 * Chunks in the Builder's hash table before they are merged into its sorted index: 2^18 slots
 * (1 MiB), a merge every ~183,000 new chunks (~5 at 1,000,000 files, each a sequential pass over
 * 8 bytes a chunk), and a lookup that misses the table reads one 1 KiB block of the index.
 */
const BUILDER_TABLE_ENTRIES = Math.floor((1 << 18) * BUILDER_LOAD);

interface FsWindow {
  volume: Volume;
  fs: FileSystem;
  /** Where the volume starts on the virtual disk. */
  base: number;
}

const isPlain = (e: FileExtent) =>
  !e.unwritten && !e.inline && !e.encoded && e.diskLength === undefined && e.device === undefined;

/** A regular file to cut: its extents (by file offset), read once before cutting. */
interface FileJob {
  inode: Inode;
  exts: FileExtent[];
  /** Disk offset of its first plain extent (files are cut in this order: sequential reads). */
  first: number;
  error?: unknown;
}

/** Cut one regular file: its chunks by file offset, and the disk spans its data occupies. */
async function cutFile(
  b: Builder,
  src: PlannedSource,
  w: FsWindow,
  job: FileJob,
  C: number,
  fileData: Span[],
): Promise<{ digest: string; chunks: Array<string | null> }> {
  const ino = job.inode;
  const exts = job.exts;
  const viaFs = exts.some((e) => !isPlain(e) && !e.unwritten);
  const plain = exts.filter(isPlain);
  for (const e of plain) fileData.push([w.base + e.volumeOffset, w.base + e.volumeOffset + e.length]);
  const size = ino.size;
  const bs = w.fs.blockSize;
  const tailLength = (bs - (size % bs)) % bs;
  // one chunk: the file's digest is the chunk's (no second hash); several: hash as we go
  const hash = size > C ? createHash('sha256') : undefined;
  let single: string | undefined;
  const chunks: Array<string | null> = [];
  let k = 0;
  for (let cs = 0; cs < size; cs += C) {
    const ce = Math.min(size, cs + C);
    const full = b.pool.take(ce - cs + bs);
    try {
      const buf = full.subarray(0, ce - cs);
      const pieces: Array<[number, number, number]> = [];
      if (viaFs) buf.set(await w.fs.read(ino, cs, ce - cs));
      while (k < plain.length && plain[k].fileOffset + plain[k].length <= cs) k++;
      let covered = 0;
      for (let j = k; j < plain.length && plain[j].fileOffset < ce; j++) {
        const e = plain[j];
        const s = Math.max(cs, e.fileOffset);
        const t = Math.min(ce, e.fileOffset + e.length);
        if (t <= s) continue;
        pieces.push([w.base + e.volumeOffset + (s - e.fileOffset), t - s, s - cs]);
        covered += t - s;
      }
      if (!viaFs) {
        if (covered < buf.length) buf.fill(0); // holes and unwritten extents read as zeros
        for (const [disk, n, at] of pieces) {
          // The piece that ends the file also reads the rest of its last block (the tail):
          // when that is zeros, as it nearly always is, it needs no disk-offset chunk and no
          // second read later; it counts as covered (and reads back as zeros).
          const tail = at + n === size - cs && ce === size ? tailLength : 0;
          await src.readInto(disk, full.subarray(at, at + n + tail));
          if (tail > 0 && isZero(full.subarray(at + n, at + n + tail))) fileData.push([disk + n, disk + n + tail]);
        }
      }
      hash?.update(buf);
      const d = await b.add(buf, pieces);
      chunks.push(d);
      if (!hash) single = d ?? createHash('sha256').update(buf).digest('hex');
    } finally {
      b.pool.give(full);
    }
  }
  const digest = hash ? hash.digest('hex') : (single ?? createHash('sha256').digest('hex'));
  return { digest, chunks };
}

/**
 * Planned reads' windows: a 64th of the budget, 256 KiB-2 MiB (a batch's files are a few MiB),
 * PLANNED_KEEP of them kept; the builder's pool keeps them from one batch to the next.
 */
function plannedWindow(budgetBytes: number): number {
  return Math.max(256 << 10, Math.min(2 << 20, Math.floor(budgetBytes / 64)));
}
const PLANNED_KEEP = 4;

/**
 * Disk spans (absolute, merged) as W-aligned windows, each the pieces of the spans inside
 * one window, made as they are asked for (at 1,000,000 files the metadata's ~15,500 windows
 * as arrays held ~2 MB, issue 22).
 */
function* spanWindows(spans: Span[], W: number): Generator<Span[]> {
  let cur: Span[] = [];
  for (const [s0, e] of spans) {
    let s = s0;
    while (s < e) {
      const t = Math.min(e, (Math.floor(s / W) + 1) * W);
      if (cur.length > 0 && Math.floor(cur[0][0] / W) !== Math.floor(s / W)) {
        yield cur;
        cur = [];
      }
      cur.push([s, t]);
      s = t;
    }
  }
  if (cur.length > 0) yield cur;
}

/** Cut disk spans (absolute, merged) by disk offset into W-aligned windows. */
async function cutSpans(
  b: Builder,
  img: DiskImage,
  spans: Span[],
  W: number,
  budgetBytes: number,
  solo = false,
): Promise<void> {
  const src = new PlannedSource(img, spans, plannedWindow(budgetBytes), undefined, PLANNED_KEEP, b.pool);
  await eachLimit(spanWindows(spans, W), CONCURRENCY, async (pieces) => {
    const from = pieces[0][0];
    const to = pieces[pieces.length - 1][1];
    trimFreedMemory(to - from);
    // pooled: a fresh buffer per window was garbage V8 collected late (at the end of a
    // 200,000-file check-in, ~50 MiB of them resident at once)
    const rawBuf = b.pool.take(to - from);
    const packed = b.pool.take(to - from);
    try {
      await cutWindow(b, src, pieces, rawBuf.subarray(0, to - from), packed, solo);
    } finally {
      b.pool.give(rawBuf);
      b.pool.give(packed);
    }
  });
  await src.close();
}

/** Cut one window of `cutSpans`: its bytes less the all-zero granules, one chunk (`spare`: room for it). */
async function cutWindow(
  b: Builder,
  src: PlannedSource,
  pieces: Span[],
  raw: Buffer,
  spare: Buffer,
  solo: boolean,
): Promise<void> {
  const from = pieces[0][0];
  await src.readInto(from, raw);
  // Zero blocks are left out of the chunk (they read back as zeros): which zero blocks a
  // span holds depends on how the host reports a sparse file (SEEK_DATA counts unwritten
  // extents as data once their pages are cached), so keeping them would make the same
  // image cut differently from one check-in to the next.
  const kept = nonZeroPieces(raw, from, pieces);
  let n = 0;
  for (const [s, e] of kept) n += e - s;
  let all = 0;
  for (const [s, e] of pieces) all += e - s;
  b.done += all - n; // progress counts the zero bytes left out as done
  if (kept.length === 0) return;
  const buf = kept.length === 1 && n === raw.length ? raw : spare.subarray(0, n);
  const out: Array<[number, number, number]> = [];
  let at = 0;
  for (const [s, e] of kept) {
    if (buf !== raw) buf.set(raw.subarray(s - from, e - from), at);
    out.push([s, e - s, at]);
    at += e - s;
  }
  await b.add(buf, out, solo);
}

/** Granule (disk offsets, aligned) in which all-zero bytes are left out of a disk-offset chunk. */
const ZERO_GRANULE = 4096;

/** `pieces` (inside `raw`, which starts at disk offset `from`) less their all-zero aligned granules. */
function nonZeroPieces(raw: Uint8Array, from: number, pieces: Span[]): Span[] {
  const out: Span[] = [];
  for (const [s, e] of pieces) {
    let g = s;
    while (g < e) {
      const t = Math.min(e, (Math.floor(g / ZERO_GRANULE) + 1) * ZERO_GRANULE);
      if (!isZero(raw.subarray(g - from, t - from))) {
        const last = out[out.length - 1];
        if (last && last[1] === g) last[1] = t;
        else out.push([g, t]);
      }
      g = t;
    }
  }
  return out;
}

/** Data ranges of the whole virtual disk, through the backing chain. */
async function diskDataSpans(img: DiskImage): Promise<Span[]> {
  const out: Span[] = [];
  for (let off = 0; off < img.size; off += STATUS_WINDOW) {
    const n = Math.min(STATUS_WINDOW, img.size - off);
    for (const e of await resolvedStatus(img, off, n)) {
      if (e.kind === 'data') out.push([e.offset, e.offset + e.length]);
    }
  }
  return mergeSpans(out);
}

/** Every data byte of the disk inside [start, end). */
const dataWithin = (dataSpans: Span[], start: number, end: number): Span[] =>
  subtractSpans(dataSpans, subtractSpans(dataSpans, [[start, end]]));

/**
 * The used bytes of a file system's window (with `exact`, every data byte of the window), in
 * disk offsets. The volume's bytes past the file system's own end are not the file system's
 * to call free (NTFS keeps its backup boot sector in the volume's last sector, outside the
 * sectors its boot sector counts; a partition may outgrow its file system): kept as they are.
 */
async function windowAllocation(
  w: FsWindow,
  exact: boolean,
  dataSpans: Span[],
): Promise<{ spans: Span[]; usedBytes: number }> {
  const end = w.base + w.volume.size;
  const sum = (x: Span[]) => x.reduce((n, [s, e]) => n + e - s, 0);
  let own: Span[];
  try {
    const used = (await w.fs.allocation()).map((r): Span => [w.base + r.offset, w.base + r.offset + r.length]);
    const fsEnd = w.base + Math.min((await w.fs.info()).totalBytes, w.volume.size);
    own = mergeSpans([...used, ...dataWithin(dataSpans, fsEnd, end)]);
  } catch (e) {
    if (!exact) throw e;
    own = dataWithin(dataSpans, w.base, end);
  }
  // An exact check-in cuts every data byte of the window, but the file system's used bytes
  // are its own count: the data ranges of a sparse file depend on the host's page cache.
  if (exact) return { spans: dataWithin(dataSpans, w.base, end), usedBytes: sum(own) };
  return { spans: own, usedBytes: sum(own) };
}

/** Open every volume whose file system we can read and that is one window of the disk. */
async function fsWindows(
  img: DiskImage,
  volumes: Volume[],
  warnings: string[],
  fsOptions: FsOpenOptions = {},
): Promise<FsWindow[]> {
  const out: FsWindow[] = [];
  for (const v of volumes) {
    if (v.size === 0 || v.flags?.includes('extended') || !holdsFileSystem(v.content)) continue;
    const base = volumeDiskOffset(v.source, img);
    if (base === null) {
      warnings.push(`volume ${v.id}: not one window of the disk (multi-segment LV); stored block-wise`);
      continue;
    }
    if (out.some((w) => base < w.base + w.volume.size && w.base < base + v.size)) continue;
    try {
      out.push({ volume: v, fs: await openVolumeFileSystem(v.source, fsOptions), base });
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      warnings.push(`volume ${v.id === '' ? '(whole disk)' : v.id}: ${e.message}; stored block-wise`);
    }
  }
  return out;
}

function xattrRecord(m: Map<string, Uint8Array>): Record<string, string> | undefined {
  if (m.size === 0) return undefined;
  const o: Record<string, string> = {};
  for (const [k, v] of [...m].sort((a, b) => (a[0] < b[0] ? -1 : 1))) o[k] = Buffer.from(v).toString('base64');
  return o;
}

/**
 * Writes a file system's file manifest as entries come: every FILE_PART_ENTRIES entries a
 * part goes to the sink; a file system of at most FILE_PART_ENTRIES entries (or any, when
 * `inline`) is written as one version 1 manifest, byte for byte what it always was.
 */
class FilesWriter {
  private pending: FileEntry[] = [];
  private readonly parts: string[] = [];
  count = 0;

  constructor(
    private readonly sink: BlobSink,
    private readonly b: Builder,
    private readonly head: Pick<FilesManifest, 'volume' | 'fsKind' | 'fileChunkSize'>,
    private readonly inline: boolean,
  ) {}

  private async put(encoded: Uint8Array, keep: boolean): Promise<string> {
    const r = await this.sink.put('tree', encoded);
    if (keep) this.b.trees.set(r.digest, encoded);
    // a part (~1-2 MB of JSON) the store has copied or compressed: freed now, not at a collection
    else releaseBuffer(encoded);
    if (r.added) this.b.addedTrees.push(r.digest);
    return r.digest;
  }

  async add(entries: FileEntry[]): Promise<void> {
    for (const e of entries) {
      if (!this.inline && this.pending.length === FILE_PART_ENTRIES) {
        this.parts.push(await this.put(encodeFilesPart(this.pending), false));
        this.pending = [];
      }
      this.pending.push(e);
      this.count++;
    }
  }

  /** Store the manifest (its last part and head): its digest. */
  async finish(): Promise<string> {
    if (this.parts.length === 0) {
      const files: FilesManifest = { kind: FILES_KIND, version: 1, ...this.head, entries: this.pending };
      return this.put(encodeManifest(files), true);
    }
    if (this.pending.length > 0) this.parts.push(await this.put(encodeFilesPart(this.pending), false));
    this.pending = [];
    const head: FilesManifestHead = {
      kind: FILES_KIND,
      version: 2,
      ...this.head,
      count: this.count,
      parts: this.parts,
    };
    return this.put(encodeFilesHead(head), true);
  }
}

/** What cutting a regular file gave (kept across batches for inodes with more than one link). */
type CutFile = { digest: string; chunks: Array<string | null> } | { error: unknown };

/** Walk items cut together: their files' extents, data and entries; then dropped. */
function batchSize(memoryBytes: number): number {
  // ~2 KiB per item in flight (inode, extents, entry, its JSON), a 32nd of the budget
  return Math.max(256, Math.min(16384, Math.floor(memoryBytes / 32 / 2048)));
}

/**
 * Cut one file system: walk it, and cut its files' data by file offset in batches of walk
 * items (each batch's files in disk order of their data through one planned reader), the
 * file manifest written as the batches go; then the rest of its used bytes. Memory holds a
 * batch, the spans of file data (merged as they grow), the chunk list and ranges of the
 * layout, and the cut of each inode with more than one link.
 */
async function cutFileSystem(
  sink: BlobSink,
  b: Builder,
  img: DiskImage,
  w: FsWindow,
  C: number,
  W: number,
  warnings: string[],
  /** What to cut of it (windowAllocation), in disk offsets, and the file system's used bytes. */
  allocation: { spans: Span[]; usedBytes: number },
  budget: MemoryBudget,
  inline: boolean,
): Promise<LayoutVolume['fs']> {
  const { fs } = w;
  const { usedBytes } = allocation;
  /** The file data's disk spans: this batch's, then merged into `fileDataSpans` (16 bytes a span). */
  let fileData: Span[] = [];
  const fileDataSpans = new MergedSpans();
  let fileDataBytes = 0;
  const writer = new FilesWriter(sink, b, { volume: w.volume.id, fsKind: fs.kind, fileChunkSize: C }, inline);
  /** Cuts of inodes with more than one link, for their other paths in later batches. */
  const linked = new Map<number, CutFile>();
  const bs = fs.blockSize;

  const cutBatch = async (items: Array<{ path: string; inode: Inode }>): Promise<void> => {
    // Extents of every regular file not cut before, then the files cut in disk order of
    // their data through one planned reader (large sequential reads instead of one per file).
    const jobs = new Map<number, FileJob>();
    for (const { inode } of items) {
      if (inode.type === 'file' && !jobs.has(inode.ino) && !linked.has(inode.ino)) {
        jobs.set(inode.ino, { inode, exts: [], first: Number.POSITIVE_INFINITY });
      }
    }
    await mapLimit([...jobs.values()], CONCURRENCY, async (job) => {
      const { inode } = job;
      try {
        for await (const e of fs.extents(inode, { shared: false })) job.exts.push(e);
        job.exts.sort((x, y) => x.fileOffset - y.fileOffset);
        for (const e of job.exts) if (isPlain(e)) job.first = Math.min(job.first, e.volumeOffset);
      } catch (err) {
        job.error = err;
      }
    });
    const plan: Span[] = [];
    let batchBytes = 0;
    for (const job of jobs.values()) {
      fileDataBytes += job.inode.size;
      batchBytes += job.inode.size;
      for (const e of job.exts) {
        if (!isPlain(e)) continue;
        const s = w.base + e.volumeOffset;
        plan.push([s, s + Math.ceil(e.length / bs) * bs]); // with the tail of the last block
      }
    }
    // its windows from the builder's pool, back there after the batch (they were garbage)
    const src = new PlannedSource(img, plan, plannedWindow(budget.bytes), undefined, PLANNED_KEEP, b.pool);
    const ordered = [...jobs.values()].sort((x, y) => x.first - y.first || x.inode.ino - y.inode.ino);
    const cut = new Map<number, CutFile>();
    await mapLimit(ordered, CONCURRENCY, async (job) => {
      let r: CutFile;
      if (job.error !== undefined) r = { error: job.error };
      else {
        try {
          r = await cutFile(b, src, w, job, C, fileData);
        } catch (err) {
          r = { error: err };
        }
      }
      cut.set(job.inode.ino, r);
      if (job.inode.nlink > 1) linked.set(job.inode.ino, r);
    });
    await src.close();
    const entries = await mapLimit(items, CONCURRENCY, async ({ path, inode }): Promise<FileEntry> => {
      const e: FileEntry = {
        path,
        type: inode.type,
        mode: inode.mode & 0o7777,
        uid: inode.uid,
        gid: inode.gid,
        size: inode.size,
        nlink: inode.nlink,
        ino: inode.ino,
        mtime: isoTime(inode.mtime),
        atime: isoTime(inode.atime),
        ctime: isoTime(inode.ctime),
      };
      const crtime = isoTime(inode.crtime);
      if (crtime) e.crtime = crtime;
      if (inode.rdev && (inode.type === 'char' || inode.type === 'block')) e.rdev = inode.rdev;
      try {
        if (inode.type === 'symlink') e.target = await fs.readlink(inode);
        const x = xattrRecord(await fs.xattrs(inode));
        if (x) e.xattrs = x;
        if (inode.type === 'file') {
          const r = (cut.get(inode.ino) ?? linked.get(inode.ino)) as CutFile;
          if ('error' in r) throw r.error;
          e.digest = r.digest;
          e.chunks = r.chunks;
        }
      } catch (err) {
        if (!(err instanceof StrataError)) throw err;
        if (warnings.length < 1000) warnings.push(`${path}: ${err.message}`);
      }
      return e;
    });
    await writer.add(entries);
    // the file data spans of neighbouring files touch: merged, they stay few
    fileDataSpans.add(fileData);
    fileData = [];
    budget.check(b, fileDataSpans.count, linked.size);
    // the work of a batch: its file data read and cut, ~2 KiB per item walked (batchSize)
    trimFreedMemory(batchBytes + items.length * 2048);
  };

  const root = await fs.root();
  const size = inline ? Number.POSITIVE_INFINITY : batchSize(budget.bytes);
  let batch: Array<{ path: string; inode: Inode }> = [];
  for await (const it of walk(fs, root, '/', {
    onError: (e, p) => {
      if (warnings.length < 1000) warnings.push(`${p}: ${e.message}`);
    },
  })) {
    batch.push({ path: it.path, inode: it.inode });
    if (batch.length >= size) {
      await cutBatch(batch);
      batch = [];
    }
  }
  await cutBatch(batch);
  const filesDigest = await writer.finish();
  const other = fileDataSpans.subtractFrom(mergeSpans(allocation.spans));
  await cutSpans(b, img, other, W, budget.bytes);
  return {
    kind: fs.kind,
    blockSize: fs.blockSize,
    files: filesDigest,
    fileCount: writer.count,
    usedBytes,
    fileDataBytes,
  };
}

/** Bytes read and cut since the last trim (see trimFreedMemory). */
let workSinceTrim = 0;
/** Heap and buffers in use after the last collection here. */
let liveAfterCollect = 0;

/**
 * The C heap's free pages handed back to the system (a malloc_trim, a few ms) once an 8th of
 * the budget has been read and cut since the last time, after a full collection (~50-70 ms)
 * when heap and buffers grew by more than a 16th of the budget since the last one: the
 * check-in's chunk, frame and read buffers come and go, V8 frees a dropped buffer only when a
 * collection finds it, and glibc keeps what they leave in its main heap (native/heap.c). At
 * the end of a 200,000-file check-in the main heap held ~100 MiB more than the buffers alive
 * in it. The pace follows the work, not the clock: every 2 s of wall time meant more
 * collections per byte cut the busier the machine. At 200,000 files (load ~9): every 16th of
 * the budget, 79 collections (5.8 s), 253 MiB peak RSS; every 8th, 38 (2.6 s), 267 MiB; every
 * 4th, 23 (1.1 s), 274 MiB; every 2 s of wall time, 293-307 MiB.
 */
function trimFreedMemory(work: number, now = false): void {
  workSinceTrim += work;
  if (!now && workSinceTrim < memoryBudget() / 8) return;
  workSinceTrim = 0;
  const u = process.memoryUsage();
  if (now || u.heapUsed + u.arrayBuffers > liveAfterCollect + memoryBudget() / 16) {
    collectGarbage();
    const v = process.memoryUsage();
    liveAfterCollect = v.heapUsed + v.arrayBuffers;
  }
  trimHeap();
}

/** Default memory budget of a check-in (what it holds beyond the runtime itself). */
export const DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024;

/**
 * What a check-in holds that grows with the image, estimated from counts (not from the
 * heap, whose garbage comes and goes): the layout's chunk list and ranges, the file data
 * spans, the cuts of hard-linked inodes; plus one batch of walk items. With the fixed shares
 * taken from the same budget (`fixed`: the file-system caches, the store's write buffers, the
 * planned reads' windows) over the budget, a clear error instead of an out-of-memory kill.
 */
class MemoryBudget {
  /** What the check-in holds whatever the tree's size (set once the caches are sized). */
  fixed = 0;

  constructor(
    readonly bytes: number,
    private readonly image: string,
  ) {}

  /**
   * Bytes per chunk held (the "added" bit and the sorted index's fences, grown by doubling;
   * the canonical order's bits at the end; the hash table is counted whole),
   * per span, per linked inode. Ranges are held in one run of `runEntries` (24 bytes each
   * with the sort order), the rest spilled.
   */
  static readonly PER_CHUNK = 1;
  static readonly PER_RANGE = 24;
  static readonly PER_SPAN = 16;
  static readonly PER_LINKED = 200;

  /** Ranges per sorted run (then spilled to the scratch file): 1/32 of the budget. */
  get runEntries(): number {
    return Math.max(16384, Math.floor(this.bytes / 32 / MemoryBudget.PER_RANGE));
  }

  held(b: Builder, spans: number, linked: number): number {
    return (
      b.chunkCount * MemoryBudget.PER_CHUNK +
      b.tableBytes +
      Math.min(b.rangeCount, this.runEntries) * MemoryBudget.PER_RANGE +
      spans * MemoryBudget.PER_SPAN +
      linked * MemoryBudget.PER_LINKED +
      batchSize(this.bytes) * 2048
    );
  }

  check(b: Builder, spans: number, linked: number): void {
    const held = this.held(b, spans, linked);
    if (held + this.fixed > this.bytes) {
      const mib = (n: number) => `${Math.ceil(n / 2 ** 20)} MiB`;
      throw new StrataError(
        'LIMIT',
        `check-in needs more than its memory budget of ${mib(this.bytes)} (${b.chunkCount} chunks and ${b.rangeCount} ranges so far hold about ${mib(held)}, caches and write buffers ${mib(this.fixed)}); give it more memory (memoryBytes, --memory)`,
        { file: this.image, structure: 'check-in memory budget' },
      );
    }
  }
}

/**
 * Where a check-in puts what it cuts: the local store, or a remote library (the serve
 * layer's client asks the server which chunks it lacks and uploads only those). `put`
 * may keep a reference to `plain` only until it returns (the cutter reuses its buffers, and
 * frees an encoded file manifest part at once).
 */
export interface BlobSink {
  put(type: 'data' | 'tree', plain: Uint8Array, digest?: string, opts?: { solo?: boolean }): Promise<PutResult>;
}

export interface CutOptions {
  exact?: boolean;
  openOptions?: OpenOptions;
  fileChunkSize?: number;
  diskChunkSize?: number;
  onProgress?: (done: number, total: number) => void;
  /** What the cut may hold that grows with the image (default DEFAULT_MEMORY_BYTES); over it, a LIMIT error. */
  memoryBytes?: number;
  /** Ranges per sorted run, chunk records held and chunks in the hash table before they go to the scratch file (default from the memory budget). */
  spillEntries?: number;
  /** Write every file manifest as one version 1 blob (a remote library's commit takes those). */
  inlineFileManifests?: boolean;
  /** What the volumes' file systems are opened with (a btrfs RAID's other devices; see openVolumeFileSystem). */
  fsOptions?: FsOpenOptions;
}

/** What cutting an image gave: its layout manifest (not yet stored) and what the sink took. */
export interface CutResult {
  layout: LayoutManifest;
  /** The file manifests (encoded, already given to the sink), by digest. */
  files: Map<string, Uint8Array>;
  chunks: number;
  newChunks: number;
  warnings: string[];
  /** Plain bytes the layout's ranges cover. */
  usedBytes: number;
}

/** A memory budget as given (default: the process-wide budget, --memory, itself 256 MiB unless set): at least 16 MiB. */
export function checkMemoryBytes(v: number | undefined): number {
  // the process-wide budget (the CLI's --memory) when the caller names none
  if (v === undefined) return memoryBudget();
  if (!Number.isSafeInteger(v) || v < 16 * 1024 * 1024) {
    throw new StrataError('USAGE', `memory budget must be at least 16 MiB, not ${v} bytes`);
  }
  return v;
}

export function checkChunkSizes(C: number, W: number): void {
  for (const [what, v] of [
    ['file chunk size', C],
    ['disk chunk size', W],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 4096 || v > 64 * 1024 * 1024 || (v & (v - 1)) !== 0) {
      throw new StrataError('USAGE', `${what} must be a power of two from 4 KiB to 64 MiB, not ${v}`);
    }
  }
}

/** cutImage, its layout in compact form (what a local check-in encodes without the object form). */
async function cutCompact(
  img: DiskImage,
  sourceName: string,
  sink: BlobSink,
  opts: CutOptions = {},
): Promise<CompactCut> {
  const C = opts.fileChunkSize ?? FILE_CHUNK;
  const W = opts.diskChunkSize ?? DISK_CHUNK;
  checkChunkSizes(C, W);
  const budget = new MemoryBudget(checkMemoryBytes(opts.memoryBytes), sourceName);
  const warnings: string[] = [...img.warnings];
  let total = 0;
  // its scratch files are removed by the caller once the layout is stored, here on failure
  const b = new Builder(
    sink,
    opts.onProgress ? () => opts.onProgress?.(Math.min(b.done, total), total) : undefined,
    opts.spillEntries ?? budget.runEntries,
    opts.spillEntries,
    opts.spillEntries,
  );
  const found = img.size >= 512 ? await discoverVolumes(img) : { scheme: 'none', volumes: [], warnings: [] };
  warnings.push(...found.warnings);
  // the walk reads each directory block once: a small metadata cache (at the default 3/16 of
  // the budget it held ~30 MiB of blocks never read again, issue 22)
  const metadataCacheBytes = Math.max(4 << 20, Math.min(16 << 20, Math.floor(budget.bytes / 32)));
  // and each inode once, a directory's in table order (prefetch reads a listing's pieces at
  // once): a 64th of the budget (1-4 MiB) of inode-table pieces, not the default 16th
  const inodeCacheBytes = Math.max(1 << 20, Math.min(4 << 20, Math.floor(budget.bytes / 64)));
  const fsOptions: FsOpenOptions = { metadataCacheBytes, inodeCacheBytes, ...opts.fsOptions };
  const windows = await fsWindows(img, found.volumes, warnings, fsOptions);
  const write = writeLimits(budget.bytes);
  budget.fixed =
    (fsOptions.metadataCacheBytes ?? metadataCacheBytes) +
    (fsOptions.inodeCacheBytes ?? inodeCacheBytes) +
    write.frameBytes +
    write.compressingBytes +
    2 * write.packTargetPlain + // the pack filled and the one written
    plannedWindow(budget.bytes) * PLANNED_KEEP;
  const dataSpans = await diskDataSpans(img);
  const layoutVolumes: LayoutVolume[] = found.volumes.map((v) => ({
    id: v.id,
    scheme: v.scheme,
    type: v.type,
    start: v.start,
    size: v.size,
    content: v.content,
  }));
  try {
    // outside the file systems: the container's data, block-wise
    const outside = subtractSpans(dataSpans, mergeSpans(windows.map((w): Span => [w.base, w.base + w.volume.size])));
    for (const [s, e] of outside) total += e - s;
    // every window's used bytes up front, so the progress total is known from the start
    const allocations: Array<{ spans: Span[]; usedBytes: number }> = [];
    for (const w of windows) {
      const a = await windowAllocation(w, !!opts.exact, dataSpans);
      for (const [s, e] of a.spans) total += e - s;
      allocations.push(a);
    }
    for (const [i, w] of windows.entries()) {
      const fsPart = await cutFileSystem(
        sink,
        b,
        img,
        w,
        C,
        W,
        warnings,
        allocations[i],
        budget,
        !!opts.inlineFileManifests,
      );
      const lv = layoutVolumes.find((x) => x.id === w.volume.id);
      if (lv) lv.fs = fsPart;
    }
    // Each window its own zstd frame: with no file system to group by, these are read back
    // by disk offset (checkout, or an NBD client's random reads), and a read of a blob in a
    // shared frame decodes the whole 8 MiB frame.
    await cutSpans(b, img, outside, W, budget.bytes, true);
  } catch (e) {
    b.close();
    throw e;
  } finally {
    for (const w of windows) await w.fs.close?.();
  }
  const head: LayoutHead = {
    kind: LAYOUT_KIND,
    version: 1,
    virtualSize: img.size,
    sourceName,
    sourceFormat: img.format,
    scheme: found.scheme,
    exact: !!opts.exact,
    fileChunkSize: C,
    diskChunkSize: W,
    volumes: layoutVolumes,
  };
  let canon: CanonicalLayout;
  try {
    canon = b.canonical();
  } catch (e) {
    b.close();
    throw e;
  }
  return { head, canon, b, warnings, usedBytes: canon.usedBytes };
}

/** The layout manifest but its chunk list and ranges (and warnings, which come last). */
type LayoutHead = Omit<LayoutManifest, 'chunks' | 'chunkLengths' | 'ranges' | 'warnings'>;

/** What cutCompact gave: the layout in compact form, and the builder that holds its chunks. */
interface CompactCut {
  head: LayoutHead;
  canon: CanonicalLayout;
  b: Builder;
  warnings: string[];
  usedBytes: number;
}

/** The layout manifest as an object (the remote library's commit sends it as JSON). */
function layoutOf(c: CompactCut): LayoutManifest {
  const { head, canon, b } = c;
  const r = rangeColumns(canon.ranges(), canon.rangeCount);
  const order = canon.order().take(canon.chunkCount);
  return {
    ...head,
    chunks: Array.from(order, (i) => b.hex(i)),
    chunkLengths: Array.from(order, (i) => b.chunkLength(i)),
    ranges: {
      disk: Array.from(r.disk),
      length: Array.from(r.length),
      chunk: Array.from(r.chunk),
      at: Array.from(r.at),
    },
    warnings: c.warnings.slice(0, 1000),
  };
}

/** The next `n` ranges of `from` (CanonicalLayout.ranges) as columns. */
function rangeColumns(from: RangeCursor, n: number): RangeColumns {
  const out = {
    disk: new Float64Array(n),
    length: new Float64Array(n),
    chunk: new Uint32Array(n),
    at: new Uint32Array(n),
  };
  for (let i = 0; i < n; i++) {
    if (!from.next()) throw new Error(`check-in: ${i} ranges where ${n} were counted`);
    out.disk[i] = from.disk;
    out.length[i] = from.length;
    out.chunk[i] = from.chunk;
    out.at[i] = from.at;
  }
  return out;
}

interface RangeColumns {
  disk: Float64Array;
  length: Float64Array;
  chunk: Uint32Array;
  at: Uint32Array;
}

/**
 * The layout manifest's bytes, exactly `encodeManifest(layoutOf(c))` (JSON.stringify of the
 * same object, keys in the same order), written straight from the compact columns: at a
 * million chunks the object form is ~200 MB of strings and arrays and its JSON a ~100 MB
 * string on top; this holds only the result.
 */
function encodeLayout(c: CompactCut): Uint8Array {
  const { head, canon } = c;
  const w = new ByteWriter(canon.chunkCount * 80 + canon.rangeCount * 40 + 4096);
  const pre = JSON.stringify(head);
  w.text(pre.slice(0, -1)); // without its closing brace
  w.text(',');
  writeColumns(w, c, canon.order().take(canon.chunkCount), rangeColumns(canon.ranges(), canon.rangeCount));
  w.text(`,"warnings":${JSON.stringify(c.warnings.slice(0, 1000))}}`);
  return w.bytes();
}

/** `"chunks":[..],"chunkLengths":[..],"ranges":{..}` of the chunks `order` (builder numbers) and ranges `r`. */
function writeColumns(w: ByteWriter, c: CompactCut, order: Uint32Array, r: RangeColumns): void {
  const { b } = c;
  w.text('"chunks":[');
  for (let k = 0; k < order.length; k++) {
    const hex = b.hex(order[k]);
    w.text(k === 0 ? `"${hex}"` : `,"${hex}"`);
  }
  w.text('],"chunkLengths":');
  w.numbers(Array.from(order, (i) => b.chunkLength(i)));
  w.text(',"ranges":{"disk":');
  w.numbers(r.disk);
  w.text(',"length":');
  w.numbers(r.length);
  w.text(',"chunk":');
  w.numbers(r.chunk);
  w.text(',"at":');
  w.numbers(r.at);
  w.text('}');
}

/**
 * Store the layout manifest: version 1 (encodeLayout) when it has at most `P` chunks and
 * ranges, else version 2 (manifest.ts): its parts of `P` chunks and ranges each, encoded and
 * stored one at a time (one part's bytes in memory, not the whole ~100 MB of a million-file
 * layout), then its head. Returns the head's put and every part's.
 */
async function putLayout(
  sink: BlobSink,
  c: CompactCut,
  P: number,
): Promise<{ manifest: PutResult; parts: PutResult[] }> {
  const chunks = c.canon.chunkCount;
  const ranges = c.canon.rangeCount;
  if (chunks <= P && ranges <= P) return { manifest: await sink.put('tree', encodeLayout(c)), parts: [] };
  const parts: PutResult[] = [];
  const partDisk: number[] = [];
  const from = c.canon.ranges();
  const order = c.canon.order();
  for (let i = 0; i * P < Math.max(chunks, ranges); i++) {
    const w = new ByteWriter(P * 120);
    w.text(`{"kind":"${LAYOUT_PART_KIND}","version":1,`);
    const c0 = Math.min(chunks, i * P);
    const r0 = Math.min(ranges, i * P);
    const r = rangeColumns(from, Math.min(ranges, r0 + P) - r0);
    partDisk.push(r.disk.length > 0 ? r.disk[0] : c.head.virtualSize);
    writeColumns(w, c, order.take(Math.min(chunks, c0 + P) - c0), r);
    w.text('}');
    parts.push(await sink.put('tree', w.bytes()));
  }
  const head: LayoutManifestHead = {
    ...c.head,
    version: 2,
    chunkCount: chunks,
    rangeCount: ranges,
    partEntries: P,
    parts: parts.map((p) => p.digest),
    partDisk,
    warnings: c.warnings.slice(0, 1000),
  };
  return { manifest: await sink.put('tree', Buffer.from(JSON.stringify(head))), parts };
}

/** Appends text (UTF-8) to one growing buffer. */
class ByteWriter {
  private buf: Buffer;
  private n = 0;
  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }
  text(s: string): void {
    const need = this.n + Buffer.byteLength(s);
    if (need > this.buf.length) {
      const b = Buffer.allocUnsafe(Math.max(need, this.buf.length * 2));
      this.buf.copy(b, 0, 0, this.n);
      this.buf = b;
    }
    this.n += this.buf.write(s, this.n);
  }
  /** A JSON array of numbers, as JSON.stringify writes it; in pieces (no one giant string). */
  numbers(a: ArrayLike<number>): void {
    this.text('[');
    for (let i = 0; i < a.length; i += 4096) {
      const part: number[] = [];
      for (let j = i; j < Math.min(a.length, i + 4096); j++) part.push(a[j]);
      const s = JSON.stringify(part);
      this.text(i === 0 ? s.slice(1, -1) : `,${s.slice(1, -1)}`);
    }
    this.text(']');
  }
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.n);
  }
}

/**
 * Cut an opened image along its structure into `sink`: file data by file offset, the
 * rest of each file system's used bytes and everything outside file systems by disk
 * offset (see the top of this file). The layout manifest is returned, not stored.
 */
export async function cutImage(
  img: DiskImage,
  sourceName: string,
  sink: BlobSink,
  opts: CutOptions = {},
): Promise<CutResult> {
  const c = await cutCompact(img, sourceName, sink, opts);
  let layout: LayoutManifest;
  try {
    layout = layoutOf(c);
  } finally {
    c.b.close();
  }
  return {
    layout,
    files: c.b.trees,
    chunks: c.b.chunkCount,
    newChunks: c.b.newChunks,
    warnings: c.warnings,
    usedBytes: c.usedBytes,
  };
}

/** Check `image` in as a new version of `opts.name`. */
export async function checkin(lib: Library, image: string, opts: CheckinOptions): Promise<CheckinResult> {
  checkChunkSizes(opts.fileChunkSize ?? FILE_CHUNK, opts.diskChunkSize ?? DISK_CHUNK);
  const memoryBytes = checkMemoryBytes(opts.memoryBytes);
  const { checkImageName, checkTag } = await import('../catalog/catalog.js');
  checkImageName(opts.name);
  for (const t of opts.tags ?? []) checkTag(t);
  const lock = await RepoLock.acquire(
    lib.store.backend,
    'shared',
    `checkin ${opts.name}`,
    opts.lockWaitMs ?? 10 * 60_000,
  );
  try {
    await lib.store.loadIndex(); // what a gc that just finished left
    const parents = [];
    for (const ref of opts.parents ?? []) {
      const v = await lib.catalog.resolve(ref);
      parents.push({ image: v.image, number: v.number });
    }
    if (!opts.parents) {
      const prev = (await lib.catalog.versions(opts.name)).pop();
      if (prev) parents.push({ image: prev.image, number: prev.number });
    }
    // an overlay made by `strata nbd REF --overlay` backs onto a library version (see backing.ts)
    let bootedFrom: string | undefined;
    const img = await openImage(image, {
      ...opts.openOptions,
      resolveBacking: async (ref, from) => {
        const digest = parseLibraryBacking(ref.path, from);
        if (digest === undefined) return undefined;
        if (opts.libraryBacking === false) {
          throw new StrataError('DENIED', `backing ${ref.path} names a library version; not followed here`, {
            file: from,
            structure: 'backing file name',
          });
        }
        bootedFrom = digest;
        return versionImage(lib, digest, from);
      },
    });
    if (bootedFrom && !opts.parents) {
      // no --parent: the version the overlay was booted from, not the latest of NAME
      const v = await lib.catalog.resolve(bootedFrom).catch(() => undefined);
      if (v) parents.splice(0, parents.length, { image: v.image, number: v.number });
    }
    let deviceImages: DiskImage[] = [];
    /** The cut's builder: its scratch files go however the check-in ends. */
    let scratch: Builder | undefined;
    try {
      const fsOptions: FsOpenOptions = {};
      if (opts.devices && opts.devices.length > 0) {
        const d = await openDeviceTargets(opts.devices, opts.openOptions, { library: lib.dir });
        deviceImages = d.images;
        fsOptions.devices = d.devices;
      }
      // the store's write buffers (~100 MiB at the default budget) shrink with a small one
      lib.store.setWriteBudget(memoryBytes);
      // frames, windows and chunk buffers of 1 MiB and more come and go: each in its own
      // mapping, returned when freed (200,000 files: 226 -> 210 MiB peak RSS, bench/README.md)
      mmapLargeAllocations(1 << 20);
      let cut: CompactCut | undefined = await cutCompact(img, image, lib.store, { ...opts, fsOptions });
      scratch = cut.b;
      const { head, warnings, usedBytes } = cut;
      const chunks = cut.b.chunkCount;
      const newChunks = cut.b.newChunks;
      const { manifest: m, parts } = await putLayout(lib.store, cut, opts.layoutPartEntries ?? LAYOUT_PART_ENTRIES);
      await lib.store.flush();
      // the manifests count as new bytes too; a blob in a shared frame counts for its share of it
      let storedBytes = 0;
      let newBytes = 0;
      for (const p of [m, ...parts]) {
        const size = lib.store.storedSize(p.digest);
        storedBytes += size;
        if (p.added) newBytes += size;
      }
      for (let i = 0; i < chunks; i++) {
        const size = lib.store.storedSize(cut.b.hex(i));
        storedBytes += size;
        if (cut.b.added(i)) newBytes += size;
      }
      for (const v of head.volumes) if (v.fs) storedBytes += lib.store.storedSize(v.fs.files);
      for (const d of cut.b.addedTrees) newBytes += lib.store.storedSize(d);
      cut = undefined; // what grew with the image, before inspection reads the version back
      scratch.close();
      await lib.store.releaseWriteBuffers();
      trimFreedMemory(0, true);
      const row = await lib.catalog.addVersion({
        image: opts.name,
        description: opts.description,
        message: opts.message,
        manifest: m.digest,
        createdBy: opts.createdBy ?? defaultUser(),
        sourceName: opts.sourceName ?? image,
        sourceFormat: img.format,
        virtualSize: img.size,
        usedBytes,
        storedBytes,
        newBytes,
        exact: !!opts.exact,
        parents,
        tags: opts.tags ?? [],
      });
      if (opts.inspect !== false) await inspectAfterCheckin(lib, row, warnings, fsOptions);
      return {
        image: row.image,
        number: row.number,
        ref: `${row.image}@${row.number}`,
        manifest: m.digest,
        virtualSize: img.size,
        usedBytes,
        newBytes,
        storedBytes,
        dedupRatio: newBytes > 0 ? usedBytes / newBytes : usedBytes > 0 ? Number.POSITIVE_INFINITY : 1,
        chunks,
        newChunks,
        volumes: head.volumes,
        warnings,
      };
    } finally {
      scratch?.close();
      const { closeChain } = await import('../formats/layer.js');
      for (const d of deviceImages) await closeChain(d).catch(() => {});
      await closeChain(img);
    }
  } finally {
    await lock.release();
  }
}

export function defaultUser(): string {
  try {
    return `${userInfo().username}@${hostname()}`;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}@${hostname()}`;
  }
}
