import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { seekStatus } from '../io/native.js';
import type { LayoutSlice, RangedSource } from '../library/version-source.js';
import { StrataError } from '../util/errors.js';

export interface CompareResult {
  /** 1 where TARGET already holds the version's bytes (the block is not fetched). */
  local: Uint8Array;
  /** Chunk placements whose bytes on TARGET hash to the chunk's digest, and those that do not. */
  matched: number;
  mismatched: number;
  /** Bytes of TARGET read to decide. */
  readBytes: number;
}

/** Slices whose chunk lists a run of ranges may name (first-use numbering lags the ranges by the duplicates). */
const CHUNK_SLICES_KEPT = 24;
/** Ranges of scattered chunks (placed in more than one run) gathered in memory at once (~40 bytes each). */
const SCATTERED_RANGES = 131_072;

/** A chunk's placed ranges as [disk, length, offset in chunk] triples. */
type Placed = number[];

/**
 * `--compare` for a TARGET nothing is known about: read TARGET along the version's chunk
 * boundaries and hash each chunk's bytes as TARGET holds them. A chunk's digest is of its
 * whole plain bytes: its placed ranges, ordered by offset in the chunk, are hashed with
 * zeros where the layout places none of it (a file's holes), so a match proves every placed
 * byte; a chunk placed twice is checked once per placement. A block is local when every range in it belongs to a
 * placement that matched and every byte in it that the version leaves free reads as zero
 * on TARGET (holes are zero without reading). Anything else in the block is fetched.
 *
 * The layout is walked a part at a time (never joined): a first walk checks the free space
 * and marks the chunks whose ranges are not one run in disk order (a duplicate file's, a
 * fragmented one's); a second hashes each run as it passes and gathers the scattered chunks'
 * ranges, hashed at the end (in windows of chunk numbers, one more walk each, when they are
 * more than SCATTERED_RANGES).
 */
export async function compareTarget(
  fh: FileHandle,
  layout: RangedSource,
  blockSize: number,
  size: number,
): Promise<CompareResult> {
  const blocks = Math.ceil(size / blockSize);
  const bad = new Uint8Array(blocks);
  const st = { readBytes: 0, matched: 0, mismatched: 0 };
  const markBad = (s: number, n: number) => {
    const a = Math.floor(s / blockSize);
    const b = Math.min(blocks, Math.ceil((s + n) / blockSize));
    bad.fill(1, a, Math.max(a + 1, b));
  };
  const buf = Buffer.alloc(4 << 20);
  const C = layout.chunkCount;
  const bits = () => new Uint8Array(Math.ceil(C / 8));
  const has = (b: Uint8Array, c: number) => (b[c >> 3] & (1 << (c & 7))) !== 0;
  const set = (b: Uint8Array, c: number) => {
    b[c >> 3] |= 1 << (c & 7);
  };
  // both walks keep the chunk ranges of the last slices alike: a run is hashed as it passes
  // only when its chunk is one of theirs
  const kept: Array<[number, number]> = [];
  const keep = (first: number, n: number) => {
    kept.push([first, first + n]);
    if (kept.length > CHUNK_SLICES_KEPT) kept.shift();
  };
  const inKept = (c: number) => kept.some(([a, b]) => c >= a && c < b);
  const badChunk = (c: number, at: number) =>
    new StrataError('CORRUPT', `a range names chunk ${c} of ${C}`, {
      file: layout.name,
      structure: 'layout manifest',
      offset: at,
    });

  // walk 1: what the version leaves free must read as zero on TARGET; which chunks are scattered
  const seen = bits();
  const scattered = bits();
  let prev = -1;
  let pos = 0;
  for await (const sl of layout.slices()) {
    keep(sl.firstChunk, sl.chunks.length);
    const { disk, length, chunk } = sl.ranges;
    for (let i = 0; i < disk.length; i++) {
      const c = chunk[i];
      if (!(c >= 0 && c < C)) throw badChunk(c, disk[i]);
      if (c !== prev && (has(seen, c) || !inKept(c))) set(scattered, c);
      set(seen, c);
      prev = c;
      if (disk[i] > pos) await checkFree(fh, pos, disk[i], buf, bad, blockSize, st);
      pos = Math.max(pos, disk[i] + length[i]);
    }
  }
  if (pos < size) await checkFree(fh, pos, size, buf, bad, blockSize, st);

  // walk 2: runs hashed as they pass; scattered chunks' ranges gathered (or counted, when too many)
  kept.length = 0;
  const chunkLists: Array<{ first: number; digests: Buffer; lengths: Float64Array }> = [];
  let run: { c: number; digest: string; len: number; ranges: Placed } | undefined;
  const flush = async () => {
    if (run) await checkChunk(fh, run.digest, run.len, run.ranges, buf, markBad, st);
    run = undefined;
  };
  const BUCKETS = 4096;
  const perBucket = new Float64Array(BUCKETS);
  const bucket = (c: number) => Math.floor((c * BUCKETS) / Math.max(1, C));
  let gathered: Gathered | undefined = new Gathered();
  let total = 0;
  prev = -1;
  for await (const sl of layout.slices()) {
    keep(sl.firstChunk, sl.chunks.length);
    chunkLists.push(compactChunks(sl.firstChunk, sl.chunks, sl.chunkLengths, layout.name));
    if (chunkLists.length > CHUNK_SLICES_KEPT) chunkLists.shift();
    gathered?.take(sl, scattered, has);
    const { disk, length, chunk, at } = sl.ranges;
    for (let i = 0; i < disk.length; i++) {
      const c = chunk[i];
      if (has(scattered, c)) {
        perBucket[bucket(c)]++;
        total++;
        if (gathered) {
          if (total > SCATTERED_RANGES) gathered = undefined;
          else gathered.add(c, disk[i], length[i], at[i]);
        }
        prev = c;
        continue;
      }
      if (c !== prev) {
        await flush();
        const l = chunkLists.find((x) => c >= x.first && c < x.first + x.lengths.length);
        if (!l) throw badChunk(c, disk[i]);
        const k = c - l.first;
        run = { c, digest: l.digests.toString('hex', k * 32, k * 32 + 32), len: l.lengths[k], ranges: [] };
      }
      run?.ranges.push(disk[i], length[i], at[i]);
      prev = c;
    }
  }
  await flush();
  chunkLists.length = 0;

  // the scattered chunks: all at once, or a window of chunk numbers per walk
  if (gathered) await gathered.check(fh, buf, markBad, st);
  else {
    let from = 0;
    while (from < BUCKETS) {
      let to = from;
      let n = 0;
      while (to < BUCKETS && (to === from || n + perBucket[to] <= SCATTERED_RANGES)) n += perBucket[to++];
      if (n > 0) {
        const g = new Gathered();
        const inWindow = (c: number) => has(scattered, c) && bucket(c) >= from && bucket(c) < to;
        for await (const sl of layout.slices()) {
          g.take(sl, scattered, (_b, c) => inWindow(c));
          const { disk, length, chunk, at } = sl.ranges;
          for (let i = 0; i < disk.length; i++) if (inWindow(chunk[i])) g.add(chunk[i], disk[i], length[i], at[i]);
        }
        await g.check(fh, buf, markBad, st);
      }
      from = to;
    }
  }
  const local = new Uint8Array(blocks);
  for (let i = 0; i < blocks; i++) local[i] = bad[i] ? 0 : 1;
  return { local, matched: st.matched, mismatched: st.mismatched, readBytes: st.readBytes };
}

