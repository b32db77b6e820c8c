import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type DeployEvent, Deployer } from '../../src/deploy/deployer.js';
import { libraryDeploySource } from '../../src/deploy/source.js';
import { Library } from '../../src/library/library.js';
import { tempDir } from '../library/images.js';
import { sameAs, twoVersions } from './helpers.js';

/**
 * Differential deploy (N+1 over a TARGET holding N) and a corrupted store (chunks that fail
 * their digest are refused, never written), through the Deployer API; TARGET checked with
 * qemu-img compare against `strata checkout` raw files, the blocks that really differ found
 * by comparing the two checkouts byte for byte.
 */
let dir: string;
let libDir: string;
let v1: string;
let v2: string;
let lib: Library;

before(async () => {
  dir = tempDir('deploy-diff');
  ({ lib: libDir, v1, v2 } = await twoVersions(dir));
  lib = await Library.open(libDir, { create: false });
});
after(async () => {
  await lib?.close();
});

async function deployAll(ref: string, target: string, l = lib) {
  const events: DeployEvent[] = [];
  const d = await Deployer.open(await libraryDeploySource(l, ref), target, { onEvent: (e) => events.push(e) });
  d.start();
  await d.complete;
  await d.close();
  return { d, events };
}

describe('differential deploy', () => {
  test('N+1 over a TARGET holding N fetches only the blocks whose chunks differ, and ends identical', async () => {
    const target = path.join(dir, 'diff.raw');
    const first = await deployAll('disk@1', target);
    assert.equal(first.d.mode, 'new');
    assert.equal(await sameAs(v1, target), true);
    const second = await deployAll('disk@2', target);
    assert.equal(second.d.mode, 'differential');
    assert.equal(await sameAs(v2, target), true, 'TARGET holds N+1');

    const bs = second.d.blockSize;
    const a = readFileSync(v1);
    const b = readFileSync(v2);
    const really: number[] = [];
    for (let i = 0; i * bs < b.length; i++) {
      if (!a.subarray(i * bs, (i + 1) * bs).equals(b.subarray(i * bs, (i + 1) * bs))) really.push(i);
    }
    const fetched = new Set(second.d.fetchedBlocks);
    // every block whose bytes differ (and that N+1 has data in) was fetched
    for (const i of really) if (second.d.hasData[i]) assert.ok(fetched.has(i), `block ${i} differs and was fetched`);
    // and nothing else but blocks where the manifests' ranges differ: a range of N+1 not in N, same place same chunk
    const m1 = await lib.layout((await lib.catalog.resolve('disk@1')).manifest);
    const m2 = await lib.layout((await lib.catalog.resolve('disk@2')).manifest);
    const key = (m: typeof m1, i: number) =>
      `${m.ranges.disk[i]}:${m.ranges.length[i]}:${m.chunks[m.ranges.chunk[i]]}:${m.ranges.at[i]}`;
    const old = new Set(m1.ranges.disk.map((_, i) => key(m1, i)));
    const changed = new Set<number>();
    for (let i = 0; i < m2.ranges.disk.length; i++) {
      if (old.has(key(m2, i))) continue;
      const s = m2.ranges.disk[i];
      for (let k = Math.floor(s / bs); k * bs < s + m2.ranges.length[i]; k++) changed.add(k);
    }
    for (const i of fetched) assert.ok(changed.has(i), `block ${i} fetched though no range of N+1 there is new`);
    const dataBlocks = second.d.hasData.reduce((n, x) => n + x, 0);
    assert.equal(fetched.size, changed.size, 'exactly the blocks the manifests say differ');
    assert.ok(fetched.size < dataBlocks / 2, `fetched ${fetched.size} of ${dataBlocks} data blocks`);
    assert.ok(fetched.size >= really.filter((i) => second.d.hasData[i]).length);
    process.stdout.write(
      `# differential: ${fetched.size} blocks fetched, ${really.length} differ by bytes, ${changed.size} by manifest, ${dataBlocks} hold data\n`,
    );
  });

  test('a corrupted chunk in the store is refused and never written; the rest is deployed', async () => {
    const bad = path.join(dir, 'badlib');
    cpSync(libDir, bad, { recursive: true });
    const packs = path.join(bad, 'store', 'packs');
    const pack = readdirSync(packs, { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))
      .sort((x, y) => statSync(y).size - statSync(x).size)[0];
    const buf = readFileSync(pack);
    const at = Math.floor(buf.length * 0.3);
    buf[at] ^= 0xff;
    writeFileSync(pack, buf);
    const l = await Library.open(bad, { create: false });
    try {
      const target = path.join(dir, 'corrupt.raw');
      const events: DeployEvent[] = [];
      const d = await Deployer.open(await libraryDeploySource(l, 'disk@1'), target, {
        fetchTimeout: 400,
        onEvent: (e) => events.push(e),
      });
      d.start();
      await d.copying();
      assert.equal(d.isComplete, false, 'a range could not be fetched');
      const errors = events.filter((e) => e.event === 'error');
      assert.ok(errors.length > 0);
      assert.ok(
        events.some((e) => e.event === 'retry'),
        'retried before giving up',
      );
      const t = readFileSync(target);
      const good = readFileSync(v1);
      const bs = d.blockSize;
      let missing = -1;
      for (let i = 0; i < d.blocks; i++) {
        const got = t.subarray(i * bs, (i + 1) * bs);
        if (d.local[i]) assert.ok(got.equals(good.subarray(i * bs, (i + 1) * bs)), `local block ${i} is right`);
        else {
          assert.ok(
            got.every((x) => x === 0),
            `block ${i} not fetched: nothing written`,
          );
          missing = i;
        }
      }
      assert.ok(missing >= 0);
      // a guest read of the missing blocks fetches again: the one holding the bad chunk fails, naming the range
      let refused = 0;
      for (let i = 0; i < d.blocks; i++) {
        if (d.local[i]) continue;
        const out = Buffer.alloc(bs);
        try {
          await d.read(i * bs, out);
          assert.ok(out.equals(good.subarray(i * bs, (i + 1) * bs)), `block ${i} read right`);
        } catch (e) {
          assert.match((e as Error).message, /gave up a guest read of \d+ bytes at \d+/);
          assert.ok(
            readFileSync(target)
              .subarray(i * bs, (i + 1) * bs)
              .every((x) => x === 0),
            `refused block ${i} not written`,
          );
          refused++;
        }
      }
      assert.ok(refused > 0, 'the corrupt chunk was refused again');
      assert.ok(missing >= 0);
      await d.close();
    } finally {
      await l.close();
    }
  });
});
