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
const RAID_MASK = BG.RAID0 | BG.RAID1 | BG.RAID10 | BG.RAID5 | BG.RAID6 | BG.RAID1C3 | BG.RAID1C4;

export const CHUNK_ITEM_HEADER = 48;
export const STRIPE_SIZE = 32;

/** A chunk item (struct btrfs_chunk): a logical range and where its copies live. */
export interface Chunk {
  logical: number;
  length: number;
  type: number;
  stripeLen: number;
  stripes: Array<{ devid: number; offset: number }>;
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
  if (n === 0 || at + CHUNK_ITEM_HEADER + n * STRIPE_SIZE > end)
    throw corrupt(`chunk item with ${n} stripes does not fit`, where);
  if (length <= 0 || !Number.isSafeInteger(logical + length)) throw corrupt(`chunk length ${length} invalid`, where);
  const stripes: Chunk['stripes'] = [];
  for (let i = 0; i < n; i++) {
    const s = at + CHUNK_ITEM_HEADER + i * STRIPE_SIZE;
    stripes.push({ devid: Number(dv.getBigUint64(s, true)), offset: Number(dv.getBigUint64(s + 8, true)) });
  }
  return { logical, length, type, stripeLen, stripes };
}

/** The logical-to-physical map of one device: sorted chunks, single and DUP profiles. */
export class ChunkMap {
  private chunks: Chunk[] = [];
  constructor(
    private readonly devid: number,
    private readonly devSize: number,
    private readonly file: string,
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
   * Physical offsets of every copy of [logical, logical+length) on this device (one for
   * single, two for DUP). The range must lie inside one chunk.
   */
  map(logical: number, length: number, structure: string): number[] {
    const where = { file: this.file, structure, offset: logical };
    const c = this.find(logical);
    if (!c) throw corrupt(`logical address ${logical} is in no chunk`, where);
    if (logical + length > c.logical + c.length) throw corrupt('range crosses the end of its chunk', where);
    if (c.type & RAID_MASK)
      throw unsupported(`${profileName(c.type)} chunks (several devices) are not supported`, where);
    const out: number[] = [];
    for (const s of c.stripes) {
      if (s.devid !== this.devid) {
        throw unsupported(`chunk stripe on device ${s.devid} (only device ${this.devid} is given)`, where);
      }
      const phys = s.offset + (logical - c.logical);
      if (phys + length > this.devSize)
        throw corrupt(`chunk maps to ${phys}, outside the ${this.devSize}-byte device`, where);
      out.push(phys);
    }
    return out;
  }
}
