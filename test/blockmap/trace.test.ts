import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import {
  BlockMap,
  buildBlockMap,
  MapFile,
  type MapRecords,
  type Owner,
  parseTraceLine,
  readTrace,
  readTraceBatches,
  saveBlockMap,
  type TraceAccess,
  TraceResolver,
  type TraceSummary,
} from '../../src/blockmap/index.js';
import { KIND_CODE } from '../../src/blockmap/kinds.js';
import { openImage } from '../../src/formats/open.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { ByteSource } from '../../src/io/byte-source.js';
import { StrataError } from '../../src/util/errors.js';
import { discoverVolumes } from '../../src/volumes/discover.js';
import { prng } from '../helpers/fuzz.js';
import { run, scratch } from '../helpers/tools.js';
import { gptBlockmapDisk } from './images.js';

/** A ByteSource wrapper that records every read (offset, length) while `on`: a block trace. */
class RecordingSource implements ByteSource {
  readonly trace: Array<{ offset: number; length: number }> = [];
  on = false;
  constructor(private readonly inner: ByteSource) {}
  get name() {
    return this.inner.name;
  }
  get size() {
    return this.inner.size;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (this.on) this.trace.push({ offset, length });
    return this.inner.read(offset, length);
  }
}

/** Files of the test tree read through Strata. */
const READ = ['/data/size-300000', '/data/size-1200000'];

/**
 * On ext4 (4 KiB blocks, long extents) every data read goes straight to the disk, so the
 * trace must name exactly the files read. On ext2 at 1 KiB blocks the reader fetches short
 * runs through its block cache (16 KiB pieces that hold neighbours too), so there the
 * files read must be covered completely and make up nearly all of the data bytes.
 */
test('a trace recorded by reading known files through Strata resolves to exactly those files, at the offsets read', async () => {
  const disk = await gptBlockmapDisk();
  const img = await openImage(disk.disk);
  try {
    const map = await buildBlockMap(img);
    const rec = new RecordingSource(img);
    const found = await discoverVolumes(rec);
    for (const [volume, exact] of [
      ['2', true],
      ['gvg/data', false],
    ] as const) {
      const v = found.volumes.find((x) => x.id === volume)!;
      const fs = await openFileSystem(v.source);
      // look everything up and map the files first: the recorded part is the data reads only
      const inodes = await Promise.all(READ.map((p) => fs.lookup(p)));
      for (const ino of inodes) for await (const _ of fs.extents(ino)) void _;
      rec.trace.length = 0;
      rec.on = true;
      for (const ino of inodes) {
        const got = await fs.read(ino, 0, ino.size);
        assert.equal(got.length, ino.size);
      }
      rec.on = false;
      assert.ok(rec.trace.length >= READ.length);

      // CSV, as a tool would write it: offset,length,time,op
      const csv = ['offset,length,time,op', ...rec.trace.map((t, i) => `${t.offset},${t.length},${i},R`)].join('\n');
      const accesses = [];
      for await (const a of readTrace([csv])) accesses.push(a);
      assert.equal(accesses.length, rec.trace.length);
      const r = new TraceResolver(map);
      const covered = new Map<string, Array<[number, number]>>();
      for (const a of accesses) {
        const res = r.resolve(a);
        assert.equal(res.op, 'R');
        if (!exact) {
          // every read was made for one of the files (with neighbours in the same cache piece)
          assert.ok(
            res.owners.some((o) => READ.includes(o.path ?? '')),
            `access ${a.offset}+${a.length}`,
          );
          continue;
        }
        for (const o of res.owners) {
          assert.equal(o.kind, 'file', `access ${a.offset}+${a.length} touched ${JSON.stringify(o)}`);
          assert.equal(o.volume, volume);
          assert.ok(READ.includes(o.path!), `resolved to ${o.path}`);
          const l = covered.get(o.path!) ?? [];
          l.push([o.fileOffset!, o.fileOffset! + o.length]);
          covered.set(o.path!, l);
        }
      }
      // exactly those files, every byte of each read once
      if (exact) assert.deepEqual([...covered.keys()].sort(), [...READ].sort());
      for (const [p, ranges] of covered) {
        ranges.sort((a, b) => a[0] - b[0]);
        let end = 0;
        for (const [s, e] of ranges) {
          assert.equal(s, end, `${p}: gap or overlap at file offset ${s}`);
          end = e;
        }
        assert.equal(end, disk.files[p.slice(1)], `${p}: resolved bytes`);
      }
      const s = r.summary();
      const wanted = READ.reduce((n, p) => n + disk.files[p.slice(1)], 0);
      if (exact) {
        assert.equal(s.byFile.length, READ.length, JSON.stringify(s.byFile));
        assert.equal(s.byClass.metadata.bytes, 0);
        assert.equal(s.byClass.data.bytes, wanted);
      } else {
        const mine = s.byFile.filter((f) => READ.includes(f.path)).reduce((n, f) => n + f.bytes, 0);
        assert.ok(mine >= 0.9 * wanted && mine >= 0.9 * s.byClass.data.bytes, `${mine} of ${s.byClass.data.bytes}`);
      }
      // inode numbers of the summary: the ones debugfs gives those paths
      const image = disk.fss.find((f) => f.volume === volume)!.image;
      for (const f of s.byFile.filter((x) => READ.includes(x.path))) {
        const st = await run('debugfs', ['-R', `stat ${f.path}`, image]);
        assert.equal(f.inode, Number(/Inode: (\d+)/.exec(st)?.[1]));
      }
    }
  } finally {
    await img.close();
  }
});

