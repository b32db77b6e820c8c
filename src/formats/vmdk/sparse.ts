import { inflateSync } from 'node:zlib';
import { type ByteSource, type Extent, pushExtent, readExact } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { fileView } from '../../io/filter-source.js';
import { nativeInflateGrains } from '../../io/native.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import { readHost } from '../read-plan.js';
import type { Below, VmdkExtent } from './extents.js';
import { inflatePool } from './inflate-pool.js';

/**
 * A hosted sparse extent ("KDMV"): a 512-byte header, an optional embedded descriptor, a
 * grain directory (GD) of 32-bit sector offsets of grain tables (GT), and GTs of 32-bit
 * sector offsets of grains. GTE 0 = never written; GTE 1 = zeroed grain when the header
 * sets the zeroed-grain flag. Stream-optimized extents store each grain deflated behind a
 * 12-byte marker (lba, size), and may put the GD in a footer near the end of the file.
 */

export { VMDK_COWD_MAGIC as COWD_MAGIC, VMDK_SPARSE_MAGIC as SPARSE_MAGIC } from '../probe.js';

import { VMDK_COWD_MAGIC as COWD_MAGIC, VMDK_SPARSE_MAGIC as SPARSE_MAGIC } from '../probe.js';

const GD_AT_END = 0xffffffffffffffffn;
const FLAG_NEWLINE_TEST = 1 << 0;
const FLAG_RGD = 1 << 1;
const FLAG_ZEROED_GRAIN = 1 << 2;
const FLAG_COMPRESSED = 1 << 16;
const FLAG_MARKERS = 1 << 17;
const MAX_GRAIN_SECTORS = 1 << 16; // 32 MiB grains
const MAX_GTES = 1 << 16;
const MARKER_FOOTER = 3;

export interface SparseHeader {
  version: number;
  flags: number;
  capacity: number; // sectors
  grainSectors: number;
  descriptorOffset: number; // sectors
  descriptorSize: number; // sectors
  gtes: number;
  rgdOffset: number; // sectors
  gdOffset: number; // sectors
  overhead: number;
  compressAlgorithm: number;
  gdAtEnd: boolean;
}

function sec64(dv: DataView, at: number, file: string, base: number, what: string): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / 512))) {
    throw new StrataError('CORRUPT', `${what} ${v} is out of range`, {
      file,
      structure: 'vmdk sparse extent header',
      offset: base + at,
    });
  }
  return Number(v);
}

