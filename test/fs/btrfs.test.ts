import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { BtrfsFileSystem, openBtrfs } from '../../src/fs/btrfs/index.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileExtent, FileSystem, Inode } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { FileSource } from '../../src/io/file-source.js';
import { btrfsDefaultSubvolImage, btrfsImage, compressible } from '../helpers/btrfs-image.js';
import { BIG_DIR_ENTRIES, BIG_SPARSE_PIECES, BIG_SPARSE_SIZE, bytesOf, kernelViewCached } from '../helpers/ext-tree.js';
import { run, unmount } from '../helpers/tools.js';

const MiB = 1 << 20;
const SLOT = 2 ** 36;
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const ns = (t: { sec: number; nsec: number } | undefined) => (t ? BigInt(t.sec) * 1_000_000_000n + BigInt(t.nsec) : 0n);

async function ourTree(fs: FileSystem): Promise<Map<string, { inode: Inode; entryType: string }>> {
  const out = new Map<string, { inode: Inode; entryType: string }>();
  const root = await fs.root();
  out.set('/', { inode: root, entryType: 'dir' });
  for await (const it of walk(fs, root, '/')) {
    assert.ok(!out.has(it.path), `walk yielded ${it.path} twice`);
    out.set(it.path, { inode: it.inode, entryType: it.entry.type });
  }
  return out;
}

async function sha256Of(fs: FileSystem, f: Inode): Promise<string> {
  const h = createHash('sha256');
  for (let o = 0; o < f.size; o += 8 * MiB) h.update(await fs.read(f, o, Math.min(8 * MiB, f.size - o)));
  return h.digest('hex');
}

/** The chunk map as `btrfs inspect-internal dump-tree -t chunk` prints it: logical -> stripes. */
async function dumpChunks(img: string): Promise<Array<{ logical: number; length: number; stripes: number[] }>> {
  const text = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'chunk', img]);
  const out: Array<{ logical: number; length: number; stripes: number[] }> = [];
  const re =
    /key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)[^\n]*\n\s*length (\d+)[\s\S]*?num_stripes (\d+)[^\n]*\n((?:\s*stripe \d+ devid \d+ offset \d+\n\s*dev_uuid [^\n]*\n)+)/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const stripes = [...m[4].matchAll(/offset (\d+)/g)].map((x) => Number(x[1]));
    assert.equal(stripes.length, Number(m[3]));
    out.push({ logical: Number(m[1]), length: Number(m[2]), stripes });
  }
  assert.ok(out.length >= 3, 'dump-tree lists chunks');
  return out;
}

function physOf(chunks: Awaited<ReturnType<typeof dumpChunks>>, logical: number): number[] {
  const c = chunks.find((x) => logical >= x.logical && logical < x.logical + x.length);
  assert.ok(c, `logical ${logical} in a chunk`);
  return c.stripes.map((s) => s + logical - c.logical);
}

/** `filefrag -v` extents: [file block, logical block, length, flags]. */
async function filefrag(path: string): Promise<Array<{ lblk: number; pblk: number; len: number; flags: string }>> {
  const text = await run('filefrag', ['-v', '-b4096', path]);
  const out: Array<{ lblk: number; pblk: number; len: number; flags: string }> = [];
  for (const line of text.split('\n')) {
    const m = /^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*(\d+):\s+(\d+):\s*(?:\d+:)?\s*(\S*)$/.exec(line);
    if (m) out.push({ lblk: Number(m[1]), pblk: Number(m[3]), len: Number(m[5]), flags: m[6] });
  }
  return out;
}

