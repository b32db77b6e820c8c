import {
  type ByteSource,
  clampRead,
  type Extent,
  type ExtentKind,
  pushExtent,
  readExact,
} from '../../io/byte-source.js';
import { crc32c } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import { hasSignature, isVhdx, VHDX_SIG_FILE } from '../probe.js';
import { BitmapCache, bitmapRuns, clampStatus, ReadPlan } from '../read-plan.js';
import type { BackingRef, DirectPiece, DiskImage, FormatDriver, OpenContext } from '../types.js';
import {
  batEntries,
  bitmapEntry,
  chunkRatio,
  GUID,
  guidString,
  HEADER_SIZE,
  HEADER1_OFFSET,
  HEADER2_OFFSET,
  METADATA_TABLE_SIZE,
  MiB,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_NOT_PRESENT,
  PAYLOAD_BLOCK_PARTIALLY_PRESENT,
  PAYLOAD_BLOCK_UNDEFINED,
  PAYLOAD_BLOCK_UNMAPPED,
  PAYLOAD_BLOCK_ZERO,
  payloadEntry,
  REGION_TABLE_SIZE,
  REGION1_OFFSET,
  REGION2_OFFSET,
  SB_BLOCK_PRESENT,
} from './layout.js';
import { replayLog } from './log.js';

/*
 * VHDX ([MS-VHDX]): a file identifier, two 4 KiB headers (CRC-32C, the valid one with the
 * highest sequence number is current), two copies of a region table locating the BAT and
 * metadata regions, a metadata table of typed items, and a BAT of 64-bit entries where
 * each chunk of payload-block entries is followed by the entry of its sector bitmap block.
 */

const SIG_FILE = VHDX_SIG_FILE;
const sig = hasSignature;

/** CRC-32C of a structure with its 4-byte checksum field (at `at`) taken as zero. */
export function vhdxChecksum(b: Uint8Array, at = 4): number {
  const copy = new Uint8Array(b);
  copy.fill(0, at, at + 4);
  return crc32c(copy);
}

function u64le(dv: DataView, at: number): number {
  const lo = dv.getUint32(at, true);
  const hi = dv.getUint32(at + 4, true);
  if (hi >= 0x200000) return Number.POSITIVE_INFINITY;
  return hi * 2 ** 32 + lo;
}

export interface VhdxHeader {
  slot: 1 | 2;
  offset: number;
  sequenceNumber: bigint;
  fileWriteGuid: string;
  dataWriteGuid: string;
  logGuid: string;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
}

const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

function parseHeader(b: Uint8Array, slot: 1 | 2, offset: number): VhdxHeader | string {
  if (!sig(b, 0, 'head')) return 'no "head" signature';
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (vhdxChecksum(b) !== dv.getUint32(4, true)) return 'CRC-32C mismatch';
  const version = dv.getUint16(66, true);
  if (version !== 1) return `version ${version} is not 1`;
  return {
    slot,
    offset,
    sequenceNumber: dv.getBigUint64(8, true),
    fileWriteGuid: guidString(b.subarray(16, 32)),
    dataWriteGuid: guidString(b.subarray(32, 48)),
    logGuid: guidString(b.subarray(48, 64)),
    logVersion: dv.getUint16(64, true),
    version,
    logLength: dv.getUint32(68, true),
    logOffset: u64le(dv, 72),
  };
}

interface Region {
  offset: number;
  length: number;
}

export class VhdxImage implements DiskImage {
  readonly format = 'vhdx';
  readonly name: string;
  readonly fileSize: number;
  readonly warnings: string[];
  size = 0;
  subformat = 'dynamic';
  clusterSize = 0;
  backingRef?: BackingRef;
  backing?: DiskImage;
  header!: VhdxHeader;

  private blockSize = 0;
  private logicalSector = 512;
  private physicalSector = 512;
  private leaveAllocated = false;
  private hasParent = false;
  private page83 = '';
  private ratio = 1;
  private bat!: DataView;
  private batOffset = 0;
  private batCount = 0;
  private parentEntries: Record<string, string> = Object.create(null);
  private readonly bitmaps = new BitmapCache();
  private creator = '';

