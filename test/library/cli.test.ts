import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { jsonLines, strata } from '../helpers/cli.js';
import { run, runBuffer } from '../helpers/tools.js';
import { baseTree, derivedTree, extImageOf, tempDir } from './images.js';

/** The library verbs as a user runs them, checked against debugfs and qemu-img. */
test('strata init/checkin/images/versions/tag/describe/ls/cat/checkout/rm/gc/verify', async () => {
  const dir = tempDir('lib-cli');
  const lib = path.join(dir, 'lib');
  const env = { STRATA_LIBRARY: lib };
  const ok = async (args: string[]) => {
    const r = await strata(args, { env });
    assert.equal(r.code, 0, `strata ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  const base = await extImageOf('ext4', await baseTree(), 'base');
  const derived = await extImageOf('ext4', await derivedTree(), 'dedup-derived', 64);
  await ok(['init']);
  const c1 = JSON.parse((await ok(['checkin', base, '--name', 'tree', '--tag', 'stable', '--json'])).stdout);
  assert.equal(c1.ref, 'tree@1');
  const c2 = JSON.parse((await ok(['checkin', derived, '--name', 'tree', '--json'])).stdout);
  assert.equal(c2.ref, 'tree@2');
  assert.ok(c2.newBytes < c1.newBytes);
  const human = await ok(['checkin', base, '--name', 'other']);
  assert.match(human.stdout, /logical size: .*\nused \(stored\): .*\nnew bytes stored: .*\ndedup ratio: /);

  const images = jsonLines<{ name: string; versions: number }>((await ok(['images', '--json'])).stdout);
  assert.deepEqual(
    images.map((i) => [i.name, i.versions]),
    [
      ['other', 1],
      ['tree', 2],
    ],
  );
  const versions = jsonLines<{ parents: unknown }>((await ok(['versions', 'tree', '--json'])).stdout);
  assert.deepEqual(versions[1].parents, [{ image: 'tree', number: 1 }]);
  await ok(['tag', 'tree@2', 'tree:next']);
  const d = JSON.parse((await ok(['describe', 'tree:next', '--json'])).stdout);
  assert.equal(d.number, 2);
  assert.deepEqual(d.provenance, ['tree@1']);
  assert.equal(d.layout.volumes[0].fs.kind, 'ext4');
  const byDigest = JSON.parse((await ok(['describe', c1.manifest.slice(0, 12), '--json'])).stdout);
  // 'other' is the same image as tree@1, so the same manifest: the prefix names it either way
  assert.equal(byDigest.manifest, c1.manifest);
  assert.ok(['tree@1', 'other@1'].includes(byDigest.ref));

  // ls and cat straight from the store vs debugfs on the original image
  const ls = (await ok(['ls', 'tree:stable', '/dir3/sub0', '--json'])).stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).path.split('/').pop())
    .sort();
  const dbg = (await run('debugfs', ['-R', 'ls -p /dir3/sub0', base]))
    .split('\n')
    .filter((l) => l.startsWith('/'))
    .map((l) => l.split('/')[5])
    .filter((n) => n && n !== '.' && n !== '..')
    .sort();
  assert.deepEqual(ls, dbg);
  for (const f of ['/big-text.txt', '/sparse.bin', '/link-rel', '/hardlink.bin']) {
    const mine = (await ok(['cat', 'tree@1', f])).stdoutBytes;
    const theirs = await runBuffer('debugfs', ['-R', `cat ${f === '/link-rel' ? '/dir0/sub0/file0.txt' : f}`, base]);
    assert.ok(mine.equals(theirs), `cat ${f}`);
  }
  const missing = await strata(['cat', 'tree@1', '/nope'], { env });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no such file/);

  const q = path.join(dir, 'out.qcow2');
  await ok(['checkout', 'tree@2', q, '-O', 'qcow2']);
  const e2 = await strata(['verify', 'tree@2'], { env });
  assert.equal(e2.code, 0);
  // a default checkout differs from the original only in free space: e2fsck and debugfs agree on content
  const raw = path.join(dir, 'out.raw');
  await run('qemu-img', ['convert', '-O', 'raw', q, raw]);
  await run('e2fsck', ['-fn', raw]);
  assert.ok(
    (await runBuffer('debugfs', ['-R', 'cat /0-new-first/payload.bin', raw])).equals(
      await runBuffer('debugfs', ['-R', 'cat /0-new-first/payload.bin', derived]),
    ),
  );

  await ok(['rm', 'other']);
  const gc = JSON.parse((await ok(['gc', '--json'])).stdout);
  assert.equal(gc.liveVersions, 2);
  const v = JSON.parse((await ok(['verify', '--json'])).stdout);
  assert.deepEqual(v.errors, []);
  assert.equal(v.versions, 2);
  await ok(['checkout', 'tree@1', path.join(dir, 'one.raw')]);
  await run('e2fsck', ['-fn', path.join(dir, 'one.raw')]);
  const gone = await strata(['describe', 'other'], { env });
  assert.equal(gone.code, 1);
});
