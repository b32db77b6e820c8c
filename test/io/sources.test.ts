import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import * as path from 'node:path';
import { test } from 'node:test';
import { CachedSource } from '../../src/io/cached-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { HttpSource } from '../../src/io/http-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { SliceSource } from '../../src/io/slice-source.js';
import { crc32 } from '../../src/util/crc32.js';
import { crc32c } from '../../src/util/crc32c.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { scratch, sha256 } from '../helpers/tools.js';

const bytes = new Uint8Array(10_000).map((_, i) => (i * 7 + 3) & 0xff);

test('memory and slice sources read exactly and clamp at the end', async () => {
  const m = new MemorySource(bytes, 'mem');
  assert.deepEqual(await m.read(5, 10), bytes.subarray(5, 15));
  assert.equal((await m.read(9995, 100)).length, 5);
  assert.equal((await m.read(20_000, 10)).length, 0);
  const s = new SliceSource(m, 1000, 500);
  assert.equal(s.size, 500);
  assert.deepEqual(await s.read(490, 50), bytes.subarray(1490, 1500));
  await assert.rejects(m.read(-1, 4), StrataError);
});

test('file source matches the file; cache returns identical bytes and bounds its size', async () => {
  const dir = scratch('io');
  const f = path.join(dir, 'disk.raw');
  writePatternDisk(f, 3 * 1024 * 1024 + 123, 7);
  const want = readFileSync(f);
  const fsrc = await FileSource.open(f);
  assert.equal(fsrc.size, want.length);
  const cached = new CachedSource(fsrc, { blockSize: 64 * 1024, capacity: 256 * 1024 });
  for (const [o, l] of [
    [0, 10],
    [65530, 20],
    [100_000, 300_000],
    [want.length - 7, 100],
    [1_000_000, 1],
  ]) {
    assert.deepEqual(Buffer.from(await cached.read(o, l)), want.subarray(o, o + l), `range ${o}+${l}`);
  }
  assert.ok(
    (cached as unknown as { blocks: Map<number, unknown> }).blocks.size <= 4,
    'cache keeps at most capacity/blockSize blocks',
  );
  const all = await fsrc.read(0, want.length);
  assert.equal(sha256(all), sha256(want));
  await cached.close();
  await assert.rejects(FileSource.open(path.join(dir, 'missing')), (e: StrataError) => e.code === 'NOT_FOUND');
});

test('file source: small reads done in place and large ones on the pool agree with the file, also after a slow read', async () => {
  const dir = scratch('io-sync');
  const f = path.join(dir, 'disk.raw');
  writePatternDisk(f, 1024 * 1024 + 77, 11);
  const want = readFileSync(f);
  const fsrc = await FileSource.open(f);
  const K = 64 * 1024;
  const ranges: Array<[number, number]> = [
    [0, 1],
    [4096, 4096],
    [5, K - 1],
    [7, K],
    [9, K + 1],
    [want.length - 3, 4096],
    [want.length + 10, 4],
  ];
  const check = async () => {
    // in flight together: in-place reads resolve at once, pool reads later; each must get its own bytes
    const got = await Promise.all(ranges.map(([o, l]) => fsrc.read(o, l)));
    for (const [i, [o, l]] of ranges.entries())
      assert.deepEqual(Buffer.from(got[i]), want.subarray(o, o + l), `read ${o}+${l}`);
    for (const [o, l] of ranges) {
      const out = Buffer.alloc(l, 0xee);
      const n = await fsrc.readInto(o, out);
      assert.equal(n, Math.max(0, Math.min(l, want.length - o)));
      assert.deepEqual(out.subarray(0, n), want.subarray(o, o + n), `readInto ${o}+${l}`);
    }
  };
  await check();
  // a read that came from the disk (a fault this machine cannot make on demand: every file
  // here is in the page cache) sends the next reads to the pool; they read the same bytes
  const s = fsrc as unknown as { backoff: number };
  s.backoff = 5;
  const pending = ranges.map(([o, l]) => fsrc.read(o, l));
  // the five small non-empty reads were issued (synchronously) and each spent one pool read
  assert.equal(s.backoff, 0);
  const got = await Promise.all(pending);
  for (const [i, [o, l]] of ranges.entries())
    assert.deepEqual(Buffer.from(got[i]), want.subarray(o, o + l), `read ${o}+${l}`);
  await check();
  await fsrc.close();
});

test('http range source reads a served file without downloading it whole', async () => {
  const dir = scratch('http');
  const f = path.join(dir, 'disk.raw');
  writePatternDisk(f, 2 * 1024 * 1024, 3);
  const data = readFileSync(f);
  let served = 0;
  const server = createServer((req, res) => {
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
    if (!m) {
      res.writeHead(200, { 'content-length': data.length });
      res.end(data);
      return;
    }
    const s = Number(m[1]);
    const e = Math.min(Number(m[2]), data.length - 1);
    served += e - s + 1;
    res.writeHead(206, { 'content-range': `bytes ${s}-${e}/${data.length}`, 'content-length': e - s + 1 });
    res.end(data.subarray(s, e + 1));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const port = (server.address() as { port: number }).port;
    const h = await HttpSource.open(`http://127.0.0.1:${port}/disk.raw`);
    assert.equal(h.size, data.length);
    assert.deepEqual(Buffer.from(await h.read(123_456, 1000)), data.subarray(123_456, 124_456));
    assert.ok(served < 2000, `served ${served} bytes for two small reads`);
    await assert.rejects(HttpSource.open(`http://127.0.0.1:${port + 0}/x`.replace(String(port), '1')), StrataError);
  } finally {
    server.close();
  }
  writeFileSync(path.join(dir, 'done'), '');
});

test('checksums match published check values', () => {
  const check = new TextEncoder().encode('123456789');
  assert.equal(crc32(check), 0xcbf43926);
  assert.equal(crc32c(check), 0xe3069283);
});
