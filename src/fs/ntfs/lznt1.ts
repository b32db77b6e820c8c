import { StrataError } from '../../util/errors.js';

/**
 * Decode LZNT1 (NTFS compression): 4 KiB chunks, each with a 16-bit header (size-1 in the
 * low 12 bits, bit 15 = compressed). Writes at most `out.length` bytes; returns how many.
 */
export function lznt1Decode(src: Uint8Array, out: Uint8Array, file: string, structure: string): number {
  let sp = 0;
  let op = 0;
  while (sp + 2 <= src.length && op < out.length) {
    const h = src[sp] | (src[sp + 1] << 8);
    if (h === 0) break;
    const size = (h & 0xfff) + 1;
    const start = sp + 2;
    const end = start + size;
    if (end > src.length)
      throw new StrataError('CORRUPT', `LZNT1 chunk of ${size} bytes past the unit`, { file, structure, offset: sp });
    const chunkStart = op;
    const chunkEnd = Math.min(op + 4096, out.length);
    if (!(h & 0x8000)) {
      const n = Math.min(size, chunkEnd - op);
      out.set(src.subarray(start, start + n), op);
      op += n;
    } else {
      let p = start;
      while (p < end && op < chunkEnd) {
        const flags = src[p++];
        for (let bit = 0; bit < 8 && p < end && op < chunkEnd; bit++) {
          if (!(flags & (1 << bit))) {
            out[op++] = src[p++];
            continue;
          }
          if (p + 2 > end)
            throw new StrataError('CORRUPT', 'LZNT1 back-reference cut short', { file, structure, offset: p });
          const tok = src[p] | (src[p + 1] << 8);
          p += 2;
          let lenMask = 0xfff;
          let shift = 12;
          for (let i = op - chunkStart - 1; i >= 0x10; i >>= 1) {
            lenMask >>= 1;
            shift--;
          }
          const disp = (tok >> shift) + 1;
          let len = (tok & lenMask) + 3;
          if (disp > op - chunkStart)
            throw new StrataError('CORRUPT', `LZNT1 back-reference ${disp} before the chunk start`, {
              file,
              structure,
              offset: p - 2,
            });
          while (len-- > 0 && op < chunkEnd) {
            out[op] = out[op - disp];
            op++;
          }
        }
      }
      // a compressed chunk that decodes short leaves zeros up to the chunk end
      if (op < chunkEnd && end < src.length) op = chunkEnd;
    }
    sp = end;
  }
  return op;
}
