import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

/** An entry number in a key of SortedDigestIndex: below 2^26 (the hash tables' slots hold no more). */
const KEY_NUMBER = 2 ** 26;
/** Keys per block of the index file (1 KiB: one pread per lookup, one fence per block). */
const KEYS_PER_BLOCK = 128;
/** Keys read and written at once while merging (512 KiB each way). */
const MERGE_KEYS = 65536;

/** The first 27 bits of a digest (32 raw bytes at `at`): with an entry number below 2^26, a key exact in a float64. */
export const digestPrefix = (digest: Uint8Array, at = 0): number =>
  ((digest[at] << 19) | (digest[at + 1] << 11) | (digest[at + 2] << 3) | (digest[at + 3] >>> 5)) >>> 0;

/** The key of entry `n` of a digest whose prefix is `prefix`. */
export const digestKey = (prefix: number, n: number): number => prefix * KEY_NUMBER + n;

const release = new FinalizationRegistry<number[]>((fds) => {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
});

function readFully(fd: number, buf: Uint8Array, length: number, position: number): void {
  let n = 0;
  while (n < length) {
    const r = readSync(fd, buf, n, length - n, position + n);
    if (r === 0) throw new Error(`sorted index scratch file: short read at ${position + n}`);
    n += r;
  }
}

function writeFully(fd: number, buf: Uint8Array, length: number, position: number): void {
  let n = 0;
  while (n < length) n += writeSync(fd, buf, n, length - n, position + n);
}

/** A scratch file, unlinked (and its directory removed) once open: a killed process leaves nothing behind. */
function scratchFile(): number {
  const dir = mkdtempSync(path.join(tmpdir(), 'strata-sorted-'));
  try {
    return openSync(path.join(dir, 'keys'), 'w+', 0o600);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Entries by digest, off the heap (issue 22): a sorted file of keys (`digestPrefix(digest) *
 * 2^26 + entry number`, float64), in memory only the first key of each 1 KiB block (~0.06
 * bytes an entry). What a hash table of the newest entries (the check-in's Builder, the
 * store's BlobMap) hands over when full, so that the table stays the same size however many
 * entries there are. A lookup reads one block (a prefix rarely spans two) and offers the
 * entries whose digests share the prefix; the caller compares the whole digest (kept in its
 * own records). New entries come in batches, merged with the file into the other of two
 * files: a sequential pass per batch.
 */
export class SortedDigestIndex {
  private readonly fds: number[] = [];
  /** Which of `fds` holds the index. */
  private cur = 0;
  count = 0;
  private fences = new Float64Array(0);
  private readonly block = new Float64Array(KEYS_PER_BLOCK);
  private readonly blockBytes = new Uint8Array(this.block.buffer);
  private readonly token = {};

  /** `open`: a new scratch file's descriptor, closed by the caller (default: one closed by close()). */
  constructor(private readonly open?: () => number) {}

  /** The entry number among those with `prefix` that `same` accepts, or -1. */
  find(prefix: number, same: (n: number) => boolean): number {
    if (this.count === 0) return -1;
    const lo = prefix * KEY_NUMBER;
    const hi = lo + KEY_NUMBER;
    const f = this.fences;
    // the last block whose first key is at most lo (the keys of the blocks before are below lo)
    let a = 0;
    let z = f.length - 1;
    while (a < z) {
      const m = (a + z + 1) >>> 1;
      if (f[m] <= lo) a = m;
      else z = m - 1;
    }
    for (let b = a; b < f.length && (b === a || f[b] < hi); b++) {
      const n = Math.min(KEYS_PER_BLOCK, this.count - b * KEYS_PER_BLOCK);
      readFully(this.fds[this.cur], this.blockBytes, n * 8, b * KEYS_PER_BLOCK * 8);
      for (let i = 0; i < n; i++) {
        const k = this.block[i];
        if (k < lo) continue;
        if (k >= hi) return -1;
        if (same(k - lo)) return k - lo;
      }
    }
    return -1;
  }

  /** Add `keys` (digestKey, sorted ascending, not yet in the index): merged with the file into the other one. */
  merge(keys: Float64Array): void {
    if (keys.length === 0) return;
    if (this.fds.length === 0) {
      const open = this.open ?? scratchFile;
      this.fds.push(open(), open());
      if (!this.open) release.register(this, [...this.fds], this.token);
    }
    const from = this.fds[this.cur];
    const to = this.fds[1 - this.cur];
    const total = this.count + keys.length;
    const fences = new Float64Array(Math.ceil(total / KEYS_PER_BLOCK));
    const inBuf = new Float64Array(Math.min(MERGE_KEYS, Math.max(1, this.count)));
    const inBytes = new Uint8Array(inBuf.buffer);
    const outBuf = new Float64Array(Math.min(MERGE_KEYS, total));
    const outBytes = new Uint8Array(outBuf.buffer);
    let inN = 0;
    let inAt = 0;
    let read = 0;
    let k = 0;
    let out = 0;
    let written = 0;
    for (let o = 0; o < total; o++) {
      if (inAt === inN && read < this.count) {
        inN = Math.min(inBuf.length, this.count - read);
        readFully(from, inBytes, inN * 8, read * 8);
        read += inN;
        inAt = 0;
      }
      let v: number;
      if (inAt < inN && (k === keys.length || inBuf[inAt] < keys[k])) v = inBuf[inAt++];
      else v = keys[k++];
      if (o % KEYS_PER_BLOCK === 0) fences[o / KEYS_PER_BLOCK] = v;
      outBuf[out++] = v;
      if (out === outBuf.length) {
        writeFully(to, outBytes, out * 8, written * 8);
        written += out;
        out = 0;
      }
    }
    if (out > 0) writeFully(to, outBytes, out * 8, written * 8);
    this.cur = 1 - this.cur;
    this.count = total;
    this.fences = fences;
  }

  /** Bytes held in memory (the fences). */
  get residentBytes(): number {
    return this.fences.byteLength + this.blockBytes.byteLength;
  }

  /** Forget every entry; close the files this index opened. */
  close(): void {
    if (!this.open) {
      release.unregister(this.token);
      for (const fd of this.fds) closeSync(fd);
    }
    this.fds.length = 0;
    this.cur = 0;
    this.count = 0;
    this.fences = new Float64Array(0);
  }
}
