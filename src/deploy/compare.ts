import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { seekStatus } from '../io/native.js';
import type { LayoutManifest } from '../library/manifest.js';

export interface CompareResult {
  /** 1 where TARGET already holds the version's bytes (the block is not fetched). */
  local: Uint8Array;
  /** Chunk placements whose bytes on TARGET hash to the chunk's digest, and those that do not. */
  matched: number;
  mismatched: number;
  /** Bytes of TARGET read to decide. */
  readBytes: number;
}

/**
 * `--compare` for a TARGET nothing is known about: read TARGET along the version's chunk
 * boundaries and hash each chunk's bytes as TARGET holds them. A chunk's digest is of its
 * whole plain bytes: its placed ranges, ordered by offset in the chunk, are hashed with
 * zeros where the layout places none of it (a file's holes), so a match proves every placed
 * byte; a chunk placed twice is checked once per placement. A block is local when every range in it belongs to a
 * placement that matched and every byte in it that the version leaves free reads as zero
 * on TARGET (holes are zero without reading). Anything else in the block is fetched.
 */
export async function compareTarget(
  fh: FileHandle,
  m: LayoutManifest,
  blockSize: number,
  size: number,
): Promise<CompareResult> {
  const blocks = Math.ceil(size / blockSize);
  const bad = new Uint8Array(blocks);
  const { disk, length, chunk, at } = m.ranges;
  let readBytes = 0;
  const markBad = (s: number, n: number) => {
    const a = Math.floor(s / blockSize);
    const b = Math.min(blocks, Math.ceil((s + n) / blockSize));
    bad.fill(1, a, Math.max(a + 1, b));
  };
  // placements: per chunk, its ranges grouped into tilings of [0, chunk length)
  const byChunk = new Map<number, number[]>();
  for (let i = 0; i < disk.length; i++) {
    let l = byChunk.get(chunk[i]);
    if (!l) byChunk.set(chunk[i], (l = []));
    l.push(i);
  }
  let matched = 0;
  let mismatched = 0;
  const buf = Buffer.alloc(4 << 20);
  for (const [c, ranges] of byChunk) {
    ranges.sort((x, y) => at[x] - at[y] || disk[x] - disk[y]);
    const tilings: Array<{ pos: number; parts: number[] }> = [];
    for (const i of ranges) {
      // the placement this range continues: one that ends exactly where it starts, else the
      // one that ends last before it (a gap between them is a hole of the file: zeros)
      let t = tilings.find((x) => x.pos === at[i]);
      if (!t && at[i] > 0) {
        for (const x of tilings) if (x.pos < at[i] && (!t || x.pos > t.pos)) t = x;
      }
      if (t) {
        t.parts.push(i);
        t.pos = at[i] + length[i];
      } else tilings.push({ pos: at[i] + length[i], parts: [i] });
    }
    for (const t of tilings) {
      if (t.pos > m.chunkLengths[c]) {
        for (const i of t.parts) markBad(disk[i], length[i]);
        mismatched++;
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
        zeros(at[i] - pos);
        pos = at[i] + length[i];
        for (let o = 0; o < length[i]; ) {
          const n = Math.min(buf.length, length[i] - o);
          const got = await readFull(fh, buf, n, disk[i] + o);
          readBytes += n;
          h.update(buf.subarray(0, got));
          if (got < n) zeros(n - got);
          o += n;
        }
      }
      zeros(m.chunkLengths[c] - pos);
      if (h.digest('hex') === m.chunks[c]) matched++;
      else {
        mismatched++;
        for (const i of t.parts) markBad(disk[i], length[i]);
      }
    }
  }
  // what the version leaves free must read as zero on TARGET
  const order = Array.from({ length: disk.length }, (_, i) => i).sort((x, y) => disk[x] - disk[y]);
  let pos = 0;
  const gaps: Array<[number, number]> = [];
  for (const i of order) {
    if (disk[i] > pos) gaps.push([pos, disk[i]]);
    pos = Math.max(pos, disk[i] + length[i]);
  }
  if (pos < size) gaps.push([pos, size]);
  for (const [s, e] of gaps) {
    // holes read as zero: only allocated parts are read
    const parts = seekStatus(fh.fd, s, e - s) ?? [{ offset: s, length: e - s, kind: 'data' as const }];
    for (const p of parts) {
      if (p.kind !== 'data') continue;
      for (let o = p.offset; o < p.offset + p.length; ) {
        const n = Math.min(buf.length, p.offset + p.length - o);
        const got = await readFull(fh, buf, n, o);
        readBytes += got;
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
  const local = new Uint8Array(blocks);
  for (let i = 0; i < blocks; i++) local[i] = bad[i] ? 0 : 1;
  return { local, matched, mismatched, readBytes };
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
