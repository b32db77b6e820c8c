/**
 * Issue 22: the block map of a LIBRARY VERSION of 200,000 entries within `--memory 64M`.
 * The version is read through the store, whose read caches (decoded frames, read scratch,
 * spare buffers) take their shares of the budget beside the map's and the file system's;
 * before the map of a version sized them down, `blockmap --summary` and `whatis` of this
 * version stopped with the memory error at 64M (65-67 MiB in use) where the image file's
 * map fits. The version's output must be the image file's, byte for byte (the image file's
 * map is checked against debugfs in large-memory.test.ts), and its peak RSS under the ceiling
 * large-memory.test.ts allows the image at that budget.
 */

import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { largeTreeImage } from '../helpers/large-tree-pair.js';
import { measured } from '../helpers/measured.js';
import { have, scratch } from '../helpers/tools.js';

const ENTRIES = 200_000;
/** As large-memory.test.ts: the 64 MiB budget, Node's own ~52 MiB, V8's young generation, allocator slack. */
const CEILING_64M = 176 * 1024 * 1024;

for (const [cmd, pkg] of [
  ['mkfs.ext4', 'e2fsprogs'],
  ['/usr/bin/time', 'time'],
]) {
  if (!have(cmd)) throw new Error(`${cmd} is needed (apt-get install ${pkg})`);
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

test('blockmap --summary and whatis of a 200,000-entry library version in --memory 64M: the image file output, under the RSS ceiling', async () => {
  const img = await largeTreeImage(ENTRIES);
  const dir = scratch('large-version-map');
  const lib = path.join(dir, 'lib');
  try {
    const ci = await measured(['checkin', '--library', lib, '--name', 'big', img], path.join(dir, 'checkin'));
    assert.equal(ci.code, 0, ci.stderr);

    // the image file's summary, then the version's, both at 64M
    const imgSum = await measured(['blockmap', '--summary', '--json', '--memory', '64M', img], path.join(dir, 'is'));
    assert.equal(imgSum.code, 0, imgSum.stderr);
    const sum = await measured(
      ['blockmap', '--summary', '--json', '--memory', '64M', '--library', lib, 'big@1'],
      path.join(dir, 'vs'),
    );
    assert.equal(sum.code, 0, sum.stderr);
    const theirs = readFileSync(path.join(dir, 'is'), 'utf8');
    assert.equal(readFileSync(path.join(dir, 'vs'), 'utf8'), theirs);
    assert.ok(sum.maxRss < CEILING_64M, `version blockmap --summary at 64M: peak RSS ${mib(sum.maxRss)}`);
    // a map of the whole tree, not an empty one: hundreds of thousands of file records
    const s = JSON.parse(theirs) as { records: number; kinds: Array<{ kind: string; records: number }> };
    assert.ok((s.kinds.find((k) => k.kind === 'file')?.records ?? 0) >= ENTRIES / 2, theirs);

    // whatis over 1 MiB of the disk (~200 owners: directories and files)
    const range = '0x10000000+1048576';
    const imgW = await measured(['whatis', '--memory', '64M', img, range], path.join(dir, 'iw'));
    assert.equal(imgW.code, 0, imgW.stderr);
    const w = await measured(['whatis', '--memory', '64M', '--library', lib, 'big@1', range], path.join(dir, 'vw'));
    assert.equal(w.code, 0, w.stderr);
    const owners = readFileSync(path.join(dir, 'iw'), 'utf8');
    assert.ok(owners.split('\n').length > 2, owners);
    assert.equal(readFileSync(path.join(dir, 'vw'), 'utf8'), owners);
    assert.ok(w.maxRss < CEILING_64M, `version whatis at 64M: peak RSS ${mib(w.maxRss)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