  /** Log replay outcome for details(). */
  private logState = 'empty';

  private constructor(
    private src: ByteSource,
    warnings: string[],
  ) {
    this.name = src.name;
    this.fileSize = src.size;
    this.warnings = warnings;
  }

  /** The DataWriteGuid of the current header: what a child's parent_linkage must name. */
  get dataWriteGuid(): string {
    return this.header.dataWriteGuid;
  }

  private err(
    code: 'CORRUPT' | 'TRUNCATED' | 'UNSUPPORTED' | 'LIMIT',
    msg: string,
    structure: string,
    offset?: number,
  ) {
    return new StrataError(code, msg, { file: this.name, structure, offset });
  }

  static async open(ctx: OpenContext): Promise<VhdxImage> {
    const img = new VhdxImage(ctx.source, ctx.warnings);
    await img.init(ctx);
    return img;
  }

  private async init(ctx: OpenContext): Promise<void> {
    const src = this.src;
    if (src.size < REGION2_OFFSET + REGION_TABLE_SIZE) {
      throw this.err(
        'TRUNCATED',
        `file of ${src.size} bytes is too small for the VHDX header section`,
        'vhdx header section',
        0,
      );
    }
    const ident = await readExact(src, 0, 520, 'vhdx file identifier');
    if (!sig(ident, 0, SIG_FILE)) throw this.err('CORRUPT', 'no "vhdxfile" signature', 'vhdx file identifier', 0);
    this.creator = Buffer.from(ident.subarray(8, 520)).toString('utf16le').replace(/\0.*$/s, '');

    // Headers: the valid one with the highest sequence number is current.
    const h1 = parseHeader(await readExact(src, HEADER1_OFFSET, HEADER_SIZE, 'vhdx header 1'), 1, HEADER1_OFFSET);
    const h2 = parseHeader(await readExact(src, HEADER2_OFFSET, HEADER_SIZE, 'vhdx header 2'), 2, HEADER2_OFFSET);
    if (typeof h1 === 'string' && typeof h2 === 'string') {
      throw this.err(
        'CORRUPT',
        `both headers are invalid (header 1: ${h1}; header 2: ${h2})`,
        'vhdx headers',
        HEADER1_OFFSET,
      );
    }
    if (typeof h1 === 'string') this.header = h2 as VhdxHeader;
    else if (typeof h2 === 'string') this.header = h1;
    else this.header = h2.sequenceNumber > h1.sequenceNumber ? h2 : h1;
    if (this.header.logGuid !== ZERO_GUID) await this.replay(ctx);

    // Region table (copy 2 if copy 1 is damaged).
    let regions: Map<string, Region> | undefined;
    let firstProblem = '';
    for (const at of [REGION1_OFFSET, REGION2_OFFSET]) {
      const r = await this.parseRegions(at);
      if (typeof r !== 'string') {
        regions = r;
        if (at === REGION2_OFFSET) ctx.warn(`region table 1 is invalid (${firstProblem}); using region table 2`);
        break;
      }
      if (r.startsWith('!')) throw this.err('UNSUPPORTED', r.slice(1), 'vhdx region table', at);
      firstProblem ||= r;
      if (at === REGION2_OFFSET) {
        throw this.err(
          'CORRUPT',
          `both region tables are invalid (table 1: ${firstProblem}; table 2: ${r})`,
          'vhdx region table',
          REGION1_OFFSET,
        );
      }
    }
    const regs = regions as Map<string, Region>;
    const batRegion = regs.get(GUID.bat.toLowerCase());
    const metaRegion = regs.get(GUID.metadata.toLowerCase());
    if (!batRegion || !metaRegion) {
      throw this.err(
        'CORRUPT',
        `region table lacks the ${batRegion ? 'metadata' : 'BAT'} region`,
        'vhdx region table',
        REGION1_OFFSET,
      );
    }

    await this.parseMetadata(metaRegion, ctx);

    // BAT.
    this.ratio = chunkRatio(this.logicalSector, this.blockSize);
    this.batCount = batEntries(this.size, this.blockSize, this.ratio, this.hasParent);
    const batBytes = this.batCount * 8;
    if (batBytes > batRegion.length) {
      throw this.err(
        'CORRUPT',
        `BAT region of ${batRegion.length} bytes is too small for ${this.batCount} entries`,
        'vhdx BAT',
        batRegion.offset,
      );
    }
    if (batBytes > LIMITS.maxTableBytes) {
      throw this.err('LIMIT', `BAT of ${batBytes} bytes exceeds the table limit`, 'vhdx BAT', batRegion.offset);
    }
    const bat = await readExact(this.src, batRegion.offset, batBytes, 'vhdx BAT');
    this.bat = new DataView(bat.buffer, bat.byteOffset, bat.byteLength);
    this.batOffset = batRegion.offset;
    this.clusterSize = this.blockSize;
    this.subformat = this.hasParent ? 'differencing' : this.leaveAllocated ? 'fixed' : 'dynamic';

    if (this.hasParent) await this.openParent(ctx);
  }

