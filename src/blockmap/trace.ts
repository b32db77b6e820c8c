import { StrataError } from '../util/errors.js';
import { checkMemory } from '../util/memory.js';
import { BlockMap, type MapVolume, type Owner } from './block-map.js';
import { NO_NAME } from './claims.js';
import { classOf, KIND_CODE, KINDS, type Kind, type KindClass } from './kinds.js';
import type { MapRecords } from './map-file.js';
import { FileCounters, type FileRow, sortedRows } from './trace-files.js';

/** One block-level access of a trace: bytes [offset, offset+length) of the virtual disk. */
export interface TraceAccess {
  offset: number;
  length: number;
  time?: number | string;
  op?: string;
}

export interface ResolvedAccess extends TraceAccess {
  /** Every owner the access touched, clipped to it (fileOffset where the access enters a file). */
  owners: Owner[];
}

export interface TraceSummary {
  accesses: number;
  bytes: number;
  /** Accesses that start past the disk end (ignored) or run past it (clipped). */
  outside: number;
  byClass: Record<KindClass, { accesses: number; bytes: number }>;
  byKind: Array<{ kind: Kind; class: KindClass; accesses: number; bytes: number }>;
  /** Files and directories touched, most bytes first. */
  byFile: FileRow[];
}

/** Most bytes a trace line may hold (a longer one is not a trace). */
const MAX_LINE = 64 * 1024;

/**
 * Trace lines: JSON objects `{"offset": N, "length": N, "time": T, "op": "R"}` one per
 * line, or CSV `offset,length[,time,op]` (a first line that is not numeric is a header).
 * Numbers may be decimal or 0x-hex. Empty lines and lines starting with '#' are skipped.
 */
export function parseTraceLine(line: string, lineNo: number, file = 'trace'): TraceAccess | undefined {
  const t = line.trim();
  if (t === '' || t.startsWith('#')) return undefined;
  const bad = (why: string) =>
    new StrataError('CORRUPT', `line ${lineNo}: ${why}`, { file, structure: `trace line ${lineNo}` });
  if (t.length > MAX_LINE) throw bad(`longer than ${MAX_LINE} bytes`);
  let offset: unknown;
  let length: unknown;
  let time: unknown;
  let op: unknown;
  if (t.startsWith('{')) {
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(t) as Record<string, unknown>;
    } catch {
      throw bad('not valid JSON');
    }
    offset = typeof o.offset === 'string' ? Number(o.offset) : o.offset;
    length = typeof o.length === 'string' ? Number(o.length) : o.length;
    time = o.time;
    op = o.op;
  } else {
    const f = t.split(',');
    offset = Number(f[0]);
    length = Number(f[1]);
    if (lineNo === 1 && Number.isNaN(offset)) return undefined; // header
    if (f.length > 2 && f[2].trim() !== '') {
      const n = Number(f[2]);
      time = Number.isNaN(n) ? f[2].trim() : n;
    }
    if (f.length > 3) op = f[3].trim();
  }
  if (!Number.isSafeInteger(offset) || (offset as number) < 0) throw bad(`bad offset ${String(offset)}`);
  if (!Number.isSafeInteger(length) || (length as number) < 0) throw bad(`bad length ${String(length)}`);
  const a: TraceAccess = { offset: offset as number, length: length as number };
  if (typeof time === 'number' || typeof time === 'string') a.time = time;
  if (typeof op === 'string' && op !== '') a.op = op;
  return a;
}

/** Trace accesses from chunks of text (a file stream), parsed as they come. */
export async function* readTrace(
  chunks: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  file = 'trace',
): AsyncGenerator<TraceAccess> {
  for await (const batch of readTraceBatches(chunks, file)) for (let i = 0; i < batch.count; i++) yield batch.access(i);
}

const NL = 10;
const COMMA = 44;
const CR = 13;
const enc = new TextEncoder();
const dec = new TextDecoder();
/** One-character op strings, made once. */
const OPS: string[] = Array.from({ length: 128 }, (_, i) => String.fromCharCode(i));

