import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CachedBackend, PREFETCH_AHEAD } from '../../src/store/cache-backend.js';
import { RepoLock } from '../../src/store/lock.js';
import { MULTIPART_OVER, S3Backend } from '../../src/store/s3-backend.js';
import { Store } from '../../src/store/store.js';
import { swiftGet, testServices, uniqueName } from '../helpers/services.js';
import { tempDir } from '../library/images.js';

/**
 * The store's S3 backend against a real S3 implementation (OpenStack Swift's s3api, see
 * scripts/test-services.sh), with what it stored read back through Swift's own API (the
 * oracle), and the start-up errors: wrong secret, missing bucket, nobody listening.
 */
const svc = testServices();
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('put, ranged get, list, delete, multipart and conditional put on S3; bytes as Swift itself returns them', async () => {
  const prefix = uniqueName('s3');
  const b = await S3Backend.open(`${svc.s3}/${prefix}`);
  try {
    const small = randomBytes(1000);
    await b.put('index/aa', small);
    assert.deepEqual(Buffer.from(await b.get('index/aa')), small);
    assert.deepEqual(Buffer.from(await b.getRange('index/aa', 10, 20)), small.subarray(10, 30));
    assert.deepEqual(Buffer.from(await b.getRange('index/aa', 990, 100)), small.subarray(990), 'short at the end');
    assert.equal((await b.getRange('index/aa', 5000, 10)).length, 0, 'past the end: nothing');
    // a pack larger than the multipart threshold, in parts as the packer hands them over
    const parts = [randomBytes(MULTIPART_OVER - 123), randomBytes(MULTIPART_OVER), randomBytes(777)];
    const whole = Buffer.concat(parts);
    await b.put('packs/ab/abcd', parts);
    const viaSwift = await swiftGet(`${prefix}/packs/ab/abcd`);
    assert.equal(viaSwift.length, whole.length);
    assert.equal(sha(viaSwift), sha(whole), 'Swift returns the multipart object whole');
    const mid = MULTIPART_OVER - 200;
    assert.deepEqual(
      Buffer.from(await b.getRange('packs/ab/abcd', mid, 400)),
      whole.subarray(mid, mid + 400),
      'a range across parts',
    );
    const out = Buffer.alloc(64);
    assert.equal(await b.getRangeInto('packs/ab/abcd', whole.length - 32, out), 32);
    assert.deepEqual(out.subarray(0, 32), whole.subarray(whole.length - 32));
    const listed = (await b.list('packs/')).map((e) => [e.key, e.size]);
    assert.deepEqual(listed, [['packs/ab/abcd', whole.length]]);
    assert.deepEqual((await b.list('')).map((e) => e.key).sort(), ['index/aa', 'packs/ab/abcd']);
    // conditional writes
    assert.equal(await b.putIfAbsent('config', Buffer.from('one')), true);
    assert.equal(await b.putIfAbsent('config', Buffer.from('two')), false);
    assert.equal(Buffer.from(await b.get('config')).toString(), 'one');
    await b.delete('index/aa');
    await b.delete('index/aa');
    await assert.rejects(b.get('index/aa'), (e: Error & { code?: string }) => e.code === 'NOT_FOUND');
    assert.deepEqual((await b.list('index/')).length, 0);
    process.stderr.write(`# S3 server honours If-None-Match: * on PUT: ${b.conditionalWrites}\n`);
  } finally {
    await b.close();
  }
});

test('start-up errors: wrong secret, missing bucket, unreachable endpoint: one clear error each', async () => {
  const keep = { ...process.env };
  try {
    process.env.AWS_SECRET_ACCESS_KEY = 'not-the-secret';
    await assert.rejects(S3Backend.open(`${svc.s3}/x`), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'DENIED');
      assert.match(e.message, /refused the credentials \(SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied/);
      return true;
    });
    process.env.AWS_SECRET_ACCESS_KEY = keep.AWS_SECRET_ACCESS_KEY;
    process.env.AWS_ACCESS_KEY_ID = 'test:nobody';
    await assert.rejects(S3Backend.open(`${svc.s3}/x`), (e: Error & { code?: string }) => e.code === 'DENIED');
    process.env.AWS_ACCESS_KEY_ID = keep.AWS_ACCESS_KEY_ID;
    await assert.rejects(S3Backend.open('s3://no-such-bucket-here/x'), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'NOT_FOUND');
      assert.match(e.message, /no such bucket: no-such-bucket-here/);
      return true;
    });
    process.env.AWS_ENDPOINT_URL = 'http://127.0.0.1:9';
    await assert.rejects(S3Backend.open(`${svc.s3}/x`), /cannot reach the S3 store/);
  } finally {
    for (const k of ['AWS_SECRET_ACCESS_KEY', 'AWS_ACCESS_KEY_ID', 'AWS_ENDPOINT_URL']) process.env[k] = keep[k];
  }
});

