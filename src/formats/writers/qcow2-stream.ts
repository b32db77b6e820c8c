import { StrataError } from '../../util/errors.js';
import {
  DEFAULT_REFCOUNT_ORDER,
  EXT_END,
  HDR,
  L2_ENTRY_SIZE,
  MAX_L1_BYTES,
  OFLAG_COPIED,
  QCOW2_MAGIC,
  TWO32,
  V3_HEADER_LENGTH_WITH_COMPRESSION,
} from '../qcow2/layout.js';

/**
 * A qcow2 image laid out before a byte of it is sent, so it can be streamed front to back
 * (an HTTP download) with a known length and any byte range answerable on its own: the
 * Qcow2Writer seeks back to write its metadata last, which a stream cannot.
 *
 * Knowing which virtual clusters hold data (from a version's manifest), the file is:
 * header (cluster 0), L1 table, refcount table, refcount blocks (16-bit, every used host
 * cluster counted once), L2 tables (one per L1 entry that maps anything), then the data
 * clusters in virtual order. No compression (sizes would not be known up front). Every
 * metadata cluster is computed on demand, so memory stays small for large disks.
 */
export interface Qcow2StreamPlan {
  readonly virtualSize: number;
  readonly clusterSize: number;
  /** Bytes of the whole file. */
  readonly size: number;
  /** Virtual cluster index of each data cluster, ascending (host cluster dataStart + k). */
  readonly clusters: Uint32Array;
  readonly l1Start: number;
  readonly l1Clusters: number;
  readonly l1Size: number;
  readonly rtStart: number;
  readonly rtClusters: number;
  readonly rbStart: number;
  readonly rbClusters: number;
  /** Host cluster of the first L2 table; L1 entries that map something, in order. */
  readonly l2Start: number;
  readonly l2Tables: Uint32Array;
  readonly dataStart: number;
  readonly hostClusters: number;
}

const REFCOUNT_ORDER = DEFAULT_REFCOUNT_ORDER;

/** Plan the file for a disk of `virtualSize` whose data lies in `extents` ([offset, length], any order). */
export function planQcow2Stream(
  virtualSize: number,
  extents: Iterable<readonly [number, number]>,
  clusterSize = 65536,
): Qcow2StreamPlan {
  const cs = clusterSize;
  if (!Number.isInteger(cs) || cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) !== 0) {
    throw new StrataError('USAGE', `qcow2 cluster size must be a power of two from 512 to 2 MiB, not ${cs}`);
  }
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) {
    throw new StrataError('USAGE', `bad virtual size ${virtualSize}`);
  }
  // qemu counts qcow2 disks in 512-byte sectors: round up as the writer does.
  const vsize = Math.ceil(virtualSize / 512) * 512;
  const nClusters = Math.ceil(vsize / cs);
  if (nClusters >= TWO32) throw new StrataError('LIMIT', `a ${vsize}-byte disk has too many ${cs}-byte clusters`);
  const l2Entries = cs / L2_ENTRY_SIZE;
  const l1Size = Math.ceil(nClusters / l2Entries);
  if (l1Size * L2_ENTRY_SIZE > MAX_L1_BYTES) {
    throw new StrataError('LIMIT', `virtual size ${vsize} needs an L1 table above 32 MiB`);
  }
  // the data clusters: every cluster an extent touches, sorted, once
  const starts: number[] = [];
  for (const [off, len] of extents) {
    if (len <= 0) continue;
    if (off < 0 || off + len > vsize) throw new StrataError('USAGE', `extent ${off}+${len} is outside the disk`);
    const a = Math.floor(off / cs);
    const b = Math.ceil((off + len) / cs);
    for (let c = a; c < b; c++) starts.push(c);
  }
  const sorted = Uint32Array.from(starts).sort();
  let n = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[i - 1]) sorted[n++] = sorted[i];
  const clusters = sorted.slice(0, n);
  const tables: number[] = [];
  for (const c of clusters) {
    const t = Math.floor(c / l2Entries);
    if (tables.length === 0 || tables[tables.length - 1] !== t) tables.push(t);
  }
  const l1Clusters = Math.max(1, Math.ceil((l1Size * L2_ENTRY_SIZE) / cs));
  const perBlock = (cs * 8) / 2 ** REFCOUNT_ORDER;
  let rbClusters = 1;
  let rtClusters = 1;
  for (;;) {
    const total = 1 + l1Clusters + rtClusters + rbClusters + tables.length + clusters.length;
    const rb = Math.ceil(total / perBlock);
    const rt = Math.ceil((rb * 8) / cs);
    if (rb === rbClusters && rt === rtClusters) break;
    rbClusters = rb;
    rtClusters = rt;
  }
  const l1Start = 1;
  const rtStart = l1Start + l1Clusters;
  const rbStart = rtStart + rtClusters;
  const l2Start = rbStart + rbClusters;
  const dataStart = l2Start + tables.length;
  const hostClusters = dataStart + clusters.length;
  return {
    virtualSize: vsize,
    clusterSize: cs,
    size: hostClusters * cs,
    clusters,
    l1Start,
    l1Clusters,
    l1Size,
    rtStart,
    rtClusters,
    rbStart,
    rbClusters,
    l2Start,
    l2Tables: Uint32Array.from(tables),
    dataStart,
    hostClusters,
  };
}

