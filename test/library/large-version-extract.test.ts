/**
 * Issue 22: `extract` of a LIBRARY VERSION of 200,000 entries within `--memory 64M`. The
 * version is read through the store, whose read caches (decoded frames, read scratch, spare
 * buffers) take their shares of the budget beside the file system's and the extract's own;
 * before a version's extract opened it with small file-system caches and fewer frames
 * (target.ts versionPassOptions), it stopped with the memory error at 64M (64 MiB of heap and
 * buffers in use) where the image file's extract fits. The tree written must be the image
 * file's extract at the same budget (checked against an unbounded run in large-memory.test.ts,
 * and against the kernel's loop mount in bench/README), entry for entry and byte for byte,
 * and the peak RSS under the ceiling large-memory.test.ts allows the image at that budget.
 */

import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { outDir, treeManifest } from '../helpers/files.js';
import { largeTreeImage, largeTreePaths } from '../helpers/large-tree-pair.js';
import { measured } from '../helpers/measured.js';
import { have, scratch } from '../helpers/tools.js';

const ENTRIES = 200_000;
/** As large-memory.test.ts: the 64 MiB budget, Node's own ~52 MiB, V8's young generation, allocator slack. */
const CEILING_64M = 176 * 1024 * 1024;
/** What `extract /` writes: the generated paths and mkfs's /lost+found. */
const LISTED = largeTreePaths(ENTRIES) + 1;

for (const [cmd, pkg] of [
  ['mkfs.ext4', 'e2fsprogs'],
  ['/usr/bin/time', 'time'],
]) {
  if (!have(cmd)) throw new Error(`${cmd} is needed (apt-get install ${pkg})`);
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

test('extract / of a 200,000-entry library version in --memory 64M: the image file extract, under the RSS ceiling', async () => {
  const img = await largeTreeImage(ENTRIES);
  const dir = scratch('large-version-extract');
  const lib = path.join(dir, 'lib');
  const fromVersion = outDir('large-version-extract-v');
  const fromImage = outDir('large-version-extract-i');
  try {
    const ci = await measured(['checkin', '--library', lib, '--name', 'big', img], path.join(dir, 'checkin'));
    assert.equal(ci.code, 0, ci.stderr);

    const v = await measured(
      ['extract', '--memory', '64M', '--library', lib, 'big@1', '/', fromVersion],
      path.join(dir, 'v'),
    );
    assert.equal(v.code, 0, v.stderr);
    assert.ok(v.maxRss < CEILING_64M, `version extract at 64M: peak RSS ${mib(v.maxRss)}`);
    const i = await measured(['extract', '--memory', '64M', img, '/', fromImage], path.join(dir, 'i'));
    assert.equal(i.code, 0, i.stderr);

    const theirs = treeManifest(fromImage, { dirSizes: false });
    assert.equal(theirs.split('\n').length, LISTED);
    assert.equal(treeManifest(fromVersion, { dirSizes: false }), theirs);
  } finally {
    for (const d of [fromVersion, fromImage, dir]) rmSync(d, { recursive: true, force: true });
  }
});
