import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  FirstUseNumbered,
  InverseColumn,
  type RangeCursor,
  Scratch,
  SpilledColumn,
} from '../../src/library/checkin-columns.js';
import { MergedSpans, mergeSpans, type Span, subtractSpans } from '../../src/library/used-regions.js';
import { xorshift32 } from '../../src/util/prng.js';

/** A range stream over an array of chunk numbers (disk = index). */
function streamOf(chunks: Uint32Array): RangeCursor {
  let i = -1;
  const c: RangeCursor = {
    disk: 0,
    length: 0,
    chunk: 0,
    at: 0,
    next() {
      if (++i >= chunks.length) return false;
      c.disk = i * 4096;
      c.length = 4096;
      c.chunk = chunks[i];
      c.at = i % 7;
      return true;
    },
  };
  return c;
}

/**
 * Issue 22: the check-in's canonical order lives in the scratch file (SpilledColumn), and a
 * range that uses a chunk again finds the chunk's layout number in the order's inverse
 * (InverseColumn, built a slice of 2^18 chunks at a time) instead of in an Int32Array of every
 * chunk. Over 700,000 chunks (three slices, many 16,384-entry blocks), mostly in order with
 * jumps back (a chunk used again: 1 range in 5) and some chunks no range uses (numbered last),
 * the order and the numbers equal an in-memory renumbering by first use computed here.
 */
test('the canonical order from the scratch file numbers chunks as an in-memory first-use renumbering does', () => {
  const chunks = 700_000;
  const next = xorshift32(22);
  const stream: number[] = [];
  let fresh = 0;
  while (fresh < chunks - 5000) {
    if (fresh > 0 && next() % 5 === 0)
      stream.push(next() % fresh); // used again, anywhere before
    else stream.push(fresh++);
  }
  // builder numbers differ from first-use order: swap neighbours in blocks
  const perm = new Uint32Array(chunks);
  for (let i = 0; i < chunks; i++) perm[i] = i;
  for (let i = 0; i + 1 < chunks; i += 2) if (next() % 2 === 0) [perm[i], perm[i + 1]] = [perm[i + 1], perm[i]];
  const ranges = Uint32Array.from(stream, (c) => perm[c]);

  // the oracle: renumbering in memory, as check-in did before
  const renumber = new Int32Array(chunks).fill(-1);
  const expectOrder: number[] = [];
  for (const c of ranges) if (renumber[c] === -1) renumber[c] = expectOrder.push(c) - 1;
  const usedCount = expectOrder.length;
  for (let i = 0; i < chunks; i++) if (renumber[i] === -1) expectOrder.push(i);
  assert.ok(usedCount < chunks && usedCount > 600_000, `${usedCount} chunks used`);

  const scratch = new Scratch();
  try {
    const seen = new Uint8Array(chunks);
    const order = new SpilledColumn(scratch, 'order');
    for (const c of ranges) {
      if (!seen[c]) {
        seen[c] = 1;
        order.push(c);
      }
    }
    for (let i = 0; i < chunks; i++) if (!seen[i]) order.push(i);
    assert.equal(order.count, chunks);
    const got = order.reader().take(chunks);
    assert.deepEqual(Array.from(got), expectOrder);
    assert.throws(() => {
      const r = order.reader();
      r.take(chunks);
      r.next();
    }, /past its end/);

    let asked = 0;
    let inverse: InverseColumn | undefined;
    const numbered = new FirstUseNumbered(streamOf(ranges), chunks, (c) => {
      asked++;
      inverse ??= new InverseColumn(scratch, order, chunks, usedCount);
      return inverse.get(c);
    });
    let i = 0;
    let wrong = 0;
    while (numbered.next()) {
      if (numbered.chunk !== renumber[ranges[i]] || numbered.disk !== i * 4096 || numbered.at !== i % 7) wrong++;
      i++;
    }
    assert.equal(i, ranges.length);
    assert.equal(wrong, 0, `${wrong} ranges numbered differently`);
    assert.equal(asked, ranges.length - usedCount, 'only ranges that use a chunk again ask for its number');
    // a chunk no range uses has no number in the inverse
    const unusedChunk = expectOrder[usedCount];
    assert.throws(() => inverse?.get(unusedChunk), /has no inverse/);
  } finally {
    scratch.close();
  }
});

/**
 * Issue 22: the walk's file data spans are merged batch by batch into two Float64Arrays
 * (MergedSpans) instead of a growing array of [start, end] arrays; what the rest of the used
 * bytes is cut from must be what `subtractSpans(used, mergeSpans(every span))` gives. Random
 * batches (touching, overlapping, nested and empty spans, any order) against that.
 */
test('file data spans merged batch by batch subtract as the whole list merged at once does', () => {
  const next = xorshift32(7);
  for (let round = 0; round < 20; round++) {
    const all: Span[] = [];
    const merged = new MergedSpans();
    for (let batch = 0; batch < 1 + (next() % 12); batch++) {
      const spans: Span[] = [];
      for (let i = 0; i < next() % 300; i++) {
        const s = (next() % 100_000) * 512;
        spans.push([s, s + (next() % 9) * 512]); // empty ones too
      }
      all.push(...spans.map((x): Span => [x[0], x[1]]));
      merged.add(spans);
    }
    const used = mergeSpans([
      [0, 20_000 * 512],
      [30_000 * 512, 100_100 * 512],
      [100_200 * 512, 100_300 * 512],
    ]);
    const expected = mergeSpans(all.map((x): Span => [x[0], x[1]]));
    assert.equal(merged.count, expected.length, `round ${round}`);
    assert.deepEqual(merged.subtractFrom(used), subtractSpans(used, expected), `round ${round}`);
  }
});
