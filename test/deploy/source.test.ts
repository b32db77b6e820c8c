import assert from 'node:assert/strict';
import { closeSync, copyFileSync, existsSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Access } from '../../src/catalog/access.js';
import { ChunkCache } from '../../src/deploy/chunk-cache.js';
import { Deployer } from '../../src/deploy/deployer.js';
import { httpLibraryDeploySource } from '../../src/deploy/source.js';
import { Library } from '../../src/library/library.js';
import type { LayoutManifest } from '../../src/library/manifest.js';
import { parseStaticIndex, resolveStatic } from '../../src/library/static-index.js';
import { startServer } from '../../src/serve/http/server.js';
import { HttpBackend } from '../../src/store/http-backend.js';
import { StrataError } from '../../src/util/errors.js';
import { CLI, strata } from '../helpers/cli.js';
import { mutate, prng } from '../helpers/fuzz.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { nbdReads, sameAs, startDeploy, twoVersions } from './helpers.js';
import { flippingProxy, lighttpd, type WebServer } from './web.js';

/**
 * The source side of strata deploy (issue 16): a library folder served by a real web server
 * (lighttpd, with Range requests), the library service (`strata serve`) with a token, a
 * proxy that damages a reply, the web server killed mid-deploy, the host's chunk cache and
 * preload, and --compare of an unknown TARGET. Oracles: qemu-img compare against `strata
 * checkout`'s raw file, lighttpd's own access log for what was fetched, libnbd reads.
 */
let dir: string;
let lib: string;
let v1: string;
let v2: string;
let web: WebServer;
let libUrl: string;

