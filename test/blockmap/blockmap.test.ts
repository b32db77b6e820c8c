import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type BlockMap, buildBlockMap, type Owner } from '../../src/blockmap/index.js';
import { openImage } from '../../src/formats/open.js';
import { prng } from '../helpers/fuzz.js';
import { run } from '../helpers/tools.js';
import type { SfdiskJson } from '../helpers/volume-images.js';
import { type BlockmapDisk, gptBlockmapDisk, mbrBlockmapDisk, type PlacedFs } from './images.js';
import { bmap, type Dumpe2fs, dumpe2fs, icheck, ncheck, tskFfind, tskIfind, tskIstatBlocks } from './oracles.js';

async function mapOf(disk: string): Promise<BlockMap> {
  const img = await openImage(disk);
  try {
    return await buildBlockMap(img);
  } finally {
    await img.close();
  }
}

/** The owner of one disk byte. */
function at(map: BlockMap, offset: number): Owner {
  return map.owner(map.indexOf(offset), offset, offset + 1);
}

const inRanges = (ranges: Array<[number, number]>, b: number) => ranges.some(([a, z]) => b >= a && b <= z);

/** Exact single coverage: records start at 0, strictly ascending, lengths sum to the disk size. */
function checkCoverage(map: BlockMap): void {
  assert.equal(map.start[0], 0);
  let sum = 0;
  for (let i = 0; i < map.count; i++) {
    const len = map.end(i) - map.start[i];
    assert.ok(len > 0, `record ${i} is empty`);
    sum += len;
  }
  assert.equal(sum, map.diskSize);
  const recs = [...map.records()];
  for (let i = 1; i < recs.length; i++) assert.equal(recs[i].start, recs[i - 1].start + recs[i - 1].length);
}

/**
 * One file system of a test disk against dumpe2fs (layout, free blocks), debugfs
 * (icheck, ncheck, bmap) on >= 500 sampled blocks including the first and last block of
 * every record, and The Sleuth Kit (ifind -d, ffind, istat) on a smaller sample.
 */
