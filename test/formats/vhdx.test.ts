import assert from 'node:assert/strict';
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readFileSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage } from '../../src/formats/open.js';
import { isZero } from '../../src/io/byte-source.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { imageSha as readAllSha } from '../helpers/image-sha.js';
import { type MapRange, mergeMap, qemuMap, qemuMapRaw, strataMap } from '../helpers/qemu-map.js';
import { fixture, run, scratch, sha256 } from '../helpers/tools.js';
import { fixCrc, writeVhdx } from '../helpers/vhdx-writer.js';

const MiB = 1024 * 1024;

/**
 * A pattern disk with whole MiB-aligned ranges zeroed (`holes`: [start, length] in MiB),
 * so that some blocks of the image are never written and the map has zero ranges.
 */
async function patternRaw(size: number, seed: number, holes: Array<[number, number]> = []): Promise<string> {
  const key = holes.map(([s, l]) => `${s}+${l}`).join('_');
  return fixture(`vhdx-pattern-${size}-${seed}-h${key}-v2.raw`, async (out) => {
    writePatternDisk(out, size, seed);
    const fd = openSync(out, 'r+');
    try {
      for (const [s, l] of holes) writeSync(fd, Buffer.alloc(Math.min(l * MiB, size - s * MiB)), 0, undefined, s * MiB);
    } finally {
      closeSync(fd);
    }
  });
}

async function qemuVhdx(raw: string, opts: string[], key: string): Promise<string> {
  const fixed = opts.some((o) => o.includes('subformat=fixed'));
  return fixture(`${key}-v1.vhdx`, async (out) => {
    const args = ['convert', '-f', 'raw', '-O', 'vhdx'];
    if (fixed) args.push('-S', '0');
    for (const o of opts) args.push('-o', o);
    await run('qemu-img', [...args, raw, out]);
  });
}

async function qemuRaw(image: string): Promise<Buffer> {
  const f = await fixture(`${path.basename(image)}-as-raw-v1`, async (out) => {
    await run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', image, out]);
  });
  return readFileSync(f);
}

/**
 * The block-granular map qemu-img convert produces: qemu writes only the non-zero parts
 * of its input, and a dynamic VHDX allocates a whole payload block on the first write
 * into it, so a block is data exactly when the source raw has a non-zero byte in it.
 */
function blockModel(raw: Uint8Array, blockSize: number): MapRange[] {
  const out: Array<{ start: number; length: number; data: boolean }> = [];
  for (let s = 0; s < raw.length; s += blockSize) {
    const e = Math.min(raw.length, s + blockSize);
    out.push({ start: s, length: e - s, data: !isZero(raw.subarray(s, e)) });
  }
  return mergeMap(out);
}

/** Override a map: `data` ranges become data, `zero` ranges become zero. */
function overlay(base: MapRange[], data: Array<[number, number]>, zero: Array<[number, number]> = []): MapRange[] {
  const cuts = new Set<number>();
  for (const r of base) cuts.add(r.start).add(r.start + r.length);
  for (const [s, l] of [...data, ...zero]) cuts.add(s).add(s + l);
  const end = base.length ? base[base.length - 1].start + base[base.length - 1].length : 0;
  const pts = [...cuts].filter((p) => p <= end).sort((a, b) => a - b);
  const out: Array<{ start: number; length: number; data: boolean }> = [];
  for (let i = 0; i + 1 < pts.length; i++) {
    const s = pts[i];
    const inside = (rs: Array<[number, number]>) => rs.some(([a, l]) => s >= a && s < a + l);
    const b = base.find((r) => s >= r.start && s < r.start + r.length);
    out.push({ start: s, length: pts[i + 1] - s, data: inside(data) || (!inside(zero) && !!b?.data) });
  }
  return mergeMap(out);
}

const CASES: Array<{
  name: string;
  size: number;
  opts: string[];
  blockSize: number;
  holes: Array<[number, number]>;
}> = [
  {
    name: 'dynamic-1m',
    size: 7 * MiB + 512,
    opts: ['subformat=dynamic', 'block_size=1M'],
    blockSize: MiB,
    holes: [
      [2, 2],
      [5, 1],
    ],
  },
  {
    name: 'dynamic-32m',
    size: 40 * MiB,
    opts: ['subformat=dynamic', 'block_size=32M'],
    blockSize: 32 * MiB,
    holes: [[0, 32]],
  },
  { name: 'fixed-1m', size: 5 * MiB, opts: ['subformat=fixed', 'block_size=1M'], blockSize: MiB, holes: [[1, 1]] },
  { name: 'dynamic-default', size: 6 * MiB, opts: ['subformat=dynamic'], blockSize: 0, holes: [] },
];