  /**
   * A non-empty log: replay it in memory (the file is never written) so the BAT and
   * metadata read as the writer left them. A log we cannot replay is a warning, and the
   * image is read as the file stands.
   */
  private async replay(ctx: OpenContext): Promise<void> {
    const h = this.header;
    const what = `the log is not empty (log GUID ${h.logGuid} in header ${h.slot})`;
    try {
      const r = await replayLog(this.src, h.logOffset, h.logLength, h.logGuid);
      if (!r) {
        this.logState = 'not replayed: no valid log sequence';
        ctx.warn(`${what} but holds no valid sequence of entries: nothing was replayed`);
        return;
      }
      this.src = r.source;
      this.logState = `replayed in memory (${r.entries} entries, sequence ${r.firstSeq}..${r.lastSeq})`;
      ctx.warn(`${what}: ${r.entries} log entries were replayed in memory; the file itself was not changed`);
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      this.logState = `not replayed: ${e.message}`;
      ctx.warn(`${what} and was not replayed (${e.message}): recently written metadata or data may be missing`);
    }
  }

  /** Parse one region table copy; a string explains why it is unusable ("!..." = unsupported, fatal). */
  private async parseRegions(at: number): Promise<Map<string, Region> | string> {
    const b = await readExact(this.src, at, REGION_TABLE_SIZE, 'vhdx region table');
    if (!sig(b, 0, 'regi')) return 'no "regi" signature';
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (vhdxChecksum(b) !== dv.getUint32(4, true)) return 'CRC-32C mismatch';
    const count = dv.getUint32(8, true);
    if (count > 2047) return `${count} entries (at most 2047)`;
    const out = new Map<string, Region>();
    for (let i = 0; i < count; i++) {
      const e = 16 + i * 32;
      const guid = guidString(b.subarray(e, e + 16)).toLowerCase();
      const offset = u64le(dv, e + 16);
      const length = dv.getUint32(e + 24, true);
      const required = (dv.getUint32(e + 28, true) & 1) === 1;
      const known = guid === GUID.bat.toLowerCase() || guid === GUID.metadata.toLowerCase();
      if (!known) {
        if (required) return `!region ${guid} is marked required but is unknown to this reader`;
        continue;
      }
      if (out.has(guid)) return `region ${guid} appears twice`;
      if (!Number.isSafeInteger(offset) || offset % MiB !== 0 || offset < MiB || length === 0) {
        return `region ${guid} has a bad offset ${offset} or length ${length}`;
      }
      if (offset + length > this.src.size) {
        return `region ${guid} (${length} bytes at ${offset}) lies past the end of the file (${this.src.size})`;
      }
      out.set(guid, { offset, length });
    }
    return out;
  }

