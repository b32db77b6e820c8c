import { createHash } from 'node:crypto';
import type { ByteRange } from '../fs/types.js';
import type { ByteSource } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';

/** Digest of every used block of a volume, by volume offset (what a stored manifest can also give). */
export interface BlockDigests {
  blockSize: number;
  /** volume offset -> truncated sha256 (128 bits, hex) of the block's bytes. */
  byOffset: Map<number, string>;
}

export interface BlockDiff {
  blockSize: number;
  /** B's used blocks and bytes (file data and metadata, as B's file system allocates them). */
  usedBlocks: number;
  usedBytes: number;
  /** B's used blocks whose bytes differ from A's at the same offset (or that A does not use): what a write of B over A must write. */
  writeBlocks: number;
  writeBytes: number;
  /** writeBlocks / usedBlocks (the Emulab study's measure); 0 when B uses nothing. */
  writeShare: number;
  /** Bytes of B's used blocks whose content A holds somewhere in its used blocks (what content-addressed storage shares). */
  sharedBytes: number;
}

/** At most this many blocks per side (64 GiB of 4 KiB blocks), so memory stays bounded. */
const MAX_BLOCKS = 16 * 1024 * 1024;
const READ = 8 * 1024 * 1024;

/** Hash every block of `ranges` (a file system's allocation) of `volume`, reading large aligned pieces. */
export async function volumeBlockDigests(
  volume: ByteSource,
  ranges: ByteRange[],
  blockSize: number,
): Promise<BlockDigests> {
  const byOffset = new Map<number, string>();
  const step = Math.max(blockSize, Math.floor(READ / blockSize) * blockSize);
  for (const r of ranges) {
    const start = Math.floor(r.offset / blockSize) * blockSize;
    const end = Math.min(volume.size, r.offset + r.length);
    for (let off = start; off < end; off += step) {
      const len = Math.min(step, end - off);
      const buf = await volume.read(off, len);
      for (let i = 0; i < buf.length; i += blockSize) {
        if (byOffset.size >= MAX_BLOCKS) {
          throw new StrataError('LIMIT', `more than ${MAX_BLOCKS} used blocks to compare`, { file: volume.name });
        }
        const block = buf.subarray(i, Math.min(buf.length, i + blockSize));
        byOffset.set(off + i, createHash('sha256').update(block).digest('hex').slice(0, 32));
      }
    }
  }
  return { blockSize, byOffset };
}

/** How much of B must be written over A (same offsets) and how much of B's content A already holds (anywhere). */
export function diffBlocks(a: BlockDigests, b: BlockDigests): BlockDiff {
  if (a.blockSize !== b.blockSize) {
    throw new StrataError(
      'USAGE',
      `block sizes differ (${a.blockSize} vs ${b.blockSize}): not comparable block by block`,
    );
  }
  const contentInA = new Set(a.byOffset.values());
  let write = 0;
  let shared = 0;
  for (const [off, d] of b.byOffset) {
    if (a.byOffset.get(off) !== d) write++;
    if (contentInA.has(d)) shared++;
  }
  const used = b.byOffset.size;
  return {
    blockSize: b.blockSize,
    usedBlocks: used,
    usedBytes: used * b.blockSize,
    writeBlocks: write,
    writeBytes: write * b.blockSize,
    writeShare: used === 0 ? 0 : write / used,
    sharedBytes: shared * b.blockSize,
  };
}
