import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { reachable } from '../../src/library/library-verbs.js';
import { run, runBuffer } from '../helpers/tools.js';
import { baseTree, DERIVED_CHANGES, derivedTree, extImageOf, tempDir } from './images.js';

/**
 * Dedup across a base image and a derived one made by mkfs.ext4 -d from the same tree plus
 * changes (so file placement differs): the derived image stores about the compressed size
 * of what changed, and an unchanged file that moved on disk stores no new data.
 */
let lib: Library;
before(async () => {
  lib = await Library.open(path.join(tempDir('lib-dedup'), 'lib'));
});
after(async () => lib?.close());

/** Physical block of a file's first block, as debugfs reports it. */
async function firstBlock(image: string, p: string): Promise<number> {
  return Number((await run('debugfs', ['-R', `bmap ${p} 0`, image])).trim());
}

test('a derived image stores about what changed; moved files store no new data chunks', async () => {
  const baseImg = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  const derived = await derivedTree();
  const derivedImg = await extImageOf('ext4', derived, 'dedup-derived', 64);

  const a = await checkin(lib, baseImg, { name: 'tree' });
  const b = await checkin(lib, derivedImg, { name: 'tree' });

  // the same image again: the same manifest (cutting order does not leak into it), nothing new
  const again = await checkin(lib, derivedImg, { name: 'again' });
  assert.equal(again.manifest, b.manifest);
  assert.equal(again.newBytes, 0);

  // Oracle for "what changed": zstd -3 (the reference CLI) of the changed files.
  let changedCompressed = 0;
  for (const rel of DERIVED_CHANGES) {
    changedCompressed += (await runBuffer('zstd', ['-3', '-c', path.join(derived, rel)])).length;
  }
  assert.ok(
    b.newBytes <= changedCompressed + 512 * 1024,
    `derived stored ${b.newBytes} new bytes; the changes compress to ${changedCompressed}`,
  );
  assert.ok(
    b.newBytes >= changedCompressed * 0.9,
    `the changes (${changedCompressed} compressed) were stored (${b.newBytes})`,
  );
  assert.ok(b.usedBytes > 4 * b.newBytes, `derived uses ${b.usedBytes} bytes but stored ${b.newBytes} new`);
  assert.deepEqual(
    (await lib.catalog.resolve('tree@2')).parents,
    [{ image: 'tree', number: 1 }],
    'the previous version is the parent',
  );

  // An unchanged file at a different disk position (debugfs says so) reuses every chunk.
  const moved = '/big-random.bin';
  const [ba, bb] = [await firstBlock(baseImg, moved), await firstBlock(derivedImg, moved)];
  assert.notEqual(ba, bb, 'mkfs placed the file differently in the derived image');
  const baseBlobs = new Set<string>();
  await reachable(lib, a.manifest, baseBlobs);
  const derivedLayout = await lib.layout(b.manifest);
  const files = await lib.files(derivedLayout.volumes[0].fs!.files);
  let unchanged = 0;
  for (const e of files.entries) {
    if (e.type !== 'file') continue;
    const rel = e.path.slice(1);
    const onDisk = readFileSync(path.join(derived, rel));
    const sha = createHash('sha256').update(onDisk).digest('hex');
    assert.equal(e.digest, sha, `content digest of ${e.path} (sha256 of the tree file)`);
    assert.equal(e.size, statSync(path.join(derived, rel)).size);
    if (DERIVED_CHANGES.includes(rel)) continue;
    unchanged++;
    for (const c of e.chunks ?? []) if (c) assert.ok(baseBlobs.has(c), `${e.path}: chunk ${c} is new`);
  }
  assert.ok(unchanged > 200, `${unchanged} unchanged files checked`);
});