test('a store on S3 behind the bounded cache: blobs read back after a fresh open, the cache stays under its bound', async () => {
  const url = `${svc.s3}/${uniqueName('store')}`;
  const cacheDir = path.join(tempDir('s3-cache'), 'cache');
  const blobs = Array.from({ length: 16 }, () => randomBytes(3 * 1024 * 1024)); // incompressible: ~48 MiB of packs
  const digests: string[] = [];
  {
    const s = await Store.open(await S3Backend.open(url));
    // a flush after every 4 blobs: four packs of 12 MiB
    for (const [i, b] of blobs.entries()) {
      digests.push((await s.put('data', b)).digest);
      if (i % 4 === 3) await s.flush();
    }
    await s.close();
  }
  const bound = 30 * 1024 * 1024; // two packs fit, three do not: eviction
  const cached = new CachedBackend(await S3Backend.open(url), cacheDir, bound);
  const s = await Store.open(cached);
  try {
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < blobs.length; i++) assert.equal(sha(await s.get(digests[i])), sha(blobs[i]));
    }
    assert.ok(cached.hits > 0, 'blobs after the first of a pack come from the cache');
    assert.ok(cached.misses > 3, 'evicted packs are fetched again');
    assert.ok(cached.misses < blobs.length * 2, 'not one GET per blob');
    await cached.idle(); // reads are answered as their bytes arrive, before the object is written to the cache
    // (.listing.json is what the cache remembers of the store's index listing, not a cached object)
    const onDisk = readdirSync(cacheDir)
      .filter((f) => f !== '.listing.json')
      .reduce((n, f) => n + statSync(path.join(cacheDir, f)).size, 0);
    assert.ok(onDisk <= bound, `cache holds ${onDisk} bytes, bound ${bound}`);
    assert.equal(onDisk, cached.size);
    const v = await s.verify();
    assert.deepEqual(v.errors, []);
  } finally {
    await s.close();
  }
});

test('checkout prefetch on S3: packs fetched ahead in the order asked, no further than PREFETCH_AHEAD past the reader, each once', async () => {
  const url = `${svc.s3}/${uniqueName('prefetch')}`;
  const blobs = Array.from({ length: 10 }, () => randomBytes(256 * 1024));
  const digests: string[] = [];
  {
    const s = await Store.open(await S3Backend.open(url));
    for (const b of blobs) {
      digests.push((await s.put('data', b)).digest);
      await s.flush(); // a pack each
    }
    await s.close();
  }
  const cacheDir = path.join(tempDir('s3-prefetch'), 'cache');
  const cached = new CachedBackend(await S3Backend.open(url), cacheDir);
  const s = await Store.open(cached);
  try {
    const packsOf = (ds: string[]) => ds.map((d) => (s.entry(d) as { pack: string }).pack);
    assert.equal(new Set(packsOf(digests)).size, 10);
    const idle = async () => {
      while (cached.prefetching > 0) await new Promise((r) => setTimeout(r, 20));
    };
    const inCache = () => new Set(readdirSync(cacheDir).filter((f) => f.startsWith('packs')));
    const misses0 = cached.misses;
    s.prefetch(digests);
    await idle();
    // nothing read yet: the first PREFETCH_AHEAD packs, in the order asked, and no more
    assert.equal(cached.misses - misses0, PREFETCH_AHEAD);
    const want = packsOf(digests.slice(0, PREFETCH_AHEAD)).map((p) => `packs~${p.slice(0, 2)}~${p}`);
    assert.deepEqual(inCache(), new Set(want));
    for (const [i, d] of digests.entries()) assert.equal(sha(await s.get(d)), sha(blobs[i]), `blob ${i}`);
    await idle();
    assert.equal(cached.misses - misses0, 10, 'every pack fetched once');
    assert.equal(inCache().size, 10);
  } finally {
    await s.close();
  }
});

