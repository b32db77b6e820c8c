import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { ExtFileSystem } from '../../src/fs/ext/index.js';
import { TYPE_OF_CODE } from '../../src/fs/name-listing.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { ByteRange, DirEntry, FileExtent, FileSystem, Inode, OwnedRange } from '../../src/fs/types.js';
import { resolvePath, walk } from '../../src/fs/walk.js';
import { FileSource } from '../../src/io/file-source.js';
import { StrataError } from '../../src/util/errors.js';
import {
  BIG_DIR_ENTRIES,
  BIG_SPARSE_PIECES,
  BIG_SPARSE_SIZE,
  bytesOf,
  type ExtImageSpec,
  extImage,
  FRAGMENTS,
  kernelViewCached,
} from '../helpers/ext-tree.js';
import { bothListings } from '../helpers/name-lines.js';
import { run } from '../helpers/tools.js';

const MiB = 1 << 20;
const N = ['-N', '30000'];

/** Every variant the brief names; each made by mkfs -d from the same tree, then populated by the kernel. */
const VARIANTS: ExtImageSpec[] = [
  { name: 'ext4-4k', mkfs: 'mkfs.ext4', args: ['-b', '4096', ...N], size: 160 * MiB },
  { name: 'ext4-1k', mkfs: 'mkfs.ext4', args: ['-b', '1024', ...N], size: 160 * MiB },
  { name: 'ext4-no64bit', mkfs: 'mkfs.ext4', args: ['-b', '4096', '-O', '^64bit', ...N], size: 160 * MiB },
  { name: 'ext4-inline', mkfs: 'mkfs.ext4', args: ['-b', '4096', '-O', 'inline_data', ...N], size: 160 * MiB },
  {
    name: 'ext4-metabg',
    mkfs: 'mkfs.ext4',
    args: ['-b', '1024', '-g', '2048', '-O', 'meta_bg,^resize_inode', ...N],
    size: 160 * MiB,
  },
  {
    name: 'ext4-bigalloc',
    mkfs: 'mkfs.ext4',
    args: ['-b', '4096', '-O', 'bigalloc', '-C', '16384', ...N],
    size: 192 * MiB,
  },
  {
    name: 'ext4-nojournal-ss2',
    mkfs: 'mkfs.ext4',
    args: ['-b', '4096', '-g', '8192', '-O', '^has_journal,sparse_super2', ...N],
    size: 160 * MiB,
  },
  { name: 'ext3', mkfs: 'mkfs.ext3', args: ['-b', '4096', ...N], size: 160 * MiB },
  { name: 'ext2-1k', mkfs: 'mkfs.ext2', args: ['-b', '1024', ...N], size: 160 * MiB },
];

interface Ours {
  inode: Inode;
  entryType: string;
}

