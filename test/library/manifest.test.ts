import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeLayoutHead, decodeManifest, LAYOUT_KIND, type LayoutManifest } from '../../src/library/manifest.js';
import { StrataError } from '../../src/util/errors.js';
import { mutate, prng } from '../helpers/fuzz.js';

/** A hostile or damaged layout manifest is refused with CORRUPT naming the structure, never trusted. */
const good: LayoutManifest = {
  kind: LAYOUT_KIND,
  version: 1,
  virtualSize: 1 << 20,
  sourceName: 'x',
  sourceFormat: 'raw',
  scheme: 'none',
  exact: false,
  fileChunkSize: 1 << 20,
  diskChunkSize: 65536,
  volumes: [],
  chunks: ['a'.repeat(64)],
  chunkLengths: [8192],
  ranges: { disk: [0, 8192], length: [4096, 4096], chunk: [0, 0], at: [0, 4096] },
  warnings: [],
};
const enc = (m: unknown) => Buffer.from(JSON.stringify(m));

test('layout manifests: a good one decodes; bad ranges, chunks and kinds fail with CORRUPT', () => {
  assert.equal(decodeManifest<LayoutManifest>(enc(good), LAYOUT_KIND, 'm').ranges.disk.length, 2);
  const bad: Array<[string, unknown]> = [
    ['not JSON', '{'],
    ['wrong kind', { ...good, kind: 'strata.files' }],
    ['range past the disk', { ...good, ranges: { ...good.ranges, disk: [0, (1 << 20) - 100] } }],
    ['overlapping ranges', { ...good, ranges: { ...good.ranges, disk: [0, 100] } }],
    ['range past its chunk', { ...good, ranges: { ...good.ranges, at: [0, 6000] } }],
    ['chunk index out of range', { ...good, ranges: { ...good.ranges, chunk: [0, 7] } }],
    ['columns of different lengths', { ...good, ranges: { ...good.ranges, at: [0] } }],
    ['negative size', { ...good, virtualSize: -1 }],
  ];
  for (const [why, m] of bad) {
    assert.throws(
      () => decodeManifest(typeof m === 'string' ? Buffer.from(m) : enc(m), LAYOUT_KIND, 'manifest x'),
      (e: Error & { code?: string; structure?: string }) => {
        assert.equal(e.code, 'CORRUPT', why);
        assert.match(e.message, /manifest x/, why);
        return true;
      },
      why,
    );
  }
});

/** What decodeLayoutHead must answer: Node's JSON.parse of the whole manifest, its three columns left out. */
function headByParse(bytes: Uint8Array): Record<string, unknown> {
  const { chunks: _c, chunkLengths: _l, ranges: _r, ...head } = JSON.parse(Buffer.from(bytes).toString('utf8'));
  return head;
}

// volumes and warnings whose strings hold brackets, braces, quotes, escapes and non-ASCII
const tricky: LayoutManifest = {
  ...good,
  sourceName: 'dir/"disk" [1] {a}.qcow2',
  volumes: [
    {
      id: 'p1',
      scheme: 'gpt',
      type: 'linux',
      start: 1048576,
      size: 4096,
      content: 'ext4 \\ ]} "x" \u00e9 é ☃',
      fs: { kind: 'ext4', blockSize: 4096, files: 'b'.repeat(64), fileCount: 3, usedBytes: 1, fileDataBytes: 2 },
    },
  ],
  chunks: ['a'.repeat(64), 'c'.repeat(64)],
  chunkLengths: [8192, 10],
  warnings: ['[unbalanced', 'brace}', 'quote \\" end'],
};

test('layout manifest head: every member but the chunk and range columns, as JSON.parse reads them', () => {
  for (const m of [good, tricky]) {
    for (const bytes of [enc(m), Buffer.from(JSON.stringify(m, null, 2)), Buffer.from(` ${JSON.stringify(m)}\n`)]) {
      assert.deepEqual(decodeLayoutHead(bytes, 'm'), headByParse(bytes));
    }
  }
  // members in another order, columns first or last
  const { chunks, chunkLengths, ranges, ...rest } = tricky;
  for (const m of [
    { chunks, chunkLengths, ranges, ...rest },
    { ...rest, ranges, chunkLengths, chunks },
  ]) {
    assert.deepEqual(decodeLayoutHead(enc(m), 'm'), headByParse(enc(m)));
  }
  for (const [why, text] of [
    ['not JSON', '{'],
    ['not an object', '[1]'],
    ['wrong kind', JSON.stringify({ ...good, kind: 'strata.files' })],
    ['no volumes', JSON.stringify({ ...good, volumes: undefined })],
    ['unterminated column', JSON.stringify(good).replace(/\]\}$/, '')],
    ['bytes after', `${JSON.stringify(good)} x`],
  ]) {
    assert.throws(
      () => decodeLayoutHead(Buffer.from(text), 'manifest x'),
      (e: Error & { code?: string }) =>
        e instanceof StrataError && e.code === 'CORRUPT' && /manifest x/.test(e.message),
      why,
    );
  }
});

