/**
 * Range arithmetic for the chunker: which disk bytes are "other used regions" (metadata,
 * directories, journals, file tails) once file data is taken out.
 *
 * The block map (src/blockmap/, issue 4) will answer "who owns this range" directly;
 * when it lands, `otherUsed` should come from it and this file can go.
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

/** Used bytes of a file system window that are not file data: allocation (or all of it) minus file data. */
export function otherUsed(used: Span[], fileData: Span[]): Span[] {
  return subtractSpans(mergeSpans(used), mergeSpans(fileData));
}