  private async parseMetadata(region: Region, ctx: OpenContext): Promise<void> {
    const S = 'vhdx metadata table';
    if (region.length < METADATA_TABLE_SIZE)
      throw this.err('CORRUPT', `metadata region of ${region.length} bytes is too small`, S, region.offset);
    const t = await readExact(this.src, region.offset, METADATA_TABLE_SIZE, S);
    if (!sig(t, 0, 'metadata')) throw this.err('CORRUPT', 'no "metadata" signature', S, region.offset);
    const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
    const count = dv.getUint16(10, true);
    if (count > 2047) throw this.err('CORRUPT', `${count} entries (at most 2047)`, S, region.offset);
    const items = new Map<string, { offset: number; length: number; data: Uint8Array }>();
    for (let i = 0; i < count; i++) {
      const e = 32 + i * 32;
      const id = guidString(t.subarray(e, e + 16)).toLowerCase();
      const offset = dv.getUint32(e + 16, true);
      const length = dv.getUint32(e + 20, true);
      const flags = dv.getUint32(e + 24, true);
      const where = region.offset + e;
      const known = Object.values(GUID).some((g) => g.toLowerCase() === id);
      if (!known) {
        if (flags & 4)
          throw this.err('UNSUPPORTED', `metadata item ${id} is required but unknown to this reader`, S, where);
        continue;
      }
      if (items.has(id)) throw this.err('CORRUPT', `metadata item ${id} appears twice`, S, where);
      if (length === 0) continue;
      if (offset < METADATA_TABLE_SIZE || offset + length > region.length || length > 1 * MiB) {
        throw this.err(
          'CORRUPT',
          `metadata item ${id} (${length} bytes at ${offset}) lies outside the metadata region`,
          S,
          where,
        );
      }
      const data = await readExact(this.src, region.offset + offset, length, `vhdx metadata item ${id}`);
      items.set(id, { offset: region.offset + offset, length, data });
    }
    const need = (g: string, min: number, what: string) => {
      const it = items.get(g.toLowerCase());
      if (!it) throw this.err('CORRUPT', `required metadata item "${what}" is missing`, S, region.offset);
      if (it.length < min)
        throw this.err(
          'CORRUPT',
          `metadata item "${what}" is ${it.length} bytes, expected ${min}`,
          `vhdx ${what}`,
          it.offset,
        );
      return { dv: new DataView(it.data.buffer, it.data.byteOffset, it.data.byteLength), at: it.offset, data: it.data };
    };
    const fp = need(GUID.fileParameters, 8, 'file parameters');
    this.blockSize = fp.dv.getUint32(0, true);
    const fpFlags = fp.dv.getUint32(4, true);
    this.leaveAllocated = (fpFlags & 1) === 1;
    this.hasParent = (fpFlags & 2) === 2;
    const bs = this.blockSize;
    if (bs < MiB || bs > 256 * MiB || (bs & (bs - 1)) !== 0) {
      throw this.err(
        'CORRUPT',
        `block size ${bs} is not a power of two between 1 MiB and 256 MiB`,
        'vhdx file parameters',
        fp.at,
      );
    }
    const vs = need(GUID.virtualDiskSize, 8, 'virtual disk size');
    const size = u64le(vs.dv, 0);
    const ls = need(GUID.logicalSectorSize, 4, 'logical sector size');
    this.logicalSector = ls.dv.getUint32(0, true);
    if (this.logicalSector !== 512 && this.logicalSector !== 4096) {
      throw this.err(
        'CORRUPT',
        `logical sector size ${this.logicalSector} is not 512 or 4096`,
        'vhdx logical sector size',
        ls.at,
      );
    }
    const ps = need(GUID.physicalSectorSize, 4, 'physical sector size');
    this.physicalSector = ps.dv.getUint32(0, true);
    if (this.physicalSector !== 512 && this.physicalSector !== 4096) {
      throw this.err(
        'CORRUPT',
        `physical sector size ${this.physicalSector} is not 512 or 4096`,
        'vhdx physical sector size',
        ps.at,
      );
    }
    if (!Number.isSafeInteger(size) || size > LIMITS.maxVirtualSize) {
      throw this.err(
        'LIMIT',
        `virtual disk size ${size} exceeds the ${LIMITS.maxVirtualSize}-byte limit`,
        'vhdx virtual disk size',
        vs.at,
      );
    }
    if (size % this.logicalSector !== 0) {
      throw this.err(
        'CORRUPT',
        `virtual disk size ${size} is not a multiple of the logical sector size`,
        'vhdx virtual disk size',
        vs.at,
      );
    }
    this.size = size;
    const p83 = items.get(GUID.page83.toLowerCase());
    if (p83 && p83.length >= 16) this.page83 = guidString(p83.data.subarray(0, 16));
    if (this.hasParent) {
      const pl = need(GUID.parentLocator, 20, 'parent locator');
      this.parseParentLocator(pl.data, pl.at);
    } else if (items.has(GUID.parentLocator.toLowerCase())) {
      ctx.warn('a parent locator is present but the file parameters do not say the disk has a parent; ignored');
    }
  }

