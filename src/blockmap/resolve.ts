import { readSync } from 'node:fs';
import { StrataError } from '../util/errors.js';
import { siftDown } from '../util/heap.js';
import { CLAIM_BYTES, type Claims, NO_INODE, NO_NAME } from './claims.js';
import { KIND_CODE, KINDS, OWNER_PRIORITY, PRIORITY } from './kinds.js';

/** The packed, sorted, non-overlapping records of a map (see BlockMap for their meaning). */
export interface MapColumns {
  count: number;
  start: Float64Array;
  kind: Uint8Array;
  volume: Uint16Array;
  ino: Float64Array;
  name: Int32Array;
  objectOffset: Float64Array;
}

const PRIO = Uint8Array.from(KINDS, (k) => PRIORITY[k]);
/** Kinds whose objectOffset means something (and must be continuous for two records to merge). */
const OFFSET_KINDS = new Uint8Array(KINDS.length);
for (const k of ['file', 'directory', 'journal', 'inode-table'] as const) OFFSET_KINDS[KIND_CODE[k]] = 1;

export const MAX_OVERLAP_WARNINGS = 20;

/** One resolved record, as the sweep hands it over (adjacent pieces of one owner already merged). */
export type RecordSink = (
  start: number,
  end: number,
  kind: number,
  volume: number,
  ino: number,
  name: number,
  objectOffset: number,
) => void;

/**
 * The claims being swept: a small pool of slots (the active ones, the next one, the one
 * reaching furthest) copied from the held columns or from the spilled runs.
 */
class Pool {
  start = new Float64Array(64);
  end = new Float64Array(64);
  kind = new Uint8Array(64);
  volume = new Uint16Array(64);
  ino = new Float64Array(64);
  name = new Float64Array(64);
  objectOffset = new Float64Array(64);
  seq = new Float64Array(64);
  shared = new Uint8Array(64);
  private free: number[] = [];
  private used = 0;

  take(): number {
    const f = this.free.pop();
    if (f !== undefined) return f;
    if (this.used === this.start.length) this.grow();
    return this.used++;
  }

  release(i: number): void {
    this.free.push(i);
  }

  copy(to: number, from: number): void {
    this.start[to] = this.start[from];
    this.end[to] = this.end[from];
    this.kind[to] = this.kind[from];
    this.volume[to] = this.volume[from];
    this.ino[to] = this.ino[from];
    this.name[to] = this.name[from];
    this.objectOffset[to] = this.objectOffset[from];
    this.seq[to] = this.seq[from];
    this.shared[to] = this.shared[from];
  }

  private grow(): void {
    const n = this.start.length * 2;
    const g = <T extends Float64Array | Uint8Array | Uint16Array>(a: T, b: T): T => {
      b.set(a as never);
      return b;
    };
    this.start = g(this.start, new Float64Array(n));
    this.end = g(this.end, new Float64Array(n));
    this.kind = g(this.kind, new Uint8Array(n));
    this.volume = g(this.volume, new Uint16Array(n));
    this.ino = g(this.ino, new Float64Array(n));
    this.name = g(this.name, new Float64Array(n));
    this.objectOffset = g(this.objectOffset, new Float64Array(n));
    this.seq = g(this.seq, new Float64Array(n));
    this.shared = g(this.shared, new Uint8Array(n));
  }
}

/** Fills pool slot `slot` with the next claim in (start, order) order; false at the end. */
type ClaimSource = (pool: Pool, slot: number) => boolean;

function heldSource(c: Claims): ClaimSource {
  const order = c.sortedOrder();
  let k = 0;
  return (p, slot) => {
    if (k >= order.length) return false;
    const i = order[k++];
    p.start[slot] = c.start[i];
    p.end[slot] = c.end[i];
    p.kind[slot] = c.kind[i];
    p.volume[slot] = c.volume[i];
    p.ino[slot] = c.ino[i];
    p.name[slot] = c.name[i];
    p.objectOffset[slot] = c.objectOffset[i];
    p.seq[slot] = c.seq0 + i;
    p.shared[slot] = c.shared[i];
    return true;
  };
}

