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
import { openImage, openImageSource } from '../../src/formats/open.js';
import type { DiskImage } from '../../src/formats/types.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { readIntoSha } from '../helpers/image-sha.js';
import { type MapRange, mergeMap, qemuMap, strataMap } from '../helpers/qemu-map.js';
import { fixture, run, scratch, sha256 } from '../helpers/tools.js';
import { patchVhd, writeVhdDiff } from '../helpers/vhd-writer.js';

const MiB = 1024 * 1024;

/**
 * A pattern disk with whole MiB-aligned ranges zeroed (`holes`: [start, length] in MiB),
 * so that some blocks of the image are never written and the map has zero ranges.
 */
async function patternRaw(size: number, seed: number, holes: Array<[number, number]> = []): Promise<string> {
  const key = holes.map(([s, l]) => `${s}+${l}`).join('_');
  return fixture(`vhd-pattern-${size}-${seed}-h${key}-v2.raw`, async (out) => {
    writePatternDisk(out, size, seed);
    const fd = openSync(out, 'r+');
    try {
      for (const [s, l] of holes) writeSync(fd, Buffer.alloc(Math.min(l * MiB, size - s * MiB)), 0, undefined, s * MiB);
    } finally {
      closeSync(fd);
    }
  });
}

/** A VHD made by qemu-img from a pattern raw (`-S 0` for fixed: see the map test). */
async function qemuVhd(raw: string, opts: string[], key: string): Promise<string> {
  const fixed = opts.some((o) => o.includes('subformat=fixed'));
  return fixture(`${key}-v1.vhd`, async (out) => {
    const args = ['convert', '-f', 'raw', '-O', 'vpc'];
    if (fixed) args.push('-S', '0');
    for (const o of opts) args.push('-o', o);
    await run('qemu-img', [...args, raw, out]);
  });
}

/** The oracle: qemu's own reading of an image, converted to raw. */
async function qemuRaw(image: string, fmt: string): Promise<string> {
  return fixture(`${path.basename(image)}-${fmt}-as-raw-v1`, async (out) => {
    await run('qemu-img', ['convert', '-f', fmt, '-O', 'raw', image, out]);
  });
}

async function qemuSize(image: string, fmt: string): Promise<number> {
  const info = JSON.parse(await run('qemu-img', ['info', '--output=json', '-f', fmt, image])) as {
    'virtual-size': number;
  };
  return info['virtual-size'];
}

/** sha256 of the whole virtual disk, read in 4 MiB steps. */
export async function readAllSha(img: DiskImage): Promise<string> {
  const { createHash } = await import('node:crypto');
  const h = createHash('sha256');
  for (let off = 0; off < img.size; off += 4 * MiB) {
    const b = await img.read(off, Math.min(4 * MiB, img.size - off));
    assert.equal(b.length, Math.min(4 * MiB, img.size - off));
    h.update(b);
  }
  const sha = h.digest('hex');
  assert.equal(await readIntoSha(img), sha, 'readInto into a junk-filled buffer equals read');
  return sha;
}

/** The map an overlay gives: `ranges` are data, everything else as in `base`. */
function overlayMap(base: MapRange[], ranges: Array<[number, number]>): MapRange[] {
  const cuts = new Set<number>();
  for (const r of base) cuts.add(r.start).add(r.start + r.length);
  for (const [s, l] of ranges) cuts.add(s).add(s + l);
  const pts = [...cuts].sort((a, b) => a - b);
  const end = base.length ? base[base.length - 1].start + base[base.length - 1].length : 0;
  const out: Array<{ start: number; length: number; data: boolean }> = [];
  for (let i = 0; i + 1 < pts.length && pts[i] < end; i++) {
    const s = pts[i];
    const inOverride = ranges.some(([a, l]) => s >= a && s < a + l);
    const b = base.find((r) => s >= r.start && s < r.start + r.length);
    out.push({ start: s, length: pts[i + 1] - s, data: inOverride || !!b?.data });
  }
  return mergeMap(out);
}