test('a trace of opening a file system and walking to a file resolves to metadata: superblock, group descriptors, inode tables, directories', async () => {
  const disk = await gptBlockmapDisk();
  const img = await openImage(disk.disk);
  try {
    const map = await buildBlockMap(img);
    const found = await discoverVolumes(img);
    const v = found.volumes.find((x) => x.id === '2')!;
    const rec = new RecordingSource(v.source);
    rec.on = true;
    const fs = await openFileSystem(rec);
    await fs.lookup('/deep/d0/d1/d2/d3/d4/d5/bottom.txt');
    const lines = rec.trace.map((t) => JSON.stringify({ offset: t.offset + disk.fss[0].diskOffset, length: t.length }));
    const r = new TraceResolver(map);
    for await (const a of readTrace([lines.join('\n')])) r.count(a);
    const kinds = new Set(r.summary().byKind.map((k) => k.kind));
    for (const k of ['superblock', 'group-desc', 'inode-table', 'directory']) assert.ok(kinds.has(k as never), k);
    const dirs = r
      .summary()
      .byFile.filter((f) => f.kind === 'directory')
      .map((f) => f.path);
    for (const d of ['/', '/deep', '/deep/d0/d1/d2/d3/d4/d5']) assert.ok(dirs.includes(d), `${d} in ${dirs}`);
  } finally {
    await img.close();
  }
});

test('trace lines: JSON and CSV, hex offsets, headers and comments; bad lines fail naming the line', () => {
  assert.deepEqual(parseTraceLine('{"offset": 4096, "length": 512, "time": 1.5, "op": "W"}', 1), {
    offset: 4096,
    length: 512,
    time: 1.5,
    op: 'W',
  });
  assert.deepEqual(parseTraceLine('0x1000,512', 2), { offset: 4096, length: 512 });
  assert.equal(parseTraceLine('offset,length', 1), undefined);
  assert.equal(parseTraceLine('# comment', 5), undefined);
  for (const bad of ['-1,5', '12', 'abc,5', '{"offset": 1}', '{oops', '1.5,3']) {
    assert.throws(
      () => parseTraceLine(bad, 7, 't.csv'),
      (e: unknown) =>
        e instanceof StrataError && e.code === 'CORRUPT' && /line 7/.test(e.message) && e.file === 't.csv',
      bad,
    );
  }
});

