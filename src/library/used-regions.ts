/**
 * Range arithmetic for the chunker: which disk bytes are "other used regions" (metadata,
 * directories, journals, file tails) once file data is taken out.
 *
 * The block map (src/blockmap/, issue 4) will answer "who owns this range" directly;
 * when it lands, the other used regions should come from it and this file can go.
 */
export type Span = [start: number, end: number];

/** Sort and merge touching or overlapping spans (in place sort; returns a new array). */
export function mergeSpans(spans: Span[]): Span[] {
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const out: Span[] = [];
  for (const [s, e] of spans) {
    if (e <= s) continue;
    const last = out[out.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** `a` minus `b`; both merged and sorted. */
export function subtractSpans(a: Span[], b: Span[]): Span[] {
  const out: Span[] = [];
  let j = 0;
  for (const [s0, e] of a) {
    let s = s0;
    while (j < b.length && b[j][1] <= s) j++;
    let k = j;
    while (s < e && k < b.length && b[k][0] < e) {
      if (b[k][0] > s) out.push([s, b[k][0]]);
      s = Math.max(s, b[k][1]);
      k++;
    }
    if (s < e) out.push([s, e]);
  }
  return out;
}

/**
 * Spans kept sorted and merged in two Float64Arrays, 16 bytes a span (a `Span` array is ~56):
 * the file data's disk spans a check-in's walk holds until the rest of the used bytes is cut
 * (issue 22: ~10,000 spans a million files on the large tree). Batches are merged in as they
 * come; `subtractFrom` is `subtractSpans(a, <these spans>)`.
 */
export class MergedSpans {
  private starts = new Float64Array(0);
  private ends = new Float64Array(0);
  count = 0;

  /** Merge `batch` (any order, empty spans ignored) into the set. */
  add(batch: Span[]): void {
    const b = mergeSpans(batch);
    if (b.length === 0) return;
    const starts = new Float64Array(this.count + b.length);
    const ends = new Float64Array(this.count + b.length);
    let i = 0;
    let j = 0;
    let n = 0;
    while (i < this.count || j < b.length) {
      let s: number;
      let e: number;
      if (j >= b.length || (i < this.count && this.starts[i] <= b[j][0])) {
        s = this.starts[i];
        e = this.ends[i++];
      } else {
        [s, e] = b[j++];
      }
      if (n > 0 && s <= ends[n - 1]) ends[n - 1] = Math.max(ends[n - 1], e);
      else {
        starts[n] = s;
        ends[n++] = e;
      }
    }
    this.starts = starts;
    this.ends = ends;
    this.count = n;
  }

  /** `a` (merged and sorted) minus these spans. */
  subtractFrom(a: Span[]): Span[] {
    const out: Span[] = [];
    let j = 0;
    for (const [s0, e] of a) {
      let s = s0;
      while (j < this.count && this.ends[j] <= s) j++;
      let k = j;
      while (s < e && k < this.count && this.starts[k] < e) {
        if (this.starts[k] > s) out.push([s, this.starts[k]]);
        s = Math.max(s, this.ends[k]);
        k++;
      }
      if (s < e) out.push([s, e]);
    }
    return out;
  }
}
