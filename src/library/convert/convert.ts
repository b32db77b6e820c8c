import { existsSync, realpathSync } from 'node:fs';
import { chain, resolvedStatus } from '../../formats/layer.js';
import type { DiskImage } from '../../formats/types.js';
import { openAtomicOutput } from '../../formats/writers/atomic-output.js';
import { type ImageWriter, isZeroRange, Qcow2Writer, RawWriter } from '../../formats/writers/index.js';
import { pageAlignedBuffer } from '../../util/aligned.js';
import { StrataError } from '../../util/errors.js';
import { canCopyNatively, nativeCopy, poolCopyQcow2 } from './native-copy.js';

export interface ConvertOptions {
  format: 'raw' | 'qcow2';
  compression?: 'zlib' | 'zstd';
  clusterSize?: number;
  /** qcow2 only: record `path` (as given) as the backing file; only what differs from `image` is written. */
  backing?: { path: string; format: string; image: DiskImage };
  onProgress?: (done: number, total: number) => void;
  /** fdatasync the output before renaming it into place (qemu-img convert does not sync by default). */
  sync?: boolean;
  /** Stop early (Ctrl-C): the temporary file is removed and nothing appears at `outPath`. */
  signal?: AbortSignal;
  /**
   * The bulk copier on worker threads (direct-copy.ts) for plain outputs: 'auto' (default)
   * uses it for disks of DIRECT_MIN_BYTES and more, 'always' for any size, 'never' keeps the
   * single-threaded pump, 'workers' the worker-thread copier even where the native one
   * (raw outputs, native/copy.c) would run. All write the same disk.
   */
  directCopy?: 'auto' | 'always' | 'never' | 'workers';
  /** Replace an existing file at the output path (default true; the CLI refuses unless --force). */
  overwrite?: boolean;
}

export interface ConvertResult {
  virtualSize: number;
  /** Bytes read from the source (and the backing image, when comparing against it). */
  bytesRead: number;
  /** Bytes written to the output file. */
  bytesWritten: number;
}

/**
 * Largest read handed to the writer at once: 1 MiB into reused buffers when the source can
 * read into ours; otherwise 256 KiB, because the reader then allocates a buffer per read
 * and big fresh allocations cost page faults on every use (measured on the 1 GiB bench
 * disk: vhdx->raw 4 MiB 10.4 s, 1 MiB 6-7.9 s, 256 KiB 3.7-4.3 s). With reused buffers,
 * 1 MiB beats 4 MiB (qcow2->raw on tmpfs, in-process, median of 10: 381-420 ms against
 * 471-508 ms; 2 MiB and 512 KiB in between): the buffers in flight (8 MiB) stay in the CPU
 * cache between the read that fills them and the write that empties them, and fault in 4x
 * fewer pages. The write into fresh page-cache pages is the critical path either way.
 */
const CHUNK_POOLED = 1024 * 1024;
const CHUNK_FRESH = 256 * 1024;
/**
 * Pooled reads of a source with no direct map (a stream-optimized vmdk, whose every read is
 * inflated in the worker pool): 4 MiB, so a quarter of the hand-offs to the workers and the
 * pool. vmdk streamOptimized -> raw, 1 GiB mixed disk, 3 interleaved rounds at load 30-38,
 * user+sys CPU: 1.50-2.38 s against 1.87-2.75 s with 1 MiB reads (qemu-img 1.40-2.50 s).
 */
const CHUNK_STREAMED = 4 * 1024 * 1024;
/** Reads kept in flight ahead of the writer (bytes and count). */
const READ_AHEAD_BYTES = 32 * 1024 * 1024;
const READ_AHEAD_ITEMS = 64;
/**
 * Status is asked in windows of this size (a multiple of every cluster size, and below
 * the read-size limit some drivers apply to status requests too).
 */
const STATUS_WINDOW = 64 * 1024 * 1024;
/** Data ranges closer than this are read as one (the zeros between are cheap to check). */
const MERGE_GAP = 0;

