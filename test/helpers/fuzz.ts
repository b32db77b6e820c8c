import type { FileSystem } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { StrataError } from '../../src/util/errors.js';
import { xorshift32 } from '../../src/util/prng.js';

/** A small deterministic PRNG for fuzzing (xorshift32). */
export const prng = xorshift32;

/**
 * Mutate a copy of `bytes` within the given "interesting" regions (headers, tables):
 * bit flips, byte sets to boundary values, 32/64-bit field smashes, truncation.
 */
export function mutate(bytes: Uint8Array, regions: Array<[number, number]>, rand: () => number): Uint8Array {
  const out = new Uint8Array(bytes);
  return out.subarray(0, mutateInPlace(out, regions, rand).length);
}

/**
 * The same mutations (the same sequence for the same `rand`) applied to `work` in place, for
 * images too large to copy per case: returns the length after any truncation and an `undo`
 * that restores every byte changed.
 */
export function mutateInPlace(
  work: Uint8Array,
  regions: Array<[number, number]>,
  rand: () => number,
): { length: number; undo: () => void } {
  let len = work.length;
  const saved: Array<[number, number]> = [];
  const set = (i: number, v: number) => {
    saved.push([i, work[i]]);
    work[i] = v;
  };
  const pick = () => {
    const [s, e] = regions[rand() % regions.length];
    const end = Math.min(e, len);
    return s + (rand() % Math.max(1, end - s));
  };
  const n = 1 + (rand() % 4);
  for (let i = 0; i < n; i++) {
    const op = rand() % 7;
    const at = pick();
    if (at >= len) continue;
    switch (op) {
      case 0:
        set(at, work[at] ^ (1 << (rand() % 8)));
        break;
      case 1:
        set(at, [0, 0xff, 0x7f, 0x80, 1][rand() % 5]);
        break;
      case 2:
        for (let k = 0; k < 4 && at + k < len; k++) set(at + k, 0xff);
        break;
      case 3:
        for (let k = 0; k < 8 && at + k < len; k++) set(at + k, rand() & 0xff);
        break;
      case 4:
        for (let k = 0; k < 8 && at + k < len; k++) set(at + k, 0);
        break;
      case 5:
        len = Math.max(1, at); // truncate
        break;
      default: {
        const v = [0x40000000, 0x7fffffff, 0xffffffff, 0x80000000, 1, 512][rand() % 6];
        if (at + 4 <= len) {
          const le = rand() % 2 === 0;
          for (let k = 0; k < 4; k++) set(at + k, (v >>> (le ? 8 * k : 24 - 8 * k)) & 0xff);
        }
      }
    }
  }
  return {
    length: len,
    undo: () => {
      for (let i = saved.length - 1; i >= 0; i--) work[saved[i][0]] = saved[i][1];
    },
  };
}

/**
 * Run `attempt` and classify: it must either succeed or throw a StrataError, within
 * `timeoutMs`. Anything else (TypeError, RangeError, hang) is returned as a failure string.
 */
export async function expectCleanOutcome(attempt: () => Promise<unknown>, timeoutMs = 5000): Promise<string | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`timed out after ${timeoutMs} ms`), timeoutMs);
  });
  const outcome = attempt().then(
    () => null,
    (e: unknown) => (e instanceof StrataError ? null : `non-Strata error: ${(e as Error)?.stack ?? e}`),
  );
  try {
    return await Promise.race([outcome, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Walk, read, map: everything a caller may ask of a file system (what fuzz cases run). */
export async function exercise(fs: FileSystem): Promise<void> {
  await fs.info();
  for await (const it of walk(fs, await fs.root(), '/')) {
    const i = it.inode;
    if (i.type === 'file') {
      await fs.read(i, 0, Math.min(i.size, 1 << 20));
      for await (const _ of fs.extents(i)) {
        // drain
      }
    }
    if (i.type === 'symlink') await fs.readlink(i);
    await fs.xattrs(i);
  }
  await fs.allocation();
  for await (const _ of fs.metadataRegions()) {
    // drain
  }
}
