import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import type { Owner } from '../../src/blockmap/index.js';
import { jsonLines, strata } from '../helpers/cli.js';
import { run, scratch } from '../helpers/tools.js';
import { gptBlockmapDisk } from './images.js';
import { bmap, dumpe2fs } from './oracles.js';

const json = <T>(s: string) => JSON.parse(s) as T;

test('whatis names the file debugfs places at an offset; --map answers the same from a saved map', async () => {
  const disk = await gptBlockmapDisk();
  const p2 = disk.fss.find((f) => f.volume === '2')!;
  const ino = Number(/Inode: (\d+)/.exec(await run('debugfs', ['-R', 'stat /data/size-300000', p2.image]))?.[1]);
  const [blk] = await bmap(p2.image, [[ino, 3]]);
  const at = p2.diskOffset + blk * 4096 + 100;
  const r = await strata(['whatis', disk.disk, `${at}+10`, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const owners = jsonLines<Owner>(r.stdout);
  assert.deepEqual(owners, [
    {
      start: at,
      length: 10,
      kind: 'file',
      volume: '2',
      fs: 'ext4',
      inode: ino,
      path: '/data/size-300000',
      fileOffset: 3 * 4096 + 100,
    },
  ]);
  // a range across records: clipped pieces that add up to the range
  const wide = jsonLines<Owner>(
    (await strata(['whatis', disk.disk, `0x${(p2.diskOffset - 4096).toString(16)}+65536`, '--json'])).stdout,
  );
  assert.ok(wide.length >= 2);
  assert.equal(wide[0].start, p2.diskOffset - 4096);
  assert.equal(
    wide.reduce((n, o) => n + o.length, 0),
    65536,
  );
  assert.equal(wide[1].volume, '2');
  // saved map
  const dir = scratch('bm-cli');
  const saved = path.join(dir, 'map.bm');
  const s = await strata(['blockmap', disk.disk, '--summary', '--json', '--save', saved]);
  assert.equal(s.code, 0, s.stderr);
  const summary = json<{ diskSize: number; kinds: Array<{ kind: string; bytes: number }> }>(s.stdout);
  assert.equal(
    summary.kinds.reduce((n, k) => n + k.bytes, 0),
    summary.diskSize,
  );
  // whatis without --map streams the map (bounded memory); the saved, whole map answers alike
  const again = await strata(['whatis', disk.disk, `${at}+10`, '--json', '--map', saved]);
  assert.deepEqual(jsonLines(again.stdout), owners);
  const wideRange = `0x${(p2.diskOffset - 4096).toString(16)}+65536`;
  const wideSaved = await strata(['whatis', disk.disk, wideRange, '--json', '--map', saved]);
  assert.deepEqual(jsonLines(wideSaved.stdout), wide);
  const text = await strata(['whatis', disk.disk, wideRange]);
  assert.equal(text.stdout, (await strata(['whatis', disk.disk, wideRange, '--map', saved])).stdout);
  const past = await strata(['whatis', disk.disk, String(summary.diskSize)]);
  assert.notEqual(past.code, 0, past.stderr);
  assert.match(past.stderr, /lies past the disk end/);
  const pastSaved = await strata(['whatis', disk.disk, String(summary.diskSize), '--map', saved]);
  assert.deepEqual([pastSaved.code, pastSaved.stderr], [past.code, past.stderr]);
  // blockmap --map reads the saved map from its file: the built map's records and summary, both forms
  for (const form of [['--json'], [], ['--summary', '--json'], ['--summary']]) {
    const built = await strata(['blockmap', disk.disk, ...form]);
    assert.equal(built.code, 0, built.stderr);
    const fromFile = await strata(['blockmap', disk.disk, ...form, '--map', saved]);
    assert.equal(fromFile.code, 0, fromFile.stderr);
    assert.equal(fromFile.stdout, built.stdout, `blockmap ${form.join(' ')} --map`);
    assert.ok(built.stdout.split('\n').length > 3, built.stdout);
  }
  // bad input: one line on stderr, non-zero exit
  const bad = await strata(['whatis', disk.disk, 'nonsense']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /^strata: .*bad range/);
  writeFileSync(path.join(dir, 'junk.bm'), 'not a map');
  const junk = await strata(['whatis', disk.disk, '0', '--map', path.join(dir, 'junk.bm')]);
  assert.notEqual(junk.code, 0);
  assert.match(junk.stderr, /junk\.bm.*(too short|magic)/);
});

test('map --used leaves out every block dumpe2fs calls free and keeps every superblock', async () => {
  const disk = await gptBlockmapDisk();
  const r = await strata(['map', disk.disk, '--used', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const used = jsonLines<{ start: number; length: number }>(r.stdout);
  const isUsed = (o: number) => used.some((u) => o >= u.start && o < u.start + u.length);
  for (const f of disk.fss) {
    const d = await dumpe2fs(f.image);
    for (const [a, z] of d.free) {
      for (const b of [a, z]) assert.ok(!isUsed(f.diskOffset + b * d.blockSize), `${f.volume} free block ${b}`);
    }
    for (const s of d.superblocks) assert.ok(isUsed(f.diskOffset + Math.max(1024, s * d.blockSize)));
  }
});

test('trace resolve: JSON lines per access, then the summary', async () => {
  const disk = await gptBlockmapDisk();
  const p2 = disk.fss.find((f) => f.volume === '2')!;
  const ino = Number(/Inode: (\d+)/.exec(await run('debugfs', ['-R', 'stat /data/size-1200000', p2.image]))?.[1]);
  const [blk] = await bmap(p2.image, [[ino, 0]]);
  const dir = scratch('bm-trace');
  const file = path.join(dir, 't.csv');
  writeFileSync(
    file,
    `offset,length,time,op\n${p2.diskOffset + blk * 4096},8192,0.5,R\n${p2.diskOffset + 1024},1024,1,R\n`,
  );
  const r = await strata(['trace', 'resolve', disk.disk, file, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.equal(lines.length, 3);
  assert.equal(lines[0].owners[0].path, '/data/size-1200000');
  assert.equal(lines[0].time, 0.5);
  assert.equal(lines[1].owners[0].kind, 'superblock');
  const s = lines[2].summary;
  assert.equal(s.accesses, 2);
  assert.equal(s.byClass.data.bytes, 8192);
  assert.equal(s.byFile[0].inode, ino);
});
