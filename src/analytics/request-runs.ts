import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { StrataError } from '../util/errors.js';
import { siftDown } from '../util/heap.js';
import { checkMemory, memoryShare } from '../util/memory.js';
import { type ImageRequest, type LogFilter, scanRequestLog, type TraceOptions } from './request-log.js';

/**
 * A request log held in time order without holding its records (issue 22: a million
 * requests as objects were ~200 MiB of heap; the reports only ever walk them in order).
 *
 * Records are added in the log's order and kept as fixed 64-byte rows (typed columns of one
 * record: times and sizes as doubles, names as numbers into one table of the distinct
 * strings). Rows gather in a buffer sized from the memory budget; a full buffer is sorted
 * by time (stable: rows of the same millisecond keep their order) and written to an
 * unlinked scratch file as a run. Walking the log merges the runs (ties go to the earlier
 * run, so the whole order is the stable sort of the log by time, as `Array.sort` made it);
 * a log that fits in one buffer is never written. Each walk makes the records anew, one at
 * a time, so a report holds only what it keeps per image, project or version.
 *
 * What grows with the log: the scratch file (64 bytes a request) and the table of distinct
 * names (users, projects, images, operations, owners, bases). The guard of the memory budget
 * (checkMemory) is asked as rows are added and walked: a log whose distinct names do not fit
 * stops with a LIMIT error naming --memory.
 */

/** Bytes of one row. */
const ROW = 64;
/** Doubles of a row: at, bytes, version (-1: none), changed (-1: none); then int32s from INT. */
const F_AT = 0;
const F_BYTES = 1;
const F_VERSION = 2;
const F_CHANGED = 3;
const INT = 8;
const I_USER = INT;
const I_PROJECT = INT + 1;
const I_IMAGE = INT + 2;
const I_OP = INT + 3;
const I_OWNER = INT + 4; // -1: none
const I_BASE = INT + 5; // -1: none
const I_PUBLIC = INT + 6; // 0 none, 1 false, 2 true

/** How often (in rows) the memory guard is asked. */
const CHECK_EVERY = 1 << 16;

interface Run {
  /** Byte offset of the run in the scratch file. */
  offset: number;
  rows: number;
}

export class RequestRuns implements Iterable<ImageRequest> {
  private readonly ids = new Map<string, number>();
  private readonly names: string[] = [];
  private readonly cap: number;
  private buf: Buffer;
  private f: Float64Array;
  private i: Int32Array;
  private count = 0;
  /** The buffer's rows are in time order so far. */
  private ordered = true;
  /** The buffer's rows in time order once finished (identity when they came so). */
  private order: Uint32Array | undefined;
  private readonly runs: Run[] = [];
  private fd = -1;
  private fileBytes = 0;
  private finished = false;
  /** Records added. */
  total = 0;

  /** `bufferBytes`: the rows held before a run is written (default: a share of the memory budget). */
  constructor(opts: { bufferBytes?: number } = {}) {
    const bytes = opts.bufferBytes ?? memoryShare(1 / 10, 2 << 20, 32 << 20);
    this.cap = Math.max(16, Math.floor(bytes / ROW));
    this.buf = Buffer.alloc(0);
    this.f = new Float64Array(0);
    this.i = new Int32Array(0);
  }

  private id(s: string): number {
    let n = this.ids.get(s);
    if (n === undefined) {
      n = this.names.length;
      this.names.push(s);
      this.ids.set(s, n);
    }
    return n;
  }

