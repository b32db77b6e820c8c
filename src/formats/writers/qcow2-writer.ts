import type { FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import { StrataError } from '../../util/errors.js';
import { lazyZlib } from '../../util/lazy-zlib.js';
import { isZeroRange } from '../../util/zero.js';
import { zstdCompress } from '../../util/zstd.js';
import {
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  compressedOffsetBits,
  DEFAULT_REFCOUNT_ORDER,
  EXT_BACKING_FORMAT,
  EXT_END,
  EXT_FEATURE_NAMES,
  EXT_HEADER_SIZE,
  encodeFeatureNames,
  FEATURE_AUTOCLEAR,
  FEATURE_COMPATIBLE,
  FEATURE_INCOMPATIBLE,
  HDR,
  INCOMPAT_COMPRESSION,
  L2_ENTRY_SIZE,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MIN_CLUSTER_BITS,
  OFLAG_COMPRESSED,
  OFLAG_COPIED,
  OFLAG_ZERO,
  QCOW2_MAGIC,
  TWO32,
  V3_HEADER_LENGTH_WITH_COMPRESSION,
} from '../qcow2/layout.js';
import { type DirectTarget, type ImageWriter, type WriterResult, writeAll } from './writer.js';

let deflateRawAsync: ((b: Uint8Array, o: object) => Promise<Buffer>) | undefined;

export interface Qcow2WriterOptions {
  virtualSize: number;
  /** Power of two from 512 B to 2 MiB; default 64 KiB. */
  clusterSize?: number;
  /** Compress data clusters (each one only when that saves space). */
  compression?: 'zlib' | 'zstd';
  /** Record a backing file: clusters never written read through to it. */
  backing?: { path: string; format?: string };
}

const HEADER_LENGTH = V3_HEADER_LENGTH_WITH_COMPRESSION;
const REFCOUNT_ORDER = DEFAULT_REFCOUNT_ORDER; // 16-bit refcounts
const MAX_REFCOUNT = 2 ** (2 ** REFCOUNT_ORDER) - 1;

/**
 * A streaming qcow2 (version 3) writer. Data clusters are appended as they arrive
 * (compressed ones byte-packed), L2 tables and refcounts are kept in memory (L2 tables
 * only where something was written), and all metadata is written by `finish()`: L2
 * tables, L1 table, refcount table and blocks covering every used cluster, then the
 * header in cluster 0.
 */
export class Qcow2Writer implements ImageWriter {
  readonly format = 'qcow2';
  readonly granularity: number;
  readonly clusterSize: number;
  private readonly clusterBits: number;
  private readonly l2Entries: number;
  private readonly l1Size: number;
  private readonly l2: Array<Uint8Array | undefined>;
  /** Refcount per host cluster (grown on demand). */
  private rc = new Uint16Array(1024);
  /** Next free byte in the host file (byte granular for compressed data). */
  private head: number;
  private bytesWritten = 0;
  private readonly compressedShift: number;
  private readonly header: Uint8Array;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    private readonly opts: Qcow2WriterOptions,
  ) {
    // qemu counts qcow2 disks in 512-byte sectors (it drops a partial last one): round up.
    this.virtualSize = Math.ceil(opts.virtualSize / 512) * 512;
    const cs = opts.clusterSize ?? 65536;
    if (!Number.isInteger(cs) || cs < 2 ** MIN_CLUSTER_BITS || cs > 2 ** MAX_CLUSTER_BITS || (cs & (cs - 1)) !== 0) {
      throw new StrataError('USAGE', `qcow2 cluster size must be a power of two from 512 to 2 MiB, not ${cs}`, {
        file: path,
      });
    }
    if (!Number.isSafeInteger(opts.virtualSize) || opts.virtualSize < 0) {
      throw new StrataError('USAGE', `bad virtual size ${opts.virtualSize}`, { file: path });
    }
    this.clusterSize = cs;
    this.granularity = cs;
    this.clusterBits = Math.log2(cs);
    this.l2Entries = cs / L2_ENTRY_SIZE;
    const nClusters = Math.ceil(this.virtualSize / cs);
    this.l1Size = Math.ceil(nClusters / this.l2Entries);
    if (this.l1Size * L2_ENTRY_SIZE > MAX_L1_BYTES) {
      throw new StrataError(
        'LIMIT',
        `virtual size ${opts.virtualSize} needs an L1 table above 32 MiB; use a larger cluster size`,
        { file: path, structure: 'qcow2 L1 table' },
      );
    }
    this.l2 = new Array(this.l1Size);
    this.compressedShift = compressedOffsetBits(this.clusterBits);
    this.header = this.buildHeaderCluster(); // validates the backing name early
    this.head = cs; // cluster 0 is the header
    this.rc[0] = 1;
  }

  readonly virtualSize: number;

  /** `fh` must be a fresh, empty file opened for writing. */
  static async create(fh: FileHandle, path: string, opts: Qcow2WriterOptions): Promise<Qcow2Writer> {
    return new Qcow2Writer(fh, path, opts);
  }

  async writeData(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    if (offset % cs !== 0) throw new StrataError('USAGE', `unaligned qcow2 write at ${offset}`, { file: this.path });
    const n = Math.min(data.length, this.virtualSize - offset);
    if (n <= 0) return;
    // Non-zero clusters of this buffer, as [start in data, end in data].
    const pieces: Array<[number, number]> = [];
    for (let p = 0; p < n; p += cs) {
      const q = Math.min(n, p + cs);
      if (isZeroRange(data, p, q)) {
        if (this.opts.backing) this.setZero((offset + p) / cs);
      } else pieces.push([p, q]);
    }
    if (pieces.length === 0) return;
    if (this.opts.compression) await this.writeCompressed(offset, data, pieces);
    else await this.writePlain(offset, data, pieces);
  }

  zero(offset: number, length: number): void {
    if (!this.opts.backing) return; // unallocated already reads as zeros
    const cs = this.clusterSize;
    const end = Math.min(this.virtualSize, offset + length);
    for (let v = Math.floor(offset / cs); v * cs < end; v++) this.setZero(v);
  }

  /** Uncompressed clusters: consecutive ones go out as one write straight from `data`. */
  private async writePlain(offset: number, data: Uint8Array, pieces: Array<[number, number]>): Promise<void> {
    const cs = this.clusterSize;
    this.alignHead();
    // Allocate every cluster before the first await, so concurrent calls never interleave.
    const runs: Array<[number, number, number]> = []; // [start in data, end in data, host]
    for (const [p, q] of pieces) {
      const host = this.head;
      this.head += cs;
      this.addRef(host / cs);
      this.setEntry((offset + p) / cs, OFLAG_COPIED + Math.floor(host / TWO32), host % TWO32);
      const last = runs[runs.length - 1];
      if (last && p === last[1] && host === last[2] + (last[1] - last[0])) last[1] = q;
      else runs.push([p, q, host]);
    }
    await Promise.all(runs.map(([p, q, host]) => this.issue(data.subarray(p, q), host)));
  }

  /** Plain clusters only: compressed or backing-relative output stays with writeData. */
  directTarget(): DirectTarget | undefined {
    if (this.opts.compression || this.opts.backing) return undefined;
    this.alignHead();
    const cs = this.clusterSize;
    return {
      fd: this.fh.fd,
      layout: 'qcow2',
      granularity: cs,
      head: this.head,
      adopt: (virt, host, flags, count) => {
        let h = host;
        for (let i = 0; i < count; i++) {
          if (!flags[i]) continue;
          this.addRef(h / cs);
          this.setEntry(virt / cs + i, OFLAG_COPIED + Math.floor(h / TWO32), h % TWO32);
          h += cs;
        }
      },
      done: (head, bytes) => {
        this.head = Math.max(this.head, head);
        this.bytesWritten += bytes;
      },
    };
  }

  private async writeCompressed(offset: number, data: Uint8Array, pieces: Array<[number, number]>): Promise<void> {
    const cs = this.clusterSize;
    const full = pieces.map(([p, q]) => {
      if (q - p === cs) return data.subarray(p, q);
      const b = new Uint8Array(cs); // the last partial cluster decompresses to a whole one
      b.set(data.subarray(p, q));
      return b;
    });
    const packed = await Promise.all(full.map((b) => this.compress(b)));
    // Lay out this batch from the current head into one buffer.
    const start = this.head;
    const parts: Array<{ at: number; bytes: Uint8Array }> = [];
    for (let i = 0; i < pieces.length; i++) {
      const vcl = (offset + pieces[i][0]) / cs;
      const c = packed[i];
      if (c && c.length < cs) {
        if (this.rc[Math.floor(this.head / cs)] >= MAX_REFCOUNT - 1) this.alignHead();
        const host = this.head;
        const end = host + c.length;
        const sectors = Math.floor((end - 1) / 512) - Math.floor(host / 512);
        const lastCluster = Math.floor((Math.ceil(end / 512) * 512 - 1) / cs);
        for (let k = Math.floor(host / cs); k <= lastCluster; k++) this.addRef(k);
        const hi = OFLAG_COMPRESSED + sectors * 2 ** (this.compressedShift - 32) + Math.floor(host / TWO32);
        this.setEntry(vcl, hi, host % TWO32);
        parts.push({ at: host, bytes: c });
        this.head = end;
      } else {
        this.alignHead();
        const host = this.head;
        this.head += cs;
        this.addRef(host / cs);
        this.setEntry(vcl, OFLAG_COPIED + Math.floor(host / TWO32), host % TWO32);
        parts.push({ at: host, bytes: full[i] });
      }
    }
    const buf = new Uint8Array(this.head - start);
    for (const { at, bytes } of parts) buf.set(bytes, at - start);
    await this.issue(buf, start);
  }

  private compress(b: Uint8Array): Promise<Uint8Array> | Uint8Array {
    if (this.opts.compression === 'zstd') return zstdCompress(b, 3);
    // qemu inflates with a 4 KiB window (windowBits -12): compress with the same window.
    const zlib = lazyZlib();
    if (b.length >= 16384) {
      deflateRawAsync ??= promisify(zlib.deflateRaw) as (b: Uint8Array, o: object) => Promise<Buffer>;
      return deflateRawAsync(b, { windowBits: 12 });
    }
    return zlib.deflateRawSync(b, { windowBits: 12 });
  }

  private alignHead(): void {
    const cs = this.clusterSize;
    this.head = Math.ceil(this.head / cs) * cs;
  }

  private addRef(cluster: number): void {
    if (cluster >= this.rc.length) {
      const grown = new Uint16Array(Math.max(cluster + 1, this.rc.length * 2));
      grown.set(this.rc);
      this.rc = grown;
    }
    this.rc[cluster]++;
  }

  private table(vcl: number): { t: DataView; at: number } {
    const i = Math.floor(vcl / this.l2Entries);
    let t = this.l2[i];
    if (!t) t = this.l2[i] = new Uint8Array(this.clusterSize);
    return { t: new DataView(t.buffer, t.byteOffset, t.length), at: (vcl % this.l2Entries) * L2_ENTRY_SIZE };
  }

  private setEntry(vcl: number, hi: number, lo: number): void {
    const { t, at } = this.table(vcl);
    t.setUint32(at, hi);
    t.setUint32(at + 4, lo);
  }

  private setZero(vcl: number): void {
    const { t, at } = this.table(vcl);
    if (t.getUint32(at) === 0 && t.getUint32(at + 4) === 0) t.setUint32(at + 4, OFLAG_ZERO);
  }

  private async issue(buf: Uint8Array, at: number): Promise<void> {
    this.bytesWritten += buf.length;
    await writeAll(this.fh, buf, at, this.path, 'qcow2 data cluster');
  }

  async finish(): Promise<WriterResult> {
    const cs = this.clusterSize;
    this.alignHead();
    let next = this.head / cs;
    // L2 tables, then the L1 table.
    const l1 = new Uint8Array(Math.ceil((this.l1Size * L2_ENTRY_SIZE) / cs) * cs); // none for an empty disk
    const l1v = new DataView(l1.buffer);
    const l2Host: number[] = [];
    for (let i = 0; i < this.l1Size; i++) {
      if (!this.l2[i]) continue;
      const host = next++ * cs;
      l2Host.push(i, host);
      l1v.setUint32(i * L2_ENTRY_SIZE, OFLAG_COPIED + Math.floor(host / TWO32));
      l1v.setUint32(i * L2_ENTRY_SIZE + 4, host % TWO32);
    }
    const l1Offset = l1.length > 0 ? next * cs : 0;
    next += l1.length / cs;
    // Refcount table and blocks must also count themselves: find the fixed point.
    const perBlock = cs / 2;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = next + blocks + tableClusters;
      const b = Math.ceil(total / perBlock);
      const t = Math.ceil((b * 8) / cs);
      if (b === blocks && t === tableClusters) break;
      blocks = b;
      tableClusters = t;
    }
    const rtOffset = next * cs;
    const firstBlock = next + tableClusters;
    const total = firstBlock + blocks;
    const rt = new Uint8Array(tableClusters * cs);
    const rtv = new DataView(rt.buffer);
    for (let i = 0; i < blocks; i++) {
      const host = (firstBlock + i) * cs;
      rtv.setUint32(i * 8, Math.floor(host / TWO32));
      rtv.setUint32(i * 8 + 4, host % TWO32);
    }
    const rb = new Uint8Array(blocks * cs);
    const rbv = new DataView(rb.buffer);
    const dataClusters = this.head / cs;
    for (let k = 0; k < total; k++) {
      const r = k < dataClusters ? (k < this.rc.length ? this.rc[k] : 0) : 1;
      if (r) rbv.setUint16(k * 2, r);
    }
    for (let j = 0; j < l2Host.length; j += 2) {
      await this.issue(this.l2[l2Host[j]]!, l2Host[j + 1]);
    }
    if (l1.length > 0) await this.issue(l1, l1Offset);
    await this.issue(rt, rtOffset);
    await this.issue(rb, firstBlock * cs);
    // Header last: until now cluster 0 holds no magic, so a torn file is not an image.
    const h = new DataView(this.header.buffer, this.header.byteOffset, this.header.length);
    h.setUint32(HDR.l1Size, this.l1Size);
    setU64(h, HDR.l1TableOffset, l1Offset);
    setU64(h, HDR.refcountTableOffset, rtOffset);
    h.setUint32(HDR.refcountTableClusters, tableClusters);
    await writeAll(this.fh, this.header, 0, this.path, 'qcow2 header');
    this.bytesWritten += this.header.length;
    await this.fh.truncate(total * cs);
    return { bytesWritten: this.bytesWritten };
  }

  /** Header, extensions and backing name: everything must fit in cluster 0. */
  private buildHeaderCluster(): Uint8Array {
    const cs = this.clusterSize;
    const enc = new TextEncoder();
    const exts: Array<{ type: number; data: Uint8Array }> = [];
    const backing = this.opts.backing;
    const name = backing ? enc.encode(backing.path) : new Uint8Array(0);
    if (backing) {
      if (name.length === 0 || name.length > MAX_BACKING_NAME) {
        throw new StrataError('USAGE', `backing file name must be 1 to 1023 bytes, not ${name.length}`, {
          file: this.path,
          structure: 'qcow2 backing file name',
        });
      }
      if (backing.format) exts.push({ type: EXT_BACKING_FORMAT, data: enc.encode(backing.format) });
    }
    const features = featureNameTable();
    const used = (list: typeof exts) =>
      HEADER_LENGTH +
      list.reduce((s, e) => s + EXT_HEADER_SIZE + Math.ceil(e.data.length / 8) * 8, 0) +
      EXT_HEADER_SIZE +
      name.length;
    if (used([...exts, { type: EXT_FEATURE_NAMES, data: features }]) <= cs) {
      exts.push({ type: EXT_FEATURE_NAMES, data: features });
    }
    if (used(exts) > cs) {
      throw new StrataError('USAGE', `header, extensions and backing name do not fit in one ${cs}-byte cluster`, {
        file: this.path,
        structure: 'qcow2 header',
      });
    }
    const buf = new Uint8Array(cs);
    const v = new DataView(buf.buffer);
    v.setUint32(HDR.magic, QCOW2_MAGIC);
    v.setUint32(HDR.version, 3);
    v.setUint32(HDR.clusterBits, this.clusterBits);
    setU64(v, HDR.size, this.virtualSize);
    const zstd = this.opts.compression === 'zstd';
    setU64(v, HDR.incompatibleFeatures, zstd ? INCOMPAT_COMPRESSION : 0);
    v.setUint32(HDR.refcountOrder, REFCOUNT_ORDER);
    v.setUint32(HDR.headerLength, HEADER_LENGTH);
    buf[HDR.compressionType] = zstd ? COMPRESSION_ZSTD : COMPRESSION_ZLIB;
    let at = HEADER_LENGTH;
    for (const e of exts) {
      v.setUint32(at, e.type);
      v.setUint32(at + 4, e.data.length);
      buf.set(e.data, at + EXT_HEADER_SIZE);
      at += EXT_HEADER_SIZE + Math.ceil(e.data.length / 8) * 8;
    }
    v.setUint32(at, EXT_END);
    v.setUint32(at + 4, 0);
    at += EXT_HEADER_SIZE;
    if (backing) {
      setU64(v, HDR.backingFileOffset, at);
      v.setUint32(HDR.backingFileSize, name.length);
      buf.set(name, at);
      at += name.length;
    }
    return buf.subarray(0, Math.ceil(at / 512) * 512);
  }
}

function setU64(v: DataView, at: number, n: number): void {
  v.setUint32(at, Math.floor(n / TWO32));
  v.setUint32(at + 4, n % TWO32);
}

/** Names for the feature bits a reader may meet (type, bit, name), 48 bytes each. */
function featureNameTable(): Uint8Array {
  const names: Array<[number, number, string]> = [
    [FEATURE_INCOMPATIBLE, 0, 'dirty'],
    [FEATURE_INCOMPATIBLE, 1, 'corrupt'],
    [FEATURE_INCOMPATIBLE, 2, 'external data file'],
    [FEATURE_INCOMPATIBLE, 3, 'compression type'],
    [FEATURE_INCOMPATIBLE, 4, 'extended L2 entries'],
    [FEATURE_COMPATIBLE, 0, 'lazy refcounts'],
    [FEATURE_AUTOCLEAR, 0, 'bitmaps'],
    [FEATURE_AUTOCLEAR, 1, 'raw external data'],
  ];
  return encodeFeatureNames(names);
}