/**
 * Parsed accesses in columns (no object per access): offset, length, time (NaN: none),
 * op (a one-letter op's byte, 0: none); accesses the columns cannot hold (a string time,
 * a longer op) are kept whole in `special`.
 */
export class TraceBatch {
  count = 0;
  offset: Float64Array;
  length: Float64Array;
  time: Float64Array;
  op: Uint8Array;
  readonly special = new Map<number, TraceAccess>();

  constructor(capacity: number) {
    const n = Math.max(16, capacity);
    this.offset = new Float64Array(n);
    this.length = new Float64Array(n);
    this.time = new Float64Array(n);
    this.op = new Uint8Array(n);
  }

  push(offset: number, length: number, time: number, op: number): void {
    if (this.count === this.offset.length) {
      const grow = <T extends Float64Array | Uint8Array>(x: T, y: T): T => {
        y.set(x as never);
        return y;
      };
      const n = this.count * 2;
      this.offset = grow(this.offset, new Float64Array(n));
      this.length = grow(this.length, new Float64Array(n));
      this.time = grow(this.time, new Float64Array(n));
      this.op = grow(this.op, new Uint8Array(n));
    }
    const i = this.count++;
    this.offset[i] = offset;
    this.length[i] = length;
    this.time[i] = time;
    this.op[i] = op;
  }

  pushAccess(a: TraceAccess): void {
    const simpleOp = a.op === undefined ? 0 : a.op.length === 1 && a.op.charCodeAt(0) < 128 ? a.op.charCodeAt(0) : -1;
    if (simpleOp < 0 || typeof a.time === 'string') this.special.set(this.count, a);
    this.push(a.offset, a.length, typeof a.time === 'number' ? a.time : Number.NaN, Math.max(0, simpleOp));
  }

  access(i: number): TraceAccess {
    const sp = this.special.get(i);
    if (sp) return sp;
    const a: TraceAccess = { offset: this.offset[i], length: this.length[i] };
    if (!Number.isNaN(this.time[i])) a.time = this.time[i];
    if (this.op[i] !== 0) a.op = OPS[this.op[i]];
    return a;
  }
}

/**
 * Trace accesses in batches, one per chunk of input: the fast way for big traces (no
 * async step and no object per access). Lines of plain decimal CSV
 * (`offset,length[,time[,op]]` with an integer time and a one-letter op) are parsed
 * straight from the bytes into columns; anything else (JSON, hex, a header, a comment,
 * decimals) goes through parseTraceLine.
 */
export async function* readTraceBatches(
  chunks: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  file = 'trace',
): AsyncGenerator<TraceBatch> {
  let rest: Uint8Array = new Uint8Array(0);
  let lineNo = 0;
  for await (const c of chunks) {
    const bytes = typeof c === 'string' ? enc.encode(c) : c;
    let buf = bytes;
    if (rest.length > 0) {
      buf = new Uint8Array(rest.length + bytes.length);
      buf.set(rest);
      buf.set(bytes, rest.length);
    }
    const lastNl = buf.lastIndexOf(NL);
    if (lastNl < 0) {
      rest = buf;
      if (rest.length > MAX_LINE) throw tooLong(lineNo + 1, file);
      continue;
    }
    const out = new TraceBatch(Math.ceil(lastNl / 24));
    lineNo = parseLines(buf, lastNl + 1, lineNo, file, out);
    rest = buf.slice(lastNl + 1);
    if (rest.length > MAX_LINE) throw tooLong(lineNo + 1, file);
    if (out.count > 0) yield out;
  }
  if (rest.length > 0) {
    const a = parseTraceLine(dec.decode(rest), ++lineNo, file);
    if (a) {
      const out = new TraceBatch(1);
      out.pushAccess(a);
      yield out;
    }
  }
}

