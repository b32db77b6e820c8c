/**
 * xorshift32: a tiny deterministic generator for reproducible test disks, demo images and
 * fuzz cases. Not for anything that needs unpredictability.
 */
export function xorshift32(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}