test('repository locks on S3: gc (exclusive) waits for a check-in (shared) on another server, and the other way', async () => {
  const url = `${svc.s3}/${uniqueName('lock')}`;
  const a = await S3Backend.open(url);
  const b = await S3Backend.open(url);
  try {
    const checkin = await RepoLock.acquire(a, 'shared', 'checkin');
    await assert.rejects(RepoLock.acquire(b, 'exclusive', 'gc', 0), /busy: shared lock held by checkin/);
    const second = await RepoLock.acquire(b, 'shared', 'checkin 2');
    await checkin.release();
    await second.release();
    const gc = await RepoLock.acquire(b, 'exclusive', 'gc', 0);
    await assert.rejects(RepoLock.acquire(a, 'shared', 'checkin', 0), /busy: exclusive lock held by gc/);
    await gc.release();
    (await RepoLock.acquire(a, 'shared', 'checkin', 0)).release();
  } finally {
    await a.close();
    await b.close();
  }
});

test('a small cold read through the cache is one ranged GET, not a wait for the whole pack; the pack is cached behind it', async () => {
  const url = `${svc.s3}/${uniqueName('small-read')}`;
  const data = randomBytes(8 * 1024 * 1024);
  const remote = await S3Backend.open(url);
  await remote.put('packs/cd/cdef', data);
  const calls: string[] = [];
  let release: () => void = () => {};
  const held = new Promise<void>((r) => {
    release = r;
  });
  // the whole-object GET is held back until the small read has been answered (or 5 s, so that
  // a read that waits for it fails the call-order assertion below instead of hanging)
  const fallback = setTimeout(() => release(), 5000);
  const counting = Object.create(remote) as S3Backend;
  // the cache fetches a whole object as a stream (getStream); count it as the whole-object GET it is
  counting.getStream = async (key: string) => {
    calls.push(`get ${key}`);
    await held;
    return remote.getStream(key);
  };
  counting.getRangeInto = (key: string, offset: number, out: Uint8Array) => {
    calls.push(`range ${key} ${offset} ${out.length}`);
    return remote.getRangeInto(key, offset, out);
  };
  const cacheDir = path.join(tempDir('s3-small-read'), 'cache');
  const cached = new CachedBackend(counting, cacheDir);
  try {
    const out = Buffer.alloc(4096);
    assert.equal(await cached.getRangeInto('packs/cd/cdef', 5000, out), 4096);
    assert.deepEqual(out, data.subarray(5000, 9096));
    assert.deepEqual(calls, ['get packs/cd/cdef', 'range packs/cd/cdef 5000 4096']);
    release();
    clearTimeout(fallback);
    // a second read of the same pack waits for its range of the whole object (already on its way)
    const out2 = Buffer.alloc(4096);
    assert.equal(await cached.getRangeInto('packs/cd/cdef', 7_000_000, out2), 4096);
    assert.deepEqual(out2, data.subarray(7_000_000, 7_004_096));
    assert.equal(calls.length, 2, 'no third request: the rest comes from the whole-object GET');
    await cached.idle();
    assert.equal(cached.size, data.length);
    // a read past SMALL_READ of a cold object is answered from the whole-object GET
    await remote.put('packs/ef/ef01', data);
    const big = Buffer.alloc(2 * 1024 * 1024);
    assert.equal(await cached.getRangeInto('packs/ef/ef01', 0, big), big.length);
    assert.deepEqual(big, data.subarray(0, big.length));
    assert.deepEqual(calls.slice(2), ['get packs/ef/ef01']);
  } finally {
    await cached.close();
  }
});