interface Item {
  offset: number;
  length: number;
  kind: 'data' | 'zero';
}

/**
 * Convert an opened image (its whole backing chain, as the guest sees it) into a new raw
 * or qcow2 file. Zero and unallocated ranges are skipped without reading; data ranges
 * are read ahead in large chunks while the writer works, and all-zero clusters in them
 * are not stored. The output appears atomically: it is written to a temporary file next
 * to `outPath` and renamed over it only when complete.
 */
export async function convertImage(src: DiskImage, outPath: string, opts: ConvertOptions): Promise<ConvertResult> {
  if (opts.format !== 'raw' && opts.format !== 'qcow2') {
    throw new StrataError('USAGE', `cannot write format '${opts.format}' (known: raw, qcow2)`, { file: outPath });
  }
  if (opts.format === 'raw' && (opts.compression || opts.backing || opts.clusterSize)) {
    throw new StrataError('USAGE', 'compression, cluster size and backing files need -O qcow2', { file: outPath });
  }
  if (opts.compression && opts.compression !== 'zlib' && opts.compression !== 'zstd') {
    throw new StrataError('USAGE', `unknown compression type '${opts.compression}' (known: zlib, zstd)`, {
      file: outPath,
    });
  }
  refuseOverwritingInputs(src, outPath, opts.backing?.image);

  const out = await openAtomicOutput(outPath, { overwrite: opts.overwrite });
  try {
    const writer: ImageWriter =
      opts.format === 'raw'
        ? await RawWriter.create(out.fh, outPath, src.size)
        : await Qcow2Writer.create(out.fh, outPath, {
            virtualSize: src.size,
            clusterSize: opts.clusterSize,
            compression: opts.compression,
            backing: opts.backing ? { path: opts.backing.path, format: opts.backing.format } : undefined,
          });
    // Plain outputs: the native copier (raw) or the pool copier (qcow2): no start-up cost, so any
    // size; the worker copier for large disks when the addon is missing (or asked for).
    // STRATA_NO_NATIVE_COPY=1 (bench/convert's BENCH_WORKERS): the worker copier, for comparison.
    // direct-copy.ts (node:worker_threads) is loaded only then: ~2 ms of every short convert.
    const native =
      src.direct &&
      opts.directCopy !== 'never' &&
      opts.directCopy !== 'workers' &&
      process.env.STRATA_NO_NATIVE_COPY !== '1';
    const dt = !opts.backing && (native || wantDirect(src, opts)) ? writer.directTarget?.() : undefined;
    const how = { outName: outPath, onProgress: opts.onProgress, signal: opts.signal };
    const bytesRead =
      dt && native && canCopyNatively(dt)
        ? await nativeCopy(src, dt, how)
        : dt && native && dt.layout === 'qcow2'
          ? await poolCopyQcow2(src, dt, how)
          : dt && wantDirect(src, opts)
            ? await (await import('./direct-copy.js')).directCopy(src, dt, how)
            : await pump(src, writer, opts.backing?.image, opts.onProgress, opts.signal);
    const { bytesWritten } = await writer.finish();
    await out.commit(opts.sync);
    return { virtualSize: src.size, bytesRead, bytesWritten };
  } catch (e) {
    await out.abort();
    throw e;
  }
}

/**
 * Below this virtual size the copy workers' start-up (~20-30 ms of a core each) costs more
 * than they save.
 */
const DIRECT_MIN_BYTES = 64 * 1024 * 1024;

function wantDirect(src: DiskImage, opts: ConvertOptions): boolean {
  if (!src.direct || opts.directCopy === 'never') return false;
  return opts.directCopy === 'always' || opts.directCopy === 'workers' || src.size >= DIRECT_MIN_BYTES;
}

