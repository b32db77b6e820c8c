import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { digestKey, digestPrefix, SortedDigestIndex } from '../../src/store/sorted-index.js';

/**
 * Issue 22: the check-in's Builder and the store's BlobMap hold only their newest entries in a
 * hash table; full, the table's entries are merged into a sorted index file, so a lookup of an
 * older entry is a lookup there. The index alone: digests merged in batches of many sizes,
 * every one found with its own number (many share a prefix, and one block holds them: the
 * whole digest decides), digests never added not found.
 */
test('SortedDigestIndex: entries merged in batches are found by digest, and only those', () => {
  const index = new SortedDigestIndex();
  try {
    const digest = (i: number) => {
      const d = createHash('sha256').update(`entry ${i}`).digest();
      if (i % 7 === 0) d.fill(0xab, 0, 4);
      return d;
    };
    const n = 3000; // 24 blocks of the index file
    const digests = Array.from({ length: n }, (_, i) => digest(i));
    for (let from = 0; from < n; ) {
      const to = Math.min(n, from + 1 + ((from * 37) % 611));
      const keys = new Float64Array(to - from);
      for (let i = from; i < to; i++) keys[i - from] = digestKey(digestPrefix(digests[i]), i);
      keys.sort();
      index.merge(keys);
      from = to;
      assert.equal(index.count, from);
    }
    for (let i = n - 1; i >= 0; i--) {
      const d = digests[i];
      assert.equal(
        index.find(digestPrefix(d), (c) => digests[c].equals(d)),
        i,
      );
    }
    for (let i = n; i < n + 200; i++) {
      const d = digest(i);
      assert.equal(
        index.find(digestPrefix(d), (c) => digests[c].equals(d)),
        -1,
      );
    }
    // the prefix read from a record at an offset
    const rec = Buffer.concat([Buffer.alloc(9), digests[5]]);
    assert.equal(digestPrefix(rec, 9), digestPrefix(digests[5]));
  } finally {
    index.close();
  }
  assert.equal(index.count, 0);
});
