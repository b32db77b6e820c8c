import { type ByteSource, clampRead, type Extent, pushExtent, readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import { pushHostStatus } from '../layer.js';
import { hasMagic, isVhd, VHD_COOKIE, VHD_FOOTER } from '../probe.js';
import { BitmapCache, bitmapRuns, clampStatus, ReadPlan } from '../read-plan.js';
import type { BackingRef, DirectPiece, DiskImage, FormatDriver, OpenContext } from '../types.js';

/*
 * VHD (Microsoft Virtual Hard Disk, qemu's "vpc"): a 512-byte big-endian footer at the
 * end of the file (and, for dynamic/differencing disks, a copy at offset 0), a dynamic
 * disk header, a Block Allocation Table of 32-bit sector offsets, and blocks that start
 * with a sector bitmap followed by the block's data.
 */

const SECTOR = 512;
const FOOTER = VHD_FOOTER;
const COOKIE = VHD_COOKIE;
const DYN_HEADER = 1024;
const UNUSED = 0xffffffff;

export const VHD_FIXED = 2;
export const VHD_DYNAMIC = 3;
export const VHD_DIFFERENCING = 4;

const SPARSE = [0x63, 0x78, 0x73, 0x70, 0x61, 0x72, 0x73, 0x65]; // "cxsparse"

/** VHD checksum: ones' complement of the byte sum, skipping the 4-byte checksum field. */
export function vhdChecksum(b: Uint8Array, checksumAt: number): number {
  let sum = 0;
  for (let i = 0; i < b.length; i++) if (i < checksumAt || i >= checksumAt + 4) sum += b[i];
  return ~sum >>> 0;
}

export interface VhdFooter {
  features: number;
  version: number;
  dataOffset: number; // -1 for fixed (0xFFFFFFFFFFFFFFFF)
  timestamp: number;
  creatorApp: string;
  creatorVersion: number;
  creatorOs: string;
  originalSize: number;
  currentSize: number;
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
  diskType: number;
  uniqueId: string;
  savedState: number;
}

const ascii = (b: Uint8Array) => String.fromCharCode(...b).replace(/\0+$/, '');

export function uuidString(b: Uint8Array): string {
  const h = Buffer.from(b).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

function u64be(dv: DataView, at: number): number {
  const hi = dv.getUint32(at);
  const lo = dv.getUint32(at + 4);
  if (hi === 0xffffffff && lo === 0xffffffff) return -1;
  // Anything past 2^53 is nonsense for an offset or size: report it as such.
  if (hi >= 0x200000) return Number.POSITIVE_INFINITY;
  return hi * 2 ** 32 + lo;
}

export function parseFooter(b: Uint8Array): VhdFooter {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    features: dv.getUint32(8),
    version: dv.getUint32(12),
    dataOffset: u64be(dv, 16),
    timestamp: dv.getUint32(24),
    creatorApp: ascii(b.subarray(28, 32)),
    creatorVersion: dv.getUint32(32),
    creatorOs: ascii(b.subarray(36, 40)),
    originalSize: u64be(dv, 40),
    currentSize: u64be(dv, 48),
    cylinders: dv.getUint16(56),
    heads: b[58],
    sectorsPerTrack: b[59],
    diskType: dv.getUint32(60),
    uniqueId: uuidString(b.subarray(68, 84)),
    savedState: b[84],
  };
}

const footerOk = (b: Uint8Array) =>
  b.length === FOOTER &&
  hasMagic(b, 0, COOKIE) &&
  vhdChecksum(b, 64) === new DataView(b.buffer, b.byteOffset).getUint32(64);

interface ParentLocator {
  code: string;
  path: string;
}

/** Turn a parent locator's bytes into a local path we can hand to openBacking. */
function locatorPath(code: string, data: Uint8Array): string | undefined {
  if (code === 'W2ru' || code === 'W2ku' || code === 'Wi2r' || code === 'Wi2k') {
    const s = code.startsWith('W2') ? Buffer.from(data).toString('utf16le') : Buffer.from(data).toString('latin1');
    let p = s.replace(/\0+$/, '').replace(/\\/g, '/');
    if (p.startsWith('./')) p = p.slice(2);
    return p.length > 0 ? p : undefined;
  }
  if (code === 'MacX' || code === 'Mac ') {
    let s = Buffer.from(data).toString('utf8').replace(/\0+$/, '');
    const m = /^file:\/\/(localhost)?(\/.*)$/i.exec(s);
    if (m) {
      try {
        s = decodeURIComponent(m[2]);
      } catch {
        return undefined;
      }
    } else if (code === 'MacX') return undefined;
    return s.length > 0 ? s : undefined;
  }
  return undefined;
}

const LOCATOR_ORDER = ['W2ru', 'Wi2r', 'W2ku', 'Wi2k', 'MacX', 'Mac '];

export class VhdImage implements DiskImage {
  readonly format = 'vhd';
  readonly name: string;
  readonly size: number;
  readonly fileSize: number;
  readonly subformat: string;
  clusterSize?: number;
  readonly warnings: string[];
  backingRef?: BackingRef;
  backing?: DiskImage;
  /** Unique id from the footer (what a child's parent-unique-id must equal). */
  readonly uniqueId: string;

  private bat?: DataView;
  private blockSize = 0;
  private bitmapBytes = 0;
  private readonly bitmaps = new BitmapCache();
  private parentName = '';
  private parentUuid = '';
  private locators: ParentLocator[] = [];

  private constructor(
    private readonly src: ByteSource,
    readonly footer: VhdFooter,
    warnings: string[],
  ) {
    this.name = src.name;
    this.fileSize = src.size;
    this.warnings = warnings;
    this.uniqueId = footer.uniqueId;
    this.size = footer.currentSize;
    this.subformat =
      footer.diskType === VHD_FIXED ? 'fixed' : footer.diskType === VHD_DYNAMIC ? 'dynamic' : 'differencing';
  }

  static async open(ctx: OpenContext): Promise<VhdImage> {
    const src = ctx.source;
    const file = src.name;
    if (src.size < FOOTER) {
      throw new StrataError('TRUNCATED', `file of ${src.size} bytes is too small for a VHD footer`, {
        file,
        structure: 'vhd footer',
        offset: 0,
      });
    }
    const tailAt = src.size - FOOTER;
    const tail = await readExact(src, tailAt, FOOTER, 'vhd footer');
    const head = src.size >= FOOTER * 2 ? await readExact(src, 0, FOOTER, 'vhd footer copy') : undefined;
    let footerBytes: Uint8Array;
    if (footerOk(tail)) {
      footerBytes = tail;
    } else if (head && footerOk(head) && parseFooter(head).diskType !== VHD_FIXED) {
      footerBytes = head;
      ctx.warn(
        hasMagic(tail, 0, COOKIE)
          ? `vhd footer at offset ${tailAt} has a bad checksum; using the copy at offset 0`
          : `no vhd footer at offset ${tailAt} (file truncated?); using the copy at offset 0`,
      );
    } else {
      const why = hasMagic(tail, 0, COOKIE)
        ? 'checksum mismatch'
        : head && hasMagic(head, 0, COOKIE)
          ? 'footer copy at offset 0 has a bad checksum and none is at the end'
          : 'no "conectix" cookie';
      throw new StrataError('CORRUPT', `bad vhd footer: ${why}`, { file, structure: 'vhd footer', offset: tailAt });
    }
    const footer = parseFooter(footerBytes);
    const where = { file, structure: 'vhd footer', offset: footerBytes === tail ? tailAt : 0 };
    if (footer.diskType !== VHD_FIXED && footer.diskType !== VHD_DYNAMIC && footer.diskType !== VHD_DIFFERENCING) {
      throw new StrataError(
        'UNSUPPORTED',
        `disk type ${footer.diskType} is not fixed (2), dynamic (3) or differencing (4)`,
        where,
      );
    }
    if (footer.currentSize < 0) {
      throw new StrataError('CORRUPT', `current size field is out of range`, where);
    }
    if (footer.currentSize > LIMITS.maxVirtualSize) {
      throw new StrataError(
        'LIMIT',
        `virtual size ${footer.currentSize} exceeds the ${LIMITS.maxVirtualSize}-byte limit`,
        where,
      );
    }
    const img = new VhdImage(src, footer, ctx.warnings);
    if (footer.diskType === VHD_FIXED) {
      if (footer.currentSize > tailAt) {
        throw new StrataError(
          'TRUNCATED',
          `fixed disk of ${footer.currentSize} bytes does not fit before the footer at ${tailAt}`,
          where,
        );
      }
      return img;
    }
    await img.openDynamic(ctx, where);
    return img;
  }

  private async openDynamic(ctx: OpenContext, footerWhere: { file: string; structure: string; offset: number }) {
    const src = this.src;
    const file = src.name;
    const hdrAt = this.footer.dataOffset;
    if (!Number.isSafeInteger(hdrAt) || hdrAt < 0 || hdrAt + DYN_HEADER > src.size) {
      throw new StrataError('CORRUPT', `dynamic disk header offset ${hdrAt} lies outside the file`, footerWhere);
    }
    const hw = { file, structure: 'vhd dynamic disk header', offset: hdrAt };
    const h = await readExact(src, hdrAt, DYN_HEADER, hw.structure);
    const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
    if (!hasMagic(h, 0, SPARSE)) throw new StrataError('CORRUPT', 'no "cxsparse" cookie', hw);
    if (vhdChecksum(h, 36) !== dv.getUint32(36)) throw new StrataError('CORRUPT', 'checksum mismatch', hw);
    const tableOffset = u64be(dv, 16);
    const maxEntries = dv.getUint32(28);
    const blockSize = dv.getUint32(32);
    if (blockSize < SECTOR || blockSize % SECTOR !== 0 || blockSize > 256 * 1024 * 1024) {
      throw new StrataError('CORRUPT', `block size ${blockSize} is not a multiple of 512 between 512 and 256 MiB`, hw);
    }
    const need = Math.ceil(this.size / blockSize);
    if (maxEntries < need) {
      throw new StrataError(
        'CORRUPT',
        `BAT has ${maxEntries} entries but the ${this.size}-byte disk needs ${need} blocks of ${blockSize}`,
        hw,
      );
    }
    const batBytes = need * 4;
    if (batBytes > LIMITS.maxTableBytes) {
      throw new StrataError('LIMIT', `BAT of ${batBytes} bytes exceeds the table limit`, hw);
    }
    if (!Number.isSafeInteger(tableOffset) || tableOffset < 0 || tableOffset + batBytes > src.size) {
      throw new StrataError('CORRUPT', `BAT (${batBytes} bytes at ${tableOffset}) lies outside the file`, {
        file,
        structure: 'vhd BAT',
        offset: tableOffset,
      });
    }
    const bat = batBytes > 0 ? await readExact(src, tableOffset, batBytes, 'vhd BAT') : new Uint8Array(0);
    this.bat = new DataView(bat.buffer, bat.byteOffset, bat.byteLength);
    this.blockSize = blockSize;
    this.clusterSize = blockSize;
    this.bitmapBytes = Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
    this.batOffset = tableOffset;

    this.parentUuid = uuidString(h.subarray(40, 56));
    this.parentName = Buffer.from(h.subarray(64, 576)).swap16().toString('utf16le').replace(/\0.*$/s, '');
    if (this.footer.diskType !== VHD_DIFFERENCING) return;

    for (let i = 0; i < 8; i++) {
      const e = 576 + i * 24;
      const codeNum = dv.getUint32(e);
      if (codeNum === 0) continue;
      const code = String.fromCharCode(h[e], h[e + 1], h[e + 2], h[e + 3]);
      const len = dv.getUint32(e + 8);
      const at = u64be(dv, e + 16);
      const lw = { file, structure: `vhd parent locator ${i} (${code})`, offset: hdrAt + e };
      if (len === 0) continue;
      if (len > 64 * 1024 || !Number.isSafeInteger(at) || at < 0 || at + len > src.size) {
        throw new StrataError('CORRUPT', `locator data (${len} bytes at ${at}) lies outside the file`, lw);
      }
      const p = locatorPath(code, await readExact(src, at, len, lw.structure));
      if (p) this.locators.push({ code, path: p });
    }
    this.locators.sort((a, b) => LOCATOR_ORDER.indexOf(a.code) - LOCATOR_ORDER.indexOf(b.code));
    if (this.locators.length === 0) {
      throw new StrataError('CORRUPT', 'differencing disk has no usable parent locator', hw);
    }
    this.backingRef = { path: this.locators[0].path, format: 'vhd' };
    if (ctx.options.noBacking) return;

    let denied: unknown;
    let notFound: unknown;
    for (const loc of this.locators) {
      try {
        this.backing = await ctx.openBacking({ path: loc.path, format: 'vhd' });
        this.backingRef = { path: loc.path, format: 'vhd' };
        break;
      } catch (e) {
        if (e instanceof StrataError && e.code === 'NOT_FOUND') notFound ??= e;
        else if (e instanceof StrataError && e.code === 'DENIED') denied ??= e;
        else throw e;
      }
    }
    if (!this.backing) throw denied ?? notFound;
    const parentId = (this.backing as Partial<VhdImage>).uniqueId;
    if (parentId !== undefined && parentId !== this.parentUuid) {
      ctx.warn(`parent unique id ${this.parentUuid} does not match ${this.backing.name} (${parentId})`);
    }
  }

  private batOffset = 0;

  /** Host offset of block `blk`'s bitmap, or -1 when the block is not allocated. */
  private blockAt(blk: number): number {
    const bat = this.bat as DataView;
    const e = bat.getUint32(blk * 4);
    if (e === UNUSED) return -1;
    const host = e * SECTOR;
    if (host + this.bitmapBytes > this.src.size) {
      throw new StrataError('CORRUPT', `BAT entry ${blk} points at sector ${e}, past the end of the file`, {
        file: this.name,
        structure: 'vhd BAT',
        offset: this.batOffset + blk * 4,
      });
    }
    return host;
  }

  private async bitmap(blk: number, host: number): Promise<Uint8Array> {
    const hit = this.bitmaps.get(blk);
    if (hit) return hit;
    const b = await readExact(this.src, host, this.bitmapBytes, `vhd sector bitmap of block ${blk}`);
    const copy = new Uint8Array(b);
    this.bitmaps.set(blk, copy);
    return copy;
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

  /** Where each piece of [offset, offset+n) comes from: the file or the layer below. */
  private async plan(offset: number, n: number): Promise<ReadPlan> {
    const plan = new ReadPlan();
    await this.walk(offset, n, (data, v, pos, len, host, structure) => {
      if (data) plan.file(host, pos, len, structure);
      else plan.below(v, pos, len);
    });
    return plan;
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const runs: Array<[boolean, number, number, number]> = [];
    await this.walk(offset, clampStatus(this, offset, length), (data, v, _pos, len, host) =>
      runs.push([data, v, len, host]),
    );
    const out: Extent[] = [];
    // A fixed disk is a raw file with a footer: its holes read as zeros and show as zero, as
    // qemu shows them. An allocated block of a dynamic disk stays data as a whole, as in qemu
    // (block/vpc.c does not look at the file's holes there).
    const fixed = this.footer.diskType === VHD_FIXED;
    for (const [data, v, len, host] of runs) {
      if (data && fixed) await pushHostStatus(out, this.src, host, len, v);
      else pushExtent(out, v, len, data ? 'data' : 'unallocated');
    }
    return out;
  }

  /**
   * Walk [offset, offset+n) of the virtual disk, calling `visit` for each run in order:
   * data in this file (at `host`) or not (served by the parent, or zeros). A fixed disk is
   * one run; like qemu (block/vpc.c), an allocated block of a dynamic disk is data as a
   * whole (its sector bitmap is not consulted; qemu writes it all ones anyway); in a
   * differencing disk the bitmap decides sector by sector.
   */
  private async walk(
    offset: number,
    n: number,
    visit: (data: boolean, v: number, pos: number, len: number, host: number, structure: string) => void,
  ): Promise<void> {
    if (this.footer.diskType === VHD_FIXED) {
      visit(true, offset, 0, n, offset, 'vhd fixed disk data');
      return;
    }
    const bs = this.blockSize;
    const diff = this.footer.diskType === VHD_DIFFERENCING;
    let pos = 0;
    while (pos < n) {
      const v = offset + pos;
      const blk = Math.floor(v / bs);
      const inBlk = v - blk * bs;
      const len = Math.min(n - pos, bs - inBlk);
      const host = this.blockAt(blk);
      const structure = `vhd data block ${blk}`;
      if (host < 0) visit(false, v, pos, len, 0, structure);
      else if (!diff) visit(true, v, pos, len, host + this.bitmapBytes + inBlk, structure);
      else {
        const bm = await this.bitmap(blk, host);
        const blockStart = blk * bs;
        const data = host + this.bitmapBytes;
        const s0 = Math.floor(inBlk / SECTOR);
        const s1 = Math.ceil((inBlk + len) / SECTOR);
        bitmapRuns(bm, s0, s1 - s0, true, (start, count, set) => {
          const a = Math.max(v, blockStart + start * SECTOR);
          const b = Math.min(v + len, blockStart + (start + count) * SECTOR);
          if (b > a) visit(set, a, pos + (a - v), b - a, data + (a - blockStart), structure);
        });
      }
      pos += len;
    }
  }

  details(): Record<string, unknown> {
    const f = this.footer;
    const d: Record<string, unknown> = {
      diskType: this.subformat,
      creatorApp: f.creatorApp,
      creatorVersion: `${f.creatorVersion >>> 16}.${f.creatorVersion & 0xffff}`,
      creatorHostOs: f.creatorOs,
      currentSize: f.currentSize,
      originalSize: f.originalSize,
      geometry: { cylinders: f.cylinders, heads: f.heads, sectorsPerTrack: f.sectorsPerTrack },
      // The virtual size is the footer's current size; Virtual PC (and qemu for images
      // from some creators) shows the CHS size instead, which may be a little smaller.
      geometrySize: f.cylinders * f.heads * f.sectorsPerTrack * SECTOR,
      uniqueId: f.uniqueId,
      savedState: f.savedState !== 0,
    };
    if (f.diskType !== VHD_FIXED) d.blockSize = this.blockSize;
    if (f.diskType === VHD_DIFFERENCING) {
      d.parentName = this.parentName;
      d.parentUniqueId = this.parentUuid;
      d.parentLocators = this.locators.map((l) => ({ platform: l.code, path: l.path }));
    }
    return d;
  }

  async close(): Promise<void> {
    await this.src.close?.();
  }
}

export const vhdDriver: FormatDriver = {
  name: 'vhd',
  probe: isVhd,
  open: (ctx) => VhdImage.open(ctx),
};
