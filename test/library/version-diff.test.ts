/**
 * `strata diff A B` on two library versions (see test/helpers/inspect-pair.ts), from manifests only:
 * files against the trees on the host (lstat, readlink, sha256, getfattr), packages against
 * dpkg-query and dpkg --compare-versions, blocks bounded by the raw images (dumpe2fs's
 * free-block lists and the bytes), and the same answer as the image-file diff.
 */
import assert from 'node:assert/strict';
import { lstatSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { versionFileSets } from '../../src/catalog/inspection.js';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { diffOutput } from '../helpers/cli.js';
import {
  dpkgCompare,
  dpkgPackages,
  expectedDiff,
  hostTree,
  inspectPair,
  notLostFound,
  type Pair,
  usedBlocks,
} from '../helpers/inspect-pair.js';

import { tempDir } from './images.js';

let pair: Pair;
let libDir: string;
const diff = async (...args: string[]) => JSON.parse(await diffOutput([...args, '--json', '--library', libDir]));

describe('strata diff of library versions', { timeout: 600_000 }, () => {
  before(async () => {
    pair = await inspectPair();
    libDir = tempDir('lib-diff');
    const lib = await Library.open(libDir);
    try {
      await checkin(lib, pair.a, { name: 'deb' });
      await checkin(lib, pair.b, { name: 'deb' });
    } finally {
      await lib.close();
    }
  });

  test('files added, removed, changed, metadata only: as the trees say, and as the image-file diff says', async () => {
    const want = expectedDiff(await hostTree(pair.base), await hostTree(pair.derived));
    assert.ok(want.added.includes('/usr/local/newdir/ls-copy') && want.removed.includes('/usr/bin/cat'));
    assert.ok(want.changed.includes('/etc/hostname') && want.metadata.includes('/etc/debian_version [mode]'));
    const got = await diff('deb@1', 'deb@2');
    const f = got.files;
    const paths = (x: Array<{ path: string }>) => x.map((i) => i.path).filter(notLostFound);
    assert.deepEqual(paths(f.added), want.added);
    assert.deepEqual(paths(f.removed), want.removed);
    assert.deepEqual(paths(f.changed), want.changed);
    assert.deepEqual(
      f.metadata
        .filter((x: { path: string }) => notLostFound(x.path))
        .map((x: { path: string; fields: string[] }) => `${x.path} [${x.fields.join(',')}]`),
      want.metadata,
    );
    const passwd = f.changed.find((x: { path: string }) => x.path === '/etc/passwd');
    assert.equal(passwd?.sizeB, lstatSync(path.join(pair.derived, 'etc/passwd')).size);
    assert.equal(passwd?.sizeA, lstatSync(path.join(pair.base, 'etc/passwd')).size);
    // the same shapes and answer as the image-file diff
    const files = JSON.parse(await diffOutput([pair.a, pair.b, '--json'])).files;
    assert.deepEqual(got.files, files);
    const text = await diffOutput(['deb@1', 'deb@2', '--library', libDir]);
    assert.equal(text, await diffOutput([pair.a, pair.b]));
  });

  test('what picks the file manifests without the whole layout (its head, the stored file sets) names what the layout names', async () => {
    const lib = await Library.open(libDir, { create: false });
    try {
      for (const ref of ['deb@1', 'deb@2']) {
        const v = await lib.catalog.resolve(ref);
        const { chunks, chunkLengths, ranges, ...whole } = await lib.layout(v.manifest);
        assert.ok(chunks.length > 0 && chunkLengths.length > 0 && ranges.disk.length > 0);
        const fresh = await Library.open(libDir, { create: false }); // no decoded layout cached
        try {
          assert.deepEqual(await fresh.layoutHead(v.manifest), whole, ref);
        } finally {
          await fresh.close();
        }
        const sets = await versionFileSets(lib.catalog.db, v.image, v.number);
        const want = whole.volumes.filter((x) => x.fs).map((x) => ({ volume: x.id, files: x.fs?.files }));
        assert.ok(want.length > 0);
        assert.deepEqual(
          sets,
          want.sort((a, b) => (a.volume < b.volume ? -1 : 1)),
          ref,
        );
      }
      // a version with no stored inspection has no file sets to answer from
      assert.equal(await versionFileSets(lib.catalog.db, 'deb', 99), undefined);
    } finally {
      await lib.close();
    }
  });

  test('--packages: added, removed, upgraded, downgraded as dpkg-query and dpkg --compare-versions see them', async () => {
    const [pa, pb] = [await dpkgPackages(pair.base), await dpkgPackages(pair.derived)];
    const want = {
      added: [] as string[],
      removed: [] as string[],
      upgraded: [] as string[],
      downgraded: [] as string[],
    };
    for (const [n, v] of pb) {
      const old = pa.get(n);
      if (old === undefined) want.added.push(`${n} ${v}`);
      else if (old !== v)
        ((await dpkgCompare(old, 'lt', v)) ? want.upgraded : want.downgraded).push(`${n} ${old} ${v}`);
    }
    for (const [n, v] of pa) if (!pb.has(n)) want.removed.push(`${n} ${v}`);
    const got = (await diff('deb@1', 'deb@2', '--packages')).packages;
    const nv = (x: { name: string; version: string }) => `${x.name} ${x.version}`;
    const ch = (x: { name: string; from: string; to: string }) => `${x.name} ${x.from} ${x.to}`;
    assert.deepEqual(got.added.map(nv), want.added.sort());
    assert.deepEqual(got.removed.map(nv), want.removed.sort());
    assert.deepEqual(got.upgraded.map(ch), want.upgraded.sort());
    assert.deepEqual(got.downgraded.map(ch), want.downgraded.sort());
    assert.deepEqual(
      [want.added.length, want.removed.length, want.upgraded.length, want.downgraded.length],
      [1, 1, 1, 1],
    );
  });

  test('--blocks: bounded by the raw images (every differing used block counted), nothing to write against itself', async () => {
    const ub = await usedBlocks(pair.b);
    const A = readFileSync(pair.a);
    const B = readFileSync(pair.b);
    const zero = Buffer.alloc(ub.bs);
    const blk = (buf: Buffer, i: number) => buf.subarray(i * ub.bs, (i + 1) * ub.bs);
    const nonZero = ub.blocks.filter((i) => !blk(B, i).equals(zero));
    const differ = nonZero.filter((i) => !blk(B, i).equals(blk(A, i)));
    const got = (await diff('deb@1', 'deb@2', '--blocks')).blocks;
    assert.equal(got.blockSize, ub.bs);
    // B stores its allocated non-zero blocks (and no free ones)
    assert.ok(got.usedBlocks >= nonZero.length && got.usedBlocks <= ub.blocks.length, JSON.stringify(got));
    // a changed block is never missed; a written block is one B uses
    assert.ok(got.writeBlocks >= differ.length && got.writeBlocks <= got.usedBlocks, JSON.stringify(got));
    assert.ok(got.sharedBytes <= got.usedBytes);
    assert.ok(Math.abs(got.writeShare - got.writeBlocks / got.usedBlocks) < 1e-12);
    for (const ref of ['deb@1', 'deb@2']) {
      const self = await diff(ref, ref, '--blocks', '--packages');
      assert.equal(self.blocks.writeBlocks, 0);
      assert.equal(self.blocks.sharedBytes, self.blocks.usedBytes);
      assert.deepEqual(self.packages, { added: [], removed: [], upgraded: [], downgraded: [] });
      assert.equal(self.files.summary.added + self.files.summary.changed + self.files.summary.metadata, 0);
    }
  });
});