test('layout manifest head: mutated manifests decode as JSON.parse reads them or fail with CORRUPT', () => {
  const base = enc(tricky);
  const rand = prng(22);
  let decoded = 0;
  let refused = 0;
  for (let i = 0; i < 4000; i++) {
    const bytes = mutate(base, [[0, base.length]], rand);
    let want: Record<string, unknown> | undefined;
    try {
      want = headByParse(bytes);
      if (want.kind !== LAYOUT_KIND || want.version !== 1 || !Array.isArray(want.volumes)) want = undefined;
    } catch {
      want = undefined;
    }
    try {
      const got = decodeLayoutHead(bytes, 'm');
      // the scan skips the columns without checking they are JSON (decodeManifest does when they are read)
      if (want) assert.deepEqual(got, want, `case ${i}`);
      decoded++;
    } catch (e) {
      assert.ok(e instanceof StrataError && e.code === 'CORRUPT', `case ${i}: ${(e as Error).message}`);
      assert.equal(want, undefined, `case ${i}: refused what JSON.parse reads: ${(e as Error).message}`);
      refused++;
    }
  }
  assert.ok(decoded > 100 && refused > 100, `${decoded} decoded, ${refused} refused`);
});

test('layout manifest in parts (version 2): joined as version 1; bad heads and parts fail with CORRUPT', async () => {
  const { isLayoutHead, readLayout, LAYOUT_PART_KIND } = await import('../../src/library/manifest.js');
  const d = (n: number) => n.toString(16).padStart(64, '0');
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o));
  // three chunks, four ranges, parts of two
  const parts = [
    {
      kind: LAYOUT_PART_KIND,
      version: 1,
      chunks: [d(1), d(2)],
      chunkLengths: [4096, 8192],
      ranges: { disk: [0, 8192], length: [4096, 4096], chunk: [0, 1], at: [0, 0] },
    },
    {
      kind: LAYOUT_PART_KIND,
      version: 1,
      chunks: [d(3)],
      chunkLengths: [4096],
      ranges: { disk: [16384, 20480], length: [4096, 4096], chunk: [1, 2], at: [4096, 0] },
    },
  ];
  const head = {
    kind: LAYOUT_KIND,
    version: 2,
    virtualSize: 1 << 20,
    sourceName: 'x.img',
    sourceFormat: 'raw',
    scheme: 'none',
    exact: false,
    fileChunkSize: 1 << 20,
    diskChunkSize: 65536,
    volumes: [],
    chunkCount: 3,
    rangeCount: 4,
    partEntries: 2,
    parts: [d(10), d(11)],
    partDisk: [0, 16384],
    warnings: ['w'],
  };
  const blobs = new Map([
    [d(10), enc(parts[0])],
    [d(11), enc(parts[1])],
  ]);
  const get = async (x: string) => blobs.get(x) as Uint8Array;
  assert.ok(isLayoutHead(enc(head)));
  const m = await readLayout(enc(head), 'h', get);
  assert.equal(
    JSON.stringify(m),
    JSON.stringify({
      kind: LAYOUT_KIND,
      version: 1,
      virtualSize: 1 << 20,
      sourceName: 'x.img',
      sourceFormat: 'raw',
      scheme: 'none',
      exact: false,
      fileChunkSize: 1 << 20,
      diskChunkSize: 65536,
      volumes: [],
      chunks: [d(1), d(2), d(3)],
      chunkLengths: [4096, 8192, 4096],
      ranges: {
        disk: [0, 8192, 16384, 20480],
        length: [4096, 4096, 4096, 4096],
        chunk: [0, 1, 1, 2],
        at: [0, 0, 4096, 0],
      },
      warnings: ['w'],
    }),
  );
  assert.equal(decodeLayoutHead(enc(head), 'h').volumes.length, 0);
  const corrupt = async (h: unknown, get2 = get) =>
    assert.rejects(readLayout(enc(h), 'h', get2), (e) => e instanceof StrataError && e.code === 'CORRUPT');
  await corrupt({ ...head, parts: [d(10)] }); // one part short of the counts
  await corrupt({ ...head, partDisk: [16384, 0] }); // offsets out of order
  await corrupt({ ...head, partDisk: [0, 8192] }); // part 1 starts elsewhere
  await corrupt({ ...head, partEntries: 0 });
  await corrupt({ ...head, chunkCount: -1 });
  await corrupt(head, async (x) => (x === d(11) ? enc({ ...parts[1], chunks: [] }) : get(x))); // a part short
  await corrupt(head, async (x) => (x === d(11) ? enc({ ...parts[1], kind: 'strata.files-part' }) : get(x)));
  await corrupt(head, async (x) => (x === d(11) ? Buffer.from('{"kind":') : get(x))); // not JSON
  // a range past its chunk (the joined columns are checked as version 1's are)
  await corrupt(head, async (x) =>
    x === d(11) ? enc({ ...parts[1], ranges: { ...parts[1].ranges, at: [8192, 0] } }) : get(x),
  );
});
