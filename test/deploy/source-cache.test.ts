import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { DeploySource } from '../../src/deploy/deployer.js';
import { Deployer } from '../../src/deploy/deployer.js';
import { imageDeploySource } from '../../src/deploy/source.js';
import { cachedDeploySource } from '../../src/deploy/source-cache.js';
import { type RequestNote, requestNotes } from '../../src/io/introspective-cache.js';
import { blobCacheImage } from '../helpers/blobcache-tree.js';
import { ROOT, run } from '../helpers/tools.js';
import { nbdReads, sameAs, startDeploy } from './helpers.js';

/**
 * Deploy's source side through the live cache (issue 27, src/deploy/source-cache.ts,
 * `strata deploy --source-cache introspective`): a guest's read of a file's first block is
 * classified through the block map (data, owned by the file), and the file prefetcher
 * fetches the next blocks debugfs lists for the file, within its bound, so the guest's next
 * reads of that file are answered without waiting; the deployed TARGET equals the image
 * (qemu-img compare) with the cache in front, the background copy taking what it holds.
 */
const BS = 4096;
const MiB = 1 << 20;

/** A deploy source that records its reads (offset, length, urgent). */
function recording(src: DeploySource): DeploySource & { reads: Array<[number, number, boolean]> } {
  const reads: Array<[number, number, boolean]> = [];
  return {
    ...src,
    name: src.name,
    size: src.size,
    reads,
    readInto: (o, out, urgent) => {
      reads.push([o, out.length, Boolean(urgent)]);
      return src.readInto(o, out, urgent);
    },
    status: (o, l) => src.status(o, l),
    close: () => src.close(),
  };
}

/** debugfs's extents of a file: [first physical block, blocks]. */
async function extents(img: string, file: string): Promise<Array<[number, number]>> {
  const out = await run('debugfs', ['-R', `ex ${file}`, img]);
  const got: Array<[number, number]> = [];
  for (const m of out.matchAll(/^\s*\d+\/\s*\d+\s+\d+\/\s*\d+\s+\d+\s+-\s+\d+\s+(\d+)\s+-\s+\d+\s+(\d+)/gm))
    got.push([Number(m[1]), Number(m[2])]);
  return got;
}

