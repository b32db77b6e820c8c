import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeInode, GOOD_OLD_INODE_SIZE, INODE, InodeTable, inodeChecksum } from '../../../src/fs/ext/inode.js';
import { readExact } from '../../../src/io/byte-source.js';
import { debugfs, debugfsStat, inodeOf, openContext, STRUCT_IMAGES, structImage } from '../../helpers/ext-structs.js';

const PATHS = [
  '/',
  '/small.txt',
  '/file300k',
  '/frag/fragmented',
  '/big',
  '/fast-link',
  '/slow-link',
  '/a/b/c/deep.txt',
];
/** debugfs's names of the file types. */
const TYPES: Record<string, string> = {
  regular: 'file',
  directory: 'dir',
  symlink: 'symlink',
  FIFO: 'fifo',
  socket: 'socket',
  character: 'char',
  block: 'block',
};

/** `debugfs -R 'imap <INO>'`: the block and byte offset of the on-disk inode. */
async function imap(image: string, ino: number, blockSize: number): Promise<number> {
  const out = await debugfs(image, `imap <${ino}>`);
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`debugfs imap <${ino}>: ${out}`);
  return Number(m[1]) * blockSize + Number.parseInt(m[2], 16);
}

for (const spec of STRUCT_IMAGES) {
  test(`inodes of ${spec.name}: location, fields and checksum as debugfs imap and stat give them`, async () => {
    const image = await structImage(spec);
    const { ctx, close } = await openContext(image);
    try {
      const sb = ctx.sb;
      const table = new InodeTable(ctx);
      const inos = [7, 8, 11];
      for (const p of PATHS) inos.push(await inodeOf(image, p));
      let checked = 0;
      for (const ino of inos) {
        const st = await debugfsStat(image, ino).catch(() => undefined);
        if (!st || (st.links === 0 && st.mode === 0)) continue; // an unused reserved inode
        const at = await imap(image, ino, sb.blockSize);
        assert.equal(table.inodeAt(ino), at, `inode ${ino} location`);
        const raw = new Uint8Array(await readExact(ctx.volume, at, sb.inodeSize, 'inode'));
        const n = decodeInode(ctx, ino, raw, at);
        const what = `inode ${ino}`;
        assert.equal(n.pub.type, TYPES[st.type] ?? st.type, what);
        assert.equal(n.pub.mode, st.mode, what);
        assert.equal(n.flags, st.flags, what);
        assert.equal(n.generation, st.generation, what);
        assert.equal(n.pub.uid, st.uid, what);
        assert.equal(n.pub.gid, st.gid, what);
        assert.equal(n.size, st.size, what);
        assert.equal(n.fileAcl, st.fileAcl, what);
        assert.equal(n.links, st.links, what);
        assert.equal(n.blocks512, st.blockcount, what);
        for (const [ours, theirs] of [
          [n.pub.ctime, st.ctime],
          [n.pub.atime, st.atime],
          [n.pub.mtime, st.mtime],
          [n.pub.crtime, st.crtime],
        ] as const) {
          if (!theirs) {
            assert.equal(ours, undefined, what);
            continue;
          }
          // seconds are signed 32-bit, extended by the extra field's two epoch bits
          assert.deepEqual(ours, { sec: (theirs[0] | 0) + (theirs[1] & 3) * 2 ** 32, nsec: theirs[1] >>> 2 }, what);
        }
        assert.equal(n.extraIsize, st.extraIsize ?? 0, what);
        if (st.checksum !== undefined) {
          const hasHi = n.extraIsize >= INODE.checksumHi + 2 - GOOD_OLD_INODE_SIZE;
          assert.equal(inodeChecksum(ctx.csumSeed, ino, raw, n.generation, hasHi), st.checksum, `${what} checksum`);
        }
        // the table's cached path decodes the same inode the same way
        assert.deepEqual((await table.node(ino)).pub, n.pub, what);
        checked++;
      }
      assert.ok(checked >= PATHS.length + 1, `${checked} inodes checked`);
      assert.deepEqual(ctx.warnings, [], 'every checksum verifies');
    } finally {
      await close();
    }
  });
}

test('inode checksum: one changed byte gives exactly one warning naming the inode', async () => {
  const image = await structImage(STRUCT_IMAGES[0]);
  const { ctx, close } = await openContext(image);
  try {
    const ino = await inodeOf(image, '/small.txt');
    const st = await debugfsStat(image, ino);
    assert.ok(st.checksum !== undefined, 'a metadata_csum image');
    const at = new InodeTable(ctx).inodeAt(ino);
    const raw = new Uint8Array(await readExact(ctx.volume, at, ctx.sb.inodeSize, 'inode'));
    decodeInode(ctx, ino, new Uint8Array(raw), at);
    assert.deepEqual(ctx.warnings, []);
    raw[INODE.mtime] ^= 1;
    const n = decodeInode(ctx, ino, raw, at);
    assert.equal(n.pub.mtime?.sec, (st.mtime[0] ^ 1) | 0);
    assert.deepEqual(ctx.warnings, [`ext inode ${ino}: checksum mismatch (metadata_csum)`]);
  } finally {
    await close();
  }
});
