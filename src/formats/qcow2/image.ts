import { promisify } from 'node:util';
import {
  type ByteSource,
  clampRead,
  clampStatus,
  type Extent,
  type ExtentKind,
  pushExtent,
  readExact,
} from '../../io/byte-source.js';
import { fileView } from '../../io/filter-source.js';
import { StrataError } from '../../util/errors.js';
import { lazyZlib } from '../../util/lazy-zlib.js';
import { PromiseLru } from '../../util/promise-lru.js';
import { zstdDecompress } from '../../util/zstd.js';
import { directBelow, pushDirect, pushHostStatus, readBelow } from '../layer.js';
import type { BackingRef, DirectPiece, DiskImage } from '../types.js';
import { featureList, type Qcow2Header } from './header.js';
import {
  COMPRESSED_FIELD_MASK_HI,
  compressedOffsetBits,
  EXTENDED_L2_ENTRY_SIZE,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  L2_ENTRY_SIZE,
  OFFSET_MASK_HI,
  OFFSET_MASK_LO,
  OFLAG_COMPRESSED,
  OFLAG_COPIED,
  OFLAG_ZERO,
  TWO32,
} from './layout.js';
import { scanZstdFrames } from './zstd-frames.js';

let inflateRaw: ((b: Uint8Array, o: object) => Promise<Buffer>) | undefined;

/** What one piece of the virtual disk maps to at this layer. */
const UNALLOC = 0;
const ZERO = 1;
const DATA = 2;
const COMPRESSED = 3;
type Kind = 0 | 1 | 2 | 3;
const KIND_NAME: readonly ExtentKind[] = ['unallocated', 'zero', 'data', 'data'];

/** One run of the virtual disk: `host` is the data offset (DATA) or compressed offset (COMPRESSED). */
interface Seg {
  off: number;
  len: number;
  kind: Kind;
  host: number;
  /** COMPRESSED only: compressed byte count and the guest offset where the cluster starts. */
  clen: number;
  cstart: number;
}

type Emit = (off: number, len: number, kind: Kind, host: number, clen: number, cstart: number) => void;

/** Parallel host reads per request. */
const READ_CONCURRENCY = 8;

export interface Qcow2Parts {
  src: ByteSource;
  header: Qcow2Header;
  l1: Float64Array;
  dataFile?: ByteSource;
  backing?: DiskImage;
  backingRef?: BackingRef;
  warnings: string[];
}

/** Read an L1 table into a Float64Array of L2 offsets (bits 9-55; reserved bits dropped). */
export async function loadL1(src: ByteSource, h: Qcow2Header): Promise<Float64Array> {
  const l1 = new Float64Array(h.l1Size);
  if (h.l1Size === 0) return l1;
  const b = await readExact(src, h.l1TableOffset, h.l1Size * L2_ENTRY_SIZE, 'qcow2 L1 table');
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < h.l1Size; i++) {
    const e = i * L2_ENTRY_SIZE;
    l1[i] = (dv.getUint32(e) & OFFSET_MASK_HI) * TWO32 + ((dv.getUint32(e + 4) & OFFSET_MASK_LO) >>> 0);
  }
  return l1;
}

export class Qcow2Image implements DiskImage {
  readonly format = 'qcow2';
  readonly subformat: string;
  readonly name: string;
  readonly size: number;
  readonly fileSize: number;
  readonly clusterSize: number;
  readonly backingRef?: BackingRef;
  readonly backing?: DiskImage;
  readonly warnings: string[];

  private readonly src: ByteSource;
  private readonly h: Qcow2Header;
  private readonly l1: Float64Array;
  private readonly data: ByteSource;
  private readonly dataFile?: ByteSource;
  private readonly entrySize: number;
  private readonly l2Entries: number;
  private readonly l2Coverage: number;
  private readonly subSize: number;
  private readonly l2Cache: PromiseLru<DataView>;
  private readonly zCache: PromiseLru<Uint8Array>;
  private closed = false;

