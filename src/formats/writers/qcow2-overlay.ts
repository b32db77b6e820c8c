import { existsSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import {
  type ByteSource,
  clampRead,
  clampStatus,
  type Extent,
  pushExtent,
  readIntoOrCopy,
  statusOf,
} from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import {
  HDR,
  INCOMPAT_DIRTY,
  L2_ENTRY_SIZE,
  OFFSET_MASK_HI,
  OFLAG_COMPRESSED,
  OFLAG_COPIED,
  OFLAG_ZERO,
  QCOW2_MAGIC,
  TWO32,
} from '../qcow2/layout.js';
import {
  buildHeader,
  CLUSTER_BITS,
  CS,
  encodeL2,
  encodeOffsets,
  encodeRefBlock,
  type L2,
  L2_ENTRIES,
  type OverlayBackingRef,
  RC_PER_BLOCK,
  REFCOUNT_ORDER,
  u64,
} from './qcow2-overlay-layout.js';
import { writeAll } from './writer.js';

export type { OverlayBackingRef } from './qcow2-overlay-layout.js';

/**
 * A read-write qcow2 (version 3) overlay over a ByteSource: what is written lands here,
 * in 64 KiB clusters appended at the end of the file (a partial write first copies the
 * rest of its cluster from below); everything else reads through to the backing source.
 * L1, L2 and refcount tables are kept in memory and written on `flush()`. While open the
 * header's dirty bit is set, so after a crash qemu rebuilds the refcounts; `close()` flushes
 * and clears it, after which `qemu-img check` finds the image clean.
 *
 * Concurrent writes are safe: allocating writes to one cluster are serialized, and a
 * cluster's L2 entry is set only once its data is in the file, so readers see either the
 * old bytes or the new ones.
 */
export class Qcow2Overlay implements ByteSource {
  readonly name: string;
  /** The backing source's size: the disk the overlay presents. */
  readonly size: number;
  private readonly l1Size: number;
  private readonly l1: Float64Array;
  private readonly l2: Array<L2 | undefined>;
  private readonly refTable: Float64Array;
  private readonly refBlocks = new Map<number, Uint16Array>();
  private readonly dirtyL2 = new Set<number>();
  private readonly dirtyRef = new Set<number>();
  private tablesDirty = true;
  private next: number;
  private readonly locks = new Map<number, Promise<void>>();
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    private readonly backing: ByteSource,
    private readonly header: Uint8Array,
    private readonly l1Offset: number,
    private readonly rtOffset: number,
    rtClusters: number,
    next: number,
  ) {
    this.name = path;
    this.size = backing.size;
    const dv = new DataView(header.buffer, header.byteOffset, header.length);
    this.l1Size = dv.getUint32(HDR.l1Size);
    this.l1 = new Float64Array(this.l1Size);
    this.l2 = new Array(this.l1Size);
    this.refTable = new Float64Array((rtClusters * CS) / 8);
    this.next = next;
  }

  /** Reopen `file` when it exists (it must be a clean overlay of ours on this backing), else create it. */
  static async openOrCreate(file: string, backing: ByteSource, ref: OverlayBackingRef): Promise<Qcow2Overlay> {
    return existsSync(file) ? Qcow2Overlay.reopen(file, backing, ref) : Qcow2Overlay.create(file, backing, ref);
  }

  /** A new, empty overlay (fails if `file` exists). */
  static async create(file: string, backing: ByteSource, ref: OverlayBackingRef): Promise<Qcow2Overlay> {
    const virtualSize = Math.ceil(backing.size / 512) * 512;
    const dataClusters = Math.ceil(virtualSize / CS);
    const l1Size = Math.ceil(dataClusters / L2_ENTRIES);
    const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / CS));
    if (l1Size * 8 > 32 << 20) {
      throw new StrataError('LIMIT', `a ${virtualSize}-byte disk needs an L1 table above 32 MiB`, { file });
    }
    // Every cluster the file can ever hold: header, L1, refcount table, data, L2 tables, refcount blocks.
    const most = 1 + l1Clusters + dataClusters + l1Size + 64;
    const rtClusters = Math.ceil(((Math.ceil(most / RC_PER_BLOCK) + 2) * 8) / CS);
    const l1Offset = CS;
    const rtOffset = (1 + l1Clusters) * CS;
    const header = buildHeader(file, virtualSize, ref, l1Size, l1Offset, rtOffset, rtClusters);
    let fh: FileHandle;
    try {
      fh = await open(file, 'wx+');
    } catch (e) {
      throw new StrataError('IO', `cannot create overlay: ${(e as Error).message}`, { file });
    }
    const fixed = 1 + l1Clusters + rtClusters; // header, L1 table, refcount table
    const o = new Qcow2Overlay(fh, file, backing, header, l1Offset, rtOffset, rtClusters, fixed);
    try {
      for (let c = 0; c < fixed; c++) o.addRef(c);
      await writeAll(fh, header, 0, file, 'qcow2 header');
      await o.flush();
      return o;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Reopen an overlay Strata made: same cluster size and refcount width, closed cleanly, same backing. */
  static async reopen(file: string, backing: ByteSource, ref: OverlayBackingRef): Promise<Qcow2Overlay> {
    let fh: FileHandle;
    try {
      fh = await open(file, 'r+');
    } catch (e) {
      throw new StrataError('IO', `cannot open overlay: ${(e as Error).message}`, { file });
    }
    try {
      const fileSize = (await fh.stat()).size;
      const head = new Uint8Array(CS);
      await fh.read(head, 0, CS, 0);
      const dv = new DataView(head.buffer);
      const where = (structure: string, offset?: number) => ({ file, structure, offset });
      if (dv.getUint32(HDR.magic) !== QCOW2_MAGIC || dv.getUint32(HDR.version) !== 3) {
        throw new StrataError(
          'USAGE',
          'exists and is not a qcow2 v3 overlay; remove it or name another',
          where('header', 0),
        );
      }
      if (dv.getUint32(HDR.clusterBits) !== CLUSTER_BITS || dv.getUint32(HDR.refcountOrder) !== REFCOUNT_ORDER) {
        throw new StrataError(
          'UNSUPPORTED',
          'only overlays with 64 KiB clusters and 16-bit refcounts can be reopened',
          where('header', HDR.clusterBits),
        );
      }
      const incompat = u64(dv, HDR.incompatibleFeatures);
      if (incompat & INCOMPAT_DIRTY) {
        throw new StrataError(
          'CORRUPT',
          'overlay was not closed cleanly (dirty bit set); repair it with `qemu-img check -r all` first',
          where('header', HDR.incompatibleFeatures),
        );
      }
      if (incompat !== 0)
        throw new StrataError(
          'UNSUPPORTED',
          `incompatible features 0x${incompat.toString(16)}`,
          where('header', HDR.incompatibleFeatures),
        );
      const virtualSize = u64(dv, HDR.size);
      if (virtualSize !== Math.ceil(backing.size / 512) * 512) {
        throw new StrataError(
          'USAGE',
          `overlay is ${virtualSize} bytes but the export is ${backing.size}`,
          where('header', HDR.size),
        );
      }
      const nameOff = u64(dv, HDR.backingFileOffset);
      const nameLen = dv.getUint32(HDR.backingFileSize);
      if (nameOff + nameLen > CS)
        throw new StrataError('CORRUPT', 'backing file name outside cluster 0', where('header', HDR.backingFileOffset));
      const recorded = new TextDecoder().decode(head.subarray(nameOff, nameOff + nameLen));
      if (recorded !== ref.path) {
        throw new StrataError(
          'USAGE',
          `overlay backs onto '${recorded}', not '${ref.path}'`,
          where('backing file name', nameOff),
        );
      }
      const l1Size = dv.getUint32(HDR.l1Size);
      const l1Offset = u64(dv, HDR.l1TableOffset);
      const rtOffset = u64(dv, HDR.refcountTableOffset);
      const rtClusters = dv.getUint32(HDR.refcountTableClusters);
      if (
        l1Size !== Math.ceil(Math.ceil(virtualSize / CS) / L2_ENTRIES) ||
        l1Offset % CS !== 0 ||
        l1Offset + l1Size * L2_ENTRY_SIZE > fileSize
      ) {
        throw new StrataError('CORRUPT', 'L1 table out of bounds', where('L1 table', l1Offset));
      }
      if (rtOffset % CS !== 0 || rtClusters === 0 || rtClusters > 1024 || rtOffset + rtClusters * CS > fileSize) {
        throw new StrataError('CORRUPT', 'refcount table out of bounds', where('refcount table', rtOffset));
      }
      const o = new Qcow2Overlay(
        fh,
        file,
        backing,
        head.slice(0, 512),
        l1Offset,
        rtOffset,
        rtClusters,
        Math.ceil(fileSize / CS),
      );
      await o.load(fileSize);
      o.tablesDirty = false;
      await o.setDirtyBit(true);
      return o;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Read L1, L2 tables and refcount blocks of a reopened overlay, checking every offset. */
  private async load(fileSize: number): Promise<void> {
    const hostOf = (hi: number, lo: number, structure: string, at: number): number => {
      const host = (hi & OFFSET_MASK_HI) * TWO32 + (lo - (lo & 0x1ff)); // bits 9-55
      if (host % CS !== 0 || host + CS > Math.ceil(fileSize / CS) * CS) {
        throw new StrataError('CORRUPT', `entry points to ${host}, outside the file or unaligned`, {
          file: this.path,
          structure,
          offset: at,
        });
      }
      return host;
    };
    const E = L2_ENTRY_SIZE;
    const l1 = await this.readTable(this.l1Offset, this.l1Size * E);
    const l1v = new DataView(l1.buffer);
    for (let i = 0; i < this.l1Size; i++) {
      const hi = l1v.getUint32(i * E);
      const lo = l1v.getUint32(i * E + 4);
      if (hi === 0 && lo === 0) continue;
      const t = hostOf(hi, lo, 'L1 table', this.l1Offset + i * E);
      this.l1[i] = t;
      const raw = new DataView((await this.readTable(t, CS)).buffer);
      const tab: L2 = { host: new Float64Array(L2_ENTRIES), zero: new Uint8Array(L2_ENTRIES) };
      for (let k = 0; k < L2_ENTRIES; k++) {
        const ehi = raw.getUint32(k * E);
        const elo = raw.getUint32(k * E + 4);
        if (ehi & OFLAG_COMPRESSED) {
          throw new StrataError('UNSUPPORTED', 'compressed cluster in an overlay', {
            file: this.path,
            structure: 'L2 table',
            offset: t + k * E,
          });
        }
        tab.zero[k] = elo & OFLAG_ZERO;
        if ((ehi & OFFSET_MASK_HI) !== 0 || elo >>> 9 !== 0) tab.host[k] = hostOf(ehi, elo, 'L2 table', t + k * E);
      }
      this.l2[i] = tab;
    }
    const rt = new DataView((await this.readTable(this.rtOffset, this.refTable.length * E)).buffer);
    for (let i = 0; i < this.refTable.length; i++) {
      const hi = rt.getUint32(i * E);
      const lo = rt.getUint32(i * E + 4);
      if (hi === 0 && lo === 0) continue;
      const b = hostOf(hi, lo, 'refcount table', this.rtOffset + i * E);
      this.refTable[i] = b;
      const raw = await this.readTable(b, CS);
      const blk = new Uint16Array(RC_PER_BLOCK);
      const v = new DataView(raw.buffer);
      for (let k = 0; k < RC_PER_BLOCK; k++) blk[k] = v.getUint16(k * 2);
      this.refBlocks.set(i, blk);
    }
  }

  private async readTable(offset: number, length: number): Promise<Uint8Array> {
    const b = new Uint8Array(length);
    const { bytesRead } = await this.fh.read(b, 0, length, offset);
    if (bytesRead !== length) {
      throw new StrataError('TRUNCATED', `short read of ${length} bytes`, {
        file: this.path,
        structure: 'qcow2 table',
        offset,
      });
    }
    return b;
  }

  // ---- reading ------------------------------------------------------------------------

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    const out = new Uint8Array(n);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, out: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, out.length);
    const jobs: Promise<void>[] = [];
    // Runs of clusters of one kind: host clusters contiguous in the file, zeros, or below.
    let runKind = -1; // 0 host, 1 zero, 2 below
    let runStart = 0; // position in out
    let runHost = 0;
    let runEnd = 0;
    const flush = () => {
      if (runEnd <= runStart) return;
      const dst = out.subarray(runStart, runEnd);
      if (runKind === 0) jobs.push(this.pread(dst, runHost));
      else if (runKind === 1) dst.fill(0);
      else jobs.push(readBelow(this.backing, offset + runStart, dst));
    };
    let pos = 0;
    while (pos < n) {
      const v = offset + pos;
      const vcl = Math.floor(v / CS);
      const inCl = v - vcl * CS;
      const len = Math.min(CS - inCl, n - pos);
      const t = this.l2[Math.floor(vcl / L2_ENTRIES)];
      const k = vcl % L2_ENTRIES;
      const kind = !t ? 2 : t.zero[k] ? 1 : t.host[k] ? 0 : 2;
      const host = kind === 0 ? t!.host[k] + inCl : 0;
      if (kind !== runKind || (kind === 0 && host !== runHost + (runEnd - runStart))) {
        flush();
        runKind = kind;
        runStart = pos;
        runHost = host;
      }
      pos += len;
      runEnd = pos;
    }
    flush();
    await Promise.all(jobs);
    return n;
  }

  private async pread(dst: Uint8Array, at: number): Promise<void> {
    let done = 0;
    while (done < dst.length) {
      const { bytesRead } = await this.fh.read(dst, done, dst.length - done, at + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done < dst.length) dst.fill(0, done);
  }

  /** data / zero for what the overlay holds; the backing source's own status elsewhere. */
  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    const out: Extent[] = [];
    let pos = offset;
    const end = offset + n;
    while (pos < end) {
      const vcl = Math.floor(pos / CS);
      const t = this.l2[Math.floor(vcl / L2_ENTRIES)];
      const k = vcl % L2_ENTRIES;
      const clEnd = Math.min(end, (vcl + 1) * CS);
      if (t && (t.zero[k] || t.host[k])) {
        pushExtent(out, pos, clEnd - pos, t.zero[k] ? 'zero' : 'data');
        pos = clEnd;
        continue;
      }
      // A run of clusters that are not here: ask below once for all of it.
      let runEnd = clEnd;
      while (runEnd < end) {
        const c = runEnd / CS;
        const u = this.l2[Math.floor(c / L2_ENTRIES)];
        if (u && (u.zero[c % L2_ENTRIES] || u.host[c % L2_ENTRIES])) break;
        runEnd = Math.min(end, runEnd + CS);
      }
      const inB = Math.max(0, Math.min(runEnd, this.backing.size) - pos);
      if (inB > 0) for (const e of await statusOf(this.backing, pos, inB)) pushExtent(out, e.offset, e.length, e.kind);
      pushExtent(out, pos + inB, runEnd - pos - inB, 'unallocated');
      pos = runEnd;
    }
    return out;
  }

  // ---- writing ------------------------------------------------------------------------

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkRange(offset, data.length);
    const jobs: Promise<void>[] = [];
    let pos = 0;
    while (pos < data.length) {
      const v = offset + pos;
      const vcl = Math.floor(v / CS);
      const inCl = v - vcl * CS;
      const len = Math.min(CS - inCl, data.length - pos);
      jobs.push(this.writeCluster(vcl, inCl, data.subarray(pos, pos + len)));
      pos += len;
    }
    await Promise.all(jobs);
  }

  private async writeCluster(vcl: number, inCl: number, bytes: Uint8Array): Promise<void> {
    const t = this.l2[Math.floor(vcl / L2_ENTRIES)];
    const k = vcl % L2_ENTRIES;
    // Fast path: the cluster is ours and holds data: write in place.
    if (t?.host[k] && !t.zero[k] && !this.locks.has(vcl)) return this.pwrite(bytes, t.host[k] + inCl);
    await this.locked(vcl, async () => {
      const cur = this.l2[Math.floor(vcl / L2_ENTRIES)];
      const host = cur ? cur.host[k] : 0;
      const zero = cur ? cur.zero[k] : 0;
      if (host && !zero) return this.pwrite(bytes, host + inCl);
      let buf = bytes;
      if (bytes.length !== CS) {
        buf = new Uint8Array(CS);
        if (!zero) await readBelow(this.backing, vcl * CS, buf);
        buf.set(bytes, inCl);
      }
      const target = host || this.allocCluster();
      await this.pwrite(buf, target);
      this.setEntry(vcl, target, 0);
    });
  }

  /** Zeros: whole clusters by the zero flag (keeping any cluster they had), partial ones by writing zeros. */
  async writeZeroes(offset: number, length: number, _mayTrim = true): Promise<void> {
    this.checkRange(offset, length);
    const end = offset + length;
    const jobs: Promise<void>[] = [];
    let pos = offset;
    while (pos < end) {
      const vcl = Math.floor(pos / CS);
      const clEnd = Math.min(end, (vcl + 1) * CS);
      const whole = pos === vcl * CS && (clEnd === (vcl + 1) * CS || clEnd >= this.size);
      if (whole) jobs.push(this.locked(vcl, async () => this.setZero(vcl)));
      else jobs.push(this.writeCluster(vcl, pos - vcl * CS, new Uint8Array(clEnd - pos)));
      pos = clEnd;
    }
    await Promise.all(jobs);
  }

  /** Trim: whole clusters read as zeros afterwards; partial ones are left as they are. */
  async trim(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    const first = Math.ceil(offset / CS);
    const endCl = offset + length >= this.size ? Math.ceil(this.size / CS) : Math.floor((offset + length) / CS);
    const jobs: Promise<void>[] = [];
    for (let vcl = first; vcl < endCl; vcl++) jobs.push(this.locked(vcl, async () => this.setZero(vcl)));
    await Promise.all(jobs);
  }

  private setZero(vcl: number): void {
    const t = this.l2[Math.floor(vcl / L2_ENTRIES)];
    this.setEntry(vcl, t ? t.host[vcl % L2_ENTRIES] : 0, 1);
  }

  private checkRange(offset: number, length: number): void {
    if (this.closed) throw new StrataError('USAGE', 'overlay is closed', { file: this.path });
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > this.size
    ) {
      throw new StrataError('USAGE', `write of ${length} bytes at ${offset} outside the ${this.size}-byte disk`, {
        file: this.path,
      });
    }
  }

  private async locked(vcl: number, fn: () => Promise<void>): Promise<void> {
    for (let held = this.locks.get(vcl); held; held = this.locks.get(vcl)) await held;
    let release!: () => void;
    this.locks.set(vcl, new Promise<void>((r) => (release = r)));
    try {
      await fn();
    } finally {
      this.locks.delete(vcl);
      release();
    }
  }

  private async pwrite(buf: Uint8Array, at: number): Promise<void> {
    await writeAll(this.fh, buf, at, this.path, 'qcow2 data cluster');
  }

  /** Point virtual cluster `vcl` at `host` (0: none) with the zero flag; makes its L2 table if needed. */
  private setEntry(vcl: number, host: number, zero: number): void {
    const i = Math.floor(vcl / L2_ENTRIES);
    let t = this.l2[i];
    if (!t) {
      t = { host: new Float64Array(L2_ENTRIES), zero: new Uint8Array(L2_ENTRIES) };
      this.l2[i] = t;
      this.l1[i] = this.allocCluster();
      this.tablesDirty = true;
    }
    t.host[vcl % L2_ENTRIES] = host;
    t.zero[vcl % L2_ENTRIES] = zero;
    this.dirtyL2.add(i);
  }

  /** The next cluster at the end of the file, counted in the refcounts (byte offset). */
  private allocCluster(): number {
    const c = this.next++;
    this.addRef(c);
    return c * CS;
  }

  private addRef(c: number): void {
    const bi = Math.floor(c / RC_PER_BLOCK);
    if (bi >= this.refTable.length) {
      throw new StrataError('LIMIT', 'overlay outgrew its refcount table', {
        file: this.path,
        structure: 'refcount table',
      });
    }
    let blk = this.refBlocks.get(bi);
    if (!blk) {
      blk = new Uint16Array(RC_PER_BLOCK);
      this.refBlocks.set(bi, blk);
      const r = this.next++;
      this.refTable[bi] = r * CS;
      this.tablesDirty = true;
      this.addRef(r);
    }
    blk[c % RC_PER_BLOCK] = 1;
    this.dirtyRef.add(bi);
  }

  // ---- durability ---------------------------------------------------------------------

  /** Make every completed write durable: data first, then the tables that point to it. */
  flush(): Promise<void> {
    const run = this.flushing.then(() => this.flushNow());
    this.flushing = run.catch(() => {});
    return run;
  }

  private async flushNow(): Promise<void> {
    // Snapshot the tables now (synchronously), so later changes wait for the next flush.
    const writes: Array<[Uint8Array, number]> = [];
    for (const i of this.dirtyL2) writes.push([encodeL2(this.l2[i]!), this.l1[i]]);
    this.dirtyL2.clear();
    for (const bi of this.dirtyRef) writes.push([encodeRefBlock(this.refBlocks.get(bi)!), this.refTable[bi]]);
    this.dirtyRef.clear();
    if (this.tablesDirty) {
      writes.push([encodeOffsets(this.l1, OFLAG_COPIED, CS), this.l1Offset]);
      writes.push([encodeOffsets(this.refTable, 0, CS), this.rtOffset]);
      this.tablesDirty = false;
    }
    if (writes.length === 0) return;
    await this.fh.datasync();
    await Promise.all(writes.map(([b, at]) => writeAll(this.fh, b, at, this.path, 'qcow2 metadata')));
    await this.fh.datasync();
  }

  private async setDirtyBit(on: boolean): Promise<void> {
    const dv = new DataView(this.header.buffer, this.header.byteOffset, this.header.length);
    const at = HDR.incompatibleFeatures;
    dv.setUint32(at + 4, on ? INCOMPAT_DIRTY : 0);
    await writeAll(this.fh, this.header.subarray(at, at + 8), at, this.path, 'qcow2 header');
    await this.fh.datasync();
  }

  /** Flush, mark the image clean and close the file. The backing source stays open. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await Promise.all([...this.locks.values()]);
      await this.flush();
      await this.setDirtyBit(false);
    } finally {
      await this.fh.close();
    }
  }
}

/** Fill `out` with the backing source's bytes at `offset` (zeros past its end). */
async function readBelow(src: ByteSource, offset: number, out: Uint8Array): Promise<void> {
  const n = Math.max(0, Math.min(out.length, src.size - offset));
  const got = n > 0 ? await readIntoOrCopy(src, offset, out.subarray(0, n)) : 0;
  if (got < out.length) out.fill(0, got);
}