  add(r: ImageRequest): void {
    if (this.finished) throw new Error('RequestRuns.add after the log was finished');
    if (this.count === this.cap) this.spill();
    if (this.buf.length === 0) {
      this.buf = Buffer.alloc(this.cap * ROW);
      this.f = new Float64Array(this.buf.buffer, this.buf.byteOffset, this.cap * 8);
      this.i = new Int32Array(this.buf.buffer, this.buf.byteOffset, this.cap * 16);
    }
    const f = this.f;
    const i = this.i;
    const o = this.count * 8;
    const q = this.count * 16;
    if (this.count > 0 && r.at < f[o - 8 + F_AT]) this.ordered = false;
    f[o + F_AT] = r.at;
    f[o + F_BYTES] = r.bytes;
    f[o + F_VERSION] = r.version === null ? -1 : r.version;
    f[o + F_CHANGED] = r.changed === undefined ? -1 : r.changed;
    i[q + I_USER] = this.id(r.user);
    i[q + I_PROJECT] = this.id(r.project);
    i[q + I_IMAGE] = this.id(r.image);
    i[q + I_OP] = this.id(r.op);
    i[q + I_OWNER] = r.owner === undefined ? -1 : this.id(r.owner);
    i[q + I_BASE] = r.base === undefined ? -1 : this.id(r.base);
    i[q + I_PUBLIC] = r.public === undefined ? 0 : r.public ? 2 : 1;
    this.count++;
    this.total++;
    if ((this.total & (CHECK_EVERY - 1)) === 0) checkMemory('reading the request log');
  }

  /** The buffer's rows in time order (stable). */
  private sorted(): Uint32Array {
    const n = this.count;
    const idx = new Uint32Array(n);
    for (let k = 0; k < n; k++) idx[k] = k;
    if (!this.ordered) {
      const f = this.f;
      idx.sort((a, b) => f[a * 8] - f[b * 8] || a - b);
    }
    return idx;
  }

