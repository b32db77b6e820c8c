import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openImage } from '../../src/formats/open.js';
import { SliceSource } from '../../src/io/slice-source.js';
import { strata } from '../helpers/cli.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { qemuMap, qemuMapHostHoles } from '../helpers/qemu-map.js';
import { fixture, run, scratch } from '../helpers/tools.js';

interface QemuInfo {
  format: string;
  'virtual-size': number;
  'actual-size': number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
}

async function chain3(): Promise<string> {
  return fixture('cli-chain3-v1', async (dir) => {
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir);
    const raw = path.join(dir, 'src.raw');
    writePatternDisk(raw, 8 * 1024 * 1024 + 4096, 21);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, path.join(dir, 'base.qcow2')]);
    await run('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', path.join(dir, 'mid.qcow2')]);
    await run('qemu-io', ['-c', 'write -P 0x5a 1M 64k', path.join(dir, 'mid.qcow2')]);
    await run('qemu-img', ['create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', path.join(dir, 'top.qcow2')]);
    await run('qemu-io', ['-c', 'write -z 2M 128k', '-c', 'write -P 0x11 7M 4k', path.join(dir, 'top.qcow2')]);
  });
}

test('info --json agrees with qemu-img info along a three-level backing chain', async () => {
  const dir = await chain3();
  const top = path.join(dir, 'top.qcow2');
  const q = JSON.parse(await run('qemu-img', ['info', '--output=json', '--backing-chain', top])) as QemuInfo[];
  const r = await strata(['info', '--json', top]);
  assert.equal(r.code, 0, r.stderr);
  const ours = JSON.parse(r.stdout);
  assert.equal(ours.format, q[0].format);
  assert.equal(ours.virtualSize, q[0]['virtual-size']);
  assert.equal(ours.clusterSize, q[0]['cluster-size']);
  assert.equal(ours.backing.length, q.length - 1);
  for (let i = 1; i < q.length; i++) {
    assert.equal(path.basename(ours.backing[i - 1].path), path.basename(q[i - 1]['full-backing-filename'] ?? ''));
    assert.equal(ours.backing[i - 1].format, q[i].format);
  }
  // allocatedBytes of the top layer: what qemu-img map says this layer (depth 0) holds as data.
  const m = JSON.parse(await run('qemu-img', ['map', '--output=json', top])) as Array<{
    length: number;
    depth: number;
    data: boolean;
  }>;
  const own = m.filter((e) => e.depth === 0 && e.data).reduce((a, e) => a + e.length, 0);
  assert.equal(ours.allocatedBytes, own);
});

test('map --json classifies ranges like qemu-img map', async () => {
  const dir = await chain3();
  const top = path.join(dir, 'top.qcow2');
  const r = await strata(['map', '--json', top]);
  assert.equal(r.code, 0, r.stderr);
  const ours = JSON.parse(r.stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  // qemu's map, with the holes of each layer's file (where qemu-img convert punched out zero
  // blocks inside data clusters) cut out by qemu-img map of that file: those read as zeros
  // and Strata sees them with SEEK_HOLE
  const q = await qemuMapHostHoles(top);
  const merged: typeof ours = [];
  for (const e of q) {
    const last = merged[merged.length - 1];
    if (last && last.data === e.data && last.zero === e.zero && last.start + last.length === e.start)
      last.length += e.length;
    else merged.push({ start: e.start, length: e.length, data: e.data, zero: e.zero });
  }
  assert.deepEqual(ours, merged);
});

test('errors are one line on stderr with a non-zero exit', async () => {
  const dir = scratch('cli-errors');
  const r = await strata(['info', path.join(dir, 'missing.img')]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr.trim().split('\n').length, 1);
  assert.match(r.stderr, /missing\.img/);
  const empty = path.join(dir, 'empty.img');
  writeFileSync(empty, '');
  const e = await strata(['map', '--json', empty]);
  assert.equal(e.code, 1);
  assert.match(e.stderr, /empty\.img.*empty file/);
  const u = await strata(['no-such-verb']);
  assert.notEqual(u.code, 0);
});

/** A 3 GiB sparse raw disk with a little data at the start, the middle and the very end, and its qcow2. */
async function bigSparse(): Promise<string> {
  return fixture('cli-big-sparse-v1', async (dir) => {
    const { mkdirSync, openSync, ftruncateSync, writeSync, closeSync } = await import('node:fs');
    mkdirSync(dir);
    const raw = path.join(dir, 'big.raw');
    const size = 3 * 1024 ** 3;
    const fd = openSync(raw, 'w');
    ftruncateSync(fd, size);
    for (const at of [0, 1536 * 1024 ** 2 + 65536, size - 4096]) writeSync(fd, Buffer.alloc(4096, 0xa7), 0, 4096, at);
    closeSync(fd);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, path.join(dir, 'big.qcow2')]);
  });
}

test('info and map cover disks larger than one read may be (3 GiB raw and qcow2)', async () => {
  const dir = await bigSparse();
  for (const name of ['big.raw', 'big.qcow2']) {
    const file = path.join(dir, name);
    const fmt = name.endsWith('.raw') ? 'raw' : 'qcow2';
    const q = JSON.parse(await run('qemu-img', ['info', '--output=json', '-f', fmt, file])) as QemuInfo;
    const info = await strata(['info', '--json', file]);
    assert.equal(info.code, 0, info.stderr);
    assert.equal(JSON.parse(info.stdout).virtualSize, q['virtual-size']);
    const r = await strata(['map', '--json', file]);
    assert.equal(r.code, 0, r.stderr);
    const ours = JSON.parse(r.stdout) as Array<{ start: number; length: number; data: boolean }>;
    assert.equal(ours[0].start, 0);
    assert.equal(
      ours.reduce((a, e) => a + e.length, 0),
      q['virtual-size'],
    );
    // Raw holes are invisible to Node (no SEEK_HOLE), so only the qcow2 map is compared range by range.
    if (fmt === 'qcow2') assert.deepEqual(ours, await qemuMap(file, { format: 'qcow2' }));
  }
  // A window of the big disk (a partition, an LV segment) reports status over its whole length too.
  const img = await openImage(path.join(dir, 'big.qcow2'));
  try {
    const part = new SliceSource(img, 1024 ** 3, 2 * 1024 ** 3 - 4096);
    const st = await part.status(0, part.size);
    assert.equal(
      st.reduce((a, e) => a + e.length, 0),
      part.size,
    );
    assert.deepEqual(
      st.filter((e) => e.kind === 'data').map((e) => e.offset),
      [512 * 1024 ** 2 + 65536, part.size - 65536 + 4096],
    );
  } finally {
    await img.close();
  }
});
