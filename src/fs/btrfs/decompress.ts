import { lazyZlib } from '../../util/lazy-zlib.js';
import { zstdDecompress } from '../../util/zstd.js';

class LzoError extends Error {}

/**
 * LZO1X decompression (the format of lzo1x_1_compress), bounded by `out.length`. Written
 * from the format description: literal runs, M1..M4 matches, two trailing literal bits.
 * Returns the number of bytes produced.
 */
export function lzo1xDecompress(src: Uint8Array, out: Uint8Array): number {
  let ip = 0;
  let op = 0;
  const end = src.length;
  const byte = () => {
    if (ip >= end) throw new LzoError('input overrun');
    return src[ip++];
  };
  const le16 = () => {
    if (ip + 2 > end) throw new LzoError('input overrun');
    const v = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    return v;
  };
  const lits = (n: number) => {
    if (ip + n > end) throw new LzoError('input overrun');
    if (op + n > out.length) throw new LzoError('output overrun');
    out.set(src.subarray(ip, ip + n), op);
    ip += n;
    op += n;
  };
  const copy = (dist: number, n: number) => {
    const from = op - dist;
    if (from < 0) throw new LzoError('lookbehind overrun');
    if (op + n > out.length) throw new LzoError('output overrun');
    for (let i = 0; i < n; i++) out[op + i] = out[from + i];
    op += n;
  };
  const longLen = (base: number) => {
    let t = 0;
    for (;;) {
      const b = byte();
      if (b !== 0) return t + base + b;
      t += 255;
      if (t > 1 << 30) throw new LzoError('run length too long');
    }
  };
  let state = 0;
  let t = src.length > 0 ? src[0] : 0;
  if (t > 17) {
    ip++;
    t -= 17;
    if (t < 4) {
      state = t;
      lits(t);
    } else {
      lits(t);
      state = 4;
    }
  }
  for (;;) {
    t = byte();
    let dist: number;
    let len: number;
    let next: number;
    if (t < 16) {
      if (state === 0) {
        let n = t;
        if (n === 0) n = longLen(15);
        lits(n + 3);
        state = 4;
        continue;
      }
      if (state !== 4) {
        next = t & 3;
        dist = 1 + (t >> 2) + (byte() << 2);
        len = 2;
      } else {
        next = t & 3;
        dist = 1 + 0x800 + (t >> 2) + (byte() << 2);
        len = 3;
      }
    } else if (t >= 64) {
      next = t & 3;
      dist = 1 + ((t >> 2) & 7) + (byte() << 3);
      len = (t >> 5) + 1;
    } else if (t >= 32) {
      len = (t & 31) + 2;
      if (len === 2) len = longLen(31) + 2;
      const v = le16();
      dist = 1 + (v >> 2);
      next = v & 3;
    } else {
      len = (t & 7) + 2;
      if (len === 2) len = longLen(7) + 2;
      const v = le16();
      dist = ((t & 8) << 11) + (v >> 2);
      next = v & 3;
      if (dist === 0) {
        if (ip !== end && len !== 3) throw new LzoError('bad end marker');
        return op;
      }
      dist += 0x4000;
    }
    copy(dist, len);
    state = next;
    if (next) lits(next);
  }
}

/**
 * The btrfs LZO container: a 4-byte total length, then per-sector segments, each a 4-byte
 * length and one LZO1X stream; a segment header never straddles a sector boundary.
 */
export function btrfsLzo(src: Uint8Array, outLen: number, sector: number): Uint8Array {
  if (src.length < 4) throw new LzoError('lzo header cut short');
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const total = dv.getUint32(0, true);
  if (total > src.length) throw new LzoError(`lzo total length ${total} beyond ${src.length} stored bytes`);
  const out = new Uint8Array(outLen);
  let ip = 4;
  let op = 0;
  while (ip < total && op < outLen) {
    const left = sector - (ip % sector);
    if (left < 4) ip += left;
    if (ip + 4 > total) break;
    const segLen = dv.getUint32(ip, true);
    ip += 4;
    if (segLen === 0 || ip + segLen > total) throw new LzoError(`lzo segment of ${segLen} bytes overruns`);
    op += lzo1xDecompress(src.subarray(ip, ip + segLen), out.subarray(op, Math.min(outLen, op + sector)));
    ip += segLen;
  }
  return out;
}

/** Decode one compressed extent (btrfs compression type 1 zlib, 2 lzo, 3 zstd) into `outLen` bytes. */
export function decompress(type: number, src: Uint8Array, outLen: number, sector: number): Uint8Array {
  let out: Uint8Array;
  if (type === 1) {
    const z = lazyZlib();
    out = z.inflateSync(src, { maxOutputLength: Math.max(outLen, 1), finishFlush: z.constants.Z_SYNC_FLUSH });
  } else if (type === 2) {
    out = btrfsLzo(src, outLen, sector);
  } else if (type === 3) {
    out = zstdDecompressTolerant(src, outLen);
  } else throw new Error(`compression type ${type}`);
  if (out.length >= outLen) return out.subarray(0, outLen);
  const full = new Uint8Array(outLen);
  full.set(out);
  return full;
}

/** btrfs pads zstd frames to the sector; trailing zeros are not a frame, so trim them. */
function zstdDecompressTolerant(src: Uint8Array, outLen: number): Uint8Array {
  let n = src.length;
  while (n > 0 && src[n - 1] === 0) n--;
  try {
    return zstdDecompress(src.subarray(0, n), Math.max(outLen, 1));
  } catch (e) {
    // a frame may legitimately end in zero bytes: retry on the whole buffer
    if (n === src.length) throw e;
    return zstdDecompress(src, Math.max(outLen, 1));
  }
}