  /** Write the buffer's rows, sorted, as a run of the scratch file. */
  private spill(): void {
    if (this.fd < 0) {
      const dir = mkdtempSync(path.join(tmpdir(), 'strata-requests-'));
      try {
        this.fd = openSync(path.join(dir, 'runs'), 'w+', 0o600);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    const idx = this.sorted();
    const out = Buffer.allocUnsafe(Math.min(this.count, 1 << 14) * ROW);
    const run: Run = { offset: this.fileBytes, rows: this.count };
    let k = 0;
    while (k < idx.length) {
      let n = 0;
      for (; n * ROW < out.length && k < idx.length; n++, k++)
        this.buf.copy(out, n * ROW, idx[k] * ROW, (idx[k] + 1) * ROW);
      this.writeAll(out.subarray(0, n * ROW));
    }
    this.runs.push(run);
    this.count = 0;
    this.ordered = true;
  }

  private writeAll(b: Buffer): void {
    let done = 0;
    while (done < b.length) {
      let n: number;
      try {
        n = writeSync(this.fd, b, done, b.length - done, this.fileBytes);
      } catch (e) {
        throw new StrataError(
          'IO',
          `cannot write the request log's scratch file in ${tmpdir()}: ${(e as Error).message}`,
        );
      }
      done += n;
      this.fileBytes += n;
    }
  }

  /** No more records: the last buffer is sorted (and written, when runs were written before). */
  finish(): this {
    if (this.finished) return this;
    this.finished = true;
    if (this.runs.length > 0 && this.count > 0) this.spill();
    if (this.runs.length > 0) {
      this.buf = Buffer.alloc(0);
      this.f = new Float64Array(0);
      this.i = new Int32Array(0);
    } else this.order = this.sorted();
    return this;
  }

  /** The scratch file closed (its space freed); the records are gone. */
  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    this.runs.length = 0;
    this.count = 0;
    this.order = new Uint32Array(0);
  }

  /** The record of row k of (f, i). */
  private record(f: Float64Array, i: Int32Array, k: number): ImageRequest {
    const o = k * 8;
    const q = k * 16;
    const names = this.names;
    const version = f[o + F_VERSION];
    const r: ImageRequest = {
      at: f[o + F_AT],
      user: names[i[q + I_USER]],
      project: names[i[q + I_PROJECT]],
      image: names[i[q + I_IMAGE]],
      version: version < 0 ? null : version,
      op: names[i[q + I_OP]],
      bytes: f[o + F_BYTES],
    };
    const owner = i[q + I_OWNER];
    if (owner >= 0) r.owner = names[owner];
    const pub = i[q + I_PUBLIC];
    if (pub !== 0) r.public = pub === 2;
    const base = i[q + I_BASE];
    if (base >= 0) r.base = names[base];
    const changed = f[o + F_CHANGED];
    if (changed >= 0) r.changed = changed;
    return r;
  }

  *[Symbol.iterator](): Iterator<ImageRequest> {
    this.finish();
    if (this.runs.length === 0) {
      const order = this.order as Uint32Array;
      for (let k = 0; k < order.length; k++) {
        if ((k & (CHECK_EVERY - 1)) === CHECK_EVERY - 1) checkMemory('reporting on the request log');
        yield this.record(this.f, this.i, order[k]);
      }
      return;
    }
    yield* this.merge();
  }

  /** The runs merged by time, ties to the earlier run. */
  private *merge(): Generator<ImageRequest> {
    const fd = this.fd;
    // read buffers: 8 MiB over all runs, 64 KiB to 1 MiB each
    const each = Math.max(64 << 10, Math.min(1 << 20, Math.floor((8 << 20) / this.runs.length / ROW) * ROW));
    interface Reader {
      run: number;
      buf: Buffer;
      f: Float64Array;
      i: Int32Array;
      /** Rows in buf, the row at the head, rows of the run not yet read. */
      rows: number;
      head: number;
      next: number;
      left: number;
    }
    const fill = (r: Reader): boolean => {
      const want = Math.min(r.left, r.buf.length / ROW);
      if (want === 0) return false;
      const bytes = want * ROW;
      let got = 0;
      while (got < bytes) {
        let n: number;
        try {
          n = readSync(fd, r.buf, got, bytes - got, r.next + got);
        } catch (e) {
          throw new StrataError('IO', `cannot read the request log's scratch file: ${(e as Error).message}`);
        }
        if (n === 0) throw new StrataError('IO', "the request log's scratch file ended early");
        got += n;
      }
      r.next += bytes;
      r.left -= want;
      r.rows = want;
      r.head = 0;
      return true;
    };
    const heap: Reader[] = [];
    for (let k = 0; k < this.runs.length; k++) {
      const buf = Buffer.allocUnsafe(each);
      const r: Reader = {
        run: k,
        buf,
        f: new Float64Array(buf.buffer, buf.byteOffset, each / 8),
        i: new Int32Array(buf.buffer, buf.byteOffset, each / 4),
        rows: 0,
        head: 0,
        next: this.runs[k].offset,
        left: this.runs[k].rows,
      };
      if (fill(r)) heap.push(r);
    }
    const at = (r: Reader) => r.f[r.head * 8 + F_AT];
    const less = (a: Reader, b: Reader) => {
      const x = at(a);
      const y = at(b);
      return x < y || (x === y && a.run < b.run);
    };
    for (let k = heap.length >> 1; k >= 0; k--) siftDown(heap, k, less);
    let n = 0;
    while (heap.length > 0) {
      const top = heap[0];
      const rec = this.record(top.f, top.i, top.head);
      top.head++;
      if (top.head === top.rows && !fill(top)) {
        const last = heap.pop() as Reader;
        if (heap.length > 0) heap[0] = last;
      }
      if (heap.length > 0) siftDown(heap, 0, less);
      if ((++n & (CHECK_EVERY - 1)) === 0) checkMemory('reporting on the request log');
      yield rec;
    }
  }
}

/**
 * Request log files (JSONL, CSV or NBD traces, as parseRequestLog reads them), read as one (the files in turn), the
 * records that pass `filter` in time order (stable: the same millisecond in the files' and
 * lines' order, as readRequestLog and a sort of their concatenation make it), held as
 * {@link RequestRuns}: memory by the budget, not by the log. Close it when done.
 */
export function openRequestLog(
  files: readonly string[],
  filter: LogFilter = {},
  opts: TraceOptions & { bufferBytes?: number } = {},
): RequestRuns {
  const runs = new RequestRuns({ bufferBytes: opts.bufferBytes });
  const ops = filter.ops ? new Set(filter.ops) : undefined;
  const keep = (r: ImageRequest) =>
    (filter.since === undefined || r.at >= filter.since) &&
    (filter.until === undefined || r.at < filter.until) &&
    (ops === undefined || ops.has(r.op));
  try {
    for (const f of files)
      scanRequestLog(
        f,
        (r) => {
          if (keep(r)) runs.add(r);
        },
        opts,
      );
    return runs.finish();
  } catch (e) {
    runs.close();
    throw e;
  }
}