/**
 * planQcow2Stream over data spans ([start, end), in disk order, as a version's dataSpans come)
 * widened to whole clusters and merged as they come: the same clusters, so the same plan,
 * holding one span per run of clusters rather than one per span (a 1,000,000-file version
 * has about that many spans: ~100 MiB of pairs on the heap of a qcow2 download).
 */
export async function planQcow2StreamOf(
  virtualSize: number,
  spans: AsyncIterable<readonly [number, number]>,
  clusterSize = 65536,
): Promise<Qcow2StreamPlan> {
  const cs = clusterSize;
  const vsize = Math.ceil(virtualSize / 512) * 512;
  const merged: Array<readonly [number, number]> = [];
  let from = -1;
  let to = -1;
  for await (const [a, b] of spans) {
    if (b <= a) continue;
    const s = Math.floor(a / cs) * cs;
    // a span past the disk stays past it (planQcow2Stream says so); the last cluster may be short
    const e = Math.max(b, Math.min(Math.ceil(b / cs) * cs, vsize));
    if (from >= 0 && s <= to) to = Math.max(to, e);
    else {
      if (from >= 0) merged.push([from, to - from]);
      from = s;
      to = e;
    }
  }
  if (from >= 0) merged.push([from, to - from]);
  return planQcow2Stream(virtualSize, merged, cs);
}

function setU64(v: DataView, at: number, x: number): void {
  v.setUint32(at, Math.floor(x / TWO32));
  v.setUint32(at + 4, x % TWO32);
}

