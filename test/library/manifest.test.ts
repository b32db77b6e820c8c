import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeManifest, LAYOUT_KIND, type LayoutManifest } from '../../src/library/manifest.js';

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