const CASES: Array<{ name: string; size: number; opts: string[]; holes: Array<[number, number]> }> = [
  { name: 'dynamic', size: 6 * MiB + 7 * 512, opts: ['subformat=dynamic'], holes: [[2, 2]] },
  { name: 'fixed', size: 5 * MiB + 3 * 512, opts: ['subformat=fixed'], holes: [[1, 1]] },
  { name: 'dynamic-force-size', size: 6 * MiB, opts: ['subformat=dynamic', 'force_size=on'], holes: [[0, 2]] },
  { name: 'fixed-force-size', size: 3 * MiB + 512, opts: ['subformat=fixed', 'force_size=on'], holes: [] },
];

for (const c of CASES) {
  test(`vhd ${c.name}: every byte and the map agree with qemu-img`, async () => {
    const raw = await patternRaw(c.size, 31, c.holes);
    const image = await qemuVhd(raw, c.opts, `vhd-${c.name}-${c.size}-h${c.holes.join('_')}`);
    const expected = await qemuRaw(image, 'vpc');
    const img = await openImage(image);
    try {
      assert.equal(img.format, 'vhd');
      assert.equal(img.subformat, c.opts[0].split('=')[1]);
      assert.equal(img.size, await qemuSize(image, 'vpc'));
      assert.equal(await readAllSha(img), sha256(readFileSync(expected)));
      // The data at the very end of the disk (the pattern's end marker) reads back.
      const tail = await img.read(img.size - 4096, 4096);
      assert.deepEqual(Buffer.from(tail), readFileSync(expected).subarray(img.size - 4096));
      // qemu-img map of a fixed VHD reports host-file holes; the fixture is written
      // non-sparse with `-S 0` so both sides see one data range.
      assert.deepEqual(await strataMap(img), await qemuMap(image, { format: 'vpc' }));
      assert.deepEqual(img.warnings, []);
      const d = img.details?.() as Record<string, unknown>;
      assert.equal(d.diskType, img.subformat);
      assert.equal(d.creatorApp, c.opts.includes('force_size=on') ? 'qem2' : 'qemu');
    } finally {
      await img.close();
    }
    // The same bytes from memory (a source whose reads are views of bytes it keeps):
    // same disk, and the source is left untouched.
    const bytes = readFileSync(image);
    const before = sha256(bytes);
    const mem = await openImageSource(new MemorySource(bytes, image), { format: 'vhd' });
    assert.equal(await readAllSha(mem), sha256(readFileSync(expected)));
    assert.equal(sha256(bytes), before);
  });
}

/** A parent VHD (dynamic, by qemu) copied into `dir`, and its qemu-converted raw. */
async function parentIn(dir: string): Promise<{ parent: string; parentRaw: Buffer }> {
  const raw = await patternRaw(6 * MiB, 41, [[4, 2]]);
  const image = await qemuVhd(raw, ['subformat=dynamic'], 'vhd-parent-6m-h4');
  const parent = path.join(dir, 'parent.vhd');
  copyFileSync(image, parent);
  return { parent, parentRaw: readFileSync(await qemuRaw(image, 'vpc')) };
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

test('vhd differencing: child sectors and blocks override the parent, the rest falls through', async () => {
  const dir = scratch('vhd-diff');
  const { parent, parentRaw } = await parentIn(dir);
  const size = parentRaw.length;
  const writes = [
    { offset: 2 * MiB, data: bytes(2 * MiB, 1) }, // all of block 1
    { offset: 5 * 512, data: bytes(3 * 512, 2) }, // sectors 5..7 of block 0
    { offset: 100 * 512, data: bytes(31 * 512, 3) }, // sectors 100..130 of block 0
    { offset: size - 1024, data: bytes(1024, 4) }, // the very end of the disk
  ];
  const child = path.join(dir, 'child.vhd');
  writeVhdDiff(child, {
    parentFile: parent,
    locators: [
      { code: 'W2ru', path: '.\\parent.vhd' },
      { code: 'W2ku', path: 'C:\\images\\parent.vhd' },
    ],
    writes,
  });
  const expected = Buffer.from(parentRaw);
  for (const w of writes) expected.set(w.data, w.offset);
  assert.notEqual(sha256(expected), sha256(parentRaw));

  const img = await openImage(child);
  try {
    assert.equal(img.subformat, 'differencing');
    assert.equal(img.size, size);
    assert.equal(img.backing?.name, parent);
    assert.deepEqual(img.backingRef, { path: 'parent.vhd', format: 'vhd' });
    assert.deepEqual(img.warnings, []);
    assert.equal(await readAllSha(img), sha256(expected));
    // Reads that straddle set and clear sectors, and block edges.
    for (const [o, l] of [
      [4 * 512 + 7, 5 * 512],
      [2 * MiB - 300, 900],
      [size - 1500, 1500],
    ]) {
      assert.deepEqual(Buffer.from(await img.read(o, l)), expected.subarray(o, o + l));
    }
    // The map: the parent's (from qemu-img map) with the child's overrides as data.
    const want = overlayMap(
      await qemuMap(parent, { format: 'vpc' }),
      writes.map((w) => [w.offset, w.data.length]),
    );
    assert.deepEqual(await strataMap(img), want);
    const d = img.details?.() as Record<string, unknown>;
    assert.equal(d.parentName, '.\\parent.vhd');
  } finally {
    await closeChain(img);
  }

  // qemu (which reads differencing VHDs without their parent and ignores the sector
  // bitmap) is the outside oracle for our writer: same size, and the fully written block
  // reads back as written.
  assert.equal(await qemuSize(child, 'vpc'), size);
  const q = path.join(dir, 'child-by-qemu.raw');
  await run('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', child, q]);
  const qb = readFileSync(q);
  assert.deepEqual(qb.subarray(2 * MiB, 4 * MiB), expected.subarray(2 * MiB, 4 * MiB));
});