/** Parse and sanity-check a 512-byte sparse extent header found at `base` in `file`. */
export function parseSparseHeader(b: Uint8Array, file: string, base: number): SparseHeader {
  const where = (at: number) => ({ file, structure: 'vmdk sparse extent header', offset: base + at });
  if (b.length < 512) throw new StrataError('TRUNCATED', 'sparse extent header is cut short', where(0));
  const dv = new DataView(b.buffer, b.byteOffset, 512);
  const magic = dv.getUint32(0, true);
  if (magic === COWD_MAGIC) {
    throw new StrataError('UNSUPPORTED', 'ESX COWD sparse extents (VMFSSPARSE) are not read', where(0));
  }
  if (magic !== SPARSE_MAGIC) throw new StrataError('CORRUPT', 'no KDMV magic: not a sparse extent', where(0));
  const version = dv.getUint32(4, true);
  if (version < 1 || version > 3) throw new StrataError('UNSUPPORTED', `sparse extent version ${version}`, where(4));
  const flags = dv.getUint32(8, true);
  const capacityBig = dv.getBigUint64(12, true);
  if (capacityBig * 512n > BigInt(LIMITS.maxVirtualSize)) {
    throw new StrataError(
      'LIMIT',
      `capacity of ${capacityBig} sectors exceeds the ${LIMITS.maxVirtualSize}-byte limit`,
      where(12),
    );
  }
  const grainBig = dv.getBigUint64(20, true);
  if (grainBig < 1n || grainBig > BigInt(MAX_GRAIN_SECTORS)) {
    throw new StrataError('CORRUPT', `grain size of ${grainBig} sectors is out of range`, where(20));
  }
  const gtes = dv.getUint32(44, true);
  if (gtes < 1 || gtes > MAX_GTES) {
    throw new StrataError('CORRUPT', `${gtes} entries per grain table is out of range`, where(44));
  }
  const gdRaw = dv.getBigUint64(56, true);
  if (flags & FLAG_NEWLINE_TEST) {
    if (b[73] !== 0x0a || b[74] !== 0x20 || b[75] !== 0x0d || b[76] !== 0x0a) {
      throw new StrataError('CORRUPT', 'newline test characters are wrong (file transferred in text mode?)', where(73));
    }
  }
  return {
    version,
    flags,
    capacity: Number(capacityBig),
    grainSectors: Number(grainBig),
    descriptorOffset: sec64(dv, 28, file, base, 'descriptor offset'),
    descriptorSize: sec64(dv, 36, file, base, 'descriptor size'),
    gtes,
    rgdOffset: sec64(dv, 48, file, base, 'redundant grain directory offset'),
    gdOffset: gdRaw === GD_AT_END ? 0 : sec64(dv, 56, file, base, 'grain directory offset'),
    overhead: sec64(dv, 64, file, base, 'overhead'),
    compressAlgorithm: dv.getUint16(77, true),
    gdAtEnd: gdRaw === GD_AT_END,
  };
}

/**
 * Read the header of a sparse extent, resolving a stream-optimized footer when the GD
 * offset says GD_AT_END (the real header then sits 1024 bytes before the end of the file,
 * after a footer marker and before the end-of-stream marker).
 */
export async function readSparseHeader(src: ByteSource): Promise<{ header: SparseHeader; first: SparseHeader }> {
  const first = parseSparseHeader(await readExact(src, 0, 512, 'vmdk sparse extent header'), src.name, 0);
  if (!first.gdAtEnd) return { header: first, first };
  const at = src.size - 1536;
  if (at < 512) {
    throw new StrataError('TRUNCATED', 'grain directory is "at end" but the file has no room for a footer', {
      file: src.name,
      structure: 'vmdk footer',
      offset: Math.max(0, at),
    });
  }
  const tail = await readExact(src, at, 1024, 'vmdk footer');
  const mdv = new DataView(tail.buffer, tail.byteOffset, 512);
  if (mdv.getUint32(8, true) !== 0 || mdv.getUint32(12, true) !== MARKER_FOOTER) {
    throw new StrataError('CORRUPT', 'no footer marker before the footer', {
      file: src.name,
      structure: 'vmdk footer marker',
      offset: at,
    });
  }
  const header = parseSparseHeader(tail.subarray(512), src.name, at + 512);
  if (header.gdAtEnd) {
    throw new StrataError('CORRUPT', 'footer also says the grain directory is at the end', {
      file: src.name,
      structure: 'vmdk footer',
      offset: at + 512 + 56,
    });
  }
  return { header, first };
}

/**
 * Reads with at least this many compressed grains inflate off the main thread: natively on
 * libuv's pool (native/inflate.c) when the addon is built and the extent is a local file,
 * else in the worker pool when the output buffer is shared.
 */
const WORKER_MIN_GRAINS = 4;

/** Decompressed grains kept per extent (small reads of a stream-optimized disk hit these). */
const GRAIN_CACHE = 32;

/** Bytes of grain tables cached per image (shared out among its sparse extents). */
export const GT_CACHE_BYTES = 32 << 20;

interface GrainJob {
  pos: number;
  n: number;
  gte: number;
  inGrain: number;
  lbaGrain: number;
}