function tooLong(lineNo: number, file: string): StrataError {
  return new StrataError('CORRUPT', `line ${lineNo}: longer than ${MAX_LINE} bytes`, {
    file,
    structure: `trace line ${lineNo}`,
  });
}

/** Parse the complete lines in b[0, end) (end is just past a newline); returns the last line number. */
function parseLines(b: Uint8Array, end: number, lineNo: number, file: string, out: TraceBatch): number {
  let i = 0;
  while (i < end) {
    const lineStart = i;
    lineNo++;
    // up to four fields: three of decimal digits, then a one-letter op
    let f0 = 0;
    let f1 = 0;
    let f2 = 0;
    let d0 = 0;
    let d1 = 0;
    let d2 = 0;
    let op = 0;
    let field = 0;
    let ok = true;
    for (; i < end; i++) {
      const ch = b[i];
      if (ch === NL) break;
      const d = ch - 48;
      if (d >= 0 && d <= 9 && field < 3) {
        if (field === 0) {
          f0 = f0 * 10 + d;
          d0++;
        } else if (field === 1) {
          f1 = f1 * 10 + d;
          d1++;
        } else {
          f2 = f2 * 10 + d;
          d2++;
        }
      } else if (ch === COMMA && field < 3) field++;
      else if (field === 3 && op === 0 && ch > 32 && ch < 127) op = ch;
      else if (!(ch === CR && i + 1 < end && b[i + 1] === NL)) ok = false;
    }
    const lineEnd = i;
    i++; // past the newline
    if (ok && field >= 1 && d0 > 0 && d1 > 0 && d0 <= 15 && d1 <= 15 && d2 <= 15) {
      out.push(f0, f1, d2 > 0 ? f2 : Number.NaN, op);
      continue;
    }
    const a = parseTraceLine(dec.decode(b.subarray(lineStart, lineEnd)), lineNo, file);
    if (a) out.pushAccess(a);
  }
  return lineNo;
}

/** A held map (BlockMap) seen through MapRecords. */
class HeldMap implements MapRecords {
  readonly diskSize: number;
  readonly count: number;
  readonly volumes: readonly MapVolume[];
  readonly nameCount: number;
  constructor(private readonly m: BlockMap) {
    this.diskSize = m.diskSize;
    this.count = m.count;
    this.volumes = m.volumes;
    this.nameCount = m.strings.length;
  }
  indexOf(offset: number): number {
    return this.m.indexOf(offset);
  }
  startOf(i: number): number {
    return this.m.start[i];
  }
  endOf(i: number): number {
    return this.m.end(i);
  }
  kindOf(i: number): number {
    return this.m.kind[i];
  }
  volumeOf(i: number): number {
    return this.m.volume[i];
  }
  inoOf(i: number): number {
    return this.m.ino[i];
  }
  nameOf(i: number): number {
    return this.m.name[i];
  }
  name(id: number): string {
    return this.m.strings[id];
  }
  owner(i: number, from: number, to: number): Owner {
    return this.m.owner(i, from, to);
  }
}

/** A summary without its files (they come from TraceResolver.files, sorted, one at a time). */
export type TraceTotals = Omit<TraceSummary, 'byFile'>;

/**
 * Resolves accesses against a map and keeps the summary: bytes and accesses per kind, per
 * class (data / metadata / unused) and per file. Counting works on the map's columns
 * (no objects per access); `resolve` builds the owner list only when asked. The map is a
 * BlockMap held in memory or a MapFile read on demand; the per-file counters are typed
 * arrays by name id (FileCounters), and the files come out sorted through a bounded
 * external sort (`files`), so a trace over millions of files needs neither the map nor an
 * object per file in memory (issue 22).
 */
export class TraceResolver {
  private accesses = 0;
  private bytes = 0;
  private outside = 0;
  private readonly kindBytes = new Float64Array(KINDS.length);
  private readonly kindAccesses = new Float64Array(KINDS.length);
  private readonly kindSeen = new Float64Array(KINDS.length);
  private readonly counters = new FileCounters();
  readonly map: MapRecords;

