import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Access } from '../../src/catalog/access.js';
import { RateLimiter } from '../../src/serve/http/rate-limit.js';

/**
 * The rate limiter's timed sync against a catalog that fails once. A connection lost during
 * COMMIT (PostgreSQL restarting: `terminating connection due to administrator command`) is
 * not retried by the catalog, as it may have committed; a fault a test cannot time against a
 * real server, so the catalog here is a stand-in that fails the first write. Before, the
 * timer's `void this.sync()` left the rejection unhandled and the server process ended
 * (test/serve/scale-faults: "a server died on its own", then ECONNREFUSED).
 */
test('a sync the catalog fails is told, not thrown at the process, and its counts are written later', async () => {
  const written: number[] = [];
  let fail = 1;
  const access = {
    requestCount: async () => 0,
    addRequests: async (_key: string, _minute: number, n: number) => {
      if (fail-- > 0) throw new Error('catalog database: terminating connection due to administrator command');
      written.push(n);
      return written.reduce((a, b) => a + b, 0);
    },
    dropRateWindows: async () => {},
  } as unknown as Access;
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  const told: unknown[] = [];
  const limiter = new RateLimiter(access, 100, 20, undefined, (e) => told.push(e));
  try {
    assert.equal(await limiter.take('k'), true);
    assert.equal(await limiter.take('k'), true);
    // the first timed sync fails; the next one (scheduled again) writes both requests
    for (let i = 0; i < 100 && written.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(told.length, 1, 'the failure was told once');
    assert.match(String((told[0] as Error).message), /administrator command/);
    assert.deepEqual(written, [2], 'the two requests counted after the failed sync');
    assert.equal(await limiter.take('k'), true);
    await limiter.close();
    assert.deepEqual(written, [2, 1]);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});