export class SparseExtent implements VmdkExtent {
  readonly kind = 'SPARSE';
  readonly bytes: number;
  readonly grainBytes: number;
  readonly compressed: boolean;
  readonly markers: boolean;
  readonly zeroedGrain: boolean;
  private readonly gd: Uint32Array;
  private readonly gtBytes: number;
  private readonly gtCache = new Map<number, Promise<Uint32Array>>();
  private readonly gtCacheMax: number;
  private readonly grainCache = new Map<number, Promise<Uint8Array>>();
  private readonly data: ByteSource;

  private constructor(
    private readonly src: ByteSource,
    readonly start: number,
    sectors: number,
    readonly header: SparseHeader,
    gd: Uint32Array,
    readonly file: string,
    gtCacheBytes: number,
  ) {
    this.bytes = sectors * 512;
    this.grainBytes = header.grainSectors * 512;
    this.compressed = (header.flags & FLAG_COMPRESSED) !== 0 && header.compressAlgorithm !== 0;
    this.markers = (header.flags & FLAG_MARKERS) !== 0;
    this.zeroedGrain = (header.flags & FLAG_ZEROED_GRAIN) !== 0;
    this.gd = gd;
    this.gtBytes = header.gtes * 4;
    this.gtCacheMax = Math.max(4, Math.floor(gtCacheBytes / this.gtBytes));
    // Compressed grains are small scattered reads: serve them from a block cache.
    this.data = this.compressed ? new CachedSource(src, { blockSize: 256 << 10, capacity: 2 << 20 }) : src;
  }

  /**
   * Open a sparse extent that covers `sectors` sectors of the disk starting at byte `start`
   * (`sectors` undefined: the header's capacity).
   */
  static async open(
    src: ByteSource,
    start: number,
    sectors: number | undefined,
    file: string,
    budget: { tableBytes: number } = { tableBytes: LIMITS.maxTableBytes },
    gtCacheBytes = GT_CACHE_BYTES,
  ): Promise<SparseExtent> {
    const { header } = await readSparseHeader(src);
    const name = src.name;
    const n = sectors ?? header.capacity;
    if (n > header.capacity) {
      throw new StrataError(
        'CORRUPT',
        `descriptor gives the extent ${n} sectors but its header holds only ${header.capacity}`,
        { file: name, structure: 'vmdk sparse extent header', offset: 12 },
      );
    }
    if (header.compressAlgorithm > 1) {
      throw new StrataError('UNSUPPORTED', `compression algorithm ${header.compressAlgorithm}`, {
        file: name,
        structure: 'vmdk sparse extent header',
        offset: 77,
      });
    }
    const perGt = header.grainSectors * header.gtes;
    const entries = Math.ceil(n / perGt);
    budget.tableBytes -= entries * 4;
    if (entries * 4 > LIMITS.maxTableBytes || budget.tableBytes < 0) {
      throw new StrataError(
        'LIMIT',
        `grain directory of ${entries} entries is too large (or all of them together are)`,
        {
          file: name,
          structure: 'vmdk grain directory',
          offset: header.gdOffset * 512,
        },
      );
    }
    let gdSector = header.gdOffset;
    const fits = (s: number) => s > 0 && s * 512 + entries * 4 <= src.size;
    if (!fits(gdSector)) {
      const rgd = header.flags & FLAG_RGD ? header.rgdOffset : 0;
      if (!fits(rgd)) {
        throw new StrataError(
          gdSector * 512 >= src.size || gdSector === 0 ? 'CORRUPT' : 'TRUNCATED',
          `grain directory of ${entries} entries at sector ${gdSector} does not fit in the file (size ${src.size})`,
          { file: name, structure: 'vmdk grain directory', offset: gdSector * 512 },
        );
      }
      gdSector = rgd;
    }
    const raw = await readExact(src, gdSector * 512, entries * 4, 'vmdk grain directory');
    const gd = toU32(raw);
    const ext = new SparseExtent(src, start, n, header, gd, file, gtCacheBytes);
    if (gdSector !== header.gdOffset)
      ext.warnings.push(`${name}: primary grain directory unusable, read the redundant one`);
    return ext;
  }

