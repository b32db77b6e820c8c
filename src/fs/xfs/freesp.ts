import type { AgHeaders } from './ag.js';
import { BNOBT, CNTBT, walkAgTree } from './agbtree.js';
import type { XfsContext } from './context.js';

/** The free extents of an AG ([agbno, length] by block number), from the bnobt. */
export async function freeExtents(
  ctx: XfsContext,
  ag: AgHeaders,
  onBlock?: (agbno: number) => void,
): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  const agLen = ag.agf.length;
  await walkAgTree(
    ctx,
    ag.agno,
    BNOBT,
    ag.agf.bnoRoot,
    ag.agf.bnoLevel,
    (v, at, n, blockAt) => {
      for (let i = 0; i < n; i++) {
        const start = v.getUint32(at + i * 8);
        const len = v.getUint32(at + i * 8 + 4);
        const prev = out[out.length - 1];
        if (len === 0 || start + len > agLen || (prev && prev[0] + prev[1] > start)) {
          throw ctx.corrupt(
            `free extent ${start}+${len} is invalid or out of order`,
            `xfs bnobt AG ${ag.agno}`,
            blockAt + at + i * 8,
          );
        }
        out.push([start, len]);
      }
    },
    onBlock,
  );
  return out;
}

/** Blocks of the by-size free-space B+tree (cntbt). */
export async function cntbtBlocks(ctx: XfsContext, ag: AgHeaders, onBlock: (agbno: number) => void): Promise<void> {
  await walkAgTree(ctx, ag.agno, CNTBT, ag.agf.cntRoot, ag.agf.cntLevel, () => {}, onBlock);
}