async function checkFs(map: BlockMap, fsp: PlacedFs, files: Record<string, number>): Promise<number> {
  const d: Dumpe2fs = await dumpe2fs(fsp.image);
  const bs = d.blockSize;
  const base = fsp.diskOffset;
  const blk = (b: number) => at(map, base + b * bs);
  const where = (b: number) => `${fsp.volume} block ${b}`;

  // layout, from dumpe2fs
  for (const s of d.superblocks) {
    const o = at(map, base + (s === 0 ? 1024 : s * bs));
    assert.equal(o.kind, 'superblock', where(s));
    assert.equal(o.volume, fsp.volume);
  }
  for (const [a, z] of d.gdt) for (const b of [a, z]) assert.equal(blk(b).kind, 'group-desc', where(b));
  for (const [a, z] of d.reservedGdt) for (const b of [a, z]) assert.equal(blk(b).kind, 'group-desc', where(b));
  for (const b of d.bitmaps) assert.equal(blk(b).kind, 'bitmap', where(b));
  for (const t of d.inodeTables) {
    const first = blk(t.first);
    assert.equal(first.kind, 'inode-table', where(t.first));
    assert.equal(first.inode, t.group * d.inodesPerGroup + 1, where(t.first));
    const lastByte = at(map, base + (t.last + 1) * bs - 1);
    assert.equal(lastByte.kind, 'inode-table');
    assert.equal(lastByte.inode, (t.group + 1) * d.inodesPerGroup, `last inode of group ${t.group}`);
    const mid = base + t.first * bs + 5 * d.inodeSize + 3;
    assert.equal(at(map, mid).inode, t.group * d.inodesPerGroup + 6);
  }

  // invariants: free per dumpe2fs <=> free in the map, for every block of the file system
  for (let b = d.firstBlock; b < d.blockCount; b++) {
    const free = inRanges(d.free, b);
    const k = blk(b).kind;
    if (free) assert.equal(k, 'free', `${where(b)} is free per dumpe2fs`);
    else assert.notEqual(k, 'free', `${where(b)} is in use per dumpe2fs`);
    assert.notEqual(k, 'allocated', `${where(b)}: allocated without an owner`);
  }

  // sample: the first and last block of every record inside this fs, plus random blocks
  const sample = new Set<number>();
  const lo = map.indexOf(base);
  for (let i = lo; i < map.count && map.start[i] < base + d.blockCount * bs; i++) {
    sample.add(Math.floor((map.start[i] - base) / bs));
    sample.add(Math.floor((map.end(i) - 1 - base) / bs));
  }
  const rnd = prng(fsp.size % 2 ** 31 || 1);
  while (sample.size < 600) sample.add(d.firstBlock + Math.floor((rnd() / 2 ** 32) * (d.blockCount - d.firstBlock)));
  const blocks = [...sample].filter((b) => b >= d.firstBlock && b < d.blockCount).sort((a, b) => a - b);

  const owners = await icheck(fsp.image, blocks);
  const inodes = new Set<number>();
  const fileBlocks: Array<[number, Owner]> = [];
  for (const b of blocks) {
    const o = blk(b);
    const ic = owners.get(b);
    switch (o.kind) {
      case 'file':
      case 'directory':
      case 'journal':
      case 'extent-tree':
      case 'xattr':
      case 'reserved':
        assert.equal(o.inode, ic, `${where(b)}: ${o.kind} of inode ${o.inode}, debugfs icheck says ${ic}`);
        if (o.kind === 'file' || o.kind === 'directory') {
          inodes.add(o.inode!);
          fileBlocks.push([b, o]);
        }
        break;
      case 'group-desc':
        // reserved GDT blocks belong to the resize inode (7) for debugfs
        assert.ok(ic === undefined || (ic === 7 && /reserved/.test(o.detail ?? '')), `${where(b)}: icheck ${ic}`);
        break;
      default:
        assert.equal(ic, undefined, `${where(b)}: ${o.kind} but debugfs icheck says inode ${ic}`);
    }
  }
  // paths, from ncheck; file offsets, from bmap
  const names = await ncheck(fsp.image, [...inodes]);
  for (const [b, o] of fileBlocks) {
    const paths = o.inode === 2 ? ['/'] : (names.get(o.inode!) ?? []); // ncheck does not name the root
    assert.ok(paths.includes(o.path!), `${where(b)}: path ${o.path} not among ${JSON.stringify(paths)}`);
  }
  const pairs = fileBlocks.map(([, o]): [number, number] => [o.inode!, Math.floor(o.fileOffset! / bs)]);
  const phys = await bmap(fsp.image, pairs);
  for (let i = 0; i < fileBlocks.length; i++) {
    assert.equal(phys[i], fileBlocks[i][0], `bmap of inode ${pairs[i][0]} block ${pairs[i][1]}`);
  }

  // The Sleuth Kit on a few blocks of each kind
  const byKind = new Map<string, number[]>();
  for (const b of blocks) {
    const k = blk(b).kind;
    const l = byKind.get(k) ?? [];
    if (l.length < 6) l.push(b);
    byKind.set(k, l);
  }
  for (const [kind, bl] of byKind) {
    for (const b of bl) {
      const o = blk(b);
      const t = await tskIfind(fsp.image, b);
      if (kind === 'file' || kind === 'directory' || kind === 'extent-tree' || kind === 'journal') {
        assert.equal(t, o.inode, `${where(b)}: ${kind}; ifind -d says ${t}`);
      } else if (kind === 'free' || kind === 'bitmap' || kind === 'inode-table' || kind === 'superblock') {
        assert.equal(t, undefined, `${where(b)}: ${kind}; ifind -d says ${t}`);
      }
      if (kind === 'file' || kind === 'directory') {
        const paths = await tskFfind(fsp.image, o.inode!);
        assert.ok(paths.includes(o.path!), `ffind ${o.inode}: ${JSON.stringify(paths)} lacks ${o.path}`);
      }
    }
  }
  // istat of the biggest file: every block it lists is that file's (data or mapping block)
  const bigIno = Number(
    (await run('debugfs', ['-R', 'stat /data/size-1200000', fsp.image])).match(/Inode: (\d+)/)?.[1],
  );
  const st = await tskIstatBlocks(fsp.image, bigIno);
  assert.ok(st.direct.length >= Math.floor(files['data/size-1200000'] / bs));
  for (const b of st.direct) {
    const o = blk(b);
    assert.equal(o.kind, 'file');
    assert.equal(o.inode, bigIno);
    assert.equal(o.path, '/data/size-1200000');
  }
  for (const b of st.indirect) {
    const o = blk(b);
    assert.equal(o.kind, 'extent-tree', `istat indirect block ${b}`);
    assert.equal(o.inode, bigIno);
  }
  return blocks.length;
}

