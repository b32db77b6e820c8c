import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { buildBlockMap } from '../../src/blockmap/build.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileExtent, FileSystem, Inode, OwnedRange } from '../../src/fs/types.js';
import { resolvePath, walk } from '../../src/fs/walk.js';
import { XfsFileSystem } from '../../src/fs/xfs/index.js';
import { FileSource } from '../../src/io/file-source.js';
import { StrataError } from '../../src/util/errors.js';
import { BIG_DIR_ENTRIES, BIG_SPARSE_PIECES, BIG_SPARSE_SIZE, bytesOf, kernelViewCached } from '../helpers/ext-tree.js';
import { run } from '../helpers/tools.js';
import { XATTR_NODE, type XfsImageSpec, xfsImage } from '../helpers/xfs-images.js';

const MiB = 1 << 20;

/** The variants the brief names, each made by mkfs.xfs and filled through the kernel. */
const VARIANTS: XfsImageSpec[] = [
  { name: 'v5-default', args: [], size: 400 * MiB, reflink: true },
  { name: 'v5-dir8k', args: ['-n', 'size=8192'], size: 400 * MiB, reflink: true },
  // the smallest AGs mkfs.xfs 6.1 accepts here: a > 300 MB file system needs a 64 MiB log inside one AG
  { name: 'v5-small-ag-rmap', args: ['-d', 'agsize=66m', '-m', 'rmapbt=1'], size: 400 * MiB, reflink: true },
  {
    name: 'v5-large-ag-1k',
    args: ['-d', 'agcount=2', '-b', 'size=1024', '-m', 'bigtime=0,reflink=0'],
    size: 2048 * MiB,
  },
  {
    name: 'v5-nrext64-isize1k',
    args: ['-i', 'nrext64=1,size=1024', '-n', 'size=16384'],
    size: 400 * MiB,
    reflink: true,
  },
];

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

const ns = (t: { sec: number; nsec: number } | undefined) => (t ? BigInt(t.sec) * 1_000_000_000n + BigInt(t.nsec) : 0n);
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** `xfs_db -c 'inode N' -c bmap`: [file block, fs block, count, unwritten] per extent of the data fork. */
async function xfsDbBmap(img: string, ino: number): Promise<Array<[number, number, number, boolean]>> {
  const out = await run('xfs_db', ['-r', '-c', `inode ${ino}`, '-c', 'bmap', img]);
  const res: Array<[number, number, number, boolean]> = [];
  for (const line of out.split('\n')) {
    const m = /^data offset (\d+) startblock (\d+) \(\d+\/\d+\) count (\d+) flag (\d)/.exec(line);
    if (m) res.push([Number(m[1]), Number(m[2]), Number(m[3]), m[4] === '1']);
  }
  return res;
}

/** `xfs_db -c 'sb 0' -c print` as a field map. */
async function xfsDbSb(img: string): Promise<Map<string, string>> {
  const out = await run('xfs_db', ['-r', '-c', 'sb 0', '-c', 'print', img]);
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const i = line.indexOf(' = ');
    if (i > 0) m.set(line.slice(0, i).trim(), line.slice(i + 3).trim());
  }
  return m;
}

/** `xfs_db blockget -n; blockuse -n` over every block: [type, inode] per fs block (AG-linear order). */
async function xfsDbBlockuse(
  img: string,
  agCount: number,
  agBlocks: number,
  dblocks: number,
): Promise<Map<number, [string, number]>> {
  const args = ['-r', '-c', 'blockget -n'];
  for (let ag = 0; ag < agCount; ag++) {
    const len = Math.min(agBlocks, dblocks - ag * agBlocks);
    args.push(
      '-c',
      `agf ${ag}`,
      '-c',
      `fsblock ${ag * 2 ** Math.ceil(Math.log2(agBlocks))}`,
      '-c',
      `blockuse -n -c ${len}`,
    );
  }
  const out = await run('xfs_db', [...args, img]);
  const res = new Map<number, [string, number]>();
  for (const line of out.split('\n')) {
    const m = /^block \d+ \((\d+)\/(\d+)\) type (\S+)(?: inode (\d+))?/.exec(line);
    if (!m) continue;
    const linear = Number(m[1]) * agBlocks + Number(m[2]);
    if (!res.has(linear)) res.set(linear, [m[3], m[4] ? Number(m[4]) : -1]);
  }
  return res;
}

