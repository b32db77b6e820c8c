import { StrataError } from '../../util/errors.js';
import { forkExtents, readForkBlocks } from './bmbt.js';
import { dv, u64, type XfsContext } from './context.js';
import { FMT, type XfsInode } from './inode.js';

const MAX_TARGET = 1024;
const td = new TextDecoder('utf-8');

/**
 * A symlink's target bytes: inside the inode (local) or in its own blocks (remote; on v5
 * each block starts with an XSLM header naming the owner, offset and byte count).
 */
export async function readSymlink(ctx: XfsContext, n: XfsInode): Promise<string> {
  const structure = `xfs inode ${n.ino} symlink`;
  if (n.size === 0 || n.size > MAX_TARGET) throw ctx.corrupt(`target length ${n.size}`, structure, n.at);
  if (n.format === FMT.LOCAL) {
    if (n.size > n.dataFork.length) throw ctx.corrupt(`target of ${n.size} bytes exceeds the fork`, structure, n.at);
    return td.decode(n.dataFork.subarray(0, n.size));
  }
  const map = await forkExtents(ctx, n, false);
  const bs = ctx.bs;
  if (!ctx.crc) {
    const raw = await readForkBlocks(ctx, map, 0, Math.ceil(n.size / bs), structure);
    return td.decode(raw.subarray(0, n.size));
  }
  // v5: one XSLM header per mapping (the buffer the kernel wrote), CRC over the whole buffer
  const out = new Uint8Array(n.size);
  let got = 0;
  for (const e of map) {
    if (got >= n.size) break;
    if (e.len > 4) throw ctx.corrupt(`symlink extent of ${e.len} blocks`, structure);
    const at = ctx.fsbOffset(e.fsb, structure);
    const b = await ctx.read(at, e.len * bs, structure);
    const v = dv(b);
    if (v.getUint32(0) !== 0x58534c4d) throw ctx.corrupt('bad magic (want XSLM)', structure, at);
    ctx.verify(b, 12, `${structure} block ${e.off}`, at);
    const off = v.getUint32(4);
    const bytes = v.getUint32(8);
    if (u64(v, 32) !== n.ino) throw ctx.corrupt(`block owned by inode ${u64(v, 32)}`, structure, at);
    if (off !== got || bytes > b.length - 56 || off + bytes > n.size) {
      throw new StrataError('CORRUPT', `block says ${bytes} bytes at ${off}`, ctx.where(structure, at));
    }
    out.set(b.subarray(56, 56 + bytes), off);
    got += bytes;
  }
  if (got !== n.size) throw ctx.corrupt(`blocks hold ${got} of ${n.size} bytes`, structure);
  return td.decode(out);
}
