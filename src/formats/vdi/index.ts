import { type ByteSource, clampRead, type Extent, pushExtent, readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import { pushHostStatus } from '../layer.js';
import { isVdi, VDI_SIGNATURE } from '../probe.js';
import { clampStatus, ReadPlan } from '../read-plan.js';
import type { DirectPiece, DiskImage, FormatDriver, OpenContext } from '../types.js';

/**
 * VirtualBox VDI (header version 1.1): a 64-byte text banner, the signature 0xbeda107f at
 * 0x40, a header, a block map of 32-bit entries (one per block of the virtual disk) and the
 * data blocks. A map entry is the index of the block in the data area, or one of two
 * special values: never written (reads as zeros, nothing stored) or discarded (zeros).
 */

const BLOCK_FREE = 0xffffffff;
const BLOCK_ZERO = 0xfffffffe;
const TYPE_NAMES: Record<number, string> = { 1: 'dynamic', 2: 'static', 3: 'undo', 4: 'differencing' };
/** Header fields we read end at 0x1a8 (the parent UUID); the v1.1 header is 400 bytes after 0x48. */
const HEADER_READ = 0x1d8;
const MAX_BLOCK = 256 * 1024 * 1024;

const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function uuid(b: Uint8Array, at: number): string {
  const h = Buffer.from(b.subarray(at, at + 16)).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class VdiImage implements DiskImage {
  readonly format = 'vdi';
  readonly name: string;
  readonly fileSize: number;
  readonly clusterSize: number;
  readonly warnings: string[];

  constructor(
    private readonly src: ByteSource,
    readonly size: number,
    readonly subformat: string,
    private readonly blockSize: number,
    private readonly blockExtra: number,
    private readonly dataOffset: number,
    private readonly map: Uint32Array,
    private readonly blocks: number,
    private readonly facts: Record<string, unknown>,
    warnings: string[],
  ) {
    this.name = src.name;
    this.fileSize = src.size;
    this.clusterSize = blockSize;
    this.warnings = warnings;
  }

  /** Host offset of stored block `index` (a block-map value), checked against the file. */
  private host(index: number, block: number, need: number): number {
    const off = this.dataOffset + index * (this.blockSize + this.blockExtra) + this.blockExtra;
    if (index >= this.blocks || off + need > this.src.size) {
      throw new StrataError(
        'CORRUPT',
        `block ${block} maps to data block ${index} at ${off}, past the end of the file (size ${this.src.size})`,
        { file: this.name, structure: 'vdi block map entry', offset: off },
      );
    }
    return off;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    return this.plan(offset, n).exec(this.src, undefined, n);
  }

  /** Read into a caller's (reused, not zeroed) buffer; returns the byte count. */
  async readInto(offset: number, buf: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, buf.length);
    if (n > 0) await this.plan(offset, n).into(this.src, undefined, buf.subarray(0, n));
    return n;
  }

  async direct(offset: number, length: number): Promise<DirectPiece[]> {
    const n = clampRead(this, offset, length);
    return this.plan(offset, n).direct(this.src, undefined, offset);
  }

  /** Where each piece of [offset, offset+n) comes from: a stored block, or zeros. */
  private plan(offset: number, n: number): ReadPlan {
    const plan = new ReadPlan();
    const bs = this.blockSize;
    let pos = 0;
    while (pos < n) {
      const v = offset + pos;
      const blk = Math.floor(v / bs);
      const inBlk = v - blk * bs;
      const len = Math.min(bs - inBlk, n - pos);
      const e = this.map[blk];
      if (e === BLOCK_FREE || e === BLOCK_ZERO) plan.zero(pos, len);
      else plan.file(this.host(e, blk, inBlk + len) + inBlk, pos, len, 'vdi data block');
      pos += len;
    }
    return plan;
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    const out: Extent[] = [];
    const bs = this.blockSize;
    let pos = 0;
    while (pos < n) {
      const v = offset + pos;
      const blk = Math.floor(v / bs);
      const len = Math.min(bs - (v - blk * bs), n - pos);
      const e = this.map[blk];
      if (e === BLOCK_FREE || e === BLOCK_ZERO) pushExtent(out, v, len, e === BLOCK_FREE ? 'unallocated' : 'zero');
      else {
        // a stored block over a hole of the file (a static image made sparse) reads as zeros
        const inBlk = v - blk * bs;
        await pushHostStatus(out, this.src, this.host(e, blk, inBlk + len) + inBlk, len, v);
      }
      pos += len;
    }
    return out;
  }

  details(): Record<string, unknown> {
    return { ...this.facts };
  }

  async close(): Promise<void> {
    await this.src.close?.();
  }
}

async function openVdi(ctx: OpenContext): Promise<DiskImage> {
  const src = ctx.source;
  const file = ctx.location;
  const where = (structure: string, offset: number) => ({ file, structure, offset });
  if (src.size < HEADER_READ) {
    throw new StrataError(
      'TRUNCATED',
      `file of ${src.size} bytes is too small for a VDI header`,
      where('vdi header', 0),
    );
  }
  const h = await readExact(src, 0, HEADER_READ, 'vdi header');
  const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const u32 = (at: number) => dv.getUint32(at, true);
  if (u32(0x40) !== VDI_SIGNATURE) {
    throw new StrataError('CORRUPT', `bad signature 0x${u32(0x40).toString(16)}`, where('vdi header', 0x40));
  }
  const version = u32(0x44);
  if (version >>> 16 !== 1) {
    throw new StrataError(
      'UNSUPPORTED',
      `header version ${version >>> 16}.${version & 0xffff} (only 1.x is read)`,
      where('vdi header', 0x44),
    );
  }
  const headerSize = u32(0x48);
  if (headerSize < 0x1a8 - 0x48 || headerSize > 1 << 20) {
    throw new StrataError('CORRUPT', `header size ${headerSize} is out of range`, where('vdi header', 0x48));
  }
  const type = u32(0x4c);
  if (type !== 1 && type !== 2) {
    throw new StrataError(
      'UNSUPPORTED',
      `image type ${type} (${TYPE_NAMES[type] ?? 'unknown'}); only dynamic and static images are read`,
      where('vdi header', 0x4c),
    );
  }
  const blocksOffset = u32(0x154);
  const dataOffset = u32(0x158);
  const sectorSize = u32(0x168);
  const diskSizeBig = dv.getBigUint64(0x170, true);
  const blockSize = u32(0x178);
  const blockExtra = u32(0x17c);
  const blocks = u32(0x180);
  const allocated = u32(0x184);
  if (sectorSize !== 512) {
    throw new StrataError('UNSUPPORTED', `sector size ${sectorSize} (only 512)`, where('vdi header', 0x168));
  }
  if (diskSizeBig > BigInt(LIMITS.maxVirtualSize)) {
    throw new StrataError(
      'LIMIT',
      `disk size ${diskSizeBig} exceeds the ${LIMITS.maxVirtualSize}-byte limit`,
      where('vdi header', 0x170),
    );
  }
  const diskSize = Number(diskSizeBig);
  if (blockSize < 512 || blockSize > MAX_BLOCK || blockSize % 512 !== 0) {
    throw new StrataError('CORRUPT', `block size ${blockSize} is out of range`, where('vdi header', 0x178));
  }
  if (blockExtra > MAX_BLOCK) {
    throw new StrataError('CORRUPT', `block extra data size ${blockExtra} is out of range`, where('vdi header', 0x17c));
  }
  if (blocks * blockSize < diskSize) {
    throw new StrataError(
      'CORRUPT',
      `${blocks} blocks of ${blockSize} bytes cannot hold a disk of ${diskSize} bytes`,
      where('vdi header', 0x180),
    );
  }
  if (blocks * 4 > LIMITS.maxTableBytes) {
    throw new StrataError('LIMIT', `block map of ${blocks} entries is too large`, where('vdi block map', blocksOffset));
  }
  if (blocksOffset + blocks * 4 > src.size) {
    throw new StrataError(
      blocksOffset >= src.size ? 'CORRUPT' : 'TRUNCATED',
      `block map of ${blocks} entries at ${blocksOffset} lies past the end of the file (size ${src.size})`,
      where('vdi block map', blocksOffset),
    );
  }
  if (dataOffset > src.size) {
    throw new StrataError(
      'CORRUPT',
      `data area offset ${dataOffset} lies past the end of the file (size ${src.size})`,
      where('vdi header', 0x158),
    );
  }
  // Only the entries that cover the virtual disk matter; the rest may hold anything.
  const used = Math.ceil(diskSize / blockSize);
  const raw = await readExact(src, blocksOffset, used * 4, 'vdi block map');
  const map = new Uint32Array(used);
  if (HOST_LE) map.set(new Uint32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + used * 4)));
  else {
    const mv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    for (let i = 0; i < used; i++) map[i] = mv.getUint32(i * 4, true);
  }
  const warnings = ctx.warnings;
  if (allocated > blocks) ctx.warn(`header says ${allocated} blocks are allocated, more than the ${blocks} it has`);
  const banner = Buffer.from(h.subarray(0, 0x40)).toString('latin1');
  const facts: Record<string, unknown> = {
    version: `${version >>> 16}.${version & 0xffff}`,
    imageType: TYPE_NAMES[type],
    banner: banner.slice(0, banner.indexOf('\n') >= 0 ? banner.indexOf('\n') : banner.indexOf('\0')).trim(),
    blockSize,
    blockExtraData: blockExtra,
    blocks,
    blocksAllocated: allocated,
    blockMapOffset: blocksOffset,
    dataOffset,
    uuid: uuid(h, 0x188),
    parentUuid: uuid(h, 0x1a8),
  };
  return new VdiImage(src, diskSize, TYPE_NAMES[type], blockSize, blockExtra, dataOffset, map, blocks, facts, warnings);
}

export const vdiDriver: FormatDriver = {
  name: 'vdi',
  probe: isVdi,
  open: openVdi,
};