  private parseParentLocator(b: Uint8Array, at: number): void {
    const S = 'vhdx parent locator';
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const type = guidString(b.subarray(0, 16)).toLowerCase();
    if (type !== GUID.vhdxParentLocatorType.toLowerCase()) {
      throw this.err('UNSUPPORTED', `parent locator type ${type} is not the VHDX locator type`, S, at);
    }
    const count = dv.getUint16(18, true);
    if (20 + count * 12 > b.length)
      throw this.err('CORRUPT', `${count} key/value entries do not fit in ${b.length} bytes`, S, at);
    const str = (off: number, len: number, what: string) => {
      if (off + len > b.length || len % 2 !== 0) {
        throw this.err('CORRUPT', `${what} (${len} bytes at ${off}) lies outside the locator`, S, at);
      }
      return Buffer.from(b.subarray(off, off + len)).toString('utf16le');
    };
    for (let i = 0; i < count; i++) {
      const e = 20 + i * 12;
      const key = str(dv.getUint32(e, true), dv.getUint16(e + 8, true), `key ${i}`);
      const value = str(dv.getUint32(e + 4, true), dv.getUint16(e + 10, true), `value ${i}`);
      if (Object.hasOwn(this.parentEntries, key)) throw this.err('CORRUPT', `key "${key}" appears twice`, S, at);
      this.parentEntries[key] = value;
    }
    if (!this.parentEntries.parent_linkage) throw this.err('CORRUPT', 'no parent_linkage entry', S, at);
  }

  private async openParent(ctx: OpenContext): Promise<void> {
    const e = this.parentEntries;
    const paths: string[] = [];
    for (const k of ['relative_path', 'volume_path', 'absolute_win32_path']) {
      const v = e[k];
      if (!v) continue;
      let p = v.replace(/\\/g, '/');
      if (p.startsWith('./')) p = p.slice(2);
      if (k === 'volume_path') continue; // \\?\Volume{GUID}\... names a Windows volume, never a local path here
      if (p.length > 0) paths.push(p);
    }
    if (paths.length === 0) {
      throw this.err(
        'CORRUPT',
        'parent locator has no relative_path or absolute_win32_path',
        'vhdx parent locator',
        this.batOffset,
      );
    }
    this.backingRef = { path: paths[0], format: 'vhdx' };
    if (ctx.options.noBacking) return;
    let denied: unknown;
    let notFound: unknown;
    for (const p of paths) {
      try {
        this.backing = await ctx.openBacking({ path: p, format: 'vhdx' });
        this.backingRef = { path: p, format: 'vhdx' };
        break;
      } catch (err) {
        if (err instanceof StrataError && err.code === 'NOT_FOUND') notFound ??= err;
        else if (err instanceof StrataError && err.code === 'DENIED') denied ??= err;
        else throw err;
      }
    }
    if (!this.backing) throw denied ?? notFound;
    const link = e.parent_linkage.replace(/[{}]/g, '').toLowerCase();
    const alt = e.parent_linkage2?.replace(/[{}]/g, '').toLowerCase();
    const parentGuid = (this.backing as Partial<VhdxImage>).header?.dataWriteGuid?.toLowerCase();
    if (parentGuid !== undefined && parentGuid !== link && parentGuid !== alt) {
      ctx.warn(`parent_linkage ${link} does not match the DataWriteGuid of ${this.backing.name} (${parentGuid})`);
    }
  }