test('a read through the cache of an object on its way is answered when its range has arrived, before the rest; bytes exact', async () => {
  const url = `${svc.s3}/${uniqueName('stream-read')}`;
  const data = randomBytes(6 * 1024 * 1024 + 12345);
  const remote = await S3Backend.open(url);
  await remote.put('packs/aa/aa01', data);
  // the whole-object GET's body stops after its first 2 MiB until released
  const half = 2 * 1024 * 1024;
  let released = false;
  let release: () => void = () => {};
  const held = new Promise<void>((r) => {
    release = () => {
      released = true;
      r();
    };
  });
  // released by the test once the front was read, or after 10 s (then the assertion below fails)
  const fallback = setTimeout(() => release(), 10_000);
  let delivered = 0;
  const slowed = Object.create(remote) as S3Backend;
  slowed.getStream = async (key: string) => {
    const st = await remote.getStream(key);
    return {
      size: st.size,
      cancel: st.cancel,
      body: (async function* () {
        for await (const c of st.body) {
          if (delivered < half && delivered + c.length >= half) {
            yield c.subarray(0, half - delivered);
            const rest = c.subarray(half - delivered);
            delivered = half;
            await held;
            delivered += rest.length;
            yield rest;
          } else {
            delivered += c.length;
            yield c;
          }
        }
      })(),
    };
  };
  const cacheDir = path.join(tempDir('s3-stream-read'), 'cache');
  const cached = new CachedBackend(slowed, cacheDir);
  try {
    cached.prefetch(['packs/aa/aa01']);
    const front = Buffer.alloc(1536 * 1024); // past SMALL_READ: not a ranged GET of its own
    assert.equal(await cached.getRangeInto('packs/aa/aa01', 100_000, front), front.length);
    assert.equal(released, false, 'the front was answered while the rest of the object was held back');
    assert.ok(delivered <= half, `${delivered} bytes delivered when the front was answered`);
    assert.deepEqual(front, data.subarray(100_000, 100_000 + front.length));
    assert.deepEqual(
      readdirSync(cacheDir).filter((f) => !f.startsWith('.tmp-')),
      [],
      'not in the cache before the object is whole',
    );
    const tailRead = cached.getRangeInto('packs/aa/aa01', data.length - 4000, Buffer.alloc(8000));
    release();
    clearTimeout(fallback);
    assert.equal(await tailRead, 4000, 'short at the end of the object');
    await cached.idle();
    assert.equal(cached.size, data.length, 'then cached whole');
    assert.equal(cached.misses, 1, 'one GET of the object');
    const again = Buffer.alloc(data.length);
    assert.equal(await cached.getRangeInto('packs/aa/aa01', 0, again), data.length);
    assert.equal(sha(again), sha(data), 'the cached copy is byte-exact');
    assert.equal(cached.hits >= 1, true);
  } finally {
    await cached.close();
  }
});

test('an object too large for the cache: one GET serves the reads waiting for it, from memory; nothing cached', async () => {
  const url = `${svc.s3}/${uniqueName('too-large')}`;
  const data = randomBytes(3 * 1024 * 1024 + 777);
  const remote = await S3Backend.open(url);
  await remote.put('packs/bb/bb01', data);
  const calls: string[] = [];
  const counting = Object.create(remote) as S3Backend;
  counting.getStream = (key: string) => {
    calls.push(`get ${key}`);
    return remote.getStream(key);
  };
  counting.getRangeInto = (key: string, offset: number, out: Uint8Array) => {
    calls.push(`range ${key} ${offset} ${out.length}`);
    return remote.getRangeInto(key, offset, out);
  };
  const cacheDir = path.join(tempDir('s3-too-large'), 'cache');
  const cached = new CachedBackend(counting, cacheDir, 4 * 1024 * 1024); // objects over 2 MiB are not cached
  try {
    cached.prefetch(['packs/bb/bb01']);
    const a = Buffer.alloc(2 * 1024 * 1024);
    const b = Buffer.alloc(2 * 1024 * 1024);
    const [na, nb] = await Promise.all([
      cached.getRangeInto('packs/bb/bb01', 0, a),
      cached.getRangeInto('packs/bb/bb01', a.length, b),
    ]);
    assert.equal(na, a.length);
    assert.equal(nb, data.length - a.length, 'short at the end');
    assert.equal(sha(Buffer.concat([a, b.subarray(0, nb)])), sha(data));
    assert.deepEqual(calls, ['get packs/bb/bb01'], 'one GET for both reads');
    await cached.idle();
    assert.deepEqual(readdirSync(cacheDir), [], 'nothing written to the cache');
    assert.equal(cached.size, 0);
  } finally {
    await cached.close();
  }
});

