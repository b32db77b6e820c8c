import { corrupt, type ErrorWhere, unsupported } from '../../util/errors.js';

/** Block-group type and profile bits (BTRFS_BLOCK_GROUP_*). */
export const BG = {
  DATA: 1,
  SYSTEM: 2,
  METADATA: 4,
  RAID0: 8,
  RAID1: 16,
  DUP: 32,
  RAID10: 64,
  RAID5: 128,
  RAID6: 256,
  RAID1C3: 512,
  RAID1C4: 1024,
} as const;

export const CHUNK_ITEM_HEADER = 48;
export const STRIPE_SIZE = 32;

/** A chunk item (struct btrfs_chunk): a logical range and where its copies live. */
export interface Chunk {
  logical: number;
  length: number;
  type: number;
  stripeLen: number;
  /** RAID10: how many stripes hold the same bytes (2). */
  subStripes: number;
  stripes: Array<{ devid: number; offset: number }>;
}

/** One copy of a piece of logical bytes: a device and a physical offset on it. */
export interface Copy {
  devid: number;
  physical: number;
}

/** Logical bytes that lie in one stripe, and every copy of them (one per mirror). */
export interface Piece {
  logical: number;
  length: number;
  copies: Copy[];
}

export function profileName(type: number): string {
  const names: Array<[number, string]> = [
    [BG.RAID0, 'raid0'],
    [BG.RAID1, 'raid1'],
    [BG.DUP, 'dup'],
    [BG.RAID10, 'raid10'],
    [BG.RAID5, 'raid5'],
    [BG.RAID6, 'raid6'],
    [BG.RAID1C3, 'raid1c3'],
    [BG.RAID1C4, 'raid1c4'],
  ];
  for (const [bit, n] of names) if (type & bit) return n;
  return 'single';
}

