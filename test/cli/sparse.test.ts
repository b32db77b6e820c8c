import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { holesSupported } from '../../src/io/native.js';
import { strata } from '../helpers/cli.js';
import { dataBytes, type MapRange, mergeMap, qemuMap } from '../helpers/qemu-map.js';
import { run, scratch } from '../helpers/tools.js';

/** `strata map --json` as merged ranges (one array, or one record per line). */
async function strataMapCli(file: string, extra: string[] = []): Promise<MapRange[]> {
  const r = await strata(['map', '--json', ...extra, file]);
  assert.equal(r.code, 0, r.stderr);
  const text = r.stdout.trim();
  const rows = (text.startsWith('[') ? JSON.parse(text) : text.split('\n').map((l) => JSON.parse(l))) as MapRange[];
  return mergeMap(rows);
}

async function strataInfo(file: string, extra: string[] = []): Promise<{ allocatedBytes: number; zeroBytes: number }> {
  const r = await strata(['info', '--json', ...extra, file]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** A 256 MiB raw file with data at a few places and holes between (made with dd and truncate). */
function sparseRaw(dir: string): string {
  const f = path.join(dir, 'disk.raw');
  execFileSync('truncate', ['-s', '256M', f]);
  const put = (mib: number, count: number, blockSize = '1M') =>
    execFileSync('dd', [
      'if=/dev/urandom',
      `of=${f}`,
      `bs=${blockSize}`,
      `count=${count}`,
      `seek=${mib}`,
      'conv=notrunc',
      'status=none',
    ]);
  put(0, 1);
  put(17, 3);
  put(64 * 256 + 5, 2, '4K'); // 8 KiB at 64 MiB + 20 KiB
  put(255, 1);
  return f;
}

test('a sparse raw file: info and map see its holes exactly where qemu-img map does', async () => {
  assert.ok(holesSupported(), 'the lseek addon (native/) is built: npm install or npm run build makes it');
  const dir = scratch('cli-sparse');
  const f = sparseRaw(dir);
  const want = await qemuMap(f, { format: 'raw' });
  assert.ok(want.length >= 7, `qemu sees holes: ${JSON.stringify(want)}`);
  assert.deepEqual(await strataMapCli(f), want);
  const info = await strataInfo(f);
  assert.equal(info.allocatedBytes, dataBytes(want));
  assert.ok(info.allocatedBytes <= statSync(f).blocks * 512, 'allocated is at most what the file uses on disk');
  // the same file behind a format that keeps raw's offsets: a fixed VHD (raw + footer)
  const vhd = path.join(dir, 'disk.vhd');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=fixed', f, vhd]);
  assert.deepEqual(await strataMapCli(vhd), await qemuMap(vhd, { format: 'vpc' }));
});

test('qcow2 preallocation=metadata: clusters over holes of the file are zero, as qemu-img map says', async () => {
  const dir = scratch('cli-sparse-qcow2');
  const q = path.join(dir, 'pre.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', q, '32M']);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 7 3M 192k', '-c', 'write -P 9 20M 64k', q]);
  const want = await qemuMap(q);
  assert.deepEqual(
    want.filter((r) => r.data).map((r) => [r.start, r.length]),
    [
      [3 * 1024 * 1024, 192 * 1024],
      [20 * 1024 * 1024, 64 * 1024],
    ],
    'qemu reports the written clusters as data, the rest as zero',
  );
  assert.deepEqual(await strataMapCli(q), want);
  const info = await strataInfo(q);
  assert.equal(info.allocatedBytes, 256 * 1024);
});

test('a qcow2 with an external raw data file that is sparse', async () => {
  const dir = scratch('cli-sparse-datafile');
  await run(
    'qemu-img',
    [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'data_file=data.bin,data_file_raw=on,preallocation=metadata',
      'img.qcow2',
      '16M',
    ],
    { cwd: dir },
  );
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 5 1M 128k', 'img.qcow2'], { cwd: dir });
  const q = path.join(dir, 'img.qcow2');
  // qemu-img map of the qcow2 does not look into an external data file's holes (it says
  // data throughout); with data_file_raw the disk is the data file byte for byte, so the
  // oracle is qemu-img map of the data file itself.
  const want = await qemuMap(path.join(dir, 'data.bin'), { format: 'raw' });
  assert.ok(dataBytes(want) < 1024 * 1024, JSON.stringify(want));
  assert.ok(
    want.some((r) => r.data && r.start <= 1024 * 1024 && r.start + r.length >= 1024 * 1024 + 128 * 1024),
    'the written range is data',
  );
  assert.deepEqual(await strataMapCli(q), want);
  writeFileSync(path.join(dir, 'done'), '');
});