for (const c of CASES) {
  test(`vhdx ${c.name}: every byte agrees with qemu-img convert, the map with qemu-img map`, async () => {
    const raw = await patternRaw(c.size, 71, c.holes);
    const image = await qemuVhdx(raw, c.opts, `vhdx-${c.name}-${c.size}-h${c.holes.join('_')}`);
    const expected = await qemuRaw(image);
    const img = await openImage(image);
    try {
      assert.equal(img.format, 'vhdx');
      assert.equal(img.subformat, c.opts[0].split('=')[1]);
      assert.equal(img.size, expected.length);
      assert.equal(img.size, c.size);
      if (c.blockSize) assert.equal(img.clusterSize, c.blockSize);
      assert.equal(await readAllSha(img), sha256(expected));
      const tail = await img.read(img.size - 4096, 4096);
      assert.deepEqual(Buffer.from(tail), expected.subarray(img.size - 4096));
      assert.deepEqual(img.warnings, []);
      const ours = await strataMap(img);
      // qemu 7.2's vhdx driver has no block-status callback, so `qemu-img map` calls the
      // whole disk data. Where it does (future qemu), compare with it exactly; otherwise
      // check our map against what qemu-img convert wrote: data blocks are exactly the
      // blocks of the source raw holding a non-zero byte (all of them for a fixed disk).
      const q = await qemuMapRaw(image, { format: 'vhdx' });
      if (q.some((e) => !e.data)) assert.deepEqual(ours, await qemuMap(image, { format: 'vhdx' }));
      const srcRaw = readFileSync(raw);
      const want = c.name.startsWith('fixed')
        ? [{ start: 0, length: c.size, data: true, zero: false }]
        : blockModel(srcRaw, img.clusterSize as number);
      assert.deepEqual(ours, want);
      // Whatever we call zero reads as zeros in qemu's conversion.
      for (const r of ours) if (!r.data) assert.ok(isZero(expected.subarray(r.start, r.start + r.length)));
      const d = img.details?.() as Record<string, unknown>;
      assert.equal(d.blockSize, img.clusterSize);
      assert.equal(d.logicalSectorSize, 512);
      assert.equal(d.hasParent, false);
      assert.deepEqual((d.log as { state: string }).state, 'empty');
    } finally {
      await img.close();
    }
  });
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    b[i] = s >>> 24;
  }
  return b;
}

async function parentIn(dir: string): Promise<{ parent: string; parentRaw: Buffer; src: Buffer }> {
  const raw = await patternRaw(6 * MiB, 81, [
    [2, 1],
    [4, 1],
  ]);
  const image = await qemuVhdx(raw, ['subformat=dynamic', 'block_size=1M'], 'vhdx-parent-6m-h2-4');
  const parent = path.join(dir, 'parent.vhdx');
  copyFileSync(image, parent);
  return { parent, parentRaw: await qemuRaw(image), src: readFileSync(raw) };
}

test('vhdx writer: a parent-less image it writes reads the same in qemu-img and Strata', async () => {
  // The outside check of our spec-following writer (qemu cannot open differencing VHDX).
  const dir = scratch('vhdx-writer');
  const f = path.join(dir, 'w.vhdx');
  const size = 5 * MiB;
  const writes = [
    { offset: 3 * 512, data: bytes(5 * 512, 1) },
    { offset: 2 * MiB, data: bytes(MiB, 2) },
    { offset: size - 1024, data: bytes(1024, 3) },
  ];
  writeVhdx(f, { virtualSize: size, writes });
  const expected = Buffer.alloc(size);
  for (const w of writes) expected.set(w.data, w.offset);
  await run('qemu-img', ['check', '-f', 'vhdx', f]);
  const q = path.join(dir, 'w.raw');
  await run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', f, q]);
  assert.equal(sha256(readFileSync(q)), sha256(expected));
  const img = await openImage(f);
  try {
    assert.equal(await readAllSha(img), sha256(expected));
  } finally {
    await img.close();
  }
});