  constructor(p: Qcow2Parts) {
    this.src = p.src;
    this.h = p.header;
    this.l1 = p.l1;
    this.name = p.src.name;
    this.size = p.header.size;
    this.clusterSize = p.header.clusterSize;
    this.subformat = `v${p.header.version}`;
    this.dataFile = p.dataFile;
    this.data = p.dataFile ?? p.src;
    this.fileSize = p.src.size + (p.dataFile?.size ?? 0);
    this.backing = p.backing;
    this.backingRef = p.backingRef;
    this.warnings = p.warnings;
    this.entrySize = p.header.extendedL2 ? EXTENDED_L2_ENTRY_SIZE : L2_ENTRY_SIZE;
    this.l2Entries = this.clusterSize / this.entrySize;
    this.l2Coverage = this.l2Entries * this.clusterSize;
    this.subSize = this.clusterSize / 32;
    // L2 tables: up to 32 MiB of them (at least 8 tables); decompressed clusters: up to 16 MiB.
    this.l2Cache = new PromiseLru(Math.max(32 << 20, 8 * this.clusterSize));
    this.zCache = new PromiseLru(Math.max(16 << 20, 4 * this.clusterSize));
    if (p.header.incompatible & INCOMPAT_DIRTY) {
      this.warnings.push(
        'qcow2 dirty bit set: the image was not closed cleanly (refcounts may be stale; reads are unaffected)',
      );
    }
    for (const t of p.header.unknownExtensions) {
      this.warnings.push(`unknown qcow2 header extension 0x${t.toString(16)} skipped`);
    }
    if (p.header.incompatible & INCOMPAT_CORRUPT) {
      this.warnings.push('qcow2 corrupt bit set: qemu found an inconsistency in this image; data may be wrong');
    }
  }

  details(): Record<string, unknown> {
    const h = this.h;
    const d: Record<string, unknown> = {
      version: h.version,
      clusterBits: h.clusterBits,
      clusterSize: h.clusterSize,
      compressionType: h.compressionType === 1 ? 'zstd' : 'zlib',
      features: featureList(h),
      extendedL2: h.extendedL2,
      refcountBits: 2 ** h.refcountOrder,
      l1Size: h.l1Size,
      snapshots: h.nbSnapshots,
      dirty: (h.incompatible & INCOMPAT_DIRTY) !== 0,
      corrupt: (h.incompatible & INCOMPAT_CORRUPT) !== 0,
    };
    if (h.dataFile !== undefined) {
      d.dataFile = h.dataFile;
      d.dataFileRaw = h.dataFileRaw;
    }
    if (h.backingFile !== undefined) d.backingFile = h.backingFile;
    if (h.backingFormat !== undefined) d.backingFormat = h.backingFormat;
    if (h.hasBitmaps) d.bitmaps = true;
    if (h.unknownExtensions.length > 0) d.unknownExtensions = h.unknownExtensions.map((t) => `0x${t.toString(16)}`);
    return d;
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    const out: Extent[] = [];
    // data clusters over holes of the data file (preallocation=metadata) read as zeros
    for (const s of await this.segments(offset, n)) {
      if (s.kind === DATA) await pushHostStatus(out, this.data, s.host, s.len, s.off);
      else pushExtent(out, s.off, s.len, KIND_NAME[s.kind]);
    }
    return out;
  }