  /** State and host offset of BAT entry `idx` (offset checked for the states that have data). */
  private entry(idx: number, what: string): { state: number; host: number } {
    if (idx >= this.batCount) throw this.err('CORRUPT', `BAT index ${idx} past the table`, 'vhdx BAT', this.batOffset);
    const lo = this.bat.getUint32(idx * 8, true);
    const hi = this.bat.getUint32(idx * 8 + 4, true);
    const state = lo & 7;
    const mb = hi * 4096 + (lo >>> 20);
    const host = mb * MiB;
    if (state === PAYLOAD_BLOCK_FULLY_PRESENT || state === PAYLOAD_BLOCK_PARTIALLY_PRESENT) {
      if (mb === 0 || host >= this.src.size) {
        throw this.err(
          'CORRUPT',
          `${what}: BAT entry ${idx} points at ${host}, outside the file (${this.src.size})`,
          'vhdx BAT',
          this.batOffset + idx * 8,
        );
      }
    }
    return { state, host };
  }

  private async sectorBitmap(blk: number): Promise<Uint8Array> {
    const hit = this.bitmaps.get(blk);
    if (hit) return hit;
    const k = Math.floor(blk / this.ratio);
    const idx = bitmapEntry(k, this.ratio);
    const lo = this.bat.getUint32(idx * 8, true);
    const hi = this.bat.getUint32(idx * 8 + 4, true);
    const where = this.batOffset + idx * 8;
    if ((lo & 7) !== SB_BLOCK_PRESENT) {
      throw this.err(
        'CORRUPT',
        `payload block ${blk} is partially present but its sector bitmap block ${k} is not present`,
        'vhdx BAT',
        where,
      );
    }
    const host = (hi * 4096 + (lo >>> 20)) * MiB;
    const spb = this.blockSize / this.logicalSector; // sectors per payload block
    const at = host + (blk % this.ratio) * (spb / 8);
    if (host === 0 || at + spb / 8 > this.src.size) {
      throw this.err('CORRUPT', `sector bitmap block ${k} at ${host} lies outside the file`, 'vhdx BAT', where);
    }
    const b = new Uint8Array(await readExact(this.src, at, spb / 8, `vhdx sector bitmap block ${k}`));
    this.bitmaps.set(blk, b);
    return b;
  }

  private badState(state: number, idx: number): StrataError {
    return this.err(
      'CORRUPT',
      `BAT entry ${idx} has invalid payload block state ${state}`,
      'vhdx BAT',
      this.batOffset + idx * 8,
    );
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    const plan = await this.plan(offset, n);
    return plan.exec(this.src, this.backing, n);
  }

