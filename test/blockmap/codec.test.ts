import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { type BlockMap, buildBlockMap, loadBlockMap, saveBlockMap } from '../../src/blockmap/index.js';
import { openImage } from '../../src/formats/open.js';
import { StrataError } from '../../src/util/errors.js';
import { prng } from '../helpers/fuzz.js';
import { fixture, run, scratch } from '../helpers/tools.js';
import { buildBlockmapTree, mbrBlockmapDisk } from './images.js';

async function mapOf(file: string): Promise<BlockMap> {
  const img = await openImage(file);
  try {
    return await buildBlockMap(img);
  } finally {
    await img.close();
  }
}

test('save and load: the loaded map answers every record the same', async () => {
  const map = await mapOf((await mbrBlockmapDisk()).disk);
  const bytes = saveBlockMap(map);
  assert.equal(bytes.length < 64 * 1024 + map.count * 31, true);
  const back = loadBlockMap(bytes);
  assert.equal(back.count, map.count);
  assert.equal(back.diskSize, map.diskSize);
  assert.deepEqual([...back.records()], [...map.records()]);
  assert.deepEqual(back.used(), map.used());
  assert.deepEqual(back.warnings, map.warnings);
  // from a file: a Node Buffer, whose slices are views into a shared pool
  const file = path.join(scratch('bm-codec'), 'map.bm');
  writeFileSync(file, bytes);
  const fromFile = loadBlockMap(readFileSync(file), file);
  assert.deepEqual([...fromFile.records()], [...map.records()]);
  // at an odd offset inside a larger buffer: the columns are copied, not viewed
  const odd = Buffer.concat([Buffer.alloc(3), bytes]).subarray(3);
  assert.deepEqual([...loadBlockMap(odd).records()], [...map.records()]);
});

test('load rejects damaged maps with CORRUPT (or UNSUPPORTED for another version), never anything else', async () => {
  const map = await mapOf((await mbrBlockmapDisk()).disk);
  const good = saveBlockMap(map);
  const expectBad = (b: Uint8Array, why: string) =>
    assert.throws(
      () => loadBlockMap(b, 'x.bm'),
      (e: unknown) =>
        e instanceof StrataError && (e.code === 'CORRUPT' || e.code === 'UNSUPPORTED') && e.file === 'x.bm',
      why,
    );
  expectBad(good.subarray(0, 10), 'short');
  expectBad(good.subarray(0, good.length - 1), 'truncated');
  const magic = good.slice();
  magic[0] ^= 1;
  expectBad(magic, 'magic');
  const version = good.slice();
  version[8] = 9;
  expectBad(version, 'version');
  // the header's record count, record order, a kind code, a volume index
  const dv = new DataView(good.buffer, good.byteOffset, good.byteLength);
  const hl = dv.getUint32(12, true);
  const base = (16 + hl + 7) & ~7;
  const n = map.count;
  const order = good.slice();
  new DataView(order.buffer).setFloat64(base + 8, 1e15, true);
  expectBad(order, 'order');
  const kind = good.slice();
  kind[base + n * 30] = 250;
  expectBad(kind, 'kind');
  const vol = good.slice();
  new DataView(vol.buffer).setUint16(base + n * 28, 999, true);
  expectBad(vol, 'volume');
  // random damage: loads (the flip hit a harmless byte) or fails cleanly
  const rnd = prng(7);
  for (let i = 0; i < 300; i++) {
    const b = good.slice();
    for (let k = 0; k < 3; k++) b[rnd() % b.length] ^= 1 << (rnd() % 8);
    try {
      const m = loadBlockMap(b);
      assert.equal(m.start[0], 0);
    } catch (e) {
      assert.ok(e instanceof StrataError, String(e));
    }
  }
});

/**
 * A corrupt ext4 (debugfs points a file's extent at another file's blocks): the map is
 * still built, covers the disk once, warns about the overlap and picks the same winner
 * every time.
 */
test('a block claimed by two files: a warning and a deterministic winner, no crash', async () => {
  const image = await fixture('blockmap-overlap-v1.img', async (out) => {
    const dir = `${out}.tree`;
    buildBlockmapTree(dir);
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', dir, out, '16M']);
    await run('rm', ['-rf', dir]);
    const stat = await run('debugfs', ['-R', 'stat /data/size-70000', out]);
    const m = /\(0-\d+\):(\d+)/.exec(stat);
    if (!m) throw new Error(`no extent in ${stat}`);
    // i_block[5] is the first extent's ee_start_lo (after the 12-byte header and ee_block/len/start_hi)
    await run('debugfs', ['-w', '-R', `sif /data/size-5000 block[5] ${m[1]}`, out]);
  });
  const a = await mapOf(image);
  const b = await mapOf(image);
  assert.ok(
    a.warnings.some((w) => /claimed by file inode \d+ .* and by file inode/.test(w)),
    a.warnings.join('\n'),
  );
  assert.deepEqual([...a.records()], [...b.records()]);
  const block = Number(/\(0-\d+\):(\d+)/.exec(await run('debugfs', ['-R', 'stat /data/size-70000', image]))?.[1]);
  const owners = a.whatis(block * 4096, 4096);
  assert.equal(owners.length, 1);
  assert.equal(owners[0].kind, 'file');
  assert.ok(['/data/hard-5000', '/data/size-5000', '/data/size-70000'].includes(owners[0].path!));
  const bytes = readFileSync(path.join(image)).length;
  assert.equal(a.diskSize, bytes);
});
