import assert from 'node:assert/strict';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage } from '../../src/formats/open.js';
import { convertImage } from '../../src/library/convert/convert.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { qemuMapRaw } from '../helpers/qemu-map.js';
import { qemuCheck, qemuCompare } from '../helpers/qemu-oracles.js';
import { fixture, run, scratch } from '../helpers/tools.js';

/** Not a multiple of any cluster size (nor of 512): the last cluster is partial. */
const SIZE = 24 * 1024 * 1024 + 12345;

const patternRaw = () => fixture(`writers-pattern-${SIZE}-s7-v1.raw`, async (out) => writePatternDisk(out, SIZE, 7));

/** The pattern disk with a zeroed data region, rewritten bytes and a new tail: a "derived" image. */
const derivedRaw = () =>
  fixture(`writers-derived-${SIZE}-s7-v1.raw`, async (out) => {
    writePatternDisk(out, SIZE, 7);
    const fd = openSync(out, 'r+');
    try {
      writeSync(fd, Buffer.alloc(3 * 1024 * 1024), 0, 3 * 1024 * 1024, 2 * 1024 * 1024); // zeros over data
      writeSync(fd, Buffer.alloc(200_000, 0x5a), 0, 200_000, 10 * 1024 * 1024 + 333);
      writeSync(fd, Buffer.from('derived-tail'), 0, 12, SIZE - 12);
    } finally {
      closeSync(fd);
    }
  });

async function qemuInfo(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', file])) as Record<string, unknown>;
}

async function convertFile(input: string, out: string, opts: Parameters<typeof convertImage>[2]) {
  const img = await openImage(input, { format: 'raw' });
  try {
    return await convertImage(img, out, opts);
  } finally {
    await closeChain(img);
  }
}

for (const clusterSize of [512, 65536, 2 * 1024 * 1024]) {
  test(`raw -> qcow2 with ${clusterSize}-byte clusters passes qemu-img check and compares identical`, async () => {
    const src = await patternRaw();
    const out = path.join(scratch('w-qcow2'), 'out.qcow2');
    const r = await convertFile(src, out, { format: 'qcow2', clusterSize });
    assert.equal(r.virtualSize, SIZE);
    assert.ok(r.bytesWritten <= statSync(out).size, 'reported bytes were written to the file');
    const check = await qemuCheck(out);
    assert.ok((check['allocated-clusters'] ?? 0) > 0, 'some clusters hold data');
    await qemuCompare(src, 'raw', out, 'qcow2');
    const info = await qemuInfo(out);
    assert.equal(info['cluster-size'], clusterSize);
    assert.equal(info['virtual-size'], Math.ceil(SIZE / 512) * 512);
    // Zero clusters are not stored: the file is smaller than the disk (2 MiB clusters
    // almost all hold some data on this disk, so only the smaller sizes show it).
    if (clusterSize <= 65536)
      assert.ok(statSync(out).size < SIZE, `${statSync(out).size} bytes for a ${SIZE}-byte half-empty disk`);
  });
}

for (const compression of ['zlib', 'zstd'] as const) {
  test(`raw -> qcow2 compressed with ${compression}: clean, identical, smaller, header says ${compression}`, async () => {
    const src = await patternRaw();
    const dir = scratch(`w-${compression}`);
    const plain = path.join(dir, 'plain.qcow2');
    const out = path.join(dir, 'packed.qcow2');
    await convertFile(src, plain, { format: 'qcow2' });
    await convertFile(src, out, { format: 'qcow2', compression });
    const check = await qemuCheck(out);
    assert.ok((check['compressed-clusters'] ?? 0) > 0, 'pattern clusters are stored compressed');
    await qemuCompare(src, 'raw', out, 'qcow2');
    const info = (await qemuInfo(out))['format-specific'] as { data: Record<string, unknown> };
    assert.equal(info.data['compression-type'], compression);
    assert.ok(statSync(out).size < statSync(plain).size * 0.8, 'compression saves space on repeated patterns');
    // Strata's own reader agrees (round trip through our qcow2 reader).
    const img = await openImage(out);
    try {
      const back = await img.read(0, SIZE);
      assert.ok(Buffer.from(back).equals(readFileSync(src)), 'our reader reads back the source');
    } finally {
      await closeChain(img);
    }
  });
}

test('compressed qcow2 with 512-byte clusters (1-bit sector count field) is clean and identical', async () => {
  const src = await fixture('writers-pattern-3M-s9-v1.raw', async (out) =>
    writePatternDisk(out, 3 * 1024 * 1024 + 7, 9),
  );
  const out = path.join(scratch('w-z512'), 'out.qcow2');
  await convertFile(src, out, { format: 'qcow2', compression: 'zlib', clusterSize: 512 });
  const check = await qemuCheck(out);
  assert.ok((check['compressed-clusters'] ?? 0) > 0);
  await qemuCompare(src, 'raw', out, 'qcow2');
});