function refuseOverwritingInputs(src: DiskImage, outPath: string, backing?: DiskImage): void {
  if (!existsSync(outPath)) return;
  const out = realpathSync(outPath);
  const inputs = [...chain(src), ...(backing ? [...chain(backing)] : [])];
  for (const layer of inputs) {
    let p: string;
    try {
      p = realpathSync(layer.name);
    } catch {
      continue;
    }
    if (p === out) {
      throw new StrataError('USAGE', `output would overwrite an input image (${layer.name})`, { file: outPath });
    }
  }
}

/** Cluster-aligned data and zero ranges of the whole disk, data split into chunks. */
function chunkSize(gran: number, pooled: boolean, streamed: boolean): number {
  const c = pooled ? (streamed ? CHUNK_STREAMED : CHUNK_POOLED) : CHUNK_FRESH;
  return Math.max(gran, Math.floor(c / gran) * gran);
}

async function* plan(img: DiskImage, gran: number, chunk: number): AsyncGenerator<Item> {
  const size = img.size;
  let cursor = 0;
  let ds = -1;
  let de = -1;
  function* flush(): Generator<Item> {
    if (ds < 0) return;
    if (ds > cursor) yield { offset: cursor, length: ds - cursor, kind: 'zero' };
    for (let o = ds; o < de; ) {
      const end = Math.min(de, (Math.floor(o / chunk) + 1) * chunk);
      yield { offset: o, length: end - o, kind: 'data' };
      o = end;
    }
    cursor = de;
    ds = de = -1;
  }
  for (let w = 0; w < size; w += STATUS_WINDOW) {
    for (const e of await resolvedStatus(img, w, Math.min(STATUS_WINDOW, size - w))) {
      if (e.kind !== 'data' || e.length <= 0) continue;
      const s = Math.floor(e.offset / gran) * gran;
      const en = Math.min(size, Math.ceil((e.offset + e.length) / gran) * gran);
      if (ds >= 0 && s <= de + MERGE_GAP) de = Math.max(de, en);
      else {
        yield* flush();
        ds = s;
        de = en;
      }
    }
  }
  yield* flush();
  if (cursor < size) yield { offset: cursor, length: size - cursor, kind: 'zero' };
}

interface Pending {
  item: Item;
  data?: Promise<Uint8Array>;
  below?: Promise<Uint8Array | undefined>;
  /** A pooled buffer to hand back once the item is written. */
  pooled?: Uint8Array;
}

/** Writes kept in flight while the next chunks are checked. */
const MAX_WRITES = 2;

/** Read buffers kept for reuse when the source can read into them (fresh memory costs page faults). */
const POOL_BUFFERS = 8;