test('vhdx differencing: full, partial (sector bitmap) and zero blocks over a qemu-made parent', async () => {
  const dir = scratch('vhdx-diff');
  const { parent, parentRaw, src } = await parentIn(dir);
  const size = parentRaw.length;
  const writes = [
    { offset: MiB, data: bytes(MiB, 11) }, // all of block 1: FULLY_PRESENT
    { offset: 5 * 512, data: bytes(3 * 512, 12) }, // sectors 5..7 of block 0
    { offset: 100 * 512, data: bytes(31 * 512, 13) }, // sectors 100..130 of block 0
    { offset: size - 1024, data: bytes(1024, 14) }, // the very end
  ];
  const zeroBlocks = [3];
  const child = path.join(dir, 'child.vhdx');
  writeVhdx(child, {
    virtualSize: size,
    writes,
    zeroBlocks,
    parent: { file: parent, relativePath: '.\\parent.vhdx', absoluteWin32Path: 'C:\\vms\\parent.vhdx' },
  });
  const expected = Buffer.from(parentRaw);
  expected.fill(0, 3 * MiB, 4 * MiB);
  for (const w of writes) expected.set(w.data, w.offset);

  const img = await openImage(child);
  try {
    assert.equal(img.subformat, 'differencing');
    assert.equal(img.backing?.name, parent);
    assert.deepEqual(img.backingRef, { path: 'parent.vhdx', format: 'vhdx' });
    assert.deepEqual(img.warnings, []);
    assert.equal(await readAllSha(img), sha256(expected));
    for (const [o, l] of [
      [4 * 512 + 7, 5 * 512],
      [MiB - 300, 900],
      [3 * MiB - 10, 20],
      [size - 1500, 1500],
    ]) {
      assert.deepEqual(Buffer.from(await img.read(o, l)), expected.subarray(o, o + l));
    }
    // Map: the parent's blocks (as qemu-img convert wrote them), overridden by the child.
    const want = overlay(
      blockModel(src, MiB),
      writes.map((w) => [w.offset, w.data.length]),
      zeroBlocks.map((b) => [b * MiB, MiB]),
    );
    assert.deepEqual(await strataMap(img), want);
    const d = img.details?.() as Record<string, unknown>;
    assert.equal(d.hasParent, true);
    assert.equal((d.parentLocator as Record<string, string>).relative_path, '.\\parent.vhdx');
  } finally {
    await closeChain(img);
  }

  // A parent_linkage that does not match the parent's DataWriteGuid is a warning.
  const odd = path.join(dir, 'odd.vhdx');
  writeVhdx(odd, {
    virtualSize: size,
    writes: [{ offset: 0, data: bytes(512, 1) }],
    parent: { file: parent, relativePath: 'parent.vhdx', linkage: '01234567-89ab-cdef-0123-456789abcdef' },
  });
  const o = await openImage(odd);
  try {
    assert.equal(o.warnings.length, 1);
    assert.match(o.warnings[0], /parent_linkage/);
  } finally {
    await closeChain(o);
  }
});

test('vhdx with a log GUID but no log entries: opens with a warning that nothing was replayed', async () => {
  const dir = scratch('vhdx-log');
  const f = path.join(dir, 'dirty.vhdx');
  writeVhdx(f, {
    virtualSize: 4 * MiB,
    writes: [{ offset: MiB, data: bytes(4096, 5) }],
    logGuid: 'deadbeef-0000-4000-8000-00000000f00d',
  });
  const img = await openImage(f);
  try {
    assert.equal(img.warnings.length, 1);
    assert.match(img.warnings[0], /log is not empty.*nothing was replayed/);
    const d = img.details?.() as { log: { state: string } };
    assert.match(d.log.state, /^not replayed/);
    assert.deepEqual(Buffer.from(await img.read(MiB, 4096)), Buffer.from(bytes(4096, 5)));
  } finally {
    await img.close();
  }
});

