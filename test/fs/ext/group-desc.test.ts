import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { inodeTableBlocks } from '../../../src/fs/ext/context.js';
import {
  BG,
  decodeGroupDesc,
  descBlock,
  descOffset,
  descPerBlock,
  groupDescChecksum,
} from '../../../src/fs/ext/group-desc.js';
import { readExact } from '../../../src/io/byte-source.js';
import { dumpe2fs, openContext, STRUCT_IMAGES, structImage } from '../../helpers/ext-structs.js';
import { run } from '../../helpers/tools.js';

const FLAG_NAMES: Array<[number, string]> = [
  [BG.INODE_UNINIT, 'INODE_UNINIT'],
  [BG.BLOCK_UNINIT, 'BLOCK_UNINIT'],
  [BG.INODE_ZEROED, 'ITABLE_ZEROED'],
];

/** `dumpe2fs -g`: group:block:super:gdt:bbitmap:ibitmap:itable per group (fast, no bitmaps read). */
async function dumpe2fsG(image: string): Promise<Array<{ bbitmap: number; ibitmap: number; itable: number }>> {
  const out = await run('dumpe2fs', ['-g', image]);
  const rows = [];
  for (const line of out.split('\n')) {
    const f = line.split(':');
    if (f.length !== 7 || !/^\d+$/.test(f[0])) continue;
    rows[Number(f[0])] = { bbitmap: Number(f[4]), ibitmap: Number(f[5]), itable: Number(f[6]) };
  }
  return rows;
}

for (const spec of STRUCT_IMAGES) {
  test(`group descriptors of ${spec.name}: decoded from the raw table as dumpe2fs prints them`, async () => {
    const image = await structImage(spec);
    const { ctx, close } = await openContext(image);
    try {
      const sb = ctx.sb;
      const { header, groups } = await dumpe2fs(image);
      assert.equal(ctx.groupCount, groups.length);
      assert.equal(sb.descSize, spec.args.includes('64bit,metadata_csum') ? 64 : 32);
      // where the table lies: group 0's "Group descriptors at X-Y"
      const gdtBlocks = Math.ceil(ctx.groupCount / descPerBlock(sb));
      assert.deepEqual([descBlock(sb, 0), descBlock(sb, gdtBlocks - 1)], groups[0].gdt);
      const csum = /metadata_csum/.test(header.get('Filesystem features') ?? '');
      for (const g of groups) {
        // decode this descriptor from its own bytes (descOffset), not from the table read at open
        const at = descOffset(sb, g.index);
        const buf = await readExact(ctx.volume, at, sb.descSize, 'gd');
        const d = decodeGroupDesc(new DataView(buf.buffer, buf.byteOffset, buf.byteLength), 0, sb.descSize);
        assert.deepEqual(d, ctx.groups[g.index]);
        const what = `group ${g.index}`;
        assert.equal(d.blockBitmap, g.blockBitmap, what);
        assert.equal(d.inodeBitmap, g.inodeBitmap, what);
        assert.deepEqual([d.inodeTable, d.inodeTable + inodeTableBlocks(sb) - 1], g.inodeTable, what);
        assert.equal(d.freeBlocks, g.freeBlocks, what);
        assert.equal(d.freeInodes, g.freeInodes, what);
        assert.equal(d.usedDirs, g.directories, what);
        if (g.unusedInodes !== undefined) assert.equal(d.itableUnused, g.unusedInodes, what);
        if (g.csum !== undefined) {
          // dumpe2fs prints bg_flags (and the checksum) only where descriptors are checksummed
          const names = FLAG_NAMES.filter(([bit]) => d.flags & bit).map(([, name]) => name);
          assert.deepEqual(names, g.flags, `${what} flags`);
          assert.equal(d.checksum, g.csum, what);
        }
        if (csum) assert.equal(groupDescChecksum(ctx.csumSeed, g.index, buf, 0, sb.descSize), d.checksum, what);
      }
      assert.deepEqual(ctx.warnings, []);
    } finally {
      await close();
    }
  });
}

test('group descriptors: a changed byte of a checksummed descriptor gives a different checksum', async () => {
  const { ctx, close } = await openContext(await structImage(STRUCT_IMAGES[0]));
  try {
    const sb = ctx.sb;
    const buf = new Uint8Array(await readExact(ctx.volume, descOffset(sb, 0), sb.descSize, 'gd'));
    const good = groupDescChecksum(ctx.csumSeed, 0, buf, 0, sb.descSize);
    assert.equal(good, ctx.groups[0].checksum);
    buf[0x0e] ^= 1; // free inodes count
    assert.notEqual(groupDescChecksum(ctx.csumSeed, 0, buf, 0, sb.descSize), good);
    assert.notEqual(groupDescChecksum(ctx.csumSeed, 1, buf, 0, sb.descSize), good);
  } finally {
    await close();
  }
});

/**
 * 64-bit descriptors with non-zero high halves need block numbers past 2^32: a sparse
 * 16 TiB + 1 GiB file with 4 KiB blocks (only on tmpfs: ext4 hosts cap files at 16 TiB).
 * Made per run (~1 s, ~250 MB of tmpfs) and removed: too big for the fixture cache.
 */
test('64-bit group descriptors past block 2^32: high halves match dumpe2fs -g for all 131080 groups, counts dumpe2fs -h', async () => {
  const dir = mkdtempSync('/dev/shm/strata-ext64-');
  const image = path.join(dir, 'big64.img');
  try {
    writeFileSync(image, '');
    truncateSync(image, 2 ** 32 * 4096 + 2 ** 30);
    const mk = spawnSync(
      'mkfs.ext4',
      ['-q', '-F', '-b', '4096', '-O', '64bit,metadata_csum,^has_journal,^resize_inode', '-N', '65536', image],
      { encoding: 'utf8' },
    );
    assert.equal(mk.status, 0, mk.stderr);
    const { ctx, close } = await openContext(image);
    try {
      const rows = await dumpe2fsG(image);
      assert.equal(rows.length, ctx.groupCount);
      // the superblock's 64-bit counts too
      const h = await run('dumpe2fs', ['-h', image]);
      const field = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(h)?.[1]);
      assert.ok(ctx.sb.blocksCount > 2 ** 32);
      assert.equal(ctx.sb.blocksCount, field('Block count'));
      assert.equal(ctx.sb.freeBlocksCount, field('Free blocks'));
      assert.equal(ctx.sb.rBlocksCount, field('Reserved block count'));
      let past = 0;
      for (let g = 0; g < rows.length; g++) {
        const d = ctx.groups[g];
        const r = rows[g];
        if (d.blockBitmap !== r.bbitmap || d.inodeBitmap !== r.ibitmap || d.inodeTable !== r.itable) {
          assert.fail(`group ${g}: ours ${JSON.stringify(d)}, dumpe2fs -g ${JSON.stringify(r)}`);
        }
        if (r.bbitmap >= 2 ** 32) past++;
      }
      assert.ok(past >= 8, `${past} groups have their block bitmap past 2^32`);
      assert.deepEqual(ctx.warnings, [], 'every descriptor checksum verifies');
    } finally {
      await close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
