import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BlobMap, type IndexEntry } from '../../src/store/blob-map.js';
import { tempDir } from '../library/images.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const entry = (i: number): IndexEntry => ({
  pack: sha(`pack ${i % 37}`),
  type: i % 5 === 0 ? 'tree' : 'data',
  flags: i % 2,
  offset: i * 4099 + 2 ** 33,
  encLength: (i * 31) % 100_000,
  framePlain: 200_000 + (i % 1000),
  at: i % 1000,
  plainLength: 1 + (i % 5000),
});

test('BlobMap past its spill point behaves as a Map: set, overwrite, delete, re-add, iteration order, clear', () => {
  // tableEntries: the older entries in the sorted index file (issue 22), from every 1 to every 700
  for (const [spillAfter, tableEntries] of [
    [1_000_000, undefined],
    [300, undefined],
    [57, undefined],
    [1_000_000, 700],
    [300, 33],
    [57, 1],
  ]) {
    const m = new BlobMap({ spillAfter, tableEntries });
    const oracle = new Map<string, IndexEntry>();
    let x = 7;
    const rand = (n: number) => {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      return x % n;
    };
    for (let step = 0; step < 20_000; step++) {
      const i = rand(6000);
      const d = sha(`blob ${i}`);
      const op = rand(10);
      if (op < 6) {
        const e = entry(i + step);
        m.set(d, e);
        // a Map moves nothing on overwrite; a re-set after delete goes to the end: the same for both
        oracle.set(d, e);
      } else if (op < 8) {
        assert.equal(m.delete(d), oracle.delete(d));
      } else {
        assert.deepEqual(m.get(d), oracle.get(d));
        assert.equal(m.has(d), oracle.has(d));
      }
      if (step % 5000 === 4999) {
        assert.equal(m.size, oracle.size);
        assert.deepEqual(
          [...m.entries()],
          [...oracle.entries()],
          `spillAfter ${spillAfter}, tableEntries ${tableEntries}: iteration at step ${step}`,
        );
      }
    }
    assert.equal(m.has('nothex'), false);
    assert.equal(m.get(sha('never')), undefined);
    m.clear();
    assert.equal(m.size, 0);
    assert.deepEqual([...m.keys()], []);
    for (let i = 0; i < 2000; i++) m.set(sha(`again ${i}`), entry(i));
    assert.deepEqual(m.get(sha('again 1999')), entry(1999));
    assert.equal([...m.values()].length, 2000);
    m.close();
  }
});

const childJs = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'index-child.js');

test('a store of 300,000 blobs opens with a 64 MB heap and ~6 bytes a blob resident; every lookup matches its index file', () => {
  const root = tempDir('blob-index-many');
  mkdirSync(path.join(root, 'index'), { recursive: true });
  const n = 300_000;
  const perFile = 10_000;
  for (let f = 0; f < n / perFile; f++) {
    const blobs: unknown[] = [];
    for (let i = f * perFile; i < (f + 1) * perFile; i++) {
      const e = entry(i);
      blobs.push([sha(`blob ${i}`), e.type, e.offset, e.encLength, e.framePlain, e.at, e.plainLength, e.flags]);
    }
    // a duplicate (a second copy in another pack, as a killed prune leaves): the first file's entry wins
    if (f > 0) blobs.push([sha(`blob ${f}`), 'data', 1, 2, 3, 0, 3, 0]);
    // plain JSON (an index file may be zstd or not): written here, not by the store's encoder
    const body = Buffer.from(JSON.stringify({ version: 2, packs: [{ id: sha(`pack file ${f}`), blobs }] }));
    writeFileSync(path.join(root, 'index', createHash('sha256').update(body).digest('hex')), body);
  }
  const out = execFileSync(process.execPath, ['--expose-gc', '--max-old-space-size=64', childJs, root], {
    encoding: 'utf8',
  });
  const r = JSON.parse(out) as Record<string, number>;
  assert.equal(r.blobs, n);
  assert.equal(r.size, n);
  assert.equal(r.iterated, n);
  assert.equal(r.mismatches, 0);
  assert.equal(r.absentFound, 0);
  // the slots (4 bytes each at a load of 0.6-0.75) and a fixed ~1.1 MiB of buffers; before, ~80 bytes a blob (24 MB)
  assert.ok(r.arrayBuffers < 8 * n + 2 * 2 ** 20, `ArrayBuffers grew by ${r.arrayBuffers} bytes for ${n} blobs`);
  assert.ok(r.heap < 8 * 2 ** 20, `heap grew by ${r.heap} bytes`);
});
