import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockMap } from '../../../src/fs/ext/block-map.js';
import {
  checkDxTail,
  DIRENT,
  Directories,
  DX_COUNTLIMIT,
  DX_ENTRY_SIZE,
  DX_ROOT_COUNT_OFFSET,
  DX_TAIL,
  dxCountOffset,
  parseDirBlock,
} from '../../../src/fs/ext/directory.js';
import { FL, InodeTable, inodeSeed } from '../../../src/fs/ext/inode.js';
import type { DirEntry } from '../../../src/fs/types.js';
import { readExact } from '../../../src/io/byte-source.js';
import {
  BIG_ENTRIES,
  debugfsBlocks,
  debugfsHtree,
  debugfsLs,
  inodeOf,
  openContext,
  patchedCopy,
  STRUCT_IMAGES,
  structImage,
} from '../../helpers/ext-structs.js';

const TYPE_BY_MODE: Record<number, string> = { 4: 'dir', 8: 'file', 10: 'symlink' };
const key = (e: { name: string; ino: number }) => `${e.name}\0${e.ino}`;

for (const spec of STRUCT_IMAGES) {
  test(`directories of ${spec.name}: linear and htree blocks parse to what debugfs ls and htree print`, async () => {
    const image = await structImage(spec);
    const { ctx, close } = await openContext(image);
    try {
      const bs = ctx.blockSize;
      const table = new InodeTable(ctx);
      const dirs = new Directories(ctx, new BlockMap(ctx));
      let htrees = 0;
      for (const dir of ['/', '/big', '/a', '/frag', '/lost+found']) {
        const ino = await inodeOf(image, dir);
        const n = await table.node(ino);
        const indexed = (n.flags & FL.INDEX) !== 0;
        const seed = ctx.metadataCsum ? inodeSeed(ctx, n) : 0;
        // the directory's blocks in logical order, from debugfs
        const blocks = (await debugfsBlocks(image, ino)).data;
        const out: DirEntry[] = [];
        const leaves = new Set<number>();
        for (const [lblk, pblk] of blocks) {
          const blk = new Uint8Array(await readExact(ctx.volume, pblk * bs, bs, 'dir block'));
          const dx = dxCountOffset(blk, lblk, indexed);
          if (dx === 0) leaves.add(lblk);
          if (lblk === 0 && indexed) {
            assert.equal(dx, DX_ROOT_COUNT_OFFSET);
            const ht = await debugfsHtree(image, dir);
            const v = new DataView(blk.buffer);
            assert.equal(v.getUint16(dx + DX_COUNTLIMIT.count, true), ht.count, `${dir} htree count`);
            assert.equal(v.getUint16(dx + DX_COUNTLIMIT.limit, true), ht.limit, `${dir} htree limit`);
            if (ht.checksum !== undefined) {
              const tail = dx + ht.limit * DX_ENTRY_SIZE;
              assert.equal(v.getUint32(tail + DX_TAIL.checksum, true), ht.checksum, `${dir} dx tail`);
            }
            // every leaf the root names is a leaf block to us
            for (const b of ht.blocks) assert.equal(dxCountOffset(await blockAt(blocks, b), b, true), 0, `${dir} ${b}`);
            htrees++;
          }
          if (dx && ctx.metadataCsum) checkDxTail(ctx, seed, blk, dx, pblk * bs, dir);
          parseDirBlock(ctx, seed, blk, pblk * bs, dir, lblk === 0 ? 0 : 2, dx === 0, out);
        }
        const ls = (await debugfsLs(image, dir)).filter((e) => e.ino !== 0 && e.name !== '.' && e.name !== '..');
        assert.deepEqual(out.map(key).sort(), ls.map(key).sort(), `${dir} entries`);
        const modeOf = new Map(ls.map((e) => [key(e), e.mode]));
        for (const e of out) assert.equal(e.type, TYPE_BY_MODE[(modeOf.get(key(e)) ?? 0) >> 12], `${dir}/${e.name}`);
        if (dir === '/big') {
          assert.equal(out.length, BIG_ENTRIES);
          assert.ok(indexed, 'e2fsck -D indexed /big');
          assert.ok(leaves.size < blocks.length, 'an htree has index blocks');
        }
        // the batched reader the facade uses says the same
        const batched: DirEntry[] = [];
        for await (const b of dirs.batches(n)) batched.push(...b);
        assert.deepEqual(batched, out);

        async function blockAt(list: Array<[number, number]>, lblk: number): Promise<Uint8Array> {
          const p = list.find(([l]) => l === lblk);
          assert.ok(p, `logical block ${lblk} of ${dir}`);
          return new Uint8Array(await readExact(ctx.volume, p[1] * bs, bs, 'dir block'));
        }
      }
      assert.ok(htrees >= 1);
      assert.deepEqual(ctx.warnings, [], 'every directory and htree checksum verifies');
    } finally {
      await close();
    }
  });
}

test('directory block: a changed name byte gives a checksum warning naming the block', async () => {
  const image = await structImage(STRUCT_IMAGES[0]);
  const ino = await inodeOf(image, '/a');
  const [[, pblk]] = (await debugfsBlocks(image, ino)).data;
  const bs = 4096;
  // '.' at 0 (rec_len 12), '..' at 12, then 'b': change its name
  const nameAt = pblk * bs + 24 + DIRENT.name;
  const { ctx, close } = await openContext(
    patchedCopy(image, (img) => {
      assert.equal(img[nameAt], 0x62);
      img[nameAt] = 0x63;
    }),
  );
  try {
    const n = await new InodeTable(ctx).node(ino);
    const out: DirEntry[] = [];
    const blk = new Uint8Array(await readExact(ctx.volume, pblk * bs, bs, 'dir block'));
    parseDirBlock(ctx, inodeSeed(ctx, n), blk, pblk * bs, 'dir /a', 0, true, out);
    assert.deepEqual(
      out.map((e) => e.name),
      ['c'],
    );
    assert.deepEqual(ctx.warnings, [`dir /a: directory block at ${pblk * bs} checksum mismatch`]);
  } finally {
    await close();
  }
});
