/**
 * Issue 22: `strata mount` of a library version of the 200,000-entry ext4 tree
 * (test/helpers/large-tree-pair.ts) with `--memory 64M`: every name, type, size, mode, owner,
 * link count, inode number, time and link target, and every file's bytes, as the kernel's own
 * read-only loop mount of the image checked in shows them, walked with find and read whole
 * with sha256sum; and the server's peak RSS (the kernel's VmHWM of its process) under a
 * ceiling. Before, the mount built a tree of objects over the whole file manifest (each entry
 * and its attributes, a map of names per directory) and the session kept a node for every
 * file the kernel was handed; now the manifest is streamed into an index on disk
 * (src/serve/fuse/manifest-index.ts) and READDIRPLUS replies are built from it.
 * Run alone: the figure is a peak, and no timing is asserted.
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { type StrataMount, strataMount } from '../helpers/fuse-mount.js';
import { largeTreeImage, largeTreePaths } from '../helpers/large-tree-pair.js';
import { have, run, scratch } from '../helpers/tools.js';

const ENTRIES = 200_000;
const MiB = 1 << 20;
/**
 * Peak RSS allowed to the server (VmHWM) with --memory 64M over a walk and a read of every
 * file: the budget, Node's own ~50 MiB, the store's shares and the session's block cache.
 * Measured (load 15-22): main's build before 411 MiB; the index alone, the session still
 * keeping a node for every file read, 303 MiB; with both 173 MiB.
 */
const CEILING = 240 * MiB;

for (const [cmd, pkg] of [
  ['mkfs.ext4', 'e2fsprogs'],
  ['find', 'findutils'],
  ['sha256sum', 'coreutils'],
  ['mount', 'mount'],
]) {
  if (!have(cmd)) throw new Error(`${cmd} is needed (apt-get install ${pkg})`);
}

/** Every entry below `root` (the root itself left out: the manifest keeps no entry for it), one line each, sorted. */
function listing(root: string): string {
  const r = spawnSync(
    'sh',
    ['-c', `cd '${root}' && find . -mindepth 1 -printf '%p %y %s %m %U %G %n %i %T@ %C@ %A@ %l\\n' | LC_ALL=C sort`],
    { encoding: 'utf8', maxBuffer: 1 << 30 },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** sha256 of every regular file below `root`, by path, sorted. */
function hashes(root: string): string {
  const r = spawnSync(
    'sh',
    ['-c', `cd '${root}' && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -n 2000 sha256sum`],
    { encoding: 'utf8', maxBuffer: 1 << 30 },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** Peak resident set of a process, from the kernel (VmHWM), in bytes. */
function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, 'VmHWM in /proc/PID/status');
  return Number(m[1]) * 1024;
}

/** The first line where two sorted listings differ, for the message. */
function firstDifference(a: string, b: string): string {
  const x = a.split('\n');
  const y = b.split('\n');
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if (x[i] !== y[i]) return `line ${i + 1}: kernel ${JSON.stringify(x[i])}, mount ${JSON.stringify(y[i])}`;
  }
  return 'none';
}

test('mount of a 200,000-entry version with --memory 64M: the tree and every byte equal the kernel loop mount of the image, the server under the RSS ceiling', async () => {
  const img = await largeTreeImage(ENTRIES);
  const dir = scratch('fuse-version-memory');
  const loop = path.join(dir, 'loop');
  let m: StrataMount | undefined;
  let looped = false;
  try {
    const lib = path.join(dir, 'lib');
    const ci = await strata(['checkin', img, '--name', 'big', '--library', lib]);
    assert.equal(ci.code, 0, ci.stderr);
    mkdirSync(loop);
    await run('mount', ['-o', 'ro,loop,noload', img, loop]);
    looped = true;
    const want = listing(loop);
    const wantHashes = hashes(loop);
    await run('umount', [loop]);
    looped = false;
    assert.ok(want.split('\n').length > largeTreePaths(ENTRIES), 'the kernel lists the whole tree');

    m = await strataMount(['--library', lib, 'big@1', '--memory', '64M'], 'version-memory');
    const pid = m.child.pid as number;
    const got = listing(m.mnt);
    assert.equal(got.length, want.length, `listings differ: ${firstDifference(want, got)}`);
    assert.ok(got === want, `listings differ: ${firstDifference(want, got)}`);
    const gotHashes = hashes(m.mnt);
    assert.ok(gotHashes === wantHashes, `file bytes differ: ${firstDifference(wantHashes, gotHashes)}`);
    const peak = peakRss(pid);
    const code = await m.stop();
    m = undefined;
    assert.equal(code, 0);
    assert.ok(peak <= CEILING, `the server peaked at ${(peak / MiB).toFixed(0)} MiB (ceiling ${CEILING / MiB} MiB)`);
  } finally {
    if (m) await m.stop('SIGKILL');
    if (looped) await run('umount', ['-l', loop]).catch(() => {});
    try {
      rmdirSync(loop);
    } catch {
      // never made, or still mounted: left for the scratch cleanup to judge
    }
    rmSync(path.join(dir, 'lib'), { recursive: true, force: true });
  }
});
