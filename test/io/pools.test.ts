import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BufferPool } from '../../src/util/buffer-pool.js';
import { GenCache } from '../../src/util/gen-cache.js';
import { PromiseLru } from '../../src/util/promise-lru.js';

test('buffer pool: power-of-two and 64 KiB-step classes, exact small buffers, bounds', () => {
  const p = new BufferPool(2);
  const a = p.take(100_000);
  assert.equal(a.length, 131072);
  assert.equal(p.take(10).length, 65536, 'pow2 pools everything from 64 KiB');
  p.give(a);
  assert.equal(p.take(70_000), a, 'a returned buffer is reused for its class');
  const b = [p.take(131072), p.take(131072), p.take(131072)];
  for (const x of b) p.give(x);
  assert.deepEqual(
    [p.take(131072), p.take(131072), p.take(131072)].map((x) => b.includes(x)),
    [true, true, false],
    'keeps at most keepPerClass per class',
  );
  p.give(Buffer.alloc(100_000)); // not a class size: dropped
  assert.notEqual(p.take(100_000).length, 100_000);

  const s = new BufferPool(Number.POSITIVE_INFINITY, false, { classes: 'step', poolFrom: 65536, maxBytes: 256 << 10 });
  assert.equal(s.take(4096).length, 4096, 'below poolFrom: exact');
  const c = s.take(3 * 65536 + 1);
  assert.equal(c.length, 4 * 65536);
  s.give(c);
  assert.equal(s.take(4 * 65536), c);
  const d = [s.take(196608), s.take(196608)];
  for (const x of d) s.give(x);
  assert.equal(s.take(196608), d[1], 'the second one went over maxBytes: the first, kept longer, was dropped');
  assert.ok(!d.includes(s.take(196608)));

  // a large buffer given back past maxBytes drops smaller ones kept longer unused, not itself
  const m = new BufferPool(8, false, { maxBytes: 1 << 20 });
  const small = [m.take(256 << 10), m.take(256 << 10), m.take(128 << 10)];
  const large = m.take(1 << 20);
  for (const x of small) m.give(x);
  m.give(large);
  assert.equal(m.take(1 << 20), large, 'the large buffer was kept');
  assert.ok(!small.includes(m.take(256 << 10)), 'the small ones were dropped to make room');
  assert.ok(!small.includes(m.take(128 << 10)));
  const twice = m.take(1 << 20);
  m.give(twice);
  m.give(m.take(2 << 20)); // past maxBytes on its own: dropped, what is kept stays
  assert.equal(m.take(1 << 20), twice);

  const sh = new BufferPool(1, true);
  assert.ok(sh.take(1).buffer instanceof SharedArrayBuffer);
});

test('promise LRU: shared loads, cost bound, failed loads forgotten', async () => {
  const lru = new PromiseLru<number>(3);
  let loads = 0;
  const load = (v: number) => () => {
    loads++;
    return Promise.resolve(v);
  };
  const [x, y] = await Promise.all([lru.get(1, 1, load(10)), lru.get(1, 1, load(11))]);
  assert.deepEqual([x, y, loads], [10, 10, 1]);
  await lru.get(2, 1, load(20));
  await lru.get(3, 1, load(30));
  await lru.get(1, 1, load(12)); // refresh 1: 2 is now the oldest
  await lru.get(4, 1, load(40));
  assert.equal(lru.size, 3);
  assert.equal(lru.peek(2), undefined, 'least recently used went first');
  assert.equal(await lru.peek(1), 10);
  await assert.rejects(lru.get(9, 1, () => Promise.reject(new Error('boom'))));
  await new Promise((r) => setImmediate(r));
  assert.equal(lru.peek(9), undefined, 'a failed load is not cached');
  assert.equal(await lru.get(5, 100, load(50)), 50, 'one entry over the bound still works');
  assert.equal(lru.size, 1);
});

test('generation cache: hits survive one generation change, misses after two', () => {
  const g = new GenCache<number, string>(2);
  g.set(1, 'a');
  g.set(2, 'b');
  g.set(3, 'c'); // 1 and 2 become old
  assert.equal(g.get(1), 'a'); // moved to new: {3, 1}
  g.set(4, 'd'); // {3, 1} become old
  assert.equal(g.get(2), undefined);
  assert.equal(g.get(1), 'a');
  g.clear();
  assert.equal(g.get(3), undefined);
});
