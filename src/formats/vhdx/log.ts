import { type ByteSource, clampRead, readExact } from '../../io/byte-source.js';
import { crc32c } from '../../util/crc32c.js';
import { StrataError } from '../../util/errors.js';
import { hasSignature } from '../probe.js';
import { guidString, MiB } from './layout.js';

/*
 * VHDX log replay, in memory only ([MS-VHDX] 2.3): find the active sequence of log
 * entries (valid entries, consecutive sequence numbers, the newest one's Tail naming the
 * first), then lay their data and zero descriptors over the file as an overlay source.
 * The file itself is never written.
 */

const PAGE = 4096;
/** Largest log we replay (qemu writes 1 MiB; Hyper-V defaults are a few MiB). */
const MAX_LOG = 64 * MiB;
/** Largest file offset a descriptor may name. */
const MAX_OFFSET = 2 ** 50;

interface Entry {
  at: number; // offset inside the log
  length: number;
  tail: number;
  seq: bigint;
  bytes: Uint8Array;
  lastFileOffset: number;
}

interface Op {
  order: number;
  start: number;
  end: number;
  data?: Uint8Array; // a 4 KiB page; absent = zeros
}

export interface ReplayResult {
  source: ByteSource;
  entries: number;
  firstSeq: bigint;
  lastSeq: bigint;
}

const sig = hasSignature;

function u64(dv: DataView, at: number): number {
  const lo = dv.getUint32(at, true);
  const hi = dv.getUint32(at + 4, true);
  return hi >= 0x200000 ? Number.POSITIVE_INFINITY : hi * 2 ** 32 + lo;
}

/**
 * Replay the log of `src` (region [logOffset, logOffset+logLength), entries tagged with
 * `logGuid`). Returns undefined when the log holds no valid sequence (nothing to replay).
 */