test('btrfs: mkfs --rootdir tree plus kernel-made subvolumes, snapshots, compression, reflinks', async (t) => {
  const img = await btrfsImage();
  const kernel = await kernelViewCached(img);
  const fs = await openFileSystem(await FileSource.open(img));
  assert.ok(fs instanceof BtrfsFileSystem);
  const ours = await ourTree(fs);

  await t.test('info matches btrfs inspect-internal dump-super', async () => {
    const info = await fs.info();
    const sup = await run('btrfs', ['inspect-internal', 'dump-super', img]);
    const field = (n: string) => new RegExp(`^${n}\\s+(.*)$`, 'm').exec(sup)?.[1].trim();
    assert.equal(info.kind, 'btrfs');
    assert.equal(info.uuid, field('fsid'));
    assert.equal(info.blockSize, Number(field('sectorsize')));
    assert.equal(info.totalBytes, Number(field('total_bytes')));
    assert.equal(info.extra?.nodeSize, Number(field('nodesize')));
    assert.equal(info.extra?.generation, Number(field('generation')));
    assert.equal(info.extra?.checksum, /\((\w+)\)/.exec(field('csum_type') ?? '')?.[1]);
    const subs = info.extra?.subvolumes as Array<{ id: number; path: string; parentUuid?: string }>;
    const paths = subs.map((s) => s.path).sort();
    assert.deepEqual(paths, ['/', '@home', '@home/nested', 'data', 'data-snap']);
    const snap = subs.find((s) => s.path === 'data-snap');
    const data = subs.find((s) => s.path === 'data') as { uuid?: string };
    assert.equal(snap?.parentUuid, data.uuid, 'the snapshot names its source');
    assert.equal(info.extra?.defaultSubvolume, 5);
    const profiles = info.extra?.profiles as Record<string, string> | undefined;
    assert.equal(profiles?.metadata, 'dup', 'DUP metadata on one device');
    assert.equal(profiles?.data, 'single');
  });

  await t.test('the whole tree matches the kernel: names, types, stat fields, targets, xattrs, content', async () => {
    assert.deepEqual([...ours.keys()].sort(), [...kernel.keys()].sort());
    const mine: string[] = [];
    const theirs: string[] = [];
    let hashed = 0;
    for (const [p, k] of kernel) {
      const o = ours.get(p)!;
      const i = o.inode;
      const xa = await fs.xattrs(i);
      const mineX = [...xa].map(([n, v]) => `${n}=${hex(v)}`).sort();
      const theirX = Object.entries(k.xattrs ?? {})
        .map(([n, v]) => `${n}=${v}`)
        .sort();
      mine.push(
        JSON.stringify([
          p,
          i.type,
          p === '/' ? i.type : o.entryType,
          i.mode.toString(8),
          i.uid,
          i.gid,
          i.size,
          i.nlink,
          i.ino % SLOT,
          String(ns(i.mtime)),
          String(ns(i.atime)),
          String(ns(i.ctime)),
          String(ns(i.crtime)),
          i.allocatedBytes,
          k.rdev ? i.rdev : undefined,
          k.target !== undefined ? await fs.readlink(i) : undefined,
          k.sha256 !== undefined ? await sha256Of(fs, i) : undefined,
          mineX,
        ]),
      );
      theirs.push(
        JSON.stringify([
          p,
          k.type,
          k.type,
          k.mode.toString(8),
          k.uid,
          k.gid,
          k.size,
          k.nlink,
          k.ino,
          String(k.mtimeNs),
          String(k.atimeNs),
          String(k.ctimeNs),
          String(k.birthNs),
          k.allocated,
          k.rdev,
          k.target,
          k.sha256,
          theirX,
        ]),
      );
      if (k.sha256 !== undefined) hashed++;
    }
    assert.deepEqual(mine, theirs);
    assert.ok(hashed > 100);
    assert.equal([...ours.keys()].filter((p) => p.startsWith('/big/')).length, BIG_DIR_ENTRIES + 1);
    assert.ok(
      ours.has('/@home/nested/deep-file') && ours.has('/data-snap/payload') && !ours.has('/data-snap/after-snapshot'),
    );
  });

  await t.test('no warnings on a clean image (crc32c of every tree block verifies)', () => {
    assert.deepEqual(fs.warnings, []);
  });

  await t.test('lookupChild (name hash) agrees with readdir', async () => {
    const big = await fs.lookup('/big');
    const names = (await fs.readdirAll!(big)).slice(0, 200);
    for (const e of names) assert.deepEqual(await fs.lookupChild!(big, e.name), e);
    assert.equal(await fs.lookupChild!(big, 'no-such-entry'), undefined);
  });

  await t.test('the > 4 GiB sparse file reads its pieces and zeros', async () => {
    const f = await fs.lookup('/sparse/big-over-4g');
    assert.equal(f.size, BIG_SPARSE_SIZE);
    for (const [at, len] of BIG_SPARSE_PIECES) {
      assert.equal(hex(await fs.read(f, at, len)), hex(bytesOf(`big-${at}`, len)), `piece at ${at}`);
    }
    assert.ok((await fs.read(f, 3 * 2 ** 30, MiB)).every((x) => x === 0));
  });

  await t.test('compressed files decode and are reported as encoded extents', async () => {
    for (const alg of ['zstd', 'zlib', 'lzo']) {
      const f = await fs.lookup(`/compress-${alg}/text`);
      assert.equal(hex(await fs.read(f, 0, f.size)), hex(compressible(alg, 3 * MiB + 777)));
      const ex: FileExtent[] = [];
      for await (const e of fs.extents(f)) ex.push(e);
      assert.ok(ex.length >= 24, `${alg}: 128 KiB compressed extents`);
      // the 777-byte tail does not shrink, so the kernel stores it plain (filefrag agrees, below)
      for (const e of ex.slice(0, -1))
        assert.ok(e.encoded === alg && (e.diskLength ?? Infinity) <= e.length, `${alg}: ${JSON.stringify(e)}`);
      const disk = ex.reduce((a, e) => a + (e.diskLength ?? 0), 0);
      assert.ok(disk * 4 < f.size, `${alg}: ${disk} disk bytes for ${f.size}`);
      const s = await fs.lookup(`/compress-${alg}/small`);
      assert.equal(hex(await fs.read(s, 0, s.size)), hex(compressible(`${alg}-small`, 2000)));
    }
  });

  await t.test('extents match filefrag -v through the dump-tree chunk map; reflinks are shared', async () => {
    const chunks = await dumpChunks(img);
    const mnt = `/tmp/strata-btrfs-ff-${process.pid}`;
    await run('mkdir', ['-p', mnt]);
    await run('mount', ['-o', 'ro,loop', img, mnt]);
    try {
      const paths = [
        '/files/size-1500000',
        '/reflinked',
        '/sparse/holes',
        '/sparse/fragmented',
        '/prealloc',
        '/compress-zstd/text',
        '/compress-zlib/text',
        '/compress-lzo/text',
        '/compress-zstd/random',
        '/data/payload',
        '/data-snap/payload',
        '/@home/user/notes',
      ];
      for (const p of paths) {
        const f = await fs.lookup(p);
        const ex: FileExtent[] = [];
        for await (const e of fs.extents(f)) ex.push(e);
        const ff = await filefrag(mnt + p);
        assert.ok(ff.length > 0, `${p}: filefrag lists extents`);
        // filefrag merges extents contiguous in btrfs's logical space; where such a run crosses
        // into the next chunk it continues elsewhere on the device, so cut it there
        const want = ff.flatMap((e) => {
          const pieces: Array<{
            fileOffset: number;
            volumeOffset: number;
            encoded: boolean;
            unwritten: boolean;
            shared: boolean;
          }> = [];
          for (let at = 0; at < e.len * 4096; ) {
            const logical = e.pblk * 4096 + at;
            const c = chunks.find((x) => logical >= x.logical && logical < x.logical + x.length);
            const volumeOffset = physOf(chunks, logical)[0];
            const last = pieces[pieces.length - 1];
            if (!last || last.volumeOffset + at - (last.fileOffset - e.lblk * 4096) !== volumeOffset)
              pieces.push({
                fileOffset: e.lblk * 4096 + at,
                volumeOffset,
                encoded: e.flags.includes('encoded'),
                unwritten: e.flags.includes('unwritten'),
                shared: e.flags.includes('shared'),
              });
            if (!c) break;
            at = c.logical + c.length - e.pblk * 4096;
          }
          return pieces;
        });
        // filefrag merges physically contiguous plain extents; split ours the same way
        const got: typeof want = [];
        for (const e of ex) {
          const last = got[got.length - 1];
          const prev = ex[ex.indexOf(e) - 1];
          const contiguous =
            last &&
            prev &&
            !e.encoded &&
            !last.encoded &&
            prev.fileOffset + prev.length === e.fileOffset &&
            prev.volumeOffset + prev.length === e.volumeOffset &&
            !!prev.unwritten === !!e.unwritten &&
            !!prev.shared === !!e.shared;
          if (contiguous) continue;
          got.push({
            fileOffset: e.fileOffset,
            volumeOffset: e.volumeOffset,
            encoded: !!e.encoded,
            unwritten: !!e.unwritten,
            shared: !!e.shared,
          });
        }
        assert.deepEqual(got, want, p);
      }
      const r = await fs.lookup('/reflinked');
      const all: FileExtent[] = [];
      for await (const e of fs.extents(r)) {
        assert.ok(e.shared, 'reflinked extents are shared');
        all.push(e);
      }
      // a caller that does not want `shared` (extract, check-in) gets the same ranges without it
      const lean: FileExtent[] = [];
      for await (const e of fs.extents(r, { shared: false })) lean.push(e);
      assert.ok(lean.length > 0);
      assert.deepEqual(
        lean,
        all.map(({ shared: _, ...rest }) => rest),
      );
    } finally {
      await unmount(mnt);
    }
  });

  await t.test('allocation equals the extent tree (dump-tree -t extent) mapped through the chunk tree', async () => {
    const chunks = await dumpChunks(img);
    const text = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'extent', img]);
    const sup = await run('btrfs', ['inspect-internal', 'dump-super', img]);
    const nodesize = Number(/^nodesize\s+(\d+)/m.exec(sup)?.[1]);
    const rs: Array<[number, number]> = [];
    for (const m of text.matchAll(/key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)/g)) {
      const len = m[2] === 'EXTENT_ITEM' ? Number(m[3]) : nodesize;
      for (const p of physOf(chunks, Number(m[1]))) rs.push([p, p + len]);
    }
    for (const off of [0x10000, 0x4000000]) rs.push([off, off + 4096]);
    rs.sort((a, b) => a[0] - b[0]);
    const merged: Array<[number, number]> = [];
    for (const r of rs) {
      const l = merged[merged.length - 1];
      if (l && r[0] <= l[1]) l[1] = Math.max(l[1], r[1]);
      else merged.push([...r]);
    }
    const mine = (await fs.allocation()).map((r) => [r.offset, r.offset + r.length]);
    assert.deepEqual(mine, merged);
  });

  await t.test('metadata regions: superblocks and tree blocks of every tree, both DUP copies', async () => {
    const regions: Array<{ offset: number; length: number; kind: string; detail?: string }> = [];
    for await (const r of fs.metadataRegions()) regions.push(r);
    assert.ok(regions.some((r) => r.kind === 'superblock' && r.offset === 0x10000));
    for (const t of ['root tree', 'chunk tree', 'extent tree', 'csum tree', 'fs tree']) {
      assert.ok(
        regions.some((r) => r.detail === t),
        t,
      );
    }
    const alloc = await fs.allocation();
    for (const r of regions) {
      assert.ok(
        alloc.some((a) => r.offset >= a.offset && r.offset + r.length <= a.offset + a.length),
        `${r.detail} at ${r.offset} is allocated`,
      );
    }
  });
});

test('btrfs: the default subvolume (set-default) is used unless one is named', async () => {
  const img = await btrfsDefaultSubvolImage();
  const kernel = await kernelViewCached(img);
  const fs = await openBtrfs(await FileSource.open(img));
  const ours = await ourTree(fs);
  assert.deepEqual([...ours.keys()].sort(), [...kernel.keys()].sort());
  assert.ok(ours.has('/etc/fstab'));
  const top = await openBtrfs(await FileSource.open(img), { subvol: 5 });
  assert.ok((await ourTree(top)).has('/top-file'));
  const byName = await openBtrfs(await FileSource.open(img), { subvol: '@' });
  assert.ok((await ourTree(byName)).has('/etc/fstab'));
  await assert.rejects(openBtrfs(await FileSource.open(img), { subvol: 'nope' }), /no subvolume/);
});
