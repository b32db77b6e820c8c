/**
 * diffManifests (the fast path of `strata diff REF REF`) gives exactly what the general
 * diffTrees gives over the same manifests read as FileTrees (manifestTree), on seeded random
 * pairs full of the awkward cases: type changes, equal sizes with other digests, missing
 * digests, times that differ as text but not as instants (or do not parse), xattrs absent vs
 * empty, reordered, or the same bytes in other base64, directory sizes, symlink targets.
 * diffLayouts (--blocks) counts what a set of block numbers per kind counts, on random
 * unaligned layouts, read whole (version 1) and a few ranges a part (version 2, whose ranges
 * name chunks of earlier parts). The real trees are checked against host oracles in version-diff.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { diffTrees } from '../../src/inspect/tree-diff.js';
import {
  FILES_KIND,
  type FileEntry,
  type FilesManifest,
  LAYOUT_KIND,
  type LayoutManifest,
  type LayoutManifestHead,
} from '../../src/library/manifest.js';
import { diffLayouts, diffManifests, manifestTree } from '../../src/library/version-diff.js';
import { PartedVersionSource, type RangedSource, VersionSource } from '../../src/library/version-source.js';
import { xorshift32 } from '../../src/util/prng.js';

const manifest = (entries: FileEntry[]): FilesManifest => ({
  kind: FILES_KIND,
  version: 1,
  volume: '',
  fsKind: 'ext4',
  fileChunkSize: 1 << 20,
  entries,
});

const TYPES = ['file', 'dir', 'symlink', 'chardev', 'fifo'];
const TIMES = [
  null,
  '2024-01-02T03:04:05.000000000Z',
  '2024-01-02T03:04:05Z', // the same instant as above, other text
  '2024-01-02T03:04:05.000000001Z',
  '2024-01-02T03:04:06.000000000Z',
  'not a time',
  '',
];
const XATTRS: Array<Record<string, string> | undefined> = [
  undefined,
  {},
  { 'user.a': 'YQ==' },
  { 'user.a': 'YQ' }, // the same byte, unpadded base64
  { 'user.a': 'Yg==' },
  { 'user.a': 'YQ==', 'security.selinux': 'c3lzdGVt' },
  { 'security.selinux': 'c3lzdGVt', 'user.a': 'YQ==' }, // same set, other order
  { 'user.b': 'YQ==' },
];
const DIGESTS = [undefined, '', 'a'.repeat(64), 'b'.repeat(64)];

function randomPair(seed: number): [FilesManifest, FilesManifest] {
  const r = xorshift32(seed);
  const pick = <T>(xs: readonly T[]): T => xs[r() % xs.length];
  const entry = (path: string): FileEntry => {
    const type = pick(TYPES);
    const e: FileEntry = {
      path,
      type,
      mode: pick([0o644, 0o755, 0o600]),
      uid: pick([0, 1000]),
      gid: pick([0, 1000]),
      size: pick([0, 7, 4096]),
      nlink: 1,
      ino: r() % 1000,
      mtime: pick(TIMES),
    };
    const x = pick(XATTRS);
    if (x !== undefined) e.xattrs = { ...x };
    if (type === 'symlink') e.target = pick(['a', 'b', '../a']);
    if (type === 'file') {
      const d = pick(DIGESTS);
      if (d !== undefined) e.digest = d;
    }
    return e;
  };
  const a: FileEntry[] = [{ ...entry('/'), type: 'dir' }];
  const b: FileEntry[] = [{ ...entry('/'), type: 'dir' }];
  for (let i = 0; i < 300; i++) {
    const path = `/d${i % 7}/f${i}`;
    const ea = entry(path);
    const roll = r() % 10;
    if (roll === 0) {
      a.push(ea); // removed
    } else if (roll === 1) {
      b.push(entry(path)); // added
    } else if (roll === 2) {
      a.push(ea);
      b.push(entry(path)); // anything may differ
    } else {
      a.push(ea);
      const eb: FileEntry = { ...ea };
      // one field at a time, or nothing
      const f = r() % 8;
      if (f === 0) eb.mode = ea.mode ^ 0o100;
      else if (f === 1) eb.mtime = pick(TIMES);
      else if (f === 2) {
        const x = pick(XATTRS);
        if (x === undefined) delete eb.xattrs;
        else eb.xattrs = { ...x };
      } else if (f === 3) eb.size = ea.size + 1;
      else if (f === 4 && ea.type === 'file') eb.digest = pick(DIGESTS);
      else if (f === 5 && ea.type === 'symlink') eb.target = `${ea.target}x`;
      else if (f === 6) eb.ino = ea.ino + 1; // not compared
      b.push(eb);
    }
  }
  // manifests list entries in walk order; the diff must not depend on it
  for (const xs of [a, b])
    for (let i = xs.length - 1; i > 0; i--) {
      const j = r() % (i + 1);
      [xs[i], xs[j]] = [xs[j], xs[i]];
    }
  return [manifest(a), manifest(b)];
}

test('diffManifests equals diffTrees over manifestTree, field for field and in key order', async () => {
  let seen = { added: 0, removed: 0, changed: 0, metadata: 0 };
  for (let seed = 1; seed <= 200; seed++) {
    const [a, b] = randomPair(seed);
    const want = await diffTrees(manifestTree(a), manifestTree(b));
    const got = diffManifests(a, b);
    assert.deepEqual(got, want, `seed ${seed}`);
    assert.equal(JSON.stringify(got), JSON.stringify(want), `seed ${seed}`);
    const s = got.summary;
    seen = {
      added: seen.added + s.added,
      removed: seen.removed + s.removed,
      changed: seen.changed + s.changed,
      metadata: seen.metadata + s.metadata,
    };
  }
  for (const [k, n] of Object.entries(seen)) assert.ok(n > 100, `${k}: ${n}`);
});

test('diffManifests: the awkward cases say what they should', () => {
  const base: FileEntry = {
    path: '/f',
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 1,
    nlink: 1,
    ino: 12,
    mtime: '2024-01-02T03:04:05.000000000Z',
    digest: 'a'.repeat(64),
  };
  const one = (a: Partial<FileEntry>, b: Partial<FileEntry>) =>
    diffManifests(manifest([{ ...base, ...a }]), manifest([{ ...base, ...b }]));
  assert.equal(one({}, { mtime: '2024-01-02T03:04:05Z' }).summary.metadata, 0);
  assert.deepEqual(one({}, { mtime: '2024-01-02T03:04:05.000000001Z' }).metadata[0].fields, ['mtime']);
  assert.equal(one({}, { mtime: null }).summary.metadata, 0);
  assert.equal(one({ xattrs: { 'user.a': 'YQ' } }, { xattrs: { 'user.a': 'YQ==' } }).summary.metadata, 0);
  assert.equal(one({ xattrs: {} }, {}).summary.metadata, 0);
  assert.deepEqual(one({ xattrs: { 'user.a': 'YQ==' } }, { xattrs: { 'user.a': 'Yg==' } }).metadata[0].fields, [
    'xattrs',
  ]);
  assert.equal(one({ digest: undefined }, { digest: undefined }).summary.changed, 0);
  assert.equal(one({ digest: undefined }, {}).summary.changed, 1);
  assert.equal(one({ type: 'dir', size: 4096 }, { type: 'dir', size: 8192 }).summary.changed, 0);
  assert.deepEqual(one({}, { type: 'symlink', target: 'x' }).changed[0], {
    path: '/f',
    type: 'file->symlink',
    sizeA: 1,
    sizeB: 1,
  });
});

/** The measure as first written (a set of block numbers per kind): the model diffLayouts must match. */
function layoutsModel(a: LayoutManifest, b: LayoutManifest) {
  const pieces = (m: LayoutManifest) =>
    m.ranges.disk.map((d, i) => ({
      disk: d,
      length: m.ranges.length[i],
      chunk: m.chunks[m.ranges.chunk[i]],
      at: m.ranges.at[i],
    }));
  const [pa, pb] = [pieces(a), pieces(b)];
  const chunksA = new Set(a.chunks);
  const bs = b.volumes.find((v) => v.fs)?.fs?.blockSize ?? 4096;
  const used = new Set<number>();
  const write = new Set<number>();
  const notShared = new Set<number>();
  const mark = (set: Set<number>, from: number, to: number) => {
    for (let k = Math.floor(from / bs); k * bs < to; k++) set.add(k);
  };
  let j = 0;
  for (const x of pb) {
    const end = x.disk + x.length;
    mark(used, x.disk, end);
    if (!chunksA.has(x.chunk)) mark(notShared, x.disk, end);
    while (j < pa.length && pa[j].disk + pa[j].length <= x.disk) j++;
    let at = x.disk;
    for (let k = j; k < pa.length && pa[k].disk < end; k++) {
      const y = pa[k];
      if (y.chunk !== x.chunk || y.at - y.disk !== x.at - x.disk) continue;
      const s = Math.max(x.disk, y.disk);
      if (s > at) mark(write, at, s);
      at = Math.max(at, Math.min(end, y.disk + y.length));
    }
    if (at < end) mark(write, at, end);
  }
  let shared = 0;
  for (const k of used) if (!notShared.has(k)) shared++;
  return {
    blockSize: bs,
    usedBlocks: used.size,
    usedBytes: used.size * bs,
    writeBlocks: write.size,
    writeBytes: write.size * bs,
    writeShare: used.size === 0 ? 0 : write.size / used.size,
    sharedBytes: shared * bs,
  };
}

