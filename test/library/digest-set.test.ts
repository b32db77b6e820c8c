import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { DigestSet } from '../../src/library/digest-set.js';

const sha = (i: number) => createHash('sha256').update(`blob ${i}`).digest('hex');

/** gc's mark set: every digest added is found, others are not, the size and the values are a Set's. */
test('DigestSet holds what a Set<string> of digests holds (through growth), other strings beside', () => {
  const d = new DigestSet();
  const s = new Set<string>();
  for (let i = 0; i < 50_000; i++) {
    const x = sha(i % 40_000); // a fifth added twice
    d.add(x);
    s.add(x);
  }
  for (const odd of ['', 'not a digest', sha(1).toUpperCase(), `${sha(2)}0`, sha(3).slice(1)]) {
    d.add(odd);
    s.add(odd);
  }
  assert.equal(d.size, s.size);
  for (const x of s) assert.ok(d.has(x), x);
  for (let i = 40_000; i < 41_000; i++) assert.equal(d.has(sha(i)), false);
  assert.equal(d.has(sha(4).slice(0, 63)), false);
  assert.deepEqual([...d].sort(), [...s].sort());
  let n = 0;
  d.forEach((v, k, set) => {
    assert.equal(v, k);
    assert.equal(set, d);
    n++;
  });
  assert.equal(n, s.size);
});