test('qcow2 with a backing file stores only the differences and reads as the source', async () => {
  const base = await patternRaw();
  const derived = await derivedRaw();
  const dir = scratch('w-backing');
  const out = path.join(dir, 'overlay.qcow2');
  // The recorded name is relative to the overlay, as qemu resolves it.
  const rel = path.relative(dir, base);
  const baseImg = await openImage(base, { format: 'raw' });
  const img = await openImage(derived, { format: 'raw' });
  try {
    await convertImage(img, out, { format: 'qcow2', backing: { path: rel, format: 'raw', image: baseImg } });
  } finally {
    await closeChain(img);
    await closeChain(baseImg);
  }
  await qemuCheck(out);
  await qemuCompare(derived, 'raw', out, 'qcow2');
  const info = await qemuInfo(out);
  assert.equal(info['backing-filename'], rel);
  assert.equal(info['backing-filename-format'], 'raw');
  // Only the changed clusters are stored: far less than the derived disk's data.
  assert.ok(statSync(out).size < 1024 * 1024, `overlay is ${statSync(out).size} bytes`);
  // The zeroed region is explicit zero clusters in the overlay (depth 0), not the base's data.
  const map = await qemuMapRaw(out, { format: 'qcow2' });
  const mid = 3 * 1024 * 1024;
  const at = map.find((e) => e.start <= mid && mid < e.start + e.length);
  assert.ok(at, 'map covers the zeroed region');
  assert.equal(at.depth, 0, 'served by the overlay');
  assert.equal(at.zero, true);
  assert.equal(at.data, false);
});

test('raw writer output compares identical and is sparse', async () => {
  const size = 256 * 1024 * 1024 + 100;
  const src = await fixture(`writers-sparse-${size}-v1.raw`, async (out) => {
    const fd = openSync(out, 'w');
    try {
      ftruncateSync(fd, size);
      for (const at of [0, 5 * 1024 * 1024 + 17, 100 * 1024 * 1024, size - 4000]) {
        writeSync(fd, Buffer.alloc(4000, 0xa5), 0, 4000, at);
      }
    } finally {
      closeSync(fd);
    }
  });
  const out = path.join(scratch('w-raw'), 'out.raw');
  const r = await convertFile(src, out, { format: 'raw' });
  await qemuCompare(src, 'raw', out, 'raw');
  const st = statSync(out);
  assert.equal(st.size, size);
  assert.ok(st.blocks * 512 < 1024 * 1024, `output occupies ${st.blocks * 512} bytes on disk`);
  assert.ok(r.bytesWritten < 1024 * 1024, `wrote ${r.bytesWritten} bytes`);
});

test('raw writer on the pattern disk compares identical', async () => {
  const src = await patternRaw();
  const out = path.join(scratch('w-raw2'), 'out.raw');
  await convertFile(src, out, { format: 'raw' });
  await qemuCompare(src, 'raw', out, 'raw');
  assert.ok(statSync(out).blocks * 512 < statSync(src).size, 'zero runs are holes');
});

test('qemu-made qcow2 (compressed) converts back to raw identically through our reader', async () => {
  const src = await patternRaw();
  const q = await fixture(`writers-qemu-${SIZE}-c-v1.qcow2`, async (out) => {
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-c', src, out]);
  });
  const out = path.join(scratch('w-back'), 'out.raw');
  const img = await openImage(q);
  try {
    await convertImage(img, out, { format: 'raw' });
  } finally {
    await closeChain(img);
  }
  await qemuCompare(q, 'qcow2', out, 'raw');
});

test('bad options fail with StrataError and leave nothing behind', async () => {
  const src = await patternRaw();
  const dir = scratch('w-bad');
  for (const opts of [
    { format: 'qcow2' as const, clusterSize: 3000 },
    { format: 'qcow2' as const, clusterSize: 4 * 1024 * 1024 },
    { format: 'raw' as const, compression: 'zlib' as const },
    { format: 'vmdk' as unknown as 'raw' },
    { format: 'qcow2' as const, compression: 'lz4' as unknown as 'zlib' },
  ]) {
    await assert.rejects(convertFile(src, path.join(dir, 'out.img'), opts), (e) => e instanceof StrataError);
  }
  await assert.rejects(
    convertFile(src, path.join(dir, 'no-such-dir', 'out.img'), { format: 'raw' }),
    (e) => e instanceof StrataError && e.code === 'IO',
  );
  assert.deepEqual(readdirSync(dir), [], 'no output and no temporary files');
  assert.equal(existsSync(path.join(dir, 'out.img')), false);
});

test('the output may not overwrite its own input', async () => {
  const dir = scratch('w-self');
  const f = path.join(dir, 'disk.raw');
  writePatternDisk(f, 1024 * 1024, 3);
  const before = readFileSync(f);
  await assert.rejects(convertFile(f, f, { format: 'qcow2' }), (e) => e instanceof StrataError && e.code === 'USAGE');
  assert.ok(readFileSync(f).equals(before));
  assert.deepEqual(readdirSync(dir), ['disk.raw']);
});

test('an empty disk converts to a clean empty qcow2 and an empty raw', async () => {
  const dir = scratch('w-empty');
  const src = path.join(dir, 'empty.qcow2');
  await run('qemu-img', ['create', '-f', 'qcow2', src, '0']);
  for (const [format, name] of [
    ['qcow2', 'out.qcow2'],
    ['raw', 'out.raw'],
  ] as const) {
    const out = path.join(dir, name);
    const img = await openImage(src);
    try {
      const r = await convertImage(img, out, { format });
      assert.equal(r.virtualSize, 0);
    } finally {
      await closeChain(img);
    }
    if (format === 'qcow2') await qemuCheck(out);
    await qemuCompare(src, 'qcow2', out, format);
  }
  assert.equal(statSync(path.join(dir, 'out.raw')).size, 0);
});
