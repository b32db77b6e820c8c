import type { LayoutManifest } from '../library/manifest.js';
import type { RangedSource } from '../library/version-source.js';

/**
 * A block's signature from ranges fed in disk order: the ranges overlapping the block,
 * clipped to it, as (offset in block, length, chunk digest, offset in chunk). `emit` gets each
 * block that holds any, in order, once the ranges have gone past it (`end()` for the last).
 */
class Signer {
  private cur = -1;
  private parts: string[] = [];

  constructor(
    private readonly blockSize: number,
    private readonly blocks: number,
    private readonly emit: (block: number, sig: string) => void,
  ) {}

  range(s: number, n: number, digest: string, at: number): void {
    const bs = this.blockSize;
    const e = s + n;
    for (let b = Math.floor(s / bs); b < this.blocks && b * bs < e; b++) {
      if (b !== this.cur) {
        this.end();
        this.cur = b;
      }
      const o = b * bs;
      const cs = Math.max(s, o);
      const ce = Math.min(e, o + bs);
      this.parts.push(`${cs - o}+${ce - cs}=${digest}@${at + (cs - s)}`);
    }
  }

  end(): void {
    if (this.cur >= 0) this.emit(this.cur, this.parts.join(';'));
    this.cur = -1;
    this.parts = [];
  }
}

/**
 * Per block of `blockSize` bytes, what the layout puts there: the ranges overlapping the
 * block, clipped to it, as (offset in block, length, chunk digest, offset in chunk). Two
 * layouts whose signatures of a block are equal hold the same bytes there (the chunks are
 * named by their content's digest); '' is a block of zeros. Blocks past the layout's disk
 * are ''.
 */
export function blockSignatures(m: LayoutManifest, blockSize: number, blocks: number): string[] {
  const sig = new Array<string>(blocks).fill('');
  const s = new Signer(blockSize, blocks, (b, x) => {
    sig[b] = x;
  });
  const { disk, length, chunk, at } = m.ranges;
  for (let i = 0; i < disk.length; i++) s.range(disk[i], length[i], m.chunks[chunk[i]], at[i]);
  s.end();
  return sig;
}

/**
 * The same signatures from a layout read a part at a time: [block, signature] for each block
 * that holds any range, in disk order (the blocks not yielded are '').
 */
export async function* blockSignatureStream(
  layout: RangedSource,
  blockSize: number,
  blocks: number,
): AsyncGenerator<[number, string]> {
  const out: Array<[number, string]> = [];
  const s = new Signer(blockSize, blocks, (b, x) => out.push([b, x]));
  for await (const r of layout.placedRanges()) {
    for (let i = 0; i < r.disk.length; i++) {
      s.range(r.disk[i], r.length[i], r.digest[i], r.at[i]);
      // each block as soon as it is whole (not a part's worth of signatures held at once)
      if (out.length > 0) {
        yield* out;
        out.length = 0;
      }
    }
  }
  s.end();
  yield* out;
}

/**
 * Two layouts' block signatures side by side, a part of each at a time: `visit(block, a, b)`
 * for every block in [0, blocks) where either holds a range ('' where one holds none), in order.
 */
export async function eachBlockPair(
  a: RangedSource,
  b: RangedSource,
  blockSize: number,
  blocks: number,
  visit: (block: number, a: string, b: string) => void,
): Promise<void> {
  const ia = blockSignatureStream(a, blockSize, blocks)[Symbol.asyncIterator]();
  const ib = blockSignatureStream(b, blockSize, blocks)[Symbol.asyncIterator]();
  let x = await ia.next();
  let y = await ib.next();
  while (!x.done || !y.done) {
    const ba = x.done ? Number.POSITIVE_INFINITY : x.value[0];
    const bb = y.done ? Number.POSITIVE_INFINITY : y.value[0];
    const at = Math.min(ba, bb);
    visit(at, ba === at && !x.done ? x.value[1] : '', bb === at && !y.done ? y.value[1] : '');
    if (ba === at) x = await ia.next();
    if (bb === at) y = await ib.next();
  }
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