  /** The runs of [offset, offset+n), neighbours of one kind (and contiguous host bytes) merged. */
  private async segments(offset: number, n: number): Promise<Seg[]> {
    const segs: Seg[] = [];
    await this.walk(offset, n, (off, len, kind, host, clen, cstart) => {
      const last = segs[segs.length - 1];
      if (
        last &&
        last.kind === kind &&
        kind !== COMPRESSED &&
        last.off + last.len === off &&
        (kind !== DATA || last.host + last.len === host)
      ) {
        last.len += len;
        return;
      }
      segs.push({ off, len, kind, host, clen, cstart });
    });
    return segs;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    if (n === 0) return new Uint8Array(0);
    const segs = await this.segments(offset, n);

    // One contiguous run (the common case for large reads of a converted image): hand back the
    // lower layer's buffer instead of allocating and copying a second one.
    if (segs.length === 1) {
      const s = segs[0];
      const direct =
        s.kind === DATA
          ? this.data.read(s.host, n)
          : s.kind === UNALLOC && this.backing
            ? this.backing.read(offset, n)
            : undefined;
      if (direct) {
        const b = await direct;
        if (b.length === n) return b;
        const out = new Uint8Array(n);
        out.set(b.subarray(0, n));
        return out;
      }
    }
    const out = new Uint8Array(n);
    const jobs: Array<() => Promise<void>> = [];
    const compressed: Seg[] = [];
    const data: Seg[] = [];
    for (const s of segs) {
      const at = s.off - offset;
      if (s.kind === DATA) data.push(s);
      else if (s.kind === UNALLOC) {
        if (this.backing) jobs.push(() => readBelow(this.backing, s.off, s.len, out, at));
      } else if (s.kind === COMPRESSED) compressed.push(s);
    }
    for (const g of groupByHost(data, (x) => x.host + x.len, DATA_GAP)) {
      jobs.push(() => this.readDataGroup(g, out, offset));
    }
    if (compressed.length > 0) jobs.push(() => this.readCompressedSegs(compressed, out, offset));
    await runLimited(jobs, READ_CONCURRENCY);
    return out;
  }