/** A slice's chunk list kept compact: 32-byte digests, lengths as doubles. */
function compactChunks(first: number, chunks: string[], lengths: number[], name: string) {
  const digests = Buffer.allocUnsafe(chunks.length * 32);
  for (let j = 0; j < chunks.length; j++) {
    const d = chunks[j];
    if (typeof d !== 'string' || d.length !== 64 || digests.write(d, j * 32, 32, 'hex') !== 32)
      throw new StrataError('CORRUPT', `chunk ${first + j} is not a sha256 digest`, {
        file: name,
        structure: 'layout manifest',
      });
  }
  return { first, digests, lengths: Float64Array.from(lengths) };
}

/** Ranges of scattered chunks gathered over a walk, with those chunks' digests and lengths. */
class Gathered {
  private readonly cols: number[][] = [[], [], [], []];
  private readonly info = new Map<number, [string, number]>();

  /** The digests and lengths of the slice's chunks that `want` picks. */
  take(sl: LayoutSlice, scattered: Uint8Array, want: (b: Uint8Array, c: number) => boolean): void {
    for (let j = 0; j < sl.chunks.length; j++) {
      const c = sl.firstChunk + j;
      if (want(scattered, c)) this.info.set(c, [sl.chunks[j], sl.chunkLengths[j]]);
    }
  }

  add(c: number, disk: number, length: number, at: number): void {
    this.cols[0].push(c);
    this.cols[1].push(disk);
    this.cols[2].push(length);
    this.cols[3].push(at);
  }

  async check(
    fh: FileHandle,
    buf: Buffer,
    markBad: (s: number, n: number) => void,
    st: { readBytes: number; matched: number; mismatched: number },
  ): Promise<void> {
    const [chunk, disk, length, at] = this.cols;
    const order = Array.from({ length: chunk.length }, (_, i) => i).sort((x, y) => chunk[x] - chunk[y] || x - y);
    for (let k = 0; k < order.length; ) {
      const c = chunk[order[k]];
      const ranges: Placed = [];
      for (; k < order.length && chunk[order[k]] === c; k++) {
        const i = order[k];
        ranges.push(disk[i], length[i], at[i]);
      }
      const info = this.info.get(c);
      if (!info) throw new StrataError('CORRUPT', `a range names chunk ${c}, which no part lists`);
      await checkChunk(fh, info[0], info[1], ranges, buf, markBad, st);
    }
  }
}