test('batched trace reading over split chunks agrees with the line parser (CSV fast path, CRLF, JSON, hex, header)', async () => {
  const lines = [
    'offset,length,time,op',
    '4096,512,1,R',
    '8192,4096',
    '0x2000,16,3,W',
    '{"offset": 12288, "length": 7, "op": "R"}',
    '100,200,,W',
    '# note',
    '300,400,5.5,TRIM',
    '999999999999999,1,7,R',
  ];
  const text = `${lines.join('\r\n')}\n77,88`;
  const want = [...lines, '77,88'].map((l, i) => parseTraceLine(l, i + 1)).filter((a) => a !== undefined);
  const bytes = new TextEncoder().encode(text);
  for (const cut of [1, 3, 7, 16, bytes.length]) {
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < bytes.length; i += cut) chunks.push(bytes.subarray(i, i + cut));
    const got = [];
    for await (const b of readTraceBatches(chunks)) for (let i = 0; i < b.count; i++) got.push(b.access(i));
    assert.deepEqual(got, want, `chunks of ${cut}`);
  }
  await assert.rejects(
    async () => {
      for await (const _ of readTraceBatches(['1,2\n', 'x'.repeat(70_000)], 'big.csv')) void _;
    },
    (e: unknown) => e instanceof StrataError && e.code === 'CORRUPT' && /line 2/.test(e.message),
  );
});

/**
 * The per-file summary as the trace resolve command defines it, computed from the owners
 * each access resolves to: a file is a (volume, path) of kind file or directory, its bytes
 * the owners' lengths, its accesses the accesses that touched it; most bytes first, then by
 * path, ties in the order the trace first touched them.
 */