test('vhdx with a dirty log: replayed in memory, reads what qemu reads after its own replay', async () => {
  const dir = scratch('vhdx-log-replay');
  const f = path.join(dir, 'dirty.vhdx');
  const size = 4 * MiB;
  writeVhdx(f, {
    virtualSize: size,
    writes: [
      { offset: 0, data: bytes(MiB, 21) },
      { offset: MiB, data: bytes(MiB, 22) },
    ],
    logGuid: 'deadbeef-0000-4000-8000-00000000f00d',
    log: (l) => {
      const b1 = l.payloadAt.get(1) as number;
      const batPage = new Uint8Array(4096);
      batPage.set(l.bat.subarray(0, Math.min(4096, l.bat.length)));
      batPage.fill(0, 0, 8); // payload block 0 becomes NOT_PRESENT
      return [
        [{ fileOffset: b1 + 8192, page: bytes(4096, 23) }],
        [
          { fileOffset: l.batOffset, page: batPage },
          { fileOffset: b1 + 65536, zeroLength: 8192 },
        ],
      ];
    },
  });
  const before = sha256(readFileSync(f));
  // What the log says the disk holds.
  const expected = Buffer.alloc(size);
  expected.set(bytes(MiB, 22), MiB);
  expected.set(bytes(4096, 23), MiB + 8192);
  expected.fill(0, MiB + 65536, MiB + 65536 + 8192);

  const img = await openImage(f);
  try {
    assert.equal(img.warnings.length, 1);
    assert.match(img.warnings[0], /2 log entries were replayed in memory/);
    assert.equal(await readAllSha(img), sha256(expected));
  } finally {
    await img.close();
  }
  assert.equal(sha256(readFileSync(f)), before, 'the file itself is never written');

  // qemu replays a dirty log when it opens the image read-write (qemu-io does): the
  // outside oracle for both our log writer and our replay.
  const copy = path.join(dir, 'copy.vhdx');
  copyFileSync(f, copy);
  await run('qemu-io', ['-f', 'vhdx', '-c', 'read 0 512', copy]);
  assert.notEqual(sha256(readFileSync(copy)), before, 'qemu replayed the log into its copy');
  const q = path.join(dir, 'copy.raw');
  await run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', copy, q]);
  assert.equal(sha256(readFileSync(q)), sha256(expected));
});

function isStrata(code: string | undefined, structure: RegExp, file: string) {
  return (e: unknown) => {
    assert.ok(e instanceof StrataError, `expected StrataError, got ${(e as Error)?.stack ?? e}`);
    if (code) assert.equal(e.code, code, e.message);
    assert.ok(e.message.includes(file), `message names the file: ${e.message}`);
    assert.match(e.structure ?? e.message, structure);
    return true;
  };
}

async function openAndReadAll(file: string): Promise<void> {
  const img = await openImage(file);
  try {
    await readAllSha(img);
  } finally {
    await closeChain(img);
  }
}

function patch(src: string, dst: string, edit: (b: Buffer) => void): string {
  const b = readFileSync(src);
  edit(b);
  writeFileSync(dst, b);
  return dst;
}

test('vhdx bad input: each fails with a StrataError naming file and structure', async () => {
  const dir = scratch('vhdx-bad');
  const good = path.join(dir, 'good.vhdx');
  // The writer's layout is known: metadata at 2 MiB (items from +64 KiB), BAT at 3 MiB.
  writeVhdx(good, { virtualSize: 4 * MiB, writes: [{ offset: MiB, data: bytes(MiB, 3) }] });
  const H1 = 64 * 1024;
  const H2 = 128 * 1024;
  const R1 = 192 * 1024;
  const R2 = 256 * 1024;

  const bothHeaders = patch(good, path.join(dir, 'headers.vhdx'), (b) => {
    b[H1 + 20] ^= 1;
    b[H2 + 20] ^= 1;
  });
  await assert.rejects(openAndReadAll(bothHeaders), isStrata('CORRUPT', /vhdx headers/, bothHeaders));
  // One damaged header: the other is used silently (that is what two copies are for).
  const oneHeader = patch(good, path.join(dir, 'header2.vhdx'), (b) => {
    b[H2 + 20] ^= 1;
  });
  await openAndReadAll(oneHeader);

  const bothRegions = patch(good, path.join(dir, 'regions.vhdx'), (b) => {
    b[R1 + 4] ^= 1;
    b[R2 + 4] ^= 1;
  });
  await assert.rejects(openAndReadAll(bothRegions), isStrata('CORRUPT', /vhdx region table/, bothRegions));
  const oneRegion = path.join(dir, 'region1.vhdx');
  patch(good, oneRegion, (b) => {
    b[R1 + 4] ^= 1;
  });
  const r1 = await openImage(oneRegion);
  assert.match(r1.warnings.join('\n'), /region table 1 is invalid/);
  await r1.close();

  // BAT entry of block 1 moved far past the end of the file.
  const batFar = patch(good, path.join(dir, 'bat-far.vhdx'), (b) => {
    b.writeUInt32LE(0x00001000, 3 * MiB + 8 + 4); // FileOffsetMB high bits
  });
  await assert.rejects(openAndReadAll(batFar), isStrata('CORRUPT', /vhdx BAT/, batFar));

  // Region pointing past EOF (with a valid CRC): both copies.
  const regionFar = patch(good, path.join(dir, 'region-far.vhdx'), (b) => {
    for (const at of [R1, R2]) {
      b.writeBigUInt64LE(1n << 40n, at + 32);
      fixCrc(b.subarray(at, at + 64 * 1024));
    }
  });
  await assert.rejects(openAndReadAll(regionFar), isStrata('CORRUPT', /vhdx region table/, regionFar));

  // Absurd virtual size in the metadata (item 1 at 2 MiB + 64 KiB + 8).
  const huge = patch(good, path.join(dir, 'huge.vhdx'), (b) => b.writeBigUInt64LE(1n << 60n, 2 * MiB + 64 * 1024 + 8));
  await assert.rejects(openAndReadAll(huge), isStrata('LIMIT', /vhdx virtual disk size/, huge));
  const big = patch(good, path.join(dir, 'big.vhdx'), (b) => b.writeBigUInt64LE(1n << 45n, 2 * MiB + 64 * 1024 + 8));
  await assert.rejects(openAndReadAll(big), isStrata('CORRUPT', /vhdx BAT/, big));

  // Truncated qemu-made image.
  const raw = await patternRaw(6 * MiB, 91);
  const q = await qemuVhdx(raw, ['subformat=dynamic', 'block_size=1M'], 'vhdx-bad-src');
  const trunc = path.join(dir, 'trunc.vhdx');
  copyFileSync(q, trunc);
  truncateSync(trunc, Math.floor(readFileSync(q).length / 2));
  await assert.rejects(openAndReadAll(trunc), isStrata(undefined, /vhdx/, trunc));

  const empty = path.join(dir, 'empty.vhdx');
  writeFileSync(empty, '');
  await assert.rejects(openImage(empty, { format: 'vhdx' }), isStrata('CORRUPT', /empty file|vhdx/, empty));
  const tiny = path.join(dir, 'tiny.vhdx');
  writeFileSync(tiny, 'vhdxfile');
  await assert.rejects(openImage(tiny, { format: 'vhdx' }), isStrata('TRUNCATED', /vhdx header section/, tiny));
});

