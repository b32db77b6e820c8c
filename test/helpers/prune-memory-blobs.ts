/**
 * The blobs of the prune memory test: 1,000 bytes each (the 1,000,000-file store's average is
 * ~2,700; the write side holds ~250 bytes of bookkeeping a blob of the pack being filled, so
 * packs of 100-byte blobs held more than the budget), distinct, with repetition for zstd.
 */
export function blobBytes(i: number): Buffer {
  const b = Buffer.alloc(1000, i % 251);
  b.write(`blob ${i} `.repeat(6));
  return b;
}

/** Which blobs the pruned store keeps: two of every three of the first three quarters, none of the rest. */
export const isLive = (i: number, n: number): boolean => i < (n * 3) / 4 && i % 3 !== 0;
