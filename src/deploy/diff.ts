import type { LayoutManifest } from '../library/manifest.js';

/**
 * Per block of `blockSize` bytes, what the layout puts there: the ranges overlapping the
 * block, clipped to it, as (offset in block, length, chunk digest, offset in chunk). Two
 * layouts whose signatures of a block are equal hold the same bytes there (the chunks are
 * named by their content's digest); '' is a block of zeros. Blocks past the layout's disk
 * are ''.
 */
export function blockSignatures(m: LayoutManifest, blockSize: number, blocks: number): string[] {
  const sig: string[][] = Array.from({ length: blocks }, () => []);
  const { disk, length, chunk, at } = m.ranges;
  for (let i = 0; i < disk.length; i++) {
    const s = disk[i];
    const e = s + length[i];
    for (let b = Math.floor(s / blockSize); b < blocks && b * blockSize < e; b++) {
      const bs = b * blockSize;
      const cs = Math.max(s, bs);
      const ce = Math.min(e, bs + blockSize);
      sig[b].push(`${cs - bs}+${ce - cs}=${m.chunks[chunk[i]]}@${at[i] + (cs - s)}`);
    }
  }
  return sig.map((l) => l.join(';'));
}

/** Blocks whose content differs between two layouts (compared by chunk digests, nothing read). */
export function differingBlocks(a: LayoutManifest, b: LayoutManifest, blockSize: number): number[] {
  const blocks = Math.ceil(Math.max(a.virtualSize, b.virtualSize) / blockSize);
  const sa = blockSignatures(a, blockSize, blocks);
  const sb = blockSignatures(b, blockSize, blocks);
  const out: number[] = [];
  for (let i = 0; i < blocks; i++) if (sa[i] !== sb[i]) out.push(i);
  return out;
}