/** The spilled runs merged (a heap of one reader per run, each through a small buffer). */
function runsSource(c: Claims): ClaimSource {
  const fd = c.runsFd as number;
  const per = 2048;
  const readers = c.runs.map(([at, n]) => ({
    at,
    left: n,
    buf: Buffer.allocUnsafe(per * CLAIM_BYTES),
    pos: 0,
    have: 0,
  }));
  type R = (typeof readers)[number];
  const fill = (r: R): boolean => {
    if (r.pos < r.have) return true;
    if (r.left === 0) return false;
    const m = Math.min(per, r.left);
    const want = m * CLAIM_BYTES;
    let got = 0;
    while (got < want) {
      const n = readSync(fd, r.buf, got, want - got, r.at + got);
      if (n === 0) throw new StrataError('IO', 'block map scratch file ended early', { structure: 'block map runs' });
      got += n;
    }
    r.at += want;
    r.left -= m;
    r.pos = 0;
    r.have = m;
    return true;
  };
  const startOf = (r: R) => r.buf.readDoubleLE(r.pos * CLAIM_BYTES);
  const seqOf = (r: R) => r.buf.readDoubleLE(r.pos * CLAIM_BYTES + 32);
  const less = (a: R, b: R) => {
    const d = startOf(a) - startOf(b);
    return d < 0 || (d === 0 && seqOf(a) < seqOf(b));
  };
  const heap: R[] = readers.filter(fill);
  const down = (i: number) => siftDown(heap, i, less);
  for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
  return (p, slot) => {
    if (heap.length === 0) return false;
    const r = heap[0];
    const b = r.buf;
    const o = r.pos * CLAIM_BYTES;
    p.start[slot] = b.readDoubleLE(o);
    p.end[slot] = b.readDoubleLE(o + 8);
    p.ino[slot] = b.readDoubleLE(o + 16);
    p.objectOffset[slot] = b.readDoubleLE(o + 24);
    p.seq[slot] = b.readDoubleLE(o + 32);
    p.name[slot] = b.readDoubleLE(o + 40);
    p.kind[slot] = b[o + 48];
    p.shared[slot] = b[o + 49];
    p.volume[slot] = b.readUInt16LE(o + 50);
    r.pos++;
    if (!fill(r)) {
      const last = heap.pop() as R;
      if (heap.length > 0) heap[0] = last;
    }
    if (heap.length > 0) down(0);
    return true;
  };
}

/**
 * Paint the claims into one non-overlapping cover of [0, diskSize): at every byte the
 * claim of highest priority wins, ties going to the claim made first. A sweep over the
 * claims sorted by start with a heap of the active ones: O(n log n), whatever the
 * overlaps. Adjacent pieces of one owner (same kind, volume, inode, name, continuous
 * object offset) are merged. Overlaps between real owners (a block claimed by two files
 * in a corrupt image) are counted and the first few described in `warnings`; extents both
 * flagged shared by the file system (reflinks, snapshots) are not such overlaps.
 */
export function resolveClaims(c: Claims, warnings: string[]): MapColumns {
  const out = new Out(Math.max(16, c.total));
  sweepClaims(c, warnings, (s, e, k, v, ino, nm, off) => out.push(s, e, k, v, ino, nm, off));
  return out.columns();
}

/**
 * The same sweep, each record handed to `sink` in disk order as soon as it is complete
 * (memory: the active claims, not the map). Claims spilled to runs are merged from disk.
 */
export function sweepClaims(c: Claims, warnings: string[], sink: RecordSink): void {
  for (const _ of sweepInSteps(c, warnings, sink, Number.POSITIVE_INFINITY));
}

/**
 * The sweep, pausing (yielding) after every `step` records handed to `sink`, so a caller
 * can wait for its output to drain between steps.
 */
export function* sweepInSteps(c: Claims, warnings: string[], sink: RecordSink, step: number): Generator<void> {
  let source: ClaimSource;
  if (c.runs.length > 0) {
    c.spill();
    source = runsSource(c);
  } else source = heldSource(c);
  const p = new Pool();
  // max-heap of pool slots: higher priority first, then the earlier claim
  let heap = new Int32Array(64);
  let hn = 0;
  const better = (a: number, b: number) => {
    const pa = PRIO[p.kind[a]];
    const pb = PRIO[p.kind[b]];
    return pa > pb || (pa === pb && p.seq[a] < p.seq[b]);
  };
  const push = (x: number) => {
    if (hn === heap.length) {
      const h = new Int32Array(heap.length * 2);
      h.set(heap);
      heap = h;
    }
    let i = hn++;
    while (i > 0) {
      const q = (i - 1) >> 1;
      if (!better(x, heap[q])) break;
      heap[i] = heap[q];
      i = q;
    }
    heap[i] = x;
  };
  const pop = () => {
    p.release(heap[0]);
    const last = heap[--hn];
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= hn) break;
      const r = l + 1;
      const m = r < hn && better(heap[r], heap[l]) ? r : l;
      if (!better(heap[m], last)) break;
      heap[i] = heap[m];
      i = m;
    }
    heap[i] = last;
  };

  // overlaps between owners: the owner claim reaching furthest so far, kept in its own slot
  const reach = p.take();
  let haveReach = false;
  let overlaps = 0;
  const checkOverlap = (x: number) => {
    if (PRIO[p.kind[x]] < OWNER_PRIORITY) return;
    if (haveReach && p.start[x] < p.end[reach]) {
      const same = p.ino[x] === p.ino[reach] && p.kind[x] === p.kind[reach] && p.ino[x] !== NO_INODE;
      // extents the file system calls shared (reflinks, snapshots) are meant to overlap
      const shared = p.shared[x] === 1 && p.shared[reach] === 1;
      if (!same && !shared && ++overlaps <= MAX_OVERLAP_WARNINGS) {
        const s = p.start[x];
        const e = Math.min(p.end[x], p.end[reach]);
        const px = PRIO[p.kind[x]];
        const pr = PRIO[p.kind[reach]];
        const xWins = px > pr || (px === pr && p.seq[x] < p.seq[reach]);
        warnings.push(
          `disk bytes ${s}..${e} are claimed by ${describe(c, p, reach)} and by ${describe(c, p, x)}; ${describe(c, p, xWins ? x : reach)} is kept`,
        );
      }
    }
    if (!haveReach || p.end[x] > p.end[reach]) {
      p.copy(reach, x);
      haveReach = true;
    }
  };

  let handed = 0;
  const merge = new Merger((s, e, k, v, ino, nm, off) => {
    handed++;
    sink(s, e, k, v, ino, nm, off);
  });
  let peek = p.take();
  let more = source(p, peek);
  const admit = () => {
    checkOverlap(peek);
    push(peek);
    peek = p.take();
    more = source(p, peek);
  };
  let pos = 0;
  while (more || hn > 0) {
    const next = more ? p.start[peek] : Number.POSITIVE_INFINITY;
    while (hn > 0 && p.end[heap[0]] <= pos) pop();
    if (hn === 0) {
      if (!more) break;
      pos = next;
      while (more && p.start[peek] === pos) admit();
      continue;
    }
    const top = heap[0];
    const segEnd = Math.min(p.end[top], next);
    if (segEnd > pos) {
      const k = p.kind[top];
      const off = OFFSET_KINDS[k] ? p.objectOffset[top] + (pos - p.start[top]) : 0;
      merge.emit(pos, segEnd, k, p.volume[top], p.ino[top], p.name[top], off);
    }
    pos = segEnd;
    while (more && p.start[peek] <= pos) admit();
    if (handed >= step) {
      handed = 0;
      yield;
    }
  }
  merge.flush();
  if (overlaps > MAX_OVERLAP_WARNINGS) {
    warnings.push(`${overlaps - MAX_OVERLAP_WARNINGS} more overlapping claims (${overlaps} in all)`);
  }
}

