import { type ByteSource, clampRead, type Extent, readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import { closeChain, readBelow } from '../layer.js';
import { isVmdk } from '../probe.js';
import { clampStatus } from '../read-plan.js';
import type { BackingRef, DiskImage, FormatDriver, OpenContext } from '../types.js';
import { type Descriptor, type ExtentLine, field, MAX_DESCRIPTOR_BYTES, parseDescriptor } from './descriptor.js';
import { FlatExtent, type VmdkExtent, ZeroExtent } from './extents.js';
import { COWD_MAGIC, GT_CACHE_BYTES, SPARSE_MAGIC, SparseExtent } from './sparse.js';

export { type Descriptor, parseDescriptor } from './descriptor.js';
export { parseSparseHeader, type SparseHeader } from './sparse.js';

/**
 * VMware VMDK: either a hosted sparse extent (KDMV header, with its descriptor embedded:
 * monolithicSparse, streamOptimized) or a text descriptor naming extent files (monolithicFlat,
 * twoGbMaxExtentSparse/Flat, vmfs ...). A descriptor with parentFileNameHint is a
 * differencing disk: grains it never wrote come from the parent.
 */

interface ExtentInfo {
  type: string;
  access: string;
  file?: string;
  sectors: number;
  offset?: number;
}

export class VmdkImage implements DiskImage {
  readonly format = 'vmdk';
  readonly name: string;
  readonly size: number;
  private readonly starts: number[];

  constructor(
    private readonly opts: {
      name: string;
      subformat: string;
      extents: VmdkExtent[];
      sources: ByteSource[];
      fileSize: number;
      clusterSize?: number;
      backingRef?: BackingRef;
      backing?: DiskImage;
      warnings: string[];
      facts: Record<string, unknown>;
      cid?: string;
    },
  ) {
    this.name = opts.name;
    const last = opts.extents[opts.extents.length - 1];
    this.size = last ? last.start + last.bytes : 0;
    this.starts = opts.extents.map((e) => e.start);
  }

  get subformat(): string {
    return this.opts.subformat;
  }
  get fileSize(): number {
    return this.opts.fileSize;
  }
  get clusterSize(): number | undefined {
    return this.opts.clusterSize;
  }
  get backingRef(): BackingRef | undefined {
    return this.opts.backingRef;
  }
  get backing(): DiskImage | undefined {
    return this.opts.backing;
  }
  get warnings(): string[] {
    return this.opts.warnings;
  }
  get cid(): string | undefined {
    return this.opts.cid;
  }

  /** Index of the extent holding virtual byte `v` (binary search). */
  private find(v: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid] <= v) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Visit the extents overlapping [offset, offset+n) with extent-relative ranges. */
  private async each(
    offset: number,
    n: number,
    fn: (e: VmdkExtent, off: number, len: number, pos: number) => Promise<void>,
  ): Promise<void> {
    let pos = 0;
    let i = this.find(offset);
    while (pos < n && i < this.opts.extents.length) {
      const e = this.opts.extents[i];
      const off = offset + pos - e.start;
      const len = Math.min(e.bytes - off, n - pos);
      if (len > 0) await fn(e, off, len, pos);
      pos += Math.max(0, len);
      i++;
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    if (n === 0) return new Uint8Array(0);
    const i = this.find(offset);
    const e = this.opts.extents[i];
    if (e.readDirect && offset + n <= e.start + e.bytes) {
      const direct = await e.readDirect(offset - e.start, n);
      if (direct) return direct;
    }
    // A fresh buffer is zeros already (and its untouched pages cost nothing): extents skip
    // zero ranges, and unallocated ranges need work only when there is a backing image.
    const out = new Uint8Array(n);
    const backing = this.opts.backing;
    const below = backing
      ? (virt: number, len: number, at: number) => readBelow(backing, virt, len, out, at)
      : async () => {};
    await this.each(offset, n, (e, off, len, pos) => e.read(off, len, out, pos, below));
    return out;
  }

  /**
   * Read into a caller's (reused, not zeroed) buffer: bulk readers such as convert avoid
   * faulting in fresh memory on every read. Returns the byte count (short only at the end).
   */
  async readInto(offset: number, buf: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, buf.length);
    if (n === 0) return 0;
    const out = buf.subarray(0, n);
    const backing = this.opts.backing;
    // `out` is dirty: unallocated ranges are zeroed here, zero grains/extents by the extents.
    const below = (virt: number, len: number, at: number) => readBelow(backing, virt, len, out, at);
    await this.each(offset, n, (e, off, len, pos) => e.read(off, len, out, pos, below, true));
    return n;
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    const out: Extent[] = [];
    await this.each(offset, n, (e, off, len) => e.status(off, len, out));
    return out;
  }

  details(): Record<string, unknown> {
    return { ...this.opts.facts };
  }

  async close(): Promise<void> {
    for (const e of this.opts.extents) await e.close();
    for (const s of this.opts.sources) await s.close?.();
  }
}

