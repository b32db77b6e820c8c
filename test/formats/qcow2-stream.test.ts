import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { planQcow2Stream, planQcow2StreamOf, qcow2StreamBytes } from '../../src/formats/writers/qcow2-stream.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

/**
 * The streamed qcow2 layout (header, L1, refcount table and blocks, L2 tables, data, all
 * placed before a byte is sent) against qemu-img: `check` finds no leaks or errors and
 * `compare` reads the same disk as a raw file holding the same extents. Small clusters make
 * many L2 tables, L1 clusters and refcount blocks; a 64 KiB-cluster disk of 6 GiB has data
 * past 4 GiB (L1 entries beyond the first table's reach) and a partial last cluster.
 */
async function roundTrip(name: string, size: number, extents: Array<[number, number]>, clusterSize: number) {
  const dir = tempDir(`qcow2-stream-${name}`);
  const raw = path.join(dir, 'disk.raw');
  const fd = openSync(raw, 'w');
  for (const [off, len] of extents) writeSync(fd, randomBytes(len), 0, len, off);
  closeSync(fd);
  // the raw file's size is the disk's (sparse)
  truncateSync(raw, size);
  const plan = planQcow2Stream(size, extents, clusterSize);
  const read = async (off: number, out: Uint8Array) => {
    const f = openSync(raw, 'r');
    try {
      readSync(f, out, 0, Math.max(0, Math.min(out.length, size - off)), off);
    } finally {
      closeSync(f);
    }
  };
  const q = path.join(dir, 'disk.qcow2');
  const parts: Uint8Array[] = [];
  for await (const b of qcow2StreamBytes(plan, read)) parts.push(Buffer.from(b));
  const whole = Buffer.concat(parts);
  assert.equal(whole.length, plan.size);
  writeFileSync(q, whole);
  await run('qemu-img', ['check', '-f', 'qcow2', q]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, q]);
  const map = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', q])) as Array<{
    start: number;
    length: number;
    data: boolean;
  }>;
  // data exactly where the extents' clusters are
  let mapped = 0;
  for (const e of map) if (e.data) mapped += e.length;
  let want = 0;
  for (const c of plan.clusters) want += Math.min(clusterSize, plan.virtualSize - c * clusterSize);
  assert.equal(mapped, want);
  // any range of the stream is the same bytes as the whole
  const a = Math.floor(plan.size / 3) + 5;
  const b = plan.size - 11;
  const piece: Uint8Array[] = [];
  for await (const x of qcow2StreamBytes(plan, read, a, b)) piece.push(Buffer.from(x));
  const sha = (x: Uint8Array) => createHash('sha256').update(x).digest('hex');
  assert.equal(sha(Buffer.concat(piece)), sha(whole.subarray(a, b)));
  return plan;
}

test('512-byte clusters: many L2 tables, L1 clusters and refcount blocks', async () => {
  const MiB = 1 << 20;
  const extents: Array<[number, number]> = [];
  for (let i = 0; i < 40; i++) extents.push([i * 1.5 * MiB + (i % 7) * 4096 + 512, 20_000 + i * 1000]);
  const plan = await roundTrip('small', 64 * MiB + 1000, extents, 512);
  assert.ok(plan.l2Tables.length > 30, `${plan.l2Tables.length} L2 tables`);
  assert.ok(plan.rbClusters > 3, `${plan.rbClusters} refcount blocks`);
  assert.ok(plan.l1Clusters > 3, `${plan.l1Clusters} L1 clusters`);
});

test('64 KiB clusters on a 6 GiB disk: data past 4 GiB, last partial cluster', async () => {
  const GiB = 1 << 30;
  const size = 6 * GiB - 4096;
  const extents: Array<[number, number]> = [
    [0, 70_000],
    [GiB + 12345, 200_000],
    [4 * GiB + 65536, 300_000],
    [size - 5000, 5000],
  ];
  const plan = await roundTrip('large', size, extents, 65536);
  assert.ok(plan.l2Tables.length === 4);
});

test('an empty disk is a valid qcow2 with nothing allocated', async () => {
  const plan = await roundTrip('empty', 10 << 20, [], 65536);
  assert.equal(plan.clusters.length, 0);
});

test('a plan from spans merged a cluster at a time is the plan from every span', async () => {
  // many small spans, several in one cluster, some across boundaries, a short last cluster
  const size = 40 * 65536 + 3000;
  const spans: Array<[number, number]> = [];
  let at = 100;
  for (let i = 0; at < size - 5000; i++) {
    const len = 1 + ((i * 7919) % 90000);
    spans.push([at, Math.min(size, at + len)]);
    at += len + ((i * 104729) % 200000);
  }
  spans.push([size - 10, size]);
  const each = planQcow2Stream(
    size,
    spans.map(([a, b]) => [a, b - a] as const),
  );
  async function* gen() {
    yield* spans;
  }
  assert.deepEqual(await planQcow2StreamOf(size, gen()), each);
  assert.ok(each.clusters.length > 10 && each.clusters.length < 41);
  // a span past the disk is still refused
  async function* past() {
    yield [size - 10, size + 100] as const; // past the last 512-byte sector too
  }
  await assert.rejects(planQcow2StreamOf(size, past()), /outside the disk/);
});
