import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { BlockMap, buildBlockMap, loadBlockMap, MapFile, saveBlockMap } from '../../src/blockmap/index.js';
import { openImage } from '../../src/formats/open.js';
import { StrataError } from '../../src/util/errors.js';
import { prng } from '../helpers/fuzz.js';
import { fixture, run, scratch } from '../helpers/tools.js';
import { buildBlockmapTree, gptBlockmapDisk, mbrBlockmapDisk } from './images.js';

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

/** A saved map opened with MapFile (read on demand), from a file written with `bytes`. */
function mapFileOf(bytes: Uint8Array, name = 'map.bm'): MapFile {
  const file = path.join(scratch('bm-mapfile'), name);
  writeFileSync(file, bytes);
  return MapFile.open(file);
}

test('a saved map read on demand (MapFile) answers every record, lookup and name as the loaded map', async () => {
  for (const disk of [await mbrBlockmapDisk(), await gptBlockmapDisk()]) {
    const map = await mapOf(disk.disk);
    const mf = mapFileOf(saveBlockMap(map));
    try {
      assert.equal(mf.count, map.count);
      assert.equal(mf.diskSize, map.diskSize);
      assert.deepEqual(mf.volumes, map.volumes);
      assert.deepEqual(mf.warnings, map.warnings);
      assert.equal(mf.nameCount, map.strings.length);
      // every record, in order and then backwards (pages read again after others took their slots)
      const whole = [...map.records()];
      const owners = (order: number[]) => order.map((i) => mf.owner(i, mf.startOf(i), mf.endOf(i)));
      const idx = [...Array(map.count).keys()];
      assert.deepEqual(owners(idx), whole);
      assert.deepEqual(owners([...idx].reverse()), [...whole].reverse());
      // names: in id order, backwards, and at random
      const rnd = prng(11);
      const ids = [...map.strings.keys()];
      for (const order of [ids, [...ids].reverse(), ids.map(() => rnd() % ids.length)]) {
        for (const id of order) assert.equal(mf.name(id), map.strings[id], `name ${id}`);
      }
      // lookups at random offsets, record starts and the bytes just before them, and the disk's ends
      const offsets = [0, map.diskSize - 1, map.diskSize, -1];
      for (let k = 0; k < 2000; k++) offsets.push(Math.floor((rnd() / 2 ** 32) * map.diskSize));
      for (let i = 0; i < map.count; i += 7) offsets.push(map.start[i], Math.max(0, map.start[i] - 1));
      for (const o of offsets) assert.equal(mf.indexOf(o), map.indexOf(o), `offset ${o}`);
    } finally {
      mf.close();
    }
  }
});

test('MapFile rejects the damaged maps load rejects, with CORRUPT naming the file (or UNSUPPORTED), never anything else', async () => {
  const map = await mapOf((await mbrBlockmapDisk()).disk);
  const good = saveBlockMap(map);
  const dv = new DataView(good.buffer, good.byteOffset, good.byteLength);
  const base = (16 + dv.getUint32(12, true) + 7) & ~7;
  const n = map.count;
  const damaged: Array<[string, Uint8Array]> = [
    ['short', good.subarray(0, 10)],
    ['truncated', good.subarray(0, good.length - 1)],
  ];
  const edit = (why: string, f: (b: Uint8Array, v: DataView) => void) => {
    const b = good.slice();
    f(b, new DataView(b.buffer));
    damaged.push([why, b]);
  };
  edit('magic', (b) => {
    b[0] ^= 1;
  });
  edit('version', (b) => {
    b[8] = 9;
  });
  edit('order', (_, v) => v.setFloat64(base + 8, 1e15, true));
  edit('kind', (b) => {
    b[base + n * 30 + n - 1] = 250;
  });
  edit('volume', (_, v) => v.setUint16(base + n * 28, 999, true));
  edit('name', (_, v) => v.setInt32(base + n * 24 + 4 * (n - 1), map.strings.length, true));
  edit('inode', (_, v) => v.setFloat64(base + n * 8 + 8, 0.5, true));
  edit('utf-8', (b) => {
    b[b.length - 1] = 0xff;
  });
  edit('string count', (b) => {
    b[b.length - 1] = 0;
  });
  for (const [why, b] of damaged) {
    for (const open of [(x: Uint8Array) => loadBlockMap(x, 'x.bm'), (x: Uint8Array) => mapFileOf(x, 'x.bm')]) {
      assert.throws(
        () => open(b),
        (e: unknown) =>
          e instanceof StrataError && (e.code === 'CORRUPT' || e.code === 'UNSUPPORTED') && /x\.bm$/.test(e.file ?? ''),
        why,
      );
    }
  }
  // random damage: opens (and every record and name reads) or fails cleanly, as load does
  const rnd = prng(8);
  for (let i = 0; i < 100; i++) {
    const b = good.slice();
    for (let k = 0; k < 3; k++) b[rnd() % b.length] ^= 1 << (rnd() % 8);
    let loaded: BlockMap | undefined;
    try {
      loaded = loadBlockMap(b);
    } catch (e) {
      assert.ok(e instanceof StrataError, String(e));
    }
    let mf: MapFile | undefined;
    try {
      mf = mapFileOf(b);
    } catch (e) {
      assert.ok(e instanceof StrataError, String(e));
    }
    assert.equal(mf !== undefined, loaded !== undefined, `damage ${i}: opened by one and not the other`);
    if (mf && loaded) {
      for (let r = 0; r < mf.count; r++) assert.deepEqual(mf.owner(r, mf.startOf(r), mf.endOf(r)), loaded.owner(r));
      mf.close();
    }
  }
});

test('MapFile checks names across its 1 MiB windows: multi-byte characters at the cuts, a name longer than a window', async () => {
  const map = await mapOf((await mbrBlockmapDisk()).disk);
  // the same records with longer names: two-, three- and four-byte characters, so that window
  // cuts fall inside names and sequences, and one name of ~1.5 MiB (no NUL in a whole window)
  const strings = map.strings.map((s, i) =>
    i === 1 ? `${s}/${'€'.repeat(500_000)}` : `${s}-${'é'.repeat(i % 7)}${'日本'.repeat(9000)}${'𝄞'.repeat(i % 3)}`,
  );
  const wide = new BlockMap(
    map.diskSize,
    {
      count: map.count,
      start: map.start,
      kind: map.kind,
      volume: map.volume,
      ino: map.ino,
      name: map.name,
      objectOffset: map.objectOffset,
    },
    strings,
    map.volumes,
    map.warnings,
  );
  const good = saveBlockMap(wide);
  assert.ok(good.length > 3 << 20, `${good.length} bytes: several windows`);
  const mf = mapFileOf(good);
  try {
    for (let id = 0; id < strings.length; id++) assert.equal(mf.name(id), strings[id], `name ${id}`);
  } finally {
    mf.close();
  }
  // a byte inside the long name's characters, past its first window, and one in a name after it: rejected by both
  const at = Buffer.from(good).indexOf(Buffer.from('€'.repeat(4))) + (1 << 20) + 300;
  for (const off of [at, good.length - 5000]) {
    const b = good.slice();
    b[off] = 0xff;
    for (const open of [(x: Uint8Array) => loadBlockMap(x, 'x.bm'), (x: Uint8Array) => mapFileOf(x, 'x.bm')]) {
      assert.throws(
        () => open(b),
        (e: unknown) => e instanceof StrataError && e.code === 'CORRUPT' && /UTF-8/.test(e.message),
        `0xff at ${off}`,
      );
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