async function checkDisk(disk: BlockmapDisk): Promise<BlockMap> {
  const map = await mapOf(disk.disk);
  checkCoverage(map);
  let sampled = 0;
  for (const f of disk.fss) sampled += await checkFs(map, f, disk.files);
  assert.ok(sampled >= 1000, `${sampled} blocks sampled`);
  // every kind the issue names for ext shows up somewhere
  const kinds = new Set(map.summary().map((s) => s.kind));
  for (const k of [
    'partition-table',
    'unpartitioned',
    'superblock',
    'group-desc',
    'bitmap',
    'inode-table',
    'directory',
    'file',
    'free',
    'extent-tree',
    'xattr',
  ]) {
    assert.ok(kinds.has(k as never), `no ${k} in the map`);
  }
  return map;
}

test('GPT disk with LVM: partition table and LVM structures vs sgdisk and lvm, both file systems vs dumpe2fs, debugfs, TSK', async () => {
  const disk = await gptBlockmapDisk();
  const map = await checkDisk(disk);
  // sgdisk: everything before the first usable sector and after the last one is GPT
  const p = await run('sgdisk', ['-p', disk.disk]);
  const first = Number(/First usable sector is (\d+), last usable sector is (\d+)/.exec(p)?.[1]);
  const last = Number(/First usable sector is (\d+), last usable sector is (\d+)/.exec(p)?.[2]);
  for (const o of map.whatis(0, first * 512)) assert.equal(o.kind, 'partition-table', JSON.stringify(o));
  for (const o of map.whatis((last + 1) * 512, map.diskSize - (last + 1) * 512)) {
    assert.equal(o.kind, 'partition-table', JSON.stringify(o));
    assert.match(o.detail ?? '', /backup/);
  }
  // every partition sgdisk lists: its first byte belongs to that volume, the gap before the first is unpartitioned
  const rows = [...p.matchAll(/^\s+(\d+)\s+(\d+)\s+(\d+)\s/gm)].map((m) => ({
    id: m[1],
    start: Number(m[2]),
    end: Number(m[3]),
  }));
  assert.equal(rows.length, 5);
  assert.equal(at(map, first * 512).kind, 'unpartitioned');
  for (const r of rows) {
    const o = at(map, r.start * 512 + 4096);
    if (r.id === '4') assert.equal(o.kind, 'lvm-metadata');
    else assert.equal(o.volume, r.id, JSON.stringify(o));
    assert.equal(at(map, (r.end + 1) * 512 - 1).volume ?? '', r.id === '4' ? '' : r.id);
  }
  // LVM: the label and metadata lie before pe_start (pvs), the LV where lvs puts it
  const pv = await checkLvmHead(map, disk);
  assert.ok(pv > 0);
});

