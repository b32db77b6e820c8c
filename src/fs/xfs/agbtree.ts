import { StrataError } from '../../util/errors.js';
import { dv, type XfsContext } from './context.js';

/**
 * The short-form B+trees rooted in an AG header (free space by block and by size, inodes,
 * free inodes, reverse mapping, reference counts): one walker, described per tree.
 */
export interface AgTreeSpec {
  /** Name as xfs_db spells it ('bnobt', 'inobt' ...). */
  name: string;
  magicV4: number;
  magicV5: number;
  /** Bytes of a key in a node (rmapbt nodes hold low and high keys). */
  keySize: number;
  recSize: number;
}

export const BNOBT: AgTreeSpec = { name: 'bnobt', magicV4: 0x41425442, magicV5: 0x41423342, keySize: 8, recSize: 8 };
export const CNTBT: AgTreeSpec = { name: 'cntbt', magicV4: 0x41425443, magicV5: 0x41423343, keySize: 8, recSize: 8 };
export const INOBT: AgTreeSpec = { name: 'inobt', magicV4: 0x49414254, magicV5: 0x49414233, keySize: 4, recSize: 16 };
export const FINOBT: AgTreeSpec = { name: 'finobt', magicV4: 0x46494254, magicV5: 0x46494233, keySize: 4, recSize: 16 };
export const RMAPBT: AgTreeSpec = { name: 'rmapbt', magicV4: 0, magicV5: 0x524d4233, keySize: 40, recSize: 24 };
export const REFCBT: AgTreeSpec = { name: 'refcountbt', magicV4: 0, magicV5: 0x52334643, keySize: 4, recSize: 12 };

/** Header bytes of a short-form B+tree block. */
export const shortHeader = (ctx: XfsContext): number => (ctx.crc ? 56 : 16);

/** Leaf records: `n` records of `spec.recSize` bytes from `at` in `v`. */
export type LeafVisitor = (v: DataView, at: number, n: number, blockOffset: number) => void;

/**
 * Walk an AG B+tree from its root, calling `onLeaf` for every leaf block (in key order) and
 * `onBlock` for every block (leaves and nodes). Loops, wrong levels, bad magic and
 * overfull blocks are CORRUPT/LOOP errors naming the tree, the AG and the block.
 */
export async function walkAgTree(
  ctx: XfsContext,
  agno: number,
  spec: AgTreeSpec,
  root: number,
  levels: number,
  onLeaf: LeafVisitor,
  onBlock?: (agbno: number, level: number) => void,
): Promise<void> {
  const sb = ctx.sb;
  const bs = ctx.bs;
  const hdr = shortHeader(ctx);
  const magic = ctx.crc ? spec.magicV5 : spec.magicV4;
  const agLen = agno === sb.agCount - 1 ? sb.dblocks - agno * sb.agBlocks : sb.agBlocks;
  const seen = new Set<number>();
  const leafMax = Math.floor((bs - hdr) / spec.recSize);
  const nodeMax = Math.floor((bs - hdr) / (spec.keySize + 4));
  const structure = `xfs ${spec.name} AG ${agno}`;
  const visit = async (agbno: number, level: number, from?: number): Promise<void> => {
    if (agbno === 0 || agbno >= agLen) {
      throw new StrataError('CORRUPT', `block ${agbno} lies outside the AG`, ctx.where(structure, from));
    }
    if (seen.has(agbno)) {
      throw new StrataError('LOOP', `block ${agbno} is reached twice`, ctx.where(structure, from));
    }
    seen.add(agbno);
    const at = ctx.agbOffset(agno, agbno);
    const buf = await ctx.read(at, bs, structure);
    const v = dv(buf);
    if (v.getUint32(0) !== magic) {
      throw new StrataError(
        'CORRUPT',
        `bad magic 0x${v.getUint32(0).toString(16)} in block ${agbno}`,
        ctx.where(structure, at),
      );
    }
    if (ctx.crc) ctx.verify(buf, 52, `${structure} block ${agbno}`, at);
    const lvl = v.getUint16(4);
    const n = v.getUint16(6);
    if (lvl !== level) {
      throw new StrataError('CORRUPT', `block ${agbno} has level ${lvl}, expected ${level}`, ctx.where(structure, at));
    }
    onBlock?.(agbno, level);
    if (level === 0) {
      if (n > leafMax) throw new StrataError('CORRUPT', `leaf holds ${n} records`, ctx.where(structure, at));
      onLeaf(v, hdr, n, at);
      return;
    }
    if (n === 0 || n > nodeMax) throw new StrataError('CORRUPT', `node holds ${n} keys`, ctx.where(structure, at));
    const ptrs = hdr + nodeMax * spec.keySize;
    for (let i = 0; i < n; i++) await visit(v.getUint32(ptrs + i * 4), level - 1, at + ptrs + i * 4);
  };
  await visit(root, levels - 1);
}
