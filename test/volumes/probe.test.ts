import assert from 'node:assert/strict';
import { test } from 'node:test';
import { probeContent } from '../../src/fs/probe.js';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { discoverVolumes } from '../../src/volumes/discover.js';
import { findVolume } from '../../src/volumes/select.js';
import { blkidType, fsImage } from '../helpers/volume-images.js';

/**
 * Each kind is made by its own mkfs (e2fsprogs, xfsprogs, btrfs-progs, dosfstools, util-linux
 * mkswap, ntfs-3g mkntfs, genisoimage, cryptsetup luksFormat) on a plain file; blkid -p is the oracle for the name.
 */
const KINDS = ['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'fat12', 'fat16', 'fat32', 'swap', 'ntfs', 'iso9660', 'luks'];

for (const kind of KINDS) {
  test(`whole-disk ${kind}: probeContent agrees with blkid -p, discover gives one volume ""`, async () => {
    const file = await fsImage(kind);
    const expected = await blkidType(file);
    assert.ok(expected, `blkid recognizes the ${kind} image`);
    const src = await FileSource.open(file);
    try {
      assert.equal(await probeContent(src), expected);
      const r = await discoverVolumes(src);
      assert.equal(r.scheme, 'whole');
      assert.equal(r.volumes.length, 1);
      const [v] = r.volumes;
      assert.equal(v.id, '');
      assert.equal(v.scheme, 'whole');
      assert.equal(v.content, expected);
      assert.equal(v.size, src.size);
      assert.equal(findVolume(r.volumes, {}), v);
    } finally {
      await src.close();
    }
  });
}

test('probeContent: nothing known in zeros, tiny or random data', async () => {
  assert.equal(await probeContent(new MemorySource(new Uint8Array(0))), undefined);
  assert.equal(await probeContent(new MemorySource(new Uint8Array(700))), undefined);
  const junk = new Uint8Array(200_000);
  let x = 12345;
  for (let i = 0; i < junk.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    junk[i] = x >>> 24;
  }
  assert.equal(await probeContent(new MemorySource(junk)), undefined);
});