/** Decode a chunk item at `at` of `b` (its key offset is the logical start). */
export function parseChunk(b: Uint8Array, at: number, end: number, logical: number, where: ErrorWhere): Chunk {
  if (at + CHUNK_ITEM_HEADER > end) throw corrupt('chunk item cut short', where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const length = Number(dv.getBigUint64(at, true));
  const stripeLen = Number(dv.getBigUint64(at + 16, true));
  const type = Number(dv.getBigUint64(at + 24, true));
  const n = dv.getUint16(at + 44, true);
  const subStripes = dv.getUint16(at + 46, true);
  if (n === 0 || at + CHUNK_ITEM_HEADER + n * STRIPE_SIZE > end)
    throw corrupt(`chunk item with ${n} stripes does not fit`, where);
  if (length <= 0 || !Number.isSafeInteger(logical + length)) throw corrupt(`chunk length ${length} invalid`, where);
  const striped = (type & (BG.RAID0 | BG.RAID10 | BG.RAID5 | BG.RAID6)) !== 0;
  if (striped && (stripeLen < 4096 || stripeLen > 1 << 30 || (stripeLen & (stripeLen - 1)) !== 0))
    throw corrupt(`chunk stripe length ${stripeLen} invalid`, where);
  const minStripes = type & BG.RAID10 ? 2 : type & BG.RAID6 ? 3 : type & BG.RAID5 ? 2 : 1;
  if (n < minStripes) throw corrupt(`${profileName(type)} chunk with ${n} stripes`, where);
  if (type & BG.RAID10 && (subStripes < 1 || n % subStripes !== 0))
    throw corrupt(`raid10 chunk with ${n} stripes and ${subStripes} sub-stripes`, where);
  const stripes: Chunk['stripes'] = [];
  for (let i = 0; i < n; i++) {
    const s = at + CHUNK_ITEM_HEADER + i * STRIPE_SIZE;
    stripes.push({ devid: Number(dv.getBigUint64(s, true)), offset: Number(dv.getBigUint64(s + 8, true)) });
  }
  return { logical, length, type, stripeLen, subStripes, stripes };
}

/** A device of the file system that was given: its size and name (for messages). */
export interface DeviceInfo {
  size: number;
  name: string;
}

/**
 * The logical-to-physical map: sorted chunks of every profile (single, DUP, RAID0, RAID1,
 * RAID1C3/4, RAID10, RAID5/6 data stripes), over the devices that were given. A copy on a
 * device that was not given is left out of `pieces`; a piece with no copy left is an error
 * naming the missing device.
 */
export class ChunkMap {
  private chunks: Chunk[] = [];
  constructor(
    /** The device the file system was opened on: volume offsets are on this one. */
    readonly primary: number,
    private readonly devices: ReadonlyMap<number, DeviceInfo>,
    private readonly file: string,
    /** The error for bytes whose every copy is on devices that were not given. */
    private readonly missing: (devids: number[], chunk: Chunk, where: ErrorWhere) => Error = (d, c, where) =>
      unsupported(
        `${profileName(c.type)} chunk at ${c.logical} has its bytes on device ${d.join(', ')}, which was not given`,
        where,
      ),
  ) {}

  add(c: Chunk): void {
    const i = this.chunks.findIndex((x) => x.logical === c.logical);
    if (i >= 0) this.chunks[i] = c;
    else {
      this.chunks.push(c);
      this.chunks.sort((a, b) => a.logical - b.logical);
    }
  }

  all(): readonly Chunk[] {
    return this.chunks;
  }

  find(logical: number): Chunk | undefined {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = this.chunks[mid];
      if (logical < c.logical) hi = mid - 1;
      else if (logical >= c.logical + c.length) lo = mid + 1;
      else return c;
    }
    return undefined;
  }

  /**
   * [logical, logical+length) cut at stripe boundaries, each piece with its copies on the
   * given devices (data copies only: RAID5/6 parity is not read). The range must lie inside
   * one chunk.
   */
  pieces(logical: number, length: number, structure: string): Piece[] {
    const where = { file: this.file, structure, offset: logical };
    const c = this.find(logical);
    if (!c) throw corrupt(`logical address ${logical} is in no chunk`, where);
    if (logical + length > c.logical + c.length) throw corrupt('range crosses the end of its chunk', where);
    const out: Piece[] = [];
    const striped = (c.type & (BG.RAID0 | BG.RAID10 | BG.RAID5 | BG.RAID6)) !== 0;
    let pos = logical;
    const end = logical + length;
    if (!striped) {
      out.push({ logical, length, copies: this.copies(c, c.stripes, logical - c.logical, length, where) });
      return out;
    }
    const n = c.stripes.length;
    const sl = c.stripeLen;
    while (pos < end) {
      const off = pos - c.logical;
      const stripeNr = Math.floor(off / sl);
      const inStripe = off - stripeNr * sl;
      const len = Math.min(end - pos, sl - inStripe);
      let row: number;
      let chosen: Chunk['stripes'];
      if (c.type & BG.RAID0) {
        row = Math.floor(stripeNr / n);
        chosen = [c.stripes[stripeNr % n]];
      } else if (c.type & BG.RAID10) {
        const factor = n / c.subStripes;
        row = Math.floor(stripeNr / factor);
        const first = (stripeNr % factor) * c.subStripes;
        chosen = c.stripes.slice(first, first + c.subStripes);
      } else {
        // RAID5/6: data stripes rotate past the parity, one full stripe (row) at a time
        const data = n - (c.type & BG.RAID6 ? 2 : 1);
        row = Math.floor(stripeNr / data);
        chosen = [c.stripes[(row + (stripeNr % data)) % n]];
      }
      out.push({ logical: pos, length: len, copies: this.copies(c, chosen, row * sl + inStripe, len, where) });
      pos += len;
    }
    return out;
  }

  private copies(c: Chunk, stripes: Chunk['stripes'], within: number, length: number, where: ErrorWhere): Copy[] {
    const out: Copy[] = [];
    const missing: number[] = [];
    for (const s of stripes) {
      const dev = this.devices.get(s.devid);
      if (!dev) {
        missing.push(s.devid);
        continue;
      }
      const physical = s.offset + within;
      if (!Number.isSafeInteger(physical) || physical + length > dev.size)
        throw corrupt(`chunk maps to ${physical}, outside the ${dev.size}-byte device ${dev.name}`, where);
      out.push({ devid: s.devid, physical });
    }
    if (out.length === 0) throw this.missing([...new Set(missing)], c, where);
    return out;
  }
}
