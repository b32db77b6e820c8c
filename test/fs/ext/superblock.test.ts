import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inodeTableBlocks } from '../../../src/fs/ext/context.js';
import {
  featureNames,
  formatUuid,
  groupHasSuper,
  parseSuperblock,
  SB,
  SB_OFFSET,
  SB_SIZE,
} from '../../../src/fs/ext/superblock.js';
import { readExact } from '../../../src/io/byte-source.js';
import { FileSource } from '../../../src/io/file-source.js';
import { crc32cRaw } from '../../../src/util/crc32c.js';
import { StrataError } from '../../../src/util/errors.js';
import { dumpe2fs, STRUCT_IMAGES, structImage } from '../../helpers/ext-structs.js';

async function rawSuperblock(image: string): Promise<Uint8Array> {
  const src = await FileSource.open(image);
  try {
    return new Uint8Array(await readExact(src, SB_OFFSET, SB_SIZE, 'ext superblock'));
  } finally {
    await src.close();
  }
}

const HASH_NAMES = ['legacy', 'half_md4', 'tea', 'legacy_unsigned', 'half_md4_unsigned', 'tea_unsigned'];

for (const spec of STRUCT_IMAGES) {
  test(`superblock of ${spec.name}: every field we decode is what dumpe2fs -h prints`, async () => {
    const image = await structImage(spec);
    const raw = await rawSuperblock(image);
    const sb = parseSuperblock(raw, image, SB_OFFSET);
    const { header: h, groups } = await dumpe2fs(image);
    const n = (k: string) => {
      const v = h.get(k);
      assert.ok(v !== undefined, `dumpe2fs prints no '${k}'`);
      return Number(v.split(' ')[0]);
    };
    assert.equal(sb.magic, Number(h.get('Filesystem magic number')));
    assert.equal(sb.revLevel, n('Filesystem revision #'));
    assert.equal(sb.inodesCount, n('Inode count'));
    assert.equal(sb.blocksCount, n('Block count'));
    assert.equal(sb.rBlocksCount, n('Reserved block count'));
    assert.equal(sb.freeBlocksCount, n('Free blocks'));
    assert.equal(sb.freeInodesCount, n('Free inodes'));
    assert.equal(sb.firstDataBlock, n('First block'));
    assert.equal(sb.blockSize, n('Block size'));
    assert.equal(sb.clusterSize, n(h.has('Cluster size') ? 'Cluster size' : 'Fragment size'));
    assert.equal(sb.blocksPerGroup, n('Blocks per group'));
    assert.equal(sb.inodesPerGroup, n('Inodes per group'));
    assert.equal(inodeTableBlocks(sb), n('Inode blocks per group'));
    assert.equal(sb.inodeSize, n('Inode size'));
    assert.equal(sb.firstIno, n('First inode'));
    assert.equal(sb.mntCount, n('Mount count'));
    assert.equal(sb.maxMntCount, n('Maximum mount count'));
    assert.equal(formatUuid(sb.uuid), h.get('Filesystem UUID'));
    assert.equal(sb.volumeName || '<none>', h.get('Filesystem volume name'));
    assert.equal(featureNames(sb.compat, sb.incompat, sb.roCompat).join(' '), h.get('Filesystem features'));
    assert.equal(HASH_NAMES[sb.defHashVersion], h.get('Default directory hash'));
    // printed only where the feature is on
    assert.equal(sb.descSize, h.has('Group descriptor size') ? n('Group descriptor size') : 32);
    assert.equal(sb.reservedGdtBlocks, h.has('Reserved GDT blocks') ? n('Reserved GDT blocks') : 0);
    if (h.has('Journal inode')) assert.equal(sb.journalInum, n('Journal inode'));
    if (h.has('Flex block group size')) assert.equal(2 ** sb.logGroupsPerFlex, n('Flex block group size'));
    if (h.has('Required extra isize')) assert.equal(sb.minExtraIsize, n('Required extra isize'));
    if (h.has('Desired extra isize')) assert.equal(sb.wantExtraIsize, n('Desired extra isize'));
    if (h.has('Checksum')) {
      // metadata_csum: s_checksum, and the crc32c of the bytes before it
      assert.equal(h.get('Checksum type'), 'crc32c');
      assert.equal(sb.checksumType, 1);
      assert.equal(sb.checksum, Number(h.get('Checksum')));
      assert.equal(crc32cRaw(0xffffffff, raw.subarray(0, SB.checksum)), sb.checksum);
    } else {
      assert.ok(!/metadata_csum/.test(h.get('Filesystem features') ?? ''));
    }
    // the backups: dumpe2fs names the groups holding a superblock copy
    assert.ok(groups.length > 0);
    for (const g of groups) {
      assert.equal(groupHasSuper(sb, g.index), g.superblock !== undefined, `group ${g.index}`);
      if (g.superblock) assert.equal(g.superblock.at, g.first);
    }
  });
}

test('superblock: a changed magic, block size or inode size is CORRUPT at that field', async () => {
  const raw = await rawSuperblock(await structImage(STRUCT_IMAGES[0]));
  const cases: Array<[number, (v: DataView) => void]> = [
    [SB.magic, (v) => v.setUint16(SB.magic, 0x1234, true)],
    [SB.logBlockSize, (v) => v.setUint32(SB.logBlockSize, 9, true)],
    [SB.inodeSize, (v) => v.setUint16(SB.inodeSize, 200, true)],
    [SB.inodesPerGroup, (v) => v.setUint32(SB.inodesPerGroup, 0, true)],
  ];
  for (const [field, change] of cases) {
    const copy = new Uint8Array(raw);
    change(new DataView(copy.buffer));
    assert.throws(
      () => parseSuperblock(copy, 'x.img', SB_OFFSET),
      (e: unknown) => e instanceof StrataError && e.code === 'CORRUPT' && e.offset === SB_OFFSET + field,
      `field at 0x${field.toString(16)}`,
    );
  }
});