/** Extent types we read as a window of a host file. */
const FLAT_TYPES = new Set(['FLAT', 'VMFS', 'VMFSRAW', 'VMFSRDM']);
const SPARSE_TYPES = new Set(['SPARSE', 'VMFSSPARSE']);

async function openVmdk(ctx: OpenContext): Promise<DiskImage> {
  const src = ctx.source;
  const file = ctx.location;
  if (src.size === 0) {
    throw new StrataError('CORRUPT', 'empty file: no vmdk header', { file, structure: 'vmdk header', offset: 0 });
  }
  const head = await src.read(0, Math.min(512, src.size));
  const magic = head.length >= 4 ? new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) : 0;
  const sources: ByteSource[] = [src];
  const extents: VmdkExtent[] = [];
  const infos: ExtentInfo[] = [];
  const warnings = ctx.warnings;
  let desc: Descriptor | undefined;
  let fileSize = src.size;
  let backing: DiskImage | undefined;
  try {
    if (magic === SPARSE_MAGIC || magic === COWD_MAGIC) {
      // A hosted sparse extent that is the whole disk; its descriptor (if any) is embedded.
      const ext = await SparseExtent.open(src, 0, undefined, file);
      extents.push(ext);
      const h = ext.header;
      if (h.descriptorOffset > 0 && h.descriptorSize > 0) {
        const at = h.descriptorOffset * 512;
        const len = h.descriptorSize * 512;
        if (len > MAX_DESCRIPTOR_BYTES) {
          throw new StrataError('LIMIT', `embedded descriptor of ${len} bytes is too large`, {
            file,
            structure: 'vmdk embedded descriptor',
            offset: at,
          });
        }
        if (at + len > src.size) {
          throw new StrataError('CORRUPT', `embedded descriptor at ${at} runs past the end of the file`, {
            file,
            structure: 'vmdk embedded descriptor',
            offset: at,
          });
        }
        desc = parseDescriptor(await readExact(src, at, len, 'vmdk embedded descriptor'), file, at);
        if (desc.extents.length > 0 && desc.extents[0].sectors !== h.capacity) {
          ctx.warn(`embedded descriptor says ${desc.extents[0].sectors} sectors, header says ${h.capacity}`);
        }
      }
      infos.push({ type: 'SPARSE', access: desc?.extents[0]?.access ?? 'RW', file, sectors: h.capacity });
    } else {
      if (src.size > MAX_DESCRIPTOR_BYTES) {
        throw new StrataError(
          'CORRUPT',
          `neither a sparse extent (no KDMV magic) nor a text descriptor (${src.size} bytes is too large for one)`,
          { file, structure: 'vmdk descriptor', offset: 0 },
        );
      }
      desc = parseDescriptor(await readExact(src, 0, src.size, 'vmdk descriptor'), file, 0);
      if (desc.extents.length === 0) {
        throw new StrataError('CORRUPT', 'descriptor lists no extents', { file, structure: 'vmdk descriptor' });
      }
      const opened = new Map<string, ByteSource>();
      // The grain directories of all extents together stay within one table budget.
      const budget = {
        tableBytes: LIMITS.maxTableBytes,
        gtCacheBytes: Math.floor(GT_CACHE_BYTES / desc.extents.length),
      };
      let start = 0;
      for (const line of desc.extents) {
        const bytes = line.sectors * 512;
        infos.push({
          type: line.type,
          access: line.access,
          file: line.file,
          sectors: line.sectors,
          offset: line.offset || undefined,
        });
        extents.push(await openExtent(ctx, line, start, bytes, opened, sources, budget));
        start += bytes;
      }
      for (const s of opened.values()) fileSize += s.size;
    }
    const createType = (desc && field(desc, 'createType')) ?? (magic === SPARSE_MAGIC ? 'monolithicSparse' : 'custom');
    if (/^(seSparse|vsanSparse)$/i.test(createType)) {
      throw new StrataError('UNSUPPORTED', `createType ${createType}`, { file, structure: 'vmdk descriptor' });
    }
    const cid = desc && field(desc, 'CID');
    const parentCid = desc && field(desc, 'parentCID');
    const hint = desc && field(desc, 'parentFileNameHint');
    let backingRef: BackingRef | undefined;
    if (hint && hint.length > 0 && (parentCid === undefined || parentCid.toLowerCase() !== 'ffffffff')) {
      backingRef = { path: hint, format: 'vmdk' };
      if (!ctx.options.noBacking) {
        backing = await ctx.openBacking(backingRef);
        const pc = backing instanceof VmdkImage ? backing.cid : undefined;
        if (pc && parentCid && pc.toLowerCase() !== parentCid.toLowerCase()) {
          ctx.warn(
            `parentCID ${parentCid} does not match the parent's CID ${pc}: the parent changed since this child was made`,
          );
        }
      }
    }
    const sparse = extents.filter((e): e is SparseExtent => e instanceof SparseExtent);
    for (const s of sparse) warnings.push(...s.warnings);
    const first = sparse[0];
    const facts: Record<string, unknown> = {
      createType,
      extents: infos,
      cid,
      parentCid,
      parentFileNameHint: hint,
      compression: sparse.some((s) => s.compressed) ? 'deflate' : 'none',
    };
    if (first) {
      facts.version = first.header.version;
      facts.grainSize = first.grainBytes;
      facts.zeroedGrain = first.zeroedGrain;
      facts.markers = first.markers;
    }
    const img = new VmdkImage({
      name: src.name,
      subformat: createType,
      extents,
      sources,
      fileSize,
      clusterSize: first?.grainBytes,
      backingRef,
      backing,
      warnings,
      facts,
      cid,
    });
    if (img.size > LIMITS.maxVirtualSize) {
      throw new StrataError('LIMIT', `disk of ${img.size} bytes exceeds the limit`, {
        file,
        structure: 'vmdk descriptor',
      });
    }
    return img;
  } catch (e) {
    if (backing) await closeChain(backing).catch(() => {});
    for (const s of sources) if (s !== src) await s.close?.().catch(() => {});
    throw e;
  }
}