  readonly warnings: string[] = [];

  private table(index: number): Promise<Uint32Array> | undefined {
    const sector = this.gd[index];
    if (sector === 0) return undefined;
    const hit = this.gtCache.get(index);
    if (hit) {
      this.gtCache.delete(index);
      this.gtCache.set(index, hit);
      return hit;
    }
    const off = sector * 512;
    const p = (async () => {
      if (off + this.gtBytes > this.src.size) {
        throw new StrataError(
          'CORRUPT',
          `grain table ${index} at ${off} lies past the end of the file (size ${this.src.size})`,
          { file: this.src.name, structure: 'vmdk grain table', offset: off },
        );
      }
      return toU32(await readExact(this.src, off, this.gtBytes, 'vmdk grain table'));
    })();
    p.catch(() => this.gtCache.delete(index));
    this.gtCache.set(index, p);
    while (this.gtCache.size > this.gtCacheMax) this.gtCache.delete(this.gtCache.keys().next().value as number);
    return p;
  }

  /**
   * Walk [off, off+len) grain by grain, calling `visit(pos, n, gte, inGrain)` with runs that
   * share one grain (pos relative to `off`).
   */
  private async walk(
    off: number,
    len: number,
    visit: (pos: number, n: number, gte: number, inGrain: number) => void | Promise<void>,
  ): Promise<void> {
    const gb = this.grainBytes;
    const perGt = gb * this.header.gtes;
    let pos = 0;
    while (pos < len) {
      const v = off + pos;
      const gtIndex = Math.floor(v / perGt);
      const gtEnd = Math.min(len, (gtIndex + 1) * perGt - off);
      const tp = this.table(gtIndex);
      if (!tp) {
        await visit(pos, gtEnd - pos, 0, 0);
        pos = gtEnd;
        continue;
      }
      const gt = await tp;
      while (pos < gtEnd) {
        const w = off + pos;
        const g = Math.floor(w / gb);
        const inGrain = w - g * gb;
        const n = Math.min(gb - inGrain, gtEnd - pos);
        await visit(pos, n, gt[g % this.header.gtes], inGrain);
        pos += n;
      }
    }
  }

  private isZero(gte: number): boolean {
    return gte === 1 && this.zeroedGrain;
  }

  async status(off: number, len: number, out: Extent[]): Promise<void> {
    await this.walk(off, len, (pos, n, gte) => {
      pushExtent(out, this.start + off + pos, n, gte === 0 ? 'unallocated' : this.isZero(gte) ? 'zero' : 'data');
    });
  }

  /** When [off, off+len) is one contiguous run of stored, uncompressed grains: read it in one go. */
  async readDirect(off: number, len: number): Promise<Uint8Array | undefined> {
    if (this.compressed) return undefined;
    let host = -1;
    let ok = true;
    await this.walk(off, len, (pos, n, gte, inGrain) => {
      if (!ok) return;
      const h = gte * 512 + inGrain;
      if (gte === 0 || this.isZero(gte) || (host >= 0 && h !== host + pos) || h + n > this.src.size) ok = false;
      else if (host < 0) host = h;
    });
    if (!ok || host < 0) return undefined;
    return readExact(this.src, host, len, 'vmdk grain');
  }