export async function replayLog(
  src: ByteSource,
  logOffset: number,
  logLength: number,
  logGuid: string,
): Promise<ReplayResult | undefined> {
  const where = { file: src.name, structure: 'vhdx log', offset: logOffset };
  if (!Number.isSafeInteger(logOffset) || logOffset % MiB !== 0 || logOffset < MiB || logLength % MiB !== 0) {
    throw new StrataError('CORRUPT', `log region (${logLength} bytes at ${logOffset}) is not 1 MiB aligned`, where);
  }
  if (logLength === 0 || logLength > MAX_LOG) {
    throw new StrataError('UNSUPPORTED', `log of ${logLength} bytes is not replayed (limit ${MAX_LOG})`, where);
  }
  const log = await readExact(src, logOffset, logLength, 'vhdx log');
  const ldv = new DataView(log.buffer, log.byteOffset, log.byteLength);

  // Every 4 KiB boundary may start an entry; check the cheap fields before the CRC, and
  // bound the CRC work so a log of overlapping huge entries cannot make us spin.
  const entries = new Map<number, Entry>();
  let crcBudget = 8 * logLength;
  for (let at = 0; at < logLength; at += PAGE) {
    if (!sig(log, at, 'loge')) continue;
    const length = ldv.getUint32(at + 8, true);
    const tail = ldv.getUint32(at + 12, true);
    const count = ldv.getUint32(at + 24, true);
    if (length < PAGE || length % PAGE !== 0 || length > logLength || tail % PAGE !== 0 || tail >= logLength) continue;
    if (guidString(log.subarray(at + 32, at + 48)).toLowerCase() !== logGuid.toLowerCase()) continue;
    if (64 + count * 32 > length) continue;
    crcBudget -= length;
    if (crcBudget < 0) throw new StrataError('LIMIT', 'too many overlapping log entries to check', where);
    // The entry may wrap around the end of the circular log.
    const bytes = new Uint8Array(length);
    const first = Math.min(length, logLength - at);
    bytes.set(log.subarray(at, at + first), 0);
    if (first < length) bytes.set(log.subarray(0, length - first), first);
    const dv = new DataView(bytes.buffer);
    const sum = dv.getUint32(4, true);
    dv.setUint32(4, 0, true);
    const ok = crc32c(bytes) === sum;
    dv.setUint32(4, sum, true);
    if (!ok) continue;
    entries.set(at, { at, length, tail, seq: dv.getBigUint64(16, true), bytes, lastFileOffset: u64(dv, 56) });
  }
  if (entries.size === 0) return undefined;

  // The active sequence: the newest head whose chain from its Tail is whole.
  const heads = [...entries.values()].sort((a, b) => (a.seq < b.seq ? 1 : a.seq > b.seq ? -1 : 0));
  let steps = 0;
  let chosen: Entry[] | undefined;
  for (const head of heads) {
    const seqList: Entry[] = [];
    let at = head.tail;
    let expectSeq: bigint | undefined;
    let ok = false;
    for (let n = 0; n <= entries.size; n++) {
      if (++steps > 1_000_000) throw new StrataError('LIMIT', 'log sequence search took too many steps', where);
      const e = entries.get(at);
      if (!e || (expectSeq !== undefined && e.seq !== expectSeq)) break;
      seqList.push(e);
      if (e === head) {
        ok = true;
        break;
      }
      expectSeq = e.seq + 1n;
      at = (at + e.length) % logLength;
    }
    if (ok) {
      chosen = seqList;
      break;
    }
  }
  if (!chosen) return undefined;

  // Collect the descriptors' effects in order.
  const ops: Op[] = [];
  let order = 0;
  let end = src.size;
  for (const e of chosen) {
    const dv = new DataView(e.bytes.buffer);
    const count = dv.getUint32(24, true);
    const ew = { file: src.name, structure: `vhdx log entry ${e.seq}`, offset: logOffset + e.at };
    let dataAt = Math.ceil((64 + count * 32) / PAGE) * PAGE;
    for (let i = 0; i < count; i++) {
      const d = 64 + i * 32;
      const fileOffset = u64(dv, d + 16);
      if (dv.getBigUint64(d + 24, true) !== e.seq) {
        throw new StrataError('CORRUPT', `descriptor ${i} has a sequence number other than its entry's`, ew);
      }
      if (!Number.isSafeInteger(fileOffset) || fileOffset % PAGE !== 0 || fileOffset > MAX_OFFSET) {
        throw new StrataError('CORRUPT', `descriptor ${i} names file offset ${fileOffset}`, ew);
      }
      if (sig(e.bytes, d, 'zero')) {
        const len = u64(dv, d + 8);
        if (!Number.isSafeInteger(len) || len % PAGE !== 0 || fileOffset + len > MAX_OFFSET) {
          throw new StrataError('CORRUPT', `zero descriptor ${i} has length ${len}`, ew);
        }
        ops.push({ order: order++, start: fileOffset, end: fileOffset + len });
        end = Math.max(end, fileOffset + len);
      } else if (sig(e.bytes, d, 'desc')) {
        if (dataAt + PAGE > e.length || !sig(e.bytes, dataAt, 'data')) {
          throw new StrataError('CORRUPT', `data sector of descriptor ${i} is missing`, ew);
        }
        const high = dv.getUint32(dataAt + 4, true);
        const low = dv.getUint32(dataAt + 4092, true);
        if ((BigInt(high) << 32n) + BigInt(low) !== e.seq) {
          throw new StrataError('CORRUPT', `data sector of descriptor ${i} has a stale sequence number`, ew);
        }
        const page = new Uint8Array(PAGE);
        page.set(e.bytes.subarray(d + 8, d + 16), 0); // leading bytes
        page.set(e.bytes.subarray(dataAt + 8, dataAt + 4092), 8);
        page.set(e.bytes.subarray(d + 4, d + 8), 4092); // trailing bytes
        ops.push({ order: order++, start: fileOffset, end: fileOffset + PAGE, data: page });
        end = Math.max(end, fileOffset + PAGE);
        dataAt += PAGE;
      } else {
        throw new StrataError('CORRUPT', `descriptor ${i} has an unknown signature`, ew);
      }
    }
  }
  const last = chosen[chosen.length - 1];
  if (Number.isSafeInteger(last.lastFileOffset) && last.lastFileOffset <= MAX_OFFSET) {
    end = Math.max(end, last.lastFileOffset);
  }
  return {
    source: new OverlaySource(src, ops, end),
    entries: chosen.length,
    firstSeq: chosen[0].seq,
    lastSeq: last.seq,
  };
}

/** The file as it reads after the log's writes: later operations win over earlier ones. */
class OverlaySource implements ByteSource {
  readonly name: string;
  private readonly pages = new Map<number, Op>();
  private readonly zeros: Op[] = [];

  constructor(
    private readonly inner: ByteSource,
    ops: Op[],
    readonly size: number,
  ) {
    this.name = inner.name;
    for (const op of ops) {
      if (op.data) this.pages.set(op.start / PAGE, op);
      else this.zeros.push(op);
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    const out = new Uint8Array(n);
    const inFile = Math.max(0, Math.min(n, this.inner.size - offset));
    if (inFile > 0) out.set((await this.inner.read(offset, inFile)).subarray(0, inFile));
    const end = offset + n;
    const hits: Op[] = this.zeros.filter((z) => z.start < end && z.end > offset);
    for (let p = Math.floor(offset / PAGE); p * PAGE < end; p++) {
      const op = this.pages.get(p);
      if (op) hits.push(op);
    }
    hits.sort((a, b) => a.order - b.order);
    for (const op of hits) {
      const s = Math.max(op.start, offset);
      const e = Math.min(op.end, end);
      if (op.data) out.set(op.data.subarray(s - op.start, e - op.start), s - offset);
      else out.fill(0, s - offset, e - offset);
    }
    return out;
  }

  async close(): Promise<void> {
    await this.inner.close?.();
  }
}