/** A layout of sorted, non-overlapping ranges at unaligned offsets over a few shared chunks. */
function randomLayout(r: () => number, chunks: string[]): LayoutManifest {
  const size = 1 << 22;
  const ranges = { disk: [] as number[], length: [] as number[], chunk: [] as number[], at: [] as number[] };
  const lengths = chunks.map(() => 1 << 16);
  for (let d = r() % 5000; d < size - (1 << 16); ) {
    const n = 1 + (r() % 20000);
    ranges.disk.push(d);
    ranges.length.push(n);
    ranges.chunk.push(r() % chunks.length);
    ranges.at.push(r() % ((1 << 16) - n + 1));
    d += n + (r() % 3 === 0 ? 0 : r() % 9000);
  }
  return {
    kind: LAYOUT_KIND,
    version: 1,
    virtualSize: size,
    sourceName: 'x',
    sourceFormat: 'raw',
    scheme: 'none',
    exact: false,
    fileChunkSize: 1 << 20,
    diskChunkSize: 1 << 16,
    volumes: [
      {
        id: '',
        scheme: 'none',
        type: 'fs',
        start: 0,
        size,
        fs: { kind: 'ext4', blockSize: 1024 << (r() % 3), files: 'f', fileCount: 0, usedBytes: 0, fileDataBytes: 0 },
      },
    ],
    chunks,
    chunkLengths: lengths,
    ranges,
    warnings: [],
  };
}