const exitOf = (events: Array<Record<string, unknown>>) => events.find((e) => e.event === 'exit') ?? {};
// reads of pack data (the HEAD requests that check a static index against the store at open are not reads)
const packRequests = (lines: string[]) => lines.filter((l) => /^GET \S*\/store\/packs\//.test(l));

async function layoutOf(ref: string): Promise<LayoutManifest> {
  const l = await Library.open(lib, { create: false });
  try {
    return await l.layout((await l.catalog.resolve(ref)).manifest);
  } finally {
    await l.close();
  }
}

before(async () => {
  dir = tempDir('deploy-source');
  ({ lib, v1, v2 } = await twoVersions(dir));
  const out = await run(process.execPath, [CLI, 'export-index', '--library', lib]);
  assert.match(out, /strata-index\.json: 1 images, 2 versions/);
  web = await lighttpd(dir, dir);
  libUrl = `${web.url}/lib`;
});

after(async () => {
  await web?.stop();
});

describe('deploy from a library over plain HTTP', () => {
  test('lighttpd serves the folder: REF resolved by the static index, chunks by Range requests, TARGET identical', async () => {
    const target = path.join(dir, 'http.raw');
    const seen = (await web.settledLog()).length;
    const d = await startDeploy(['disk@2', '--library', libUrl, '--to', target, '--exit-when-complete']);
    assert.equal(await d.exited, 0, d.stderr());
    assert.equal(await sameAs(v2, target), true, 'qemu-img compare: TARGET holds disk@2');
    const lines = (await web.settledLog()).slice(seen);
    // the web server's own log: the index, then partial replies (206) of pack files, coalesced
    assert.ok(
      lines.some((l) => /^GET \/lib\/strata-index\.json 200 /.test(l)),
      lines.join('\n'),
    );
    const packs = packRequests(lines);
    assert.ok(packs.length > 0 && packs.every((l) => / 206 \d+ bytes=\d+-\d+$/.test(l)), packs.join('\n'));
    // the packs the version needs were checked to exist before anything was written (a stale index is refused)
    const heads = lines.filter((l) => /^HEAD \S*\/store\/packs\//.test(l));
    assert.ok(heads.length > 0 && heads.every((l) => / 200 /.test(l)), lines.join('\n'));
    const served = packs.reduce((n, l) => n + Number(l.split(' ')[3]), 0);
    const e = exitOf(d.events);
    // every chunk came from the origin once (each checked, then kept while its neighbours are read)
    const m = await layoutOf('disk@2');
    const distinct = new Map(m.chunks.map((c, i) => [c, m.chunkLengths[i]]));
    assert.equal(
      e.originBytes,
      [...distinct.values()].reduce((a, b) => a + b, 0),
    );
    assert.ok(served > 0, 'bytes came from lighttpd');
    assert.ok(
      packs.length < distinct.size / 4,
      `${packs.length} requests for ${distinct.size} chunks: neighbours coalesced`,
    );
  });

  test('the HTTP store backend coalesces neighbouring reads of a pack into one Range request', async () => {
    const l = await Library.open(lib, { create: false });
    let key: string;
    try {
      const packs = await l.store.backend.list('packs/');
      key = packs.sort((a, b) => b.size - a.size)[0].key;
    } finally {
      await l.close();
    }
    const file = readFileSync(path.join(lib, 'store', key));
    const b = new HttpBackend(`${libUrl}/store`, []);
    const seen = (await web.settledLog()).length;
    // ten neighbours (two with a small gap between them) and one far away, asked for together
    const asks: Array<[number, number]> = [];
    for (let i = 0; i < 10; i++) asks.push([i * 1000 + (i >= 5 ? 500 : 0), 1000]);
    asks.push([file.length - 3000, 3000]);
    const got = await Promise.all(asks.map(([o, n]) => b.getRange(key, o, n)));
    for (const [i, [o, n]] of asks.entries())
      assert.ok(Buffer.from(got[i]).equals(file.subarray(o, o + n)), `range ${o}+${n}`);
    assert.equal(b.requests, 2);
    const lines = packRequests((await web.settledLog()).slice(seen));
    assert.deepEqual(
      lines.map((x) => x.split(' ').pop()).sort(),
      ['bytes=0-10499', `bytes=${file.length - 3000}-${file.length - 1}`].sort(),
    );
    await assert.rejects(b.putIfAbsent('packs/x'), /read only/);
  });

  test('checkin refreshes the static index once the library has one', async () => {
    const before = JSON.parse(readFileSync(path.join(lib, 'strata-index.json'), 'utf8'));
    await run(process.execPath, [CLI, 'tag', 'disk@1', 'stable', '--library', lib]);
    const after = JSON.parse(readFileSync(path.join(lib, 'strata-index.json'), 'utf8'));
    const v = after.images[0].versions.find((x: { number: number }) => x.number === 1);
    assert.deepEqual(v.tags, ['stable']);
    assert.notEqual(before.written, after.written);
    // and a REF by tag resolves over HTTP
    const target = path.join(dir, 'tag.raw');
    const d = await startDeploy(['disk:stable', '--library', libUrl, '--to', target, '--exit-when-complete']);
    assert.equal(await d.exited, 0, d.stderr());
    assert.equal(await sameAs(v1, target), true);
  });

  test('a proxy that flips a byte: the chunk is refused, never written, and fetched again', async () => {
    // (a) every reply damaged: the guest's read fails naming the chunk, TARGET is not written there
    let damage = false;
    const proxy = await flippingProxy(web.url, (p) => damage && p.includes('/store/packs/'));
    const target = path.join(dir, 'flip.raw');
    const src = await httpLibraryDeploySource(`${proxy.url}/lib`, 'disk@1');
    const d = await Deployer.open(src, target, { noCopier: true, fetchTimeout: 1500 });
    // the first part's ranges (the layout is read a part at a time)
    const m = (await src.layout.placedRanges().next()).value;
    assert.ok(m, 'the layout has ranges');
    const i = m.disk.findIndex((_: number, k: number) => m.length[k] >= 4096);
    assert.ok(i >= 0, 'a range of 4 KiB or more');
    const at = m.disk[i];
    damage = true;
    try {
      await assert.rejects(d.ensureLocal(at, 4096), (e: Error) => {
        assert.match(e.message, /gave up a guest read of \d+ bytes at \d+/);
        assert.match(e.message, /chunk [0-9a-f]{16}…/);
        assert.match(e.message, /sha256|damaged|corrupt|checksum|decod/i);
        return true;
      });
      assert.ok(proxy.flipped.length >= 2, 'retried against the damaging proxy');
      const block = Math.floor(at / d.blockSize);
      assert.equal(d.local[block], 0, 'the block is not local');
      const fh = await open(target, 'r');
      const got = Buffer.alloc(d.blockSize);
      await fh.read(got, 0, got.length, block * d.blockSize);
      await fh.close();
      assert.ok(
        got.every((b) => b === 0),
        'nothing of the damaged chunk reached TARGET',
      );
      // (b) the damage stops: the same read succeeds and reads as the version
      damage = false;
      await d.ensureLocal(at, 4096);
      const out = Buffer.alloc(4096);
      await d.read(at, out);
      assert.ok(out.equals(readFileSync(v1).subarray(at, at + 4096)));
    } finally {
      await d.close();
      await proxy.close();
    }
  });

  test('one damaged reply during a whole deploy: retried, TARGET identical', async () => {
    let packs = 0;
    const proxy = await flippingProxy(web.url, (p) => p.includes('/store/packs/') && packs++ === 1);
    const target = path.join(dir, 'flip-once.raw');
    try {
      const d = await startDeploy(['disk@1', '--library', `${proxy.url}/lib`, '--to', target, '--exit-when-complete']);
      assert.equal(await d.exited, 0, d.stderr());
      assert.equal(proxy.flipped.length, 1, 'one reply was damaged');
      assert.ok(
        d.events.some((e) => e.event === 'retry'),
        'the damaged chunk was refused and fetched again',
      );
      assert.equal(await sameAs(v1, target), true, 'qemu-img compare: TARGET identical');
    } finally {
      await proxy.close();
    }
  });

  test('the web server killed and restarted mid-deploy: a waiting guest read and the copy complete, TARGET identical', async () => {
    const target = path.join(dir, 'restart.raw');
    // a range the guest reads while the server is down: its chunk's frame must not be read
    // before (the manifest's frame is read at start, the copier starts at the disk's start)
    const l = await Library.open(lib, { create: false });
    let tail: [number, number];
    try {
      const v = await l.catalog.resolve('disk@1');
      const m = await l.layout(v.manifest);
      const frameOf = (d: string) => {
        const e = l.store.entry(d);
        return `${e?.pack}:${e?.offset}`;
      };
      const early = new Set([frameOf(v.manifest)]);
      for (let i = 0; i < m.ranges.disk.length; i++)
        if (m.ranges.disk[i] < 16 << 20) early.add(frameOf(m.chunks[m.ranges.chunk[i]]));
      const late = m.ranges.disk
        .map((_, i) => i)
        .filter((i) => m.ranges.length[i] >= 4096 && !early.has(frameOf(m.chunks[m.ranges.chunk[i]])));
      assert.ok(late.length > 0, 'the image has data in frames of its own past 16 MiB');
      const i = late[late.length >> 1];
      tail = [m.ranges.disk[i], 4096];
    } finally {
      await l.close();
    }
    const d = await startDeploy(['disk@1', '--library', libUrl, '--to', target, '--bandwidth', '1M']);
    try {
      // some of the copy done, then the server goes away
      while (!d.events.some((e) => e.event === 'progress' && Number(e.fetchedBytes) > 0))
        await new Promise((r) => setTimeout(r, 50));
      await web.stop();
      // a guest read of a range not local yet waits for the source
      const read = nbdReads(d.uri, [tail]);
      let done = false;
      read.then(
        () => (done = true),
        () => (done = true),
      );
      while (!d.events.some((e) => e.event === 'retry' && /refused/.test(String(e.error))))
        await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(done, false, 'the guest read waits while the server is down');
      await web.start();
      const got = await read;
      assert.ok(got.equals(readFileSync(v1).subarray(tail[0], tail[0] + tail[1])), 'the waiting read got the version');
      // the rest at full speed
      while (!d.events.some((e) => e.event === 'complete')) await new Promise((r) => setTimeout(r, 100));
    } finally {
      d.child.kill('SIGTERM');
      await d.exited;
      await web.start();
    }
    assert.equal(await sameAs(v1, target), true, 'qemu-img compare: TARGET identical');
  });

  test('a source that stays down: the read gives up after the timeout, naming what it waited for', async () => {
    const src = await httpLibraryDeploySource(libUrl, 'disk@1');
    const target = path.join(dir, 'down.raw');
    const d = await Deployer.open(src, target, { noCopier: true, fetchTimeout: 1500 });
    const at = (await src.layout.placedRanges().next()).value?.disk[0] ?? 0;
    await web.stop();
    try {
      await assert.rejects(d.ensureLocal(at, 4096), (e: Error) => {
        assert.match(
          e.message,
          new RegExp(`gave up a guest read of \\d+ bytes at ${Math.floor(at / d.blockSize) * d.blockSize}`),
        );
        assert.match(e.message, /chunk [0-9a-f]{16}… \(disk offset \d+\)/);
        assert.match(e.message, new RegExp(`connection refused by 127\\.0\\.0\\.1:${web.port}`));
        return true;
      });
    } finally {
      await web.start();
      await d.close();
    }
  });
});

/** The oracle of a folder's size on disk: coreutils du (allocated blocks of files and folders). */
const du = async (d: string) => Number((await run('du', ['-sB1', d])).split(/\s/)[0]);

describe('deploy --cache and strata preload', () => {
  test('preload fills the cache; a deploy with the warm cache fetches nothing from the source', async () => {
    const cache = path.join(dir, 'cache-warm');
    const seen = (await web.settledLog()).length;
    const out = JSON.parse(
      await run(process.execPath, [CLI, 'preload', 'disk@1', '--library', libUrl, '--cache', cache, '--json']),
    );
    assert.ok(out[0].originBytes > 0 && out[0].chunks > 0, JSON.stringify(out));
    const mid = (await web.settledLog()).length;
    assert.ok(packRequests(web.log().slice(seen)).length > 0, 'preload read from lighttpd');
    const target = path.join(dir, 'warm.raw');
    const d = await startDeploy([
      'disk@1',
      '--library',
      libUrl,
      '--cache',
      cache,
      '--to',
      target,
      '--exit-when-complete',
    ]);
    assert.equal(await d.exited, 0, d.stderr());
    assert.equal(await sameAs(v1, target), true);
    // lighttpd's log: no pack was read (only the index and the store's index files)
    assert.deepEqual(packRequests((await web.settledLog()).slice(mid)), []);
    const e = exitOf(d.events);
    assert.equal(e.originBytes, 0);
    assert.ok(Number(e.cacheHitBytes) > 0);
  });

  test('two deploys at once share a cold cache: both identical, every cached chunk sound', async () => {
    const cache = path.join(dir, 'cache-shared');
    const t1 = path.join(dir, 'shared-1.raw');
    const t2 = path.join(dir, 'shared-2.raw');
    const [a, b] = await Promise.all([
      startDeploy(['disk@2', '--library', libUrl, '--cache', cache, '--to', t1, '--exit-when-complete']),
      startDeploy(['disk@2', '--library', libUrl, '--cache', cache, '--to', t2, '--exit-when-complete']),
    ]);
    assert.equal(await a.exited, 0, a.stderr());
    assert.equal(await b.exited, 0, b.stderr());
    assert.equal(await sameAs(v2, t1), true);
    assert.equal(await sameAs(v2, t2), true);
    const c = await ChunkCache.open(cache);
    const m = await layoutOf('disk@2');
    for (const digest of new Set(m.chunks)) assert.ok(await c.get(digest), `chunk ${digest} cached and sound`);
  });

  test('the cache stays within its bound, least recently used chunks first', async () => {
    const m = await layoutOf('disk@1');
    // eight chunks of one length L, a bound of 5 L
    const byLen = new Map<number, string[]>();
    m.chunks.forEach((d, i) => {
      const l = byLen.get(m.chunkLengths[i]) ?? [];
      if (!l.includes(d)) l.push(d);
      byLen.set(m.chunkLengths[i], l);
    });
    const [L, all] = [...byLen].sort((a, b) => b[1].length - a[1].length)[0];
    assert.ok(all.length >= 8, `${all.length} chunks of ${L} bytes`);
    const ds = all.slice(0, 6);
    const l = await Library.open(lib, { create: false });
    // the bound counts the folder on disk as du does (files' blocks and folders'): what five
    // of these chunks take in a cache folder of their own, and less than one chunk more
    const five = await ChunkCache.open(path.join(dir, 'cache-lru-5'), 1 << 30);
    for (let i = 0; i < 5; i++) await five.put(ds[i], await l.store.get(ds[i]));
    const bound = (await du(five.dir)) + 1024;
    const c = await ChunkCache.open(path.join(dir, 'cache-lru'), bound);
    const pause = () => new Promise((r) => setTimeout(r, 20));
    try {
      for (let i = 0; i < 4; i++) {
        await c.put(ds[i], await l.store.get(ds[i]));
        await pause();
      }
      assert.ok(await c.get(ds[0]), 'the first chunk, used again');
      await pause();
      await c.put(ds[4], await l.store.get(ds[4]));
      await pause();
      await c.put(ds[5], await l.store.get(ds[5])); // 6 chunks: evicted down to 90% of 5
      assert.ok((await c.size()) <= bound, `cache holds ${await c.size()} bytes, bound ${bound}, L ${L}`);
      const used = await du(c.dir);
      assert.ok(used <= bound, `du: ${used} bytes, bound ${bound}`);
      assert.deepEqual(
        await Promise.all(ds.map((d) => c.has(d))),
        [true, false, false, true, true, true],
        'the two least recently used chunks went; the one used again stayed',
      );
      // a damaged file is a miss, and removed
      const f = path.join(dir, 'cache-lru', ds[5].slice(0, 2), ds[5]);
      const bytes = readFileSync(f);
      const fd = openSync(f, 'r+');
      writeSync(fd, Buffer.from([bytes[100] ^ 0xff]), 0, 1, 100);
      closeSync(fd);
      assert.equal(await c.get(ds[5]), undefined);
      assert.equal(existsSync(f), false);
    } finally {
      await l.close();
    }
  });
});

describe('preload within --cache-size, counted on disk (issue 22)', () => {
  const preload = (ref: string, cache: string, size?: number) =>
    strata([
      'preload',
      ref,
      '--library',
      libUrl,
      '--cache',
      cache,
      ...(size === undefined ? [] : ['--cache-size', String(size)]),
      '--json',
    ]);
  /** Distinct chunks of a version and the sum of their lengths. */
  const lengths = async (ref: string) => {
    const m = await layoutOf(ref);
    const by = new Map<string, number>();
    for (let i = 0; i < m.chunks.length; i++) by.set(m.chunks[i], m.chunkLengths[i]);
    return { digests: [...by.keys()], bytes: [...by.values()].reduce((a, b) => a + b, 0) };
  };

  test("a version whose chunks' lengths fit the bound but not their blocks: preload stops at the bound, du never over it", async () => {
    const full = path.join(dir, 'size-full');
    assert.equal((await preload('disk@1', full)).code, 0);
    const onDisk = await du(full);
    const { bytes } = await lengths('disk@1');
    assert.ok(onDisk > bytes * 1.05, `disk@1 takes ${onDisk} bytes on disk for ${bytes} bytes of chunks`);
    // a bound the chunks' lengths fit in and their files do not
    const bound = Math.floor((bytes + onDisk) / 2);
    const cache = path.join(dir, 'size-half');
    const r = await preload('disk@1', cache, bound);
    const used = await du(cache);
    assert.ok(used <= bound, `the cache takes ${used} bytes on disk, its bound is ${bound}`);
    // what did not fit is said, not hidden
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr, /does not fit in the chunk cache/);
    // what is there is sound
    const c = await ChunkCache.open(cache, bound);
    let held = 0;
    for (const d of (await lengths('disk@1')).digests) if ((await c.has(d)) && (await c.get(d))) held++;
    assert.ok(held > 0);
  });

  test('preload of a second version evicts the first, keeps every chunk of its own: du within the bound, a deploy fetches nothing', async () => {
    // disk@2's files alone, and disk@2's and then disk@1's together, on disk (disk@1 is disk@2
    // less a 3 MiB file, with some metadata blocks of its own)
    const two = path.join(dir, 'size-two');
    assert.equal((await preload('disk@2', two)).code, 0);
    const both = path.join(dir, 'size-both');
    assert.equal((await preload('disk@2', both)).code, 0);
    assert.equal((await preload('disk@1', both)).code, 0);
    const [d2, d21] = [await du(two), await du(both)];
    assert.ok(d21 - d2 >= 16384, `disk@1's own chunks take ${d21 - d2} bytes on disk`);
    const bound = d2 + Math.floor((d21 - d2) / 2);
    const cache = path.join(dir, 'size-evict');
    const a = await preload('disk@2', cache, bound);
    assert.equal(a.code, 0, a.stderr);
    assert.ok((await du(cache)) <= bound, `after disk@2: ${await du(cache)} bytes on disk, bound ${bound}`);
    const b = await preload('disk@1', cache, bound);
    assert.equal(b.code, 0, b.stderr);
    const used = await du(cache);
    assert.ok(used <= bound, `after disk@1: ${used} bytes on disk, bound ${bound}`);
    // what preload promises: disk@1 is there whole, a deploy with this cache reads nothing from the source
    const seen = (await web.settledLog()).length;
    const target = path.join(dir, 'size-evict.raw');
    const d = await startDeploy([
      'disk@1',
      '--library',
      libUrl,
      '--cache',
      cache,
      '--cache-size',
      String(bound),
      '--to',
      target,
      '--exit-when-complete',
    ]);
    assert.equal(await d.exited, 0, d.stderr());
    assert.equal(await sameAs(v1, target), true, 'qemu-img compare: TARGET holds disk@1');
    assert.equal(exitOf(d.events).originBytes, 0);
    assert.deepEqual(packRequests((await web.settledLog()).slice(seen)), []);
    assert.ok((await du(cache)) <= bound);
  });
});

describe('deploy --remote (the library service)', () => {
  test('a REF from strata serve with a token: chunks through the chunk routes, scoped by access', async () => {
    const l = await Library.open(lib, { create: false });
    const access = await Access.open(l.catalog.db);
    await access.addProject('own').catch(() => {});
    await access.addProject('other').catch(() => {});
    await access.addUser('deployer').catch(() => {});
    await access.addUser('stranger').catch(() => {});
    await access.setRole('own', 'deployer', 'reader');
    await access.setRole('other', 'stranger', 'member');
    const token = (await access.createToken({ user: 'deployer', project: 'own', scope: 'read' })).token;
    const foreign = (await access.createToken({ user: 'stranger', project: 'other', scope: 'read' })).token;
    const s = await startServer(l, '127.0.0.1:0', { defaultProject: 'own', rateLimit: 0 });
    try {
      const target = path.join(dir, 'remote.raw');
      const env = { ...process.env, STRATA_TOKEN: token };
      const d = await startDeploy(['disk@2', '--remote', s.url, '--to', target, '--exit-when-complete'], env);
      assert.equal(await d.exited, 0, d.stderr());
      assert.equal(await sameAs(v2, target), true, 'qemu-img compare: TARGET holds disk@2');
      assert.ok(Number(exitOf(d.events).originBytes) > 0);
      // a damaged chunk on the way from the service: hashed on arrival, refused, fetched again
      let chunks = 0;
      const proxy = await flippingProxy(s.url, (p) => p.startsWith('/v1/chunks/') && chunks++ === 3);
      try {
        const t2 = path.join(dir, 'remote-flip.raw');
        const f = await startDeploy(['disk@1', '--remote', proxy.url, '--to', t2, '--exit-when-complete'], env);
        assert.equal(await f.exited, 0, f.stderr());
        assert.equal(proxy.flipped.length, 1);
        assert.ok(
          f.events.some((e) => e.event === 'retry' && /hash to [0-9a-f]{64}, not [0-9a-f]{64}/.test(String(e.error))),
          JSON.stringify(f.events.filter((e) => e.event === 'retry')),
        );
        assert.equal(await sameAs(v1, t2), true, 'qemu-img compare: TARGET identical');
      } finally {
        await proxy.close();
      }
      // a token of another project sees no such image
      const d2 = startDeploy(['disk@2', '--remote', s.url, '--to', path.join(dir, 'remote-2.raw')], {
        ...process.env,
        STRATA_TOKEN: foreign,
      });
      await assert.rejects(d2, /not found|no such/i);
    } finally {
      await s.close();
      await l.close();
    }
  });
});

describe('deploy --compare', () => {
  test('a TARGET that holds the version except 3 changed ranges fetches exactly those chunks', async () => {
    const target = path.join(dir, 'compare.raw');
    copyFileSync(v1, target);
    const m = await layoutOf('disk@1');
    const uses = new Map<number, number>();
    for (const c of m.ranges.chunk) uses.set(c, (uses.get(c) ?? 0) + 1);
    // three ranges of chunks placed once, far apart; a few bytes changed in each
    const once = m.ranges.disk
      .map((_, i) => i)
      .filter((i) => uses.get(m.ranges.chunk[i]) === 1 && m.ranges.length[i] >= 4096);
    const picks = [once[Math.floor(once.length / 5)], once[Math.floor(once.length / 2)], once[once.length - 2]];
    const fd = openSync(target, 'r+');
    for (const i of picks) writeSync(fd, Buffer.from('changed!'), 0, 8, m.ranges.disk[i] + 100);
    closeSync(fd);
    assert.equal(await sameAs(v1, target), false);
    // what must be fetched: every 64 KiB block that a range of those three chunks touches
    const B = 65536;
    const blocks = new Set<number>();
    for (let i = 0; i < m.ranges.disk.length; i++) {
      if (!picks.some((p) => m.ranges.chunk[p] === m.ranges.chunk[i])) continue;
      for (let b = Math.floor(m.ranges.disk[i] / B); b * B < m.ranges.disk[i] + m.ranges.length[i]; b++) blocks.add(b);
    }
    const d = await startDeploy(['disk@1', '--library', lib, '--to', target, '--compare', '--exit-when-complete']);
    assert.equal(await d.exited, 0, d.stderr());
    const cmp = d.events.find((e) => e.event === 'compared');
    assert.equal(cmp?.mismatched, 3, JSON.stringify(cmp));
    const size = statSync(target).size;
    let want = 0;
    for (const b of blocks) want += Math.min(B, size - b * B);
    assert.equal(
      exitOf(d.events).fetchedBytes,
      want,
      `fetched exactly the ${blocks.size} blocks of the 3 changed chunks`,
    );
    assert.equal(await sameAs(v1, target), true, 'qemu-img compare: TARGET identical');
  });
});

describe('the static index from a web server is not trusted', () => {
  test('mutated copies of a real strata-index.json: a StaticIndex or a StrataError, never a crash', () => {
    const real = readFileSync(path.join(lib, 'strata-index.json'));
    const ix = parseStaticIndex(real, 'strata-index.json');
    assert.equal(resolveStatic(ix, 'disk').number, 2);
    assert.equal(resolveStatic(ix, 'disk@1').manifest, ix.images[0].versions[0].manifest);
    const rand = prng(1616);
    let refused = 0;
    for (let i = 0; i < 500; i++) {
      const bad = mutate(real, [[0, real.length]], rand);
      try {
        const got = parseStaticIndex(bad, 'fuzz.json');
        for (const ref of ['disk', 'disk@1', 'disk:stable', 'disk@x', '0000000', 'nothing']) {
          try {
            resolveStatic(got, ref);
          } catch (e) {
            assert.ok(e instanceof StrataError, `resolve ${ref} of case ${i}: ${e}`);
          }
        }
      } catch (e) {
        assert.ok(e instanceof StrataError, `case ${i}: ${(e as Error).stack}`);
        assert.match((e as StrataError).message, /fuzz\.json|static index|JSON|index/);
        refused++;
      }
    }
    assert.ok(refused > 100, `${refused} of 500 refused`);
  });
});