  /**
   * Read into a caller's (reused, not zeroed) buffer: data runs go straight from the file
   * into `buf`, zero runs are filled, unallocated runs come from the backing image (through
   * its own readInto when it has one). Returns the byte count (short only at the end).
   */
  async readInto(offset: number, buf: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, buf.length);
    if (n === 0) return 0;
    const out = buf.subarray(0, n);
    const segs = await this.segments(offset, n);
    const jobs: Array<() => Promise<void>> = [];
    const compressed: Seg[] = [];
    for (const s of segs) {
      const at = s.off - offset;
      if (s.kind === DATA) jobs.push(() => this.readDataInto(s.host, out.subarray(at, at + s.len)));
      else if (s.kind === UNALLOC && this.backing) jobs.push(() => readBelow(this.backing, s.off, s.len, out, at));
      else if (s.kind === COMPRESSED)
        compressed.push(s); // inflates to whole clusters (checked)
      else out.fill(0, at, at + s.len);
    }
    if (compressed.length > 0) jobs.push(() => this.readCompressedSegs(compressed, out, offset));
    if (jobs.length === 1) await jobs[0]();
    else if (jobs.length > 1) await runLimited(jobs, READ_CONCURRENCY);
    return n;
  }

  /**
   * Where [offset, offset+length) lives: data clusters in the data file (zeros past its
   * end, as reads give), zero clusters, the backing chain beneath unallocated ones;
   * compressed clusters, and a data file that is not a local file, are 'other'.
   */
  async direct(offset: number, length: number): Promise<DirectPiece[]> {
    const n = clampRead(this, offset, length);
    const out: DirectPiece[] = [];
    const segs = await this.segments(offset, n);
    const d = this.data;
    const f = fileView(d);
    for (const s of segs) {
      if (s.kind === DATA) {
        const inFile = Math.max(0, Math.min(s.len, d.size - s.host));
        if (!f) pushDirect(out, { kind: 'other', offset: s.off, length: inFile });
        else
          pushDirect(out, {
            kind: 'file',
            offset: s.off,
            length: inFile,
            fd: f.fd,
            file: f.name,
            host: f.offset + s.host,
          });
        pushDirect(out, { kind: 'zero', offset: s.off + inFile, length: s.len - inFile });
      } else if (s.kind === UNALLOC) await directBelow(this.backing, s.off, s.len, out);
      else if (s.kind === COMPRESSED) pushDirect(out, { kind: 'other', offset: s.off, length: s.len });
      else pushDirect(out, { kind: 'zero', offset: s.off, length: s.len });
    }
    return out;
  }

  /** Host bytes of the data file into `dst`; what lies past the end of the data file reads as zeros. */
  private async readDataInto(host: number, dst: Uint8Array): Promise<void> {
    const d = this.data;
    let got: number;
    if (d.readInto) got = host >= d.size ? 0 : await d.readInto(host, dst);
    else {
      const b = await d.read(host, dst.length);
      got = Math.min(b.length, dst.length);
      dst.set(b.subarray(0, got));
    }
    if (got < dst.length) dst.fill(0, got);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.l2Cache.clear();
    this.zCache.clear();
    await this.src.close?.();
    await this.dataFile?.close?.();
    await this.backing?.close();
  }

  // ---- mapping ----

  /** Walk [offset, offset+n) of the virtual disk in order, emitting what each run maps to. */
  private async walk(offset: number, n: number, emit: Emit): Promise<void> {
    const end = offset + n;
    let pos = offset;
    const cs = this.clusterSize;
    const raw = this.h.dataFileRaw;
    // When the data file is raw, what the L2 tables leave unallocated is read from the data file at the same offset.
    const unalloc = (off: number, len: number) =>
      raw ? emit(off, len, DATA, off, 0, 0) : emit(off, len, UNALLOC, 0, 0, 0);
    while (pos < end) {
      const l1i = Math.floor(pos / this.l2Coverage);
      const l1Start = l1i * this.l2Coverage;
      const rangeEnd = Math.min(end, l1Start + this.l2Coverage);
      const l2Off = l1i < this.l1.length ? this.l1[l1i] : 0;
      if (l2Off === 0) {
        unalloc(pos, rangeEnd - pos);
        pos = rangeEnd;
        continue;
      }
      const dv = await this.l2Table(l2Off, l1i);
      while (pos < rangeEnd) {
        const ci = Math.floor((pos - l1Start) / cs);
        const cStart = l1Start + ci * cs;
        const cEnd = Math.min(cStart + cs, rangeEnd);
        const e = ci * this.entrySize;
        const hi = dv.getUint32(e);
        const lo = dv.getUint32(e + 4);
        if (hi & OFLAG_COMPRESSED) {
          // Compressed cluster: offset in the low x bits, (sectors - 1) in the bits above.
          if (this.dataFile) {
            throw new StrataError(
              'CORRUPT',
              'compressed cluster in an image with an external data file',
              this.l2Where(ci, l1i, l2Off + e),
            );
          }
          const hiBits = compressedOffsetBits(this.h.clusterBits) - 32;
          const host = (hi & ((1 << hiBits) - 1)) * TWO32 + lo;
          const sectors = ((hi & COMPRESSED_FIELD_MASK_HI) >>> hiBits) + 1;
          const clen = sectors * 512 - (host % 512);
          if (host >= this.src.size) {
            throw new StrataError(
              'CORRUPT',
              `compressed cluster at ${host} lies past the end of the file (size ${this.src.size})`,
              this.l2Where(ci, l1i, l2Off + e),
            );
          }
          emit(pos, cEnd - pos, COMPRESSED, host, clen, cStart);
          pos = cEnd;
          continue;
        }
        const host = (hi & OFFSET_MASK_HI) * TWO32 + ((lo & OFFSET_MASK_LO) >>> 0);
        const hasHost = host !== 0 || (this.dataFile !== undefined && (hi & OFLAG_COPIED) !== 0);
        if (this.entrySize === L2_ENTRY_SIZE) {
          if (lo & OFLAG_ZERO) emit(pos, cEnd - pos, ZERO, 0, 0, 0);
          else if (!hasHost) unalloc(pos, cEnd - pos);
          else {
            this.checkHost(host, ci, l1i, l2Off + e);
            emit(pos, cEnd - pos, DATA, host + (pos - cStart), 0, 0);
          }
          pos = cEnd;
          continue;
        }
        // Extended L2: 32 subclusters, allocation bits 0-31 and zero bits 32-63 of the second word.
        const zeroBits = dv.getUint32(e + 8);
        const allocBits = dv.getUint32(e + 12);
        if ((zeroBits & allocBits) !== 0) {
          throw new StrataError(
            'CORRUPT',
            'subcluster marked both allocated and zero',
            this.l2Where(ci, l1i, l2Off + e),
          );
        }
        if (allocBits !== 0) {
          if (!hasHost)
            throw new StrataError(
              'CORRUPT',
              'subclusters allocated in a cluster without a host offset',
              this.l2Where(ci, l1i, l2Off + e),
            );
          this.checkHost(host, ci, l1i, l2Off + e);
        }
        if (allocBits === 0 && zeroBits === 0) {
          unalloc(pos, cEnd - pos);
          pos = cEnd;
          continue;
        }
        const ss = this.subSize;
        while (pos < cEnd) {
          const si = Math.floor((pos - cStart) / ss);
          const sEnd = Math.min(cStart + (si + 1) * ss, cEnd);
          const bit = 1 << si;
          if (allocBits & bit) emit(pos, sEnd - pos, DATA, host + (pos - cStart), 0, 0);
          else if (zeroBits & bit) emit(pos, sEnd - pos, ZERO, 0, 0, 0);
          else unalloc(pos, sEnd - pos);
          pos = sEnd;
        }
      }
    }
  }

  private l2Where(ci: number, l1i: number, at: number) {
    return { file: this.name, structure: `qcow2 L2 table entry ${ci} (L1 index ${l1i})`, offset: at };
  }

  /** A data cluster's host offset must be aligned and start inside the data file. */
  private checkHost(host: number, ci: number, l1i: number, at: number): void {
    if (host % this.clusterSize !== 0) {
      throw new StrataError('CORRUPT', `data cluster offset ${host} is not cluster aligned`, this.l2Where(ci, l1i, at));
    }
    if (host >= this.data.size) {
      throw new StrataError(
        'CORRUPT',
        `data cluster at ${host} lies past the end of ${this.data.name} (size ${this.data.size})`,
        this.l2Where(ci, l1i, at),
      );
    }
  }

  private l2Table(l2Off: number, l1i: number): Promise<DataView> {
    const cs = this.clusterSize;
    const where = { file: this.name, structure: `qcow2 L1 table entry ${l1i}`, offset: this.h.l1TableOffset + l1i * 8 };
    if (l2Off % cs !== 0) {
      return Promise.reject(new StrataError('CORRUPT', `L2 table offset ${l2Off} is not cluster aligned`, where));
    }
    if (l2Off + cs > this.src.size) {
      return Promise.reject(
        new StrataError('CORRUPT', `L2 table at ${l2Off} lies past the end of the file (size ${this.src.size})`, where),
      );
    }
    return this.l2Cache.get(l2Off, cs, async () => {
      const b = await readExact(this.src, l2Off, cs, `qcow2 L2 table (L1 index ${l1i})`);
      return new DataView(b.buffer, b.byteOffset, b.byteLength);
    });
  }

  // ---- data ----

  /** One host read for runs that lie close together in the data file, then each copied into place. */
  private async readDataGroup(g: HostGroup, out: Uint8Array, base: number): Promise<void> {
    // Past the end of the data file reads as zeros (as qemu does); `out` starts zeroed.
    const b = await this.data.read(g.start, g.end - g.start);
    for (const s of g.segs) {
      const from = s.host - g.start;
      if (from >= b.length) continue;
      out.set(b.subarray(from, Math.min(b.length, from + s.len)), s.off - base);
    }
  }

  /** Read compressed clusters, fetching neighbours in the file with one read, then inflate each once. */
  private async readCompressedSegs(segs: Seg[], out: Uint8Array, base: number): Promise<void> {
    const pending: Seg[] = [];
    const place = (s: Seg, cluster: Uint8Array) =>
      out.set(cluster.subarray(s.off - s.cstart, s.off - s.cstart + s.len), s.off - base);
    const cached: Array<Promise<void>> = [];
    for (const s of segs) {
      const hit = this.zCache.peek(s.host);
      if (hit) cached.push(hit.then((c) => place(s, c)));
      else pending.push(s);
    }
    const groups = groupByHost(pending, (x) => x.host + x.clen, 4096);
    const jobs = groups.map(({ segs: g, start, end: gEnd }) => async () => {
      const end = Math.min(gEnd, this.src.size);
      const buf = await this.src.read(start, end - start);
      await Promise.all(
        g.map(async (s) => {
          const c = await this.zCache.get(s.host, this.clusterSize, () =>
            this.inflate(buf.subarray(s.host - start, Math.min(buf.length, s.host - start + s.clen)), s),
          );
          place(s, c);
        }),
      );
    });
    await Promise.all([...cached, runLimited(jobs, READ_CONCURRENCY)]);
  }

  private async inflate(comp: Uint8Array, s: Seg): Promise<Uint8Array> {
    const cs = this.clusterSize;
    const where = { file: this.name, structure: `qcow2 compressed cluster (guest offset ${s.cstart})`, offset: s.host };
    let outb: Uint8Array;
    if (this.h.compressionType === 1) {
      const scan = scanZstdFrames(comp, cs);
      if (!scan) throw new StrataError('CORRUPT', 'compressed data is not a well-formed zstd frame', where);
      try {
        outb = zstdDecompress(comp.subarray(0, scan.length), cs);
      } catch (e) {
        throw new StrataError('CORRUPT', `zstd decompression failed: ${(e as Error)?.message ?? e}`, where);
      }
    } else {
      try {
        const zlib = lazyZlib();
        inflateRaw ??= promisify(zlib.inflateRaw) as (b: Uint8Array, o: object) => Promise<Buffer>;
        outb = await inflateRaw(comp, { chunkSize: cs, maxOutputLength: cs, finishFlush: zlib.constants.Z_SYNC_FLUSH });
      } catch (e) {
        throw new StrataError('CORRUPT', `deflate decompression failed: ${(e as Error)?.message ?? e}`, where);
      }
    }
    if (outb.length !== cs) {
      throw new StrataError('CORRUPT', `compressed cluster inflates to ${outb.length} bytes, not ${cs}`, where);
    }
    return outb;
  }
}

