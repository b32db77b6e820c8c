import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CachedSource } from '../../src/io/cached-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { sourceExport } from '../../src/serve/nbd/export.js';
import { openImageExport } from '../../src/serve/nbd/image-export.js';
import {
  baseQcow2,
  baseRaw,
  baseVmdk,
  chainDir,
  nbdsh,
  qemuImgMap,
  serveImage,
  startServer,
  zeroRuns,
} from '../helpers/nbd.js';
import { run, scratch } from '../helpers/tools.js';

test('qemu-img info and compare over TCP and a Unix socket see the qcow2 image', async () => {
  const img = await baseQcow2();
  for (const transport of ['tcp', 'unix'] as const) {
    const { server, errors, uri } = await serveImage(img, {}, transport);
    try {
      const info = JSON.parse(await run('qemu-img', ['info', '--output=json', uri()]));
      const orig = JSON.parse(await run('qemu-img', ['info', '--output=json', img]));
      assert.equal(info['virtual-size'], orig['virtual-size']);
      // The default (empty) name and the image's own name both select it.
      assert.match(await run('qemu-img', ['compare', uri(), img]), /identical/);
      assert.match(await run('qemu-img', ['compare', uri('nbd-base-v1.qcow2'), img]), /identical/);
      if (transport === 'unix') assert.match(uri(), /^nbd\+unix:\/\/\/\?socket=/);
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
  }
});

test('block status: qemu-img map and nbdinfo --map agree with qemu-img map of the file', async () => {
  const img = await baseQcow2();
  const { server, errors, uri } = await serveImage(img);
  try {
    const direct = await qemuImgMap(img);
    const viaNbd = await qemuImgMap(uri());
    assert.deepEqual(zeroRuns(viaNbd), zeroRuns(direct));
    assert.ok(zeroRuns(direct).some((r) => r[2]) && zeroRuns(direct).some((r) => !r[2]), 'fixture has zeros and data');
    // nbdinfo's view of base:allocation: data 0, zero clusters 2 (zero), never-written 3 (hole,zero).
    const expected: Array<[number, number, number]> = [];
    for (const e of direct) {
      const flags = e.present === false ? 3 : e.zero ? 2 : 0;
      const last = expected[expected.length - 1];
      if (last && last[2] === flags && last[0] + last[1] === e.start) last[1] += e.length;
      else expected.push([e.start, e.length, flags]);
    }
    const got = JSON.parse(await run('nbdinfo', ['--map', '--json', uri()])) as Array<{
      offset: number;
      length: number;
      type: number;
    }>;
    const merged: Array<[number, number, number]> = [];
    for (const e of got) {
      const last = merged[merged.length - 1];
      if (last && last[2] === e.type && last[0] + last[1] === e.offset) last[1] += e.length;
      else merged.push([e.offset, e.length, e.type]);
    }
    assert.deepEqual(merged, expected);
    assert.ok(expected.some((x) => x[2] === 3) && expected.some((x) => x[2] === 2));
  } finally {
    await server.close();
  }
  assert.deepEqual(errors, []);
});

test('a qcow2 backing chain and a vmdk are served whole: qemu-img compare and map', async () => {
  const child = path.join(await chainDir(), 'child.qcow2');
  const vmdk = await baseVmdk();
  for (const img of [child, vmdk]) {
    const { server, errors, uri } = await serveImage(img);
    try {
      assert.match(await run('qemu-img', ['compare', uri(), img]), /identical/);
      assert.deepEqual(zeroRuns(await qemuImgMap(uri())), zeroRuns(await qemuImgMap(img)));
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
  }
});

test('nbdcopy copies an export to a file and a file back into an overlay export', async () => {
  const raw = await baseRaw();
  const dir = scratch('nbdcopy');
  try {
    const { server, errors, uri } = await serveImage(await baseQcow2());
    const copy = path.join(dir, 'copy.raw');
    try {
      await run('nbdcopy', [uri(), copy]);
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
    assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', copy, await baseQcow2()]), /identical/);

    // Back: into an empty disk through a writable overlay, then the overlay holds the disk.
    const empty = path.join(dir, 'empty.qcow2');
    await run('qemu-img', ['create', '-f', 'qcow2', empty, '64M']);
    const overlay = path.join(dir, 'overlay.qcow2');
    const w = await serveImage(empty, { overlay });
    try {
      await run('nbdcopy', [raw, w.uri()]);
    } finally {
      await w.server.close();
    }
    assert.deepEqual(w.errors, []);
    await run('qemu-img', ['check', overlay]);
    assert.match(await run('qemu-img', ['compare', '-F', 'raw', overlay, raw]), /identical/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('several exports on one server, each found by name; NBD_OPT_LIST lists them', async () => {
  const a = await baseQcow2();
  const b = path.join(await chainDir(), 'child.qcow2');
  const { server, errors, uri } = await startServer([
    await openImageExport(a, { name: 'a' }),
    await openImageExport(b, { name: 'b', cacheSize: 8 << 20 }),
  ]);
  try {
    assert.match(await run('qemu-img', ['compare', uri('a'), a]), /identical/);
    assert.match(await run('qemu-img', ['compare', uri('b'), b]), /identical/);
    const list = await run('nbdinfo', ['--list', '--json', uri()]);
    assert.deepEqual(
      (JSON.parse(list).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']).sort(),
      ['a', 'b'],
    );
    // With two exports the empty name selects none.
    await assert.rejects(run('qemu-img', ['info', uri('')]));
  } finally {
    await server.close();
  }
  assert.deepEqual(errors, []);
});

test('errors a real client sees: EINVAL past the end, EPERM on a read-only export', async () => {
  const { server, errors, uri } = await serveImage(await baseQcow2());
  try {
    const script = [
      'import errno',
      'h.set_strict_mode(0)  # let the requests reach the server instead of libnbd refusing them',
      'size = h.get_size()',
      'assert h.is_read_only()',
      'assert h.can_multi_conn()',
      'for f in (lambda: h.pread(4096, size - 512), lambda: h.block_status(4096, size, lambda *a: 0)):',
      '  try:',
      '    f(); raise SystemExit("no error")',
      '  except nbd.Error as e:',
      '    assert e.errnum == errno.EINVAL, e',
      'try:',
      '  h.pwrite(b"x" * 512, 0); raise SystemExit("write accepted")',
      'except nbd.Error as e:',
      '  assert e.errnum == errno.EPERM, e',
      'h.flush()',
      'h.cache(1 << 20, 0)',
      'assert h.pread(512, size - 512) is not None',
      'print("ok")',
    ].join('\n');
    assert.equal((await nbdsh(uri(), script)).trim(), 'ok');
  } finally {
    await server.close();
  }
  assert.deepEqual(errors, []);
});

test('any ByteSource plugs in as an export (how a library version will): a cached file source, status from its own map', async () => {
  const raw = await baseRaw();
  const file = await FileSource.open(raw);
  // A source whose status says the second half is a hole (it reads as zeros in this test's view).
  const half = file.size / 2;
  const cached = new CachedSource(file, { blockSize: 1 << 20, capacity: 8 << 20 });
  const source = {
    name: 'two-halves',
    size: file.size,
    read: async (offset: number, length: number) => {
      const b = new Uint8Array(await cached.read(offset, length));
      if (offset + b.length > half) b.fill(0, Math.max(0, half - offset));
      return b;
    },
    status: async (offset: number, length: number) => {
      const out: Array<{ offset: number; length: number; kind: 'data' | 'unallocated' }> = [];
      const end = Math.min(file.size, offset + length);
      if (offset < half) out.push({ offset, length: Math.min(end, half) - offset, kind: 'data' });
      if (end > half)
        out.push({ offset: Math.max(offset, half), length: end - Math.max(offset, half), kind: 'unallocated' });
      return out;
    },
    close: () => cached.close(),
  };
  const { server, errors, uri } = await startServer([sourceExport('v', source)]);
  const dir = scratch('nbd-source');
  try {
    // The oracle: the raw file with its second half zeroed by qemu-io.
    const expected = path.join(dir, 'expected.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', raw, expected]);
    await run('qemu-io', ['-f', 'raw', '-c', `write -z ${half} ${half}`, expected]);
    assert.match(await run('qemu-img', ['compare', '-F', 'raw', uri(), expected]), /identical/);
    const map = JSON.parse(await run('nbdinfo', ['--map', '--json', uri()])) as Array<{ offset: number; type: number }>;
    assert.ok(
      map.some((e) => e.offset === half && e.type === 3),
      'the second half is a hole',
    );
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(errors, []);
});

test('backpressure: with small budgets nbdcopy is still served whole and the bytes in flight stay within the total', async () => {
  const img = await baseQcow2();
  const totalBudget = 2 << 20;
  const { server, errors, uri } = await startServer([await openImageExport(img)], 'tcp', {
    connectionBudget: 1 << 20,
    totalBudget,
  });
  const dir = scratch('nbd-budget');
  try {
    const copy = path.join(dir, 'copy.raw');
    // 4 connections x 64 requests of 256 KiB in flight: far more than the budgets allow.
    await run('nbdcopy', ['--connections=4', '--requests=64', '--request-size=262144', uri(), copy]);
    assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', copy, img]), /identical/);
    assert.ok(server.budget.peak > 0 && server.budget.peak <= totalBudget, `peak ${server.budget.peak}`);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(errors, []);
});