async function ourTree(fs: FileSystem): Promise<Map<string, Ours>> {
  const out = new Map<string, Ours>();
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

const ns = (t: { sec: number; nsec: number } | undefined) => (t ? BigInt(t.sec) * 1_000_000_000n + BigInt(t.nsec) : 0n);

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/**
 * The data blocks of a file as `debugfs -R 'stat PATH'` lists them (EXTENTS: or BLOCKS:
 * section), one [logical, physical, unwritten] triple per block; tree and indirect blocks
 * ((ETB0), (IND) ...) are left out.
 */
async function debugfsMap(img: string, p: string): Promise<Array<[number, number, boolean]>> {
  const out = await run('debugfs', ['-R', `stat "${p}"`, img]);
  const m = /\n(?:EXTENTS|BLOCKS):\n([\s\S]*)$/.exec(out);
  const res: Array<[number, number, boolean]> = [];
  if (!m) return res;
  for (const part of m[1].split(/,\s*|\n/)) {
    const e = /^\((\d+)(?:-(\d+))?(\[u\])?\):(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!e) continue;
    const l0 = Number(e[1]);
    const l1 = e[2] ? Number(e[2]) : l0;
    for (let k = 0; k <= l1 - l0; k++) res.push([l0 + k, Number(e[4]) + k, !!e[3]]);
  }
  return res;
}

function extentMap(ex: FileExtent[], bs: number): Array<[number, number, boolean]> {
  const out: Array<[number, number, boolean]> = [];
  for (const e of ex) {
    assert.equal(e.volumeOffset % bs, 0);
    assert.equal(e.fileOffset % bs, 0);
    for (let b = 0; b < Math.ceil(e.length / bs); b++) {
      out.push([e.fileOffset / bs + b, e.volumeOffset / bs + b, !!e.unwritten]);
    }
  }
  return out;
}

interface DumpGroup {
  superblock?: number;
  gdt: Array<[number, number]>;
  reservedGdt?: [number, number];
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: [number, number];
  free: Array<[number, number]>;
}

/** Parse `dumpe2fs` group sections (the oracle for layout and free space). */
function parseDumpe2fs(text: string): { header: Map<string, string>; groups: DumpGroup[] } {
  const header = new Map<string, string>();
  const groups: DumpGroup[] = [];
  let g: DumpGroup | undefined;
  const range = (s: string): [number, number] => {
    const [a, b] = s.split('-').map(Number);
    return [a, b ?? a];
  };
  for (const line of text.split('\n')) {
    const m = /^Group (\d+): /.exec(line);
    if (m) {
      g = { gdt: [], blockBitmap: -1, inodeBitmap: -1, inodeTable: [-1, -1], free: [] };
      groups.push(g);
      continue;
    }
    if (!g) {
      const i = line.indexOf(':');
      if (i > 0) header.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
      continue;
    }
    let r: RegExpExecArray | null;
    if ((r = /(?:Primary|Backup) superblock at (\d+)/.exec(line))) g.superblock = Number(r[1]);
    if ((r = /Group descriptors? at ([\d-]+)/.exec(line))) g.gdt.push(range(r[1]));
    if ((r = /Reserved GDT blocks at ([\d-]+)/.exec(line))) g.reservedGdt = range(r[1]);
    if ((r = /Block bitmap at (\d+)/.exec(line))) g.blockBitmap = Number(r[1]);
    if ((r = /Inode bitmap at (\d+)/.exec(line))) g.inodeBitmap = Number(r[1]);
    if ((r = /Inode table at ([\d-]+)/.exec(line))) g.inodeTable = range(r[1]);
    if ((r = /^\s+Free blocks: (.*)$/.exec(line))) {
      for (const part of r[1].split(',')) if (part.trim()) g.free.push(range(part.trim()));
    }
  }
  return { header, groups };
}

function blocksOfRanges(rs: ByteRange[], bs: number): Array<[number, number]> {
  return rs.map((r) => [r.offset / bs, (r.offset + r.length) / bs - 1]);
}

for (const spec of VARIANTS) {
  test(`ext ${spec.name}: matches the kernel, debugfs and dumpe2fs`, async (t) => {
    const img = await extImage(spec);
    const kernel = await kernelViewCached(img);
    const src = await FileSource.open(img);
    const fs = await openFileSystem(src);
    assert.ok(fs instanceof ExtFileSystem);
    const bs = fs.blockSize;
    const dump = parseDumpe2fs(await run('dumpe2fs', [img]));
    try {
      await t.test('info matches dumpe2fs -h and blkid', async () => {
        const info = await fs.info();
        const blkid = (await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', img])).trim();
        assert.equal(info.kind, blkid);
        assert.equal(fs.kind, blkid);
        assert.deepEqual(info.features, dump.header.get('Filesystem features')?.split(/\s+/));
        assert.equal(info.uuid, dump.header.get('Filesystem UUID'));
        assert.equal(info.blockSize, Number(dump.header.get('Block size')));
        assert.equal(info.totalBytes, Number(dump.header.get('Block count')) * bs);
        assert.equal(info.freeBytes, Number(dump.header.get('Free blocks')) * bs);
        assert.equal(info.totalInodes, Number(dump.header.get('Inode count')));
        assert.equal(info.freeInodes, Number(dump.header.get('Free inodes')));
        assert.equal(info.extra?.state, dump.header.get('Filesystem state'));
        assert.equal(info.extra?.groups, dump.groups.length);
      });

      const ours = await ourTree(fs);
      await t.test('the batch forms (readdirAll, inodes) say what readdir and inode say', async () => {
        const ext = fs as ExtFileSystem;
        for (const o of ours.values()) {
          if (o.inode.type !== 'dir') continue;
          const one: DirEntry[] = [];
          for await (const e of ext.readdir(o.inode)) one.push(e);
          const all = await ext.readdirAll(o.inode);
          assert.deepEqual(all, one);
          const inos = all.map((e) => e.ino);
          assert.deepEqual(await ext.inodes(inos), await Promise.all(inos.map((n) => ext.inode(n))));
        }
        await assert.rejects(ext.inodes([2, 0x7fffffff]), (e: unknown) => e instanceof StrataError);
      });
      await t.test(
        'names as bytes (readdirNames, ls -R without -l) say what readdirAll and the object walk say',
        async () => {
          const ext = fs as ExtFileSystem;
          for (const o of ours.values()) {
            if (o.inode.type !== 'dir') continue;
            const all = await ext.readdirAll(o.inode);
            const l = await ext.readdirNames(o.inode);
            const names = Array.from({ length: l.count }, (_, i) =>
              Buffer.from(l.names.subarray(l.starts[i], l.starts[i + 1])).toString('utf8'),
            );
            assert.deepEqual(
              names,
              all.map((e) => e.name),
            );
            assert.deepEqual(
              [...l.inos],
              all.map((e) => e.ino),
            );
            assert.deepEqual(
              [...l.types].map((c) => TYPE_OF_CODE[c]),
              all.map((e) => e.type),
            );
          }
          const both = await bothListings(fs);
          assert.equal(both.text, both.expected);
          assert.deepEqual(both.linesWarned, both.pathsWarned);
          // the kernel's paths, in ls's order: pre-order, names in byte order at each level
          assert.deepEqual([...both.paths].sort(), [...kernel.keys()].filter((p) => p !== '/').sort());
          const sub = [...ours].find(([p, o]) => p !== '/' && o.inode.type === 'dir');
          if (sub) {
            const one = await bothListings(fs, sub[0], sub[1].inode, false);
            assert.equal(one.text, one.expected);
          }
        },
      );
      await t.test(
        'the whole tree matches the kernel: names, types, stat fields, targets, xattrs, content',
        async () => {
          assert.deepEqual([...ours.keys()].sort(), [...kernel.keys()].sort());
          // one line per path with every compared field, so a mismatch shows as a readable diff
          const mineLines: string[] = [];
          const theirLines: string[] = [];
          let hashed = 0;
          for (const [p, k] of kernel) {
            const o = ours.get(p)!;
            const i = o.inode;
            const xa = await fs.xattrs(i);
            const mineX = [...xa]
              .filter(([n]) => !n.startsWith('system.'))
              .map(([n, v]) => `${n}=${hex(v)}`)
              .sort();
            const theirX = Object.entries(k.xattrs ?? {})
              .filter(([n]) => !n.startsWith('system.'))
              .map(([n, v]) => `${n}=${v}`)
              .sort();
            const mtimeNs = BigInt(i.mtime!.sec) * 1_000_000_000n + BigInt(i.mtime!.nsec);
            mineLines.push(
              JSON.stringify([
                p,
                i.type,
                p === '/' ? i.type : o.entryType,
                i.mode.toString(8),
                i.uid,
                i.gid,
                i.size,
                i.nlink,
                i.ino,
                String(mtimeNs),
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
            theirLines.push(
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
          assert.deepEqual(mineLines, theirLines);
          assert.ok(hashed > 100, 'hashed the regular files');
          assert.ok(ours.has('/xattrs/large') && Object.keys(kernel.get('/xattrs/large')?.xattrs ?? {}).length >= 2);
          assert.equal(
            [...ours.keys()].filter((p) => p.startsWith('/big/')).length,
            BIG_DIR_ENTRIES + 1,
            'every entry of the big directory',
          );
        },
      );

      await t.test('no warnings on a clean image (checksums verify)', () => {
        assert.deepEqual(fs.warnings, []);
      });

      await t.test('the > 4 GiB sparse file reads its pieces and zeros', async () => {
        const f = await fs.lookup('/sparse/big-over-4g');
        assert.equal(f.size, BIG_SPARSE_SIZE);
        for (const [at, len] of BIG_SPARSE_PIECES) {
          assert.equal(hex(await fs.read(f, at, len)), hex(bytesOf(`big-${at}`, len)), `piece at ${at}`);
        }
        const mid = await fs.read(f, 3 * 2 ** 30, MiB);
        assert.ok(mid.every((x) => x === 0));
        const tail = await fs.read(f, BIG_SPARSE_SIZE - 10, 100);
        assert.equal(tail.length, 10);
      });

      await t.test('extents match debugfs blocks; unwritten extents read as zeros', async () => {
        for (const p of [
          '/files/size-1500000',
          '/sparse/holes',
          '/sparse/fragmented',
          '/sparse/big-over-4g',
          '/prealloc',
        ]) {
          const f = await fs.lookup(p);
          const ex: FileExtent[] = [];
          for await (const e of fs.extents(f)) ex.push(e);
          for (let i = 1; i < ex.length; i++) {
            assert.ok(ex[i].fileOffset >= ex[i - 1].fileOffset + ex[i - 1].length, `${p}: extents ordered`);
            const a = ex[i - 1];
            const b = ex[i];
            const mergeable =
              a.fileOffset + a.length === b.fileOffset &&
              a.volumeOffset + a.length === b.volumeOffset &&
              !!a.unwritten === !!b.unwritten;
            assert.ok(!mergeable, `${p}: contiguous extents are merged`);
          }
          const limit = Math.ceil(f.size / bs);
          const want = (await debugfsMap(img, p)).filter(([l]) => l < limit);
          assert.ok(want.length > 0 || p === '/sparse/big-over-4g' || f.size === 0, `${p}: debugfs lists blocks`);
          assert.deepEqual(extentMap(ex, bs), want, `${p}: blocks`);
          if (p === '/sparse/fragmented') assert.ok(ex.length >= FRAGMENTS / 2, 'fragmented has many extents');
        }
        const pre = await fs.lookup('/prealloc');
        const ex: FileExtent[] = [];
        for await (const e of fs.extents(pre)) ex.push(e);
        const ext2or3 = fs.kind !== 'ext4';
        if (!ext2or3)
          assert.ok(
            ex.some((e) => e.unwritten),
            'fallocate left unwritten extents',
          );
        const all = await fs.read(pre, 0, pre.size);
        assert.equal(all.length, 1 << 20);
        const want = Buffer.alloc(1 << 20);
        bytesOf('prealloc', 10000).copy(want, 300_000);
        assert.equal(hex(all), hex(want));
      });

      await t.test('allocation() is the complement of dumpe2fs free blocks', async () => {
        const alloc = await fs.allocation();
        const blocksCount = Number(dump.header.get('Block count'));
        // with bigalloc dumpe2fs prints each free cluster range as first block .. first block of the last cluster
        const ratio = Number(dump.header.get('Cluster size') ?? bs) / bs;
        const free = dump.groups
          .flatMap((g) => g.free)
          .map(([a, b]): [number, number] => [a, b + ratio - 1])
          .sort((a, b) => a[0] - b[0]);
        const freeCount = free.reduce((n, [a, b]) => n + b - a + 1, 0);
        assert.equal(freeCount, Number(dump.header.get('Free blocks')), 'free ranges add up to the header count');
        const used: Array<[number, number]> = [];
        let next = 0;
        for (const [a, b] of free) {
          if (a > next) used.push([next, a - 1]);
          next = b + 1;
        }
        if (next < blocksCount) used.push([next, blocksCount - 1]);
        assert.deepEqual(blocksOfRanges(alloc, bs), used);
      });

      await t.test('metadataRegions() match the dumpe2fs layout and lie inside allocation()', async () => {
        const regions: OwnedRange[] = [];
        for await (const r of fs.metadataRegions()) regions.push(r);
        const blocksOf = (kind: string) => {
          const s = new Set<number>();
          for (const r of regions.filter((x) => x.kind === kind)) {
            for (let b = Math.floor(r.offset / bs); b < Math.ceil((r.offset + r.length) / bs); b++) s.add(b);
          }
          return [...s].sort((a, b) => a - b);
        };
        const expand = (rs: Array<[number, number]>) => {
          const s = new Set<number>();
          for (const [a, b] of rs) for (let x = a; x <= b; x++) s.add(x);
          return [...s].sort((a, b) => a - b);
        };
        const g = dump.groups;
        assert.deepEqual(
          blocksOf('superblock'),
          expand(g.filter((x) => x.superblock !== undefined).map((x) => [x.superblock!, x.superblock!])),
        );
        assert.deepEqual(blocksOf('group-descriptors'), expand(g.flatMap((x) => x.gdt)));
        assert.deepEqual(blocksOf('reserved-gdt'), expand(g.flatMap((x) => (x.reservedGdt ? [x.reservedGdt] : []))));
        assert.deepEqual(blocksOf('block-bitmap'), expand(g.map((x) => [x.blockBitmap, x.blockBitmap])));
        assert.deepEqual(blocksOf('inode-bitmap'), expand(g.map((x) => [x.inodeBitmap, x.inodeBitmap])));
        assert.deepEqual(blocksOf('inode-table'), expand(g.map((x) => x.inodeTable)));
        const journal = blocksOf('journal');
        if (fs.kind !== 'ext2' && spec.name !== 'ext4-nojournal-ss2') {
          assert.deepEqual(
            journal,
            (await debugfsMap(img, '<8>')).map(([, ph]) => ph).sort((a, b) => a - b),
          );
        } else assert.deepEqual(journal, []);
        const bigDir = await fs.lookup('/big');
        const dirBlocks = regions.filter((r) => r.kind === 'directory' && r.ino === bigDir.ino);
        const want = (await debugfsMap(img, '/big')).map(([, ph]) => ph);
        assert.deepEqual(
          dirBlocks
            .flatMap((r) => Array.from({ length: r.length / bs }, (_, i) => r.offset / bs + i))
            .sort((a, b) => a - b),
          [...want].sort((a, b) => a - b),
        );
        if (fs.kind === 'ext4')
          assert.ok(
            regions.some((r) => r.kind === 'extent-tree'),
            'extent tree blocks listed',
          );
        else
          assert.ok(
            regions.some((r) => r.kind === 'indirect-block'),
            'indirect blocks listed',
          );
        // every metadata byte is allocated
        const alloc = await fs.allocation();
        const inside = (o: number, l: number) => {
          let lo = 0;
          let hi = alloc.length - 1;
          while (lo < hi) {
            const mid = (lo + hi + 1) >>> 1;
            if (alloc[mid].offset <= o) lo = mid;
            else hi = mid - 1;
          }
          const a = alloc[lo];
          return a !== undefined && a.offset <= o && o + l <= a.offset + a.length;
        };
        for (const r of regions) {
          if (r.kind === 'reserved') continue;
          assert.ok(inside(r.offset, r.length), `${r.kind} ${r.detail ?? ''} at ${r.offset}+${r.length} is allocated`);
        }
      });

      await t.test('inode flags match debugfs (htree on the big directory where dir_index is on)', async () => {
        for (const p of [
          '/big',
          '/files/size-1500000',
          '/files/size-59',
          '/files/size-200000',
          '/sparse/fragmented',
          '/names',
          '/links',
          '/links/len1000',
          '/links/fast',
          '/xattrs',
          '/deep/level-0',
        ]) {
          const i = await fs.lookup(p);
          const out = await run('debugfs', ['-R', `stat "${p}"`, img]);
          const m = /Flags: 0x([0-9a-f]+)/.exec(out);
          assert.ok(m, `debugfs stat ${p} shows flags`);
          assert.equal(i.flags, Number.parseInt(m[1], 16), `${p}: flags`);
        }
        const big = await fs.lookup('/big');
        const features = (await fs.info()).features ?? [];
        if (features.includes('dir_index')) assert.ok((big.flags ?? 0) & 0x1000, '/big is an htree directory');
        if (features.includes('inline_data')) {
          const small = await fs.lookup('/files/size-59');
          assert.ok((small.flags ?? 0) & 0x10000000, 'small files are inline');
          const xdir = await fs.lookup('/xattrs');
          assert.ok((xdir.flags ?? 0) & 0x10000000, 'a small directory is inline');
          const ex: FileExtent[] = [];
          for await (const e of fs.extents(small)) ex.push(e);
          assert.deepEqual(
            ex.map((e) => [e.fileOffset, e.length, e.inline]),
            [[0, 59, true]],
          );
        }
      });

      await t.test('path resolution follows symlinks like the kernel', async () => {
        const viaLink = await resolvePath(fs, '/links/to-dir/level-2', { followLast: true });
        assert.equal(viaLink.ino, kernel.get('/deep/level-0/level-1/level-2')?.ino);
        assert.equal(
          (await resolvePath(fs, '/links/absolute', { followLast: true })).ino,
          kernel.get('/links/target.txt')?.ino,
        );
        assert.equal((await fs.lookup('/links/absolute')).type, 'symlink');
        assert.equal(
          (await resolvePath(fs, '/deep/../links/./fast', { followLast: true })).ino,
          kernel.get('/links/target.txt')?.ino,
        );
        await assert.rejects(
          resolvePath(fs, '/links/loop-a', { followLast: true }),
          (e: StrataError) => e.code === 'LOOP',
        );
        await assert.rejects(
          resolvePath(fs, '/links/dangling', { followLast: true }),
          (e: StrataError) => e.code === 'NOT_FOUND',
        );
        await assert.rejects(
          fs.lookup('/no/such/thing'),
          (e: StrataError) => e instanceof StrataError && e.code === 'NOT_FOUND',
        );
        await assert.rejects(fs.lookup('/files/size-1/x'), (e: StrataError) => e instanceof StrataError);
        assert.equal((await fs.lookup('/big/has-content')).ino, kernel.get('/big/has-content')?.ino);
      });
    } finally {
      await fs.close?.();
      await src.close();
    }
  });
}
