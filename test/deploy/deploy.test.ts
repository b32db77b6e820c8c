import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { loadState, STATE_SUFFIX } from '../../src/deploy/state.js';
import { Library } from '../../src/library/library.js';
import { ROOT, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { applyWrites, nbdReads, nbdWrites, prng, randomWrites, sameAs, startDeploy, twoVersions } from './helpers.js';

/**
 * strata deploy (issue 16) as a user runs it, checked with real clients: qemu-img compare
 * against the export mid-copy and against `strata checkout`'s raw file at the end (a
 * checkout is an independent read path: no NBD, no deploy state), nbdsh (libnbd) writing
 * as a guest would, kill -9 and --resume.
 */
const CLI = path.join(ROOT, 'dist/cli/strata.cjs');
let dir: string;
let lib: string;
let v1: string;

before(async () => {
  dir = tempDir('deploy');
  ({ lib, v1 } = await twoVersions(dir));
});

describe('strata deploy', () => {
  test('the export reads as the version at every moment of the copy, then TARGET alone does', async () => {
    const target = path.join(dir, 'mid.raw');
    const d = await startDeploy(['disk@1', '--library', lib, '--to', target, '--bandwidth', '1M']);
    const image = readFileSync(v1);
    const r = prng(16);
    try {
      // several rounds of random reads while the copy is under way (each fetches what it reads, ahead of the copier)
      for (let round = 0; round < 4; round++) {
        assert.ok(!d.events.some((e) => e.event === 'complete'), `round ${round} runs while the copy is under way`);
        const ranges: Array<[number, number]> = [];
        for (let i = 0; i < 12; i++) {
          const n = 1 + Math.floor(r() * 200_000);
          ranges.push([Math.floor(r() * (image.length - n)), n]);
        }
        const got = await nbdReads(d.uri, ranges);
        const want = Buffer.concat(ranges.map(([o, n]) => image.subarray(o, o + n)));
        assert.ok(got.equals(want), `round ${round}: the export reads as the version`);
      }
      // the next progress event (once a second) counts the guest's fetches
      const seen = d.events.length;
      while (!d.events.slice(seen).some((e) => e.event === 'progress' || e.event === 'complete'))
        await new Promise((res) => setTimeout(res, 100));
      const before = d.events.slice(seen).find((e) => e.event === 'progress');
      assert.ok(before && Number(before.guestFetches) > 0, 'guest reads were fetched ahead of the copier');
      // qemu-img compare reads the whole disk through the export (the rest fetched on demand)
      assert.equal(await sameAs(v1, d.uri), true, 'qemu-img compare over NBD mid-copy');
      await d.event('complete');
      assert.equal(await sameAs(v1, d.uri), true, 'qemu-img compare over NBD once the source is dropped');
      // (not --exit-when-complete: the mid-copy compare may complete the copy, and the deploy
      // would then exit before this second compare connects)
      d.child.kill('SIGTERM');
      assert.equal(await d.exited, 0, d.stderr());
    } finally {
      d.child.kill('SIGKILL');
    }
    assert.equal(await sameAs(v1, target), true, 'TARGET holds the version');
    // a new sparse TARGET: free space never written
    const st = statSync(target);
    assert.ok(st.blocks * 512 < st.size / 2, `TARGET stays sparse (${st.blocks * 512} of ${st.size} bytes allocated)`);
    const exit = d.events.find((e) => e.event === 'exit');
    assert.equal(exit?.complete, true);
  });

  test('guest writes racing the copy (random, overlapping, unaligned, zeroes) all survive', async () => {
    const target = path.join(dir, 'writes.raw');
    const seed = 1601;
    const model = readFileSync(v1);
    const d = await startDeploy(['disk@1', '--library', lib, '--to', target, '--bandwidth', '2M']);
    try {
      const r = prng(seed);
      for (let round = 0; round < 3; round++) {
        const writes = randomWrites(Math.floor(r() * 1e9), model.length, 40);
        await nbdWrites(d.uri, writes);
        applyWrites(model, writes);
        const m = path.join(dir, `model-${round}.raw`);
        writeFileSync(m, model);
        assert.equal(await sameAs(m, d.uri), true, `round ${round}: export reads as the model (seed ${seed})`);
      }
      await d.event('complete');
    } finally {
      d.child.kill('SIGTERM');
      await d.exited;
    }
    const m = path.join(dir, 'model-final.raw');
    writeFileSync(m, model);
    assert.equal(await sameAs(m, target), true, 'final TARGET holds the version with every write');
  });

  test('kill -9 at random points, then --resume: TARGET ends identical, flushed writes kept', async () => {
    const target = path.join(dir, 'killed.raw');
    const model = readFileSync(v1);
    const r = prng(77);
    let args = ['disk@1', '--library', lib, '--to', target, '--bandwidth', '1M'];
    let kills = 0;
    for (let round = 0; round < 4; round++) {
      const d = await startDeploy(args);
      if (round === 1) {
        const writes = randomWrites(5000 + round, model.length, 25);
        await nbdWrites(d.uri, writes).catch((e) => {
          d.child.kill('SIGKILL');
          throw e;
        }); // flushed: must survive the kill
        applyWrites(model, writes);
      }
      await new Promise((res) => setTimeout(res, 200 + Math.floor(r() * 1500)));
      if (d.events.some((e) => e.event === 'complete')) {
        d.child.kill('SIGTERM');
        await d.exited;
        break;
      }
      d.child.kill('SIGKILL');
      await d.exited;
      kills++;
      // every block the state marks local holds the final bytes (the model: the version plus flushed writes)
      const st = loadState(target + STATE_SUFFIX);
      assert.ok(st, 'state survives');
      const t = readFileSync(target);
      const bs = st.header.blockSize;
      let local = 0;
      for (let i = 0; i < st.local.length; i++) {
        if (!st.local[i]) continue;
        local++;
        const a = i * bs;
        assert.ok(t.subarray(a, a + bs).equals(model.subarray(a, a + bs)), `block ${i} marked local is durable`);
      }
      assert.ok(round === 0 || local > 0);
      args = ['disk@1', '--library', lib, '--to', target, '--bandwidth', '1M', '--resume'];
    }
    assert.ok(kills >= 2, `killed ${kills} times`);
    const d = await startDeploy(['disk@1', '--library', lib, '--to', target, '--resume', '--exit-when-complete']);
    assert.equal(await d.exited, 0, d.stderr());
    const start = d.events.find((e) => e.event === 'start');
    assert.equal(start?.mode, 'resume');
    const m = path.join(dir, 'killed-model.raw');
    writeFileSync(m, model);
    assert.equal(await sameAs(m, target), true, 'resumed TARGET holds the version and the flushed writes');
  });

  test('free space is never fetched; on a TARGET full of other bytes it is written as zeros', async () => {
    // what must come from the source: every 64 KiB block a data range of the version touches
    const l = await Library.open(lib, { create: false });
    let want = 0;
    try {
      const m = await l.layout((await l.catalog.resolve('disk@1')).manifest);
      const B = 65536;
      const blocks = new Set<number>();
      for (let i = 0; i < m.ranges.disk.length; i++) {
        const a = m.ranges.disk[i];
        for (let b = Math.floor(a / B); b * B < a + m.ranges.length[i]; b++) blocks.add(b);
      }
      for (const b of blocks) want += Math.min(B, m.virtualSize - b * B);
      assert.ok(want < m.virtualSize / 2, `most of the disk is free (${want} of ${m.virtualSize} bytes used)`);
    } finally {
      await l.close();
    }
    const size = statSync(v1).size;
    // a new TARGET (known zero: free blocks neither fetched nor written), and one full of 0xA5
    // with no deploy state (not known zero: free blocks written as zeros, still not fetched)
    const fresh = path.join(dir, 'fresh.raw');
    const dirty = path.join(dir, 'dirty.raw');
    writeFileSync(dirty, Buffer.alloc(size, 0xa5));
    for (const target of [fresh, dirty]) {
      const d = await startDeploy(['disk@1', '--library', lib, '--to', target, '--exit-when-complete']);
      assert.equal(await d.exited, 0, d.stderr());
      const exit = d.events.find((e) => e.event === 'exit');
      assert.equal(exit?.fetchedBytes, want, `${path.basename(target)}: fetched exactly the used blocks`);
      assert.equal(await sameAs(v1, target), true, `qemu-img compare: ${path.basename(target)} holds the version`);
    }
    const st = statSync(fresh);
    assert.ok(st.blocks * 512 <= want + (1 << 20), `the new TARGET stays sparse (${st.blocks * 512} bytes allocated)`);
  });

  test('on a terminal: a progress bar with the local share, bytes fetched, rate and ETA', async () => {
    // script(1) gives the deploy a pseudo-terminal: what a user running it by hand sees
    const target = path.join(dir, 'tty.raw');
    const cmd = [process.execPath, CLI, 'deploy', 'disk@1', '--library', lib, '--to', target]
      .concat(['--port', '0', '--bandwidth', '2M', '--exit-when-complete'])
      .map((a) => `'${a}'`)
      .join(' ');
    const out = await run('script', ['-qfec', cmd, '/dev/null']);
    const bars = [...out.matchAll(/deploying \[[█░]+\] (\d+)% local \| (\d+) MiB fetched \| [\d.]+ MiB\/s \| ETA/g)];
    assert.ok(bars.length >= 2, `progress bars on the terminal:\n${out}`);
    assert.equal(Number(bars.at(-1)?.[1]), 100, 'the last bar says 100% local');
    assert.ok(Number(bars[0][1]) < 100, 'an earlier bar said less');
    assert.match(out, /^nbd:\/\/127\.0\.0\.1:\d+/m, 'the NBD URI first');
    assert.match(out, /complete: every used range is local/);
    assert.equal(await sameAs(v1, target), true);
  });

  test('a TARGET with a deploy of this source wants --resume; --resume without state is refused', async () => {
    const target = path.join(dir, 'again.raw');
    const d = await startDeploy(['disk@1', '--library', lib, '--to', target, '--exit-when-complete']);
    assert.equal(await d.exited, 0);
    const again = startDeploy(['disk@1', '--library', lib, '--to', target]);
    await assert.rejects(again, /add --resume/);
    const none = path.join(dir, 'none.raw');
    copyFileSync(v1, none);
    await assert.rejects(startDeploy(['disk@1', '--library', lib, '--to', none, '--resume']), /nothing to resume/);
    assert.ok(!existsSync(none + STATE_SUFFIX));
  });
});
