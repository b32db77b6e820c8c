import type { AgHeaders } from './ag.js';
import { REFCBT, RMAPBT, walkAgTree } from './agbtree.js';
import type { XfsContext } from './context.js';

/** A shared range of an AG: blocks [start, start+len) referenced `refcount` times. */
export interface Refcount {
  start: number;
  len: number;
  refcount: number;
}

const COW_FLAG = 0x80000000;

/** The AG's reference-count records (reflink), sorted; copy-on-write staging records left out. */
export async function refcounts(
  ctx: XfsContext,
  ag: AgHeaders,
  onBlock?: (agbno: number) => void,
): Promise<Refcount[]> {
  const out: Refcount[] = [];
  if (!ag.agf.refcountRoot) return out;
  await walkAgTree(
    ctx,
    ag.agno,
    REFCBT,
    ag.agf.refcountRoot,
    ag.agf.refcountLevel,
    (v, at, n) => {
      for (let i = 0; i < n; i++) {
        const s = v.getUint32(at + i * 12);
        if (s & COW_FLAG) continue;
        out.push({ start: s, len: v.getUint32(at + i * 12 + 4), refcount: v.getUint32(at + i * 12 + 8) });
      }
    },
    onBlock,
  );
  return out;
}

/** Blocks of the reverse-mapping B+tree (rmapbt). */
export async function rmapbtBlocks(ctx: XfsContext, ag: AgHeaders, onBlock: (agbno: number) => void): Promise<void> {
  if (!ag.agf.rmapRoot) return;
  await walkAgTree(ctx, ag.agno, RMAPBT, ag.agf.rmapRoot, ag.agf.rmapLevel, () => {}, onBlock);
}
