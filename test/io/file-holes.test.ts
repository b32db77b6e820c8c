import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { truncateSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import type { Extent } from '../../src/io/byte-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { SliceSource } from '../../src/io/slice-source.js';
import { qemuMapRaw } from '../helpers/qemu-map.js';
import { scratch } from '../helpers/tools.js';

const MiB = 1024 * 1024;

test('file status: holes are zero where qemu-img map sees them, in any window; a shrunk file stays data', async () => {
  const dir = scratch('io-holes');
  const f = path.join(dir, 'sparse.raw');
  execFileSync('truncate', ['-s', '40M', f]);
  for (const [seek, count] of [
    [3, 2],
    [20, 1],
    [39, 1],
  ]) {
    execFileSync('dd', [
      'if=/dev/urandom',
      `of=${f}`,
      'bs=1M',
      `count=${count}`,
      `seek=${seek}`,
      'conv=notrunc',
      'status=none',
    ]);
  }
  const q = await qemuMapRaw(f, { format: 'raw' });
  const want: Extent[] = q.map((e) => ({ offset: e.start, length: e.length, kind: e.data ? 'data' : 'zero' }));
  const src = await FileSource.open(f);
  try {
    assert.deepEqual(await src.status(0, src.size), want);
    // an arbitrary window, and the same through a slice (shifted)
    const cut = (o: number, n: number) =>
      want
        .map((e) => ({ ...e, s: Math.max(o, e.offset), t: Math.min(o + n, e.offset + e.length) }))
        .filter((e) => e.t > e.s)
        .map((e) => ({ offset: e.s, length: e.t - e.s, kind: e.kind }));
    assert.deepEqual(await src.status(4 * MiB + 5, 17 * MiB), cut(4 * MiB + 5, 17 * MiB));
    const slice = new SliceSource(src, 2 * MiB, 30 * MiB);
    assert.deepEqual(
      await slice.status(0, 30 * MiB),
      cut(2 * MiB, 30 * MiB).map((e) => ({ ...e, offset: e.offset - 2 * MiB })),
    );
    truncateSync(f, 21 * MiB); // shrinks under the open source
    // the data at 20 MiB runs on into what the file no longer holds: data, so reads fail there
    assert.deepEqual(await src.status(0, src.size), [
      ...cut(0, 20 * MiB),
      { offset: 20 * MiB, length: 20 * MiB, kind: 'data' },
    ]);
  } finally {
    await src.close();
  }
});