async function checkLvmHead(map: BlockMap, disk: BlockmapDisk): Promise<number> {
  const { gptDisk } = await import('../helpers/volume-images.js');
  const o = (await gptDisk()).oracle;
  const pv = o.pvs.find((x) => x.vg_name === 'gvg')!;
  const dev = o.devices[pv.pv_name];
  const peStart = Number(pv.pe_start);
  const meta = map.whatis(dev.offset, peStart).filter((r) => r.kind === 'lvm-metadata');
  assert.ok(meta.some((r) => r.detail === 'PV label' && r.start === dev.offset + 512));
  assert.ok(meta.some((r) => /metadata area/.test(r.detail ?? '')));
  for (const r of meta) assert.equal(r.volume, '4');
  const lv = disk.fss.find((f) => f.volume === 'gvg/data')!;
  assert.equal(at(map, lv.diskOffset + 1024).kind, 'superblock');
  return peStart;
}

test('MBR disk with logical partitions: table sectors vs sfdisk, ext2 (indirect blocks) and ext4 vs dumpe2fs, debugfs, TSK', async () => {
  const disk = await mbrBlockmapDisk();
  const map = await checkDisk(disk);
  const parts = (JSON.parse(await run('sfdisk', ['--json', disk.disk])) as SfdiskJson).partitiontable.partitions;
  assert.equal(at(map, 0).kind, 'partition-table');
  assert.equal(at(map, 511).kind, 'partition-table');
  for (const p of parts) {
    const n = p.node.replace(/^.*disk\.img/, '');
    const o = at(map, p.start * 512);
    if (p.type === '5') {
      // the extended container starts with the first EBR
      assert.equal(o.kind, 'partition-table');
      continue;
    }
    assert.equal(o.volume, n, `partition ${n}: ${JSON.stringify(o)}`);
    assert.equal(at(map, (p.start + p.size) * 512 - 1).volume, n);
    if (Number(n) >= 5) {
      // a logical partition's EBR sits in the sectors before it
      const before = map.whatis((p.start - 2048) * 512, 2048 * 512).filter((r) => r.kind === 'partition-table');
      assert.equal(before.length, 1, `EBR before logical ${n}`);
      assert.equal(before[0].detail, 'EBR');
    }
  }
  // unpartitioned: before the first partition
  assert.equal(at(map, 512).kind, 'unpartitioned');
  // swap and vfat: volumes whose content is not read, named by what probing found
  const swap = parts.find((p) => p.type === '82')!;
  const so = at(map, swap.start * 512 + 8192);
  assert.equal(so.kind, 'volume');
  assert.equal(so.detail, 'swap');
});

test('whole-disk LVM PV with a two-segment LV: every LV range where lvs/pvs put it, label and metadata before pe_start', async () => {
  const { lvmDisk, lvRanges } = await import('../helpers/volume-images.js');
  const disk = await lvmDisk();
  const map = await mapOf(disk.disk);
  checkCoverage(map);
  const pv = disk.oracle.pvs[0];
  const peStart = Number(pv.pe_start);
  const head = map.whatis(0, peStart);
  assert.ok(head.some((r) => r.kind === 'lvm-metadata' && r.detail === 'PV label'));
  for (const r of head) assert.ok(r.kind === 'lvm-metadata' || r.kind === 'unpartitioned', JSON.stringify(r));
  let lvBytes = 0;
  for (const lv of ['lv1', 'lv2', 'lv3']) {
    const ranges = lvRanges(disk.oracle, 'wvg', lv);
    if (lv === 'lv1') assert.equal(ranges.length, 2);
    for (const r of ranges) {
      const owners = map.whatis(r.diskOffset, r.length);
      assert.deepEqual(
        owners.map((o) => [o.kind, o.volume]),
        [['volume', `wvg/${lv}`]],
        `${lv} at ${r.diskOffset}`,
      );
      lvBytes += r.length;
    }
  }
  // the rest of the PV is in no LV
  const used = map.used().reduce((n, r) => n + r.length, 0);
  const meta = head.filter((r) => r.kind === 'lvm-metadata').reduce((n, r) => n + r.length, 0);
  assert.equal(used, lvBytes + meta);
});