  constructor(map: BlockMap | MapRecords) {
    this.map = map instanceof BlockMap ? new HeldMap(map) : map;
    this.kindSeen.fill(-1);
  }

  /** Count every access of a batch. */
  countBatch(b: TraceBatch): void {
    checkMemory('resolving a trace');
    for (let i = 0; i < b.count; i++) this.countRange(b.offset[i], b.length[i]);
  }

  /** Count one access; returns the first and one-past-last record index it touched. */
  count(a: TraceAccess): [number, number] {
    this.countRange(a.offset, a.length);
    return [this.first, this.last];
  }

  /** Records [first, last) the access counted last touched. */
  private first = 0;
  private last = 0;

  private countRange(offset: number, length: number): void {
    const m = this.map;
    const id = this.accesses++;
    if (offset >= m.diskSize) {
      this.outside++;
      this.first = 0;
      this.last = 0;
      return;
    }
    let to = offset + length;
    if (to > m.diskSize) {
      this.outside++;
      to = m.diskSize;
    }
    this.bytes += to - offset;
    const first = m.indexOf(offset);
    let i = first;
    const fileKind = KIND_CODE.file;
    const dirKind = KIND_CODE.directory;
    const count = m.count;
    for (let start = m.startOf(i); i < count && start < to; i++) {
      const end = m.endOf(i);
      const s = Math.max(offset, start);
      const e = Math.min(to, end);
      const k = m.kindOf(i);
      this.kindBytes[k] += e - s;
      if (this.kindSeen[k] !== id) {
        this.kindSeen[k] = id;
        this.kindAccesses[k]++;
      }
      if (k === fileKind || k === dirKind) {
        const nm = m.nameOf(i);
        if (nm !== NO_NAME) this.counters.touch(nm, m.volumeOf(i), i, e - s, id);
      }
      start = end;
    }
    this.first = first;
    this.last = length === 0 ? first : i;
  }

  /** Count one access and list its owners. */
  resolve(a: TraceAccess): ResolvedAccess {
    checkMemory('resolving a trace');
    const [i0, i1] = this.count(a);
    const to = Math.min(a.offset + a.length, this.map.diskSize);
    const owners: Owner[] = [];
    for (let i = i0; i < i1; i++) owners.push(this.map.owner(i, a.offset, to));
    return { ...a, owners };
  }

  /** The summary's totals, by class and by kind. */
  totals(): TraceTotals {
    const byClass: TraceSummary['byClass'] = {
      data: { accesses: 0, bytes: 0 },
      metadata: { accesses: 0, bytes: 0 },
      unused: { accesses: 0, bytes: 0 },
    };
    const byKind: TraceSummary['byKind'] = [];
    for (let k = 0; k < KINDS.length; k++) {
      if (this.kindAccesses[k] === 0) continue;
      const cls = classOf(KINDS[k]);
      byKind.push({ kind: KINDS[k], class: cls, accesses: this.kindAccesses[k], bytes: this.kindBytes[k] });
      byClass[cls].bytes += this.kindBytes[k];
      // an access touching two kinds of one class counts once per kind: an upper bound, documented
      byClass[cls].accesses += this.kindAccesses[k];
    }
    return { accesses: this.accesses, bytes: this.bytes, outside: this.outside, byClass, byKind };
  }

  /**
   * The files and directories touched, most bytes first (then by path, then in the order
   * the trace first touched them), one at a time: memory bounded by the budget whatever
   * their number (sorted in runs spilled to a scratch file when they do not fit; `maxHeld`
   * entries a run, by default a tenth of the budget's worth).
   */
  fileRows(maxHeld?: number): Generator<FileRow> {
    return sortedRows(this.map, this.counters.entries(this.map), maxHeld);
  }

  /** The whole summary, files included (in memory: for a bounded listing use totals and fileRows). */
  summary(): TraceSummary {
    return { ...this.totals(), byFile: [...this.fileRows()] };
  }
}
