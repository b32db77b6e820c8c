import { dv, type XfsContext } from './context.js';

const BB = 512;
const RECORD_MAGIC = 0xfeedbabe;
const UNMOUNT_TRANS = 0x20;

export interface LogState {
  /** Where the log is: internal (in the data device) at a byte offset, or external. */
  internal: boolean;
  offset: number;
  length: number;
  /** clean (last record is an unmount record), dirty, or unknown (could not tell). */
  state: 'clean' | 'dirty' | 'empty' | 'unknown';
  headBlock?: number;
  cycle?: number;
}

/**
 * The internal log's state. The head is where the cycle number stamped at the start of
 * each 512-byte block drops (binary search); the last record header before it says whether
 * the log was closed by an unmount record (clean) or holds transactions to replay (dirty).
 */
export async function readLogState(ctx: XfsContext): Promise<LogState> {
  const sb = ctx.sb;
  if (sb.logStart === 0) return { internal: false, offset: 0, length: 0, state: 'unknown' };
  const offset = ctx.fsbOffset(sb.logStart, 'xfs log');
  const length = sb.logBlocks * ctx.bs;
  const st: LogState = { internal: true, offset, length, state: 'unknown' };
  if (offset + length > ctx.volume.size || length < BB * 2) return st;
  const nbb = length / BB;
  const cycleOf = async (b: number): Promise<number> => {
    const v = dv(await ctx.read(offset + b * BB, 8, 'xfs log'));
    return v.getUint32(0) === RECORD_MAGIC ? v.getUint32(4) : v.getUint32(0);
  };
  const first = await cycleOf(0);
  if (first === 0) return { ...st, state: 'empty' };
  // first block whose cycle differs from block 0's (the head), or nbb when all agree
  let lo = 0;
  let hi = nbb;
  if ((await cycleOf(nbb - 1)) === first) lo = nbb;
  while (hi - lo > 1 && lo < nbb) {
    const mid = (lo + hi) >> 1;
    if ((await cycleOf(mid)) === first) lo = mid;
    else hi = mid;
  }
  const head = lo >= nbb ? nbb : hi;
  // the last record header before the head (records are at most 256 KiB plus headers)
  for (let b = head - 1, k = 0; b >= 0 && k < 2048; b--, k++) {
    const buf = await ctx.read(offset + b * BB, BB, 'xfs log record');
    const v = dv(buf);
    if (v.getUint32(0) !== RECORD_MAGIC) continue;
    const numOps = v.getUint32(0x28);
    const hsize = v.getUint32(0x140);
    const version = v.getUint32(8);
    const hblks = version === 2 && hsize > 32768 ? Math.ceil(hsize / 32768) : 1;
    const dataAt = offset + ((b + hblks) % nbb) * BB;
    const op = await ctx.read(dataAt, 12, 'xfs log record');
    const clean = numOps === 1 && (op[9] & UNMOUNT_TRANS) !== 0;
    return { ...st, state: clean ? 'clean' : 'dirty', headBlock: head, cycle: first };
  }
  return st;
}
