import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
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
  const q = JSON.parse(await run('qemu-img', ['map', '--output=json', top])) as Array<{
    start: number;
    length: number;
    data: boolean;
    zero: boolean;
  }>;
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
