import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { run, scratch } from '../helpers/tools.js';

test('the demo writes images that qemu-img checks clean and compares identical', async () => {
  const dir = scratch('demo');
  const r = await strata(['demo', '--dir', dir, '--size', String(8 << 20), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    steps: Array<{ name: string; file: string; matchesSource: boolean; info: { format: string } }>;
  };
  assert.equal(out.steps.length, 5);
  for (const s of out.steps) assert.ok(s.matchesSource, `${s.name} reads back as the source`);
  const raw = path.join(dir, 'disk.raw');
  for (const f of ['disk.qcow2', 'disk-zlib.qcow2', 'disk-zstd.qcow2']) {
    await run('qemu-img', ['check', path.join(dir, f)]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, path.join(dir, f)]);
  }
  await run('qemu-img', ['check', path.join(dir, 'child.qcow2')]);
  const info = JSON.parse(await run('qemu-img', ['info', '--output=json', path.join(dir, 'child.qcow2')]));
  assert.equal(info['backing-filename'], 'disk.qcow2');
  // The child differs from its base exactly where the demo changed it.
  await assert.rejects(run('qemu-img', ['compare', path.join(dir, 'disk.qcow2'), path.join(dir, 'child.qcow2')]));
});