/**
 * One chunk's placements, from its ranges ([disk, length, offset in chunk] triples in disk
 * order): grouped into tilings of [0, chunk length), each hashed as TARGET holds it.
 */
async function checkChunk(
  fh: FileHandle,
  digest: string,
  chunkLength: number,
  placed: Placed,
  buf: Buffer,
  markBad: (s: number, n: number) => void,
  st: { readBytes: number; matched: number; mismatched: number },
): Promise<void> {
  const disk = (i: number) => placed[i * 3];
  const length = (i: number) => placed[i * 3 + 1];
  const at = (i: number) => placed[i * 3 + 2];
  const ranges = Array.from({ length: placed.length / 3 }, (_, i) => i);
  ranges.sort((x, y) => at(x) - at(y) || disk(x) - disk(y));
  const tilings: Array<{ pos: number; parts: number[] }> = [];
  for (const i of ranges) {
    // the placement this range continues: one that ends exactly where it starts, else the
    // one that ends last before it (a gap between them is a hole of the file: zeros)
    let t = tilings.find((x) => x.pos === at(i));
    if (!t && at(i) > 0) {
      for (const x of tilings) if (x.pos < at(i) && (!t || x.pos > t.pos)) t = x;
    }
    if (t) {
      t.parts.push(i);
      t.pos = at(i) + length(i);
    } else tilings.push({ pos: at(i) + length(i), parts: [i] });
  }
  for (const t of tilings) {
    if (t.pos > chunkLength) {
      for (const i of t.parts) markBad(disk(i), length(i));
      st.mismatched++;
      continue;
    }
    // the chunk as TARGET holds it, zeros where the layout places none of it: a match of
    // the digest proves every placed byte right (and a wrong guess only costs a fetch)
    const h = createHash('sha256');
    let pos = 0;
    const zeros = (n: number) => {
      for (let z = n; z > 0; ) {
        const k = Math.min(z, ZERO.length);
        h.update(ZERO.subarray(0, k));
        z -= k;
      }
    };
    for (const i of t.parts) {
      zeros(at(i) - pos);
      pos = at(i) + length(i);
      for (let o = 0; o < length(i); ) {
        const n = Math.min(buf.length, length(i) - o);
        const got = await readFull(fh, buf, n, disk(i) + o);
        st.readBytes += n;
        h.update(buf.subarray(0, got));
        if (got < n) zeros(n - got);
        o += n;
      }
    }
    zeros(chunkLength - pos);
    if (h.digest('hex') === digest) st.matched++;
    else {
      st.mismatched++;
      for (const i of t.parts) markBad(disk(i), length(i));
    }
  }
}

/** [s, e) is free in the version: TARGET must read as zero there (holes are zero without reading). */
async function checkFree(
  fh: FileHandle,
  s: number,
  e: number,
  buf: Buffer,
  bad: Uint8Array,
  blockSize: number,
  st: { readBytes: number },
): Promise<void> {
  const parts = seekStatus(fh.fd, s, e - s) ?? [{ offset: s, length: e - s, kind: 'data' as const }];
  for (const p of parts) {
    if (p.kind !== 'data') continue;
    for (let o = p.offset; o < p.offset + p.length; ) {
      const n = Math.min(buf.length, p.offset + p.length - o);
      const got = await readFull(fh, buf, n, o);
      st.readBytes += got;
      const z = firstNonZero(buf, got);
      if (z >= 0) {
        // mark just the block of that byte, then go on from the next block
        const blk = Math.floor((o + z) / blockSize);
        bad[blk] = 1;
        o = Math.min(p.offset + p.length, (blk + 1) * blockSize);
        continue;
      }
      o += n;
    }
  }
}

const ZERO = Buffer.alloc(1 << 20);

async function readFull(fh: FileHandle, buf: Buffer, n: number, at: number): Promise<number> {
  let got = 0;
  while (got < n) {
    const r = await fh.read(buf, got, n - got, at + got);
    if (r.bytesRead === 0) break;
    got += r.bytesRead;
  }
  return got;
}

function firstNonZero(b: Buffer, n: number): number {
  // 8 bytes at a time where aligned, then byte by byte
  let i = 0;
  const words = Math.floor(n / 8);
  const v = new BigUint64Array(b.buffer, b.byteOffset, Math.floor(b.length / 8));
  for (let w = 0; w < words; w++) {
    if (v[w] !== 0n) {
      i = w * 8;
      break;
    }
    i = (w + 1) * 8;
  }
  for (; i < n; i++) if (b[i] !== 0) return i;
  return -1;
}