interface HostGroup {
  segs: Seg[];
  start: number;
  end: number;
}

/** Bytes of unneeded data we read rather than split a host read (page-cache reads are cheap, syscalls are not). */
const DATA_GAP = 64 * 1024;
/** Largest single host read made by grouping. */
const MAX_GROUP = 16 * 1024 * 1024;

/**
 * Group runs by where they lie in the host file: sorted by host offset, a run joins the
 * previous group when it starts within `gap` bytes of that group's end.
 */
function groupByHost(segs: Seg[], endOf: (s: Seg) => number, gap: number): HostGroup[] {
  const sorted = [...segs].sort((a, b) => a.host - b.host);
  const groups: HostGroup[] = [];
  for (const s of sorted) {
    const g = groups[groups.length - 1];
    const e = endOf(s);
    if (g && s.host <= g.end + gap && e - g.start <= MAX_GROUP) {
      g.segs.push(s);
      if (e > g.end) g.end = e;
    } else groups.push({ segs: [s], start: s.host, end: e });
  }
  return groups;
}

/** Run async jobs with at most `limit` in flight; the first failure is thrown after all settle. */
async function runLimited(jobs: Array<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  let failure: unknown;
  let failed = false;
  const worker = async () => {
    while (next < jobs.length && !failed) {
      const j = jobs[next++];
      try {
        await j();
      } catch (e) {
        if (!failed) {
          failed = true;
          failure = e;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  if (failed) throw failure;
}