const noStore = {
  withBlob: async () => {
    throw new Error('diffLayouts reads no chunk');
  },
};

/** `m` as a version 2 layout of `per` chunks and ranges a part (its parts decoded from `m`'s columns). */
function parted(m: LayoutManifest, per: number): RangedSource {
  const parts = Math.max(1, Math.ceil(Math.max(m.chunks.length, m.ranges.disk.length) / per));
  const { chunks, chunkLengths, ranges, version, ...rest } = m;
  const head: LayoutManifestHead = {
    ...rest,
    version: 2,
    chunkCount: chunks.length,
    rangeCount: ranges.disk.length,
    partEntries: per,
    parts: Array.from({ length: parts }, (_, i) => `part${i}`),
    partDisk: Array.from({ length: parts }, (_, i) => ranges.disk[i * per] ?? m.virtualSize),
  };
  const cut = <T>(l: T[], i: number) => l.slice(i * per, (i + 1) * per);
  return new PartedVersionSource(
    noStore,
    head,
    async (i) => ({
      kind: 'strata.layout-part',
      version: 1,
      chunks: cut(chunks, i),
      chunkLengths: cut(chunkLengths, i),
      ranges: {
        disk: cut(ranges.disk, i),
        length: cut(ranges.length, i),
        chunk: cut(ranges.chunk, i),
        at: cut(ranges.at, i),
      },
    }),
    'parted',
  );
}

test('diffLayouts counts the blocks the set-per-kind model counts', async () => {
  for (let seed = 1; seed <= 100; seed++) {
    const r = xorshift32(seed);
    // digests, as a version 2 part's chunk list must hold
    const names = (p: string, n: number) =>
      Array.from({ length: n }, (_, i) => createHash('sha256').update(`${p}${i}`).digest('hex'));
    const a = randomLayout(r, names('c', 4));
    const b = randomLayout(r, [...names('c', 2), ...names('d', 2)]);
    // A holds some of B's ranges identically (same chunk at the same place)
    for (let i = 0; i < b.ranges.disk.length; i += 3) {
      const k = a.ranges.disk.findIndex((d, x) => d <= b.ranges.disk[i] && d + a.ranges.length[x] > b.ranges.disk[i]);
      if (k >= 0) {
        b.ranges.chunk[i] = b.chunks.indexOf(a.chunks[a.ranges.chunk[k]]);
        if (b.ranges.chunk[i] < 0) b.ranges.chunk[i] = 0;
      }
    }
    for (const [x, y] of [
      [a, b],
      [b, a],
      [a, a],
    ]) {
      const want = layoutsModel(x, y);
      assert.deepEqual(
        await diffLayouts(new VersionSource(noStore, x, 'x'), new VersionSource(noStore, y, 'y')),
        want,
        `seed ${seed}`,
      );
      // a part of 3 chunks and ranges: B's and A's ranges cross parts, name chunks of earlier ones
      assert.deepEqual(await diffLayouts(parted(x, 3), parted(y, 3)), want, `seed ${seed}, in parts`);
    }
  }
});
