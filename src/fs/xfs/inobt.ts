import type { AgHeaders } from './ag.js';
import { FINOBT, INOBT, walkAgTree } from './agbtree.js';
import type { XfsContext } from './context.js';

/** One inode B+tree record: 64 inodes from `startIno` (AG-relative), some of them holes (sparse). */
export interface InodeChunk {
  startIno: number;
  /** 16 bits, each covering 4 inodes: a set bit is a hole (no inodes on disk). */
  holeMask: number;
  count: number;
  freeCount: number;
  /** Free-inode bitmap (bit i = inode startIno + i is free), as two 32-bit halves. */
  freeLo: number;
  freeHi: number;
}

/** Every inode chunk of an AG, from its inode B+tree. `onBlock` sees the tree's blocks. */
export async function inodeChunks(
  ctx: XfsContext,
  ag: AgHeaders,
  onBlock?: (agbno: number) => void,
): Promise<InodeChunk[]> {
  const out: InodeChunk[] = [];
  const sparse = ctx.crc && (ctx.sb.incompat & 2) !== 0;
  const agInodes = ctx.sb.agBlocks * ctx.sb.inopBlock;
  await walkAgTree(
    ctx,
    ag.agno,
    INOBT,
    ag.agi.root,
    ag.agi.level,
    (v, at, n, blockAt) => {
      for (let i = 0; i < n; i++) {
        const o = at + i * 16;
        const startIno = v.getUint32(o);
        const c: InodeChunk = sparse
          ? {
              startIno,
              holeMask: v.getUint16(o + 4),
              count: v.getUint8(o + 6),
              freeCount: v.getUint8(o + 7),
              freeHi: v.getUint32(o + 8),
              freeLo: v.getUint32(o + 12),
            }
          : {
              startIno,
              holeMask: 0,
              count: 64,
              freeCount: v.getUint32(o + 4),
              freeHi: v.getUint32(o + 8),
              freeLo: v.getUint32(o + 12),
            };
        if (startIno % 64 !== 0 || startIno + 64 > agInodes || c.count > 64 || c.freeCount > c.count) {
          throw ctx.corrupt(
            `inode chunk record at inode ${startIno} is invalid`,
            `xfs inobt AG ${ag.agno}`,
            blockAt + o,
          );
        }
        const prev = out[out.length - 1];
        if (prev && prev.startIno >= startIno) {
          throw ctx.corrupt('inode chunk records out of order', `xfs inobt AG ${ag.agno}`, blockAt + o);
        }
        out.push(c);
      }
    },
    onBlock,
  );
  return out;
}

/** Blocks of the free-inode B+tree (finobt), when the AG has one. */
export async function finobtBlocks(ctx: XfsContext, ag: AgHeaders, onBlock: (agbno: number) => void): Promise<void> {
  if (!ag.agi.freeRoot) return;
  await walkAgTree(ctx, ag.agno, FINOBT, ag.agi.freeRoot, ag.agi.freeLevel, () => {}, onBlock);
}

/** Whether inode `i` (0..63) of a chunk is allocated on disk and in use. */
export function chunkInodeUsed(c: InodeChunk, i: number): boolean {
  if ((c.holeMask >>> (i >> 2)) & 1) return false;
  const free = i < 32 ? (c.freeLo >>> i) & 1 : (c.freeHi >>> (i - 32)) & 1;
  return free === 0;
}
