/**
 * Issue 22: the block map streamed in disk order (streamBlockMap), its claims spilled to
 * sorted runs on disk and its names to a scratch file when they pass a cap, gives exactly
 * the records of the map built whole (buildBlockMap), on the partitioned test disks whose
 * maps blockmap.test.ts checks against debugfs, mtools and the partition tables. The caps
 * here are tiny (64 claims a run, 1 byte of names in memory) so that every path of the
 * spilled merge is taken.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import {
  BlockMapWriter,
  buildBlockMap,
  loadBlockMap,
  type Owner,
  ownerOf,
  type StreamedMap,
  saveBlockMap,
  streamBlockMap,
} from '../../src/blockmap/index.js';
import { openImage } from '../../src/formats/open.js';
import { scratch } from '../helpers/tools.js';
import { gptBlockmapDisk, mbrBlockmapDisk } from './images.js';

async function both(file: string, caps: { maxClaims?: number; maxNameBytes?: number }) {
  const img = await openImage(file);
  try {
    const whole = await buildBlockMap(img);
    const streamed: Owner[] = [];
    let m: StreamedMap | undefined;
    let began = 0;
    const done = await streamBlockMap(
      img,
      (x) => {
        m = x;
        began++;
      },
      (s, e, k, v, ino, nm, off) => {
        const w = m as StreamedMap;
        streamed.push(ownerOf(w.volumes, w.name, s, e, k, v, ino, nm, off));
      },
      { ...caps, drain: async () => {} },
    );
    assert.equal(began, 1);
    return { whole, streamed, done };
  } finally {
    await img.close();
  }
}

const scratchDirs = () => readdirSync(tmpdir()).filter((n) => n.startsWith('strata-blockmap-')).length;

for (const [name, disk] of [
  ['MBR', mbrBlockmapDisk],
  ['GPT', gptBlockmapDisk],
] as const) {
  test(`${name} disk: the streamed map, spilled or not, equals the map built whole`, async () => {
    const file = (await disk()).disk;
    const before = scratchDirs();
    for (const caps of [{}, { maxClaims: 64, maxNameBytes: 1 }]) {
      const { whole, streamed, done } = await both(file, caps);
      assert.ok(whole.count > 100, `${whole.count} records`);
      assert.equal(streamed.length, whole.count);
      assert.deepEqual(streamed, [...whole.records()]);
      assert.deepEqual(done.warnings, whole.warnings);
      assert.equal(done.diskSize, whole.diskSize);
    }
    // the scratch files are gone
    assert.equal(scratchDirs(), before);
  });
}

test('blockmap --save as the map streams: the same bytes as saveBlockMap of the map built whole', async () => {
  const dir = scratch('bm-save-stream');
  const saves = () => readdirSync(tmpdir()).filter((n) => n.startsWith('strata-mapsave-')).length;
  const before = saves();
  for (const [name, disk] of [
    ['mbr', mbrBlockmapDisk],
    ['gpt', gptBlockmapDisk],
  ] as const) {
    const img = await openImage((await disk()).disk);
    try {
      const want = saveBlockMap(await buildBlockMap(img));
      for (const caps of [{}, { maxClaims: 64, maxNameBytes: 1 }]) {
        const file = path.join(dir, `${name}-${caps.maxClaims ?? 0}.bm`);
        const w = new BlockMapWriter(file);
        try {
          await streamBlockMap(
            img,
            () => {},
            (s, _e, k, v, ino, nm, off) => w.add(s, k, v, ino, nm, off),
            {
              ...caps,
              end: (m) => w.finish(m),
            },
          );
        } finally {
          w.dispose();
        }
        const got = readFileSync(file);
        assert.ok(got.length > 10_000, `${got.length} bytes`);
        assert.ok(Buffer.from(want).equals(got), `${name} ${JSON.stringify(caps)}: saved bytes differ`);
        assert.equal(loadBlockMap(got, file).count, loadBlockMap(want).count);
      }
    } finally {
      await img.close();
    }
  }
  assert.equal(saves(), before);
});