  /** Read into a caller's (reused, not zeroed) buffer, host runs straight from the file; returns the byte count. */
  async readInto(offset: number, buf: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, buf.length);
    if (n === 0) return 0;
    const plan = await this.plan(offset, n);
    await plan.into(this.src, this.backing, buf.subarray(0, n));
    return n;
  }

  async direct(offset: number, length: number): Promise<DirectPiece[]> {
    const n = clampRead(this, offset, length);
    return (await this.plan(offset, n)).direct(this.src, this.backing, offset);
  }

  /** Where each piece of [offset, offset+n) comes from: the file, the parent, or zeros. */
  private async plan(offset: number, n: number): Promise<ReadPlan> {
    const plan = new ReadPlan();
    await this.walk(offset, n, (kind, v, pos, len, host, structure) => {
      if (kind === 'data') plan.file(host, pos, len, structure);
      else if (kind === 'unallocated') plan.below(v, pos, len);
      else plan.zero(pos, len);
    });
    return plan;
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    await this.walk(offset, clampStatus(this, offset, length), (kind, v, _pos, len) => pushExtent(out, v, len, kind));
    return out;
  }

  /**
   * Walk [offset, offset+n) of the virtual disk through the BAT (and the sector bitmaps of
   * partially present blocks), calling `visit` for each run in order: `pos` is the run's
   * offset from `offset`, `host` its file offset when it is data.
   */
  private async walk(
    offset: number,
    n: number,
    visit: (kind: ExtentKind, v: number, pos: number, len: number, host: number, structure: string) => void,
  ): Promise<void> {
    const bs = this.blockSize;
    let pos = 0;
    while (pos < n) {
      const v = offset + pos;
      const blk = Math.floor(v / bs);
      const inBlk = v - blk * bs;
      const len = Math.min(n - pos, bs - inBlk);
      const idx = payloadEntry(blk, this.ratio);
      const structure = `vhdx payload block ${blk}`;
      const { state, host } = this.entry(idx, structure);
      switch (state) {
        case PAYLOAD_BLOCK_FULLY_PRESENT:
          visit('data', v, pos, len, host + inBlk, structure);
          break;
        case PAYLOAD_BLOCK_NOT_PRESENT:
          visit('unallocated', v, pos, len, 0, structure);
          break;
        case PAYLOAD_BLOCK_ZERO:
        case PAYLOAD_BLOCK_UNMAPPED:
        case PAYLOAD_BLOCK_UNDEFINED:
          visit('zero', v, pos, len, 0, structure);
          break;
        case PAYLOAD_BLOCK_PARTIALLY_PRESENT: {
          if (!this.hasParent)
            throw this.err(
              'CORRUPT',
              `payload block ${blk} is partially present in a disk without a parent`,
              'vhdx BAT',
              this.batOffset + idx * 8,
            );
          const bm = await this.sectorBitmap(blk);
          const ls = this.logicalSector;
          const s0 = Math.floor(inBlk / ls);
          const s1 = Math.ceil((inBlk + len) / ls);
          const blockStart = blk * bs;
          bitmapRuns(bm, s0, s1 - s0, false, (start, count, set) => {
            const a = Math.max(v, blockStart + start * ls);
            const b = Math.min(v + len, blockStart + (start + count) * ls);
            if (b <= a) return;
            visit(set ? 'data' : 'unallocated', a, pos + (a - v), b - a, host + (a - blockStart), structure);
          });
          break;
        }
        default:
          throw this.badState(state, idx);
      }
      pos += len;
    }
  }

  details(): Record<string, unknown> {
    const h = this.header;
    const d: Record<string, unknown> = {
      creator: this.creator,
      blockSize: this.blockSize,
      logicalSectorSize: this.logicalSector,
      physicalSectorSize: this.physicalSector,
      leaveBlocksAllocated: this.leaveAllocated,
      hasParent: this.hasParent,
      page83Data: this.page83,
      currentHeader: h.slot,
      sequenceNumber: h.sequenceNumber.toString(),
      dataWriteGuid: h.dataWriteGuid,
      fileWriteGuid: h.fileWriteGuid,
      log: {
        state: this.logState,
        guid: h.logGuid,
        offset: h.logOffset,
        length: h.logLength,
      },
      chunkRatio: this.ratio,
      batEntries: this.batCount,
    };
    if (this.hasParent) d.parentLocator = { ...this.parentEntries };
    return d;
  }

  async close(): Promise<void> {
    await this.src.close?.();
  }
}

export const vhdxDriver: FormatDriver = {
  name: 'vhdx',
  probe: isVhdx,
  open: (ctx) => VhdxImage.open(ctx),
};
