import assert from 'node:assert/strict';
import { test } from 'node:test';
import { groupFirstBlock } from '../../../src/fs/ext/context.js';
import { BG } from '../../../src/fs/ext/group-desc.js';
import { allocation, bitmapRuns, groupSuperAndGdt } from '../../../src/fs/ext/layout.js';
import { readExact } from '../../../src/io/byte-source.js';
import { dumpe2fs, openContext, STRUCT_IMAGES, structImage } from '../../helpers/ext-structs.js';

/** The complement of sorted [first, last] ranges inside [lo, hi]. */
function complement(free: Array<[number, number]>, lo: number, hi: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let at = lo;
  for (const [a, b] of free) {
    if (a > at) out.push([at, a - 1]);
    at = b + 1;
  }
  if (at <= hi) out.push([at, hi]);
  return out;
}

for (const spec of STRUCT_IMAGES) {
  test(`layout of ${spec.name}: bitmaps, backups and allocation as dumpe2fs prints them`, async () => {
    const image = await structImage(spec);
    const { ctx, close } = await openContext(image);
    try {
      const sb = ctx.sb;
      const bs = sb.blockSize;
      const { header, groups } = await dumpe2fs(image);
      let bitmapsRead = 0;
      for (const g of groups) {
        const d = ctx.groups[g.index];
        const first = groupFirstBlock(sb, g.index);
        assert.equal(first, g.first);
        // superblock and descriptor copies of this group
        const want: Array<[number, number, string]> = [];
        if (g.superblock) want.push([g.superblock.at, 1, 'superblock']);
        if (g.gdt) want.push([g.gdt[0], g.gdt[1] - g.gdt[0] + 1, 'group-descriptors']);
        if (g.reservedGdt) want.push([g.reservedGdt[0], g.reservedGdt[1] - g.reservedGdt[0] + 1, 'reserved-gdt']);
        assert.deepEqual(groupSuperAndGdt(ctx, g.index), want, `group ${g.index}`);
        // the used blocks of an initialised block bitmap: the complement of dumpe2fs's free ones
        if (!(d.flags & BG.BLOCK_UNINIT)) {
          const bm = new Uint8Array(await readExact(ctx.volume, d.blockBitmap * bs, bs, 'block bitmap'));
          const used: Array<[number, number]> = [];
          bitmapRuns(bm, g.last - g.first + 1, (a, b) => used.push([first + a, first + b - 1]));
          assert.deepEqual(used, complement(g.freeBlockRanges, g.first, g.last), `group ${g.index} blocks`);
          bitmapsRead++;
        }
        if (!(d.flags & BG.INODE_UNINIT)) {
          const bm = new Uint8Array(await readExact(ctx.volume, d.inodeBitmap * bs, bs, 'inode bitmap'));
          const used: Array<[number, number]> = [];
          const ino0 = g.index * sb.inodesPerGroup + 1;
          bitmapRuns(bm, sb.inodesPerGroup, (a, b) => used.push([ino0 + a, ino0 + b - 1]));
          const last = ino0 + sb.inodesPerGroup - 1;
          assert.deepEqual(used, complement(g.freeInodeRanges, ino0, last), `group ${g.index} inodes`);
        }
      }
      assert.ok(bitmapsRead > 0);
      // allocation(): every block dumpe2fs does not count free (no bigalloc here: clusters are blocks)
      const ranges = await allocation(ctx);
      const allocated = ranges.reduce((s, r) => s + r.length, 0);
      const total = Number(header.get('Block count'));
      const free = Number(header.get('Free blocks'));
      assert.equal(allocated / bs, total - free);
    } finally {
      await close();
    }
  });
}

test('bitmapRuns: runs across byte edges, whole bytes and a short last byte', () => {
  // bits 0-2, 7-16, 20-23 set; 24 bits counted of a 4-byte bitmap whose last byte is all ones
  const bm = new Uint8Array([0b10000111, 0xff, 0b11110001, 0xff]);
  const runs: Array<[number, number]> = [];
  bitmapRuns(bm, 24, (a, b) => runs.push([a, b]));
  assert.deepEqual(runs, [
    [0, 3],
    [7, 17],
    [20, 24],
  ]);
  const short: Array<[number, number]> = [];
  bitmapRuns(bm, 21, (a, b) => short.push([a, b]));
  assert.deepEqual(short, [
    [0, 3],
    [7, 17],
    [20, 21],
  ]);
});