async function pump(
  src: DiskImage,
  writer: ImageWriter,
  backing: DiskImage | undefined,
  onProgress?: (done: number, total: number) => void,
  signal?: AbortSignal,
): Promise<number> {
  const gran = writer.granularity;
  const total = src.size;
  const readInto = src.readInto?.bind(src);
  const chunk = chunkSize(gran, readInto !== undefined, !src.direct);
  let bytesRead = 0;
  const queue: Pending[] = [];
  let queued = 0;
  // One page-aligned shared region for all pooled buffers, sliced (each chunk a multiple of 4 KiB).
  const pool: Uint8Array[] = [];
  if (readInto) {
    const region = pageAlignedBuffer(chunk * POOL_BUFFERS, true);
    for (let i = 0; i < POOL_BUFFERS; i++) pool.push(region.subarray(i * chunk, (i + 1) * chunk));
  }
  let pooledInFlight = 0;
  const writes: Promise<void>[] = [];

  const start = (item: Item): Pending => {
    const p: Pending = { item };
    if (item.kind === 'data') {
      if (readInto) {
        const buf = pool.pop()!; // never empty: at most POOL_BUFFERS are in flight
        const view = buf.subarray(0, item.length);
        p.pooled = buf;
        pooledInFlight++;
        p.data = readInto(item.offset, view).then((n) => view.subarray(0, n));
      } else p.data = src.read(item.offset, item.length);
      p.data.catch(() => {});
      if (backing) {
        p.below = readBacking(backing, item.offset, item.length);
        p.below.catch(() => {});
      }
      queued += item.length;
    }
    return p;
  };

  const finishOne = async (p: Pending): Promise<void> => {
    const { item } = p;
    if (item.kind === 'zero') {
      if (backing) await zeroOverBacking(backing, writer, item, gran);
    } else {
      queued -= item.length;
      const data = await p.data!;
      if (data.length !== item.length) {
        throw new StrataError('TRUNCATED', `short read: wanted ${item.length} bytes, got ${data.length}`, {
          file: src.name,
          structure: 'virtual disk',
          offset: item.offset,
        });
      }
      bytesRead += data.length;
      const below = p.below ? await p.below : undefined;
      if (backing) {
        bytesRead += below?.length ?? 0;
        await writeDifferences(writer, item.offset, data, below, gran);
        release(p);
      } else {
        // Let a few writes run while the next chunks are checked; the buffer returns to the pool when its write is done.
        const w = writer.writeData(item.offset, data).then(() => release(p));
        w.catch(() => {});
        writes.push(w);
        while (writes.length > MAX_WRITES) await writes.shift();
      }
    }
    onProgress?.(item.offset + item.length, total);
  };
  const release = (p: Pending) => {
    if (p.pooled) {
      pool.push(p.pooled);
      pooledInFlight--;
    }
  };

  const full = () => queue.length >= READ_AHEAD_ITEMS || queued >= READ_AHEAD_BYTES || pooledInFlight >= POOL_BUFFERS;
  for await (const item of plan(src, gran, chunk)) {
    if (signal?.aborted) throw new StrataError('USAGE', 'conversion interrupted', { file: src.name });
    while (queue.length > 0 && full()) await finishOne(queue.shift()!);
    queue.push(start(item));
  }
  while (queue.length > 0) await finishOne(queue.shift()!);
  await Promise.all(writes);
  onProgress?.(total, total);
  return bytesRead;
}

/** The backing image's bytes over [offset, offset+length), or undefined when they are all zeros. */
async function readBacking(b: DiskImage, offset: number, length: number): Promise<Uint8Array | undefined> {
  const n = Math.max(0, Math.min(length, b.size - offset));
  if (n === 0) return undefined;
  const st = await resolvedStatus(b, offset, n);
  if (!st.some((e) => e.kind === 'data')) return undefined;
  const got = await b.read(offset, n);
  if (n === length && got.length === length) return got;
  const out = new Uint8Array(length);
  out.set(got.subarray(0, n));
  return out;
}

/** Write only the clusters that differ from the backing image (zero ones become zero clusters). */
async function writeDifferences(
  writer: ImageWriter,
  offset: number,
  data: Uint8Array,
  below: Uint8Array | undefined,
  gran: number,
): Promise<void> {
  let run = -1;
  for (let p = 0; p < data.length; p += gran) {
    const q = Math.min(data.length, p + gran);
    const differs = below ? Buffer.compare(data.subarray(p, q), below.subarray(p, q)) !== 0 : !isZeroRange(data, p, q);
    if (differs && run < 0) run = p;
    if (!differs && run >= 0) {
      await writer.writeData(offset + run, data.subarray(run, p));
      run = -1;
    }
  }
  if (run >= 0) await writer.writeData(offset + run, data.subarray(run));
}

/** A source range reads as zeros: where the backing holds data there, say so explicitly. */
async function zeroOverBacking(b: DiskImage, writer: ImageWriter, item: Item, gran: number): Promise<void> {
  const end = Math.min(item.offset + item.length, b.size);
  for (let w = item.offset; w < end; w += STATUS_WINDOW) {
    for (const e of await resolvedStatus(b, w, Math.min(STATUS_WINDOW, end - w))) {
      if (e.kind !== 'data') continue;
      const s = Math.floor(e.offset / gran) * gran;
      const en = Math.ceil((e.offset + e.length) / gran) * gran;
      writer.zero(s, en - s);
    }
  }
}