function modelByFile(resolved: Array<{ owners: Owner[] }>): TraceSummary['byFile'] {
  const files = new Map<string, TraceSummary['byFile'][number]>();
  for (const r of resolved) {
    const seen = new Set<string>();
    for (const o of r.owners) {
      if ((o.kind !== 'file' && o.kind !== 'directory') || o.path === undefined) continue;
      const key = `${o.volume}\0${o.path}`;
      let f = files.get(key);
      if (!f) {
        f = { kind: o.kind, path: o.path, accesses: 0, bytes: 0 };
        if (o.volume !== undefined) f.volume = o.volume;
        if (o.inode !== undefined) f.inode = o.inode;
        files.set(key, f);
      }
      f.bytes += o.length;
      if (!seen.has(key)) f.accesses++;
      seen.add(key);
    }
  }
  return [...files.values()].sort((a, b) => b.bytes - a.bytes || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * Resolve `trace` against each map: every resolution and summary must agree; and, without
 * its empty accesses (an empty access inside a record counts as an access of it, with no
 * owner to show), the files must be the model's, also when sorted in spilled runs.
 */
function resolveAlike(maps: Array<MapRecords | BlockMap>, trace: TraceAccess[]): void {
  const results = maps.map((m) => {
    const r = new TraceResolver(m);
    const resolved = trace.map((a) => r.resolve(a));
    return { resolved, summary: r.summary() };
  });
  for (const x of results.slice(1)) {
    assert.deepEqual(x.resolved, results[0].resolved);
    assert.deepEqual(x.summary, results[0].summary);
  }
  const nonEmpty = trace.filter((a) => a.length > 0);
  for (const m of maps) {
    const r = new TraceResolver(m);
    const want = modelByFile(nonEmpty.map((a) => r.resolve(a)));
    assert.ok(want.length > 0);
    assert.deepEqual(r.summary().byFile, want);
    // sorted in runs of 1, 2 and 7 spilled to a scratch file and merged: the same order
    for (const held of [1, 2, 7]) assert.deepEqual([...r.fileRows(held)], want, `runs of ${held}`);
  }
}

test('a trace resolved against the saved map read on demand (MapFile) gives what the held map gives; files sorted in spilled runs as one sort', async () => {
  const disk = await gptBlockmapDisk();
  const img = await openImage(disk.disk);
  let map: BlockMap;
  try {
    map = await buildBlockMap(img);
  } finally {
    await img.close();
  }
  const file = path.join(scratch('bm-trace-file'), 'map.bm');
  writeFileSync(file, saveBlockMap(map));
  const mf = MapFile.open(file);
  try {
    // 100 bytes at the start of every file and directory record, last record first: the two
    // file systems hold the same tree, so a path of each touched as much in both volumes, the
    // later volume first (the tie goes to the first touched, not the first on disk)
    const heads: TraceAccess[] = [];
    for (let i = map.count - 1; i >= 0; i--) {
      if (map.kind[i] === KIND_CODE.file || map.kind[i] === KIND_CODE.directory) {
        heads.push({ offset: map.start[i], length: Math.min(100, map.end(i) - map.start[i]) });
      }
    }
    const tied = modelByFile(heads.map((a) => new TraceResolver(map).resolve(a)));
    // each tie listed in the order first touched: its record nearest the disk's end first
    const lastRecord = new Map<string, number>();
    for (let i = 0; i < map.count; i++) {
      if (map.kind[i] !== KIND_CODE.file && map.kind[i] !== KIND_CODE.directory) continue;
      lastRecord.set(`${map.volumes[map.volume[i]].id}\0${map.strings[map.name[i]]}`, i);
    }
    const at = (f: (typeof tied)[number]) => lastRecord.get(`${f.volume}\0${f.path}`) as number;
    let ties = 0;
    for (let i = 1; i < tied.length; i++) {
      if (tied[i].path !== tied[i - 1].path || tied[i].bytes !== tied[i - 1].bytes) continue;
      ties++;
      assert.ok(at(tied[i - 1]) > at(tied[i]), `${tied[i].path}: tie not in first-touch order`);
    }
    assert.ok(ties > 10, `${ties} paths tied across the volumes`);
    resolveAlike([map, mf], heads);
    // random accesses (some empty, some past the disk's end), then the whole disk in 64 KiB reads
    const rnd = prng(5);
    const mixed: TraceAccess[] = [];
    for (let k = 0; k < 3000; k++) {
      const offset = Math.floor((rnd() / 2 ** 32) * (map.diskSize + 100_000));
      mixed.push({ offset, length: k % 100 === 0 ? 0 : 1 + (rnd() % 200_000), time: k, op: 'R' });
    }
    for (let o = 0; o < map.diskSize; o += 65536) mixed.push({ offset: o, length: 65536 });
    resolveAlike([map, mf], mixed);
  } finally {
    mf.close();
  }
});

test('one name in two volumes (a detail two file systems share) is two files, as (volume, path) pairs', async () => {
  // records: unpartitioned, a directory region of volume 0 named by detail 0, a file of
  // volume 0, the same detail in volume 1 (a second id-sharing record), free
  const vol = (id: string) => ({ id, scheme: 'gpt', type: 'linux', fs: 'vfat', blockSize: 512 });
  const cols = {
    count: 6,
    start: Float64Array.from([0, 1000, 2000, 3000, 4000, 5000]),
    kind: Uint8Array.from(
      ['unpartitioned', 'directory', 'file', 'directory', 'directory', 'free'].map((k) => KIND_CODE[k as 'file']),
    ),
    volume: Uint16Array.from([0xffff, 0, 0, 1, 0, 1]),
    ino: Float64Array.from([-1, 1, 12, 1, 1, -1]),
    name: Int32Array.from([-1, 0, 1, 0, 0, -1]),
    objectOffset: Float64Array.from([0, 0, 0, 0, 1000, 0]),
  };
  const map = new BlockMap(6000, cols, ['root directory region', '/a'], [vol('1'), vol('2')]);
  const file = path.join(scratch('bm-trace-names'), 'map.bm');
  writeFileSync(file, saveBlockMap(map));
  const mf = MapFile.open(file);
  try {
    const trace: TraceAccess[] = [
      { offset: 3500, length: 10 },
      { offset: 1500, length: 10 },
      { offset: 900, length: 4000 },
      { offset: 3990, length: 20 },
      { offset: 2100, length: 0 },
    ];
    resolveAlike([map, mf], trace);
    const s = new TraceResolver(mf);
    for (const a of trace) s.count(a);
    const rows = s.summary().byFile.map((f) => `${f.volume} ${f.path} ${f.bytes} ${f.accesses}`);
    // by hand: (1, detail) 10 + 1000 + 900 + 10 bytes in accesses 2, 3, 4; (2, detail) 10 + 1000 + 10 in 1, 3, 4;
    // /a 1000 bytes in 3, and the empty access 5 inside it counts as one more
    assert.deepEqual(rows, ['1 root directory region 1920 3', '2 root directory region 1020 3', '1 /a 1000 2']);
  } finally {
    mf.close();
  }
});
