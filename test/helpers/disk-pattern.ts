import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { xorshift32 } from '../../src/util/prng.js';

/**
 * Deterministic mixed content for test disks: random runs, zero runs, repeated patterns,
 * and data in the very last bytes. `seed` makes it reproducible.
 */
export function writePatternDisk(file: string, size: number, seed = 1): void {
  const fd = openSync(file, 'w');
  try {
    ftruncateSync(fd, size);
    const rand = xorshift32(seed >>> 0 || 1);
    let pos = 0;
    let block = 0;
    while (pos < size) {
      const len = Math.min(size - pos, (1 + (rand() % 96)) * 4096 + (rand() % 3 === 0 ? rand() % 4096 : 0));
      const kind = rand() % 4;
      if (kind === 1 || kind === 2) {
        const buf = Buffer.alloc(len);
        if (kind === 1) {
          // pseudo-random bytes from a hash stream
          for (let o = 0; o < len; o += 32) {
            const h = createHash('sha256').update(`${seed}:${block}:${o}`).digest();
            h.copy(buf, o, 0, Math.min(32, len - o));
          }
        } else {
          const pat = Buffer.from(`strata-pattern-${block}-`);
          for (let o = 0; o < len; o += pat.length) pat.copy(buf, o, 0, Math.min(pat.length, len - o));
        }
        writeSync(fd, buf, 0, len, pos);
      }
      // kind 0 and 3: zero run (left as a hole)
      pos += len;
      block++;
    }
    // Data at the very end of the disk.
    const tail = Buffer.from('END-OF-DISK-MARKER');
    const at = Math.max(0, size - tail.length);
    writeSync(fd, tail, 0, Math.min(tail.length, size), at);
  } finally {
    closeSync(fd);
  }
}
