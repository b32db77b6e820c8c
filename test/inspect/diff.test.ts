/**
 * strata diff on two ext4 images made by mkfs.ext4 -d from a base tree (part of the
 * debootstrapped Debian) and a derived tree (files added, removed, rewritten, chmod-ed,
 * chown-ed, re-linked, touched, given an xattr; dpkg status with a package upgraded, one
 * downgraded, one removed, one added). Expected sets are computed by the test from the two
 * trees on the host (lstat, readlink, sha256, getfattr, dpkg-query and dpkg
 * --compare-versions), blocks from dumpe2fs's free-block lists and the raw image bytes.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstatSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { comparePaths, diffTrees, type FileTree, fileSystemTree, openAddress } from '../../src/library/index.js';
import { diffOutput } from '../helpers/cli.js';
import { expectedDiff, hostTree } from '../helpers/host-tree.js';
import { inspectPair, notLostFound, usedBlocks } from '../helpers/inspect-pair.js';
import { run } from '../helpers/tools.js';

describe('strata diff', { timeout: 600_000 }, () => {
  test('two images diff as a merge of their walks (issue 22): walk order is comparePaths order, same lists as holding A', async () => {
    const pair = await inspectPair();
    const [a, b] = [await openAddress(pair.a), await openAddress(pair.b)];
    try {
      const ta = fileSystemTree(a.fs);
      assert.equal(ta.walkOrder, true);
      // every name of the tree ('-', '.', '+', '_', digits, case) walks in comparePaths order
      let last: string | undefined;
      let n = 0;
      for await (const r of ta.records()) {
        if (last !== undefined) assert.ok(comparePaths(last, r.path) < 0, `${r.path} after ${last}`);
        last = r.path;
        n++;
      }
      assert.ok(n > 500, `${n} paths`);
      const unordered = (t: FileTree): FileTree => ({ ...t, walkOrder: false, records: () => t.records() });
      const merged = await diffTrees(fileSystemTree(a.fs), fileSystemTree(b.fs));
      const held = await diffTrees(unordered(fileSystemTree(a.fs)), fileSystemTree(b.fs));
      assert.ok(merged.added.length > 0 && merged.removed.length > 0 && merged.changed.length > 0);
      assert.deepEqual(merged, held);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('files added, removed, changed and changed in metadata only match the trees', async () => {
    const pair = await inspectPair();
    const want = expectedDiff(await hostTree(pair.base), await hostTree(pair.derived));
    // The edits the fixture made are all there (the expected sets are not trivially empty).
    assert.ok(want.added.includes('/usr/local/newdir/ls-copy') && want.removed.includes('/usr/bin/cat'));
    assert.ok(want.changed.includes('/etc/hostname') && want.metadata.includes('/etc/debian_version [mode]'));
    assert.ok(
      want.metadata.some((m) => /^\/etc\/strata-link \[(mtime,)?target\]$/.test(m)),
      want.metadata.join('\n'),
    );
    assert.ok(want.metadata.some((m) => m.startsWith('/etc/motd [') && m.includes('xattrs')));
    const got = JSON.parse(await diffOutput([pair.a, pair.b, '--json'])) as {
      files: {
        added: Array<{ path: string; size: number }>;
        removed: Array<{ path: string }>;
        changed: Array<{ path: string; sizeA: number; sizeB: number }>;
        metadata: Array<{ path: string; fields: string[] }>;
        summary: Record<string, number>;
      };
    };
    const f = got.files;
    assert.deepEqual(f.added.map((x) => x.path).filter(notLostFound), want.added);
    assert.deepEqual(f.removed.map((x) => x.path).filter(notLostFound), want.removed);
    assert.deepEqual(f.changed.map((x) => x.path).filter(notLostFound), want.changed);
    assert.deepEqual(
      f.metadata.filter((x) => notLostFound(x.path)).map((x) => `${x.path} [${x.fields.join(',')}]`),
      want.metadata,
    );
    const passwd = f.changed.find((x) => x.path === '/etc/passwd');
    assert.equal(passwd?.sizeB, lstatSync(path.join(pair.derived, 'etc/passwd')).size);
    assert.equal(passwd?.sizeA, lstatSync(path.join(pair.base, 'etc/passwd')).size);
    assert.equal(f.added.find((x) => x.path === '/etc/added.conf')?.size, 6);
  });

  test('--packages: added, removed, upgraded, downgraded as dpkg-query and dpkg --compare-versions see them', async () => {
    const pair = await inspectPair();
    const q = async (tree: string) =>
      new Map(
        (
          await run('dpkg-query', [
            '-W',
            `--admindir=${path.join(tree, 'var/lib/dpkg')}`,
            '-f',
            // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own field syntax
            '${db:Status-Abbrev}|${Package}|${Version}\\n',
          ])
        )
          .split('\n')
          .filter((l) => l.startsWith('ii'))
          .map((l) => l.split('|').slice(1) as [string, string]),
      );
    const [pa, pb] = [await q(pair.base), await q(pair.derived)];
    const want = {
      added: [] as string[],
      removed: [] as string[],
      upgraded: [] as string[],
      downgraded: [] as string[],
    };
    for (const [n, v] of pb) {
      const old = pa.get(n);
      if (old === undefined) want.added.push(`${n} ${v}`);
      else if (old !== v) {
        const up = await run('sh', ['-c', `dpkg --compare-versions '${old}' lt '${v}' && echo up || echo down`]);
        (up.trim() === 'up' ? want.upgraded : want.downgraded).push(`${n} ${old} ${v}`);
      }
    }
    for (const [n, v] of pa) if (!pb.has(n)) want.removed.push(`${n} ${v}`);
    const got = JSON.parse(await diffOutput([pair.a, pair.b, '--packages', '--json'])).packages;
    assert.deepEqual(
      got.added.map((x: { name: string; version: string }) => `${x.name} ${x.version}`),
      want.added.sort(),
    );
    assert.deepEqual(
      got.removed.map((x: { name: string; version: string }) => `${x.name} ${x.version}`),
      want.removed.sort(),
    );
    const ch = (x: { name: string; from: string; to: string }) => `${x.name} ${x.from} ${x.to}`;
    assert.deepEqual(got.upgraded.map(ch), want.upgraded.sort());
    assert.deepEqual(got.downgraded.map(ch), want.downgraded.sort());
    assert.deepEqual(
      [want.added.length, want.removed.length, want.upgraded.length, want.downgraded.length],
      [1, 1, 1, 1],
    );
  });

  test("--blocks: B's used blocks (dumpe2fs) that differ from A, and the bytes A shares, from the raw images", async () => {
    const pair = await inspectPair();
    const ua = await usedBlocks(pair.a);
    const ub = await usedBlocks(pair.b);
    const A = readFileSync(pair.a);
    const B = readFileSync(pair.b);
    const h = (buf: Buffer, i: number, bs: number) =>
      createHash('sha256')
        .update(buf.subarray(i * bs, (i + 1) * bs))
        .digest('hex');
    const aUsed = new Set(ua.blocks);
    const aContent = new Set(ua.blocks.map((i) => h(A, i, ua.bs)));
    let write = 0;
    let shared = 0;
    for (const i of ub.blocks) {
      const hb = h(B, i, ub.bs);
      if (!aUsed.has(i) || h(A, i, ua.bs) !== hb) write++;
      if (aContent.has(hb)) shared++;
    }
    const got = JSON.parse(await diffOutput([pair.a, pair.b, '--blocks', '--json'])).blocks;
    assert.equal(got.blockSize, ub.bs);
    assert.equal(got.usedBlocks, ub.blocks.length);
    assert.equal(got.writeBlocks, write);
    assert.equal(got.sharedBytes, shared * ub.bs);
    assert.ok(write > 0 && write < ub.blocks.length, `write ${write} of ${ub.blocks.length}`);
    assert.ok(Math.abs(got.writeShare - write / ub.blocks.length) < 1e-12);
  });

  test('an image against itself: no differences, every used block shared, nothing to write', async () => {
    const pair = await inspectPair();
    const got = JSON.parse(await diffOutput([pair.a, pair.a, '--packages', '--blocks', '--json']));
    assert.deepEqual(got.files.summary, {
      added: 0,
      removed: 0,
      changed: 0,
      metadata: 0,
      bytesAdded: 0,
      bytesRemoved: 0,
      bytesChanged: 0,
    });
    assert.deepEqual(got.packages, { added: [], removed: [], upgraded: [], downgraded: [] });
    assert.equal(got.blocks.writeBlocks, 0);
    assert.equal(got.blocks.sharedBytes, got.blocks.usedBytes);
    const text = await diffOutput([pair.a, pair.b]);
    assert.match(text, /^\+ file\s+\d+ \/etc\/added\.conf$/m);
    assert.match(text, /^- file\s+\d+ \/usr\/bin\/cat$/m);
  });
});
