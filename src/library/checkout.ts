import { openAtomicOutput } from '../formats/writers/atomic-output.js';
import { type ImageWriter, Qcow2Writer, RawWriter } from '../formats/writers/index.js';
import { StrataError } from '../util/errors.js';
import { memoryBudget } from '../util/memory.js';
import type { Library } from './library.js';
import type { LayoutSlice, RangedSource } from './version-source.js';

/** Disk windows written at once at most (a power of two: a multiple of every writer granularity). */
const MAX_WINDOW = 16 * 1024 * 1024;
/** ... and at least (a qcow2 writer's largest cluster). */
const MIN_WINDOW = 2 * 1024 * 1024;
/** Data spans closer than this are written as one piece. */
const MERGE_GAP = 256 * 1024;
/** Pieces being assembled ahead of the writer. */
const AHEAD = 3;

/**
 * The window size for the memory budget: the AHEAD windows being assembled and the one being
 * written, together at most a quarter of it (16 MiB from a budget of 256 MiB; 8 MiB at the
 * CLI's default budget, where four 16 MiB windows were 64 of the ~158 MiB data budget and
 * checkout of the 1,000,000-entry version peaked past 256 MiB resident).
 */
function checkoutWindow(budget = memoryBudget()): number {
  let w = MAX_WINDOW;
  while (w > MIN_WINDOW && w * (AHEAD + 1) > budget / 4) w /= 2;
  return w;
}

export interface CheckoutOptions {
  format?: 'raw' | 'qcow2';
  sync?: boolean;
  onProgress?: (done: number, total: number) => void;
  /** Replace an existing file at the output path (default true; the CLI refuses unless --force). */
  overwrite?: boolean;
}

export interface CheckoutResult {
  ref: string;
  output: string;
  format: string;
  virtualSize: number;
  /** Bytes the version's ranges cover (read from the store). */
  dataBytes: number;
  bytesWritten: number;
}

/** Open a stored version as a ByteSource that reads chunks on demand (a layout in parts a part at a time). */
export async function openVersionSource(lib: Library, ref: string): Promise<RangedSource> {
  const v = await lib.catalog.resolve(ref);
  return lib.versionSource(v.manifest, `${lib.dir}#${v.image}@${v.number}`);
}

/**
 * Write a stored version as a sparse raw or qcow2 file: only windows holding data are
 * assembled and handed to the writer, which skips zero blocks. The output appears
 * atomically (temporary file, then rename).
 */
export async function checkout(
  lib: Library,
  ref: string,
  out: string,
  opts: CheckoutOptions = {},
): Promise<CheckoutResult> {
  const format = opts.format ?? 'raw';
  if (format !== 'raw' && format !== 'qcow2') {
    throw new StrataError('USAGE', `unknown output format '${format}' (known: raw, qcow2)`, { file: out });
  }
  const v = await lib.catalog.resolve(ref);
  const src = await lib.versionSource(v.manifest, `${v.image}@${v.number}`);
  const dest = await openAtomicOutput(out, { overwrite: opts.overwrite }).catch(async (e) => {
    await src.close();
    throw e;
  });
  try {
    const writer: ImageWriter =
      format === 'raw'
        ? await RawWriter.create(dest.fh, out, src.size)
        : await Qcow2Writer.create(dest.fh, out, { virtualSize: src.size });
    // pieces that hold data, in order: data spans widened to the writer's granularity, spans
    // closer than MERGE_GAP joined (a few zeros are cheaper than another write), at most WINDOW long
    const G = writer.granularity;
    const WINDOW = checkoutWindow();
    const pieces: Array<[number, number]> = [];
    let dataBytes = 0;
    // the packs the version's chunks live in, in disk order (one chunk of each): a remote
    // store's cache fetches them ahead. A slice's ranges name its own chunks and earlier
    // slices' (check-in numbers chunks in disk order); the rest of its chunks follow them.
    const packs = new Set<string>();
    const firsts: string[] = [];
    const note = (d: string) => {
      const p = lib.store.entry(d)?.pack;
      if (p !== undefined && !packs.has(p)) {
        packs.add(p);
        firsts.push(d);
      }
    };
    const noteChunks = (sl: LayoutSlice) => {
      const n = sl.chunks.length;
      for (const c of sl.ranges.chunk)
        if (c >= sl.firstChunk && c - sl.firstChunk < n) note(sl.chunks[c - sl.firstChunk]);
      for (const d of sl.chunks) note(d);
    };
    // the layout walked once, a slice (a part) at a time
    for await (const [s, e] of src.dataSpans(noteChunks)) {
      dataBytes += e - s;
      const a = Math.floor(s / G) * G;
      const b = Math.min(src.size, Math.ceil(e / G) * G);
      const last = pieces[pieces.length - 1];
      if (last && a - last[1] <= MERGE_GAP && b - last[0] <= WINDOW) last[1] = Math.max(last[1], b);
      else if (last && a < last[1]) {
        // overlaps the previous piece's last granule but would make it too long: start after it
        if (b > last[1]) pieces.push([last[1], b]);
      } else pieces.push([a, b]);
      // split what grew past WINDOW (a single long span)
      const cur = pieces[pieces.length - 1];
      while (cur[1] - cur[0] > WINDOW) {
        pieces.splice(pieces.length - 1, 0, [cur[0], cur[0] + WINDOW]);
        cur[0] += WINDOW;
      }
    }
    lib.store.prefetch(firsts);
    // progress in the bytes the pieces cover (data spans widened and joined), which is what `done` counts
    let pieceBytes = 0;
    for (const [a, b] of pieces) pieceBytes += b - a;
    let done = 0;
    const inflight: Array<Promise<Uint8Array>> = [];
    // window buffers are reused once the writer is done with them
    const pool: Uint8Array[] = [];
    const assemble = async ([a, b]: [number, number]) => {
      const full = pool.pop() ?? Buffer.allocUnsafe(WINDOW);
      const buf = full.subarray(0, b - a);
      await src.readInto(a, buf);
      return buf;
    };
    for (let i = 0; i < pieces.length; i++) {
      while (inflight.length < AHEAD && i + inflight.length < pieces.length) {
        const p = assemble(pieces[i + inflight.length]);
        p.catch(() => {}); // awaited in order below; a failure ahead must not go unhandled meanwhile
        inflight.push(p);
      }
      const buf = await (inflight.shift() as Promise<Uint8Array>);
      await writer.writeData(pieces[i][0], buf);
      pool.push(Buffer.from(buf.buffer, buf.byteOffset, WINDOW));
      done += buf.length;
      opts.onProgress?.(done, pieceBytes);
    }
    const { bytesWritten } = await writer.finish();
    await dest.commit(opts.sync);
    return { ref: `${v.image}@${v.number}`, output: out, format, virtualSize: src.size, dataBytes, bytesWritten };
  } catch (e) {
    await dest.abort();
    throw e;
  } finally {
    await src.close();
  }
}