  async read(off: number, len: number, out: Uint8Array, at: number, below: Below, dirty = false): Promise<void> {
    // Pending run: contiguous host bytes (kind 1) or contiguous unallocated range (kind 2).
    let kind = 0;
    let runPos = 0;
    let runLen = 0;
    let runHost = 0;
    const flush = async () => {
      if (kind === 1) {
        await readHost(this.src, runHost, runLen, out, at + runPos, 'vmdk grain');
      } else if (kind === 2) {
        await below(this.start + off + runPos, runLen, at + runPos);
      }
      kind = 0;
    };
    const jobs: GrainJob[] = [];
    await this.walk(off, len, async (pos, n, gte, inGrain) => {
      if (gte === 0) {
        if (kind === 2 && runPos + runLen === pos) runLen += n;
        else {
          await flush();
          kind = 2;
          runPos = pos;
          runLen = n;
        }
        return;
      }
      if (this.isZero(gte)) {
        await flush();
        if (dirty) out.fill(0, at + pos, at + pos + n); // zeroed grain (else `out` holds zeros)
        return;
      }
      if (this.compressed) {
        await flush();
        jobs.push({ pos, n, gte, inGrain, lbaGrain: Math.floor((off + pos) / this.grainBytes) });
        return;
      }
      const host = gte * 512 + inGrain;
      if (host + n > this.src.size) {
        throw new StrataError(
          'CORRUPT',
          `grain at sector ${gte} lies past the end of the file (size ${this.src.size})`,
          { file: this.src.name, structure: 'vmdk grain table entry', offset: gte * 512 },
        );
      }
      if (kind === 1 && runHost + runLen === host && runPos + runLen === pos) runLen += n;
      else {
        await flush();
        kind = 1;
        runPos = pos;
        runLen = n;
        runHost = host;
      }
    });
    await flush();
    if (jobs.length > 0) await this.inflateAll(jobs, out, at, dirty);
  }

  /**
   * Inflate the compressed grains of one read. A stream-optimized file stores them one after
   * another, so one large read of the span that holds them replaces a small read per grain.
   */
  private async inflateAll(jobs: GrainJob[], out: Uint8Array, at: number, dirty: boolean): Promise<void> {
    let lo = Number.POSITIVE_INFINITY;
    let hi = 0;
    for (const j of jobs) {
      const o = j.gte * 512;
      if (o < lo) lo = o;
      if (o > hi) hi = o;
    }
    hi = Math.min(this.src.size, hi + this.maxCompressed + 12);
    let window: Uint8Array | undefined;
    const dense = hi - lo <= jobs.length * (this.maxCompressed + 1024) && hi - lo <= 64 << 20;
    if (jobs.length >= WORKER_MIN_GRAINS && hi > lo && dense && this.markers) {
      if (await this.inflateNatively(jobs, lo, hi, out, at)) return;
    }
    if (jobs.length >= WORKER_MIN_GRAINS && hi > lo && dense && out.buffer instanceof SharedArrayBuffer) {
      if (await this.inflateInWorkers(jobs, lo, hi, out, at)) return;
    }
    if (jobs.length > 1 && hi > lo && dense) window = await readExact(this.src, lo, hi - lo, 'vmdk compressed grains');
    for (const j of jobs) {
      let grain: Uint8Array;
      const hit = this.grainCache.get(j.gte);
      if (hit) grain = await hit;
      else {
        const payload = window && this.payloadIn(window, lo, j.gte, j.lbaGrain);
        grain = payload ? this.inflate(payload, j.gte) : await this.grain(j.gte, j.lbaGrain);
        if (payload) this.remember(j.gte, Promise.resolve(grain));
      }
      const avail = Math.max(0, Math.min(j.n, grain.length - j.inGrain));
      out.set(grain.subarray(j.inGrain, j.inGrain + avail), at + j.pos);
      if (dirty && avail < j.n) out.fill(0, at + j.pos + avail, at + j.pos + j.n); // a short grain's tail
    }
  }

