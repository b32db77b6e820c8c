import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { type RunningServer, startServer } from '../../src/serve/http/server.js';
import { blobCacheImage, blobCacheTree } from '../helpers/blobcache-tree.js';
import { run, runBuffer as runBuf } from '../helpers/tools.js';
import { serveProcess } from './http-helpers.js';

/**
 * The service's file routes through the live blob cache (issue 27, library/blob-cache.ts,
 * `strata serve --cache-policy introspective`): a file's content (whole and by Range), ls,
 * stat and the tar of the tree read from an ext4 made by mkfs.ext4 -d equal the tree and
 * what debugfs reads from the image; a known sequence of requests gives known hits,
 * prefetched uses and misses by class, which /metrics reports.
 */
const MiB = 1 << 20;
describe('service file routes through the blob cache (issue 27)', () => {
  let tmp: string;
  let img: string;
  let src: string;
  let lib: Library;
  let s: RunningServer;
  const base = () => `${s.url}/v1/images/fs/versions/1/files`;

  before(async () => {
    tmp = mkdtempSync(path.join(tmpdir(), 'strata-blobcache-'));
    src = await blobCacheTree();
    img = await blobCacheImage();
    lib = await Library.open(path.join(tmp, 'lib'));
    assert.equal((await checkin(lib, img, { name: 'fs' })).ref, 'fs@1');
    // no decoded-manifest cache: every request reads its manifests through the blob cache
    s = await startServer(lib, '127.0.0.1:0', {
      defaultVisibility: 'public',
      rateLimit: 0,
      requestLogMs: 0,
      manifestCache: 0,
      blobCache: { policy: 'introspective', capacity: 32 * MiB },
    });
  });
  after(async () => {
    await s?.close();
    await lib?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  const get = async (p: string, headers: Record<string, string> = {}) => {
    const r = await fetch(`${base()}${p}`, { headers });
    const body = Buffer.from(await r.arrayBuffer());
    return { status: r.status, body };
  };
  const counts = () => {
    const st = lib.blobCache!.snapshot();
    const c = (k: 'metadata' | 'data') => [st.byClass[k].misses, st.byClass[k].prefetched, st.byClass[k].hits];
    return { metadata: c('metadata'), data: c('data'), reads: st.source.reads };
  };

  test('a known sequence: stat, the big file twice, a range of it: misses, prefetched uses and hits by class', async () => {
    // stat: the layout manifest (a miss) names the file manifest, which meta fetches at once (a prefetched use)
    const st = await get('/stat?path=/big');
    assert.equal(st.status, 200, st.body.toString());
    assert.equal(JSON.parse(st.body.toString()).size, 3.5 * MiB);
    await lib.blobCache!.idle();
    assert.deepEqual(counts(), { metadata: [1, 1, 0], data: [0, 0, 0], reads: 2 });
    // the file: its first chunk a miss, the other three on their way (its own chunk list) before they are asked for
    const whole = await get('/content?path=/big');
    assert.equal(whole.status, 200);
    assert.ok(whole.body.equals(readFileSync(path.join(src, 'big'))), 'the file equals the tree mkfs.ext4 -d read');
    assert.ok(
      whole.body.equals(await runBuf('debugfs', ['-R', 'cat /big', img])),
      'the file equals what debugfs reads from the image',
    );
    await lib.blobCache!.idle();
    assert.deepEqual(counts(), { metadata: [1, 1, 2], data: [1, 3, 0], reads: 6 });
    // again: all held
    assert.ok((await get('/content?path=/big')).body.equals(whole.body));
    assert.deepEqual(counts(), { metadata: [1, 1, 4], data: [1, 3, 4], reads: 6 });
    // a range inside the third chunk: one data hit
    const r = await get('/content?path=/big', { range: `bytes=${2 * MiB + 10}-${2 * MiB + 5000}` });
    assert.equal(r.status, 206);
    assert.ok(r.body.equals(whole.body.subarray(2 * MiB + 10, 2 * MiB + 5001)));
    assert.deepEqual(counts(), { metadata: [1, 1, 6], data: [1, 3, 5], reads: 6 });
    // a range across chunks 0 and 1: two hits
    const r2 = await get('/content?path=/big', { range: `bytes=${MiB - 100}-${MiB + 100}` });
    assert.ok(r2.body.equals(whole.body.subarray(MiB - 100, MiB + 101)));
    assert.deepEqual(counts(), { metadata: [1, 1, 8], data: [1, 3, 7], reads: 6 });

    const m = await (await fetch(`${s.url}/metrics`)).text();
    const line = (k: string, o: string) =>
      Number(
        new RegExp(`^strata_blob_cache_requests_total\\{class="${k}",outcome="${o}"\\} (\\d+)$`, 'm').exec(m)?.[1],
      );
    assert.deepEqual([line('metadata', 'miss'), line('metadata', 'prefetched'), line('metadata', 'hit')], [1, 1, 8], m);
    assert.deepEqual([line('data', 'miss'), line('data', 'prefetched'), line('data', 'hit')], [1, 3, 7], m);
    assert.match(m, /^strata_blob_cache_hit_ratio\{class="data"\} 0\.9091$/m);
    assert.match(m, /^strata_blob_cache_source_reads_total 6$/m);
    assert.match(
      m,
      new RegExp(`^strata_blob_cache_prefetch_bytes_total\\{prefetcher="file"\\} ${3 * MiB - MiB / 2}$`, 'm'),
    );
    const seg = (k: string) =>
      Number(new RegExp(`^strata_blob_cache_bytes\\{segment="${k}"\\} (\\d+)$`, 'm').exec(m)?.[1]);
    assert.equal(seg('probation') + seg('protected'), 3.5 * MiB, 'the file held once');
    assert.ok(seg('metadata') > 0 && seg('metadata') <= 8 * MiB);
  });

  test('ls, small files and the tar of the tree, through the cache, equal the tree', async () => {
    const ls = await get('?path=/d');
    assert.equal(ls.status, 200);
    const names = (JSON.parse(ls.body.toString()).items as Array<{ path: string }>).map((e) => e.path).sort();
    assert.deepEqual(
      names,
      Array.from({ length: 6 }, (_, i) => `/d/f${i}`),
    );
    for (let i = 0; i < 6; i++) {
      const f = await get(`/content?path=/d/f${i}`);
      assert.ok(f.body.equals(readFileSync(path.join(src, `d/f${i}`))), `/d/f${i}`);
    }
    const tar = await get('/tar?path=/');
    assert.equal(tar.status, 200);
    const out = path.join(tmp, 'untar');
    mkdirSync(out);
    writeFileSync(path.join(tmp, 't.tar'), tar.body);
    await run('tar', ['-xf', path.join(tmp, 't.tar'), '-C', out]);
    assert.ok(readFileSync(path.join(out, 'big')).equals(readFileSync(path.join(src, 'big'))));
    for (let i = 0; i < 6; i++)
      assert.ok(readFileSync(path.join(out, `d/f${i}`)).equals(readFileSync(path.join(src, `d/f${i}`))), `f${i}`);
    const st = lib.blobCache!.snapshot();
    // the small files were each fetched once (the tar found them held)
    assert.equal(st.byClass.data.misses, 1 + 6);
    assert.ok(st.segments.probation + st.segments.protected <= st.limits.data);
  });

  test('strata serve --cache-policy introspective --prefetch file: the file routes read through the blob cache (counters in /metrics)', async () => {
    const dir = path.join(tmp, 'lib-cli');
    const l = await Library.open(dir);
    try {
      await checkin(l, img, { name: 'fs' });
    } finally {
      await l.close();
    }
    const srv = await serveProcess(dir, [
      '--default-visibility',
      'public',
      '--cache-policy',
      'introspective',
      '--prefetch',
      'file',
      '--cache-size',
      '16M',
    ]);
    try {
      const r = await fetch(`${srv.url}/v1/images/fs/versions/1/files/content?path=/big`);
      assert.equal(r.status, 200);
      assert.ok(Buffer.from(await r.arrayBuffer()).equals(readFileSync(path.join(src, 'big'))));
      const m = await (await fetch(`${srv.url}/metrics`)).text();
      // one miss, the three other chunks prefetched in the file's order (meta is off: the manifests miss)
      assert.match(m, /^strata_blob_cache_requests_total\{class="data",outcome="miss"\} 1$/m);
      assert.match(m, /^strata_blob_cache_requests_total\{class="data",outcome="prefetched"\} 3$/m);
      assert.match(m, /^strata_blob_cache_requests_total\{class="metadata",outcome="prefetched"\} 0$/m);
      assert.doesNotMatch(m, /prefetcher="meta"/);
    } finally {
      await srv.stop();
    }
  });
});
