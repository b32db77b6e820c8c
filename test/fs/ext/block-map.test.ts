import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockMap, EH, extentRuns, indirectRuns, type Run } from '../../../src/fs/ext/block-map.js';
import { FL, INODE, InodeTable } from '../../../src/fs/ext/inode.js';
import {
  debugfs,
  debugfsBlocks,
  debugfsExtents,
  FRAG_PIECES,
  inodeOf,
  openContext,
  patchedCopy,
  STRUCT_IMAGES,
  structImage,
} from '../../helpers/ext-structs.js';

/** Runs as [logical, physical] per block. */
function perBlock(runs: Run[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const r of runs) for (let k = 0; k < r.len; k++) out.push([r.lblk + k, r.pblk + k]);
  return out;
}

for (const spec of STRUCT_IMAGES) {
  test(`block maps of ${spec.name}: runs and tree/indirect blocks as debugfs stat, ex and bmap give them`, async () => {
    const image = await structImage(spec);
    const { ctx, close } = await openContext(image);
    try {
      const table = new InodeTable(ctx);
      const map = new BlockMap(ctx);
      for (const p of ['/frag/fragmented', '/file300k', '/small.txt', '/big']) {
        const ino = await inodeOf(image, p);
        const n = await table.node(ino);
        const extents = (n.flags & FL.EXTENTS) !== 0;
        assert.equal(extents, spec.mkfs === 'mkfs.ext4', `${p} extent-mapped`);
        const meta: number[] = [];
        const runs = extents ? await extentRuns(ctx, n, meta) : await indirectRuns(ctx, n, meta);
        const oracle = await debugfsBlocks(image, ino);
        assert.deepEqual(perBlock(runs), oracle.data, `${p} data blocks`);
        assert.deepEqual(
          [...meta].sort((a, b) => a - b),
          oracle.meta.map(([, b]) => b).sort((a, b) => a - b),
          `${p} map blocks`,
        );
        // runs are sorted, disjoint and merged where contiguous
        for (let i = 1; i < runs.length; i++) {
          const a = runs[i - 1];
          const b = runs[i];
          assert.ok(a.lblk + a.len <= b.lblk, `${p} runs in order`);
          assert.ok(!(a.lblk + a.len === b.lblk && a.pblk + a.len === b.pblk && a.unwritten === b.unwritten));
        }
        // BlockMap (cached) says the same
        assert.deepEqual(await map.runs(n), runs);
        // bmap of a few logical blocks
        for (const l of [0, Math.floor(runs.length / 2), runs[runs.length - 1]?.lblk ?? 0]) {
          const phys = Number((await debugfs(image, `bmap <${ino}> ${l}`)).trim());
          const r = runs.find((x) => x.lblk <= l && l < x.lblk + x.len);
          assert.equal(r ? r.pblk + (l - r.lblk) : 0, phys, `${p} bmap ${l}`);
        }
        if (p === '/frag/fragmented') {
          assert.equal(runs.length, FRAG_PIECES);
          if (extents) {
            // the tree: a root in i_block of depth 1, index entries naming the leaf blocks
            const ex = await debugfsExtents(image, ino);
            const depth = new DataView(n.raw.buffer, n.raw.byteOffset).getUint16(INODE.block + EH.depth, true);
            assert.equal(depth, Math.max(...ex.map((e) => e.max)));
            assert.ok(depth >= 1);
            const index = ex.filter((e) => e.level < e.max).map((e) => e.pstart);
            assert.deepEqual(
              [...meta].sort((a, b) => a - b),
              index.sort((a, b) => a - b),
            );
            const leaves = ex.filter((e) => e.level === e.max);
            assert.equal(leaves.length, FRAG_PIECES);
            assert.deepEqual(
              runs.map((r) => [r.lblk, r.pblk, r.len]),
              leaves.map((e) => [e.lstart, e.pstart, e.len]),
            );
          } else {
            // 500 pieces 8 KiB apart: past the 12 direct and 256 single-indirect 1 KiB blocks
            assert.ok(oracle.meta.some(([k]) => k === 'DIND'));
          }
        }
      }
      assert.deepEqual(ctx.warnings, [], 'every tree block checksum verifies');
    } finally {
      await close();
    }
  });
}

test('extent tree: a changed leaf block gives a checksum warning naming it', async () => {
  const image = await structImage(STRUCT_IMAGES[0]);
  const ino = await inodeOf(image, '/frag/fragmented');
  const tree = await debugfsExtents(image, ino);
  const last = tree.filter((e) => e.level < e.max).at(-1);
  assert.ok(last, 'a tree with index entries');
  const leaf = last.pstart;
  const clean = await openContext(image);
  let bs: number;
  try {
    bs = clean.ctx.blockSize;
    await extentRuns(clean.ctx, await new InodeTable(clean.ctx).node(ino));
    assert.deepEqual(clean.ctx.warnings, []);
  } finally {
    await clean.close();
  }
  // a byte of an unused slot of the last leaf (past eh_entries, before eh_max): the checksum
  // covers it, the walk does not read it
  const { ctx, close } = await openContext(
    patchedCopy(image, (img) => {
      const v = (o: number) => img.readUInt16LE(leaf * bs + o);
      assert.equal(v(EH.magic), 0xf30a);
      assert.ok(v(EH.entries) < v(EH.max), 'the last leaf has free slots');
      img[leaf * bs + EH.size + (v(EH.max) - 1) * 12] ^= 0x5a;
    }),
  );
  try {
    const runs = await extentRuns(ctx, await new InodeTable(ctx).node(ino));
    assert.equal(runs.length, FRAG_PIECES);
    assert.deepEqual(ctx.warnings, [`ext inode ${ino} extent tree: block ${leaf} checksum mismatch`]);
  } finally {
    await close();
  }
});
