import { StrataError } from '../../util/errors.js';
import { dv, type XfsContext } from './context.js';

/** AG free-space header (sector 1 of the AG). */
export interface Agf {
  seqno: number;
  length: number;
  bnoRoot: number;
  cntRoot: number;
  rmapRoot: number;
  bnoLevel: number;
  cntLevel: number;
  rmapLevel: number;
  flFirst: number;
  flLast: number;
  flCount: number;
  freeBlocks: number;
  longest: number;
  refcountRoot: number;
  refcountLevel: number;
}

/** AG inode header (sector 2 of the AG). */
export interface Agi {
  seqno: number;
  length: number;
  count: number;
  root: number;
  level: number;
  freeCount: number;
  freeRoot: number;
  freeLevel: number;
}

export interface AgHeaders {
  agno: number;
  agf: Agf;
  agi: Agi;
  /** Blocks on the AG free list (AG block numbers). */
  agfl: number[];
}

const MAX_LEVELS = 9;

/** Read and check AG `agno`'s AGF, AGI and AGFL. */
export async function readAgHeaders(ctx: XfsContext, agno: number): Promise<AgHeaders> {
  const sb = ctx.sb;
  const ss = sb.sectSize;
  const base = ctx.agbOffset(agno, 0);
  const agLen = agno === sb.agCount - 1 ? sb.dblocks - agno * sb.agBlocks : sb.agBlocks;
  const levelOk = (n: number) => n >= 1 && n <= MAX_LEVELS;
  const rootOk = (b: number) => b > 0 && b < agLen;

  // AGF
  const fStruct = `xfs AGF ${agno}`;
  const fb = await ctx.read(base + ss, ss, fStruct);
  const f = dv(fb);
  if (f.getUint32(0) !== 0x58414746) throw ctx.corrupt('bad magic (want XAGF)', fStruct, base + ss);
  if (ctx.crc) ctx.verify(fb, 0xd8, fStruct, base + ss);
  const agf: Agf = {
    seqno: f.getUint32(8),
    length: f.getUint32(0xc),
    bnoRoot: f.getUint32(0x10),
    cntRoot: f.getUint32(0x14),
    rmapRoot: f.getUint32(0x18),
    bnoLevel: f.getUint32(0x1c),
    cntLevel: f.getUint32(0x20),
    rmapLevel: f.getUint32(0x24),
    flFirst: f.getUint32(0x28),
    flLast: f.getUint32(0x2c),
    flCount: f.getUint32(0x30),
    freeBlocks: f.getUint32(0x34),
    longest: f.getUint32(0x38),
    refcountRoot: ctx.crc ? f.getUint32(0x58) : 0,
    refcountLevel: ctx.crc ? f.getUint32(0x5c) : 0,
  };
  const fbad = (what: string) => new StrataError('CORRUPT', what, ctx.where(fStruct, base + ss));
  if (agf.seqno !== agno) throw fbad(`sequence number ${agf.seqno}, expected ${agno}`);
  if (agf.length !== agLen) throw fbad(`length ${agf.length}, expected ${agLen}`);
  if (!rootOk(agf.bnoRoot) || !levelOk(agf.bnoLevel)) throw fbad(`bnobt root ${agf.bnoRoot} level ${agf.bnoLevel}`);
  if (!rootOk(agf.cntRoot) || !levelOk(agf.cntLevel)) throw fbad(`cntbt root ${agf.cntRoot} level ${agf.cntLevel}`);
  if (agf.freeBlocks > agLen) throw fbad(`free block count ${agf.freeBlocks} exceeds the AG`);

  // AGI
  const iStruct = `xfs AGI ${agno}`;
  const ib = await ctx.read(base + 2 * ss, ss, iStruct);
  const i = dv(ib);
  if (i.getUint32(0) !== 0x58414749) throw ctx.corrupt('bad magic (want XAGI)', iStruct, base + 2 * ss);
  if (ctx.crc) ctx.verify(ib, 0x138, iStruct, base + 2 * ss);
  const agi: Agi = {
    seqno: i.getUint32(8),
    length: i.getUint32(0xc),
    count: i.getUint32(0x10),
    root: i.getUint32(0x14),
    level: i.getUint32(0x18),
    freeCount: i.getUint32(0x1c),
    freeRoot: ctx.crc ? i.getUint32(0x148) : 0,
    freeLevel: ctx.crc ? i.getUint32(0x14c) : 0,
  };
  const ibad = (what: string) => new StrataError('CORRUPT', what, ctx.where(iStruct, base + 2 * ss));
  if (agi.seqno !== agno) throw ibad(`sequence number ${agi.seqno}, expected ${agno}`);
  if (agi.length !== agLen) throw ibad(`length ${agi.length}, expected ${agLen}`);
  if (!rootOk(agi.root) || !levelOk(agi.level)) throw ibad(`inobt root ${agi.root} level ${agi.level}`);
  if (agi.freeRoot !== 0 && (!rootOk(agi.freeRoot) || !levelOk(agi.freeLevel))) {
    throw ibad(`finobt root ${agi.freeRoot} level ${agi.freeLevel}`);
  }

  // AGFL: a circular list of blocks reserved for B+tree growth
  const lStruct = `xfs AGFL ${agno}`;
  const lb = await ctx.read(base + 3 * ss, ss, lStruct);
  const l = dv(lb);
  let hdr = 0;
  if (ctx.crc) {
    if (l.getUint32(0) !== 0x5841464c) throw ctx.corrupt('bad magic (want XAFL)', lStruct, base + 3 * ss);
    ctx.verify(lb, 32, lStruct, base + 3 * ss);
    hdr = 36;
  }
  const size = (ss - hdr) / 4;
  const agfl: number[] = [];
  if (agf.flCount > 0) {
    if (agf.flFirst >= size || agf.flLast >= size || agf.flCount > size) {
      throw fbad(`free list ${agf.flFirst}..${agf.flLast} (${agf.flCount}) does not fit ${size} slots`);
    }
    for (let k = 0, s = agf.flFirst; k < agf.flCount; k++, s = (s + 1) % size) {
      const b = l.getUint32(hdr + s * 4);
      if (b >= agLen)
        throw ctx.corrupt(`free-list block ${b} lies outside the AG`, lStruct, base + 3 * ss + hdr + s * 4);
      agfl.push(b);
    }
  }
  return { agno, agf, agi, agfl };
}