describe('deploy source cache (issue 27)', () => {
  let tmp: string;
  let img: string;
  before(async () => {
    tmp = mkdtempSync(path.join(tmpdir(), 'strata-srccache-'));
    img = await blobCacheImage();
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test("a guest read of a file's first block: classified, the file's next blocks prefetched within the bound, then used", async () => {
    const ex = await extents(img, '/big');
    assert.ok(ex.length >= 1, 'debugfs lists the extents of /big');
    const fileBlocks: number[] = [];
    for (const [p, n] of ex) for (let i = 0; i < n; i++) fileBlocks.push(p + i);
    const inner = recording(await imageDeploySource(img));
    const src = await cachedDeploySource(inner, {
      policy: 'introspective',
      prefetch: ['file'],
      cacheSize: 16 * MiB,
      tuning: { bounds: { file: { perRequest: 256 << 10, inFlight: 1 << 20 } }, growth: 1 },
    });
    const d = await Deployer.open(src, path.join(tmp, 't1.raw'), { blockSize: BS, noCopier: true });
    try {
      const image = readFileSync(img);
      const guest = async (block: number) => {
        const note: RequestNote = {};
        const out = Buffer.alloc(BS);
        await requestNotes.run(note, () => d.read(block * BS, out));
        assert.ok(out.equals(image.subarray(block * BS, (block + 1) * BS)), `block ${block}: the image's bytes`);
        return note;
      };
      inner.reads.length = 0;
      const first = await guest(fileBlocks[0]);
      assert.equal(first.class, 'data');
      assert.equal(first.cache, 'miss');
      assert.match(JSON.stringify(first.owner), /\/big/);
      await src.sourceCache.idle();
      // what the prefetcher read: the file's next blocks, by debugfs, no more than its bound
      // (the demand read carries the prefetch queued right after it: one round trip)
      const fetched = new Set<number>();
      for (const [o, n] of inner.reads) for (let b = o / BS; b < (o + n) / BS; b++) fetched.add(b);
      fetched.delete(fileBlocks[0]);
      // the window (256 KiB) counts from the request: its own block and the 63 after it in the file
      const want = fileBlocks.slice(1, (256 << 10) / BS);
      assert.deepEqual(
        [...fetched].sort((a, b) => a - b),
        want,
      );
      const st = src.cacheStats();
      assert.ok(st.prefetchers.file.peakInFlight <= 1 << 20);
      // the guest reads on along the file: each block there, no source read
      const before = inner.reads.length;
      for (const b of want.slice(0, 10)) assert.equal((await guest(b)).cache, 'prefetched');
      assert.equal(inner.reads.length - before <= 1, true, 'at most the next window, in the background');
      const s2 = src.cacheStats();
      assert.equal(s2.byClass.data.misses, 1);
      assert.equal(s2.byClass.data.prefetched, 10);
    } finally {
      await d.close();
    }
  });

  test('the deployed TARGET equals the image with every prefetcher on; the copy takes what the cache holds', async () => {
    const inner = recording(await imageDeploySource(img));
    const src = await cachedDeploySource(inner, { policy: 'introspective', cacheSize: 8 * MiB });
    const target = path.join(tmp, 't2.raw');
    const d = await Deployer.open(src, target, { blockSize: 64 << 10 });
    const bytes = readFileSync(img);
    try {
      // a guest reads a few places while the copy runs
      for (const off of [0, 1024 * BS, 1549 * BS, 30 * MiB]) {
        const out = Buffer.alloc(128 << 10);
        await d.read(off, out);
        assert.ok(out.equals(bytes.subarray(off, off + out.length)), `at ${off}`);
      }
      d.start();
      await d.complete;
    } finally {
      await d.close();
    }
    assert.ok(await sameAs(img, target), 'qemu-img compare: TARGET equals the image');
    const st = src.cacheStats();
    assert.ok(st.byClass.metadata.requests + st.byClass.data.requests > 0);
    assert.ok(st.segments.metadata + st.segments.probation + st.segments.protected <= 8 * MiB);
    // the background copy (not urgent) never read a block the cache held when it asked: it read
    // each byte of the image's data at most once beside the cache's own reads
    const urgent = inner.reads.filter((r) => r[2]).reduce((n, r) => n + r[1], 0);
    const copy = inner.reads.filter((r) => !r[2]).reduce((n, r) => n + r[1], 0);
    assert.ok(copy + urgent <= bytes.length + 8 * MiB, `${copy} + ${urgent}`);
  });

  test('strata deploy --source-cache introspective --trace: NBD reads equal the image, traced with class and outcome, counters at exit', async () => {
    const target = path.join(tmp, 't3.raw');
    const trace = path.join(tmp, 'deploy-trace.jsonl');
    const d = await startDeploy([
      img,
      '--to',
      target,
      '--source-cache',
      'introspective',
      '--source-cache-size',
      '8M',
      '--block-size',
      '4K',
      '--bandwidth',
      '1M',
      '--trace',
      trace,
    ]);
    try {
      const ranges: Array<[number, number]> = [
        [1549 * BS, 64 << 10],
        [0, 8192],
        [1600 * BS, 16384],
      ];
      const got = await nbdReads(d.uri, ranges);
      const bytes = readFileSync(img);
      assert.ok(got.equals(Buffer.concat(ranges.map(([o, n]) => bytes.subarray(o, o + n)))));
    } finally {
      d.child.kill('SIGTERM');
      assert.equal(await d.exited, 0, d.stderr());
    }
    const exit = d.events.find((e) => e.event === 'exit') as {
      sourceCache?: { policy: string; byClass: Record<string, { requests: number }> };
    };
    assert.equal(exit.sourceCache?.policy, 'introspective', JSON.stringify(exit));
    assert.ok(exit.sourceCache.byClass.data.requests > 0, JSON.stringify(exit.sourceCache.byClass));
    const recs = readFileSync(trace, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as { op: string; class?: string; cache?: string; offset?: number });
    const first = recs.find((r) => r.op === 'read' && r.offset === 1549 * BS);
    assert.equal(first?.class, 'data', JSON.stringify(recs.slice(0, 5)));
    assert.ok(['miss', 'prefetched', 'hit'].includes(String(first?.cache)));
  });

  test('bad cache options are refused before anything is served', async () => {
    const deploy = (...opts: string[]) =>
      run('node', [path.join(ROOT, 'dist/cli/strata.cjs'), 'deploy', img, '--to', path.join(tmp, 'x.raw'), ...opts]);
    await assert.rejects(deploy('--source-cache', 'mru'), /bad --source-cache 'mru'/);
    await assert.rejects(deploy('--source-cache-size', '8M'), /--source-cache-size needs --source-cache/);
    const src = await imageDeploySource(img);
    try {
      await assert.rejects(
        cachedDeploySource(src, { policy: 'introspective', prefetch: ['inode'] }),
        /no prefetcher 'inode'/,
      );
    } finally {
      await src.close();
    }
  });
});
