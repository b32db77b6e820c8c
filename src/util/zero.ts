/** Zero detection for writers and bulk copiers (no other imports: copy workers load it). */

const ZEROS = Buffer.alloc(2 * 1024 * 1024);

/** True when `b[from, to)` is all zeros (native memcmp against a zero page). */
export function isZeroRange(b: Uint8Array, from: number, to: number): boolean {
  // Data blocks nearly always have a non-zero first or last byte: answer those without a native call.
  if (to > from && (b[from] !== 0 || b[to - 1] !== 0)) return false;
  let p = from;
  while (p < to) {
    const n = Math.min(to - p, ZEROS.length);
    if (Buffer.compare(b.subarray(p, p + n), ZEROS.subarray(0, n)) !== 0) return false;
    p += n;
  }
  return true;
}

/**
 * Scan blocks of `granule` bytes (aligned to the start of `b`) from `from` (aligned) up
 * to `end`: return the start of the first block that is zero (`wantZero`) or not zero
 * (`!wantZero`), or `end` when there is none.
 */
export function firstNonZeroBlock(
  b: Uint8Array,
  from: number,
  end: number,
  granule: number,
  wantZero: boolean,
): number {
  for (let p = from; p < end; p += granule) {
    const q = Math.min(end, p + granule);
    if (isZeroRange(b, p, q) === wantZero) return p;
  }
  return end;
}