  /**
   * Inflate the grains of one read on libuv's pool (native/inflate.c): the compressed span
   * [lo, hi) is read there and each grain inflated straight into `out`, markers checked as
   * checkMarker does. Returns false when the addon is missing, the extent is not a local
   * file, or a grain fails: the caller then does the read here, which names the problem.
   */
  private async inflateNatively(jobs: GrainJob[], lo: number, hi: number, out: Uint8Array, at: number) {
    const inflate = nativeInflateGrains();
    const f = inflate && fileView(this.src);
    if (!inflate || !f) return false;
    const spec = new Float64Array(jobs.length * 5);
    for (let i = 0; i < jobs.length; i++) {
      const j = jobs[i];
      spec[i * 5] = f.offset + j.gte * 512;
      spec[i * 5 + 1] = j.lbaGrain * this.header.grainSectors;
      spec[i * 5 + 2] = at + j.pos;
      spec[i * 5 + 3] = j.inGrain;
      spec[i * 5 + 4] = j.n;
    }
    let r: Float64Array;
    try {
      r = await inflate(f.fd, f.offset + lo, f.offset + hi, spec, out, this.grainBytes, this.maxCompressed);
    } catch {
      return false; // a read failure: the read here reports it with the file's name
    }
    if (r[0] >= 0) return false;
    if (r[2] >= 0 && this.warnings.length < 8) {
      const sector = jobs[r[2]].gte;
      this.warnings.push(`${this.src.name}: grain marker at ${sector * 512} says lba ${r[3]}`);
    }
    return true;
  }

  /**
   * Inflate the grains of one read in the worker pool, straight into `out` (backed by a
   * SharedArrayBuffer); the compressed span [lo, hi) is read into a reused shared buffer.
   * Markers are checked here, so a bad one fails as on the main thread. Returns false when
   * the pool is unavailable (the caller then inflates here).
   */
  private async inflateInWorkers(jobs: GrainJob[], lo: number, hi: number, out: Uint8Array, at: number) {
    const pool = inflatePool();
    if (!pool) return false;
    const input = pool.input(hi - lo);
    try {
      await readHost(this.src, lo, hi - lo, input, 0, 'vmdk compressed grains');
      const spec = new Float64Array(jobs.length * 5); // a typed array: cheap to post
      const sent: GrainJob[] = [];
      const rest: GrainJob[] = [];
      for (const j of jobs) {
        const payload = this.payloadIn(input, lo, j.gte, j.lbaGrain);
        if (!payload) {
          rest.push(j);
          continue;
        }
        const k = sent.length * 5;
        spec[k] = payload.byteOffset;
        spec[k + 1] = payload.length;
        spec[k + 2] = out.byteOffset + at + j.pos;
        spec[k + 3] = j.inGrain;
        spec[k + 4] = j.n;
        sent.push(j);
      }
      let failure: Awaited<ReturnType<typeof pool.run>>;
      try {
        failure = await pool.run(
          input.buffer as SharedArrayBuffer,
          out.buffer as SharedArrayBuffer,
          this.grainBytes,
          spec.subarray(0, sent.length * 5),
        );
      } catch {
        pool.broken = true;
        return false;
      }
      if (failure && failure.job < 0) return false; // the worker died: inflate here instead
      if (failure) {
        throw new StrataError('CORRUPT', `grain does not inflate: ${failure.message}`, {
          file: this.src.name,
          structure: 'vmdk compressed grain',
          offset: sent[failure.job].gte * 512,
        });
      }
      for (const j of rest) {
        const grain = await this.grain(j.gte, j.lbaGrain);
        const avail = Math.max(0, Math.min(j.n, grain.length - j.inGrain));
        out.set(grain.subarray(j.inGrain, j.inGrain + avail), at + j.pos);
        if (avail < j.n) out.fill(0, at + j.pos + avail, at + j.pos + j.n);
      }
      return true;
    } finally {
      pool.release(input);
    }
  }

  private get maxCompressed(): number {
    return this.grainBytes + (this.grainBytes >>> 3) + 4096;
  }

