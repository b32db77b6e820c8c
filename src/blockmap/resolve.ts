import { type Claims, NO_INODE, NO_NAME } from './claims.js';
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
  const n = c.count;
  const { start, end, kind } = c;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => start[a] - start[b] || a - b);

  reportOverlaps(c, order, warnings);

  // max-heap of claim indexes: higher priority first, then the earlier claim
  const heap = new Int32Array(n);
  let hn = 0;
  const better = (a: number, b: number) => {
    const pa = PRIO[kind[a]];
    const pb = PRIO[kind[b]];
    return pa > pb || (pa === pb && a < b);
  };
  const push = (x: number) => {
    let i = hn++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!better(x, heap[p])) break;
      heap[i] = heap[p];
      i = p;
    }
    heap[i] = x;
  };
  const pop = () => {
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

  const out = new Out(Math.max(16, n));
  let i = 0;
  let pos = 0;
  while (i < n || hn > 0) {
    const next = i < n ? start[order[i]] : Number.POSITIVE_INFINITY;
    while (hn > 0 && end[heap[0]] <= pos) pop();
    if (hn === 0) {
      if (i >= n) break;
      pos = next;
      while (i < n && start[order[i]] === pos) push(order[i++]);
      continue;
    }
    const top = heap[0];
    const segEnd = Math.min(end[top], next);
    if (segEnd > pos) out.emit(c, top, pos, segEnd);
    pos = segEnd;
    while (i < n && start[order[i]] <= pos) push(order[i++]);
  }
  return out.columns();
}

function reportOverlaps(c: Claims, order: Uint32Array, warnings: string[]): void {
  const { start, end, kind, ino } = c;
  let reach = -1;
  let count = 0;
  for (let k = 0; k < order.length; k++) {
    const x = order[k];
    if (PRIO[kind[x]] < OWNER_PRIORITY) continue;
    if (reach >= 0 && start[x] < end[reach]) {
      const same = ino[x] === ino[reach] && kind[x] === kind[reach] && ino[x] !== NO_INODE;
      // extents the file system calls shared (reflinks, snapshots) are meant to overlap
      const shared = c.shared[x] === 1 && c.shared[reach] === 1;
      if (!same && !shared && ++count <= MAX_OVERLAP_WARNINGS) {
        const s = start[x];
        const e = Math.min(end[x], end[reach]);
        const winner =
          PRIO[kind[x]] > PRIO[kind[reach]] || (PRIO[kind[x]] === PRIO[kind[reach]] && x < reach) ? x : reach;
        warnings.push(
          `disk bytes ${s}..${e} are claimed by ${describe(c, reach)} and by ${describe(c, x)}; ${describe(c, winner)} is kept`,
        );
      }
    }
    if (reach < 0 || end[x] > end[reach]) reach = x;
  }
  if (count > MAX_OVERLAP_WARNINGS) {
    warnings.push(`${count - MAX_OVERLAP_WARNINGS} more overlapping claims (${count} in all)`);
  }
}

function describe(c: Claims, x: number): string {
  const parts: string[] = [KINDS[c.kind[x]]];
  if (c.ino[x] !== NO_INODE) parts.push(`inode ${c.ino[x]}`);
  if (c.name[x] !== NO_NAME) parts.push(JSON.stringify(c.strings[c.name[x]]));
  return parts.join(' ');
}

/** Growable output columns with owner-merging emit. */
class Out {
  count = 0;
  start: Float64Array;
  end: Float64Array;
  kind: Uint8Array;
  volume: Uint16Array;
  ino: Float64Array;
  name: Int32Array;
  objectOffset: Float64Array;

  constructor(cap: number) {
    this.start = new Float64Array(cap);
    this.end = new Float64Array(cap);
    this.kind = new Uint8Array(cap);
    this.volume = new Uint16Array(cap);
    this.ino = new Float64Array(cap);
    this.name = new Int32Array(cap);
    this.objectOffset = new Float64Array(cap);
  }

  emit(c: Claims, x: number, s: number, e: number): void {
    const k = c.kind[x];
    const off = OFFSET_KINDS[k] ? c.objectOffset[x] + (s - c.start[x]) : 0;
    const j = this.count - 1;
    if (
      j >= 0 &&
      this.end[j] === s &&
      this.kind[j] === k &&
      this.volume[j] === c.volume[x] &&
      this.ino[j] === c.ino[x] &&
      this.name[j] === c.name[x] &&
      this.objectOffset[j] + (s - this.start[j]) * OFFSET_KINDS[k] === off
    ) {
      this.end[j] = e;
      return;
    }
    if (this.count === this.start.length) this.grow();
    const i = this.count++;
    this.start[i] = s;
    this.end[i] = e;
    this.kind[i] = k;
    this.volume[i] = c.volume[x];
    this.ino[i] = c.ino[x];
    this.name[i] = c.name[x];
    this.objectOffset[i] = off;
  }

  private grow(): void {
    const n = this.start.length * 2;
    const g = <T extends Float64Array | Uint8Array | Uint16Array | Int32Array>(a: T, b: T): T => {
      b.set(a as never);
      return b;
    };
    this.start = g(this.start, new Float64Array(n));
    this.end = g(this.end, new Float64Array(n));
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
