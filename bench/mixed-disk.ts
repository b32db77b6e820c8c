import { createCipheriv } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, renameSync, writeSync } from 'node:fs';
import { xorshift32 } from '../src/util/prng.js';

/**
 * A mixed disk: incompressible runs (AES-CTR keystream), zero runs (holes), repeated
 * text patterns, in runs of 64 KiB to 8 MiB picked by a seeded PRNG, data at the end.
 */
export function makeMixedRaw(file: string, size: number): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    ftruncateSync(fd, size);
    const aes = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0));
    const rand = xorshift32(0x12345678);
    let pos = 0;
    let run = 0;
    while (pos < size) {
      const len = Math.min(size - pos, (1 + (rand() % 128)) * 65536 + (rand() % 2 === 0 ? rand() % 65536 : 0));
      const kind = rand() % 10; // 0-3 random, 4-6 zero, 7-9 pattern
      for (let o = 0; o < len; o += 8 << 20) {
        const n = Math.min(8 << 20, len - o);
        if (kind <= 3) writeSync(fd, aes.update(Buffer.alloc(n)), 0, n, pos + o);
        else if (kind >= 7) {
          const pat = Buffer.from(`strata bench pattern run ${run} `.repeat(3));
          const b = Buffer.alloc(n);
          for (let k = 0; k < n; k += pat.length) pat.copy(b, k, 0, Math.min(pat.length, n - k));
          writeSync(fd, b, 0, n, pos + o);
        }
      }
      pos += len;
      run++;
    }
    const tail = Buffer.from('END-OF-BENCH-DISK');
    writeSync(fd, tail, 0, tail.length, size - tail.length);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}
