import { StrataError } from '../../src/util/errors.js';
import { xorshift32 } from '../../src/util/prng.js';

/** A small deterministic PRNG for fuzzing (xorshift32). */
export const prng = xorshift32;

/**
 * Mutate a copy of `bytes` within the given "interesting" regions (headers, tables):
 * bit flips, byte sets to boundary values, 32/64-bit field smashes, truncation.
 */
export function mutate(bytes: Uint8Array, regions: Array<[number, number]>, rand: () => number): Uint8Array {
  let out: Uint8Array = new Uint8Array(bytes);
  const pick = () => {
    const [s, e] = regions[rand() % regions.length];
    const end = Math.min(e, out.length);
    return s + (rand() % Math.max(1, end - s));
  };
  const n = 1 + (rand() % 4);
  for (let i = 0; i < n; i++) {
    const op = rand() % 7;
    const at = pick();
    if (at >= out.length) continue;
    switch (op) {
      case 0:
        out[at] ^= 1 << (rand() % 8);
        break;
      case 1:
        out[at] = [0, 0xff, 0x7f, 0x80, 1][rand() % 5];
        break;
      case 2:
        for (let k = 0; k < 4 && at + k < out.length; k++) out[at + k] = 0xff;
        break;
      case 3:
        for (let k = 0; k < 8 && at + k < out.length; k++) out[at + k] = rand() & 0xff;
        break;
      case 4:
        for (let k = 0; k < 8 && at + k < out.length; k++) out[at + k] = 0;
        break;
      case 5:
        out = out.subarray(0, Math.max(1, at)); // truncate
        break;
      default: {
        const v = [0x40000000, 0x7fffffff, 0xffffffff, 0x80000000, 1, 512][rand() % 6];
        if (at + 4 <= out.length) new DataView(out.buffer, out.byteOffset).setUint32(at, v, rand() % 2 === 0);
      }
    }
  }
  return out;
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