/** The blocks on AG `ag`'s free list, as xfs_db prints the AGF's list bounds and the AGFL slots. */
async function agflBlocks(img: string, ag: number): Promise<number[]> {
  const agf = await run('xfs_db', ['-r', '-c', `agf ${ag}`, '-c', 'print flfirst fllast flcount', img]);
  const num = (k: string) => Number(new RegExp(`${k} = (\\d+)`).exec(agf)![1]);
  const [first, count] = [num('flfirst'), num('flcount')];
  const agfl = await run('xfs_db', ['-r', '-c', `agfl ${ag}`, '-c', 'print bno', img]);
  const slots = new Map<number, string>();
  for (const m of agfl.matchAll(/(\d+):(\w+)/g)) slots.set(Number(m[1]), m[2]);
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(Number(slots.get((first + i) % slots.size)));
  return out;
}

for (const spec of VARIANTS) {
  test(`xfs ${spec.name}: matches the kernel and xfs_db`, async (t) => {
    const img = await xfsImage(spec);
    const kernel = await kernelViewCached(img);
    const src = await FileSource.open(img);
    const fs = await openFileSystem(src);
    assert.ok(fs instanceof XfsFileSystem);
    const bs = fs.blockSize;
    const sb = await xfsDbSb(img);
    try {
      await t.test('info matches xfs_db and blkid', async () => {
        const info = await fs.info();
        assert.equal(info.kind, (await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', img])).trim());
        assert.equal(info.uuid, sb.get('uuid'));
        assert.equal(info.blockSize, Number(sb.get('blocksize')));
        assert.equal(info.totalBytes, Number(sb.get('dblocks')) * bs);
        assert.equal(info.freeBytes, Number(sb.get('fdblocks')) * bs);
        assert.equal(info.totalInodes, Number(sb.get('icount')));
        assert.equal(info.freeInodes, Number(sb.get('ifree')));
        assert.equal(info.extra?.agCount, Number(sb.get('agcount')));
        assert.equal(info.extra?.version, 5);
        const xinfo = await run('xfs_db', ['-r', '-c', 'info', img]);
        const flag = (name: string) => new RegExp(`${name}=1`).test(xinfo);
        for (const [name, feat] of [
          ['reflink', 'reflink'],
          ['rmapbt', 'rmapbt'],
          ['bigtime', 'bigtime'],
          ['nrext64', 'nrext64'],
          ['finobt', 'finobt'],
          ['sparse', 'sparse_inodes'],
        ]) {
          assert.equal(info.features?.includes(feat), flag(name), `feature ${feat}`);
        }
        assert.match(String(info.extra?.log), /internal, \d+ blocks, clean/);
      });

      const ours = await ourTree(fs);
      await t.test(
        'the whole tree matches the kernel: names, types, stat fields, targets, xattrs, content',
        async () => {
          assert.deepEqual([...ours.keys()].sort(), [...kernel.keys()].sort());
          const mine: string[] = [];
          const theirs: string[] = [];
          let hashed = 0;
          for (const [p, k] of kernel) {
            const o = ours.get(p)!;
            const i = o.inode;
            const xa = await fs.xattrs(i);
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
                i.ino,
                String(ns(i.mtime)),
                String(ns(i.atime)),
                String(ns(i.ctime)),
                String(ns(i.crtime)),
                i.allocatedBytes,
                k.rdev ? i.rdev : undefined,
                k.target !== undefined ? await fs.readlink(i) : undefined,
                k.sha256 !== undefined ? await sha256Of(fs, i) : undefined,
                [...xa].map(([n, v]) => `${n}=${hex(v)}`).sort(),
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
                Object.entries(k.xattrs ?? {})
                  .map(([n, v]) => `${n}=${v}`)
                  .sort(),
              ]),
            );
            if (k.sha256 !== undefined) hashed++;
          }
          assert.deepEqual(mine, theirs);
          assert.ok(hashed > 100, 'hashed the regular files');
          assert.equal(Object.keys(kernel.get('/xfs-xattrs/node')?.xattrs ?? {}).length, XATTR_NODE + 2);
          assert.equal([...ours.keys()].filter((p) => p.startsWith('/big/')).length, BIG_DIR_ENTRIES + 1);
        },
      );

      await t.test(
        'the forms compared above are the ones xfs_db sees (B+tree and short-form directories, local, leaf and node attributes, BMBT files)',
        async () => {
          const db = (p: string, ...c: string[]) =>
            run('xfs_db', ['-r', '-c', `path ${p}`, ...c.flatMap((x) => ['-c', x]), img]);
          assert.match(await db('/big', 'print core.format'), /= 3 \(btree\)/);
          assert.match(await db('/links', 'print core.format'), /= 1 \(local\)/);
          assert.match(await db('/files', 'print core.format'), /= 2 \(extents\)/);
          assert.match(await db('/sparse/fragmented', 'print core.format'), /= 3 \(btree\)/);
          assert.match(await db('/xattrs/small', 'print core.aformat'), /= 1 \(local\)/);
          assert.match(await db('/xfs-xattrs/node', 'ablock 0', 'print hdr.info.hdr.magic'), /= 0x3ebe/);
          // 40 attributes fill one leaf with 4 KiB blocks and need a node with 1 KiB blocks
          assert.match(
            await db('/xfs-xattrs/leaf', 'ablock 0', 'print hdr.info.hdr.magic'),
            bs >= 4096 ? /= 0x3bee/ : /= 0x3ebe/,
          );
          assert.match(await db('/links/len1000', 'print core.format'), /= 2 \(extents\)/);
          assert.match(await db('/links/fast', 'print core.format'), /= 1 \(local\)/);
        },
      );

      await t.test('no warnings on a clean image (every checksum verifies)', () => {
        assert.deepEqual(fs.warnings, []);
      });

      await t.test('the > 4 GiB sparse file reads its pieces and zeros', async () => {
        const f = await fs.lookup('/sparse/big-over-4g');
        assert.equal(f.size, BIG_SPARSE_SIZE);
        for (const [at, len] of BIG_SPARSE_PIECES) {
          assert.equal(hex(await fs.read(f, at, len)), hex(bytesOf(`big-${at}`, len)), `piece at ${at}`);
        }
        assert.ok((await fs.read(f, 3 * 2 ** 30, MiB)).every((x) => x === 0));
        assert.equal((await fs.read(f, BIG_SPARSE_SIZE - 10, 100)).length, 10);
      });

      await t.test('extents match xfs_db bmap (extent list and B+tree forms, unwritten)', async () => {
        let btree = 0;
        for (const p of [
          '/files/size-1500000',
          '/sparse/holes',
          '/sparse/fragmented',
          '/fragmented-backwards',
          '/sparse/big-over-4g',
          '/prealloc',
          '/big',
          '/links/len1000',
        ]) {
          const f = await fs.lookup(p);
          const ex: FileExtent[] = [];
          for await (const e of fs.extents(f)) ex.push(e);
          const want = await xfsDbBmap(img, f.ino);
          // directories and remote symlinks are listed by whole blocks
          const whole = f.type === 'dir' || f.type === 'symlink';
          assert.ok(want.length > 0, `${p}: xfs_db lists extents`);
          // ours in blocks, pieces merged back the way the B+tree stores them
          const got: Array<[number, number, number, boolean]> = [];
          for (const e of ex) {
            const fb = e.fileOffset / bs;
            const vb = e.volumeOffset / bs;
            const n = Math.ceil(e.length / bs);
            const last = got[got.length - 1];
            if (last && last[0] + last[2] === fb && last[1] + last[2] === vb && last[3] === !!e.unwritten) last[2] += n;
            else got.push([fb, vb, n, !!e.unwritten]);
          }
          // xfs_db numbers blocks AG-linear when the AG size is a power of two only: compare volume blocks
          const agBlocks = Number(sb.get('agblocks'));
          const agShift = Number(sb.get('agblklog'));
          const wantLinear = want
            .map(([o, s, c, u]): [number, number, number, boolean] => [
              o,
              Math.floor(s / 2 ** agShift) * agBlocks + (s % 2 ** agShift),
              c,
              u,
            ])
            .filter(([o]) => whole || o * bs < f.size);
          const merged: Array<[number, number, number, boolean]> = [];
          for (const w of wantLinear) {
            const last = merged[merged.length - 1];
            if (last && last[0] + last[2] === w[0] && last[1] + last[2] === w[1] && last[3] === w[3]) last[2] += w[2];
            else merged.push([...w]);
          }
          // the last extent of a file is clipped at its size
          if (!whole && merged.length > 0) {
            const l = merged[merged.length - 1];
            l[2] = Math.min(l[2], Math.ceil(f.size / bs) - l[0]);
          }
          assert.deepEqual(got, merged, `${p}: extents`);
          if (want.length > 20) btree++;
        }
        assert.ok(btree >= 2, 'B+tree-format files were compared');
        const pre = await fs.lookup('/prealloc');
        const ex: FileExtent[] = [];
        for await (const e of fs.extents(pre)) ex.push(e);
        assert.ok(
          ex.some((e) => e.unwritten),
          'fallocate left unwritten extents',
        );
        const want = Buffer.alloc(1 << 20);
        bytesOf('prealloc', 10000).copy(want, 300_000);
        assert.equal(hex(await fs.read(pre, 0, pre.size)), hex(want));
      });

      await t.test(
        'extents match xfs_bmap -v on a read-only kernel mount (512-byte units, unwritten flag)',
        async () => {
          const paths = [
            '/files/size-1500000',
            '/sparse/holes',
            '/sparse/fragmented',
            '/fragmented-backwards',
            '/sparse/big-over-4g',
            '/prealloc',
          ];
          const listed = new Map<string, string>();
          const mnt = `/tmp/strata-xfsbmap-${process.pid}-${Date.now()}`;
          const { mkdirSync, rmSync } = await import('node:fs');
          mkdirSync(mnt, { recursive: true });
          // ro + norecovery on a read-only loop device: the fixture is not written
          await run('mount', ['-o', 'ro,loop,norecovery', img, mnt]);
          try {
            for (const p of paths) listed.set(p, await run('xfs_bmap', ['-v', '-p', `${mnt}${p}`]));
          } finally {
            await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]));
            rmSync(mnt, { recursive: true, force: true });
          }
          type Run = [number, number, number, boolean]; // file sector, disk sector, sectors, unwritten
          const push = (runs: Run[], r: Run) => {
            const last = runs[runs.length - 1];
            if (last && last[0] + last[2] === r[0] && last[1] + last[2] === r[1] && last[3] === r[3]) last[2] += r[2];
            else runs.push(r);
          };
          let unwritten = 0;
          for (const [p, text] of listed) {
            const f = await fs.lookup(p);
            const endSector = Math.ceil(f.size / bs) * (bs / 512);
            const want: Run[] = [];
            for (const line of text.split('\n')) {
              const m = /^\s*\d+: \[(\d+)\.\.(\d+)\]:\s+(\d+)\.\.(\d+)\s+\d+\s+\(\d+\.\.\d+\)\s+\d+\s+([0-7]+)/.exec(
                line,
              );
              if (!m) continue; // the header, holes
              const from = Number(m[1]);
              if (from >= endSector) continue; // preallocated past EOF: not the file's
              const n = Math.min(Number(m[2]) + 1, endSector) - from;
              push(want, [from, Number(m[3]), n, (Number.parseInt(m[5], 8) & 0o10000) !== 0]);
            }
            assert.ok(want.length > 0, `${p}: xfs_bmap lists extents`);
            const got: Run[] = [];
            for await (const e of fs.extents(f)) {
              const n = Math.ceil(e.length / bs) * (bs / 512);
              push(got, [e.fileOffset / 512, e.volumeOffset / 512, n, !!e.unwritten]);
            }
            assert.deepEqual(got, want, `${p}: extents against xfs_bmap -v`);
            unwritten += want.filter((r) => r[3]).length;
          }
          assert.ok(unwritten > 0, 'an unwritten extent was compared');
        },
      );

      if (spec.reflink) {
        await t.test('reflinked extents are shared exactly where the kernel says (FIEMAP)', async () => {
          const fiemap = new Map<string, string>();
          const { withRwMount } = await import('../helpers/ext-tree.js');
          // a read-only look through xfs_io on a mount of a scratch copy (the fixture stays unchanged)
          const { copyFileSync, rmSync } = await import('node:fs');
          const copy = `${img}.fiemap-${process.pid}`;
          copyFileSync(img, copy);
          try {
            await withRwMount(copy, async (mnt) => {
              for (const f of ['original', 'clone', 'clone-changed']) {
                fiemap.set(f, await run('xfs_io', ['-r', '-c', 'fiemap -v', `${mnt}/reflink/${f}`]));
              }
            });
          } finally {
            rmSync(copy, { force: true });
          }
          for (const [f, text] of fiemap) {
            const want: string[] = [];
            for (const line of text.split('\n')) {
              const m = /^\s*\d+: \[(\d+)\.\.(\d+)\]:\s+(\d+)\.\.(\d+)\s+\d+\s+0x([0-9a-f]+)/.exec(line);
              if (m)
                want.push(
                  `${Number(m[1]) * 512}+${(Number(m[2]) + 1 - Number(m[1])) * 512}@${Number(m[3]) * 512}${Number.parseInt(m[5], 16) & 0x2000 ? ' shared' : ''}`,
                );
            }
            const ino = await fs.lookup(`/reflink/${f}`);
            const got: string[] = [];
            for await (const e of fs.extents(ino))
              got.push(`${e.fileOffset}+${e.length}@${e.volumeOffset}${e.shared ? ' shared' : ''}`);
            assert.deepEqual(got, want, `/reflink/${f}`);
          }
          const changed = await fs.lookup('/reflink/clone-changed');
          const ex: FileExtent[] = [];
          for await (const e of fs.extents(changed)) ex.push(e);
          assert.ok(ex.some((e) => e.shared) && ex.some((e) => !e.shared), 'partly shared');
        });
      }

      await t.test('allocation() is the complement of xfs_db freesp -d', async () => {
        const out = await run('xfs_db', ['-r', '-c', 'freesp -d', img]);
        const agBlocks = Number(sb.get('agblocks'));
        const free = new Set<number>();
        for (const line of out.split('\n')) {
          const m = /^\s+(\d+)\s+(\d+)\s+(\d+)\s*$/.exec(line);
          if (!m) continue;
          const start = Number(m[1]) * agBlocks + Number(m[2]);
          for (let b = 0; b < Number(m[3]); b++) free.add(start + b);
        }
        // freesp counts the AG free lists as free; they are reserved for B+tree growth (allocated)
        for (let ag = 0; ag < Number(sb.get('agcount')); ag++) {
          for (const b of await agflBlocks(img, ag))
            assert.ok(free.delete(ag * agBlocks + b), `AGFL block ${b} in freesp`);
        }
        const dblocks = Number(sb.get('dblocks'));
        const alloc = await fs.allocation();
        let used = 0;
        for (const r of alloc) {
          for (let b = r.offset / bs; b < (r.offset + r.length) / bs; b++) {
            assert.ok(!free.has(b), `block ${b} is both allocated and free`);
            used++;
          }
        }
        assert.equal(used + free.size, dblocks, 'every block is either allocated or free');
      });

      await t.test('the block map agrees with xfs_db blockget/blockuse on every block', async () => {
        const map = await buildBlockMap(src);
        const agBlocks = Number(sb.get('agblocks'));
        const use = await xfsDbBlockuse(img, Number(sb.get('agcount')), agBlocks, Number(sb.get('dblocks')));
        assert.equal(use.size, Number(sb.get('dblocks')));
        const WANT: Record<string, string[]> = {
          sb: ['superblock'],
          agf: ['group-desc'],
          agi: ['group-desc'],
          agfl: ['group-desc'],
          btbno: ['bitmap'],
          btcnt: ['bitmap'],
          btino: ['bitmap'],
          btfino: ['bitmap'],
          btrmap: ['reserved'],
          btrefcnt: ['reserved'],
          freelist: ['reserved'],
          inode: ['inode-table'],
          log: ['journal'],
          // xfs_db 6.1 types the data fork's B+tree blocks as data of their inode
          data: ['file', 'directory', 'extent-tree'],
          dir: ['directory', 'extent-tree'],
          rldata: ['file'],
          symlink: ['file'],
          attr: ['xattr'],
          btbmapd: ['extent-tree'],
          btbmapa: ['extent-tree'],
          free1: ['free'],
          free2: ['free'],
        };
        const bad: string[] = [];
        const counts = new Map<string, number>();
        const seenPairs = new Set<string>();
        // data blocks past a file's end (fallocate --keep-size) are in use but hold no file bytes: 'allocated'
        const pastEof = new Map<number, Set<number>>();
        const isPastEof = async (ino: number, blk: number) => {
          let s = pastEof.get(ino);
          if (!s) {
            s = new Set();
            const size = [...kernel.values()].find((k) => k.ino === ino)?.size ?? 0;
            for (const [o, b, c] of await xfsDbBmap(img, ino)) {
              for (let i = 0; i < c; i++) if ((o + i) * bs >= size) s.add(linear(b + i));
            }
            pastEof.set(ino, s);
          }
          return s.has(blk);
        };
        const agShift = Number(sb.get('agblklog'));
        const linear = (fsb: number) => Math.floor(fsb / 2 ** agShift) * agBlocks + (fsb % 2 ** agShift);
        for (const [blk, [type, ino]] of use) {
          counts.set(type, (counts.get(type) ?? 0) + 1);
          const owner = map.whatis(blk * bs, 1)[0];
          // a shared (reflinked) block is claimed by the first of its owners the map meets
          const anyOwner = ino < 0 || type === 'rldata' || owner?.kind === 'inode-table';
          let ok = WANT[type]?.includes(owner?.kind ?? '') && (anyOwner || owner.inode === ino);
          if (!ok && type === 'data' && owner?.kind === 'allocated') ok = await isPastEof(ino, blk);
          const pair = `${type} -> ${owner?.kind}`;
          if (!ok && !seenPairs.has(pair)) {
            seenPairs.add(pair);
            bad.push(`block ${blk}: xfs_db ${type} ${ino}, ours ${owner?.kind} ${owner?.inode}`);
          }
        }
        assert.deepEqual(bad, []);
        for (const k of ['inode', 'log', 'btbno', 'data', 'attr']) assert.ok(counts.get(k), `xfs_db saw ${k}`);
      });

      await t.test(
        'metadataRegions(): inode chunks hold the kernel inode numbers; regions lie in allocation()',
        async () => {
          const regions: OwnedRange[] = [];
          for await (const r of fs.metadataRegions()) regions.push(r);
          const chunks = regions.filter((r) => r.kind === 'inode-table');
          const covered = (ino: number) =>
            chunks.some((c) => c.inodes && ino >= c.inodes.first && ino < c.inodes.first + c.length / c.inodes.size);
          for (const k of kernel.values())
            assert.ok(covered(k.ino), `inode ${k.ino} (${k.path}) lies in a listed chunk`);
          for (const c of chunks.slice(0, 50)) {
            // the first inode of each chunk sits where the region says (xfs_db convert agrees)
            const d = await run('xfs_db', ['-r', '-c', `convert inode ${c.inodes!.first} daddr`, img]);
            const daddr = Number(/\((\d+)\)/.exec(d)![1]);
            assert.equal(Math.floor(c.offset / 512), daddr, `chunk at inode ${c.inodes!.first}`);
          }
          assert.ok(regions.some((r) => r.kind === 'journal' && r.detail === 'internal log'));
          assert.ok(regions.some((r) => r.kind === 'extent-tree'));
          const alloc = await fs.allocation();
          for (const r of regions) {
            const a = alloc.find((x) => x.offset <= r.offset && r.offset < x.offset + x.length);
            assert.ok(
              a && r.offset + r.length <= a.offset + a.length,
              `${r.kind} ${r.detail ?? ''} at ${r.offset} is allocated`,
            );
          }
        },
      );

      await t.test('path resolution follows symlinks like the kernel', async () => {
        const viaLink = await resolvePath(fs, '/links/to-dir/level-2', { followLast: true });
        assert.equal(viaLink.ino, kernel.get('/deep/level-0/level-1/level-2')?.ino);
        await assert.rejects(
          resolvePath(fs, '/links/loop-a', { followLast: true }),
          (e: StrataError) => e.code === 'LOOP',
        );
        await assert.rejects(
          fs.lookup('/no/such/thing'),
          (e: StrataError) => e instanceof StrataError && e.code === 'NOT_FOUND',
        );
        assert.equal((await fs.lookup('/big/has-content')).ino, kernel.get('/big/has-content')?.ino);
        await assert.rejects(fs.inode(2 ** 52), (e: unknown) => e instanceof StrataError);
      });
    } finally {
      await (fs as FileSystem).close?.();
      await src.close();
    }
  });
}