/** First index i with a[i] >= x. */
function lowerBound(a: Uint32Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The bytes of metadata host cluster `h` (h < plan.dataStart). */
export function qcow2MetadataCluster(plan: Qcow2StreamPlan, h: number): Uint8Array {
  const cs = plan.clusterSize;
  const buf = new Uint8Array(cs);
  const v = new DataView(buf.buffer);
  if (h === 0) {
    v.setUint32(HDR.magic, QCOW2_MAGIC);
    v.setUint32(HDR.version, 3);
    v.setUint32(HDR.clusterBits, Math.log2(cs));
    setU64(v, HDR.size, plan.virtualSize);
    v.setUint32(HDR.l1Size, plan.l1Size);
    setU64(v, HDR.l1TableOffset, plan.l1Start * cs);
    setU64(v, HDR.refcountTableOffset, plan.rtStart * cs);
    v.setUint32(HDR.refcountTableClusters, plan.rtClusters);
    v.setUint32(HDR.refcountOrder, REFCOUNT_ORDER);
    v.setUint32(HDR.headerLength, V3_HEADER_LENGTH_WITH_COMPRESSION);
    v.setUint32(V3_HEADER_LENGTH_WITH_COMPRESSION, EXT_END);
    v.setUint32(V3_HEADER_LENGTH_WITH_COMPRESSION + 4, 0);
    return buf;
  }
  const perCluster = cs / 8; // u64 entries in a table cluster
  if (h >= plan.l1Start && h < plan.rtStart) {
    // L1: entry t -> its L2 table's host offset, when it maps anything
    const first = (h - plan.l1Start) * perCluster;
    const lo = lowerBound(plan.l2Tables, first);
    for (let k = lo; k < plan.l2Tables.length && plan.l2Tables[k] < first + perCluster; k++) {
      const t = plan.l2Tables[k];
      if (t >= plan.l1Size) break;
      const host = (plan.l2Start + k) * cs;
      v.setUint32((t - first) * 8, (Math.floor(host / TWO32) | OFLAG_COPIED) >>> 0);
      v.setUint32((t - first) * 8 + 4, host % TWO32);
    }
    return buf;
  }
  if (h >= plan.rtStart && h < plan.rbStart) {
    const first = (h - plan.rtStart) * perCluster;
    for (let i = first; i < Math.min(plan.rbClusters, first + perCluster); i++) {
      setU64(v, (i - first) * 8, (plan.rbStart + i) * cs);
    }
    return buf;
  }
  if (h >= plan.rbStart && h < plan.l2Start) {
    // every used host cluster is referenced once
    const per = cs / 2;
    const first = (h - plan.rbStart) * per;
    for (let k = first; k < Math.min(plan.hostClusters, first + per); k++) v.setUint16((k - first) * 2, 1);
    return buf;
  }
  if (h >= plan.l2Start && h < plan.dataStart) {
    const t = plan.l2Tables[h - plan.l2Start];
    const first = t * perCluster;
    const lo = lowerBound(plan.clusters, first);
    for (let k = lo; k < plan.clusters.length && plan.clusters[k] < first + perCluster; k++) {
      const host = (plan.dataStart + k) * cs;
      const at = (plan.clusters[k] - first) * 8;
      v.setUint32(at, (Math.floor(host / TWO32) | OFLAG_COPIED) >>> 0);
      v.setUint32(at + 4, host % TWO32);
    }
    return buf;
  }
  throw new StrataError('USAGE', `host cluster ${h} is not metadata`);
}

/**
 * Bytes [start, end) of the planned file. `read(offset, out)` fills `out` with the virtual
 * disk's bytes at `offset` (past the disk's end: zeros). A run of data clusters is read into
 * `alloc(n)` (contents need not be zero; a server hands out reused pieces) and yielded whole.
 */
export async function* qcow2StreamBytes(
  plan: Qcow2StreamPlan,
  read: (offset: number, out: Uint8Array) => Promise<void>,
  start = 0,
  end = plan.size,
  batch = 4 * 1024 * 1024,
  alloc: (n: number) => Uint8Array | Promise<Uint8Array> = (n) => new Uint8Array(n),
): AsyncGenerator<Uint8Array> {
  const cs = plan.clusterSize;
  end = Math.min(end, plan.size);
  let h = Math.floor(start / cs);
  while (h * cs < end) {
    const skip = Math.max(0, start - h * cs);
    if (h < plan.dataStart) {
      const b = qcow2MetadataCluster(plan, h);
      yield b.subarray(skip, Math.min(cs, end - h * cs));
      h++;
      continue;
    }
    // a run of data clusters contiguous in the virtual disk, up to `batch` bytes
    const k0 = h - plan.dataStart;
    let k = k0 + 1;
    const maxRun = Math.max(1, Math.floor(batch / cs));
    while (
      k < plan.clusters.length &&
      k - k0 < maxRun &&
      plan.clusters[k] === plan.clusters[k - 1] + 1 &&
      (plan.dataStart + k) * cs < end
    )
      k++;
    const out = await alloc((k - k0) * cs);
    const voff = plan.clusters[k0] * cs;
    const inDisk = Math.max(0, Math.min(out.length, plan.virtualSize - voff));
    if (inDisk > 0) await read(voff, out.subarray(0, inDisk));
    if (inDisk < out.length) out.fill(0, inDisk);
    const from = skip;
    const to = Math.min(out.length, end - h * cs);
    yield out.subarray(from, to);
    h += k - k0;
  }
}