  /** The compressed bytes of the grain at `sector` when `window` (file bytes from `lo`) holds them. */
  private payloadIn(window: Uint8Array, lo: number, sector: number, lbaGrain: number): Uint8Array | undefined {
    const o = sector * 512 - lo;
    if (!this.markers) return window.subarray(o, Math.min(window.length, o + this.maxCompressed));
    if (o + 12 > window.length) return undefined;
    const dv = new DataView(window.buffer, window.byteOffset + o, 12);
    const size = this.checkMarker(dv, sector, lbaGrain);
    if (o + 12 + size > window.length) return undefined;
    return window.subarray(o + 12, o + 12 + size);
  }

  /** Validate a grain marker (lba, size); returns the compressed size. */
  private checkMarker(dv: DataView, sector: number, lbaGrain: number): number {
    const size = dv.getUint32(8, true);
    if (size === 0 || size > this.maxCompressed) {
      throw new StrataError('CORRUPT', `grain marker gives a compressed size of ${size}`, {
        file: this.src.name,
        structure: 'vmdk grain marker',
        offset: sector * 512,
      });
    }
    // Compared as two 32-bit halves (no BigInt per grain); the expected lba is a safe integer.
    const want = lbaGrain * this.header.grainSectors;
    const mismatch = dv.getUint32(0, true) !== want % 2 ** 32 || dv.getUint32(4, true) !== Math.floor(want / 2 ** 32);
    if (mismatch && this.warnings.length < 8) {
      // qemu and VMware ignore it on read; a mismatch is only worth a note.
      this.warnings.push(`${this.src.name}: grain marker at ${sector * 512} says lba ${dv.getBigUint64(0, true)}`);
    }
    return size;
  }

  private inflate(payload: Uint8Array, sector: number): Uint8Array {
    try {
      // One output chunk of a whole grain: no concatenation of 16 KiB pieces.
      return inflateSync(payload, { maxOutputLength: this.grainBytes, chunkSize: Math.max(64, this.grainBytes) });
    } catch (e) {
      throw new StrataError(
        'CORRUPT',
        `grain does not inflate: ${(e as Error).message}`,
        {
          file: this.src.name,
          structure: 'vmdk compressed grain',
          offset: sector * 512,
        },
        { cause: e },
      );
    }
  }

  private remember(sector: number, p: Promise<Uint8Array>): void {
    this.grainCache.set(sector, p);
    if (this.grainCache.size > GRAIN_CACHE) this.grainCache.delete(this.grainCache.keys().next().value as number);
  }

  /** Inflate one compressed grain (behind its marker when the extent has markers). */
  private grain(sector: number, lbaGrain: number): Promise<Uint8Array> {
    const hit = this.grainCache.get(sector);
    if (hit) return hit;
    const p = this.loadGrain(sector, lbaGrain);
    p.catch(() => this.grainCache.delete(sector));
    this.remember(sector, p);
    return p;
  }

  private async loadGrain(sector: number, lbaGrain: number): Promise<Uint8Array> {
    const off = sector * 512;
    let payload: Uint8Array;
    if (this.markers) {
      const m = await readExact(this.data, off, 12, 'vmdk grain marker');
      const size = this.checkMarker(new DataView(m.buffer, m.byteOffset, 12), sector, lbaGrain);
      payload = await readExact(this.data, off + 12, size, 'vmdk compressed grain');
    } else {
      if (off >= this.src.size) {
        throw new StrataError('CORRUPT', 'compressed grain lies past the end of the file', {
          file: this.src.name,
          structure: 'vmdk compressed grain',
          offset: off,
        });
      }
      payload = await this.data.read(off, Math.min(this.maxCompressed, this.src.size - off));
    }
    return this.inflate(payload, sector);
  }

  /** Drop caches; the file itself is closed by the image that opened it. */
  async close(): Promise<void> {
    this.gtCache.clear();
    this.grainCache.clear();
  }
}

const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function toU32(raw: Uint8Array): Uint32Array {
  const n = raw.length >>> 2;
  if (HOST_LE) return new Uint32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + n * 4));
  const out = new Uint32Array(n);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getUint32(i * 4, true);
  return out;
}