function describe(c: Claims, p: Pool, x: number): string {
  const parts: string[] = [KINDS[p.kind[x]]];
  if (p.ino[x] !== NO_INODE) parts.push(`inode ${p.ino[x]}`);
  if (p.name[x] !== NO_NAME) parts.push(JSON.stringify(c.names.get(p.name[x])));
  return parts.join(' ');
}

/** Holds the last record and extends it while the next piece continues the same owner. */
class Merger {
  private has = false;
  private s = 0;
  private e = 0;
  private k = 0;
  private v = 0;
  private ino = 0;
  private nm = 0;
  private off = 0;

  constructor(private readonly sink: RecordSink) {}

  emit(s: number, e: number, k: number, v: number, ino: number, nm: number, off: number): void {
    if (
      this.has &&
      this.e === s &&
      this.k === k &&
      this.v === v &&
      this.ino === ino &&
      this.nm === nm &&
      this.off + (s - this.s) * OFFSET_KINDS[k] === off
    ) {
      this.e = e;
      return;
    }
    this.flush();
    this.has = true;
    this.s = s;
    this.e = e;
    this.k = k;
    this.v = v;
    this.ino = ino;
    this.nm = nm;
    this.off = off;
  }

  flush(): void {
    if (this.has) this.sink(this.s, this.e, this.k, this.v, this.ino, this.nm, this.off);
    this.has = false;
  }
}

/** Growable output columns. */
class Out {
  count = 0;
  start: Float64Array;
  kind: Uint8Array;
  volume: Uint16Array;
  ino: Float64Array;
  name: Int32Array;
  objectOffset: Float64Array;

  constructor(cap: number) {
    this.start = new Float64Array(cap);
    this.kind = new Uint8Array(cap);
    this.volume = new Uint16Array(cap);
    this.ino = new Float64Array(cap);
    this.name = new Int32Array(cap);
    this.objectOffset = new Float64Array(cap);
  }

  push(s: number, _e: number, k: number, v: number, ino: number, nm: number, off: number): void {
    if (this.count === this.start.length) this.grow();
    const i = this.count++;
    this.start[i] = s;
    this.kind[i] = k;
    this.volume[i] = v;
    this.ino[i] = ino;
    this.name[i] = nm;
    this.objectOffset[i] = off;
  }

  private grow(): void {
    const n = this.start.length * 2;
    const g = <T extends Float64Array | Uint8Array | Uint16Array | Int32Array>(a: T, b: T): T => {
      b.set(a as never);
      return b;
    };
    this.start = g(this.start, new Float64Array(n));
    this.kind = g(this.kind, new Uint8Array(n));
    this.volume = g(this.volume, new Uint16Array(n));
    this.ino = g(this.ino, new Float64Array(n));
    this.name = g(this.name, new Int32Array(n));
    this.objectOffset = g(this.objectOffset, new Float64Array(n));
  }

  columns(): MapColumns {
    const n = this.count;
    return {
      count: n,
      start: this.start.slice(0, n),
      kind: this.kind.slice(0, n),
      volume: this.volume.slice(0, n),
      ino: this.ino.slice(0, n),
      name: this.name.slice(0, n),
      objectOffset: this.objectOffset.slice(0, n),
    };
  }
}