test('a read-only open from the cache remembered listing: no request until a miss; what another server committed or its gc moved reads back exact; a write lists first', async () => {
  const url = `${svc.s3}/${uniqueName('remembered')}`;
  const dirA = path.join(tempDir('s3-remembered'), 'cache');
  const blob = () => randomBytes(200 * 1024);
  const [x1, y1, x2] = [blob(), blob(), blob()];
  /** Server B: writes with no cache (its own process in production). */
  const serverB = async <T>(fn: (s: Store) => Promise<T>): Promise<T> => {
    const s = await Store.open(await S3Backend.open(url));
    try {
      return await fn(s);
    } finally {
      await s.close();
    }
  };
  /** Server A: a read-only open (library.ts openBackend) on its cache; the remote is made lazily. */
  const openA = async () => {
    const remote = S3Backend.deferred(url);
    const remembered = CachedBackend.remembered(dirA, remote.name);
    assert.ok(remembered, 'the cache remembers the listing');
    const store = await Store.open(new CachedBackend(remote, dirA, undefined, { remembered }));
    return { remote, store };
  };
  const [dx1, dy1] = await serverB(async (s) => {
    const d = [(await s.put('data', x1)).digest, (await s.put('data', y1)).digest];
    await s.flush();
    return d;
  });
  {
    // A reads x1 the usual way (open checks the bucket): its pack and index are cached, the listing remembered
    const s = await Store.open(new CachedBackend(await S3Backend.open(url), dirA));
    assert.equal(sha(await s.get(dx1)), sha(x1));
    await s.close();
  }
  {
    const { remote, store } = await openA();
    try {
      assert.equal(store.indexFromRemembered, true);
      assert.equal(sha(await store.get(dx1)), sha(x1));
      assert.equal(remote.connected, false, 'a read the cache holds makes no request (the SDK is not even loaded)');
    } finally {
      await store.close();
    }
  }
  // server B commits x2 (a new pack and index file A's remembered listing does not name)
  const dx2 = await serverB(async (s) => {
    const d = (await s.put('data', x2)).digest;
    await s.flush();
    return d;
  });
  {
    const { remote, store } = await openA();
    try {
      assert.equal(sha(await store.get(dx2)), sha(x2), 'a blob the remembered index lacks: listed again, read exact');
      assert.equal(remote.connected, true);
      assert.equal(store.indexFromRemembered, false);
      assert.equal(sha(await store.get(dx1)), sha(x1));
    } finally {
      await store.close();
    }
  }
  // server B's gc drops y1: x1's pack is rewritten (new pack, new index), the old pack and index files deleted
  const before = await serverB(async (s) => ({
    pack: s.entry(dx1)?.pack as string,
    index: (await s.backend.list('index/')).map((e) => e.key),
  }));
  await serverB(async (s) => s.prune(new Set([dx1, dx2])));
  const cacheFile = (part: string) => readdirSync(dirA).find((f) => f.includes(part));
  const saved = new Map<string, Buffer>(); // the old index files' cached copies
  {
    // the old pack is still in A's cache: the read is answered from it (the same bytes, checked against the digest)
    assert.ok(cacheFile(before.pack));
    const { store } = await openA();
    try {
      assert.equal(store.entry(dx1)?.pack, before.pack, 'the remembered index names the deleted pack');
      assert.equal(sha(await store.get(dx1)), sha(x1));
      assert.equal(sha(await store.get(dx2)), sha(x2));
    } finally {
      await store.close();
    }
  }
  {
    // the old pack evicted from A's cache: its GET finds nothing, the store lists again and reads where gc moved x1
    rmSync(path.join(dirA, cacheFile(before.pack) as string));
    const { store } = await openA();
    try {
      assert.equal(sha(await store.get(dx1)), sha(x1), 'read from the pack gc wrote');
      assert.notEqual(store.entry(dx1)?.pack, before.pack);
    } finally {
      await store.close();
    }
  }
  {
    // a remembered index file gone from the remote and from the cache: the open lists for real
    const r = CachedBackend.remembered(dirA, S3Backend.deferred(url).name);
    assert.ok(r);
    writeFileSync(
      path.join(dirA, '.listing.json'),
      JSON.stringify({ ...r, index: before.index.map((key) => ({ key, size: 1, mtimeMs: 0 })) }),
    );
    for (const k of before.index) {
      const f = cacheFile(k.slice('index/'.length));
      assert.ok(f, `${k} is in A's cache`);
      saved.set(f, readFileSync(path.join(dirA, f)));
      rmSync(path.join(dirA, f));
    }
    const { store } = await openA();
    try {
      assert.equal(store.indexFromRemembered, false);
      assert.equal(sha(await store.get(dx1)), sha(x1));
      assert.equal(store.entry(dy1), undefined, 'gc dropped y1');
    } finally {
      await store.close();
    }
  }
  {
    // a write after a read-only open lists first: y1 (gone since gc, still in the stale index) is stored again
    const r = CachedBackend.remembered(dirA, S3Backend.deferred(url).name);
    assert.ok(r);
    writeFileSync(
      path.join(dirA, '.listing.json'),
      JSON.stringify({ ...r, index: before.index.map((key) => ({ key, size: 1, mtimeMs: 0 })) }),
    );
    for (const [f, bytes] of saved) writeFileSync(path.join(dirA, f), bytes);
    const { store } = await openA();
    try {
      assert.equal(store.indexFromRemembered, true);
      assert.equal(store.has(dy1), true, 'the stale index still names y1 (in the deleted pack)');
      await store.put('data', y1);
      await store.flush();
    } finally {
      await store.close();
    }
    await serverB(async (s) => assert.equal(sha(await s.get(dy1)), sha(y1), 'y1 readable again after the write'));
  }
});