test('vhdx parent locators: outside the folder is DENIED, a chain onto itself is a LOOP', async () => {
  const root = scratch('vhdx-locators');
  const outside = path.join(root, 'outside');
  const inside = path.join(root, 'inside');
  mkdirSync(outside);
  mkdirSync(inside);
  const { parent } = await parentIn(outside);
  const child = path.join(inside, 'child.vhdx');
  writeVhdx(child, {
    virtualSize: 6 * MiB,
    writes: [{ offset: 0, data: bytes(512, 1) }],
    parent: { file: parent, relativePath: '..\\outside\\parent.vhdx' },
  });
  await assert.rejects(openImage(child), isStrata('DENIED', /backing file/, child));
  const ok = await openImage(child, { allowRoots: [outside] });
  assert.equal(ok.backing?.name, parent);
  await closeChain(ok);

  const self = path.join(inside, 'self.vhdx');
  writeVhdx(self, {
    virtualSize: 6 * MiB,
    writes: [{ offset: 0, data: bytes(512, 2) }],
    parent: { file: parent, relativePath: 'self.vhdx' },
  });
  await assert.rejects(openImage(self), isStrata('LOOP', /backing chain/, self));
});

test('vhdx: a 3 GiB dynamic disk maps in 1 GiB status steps; only the written block is data', async () => {
  const at = 2.5 * 1024 * MiB;
  const f = await fixture('vhdx-sparse-3g-v1.vhdx', async (out) => {
    await run('qemu-img', ['create', '-q', '-f', 'vhdx', out, '3G']);
    await run('qemu-io', ['-f', 'vhdx', '-c', `write -P 0x5a ${at} 65536`, out]);
  });
  const info = JSON.parse(await run('qemu-img', ['info', '--output=json', f])) as {
    'virtual-size': number;
    'cluster-size': number;
  };
  const bs = info['cluster-size'];
  const img = await openImage(f);
  try {
    assert.equal(img.size, info['virtual-size']);
    const blk = Math.floor(at / bs) * bs;
    const want = mergeMap([
      { start: 0, length: blk, data: false },
      { start: blk, length: bs, data: true },
      { start: blk + bs, length: img.size - blk - bs, data: false },
    ]);
    assert.deepEqual(await strataMap(img), want);
    const b = await img.read(at - 512, 65536 + 1024);
    assert.ok(b.subarray(0, 512).every((x) => x === 0));
    assert.ok(b.subarray(512, 512 + 65536).every((x) => x === 0x5a));
    assert.ok(b.subarray(512 + 65536).every((x) => x === 0));
  } finally {
    await img.close();
  }
});