async function openExtent(
  ctx: OpenContext,
  line: ExtentLine,
  start: number,
  bytes: number,
  opened: Map<string, ByteSource>,
  sources: ByteSource[],
  budget: { tableBytes: number; gtCacheBytes: number },
): Promise<VmdkExtent> {
  const file = ctx.location;
  const where = { file, structure: `vmdk descriptor extent line ${line.line}` };
  if (line.type === 'ZERO') return new ZeroExtent(start, bytes);
  if (!FLAT_TYPES.has(line.type) && !SPARSE_TYPES.has(line.type)) {
    throw new StrataError('UNSUPPORTED', `extent type ${line.type}`, where);
  }
  if (line.access === 'NOACCESS') {
    throw new StrataError('UNSUPPORTED', 'extent marked NOACCESS', where);
  }
  if (line.file === undefined || line.file === '') {
    throw new StrataError('CORRUPT', `${line.type} extent without a file name`, where);
  }
  let s = opened.get(line.file);
  if (!s) {
    try {
      s = await ctx.openCompanion(line.file, 'vmdk extent file');
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      // Say which descriptor line named the file (a bare "cannot open" loses that).
      throw new StrataError(e.code, `${line.type} extent "${line.file}": ${e.message}`, where, { cause: e });
    }
    opened.set(line.file, s);
    sources.push(s);
  }
  if (FLAT_TYPES.has(line.type)) return new FlatExtent(s, start, bytes, line.offset * 512);
  if (line.offset !== 0) throw new StrataError('UNSUPPORTED', 'sparse extent with a file offset', where);
  return SparseExtent.open(s, start, line.sectors, line.file, budget, budget.gtCacheBytes);
}

export const vmdkDriver: FormatDriver = {
  name: 'vmdk',
  probe: isVmdk,
  open: openVmdk,
};