test('vhd differencing: a missing relative parent falls back to the MacX locator; a wrong parent id warns', async () => {
  const dir = scratch('vhd-diff-macx');
  const { parent, parentRaw } = await parentIn(dir);
  const child = path.join(dir, 'child.vhd');
  writeVhdDiff(child, {
    parentFile: parent,
    locators: [
      { code: 'W2ru', path: '.\\gone.vhd' },
      { code: 'MacX', path: `file://localhost${encodeURI(parent)}` },
    ],
    writes: [{ offset: MiB, data: bytes(4096, 9) }],
    parentUniqueId: new Uint8Array(16).fill(0xab),
  });
  const img = await openImage(child);
  try {
    assert.equal(img.backing?.name, parent);
    assert.equal(img.warnings.length, 1);
    assert.match(img.warnings[0], /parent unique id/);
    const expected = Buffer.from(parentRaw);
    expected.set(bytes(4096, 9), MiB);
    assert.equal(await readAllSha(img), sha256(expected));
  } finally {
    await closeChain(img);
  }
  // With noBacking the child's unallocated sectors read as zeros.
  const lone = await openImage(child, { noBacking: true });
  try {
    assert.equal(lone.backing, undefined);
    assert.equal(lone.backingRef?.path, 'gone.vhd');
    const b = await lone.read(MiB - 512, 4096 + 1024);
    assert.ok(b.subarray(0, 512).every((x) => x === 0));
    assert.deepEqual(Buffer.from(b.subarray(512, 512 + 4096)), Buffer.from(bytes(4096, 9)));
  } finally {
    await lone.close();
  }
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

test('vhd bad input: each fails with a StrataError naming file and structure', async () => {
  const dir = scratch('vhd-bad');
  const raw = await patternRaw(6 * MiB, 51);
  const dyn = await qemuVhd(raw, ['subformat=dynamic'], 'vhd-bad-src');
  const fixed = await qemuVhd(raw, ['subformat=fixed'], 'vhd-bad-src-fixed');

  // Truncated dynamic disk: the end footer is gone, the BAT points past the end.
  const trunc = path.join(dir, 'trunc.vhd');
  copyFileSync(dyn, trunc);
  truncateSync(trunc, Math.floor(readFileSync(dyn).length / 2));
  await assert.rejects(openAndReadAll(trunc), isStrata(undefined, /vhd (BAT|data block)/, trunc));

  // BAT offset past the end of the file.
  const batFar = path.join(dir, 'bat-far.vhd');
  copyFileSync(dyn, batFar);
  patchVhd(batFar, { header: (h) => h.setBigUint64(16, 1n << 40n) });
  await assert.rejects(openAndReadAll(batFar), isStrata('CORRUPT', /vhd BAT/, batFar));

  // Absurd virtual size (checksums fixed so only the size is wrong).
  const huge = path.join(dir, 'huge.vhd');
  copyFileSync(dyn, huge);
  patchVhd(huge, { footer: (f) => f.setBigUint64(48, 1n << 60n) });
  await assert.rejects(openAndReadAll(huge), isStrata('LIMIT', /vhd footer/, huge));
  const big = path.join(dir, 'big.vhd');
  copyFileSync(dyn, big);
  patchVhd(big, { footer: (f) => f.setBigUint64(48, 1n << 45n) });
  await assert.rejects(openAndReadAll(big), isStrata('CORRUPT', /vhd dynamic disk header/, big));

  // A fixed disk whose footer checksum is wrong has no second copy: an error.
  const badSum = path.join(dir, 'bad-sum.vhd');
  const fb = readFileSync(fixed);
  fb[fb.length - 512 + 70] ^= 1;
  writeFileSync(badSum, fb);
  await assert.rejects(openImage(badSum, { format: 'vhd' }), isStrata('CORRUPT', /vhd footer/, badSum));

  // A dynamic disk with a bad end footer but a good copy at offset 0: a warning.
  const warnSum = path.join(dir, 'warn-sum.vhd');
  const db = readFileSync(dyn);
  db[db.length - 512 + 70] ^= 1;
  writeFileSync(warnSum, db);
  const w = await openImage(warnSum);
  try {
    assert.equal(w.warnings.length, 1);
    assert.match(w.warnings[0], /checksum/);
    assert.equal(await readAllSha(w), sha256(readFileSync(await qemuRaw(dyn, 'vpc'))));
  } finally {
    await w.close();
  }

  // Empty and tiny files.
  const empty = path.join(dir, 'empty.vhd');
  writeFileSync(empty, '');
  await assert.rejects(openImage(empty, { format: 'vhd' }), isStrata('CORRUPT', /empty file|vhd/, empty));
  const tiny = path.join(dir, 'tiny.vhd');
  writeFileSync(tiny, 'conectix');
  await assert.rejects(openImage(tiny, { format: 'vhd' }), isStrata('TRUNCATED', /vhd footer/, tiny));
});

test('vhd parent locators: outside the folder is DENIED, a chain onto itself is a LOOP', async () => {
  const root = scratch('vhd-locators');
  const outside = path.join(root, 'outside');
  const inside = path.join(root, 'inside');
  mkdirSync(outside);
  mkdirSync(inside);
  const { parent } = await parentIn(outside);
  const child = path.join(inside, 'child.vhd');
  writeVhdDiff(child, {
    parentFile: parent,
    locators: [
      { code: 'W2ru', path: '..\\outside\\parent.vhd' },
      { code: 'W2ku', path: parent },
    ],
    writes: [{ offset: 0, data: bytes(512, 1) }],
  });
  await assert.rejects(openImage(child), isStrata('DENIED', /backing file/, child));
  // Allowed explicitly, the same child opens.
  const ok = await openImage(child, { allowRoots: [outside] });
  assert.equal(ok.backing?.name, parent);
  await closeChain(ok);

  const self = path.join(inside, 'self.vhd');
  writeVhdDiff(self, {
    parentFile: parent,
    locators: [{ code: 'W2ru', path: '.\\self.vhd' }],
    writes: [{ offset: 0, data: bytes(512, 2) }],
  });
  await assert.rejects(openImage(self), isStrata('LOOP', /backing chain/, self));
});

test('vhd: a 3 GiB dynamic disk maps in 1 GiB status steps exactly like qemu-img map', async () => {
  const f = await fixture('vhd-sparse-3g-v1.vhd', async (out) => {
    await run('qemu-img', ['create', '-q', '-f', 'vpc', out, '3G']);
    await run('qemu-io', ['-f', 'vpc', '-c', `write -P 0x5a ${2.5 * 1024 * MiB} 65536`, out]);
  });
  const img = await openImage(f);
  try {
    assert.equal(img.size, await qemuSize(f, 'vpc'));
    assert.deepEqual(await strataMap(img), await qemuMap(f, { format: 'vpc' }));
    const b = await img.read(2.5 * 1024 * MiB - 512, 65536 + 1024);
    assert.ok(b.subarray(0, 512).every((x) => x === 0));
    assert.ok(b.subarray(512, 512 + 65536).every((x) => x === 0x5a));
    assert.ok(b.subarray(512 + 65536).every((x) => x === 0));
  } finally {
    await img.close();
  }
});
