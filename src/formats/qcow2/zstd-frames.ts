/**
 * Walk the zstd frames at the start of a compressed qcow2 cluster without decoding them.
 *
 * A compressed cluster is followed by padding up to the next sector (or by the next
 * cluster's bytes), which a zstd decoder would take for another frame. So we find where
 * the frames end, and we bound how much they can inflate to, before handing them to the
 * decoder (whose one-shot API would otherwise trust a hostile frame content size).
 */
export interface ZstdScan {
  /** Bytes taken by the consecutive frames found at the start. */
  length: number;
  /** Upper bound of the decompressed size of those frames. */
  maxOutput: number;
}

const ZSTD_MAGIC = 0xfd2fb528;
const BLOCK_MAX = 128 * 1024;

/**
 * Returns undefined when the bytes do not start with a well-formed zstd frame. Frames are
 * taken until their declared sizes reach `limit` (one cluster).
 */
export function scanZstdFrames(b: Uint8Array, limit: number): ZstdScan | undefined {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = 0;
  let maxOutput = 0;
  let frames = 0;
  while (pos + 4 <= b.length && dv.getUint32(pos, true) === ZSTD_MAGIC) {
    if (pos + 5 > b.length) return undefined;
    const fhd = b[pos + 4];
    const fcsFlag = fhd >>> 6;
    const single = (fhd >>> 5) & 1;
    const checksum = (fhd >>> 2) & 1;
    if ((fhd >>> 3) & 1) return undefined; // reserved bit
    const didSize = [0, 1, 2, 4][fhd & 3];
    const fcsSize = [single ? 1 : 0, 2, 4, 8][fcsFlag];
    let p = pos + 5;
    let window = 0;
    if (!single) {
      if (p >= b.length) return undefined;
      const wd = b[p];
      const exp = 10 + (wd >>> 3);
      const base = 2 ** exp;
      window = base + (base / 8) * (wd & 7);
      p += 1;
    }
    p += didSize;
    if (p + fcsSize > b.length) return undefined;
    let fcs = -1;
    if (fcsSize === 1) fcs = b[p];
    else if (fcsSize === 2) fcs = dv.getUint16(p, true) + 256;
    else if (fcsSize === 4) fcs = dv.getUint32(p, true);
    else if (fcsSize === 8) fcs = dv.getUint32(p, true) + dv.getUint32(p + 4, true) * 0x100000000;
    p += fcsSize;
    if (single) window = fcs;
    const blockCap = Math.min(BLOCK_MAX, window > 0 ? window : BLOCK_MAX);
    let bound = 0;
    // Each block header is 3 bytes, so this loop is bounded by the input length.
    for (;;) {
      if (p + 3 > b.length) return undefined;
      const bh = b[p] | (b[p + 1] << 8) | (b[p + 2] << 16);
      const last = bh & 1;
      const type = (bh >>> 1) & 3;
      const size = bh >>> 3;
      p += 3;
      if (type === 0) {
        bound += size;
        p += size;
      } else if (type === 1) {
        bound += size;
        p += 1;
      } else if (type === 2) {
        bound += blockCap;
        p += size;
      } else return undefined;
      if (p > b.length) return undefined;
      if (bound > limit * 4 + BLOCK_MAX) return undefined; // far beyond one cluster: not ours
      if (last) break;
    }
    if (checksum) p += 4;
    if (p > b.length) return undefined;
    maxOutput += fcs >= 0 ? Math.min(fcs, bound) : bound;
    if (fcs > limit) return undefined;
    pos = p;
    if (++frames > 64) return undefined;
    // Compressed clusters are packed back to back: stop once this cluster's output is complete
    // (or when the frame does not say its size: qemu writes one frame per cluster).
    if (fcs < 0 || maxOutput >= limit) break;
  }
  return frames > 0 ? { length: pos, maxOutput } : undefined;
}
