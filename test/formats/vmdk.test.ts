import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage, openImageSource } from '../../src/formats/open.js';
import type { DiskImage } from '../../src/formats/types.js';
import { FileSource } from '../../src/io/file-source.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { dataBytes, qemuMap, qemuMapRaw, strataMap } from '../helpers/qemu-map.js';
import { fixture, run, runBuffer, scratch, sha256 } from '../helpers/tools.js';

const MiB = 1024 * 1024;
/** 6 MiB and 7 sectors: a multiple of 512 (qemu's unit) but not of the 64 KiB grain. */
const SMALL = 6 * MiB + 7 * 512;

/** sha256 of a local file, read in large chunks (fine for sparse multi-GiB raws). */
function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  const buf = Buffer.allocUnsafeSlow(8 * MiB);
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** sha256 of the whole virtual disk as Strata reads it (chunked like a converter would). */
async function sha256Image(img: DiskImage): Promise<string> {
  const h = createHash('sha256');
  const step = 8 * MiB;
  for (let off = 0; off < img.size; off += step) h.update(await img.read(off, Math.min(step, img.size - off)));
  return h.digest('hex');
}

/** The image's details(), as a plain record (empty when it has none). */
function details(img: DiskImage): Record<string, unknown> {
  return img.details?.() ?? {};
}

/** The same through readInto with one reused buffer full of junk (as convert uses it). */
async function sha256ImageInto(img: DiskImage, shared = false): Promise<string> {
  assert.ok(img.readInto, 'the image offers readInto');
  const h = createHash('sha256');
  const size = 3 * MiB + 512; // not a multiple of the grain: unaligned reads
  // A SharedArrayBuffer (as convert's pool uses) lets compressed grains inflate in worker threads.
  const buf = shared ? Buffer.from(new SharedArrayBuffer(size)).fill(0xee) : Buffer.alloc(size, 0xee);
  for (let off = 0; off < img.size; ) {
    buf.fill(0xee);
    const n = await img.readInto(off, buf);
    assert.ok(n > 0);
    h.update(buf.subarray(0, n));
    off += n;
  }
  return h.digest('hex');
}

async function smallRaw(): Promise<string> {
  return fixture(`vmdk-src-${SMALL}-s5.raw`, async (out) => writePatternDisk(out, SMALL, 5));
}

/**
 * A raw disk a little over 2 GiB (so qemu's twoGbMaxExtent* subformats split it), sparse
 * except for pattern data at the start, across the 2 GiB extent boundary and at the end.
 */
async function bigRaw(): Promise<string> {
  const size = 2 * 1024 * MiB + 3 * MiB;
  return fixture(`vmdk-src-big-${size}-v1.raw`, async (out) => {
    const piece = `${out}.piece`;
    writePatternDisk(piece, 3 * MiB, 9);
    const bytes = readFileSync(piece);
    const fd = openSync(out, 'w');
    try {
      writeSync(fd, bytes, 0, bytes.length, 0);
      writeSync(fd, bytes, 0, 2 * MiB, 2 * 1024 * MiB - MiB - 4096);
      writeSync(fd, bytes, 0, bytes.length, size - bytes.length);
    } finally {
      closeSync(fd);
    }
    truncateSync(out, size);
    await run('rm', ['-f', piece]);
  });
}

/** A directory fixture holding `disk.vmdk` (and its extent files) converted from `raw`. */
async function converted(raw: string, subformat: string, extra: string[] = []): Promise<string> {
  const key = `vmdk-${subformat}-${path.basename(raw)}-${extra.join('_')}-v1`;
  const dir = await fixture(key, async (out) => {
    mkdirSync(out);
    await run(
      'qemu-img',
      ['convert', '-f', 'raw', '-O', 'vmdk', ...extra, '-o', `subformat=${subformat}`, raw, 'disk.vmdk'],
      {
        cwd: out,
      },
    );
  });
  return path.join(dir, 'disk.vmdk');
}

/** The two oracles: bytes equal the source raw's, and the merged map equals qemu-img map's. */
async function checkAgainst(file: string, expectedSha: string, subformat: string): Promise<DiskImage> {
  const img = await openImage(file);
  try {
    assert.equal(img.format, 'vmdk');
    assert.equal(img.subformat, subformat);
    assert.equal(await sha256Image(img), expectedSha, `${subformat}: virtual disk bytes differ from the source`);
    assert.equal(await sha256ImageInto(img), expectedSha, `${subformat}: readInto bytes differ from the source`);
    assert.equal(await sha256ImageInto(img, true), expectedSha, `${subformat}: readInto into shared memory differs`);
    const ours = await strataMap(img);
    const theirs = await qemuMap(file);
    assert.ok(dataBytes(theirs) > 0, 'the oracle map has data');
    assert.deepEqual(ours, theirs, `${subformat}: map differs from qemu-img map`);
  } catch (e) {
    await closeChain(img);
    throw e;
  }
  return img;
}

test('monolithicSparse reads like its source raw and maps like qemu-img', async () => {
  const raw = await smallRaw();
  const img = await checkAgainst(await converted(raw, 'monolithicSparse'), sha256File(raw), 'monolithicSparse');
  assert.equal(img.size, SMALL);
  assert.equal(img.clusterSize, 65536);
  assert.equal((details(img) as unknown as { compression: string }).compression, 'none');
  await img.close();
});

test('streamOptimized (deflated grains behind markers) reads like its source raw', async () => {
  const raw = await smallRaw();
  const img = await checkAgainst(await converted(raw, 'streamOptimized'), sha256File(raw), 'streamOptimized');
  assert.equal((details(img) as unknown as { compression: string }).compression, 'deflate');
  // Small unaligned reads across grain boundaries go through the inflate path too.
  const whole = readFileSync(raw);
  for (const [off, len] of [
    [65536 - 100, 300],
    [3 * MiB + 17, 70000],
    [SMALL - 1000, 1000],
  ]) {
    assert.deepEqual(Buffer.from(await img.read(off, len)), whole.subarray(off, off + len));
  }
  await img.close();
});

test('streamOptimized reads the same without the native inflater (worker pool, main thread)', async () => {
  // With the addon, bulk reads inflate on libuv's pool (native/inflate.c); these are the paths
  // of a build without it: readInto into shared memory uses the worker isolates.
  const raw = await smallRaw();
  process.env.STRATA_NO_NATIVE_INFLATE = '1';
  try {
    const img = await checkAgainst(await converted(raw, 'streamOptimized'), sha256File(raw), 'streamOptimized');
    await img.close();
  } finally {
    delete process.env.STRATA_NO_NATIVE_INFLATE;
  }
});

/** The file offset of the n-th grain marker of a qemu-written stream-optimized extent (grains first, tables last). */
function nthGrainMarker(b: Buffer, n: number): number {
  let o = Number(b.readBigUInt64LE(64)) * 512; // overhead: the first grain's marker
  for (let i = 0; i <= n; i++) {
    assert.ok(b.readUInt32LE(o + 8) > 0, `a grain marker (with a payload) at ${o}`);
    if (i < n) o = Math.ceil((o + 12 + b.readUInt32LE(o + 8)) / 512) * 512;
  }
  return o;
}

/** Read the 4 MiB-aligned window (or less at the end) that holds the grain of the marker at `m`, through readInto. */
async function readWindowOf(img: DiskImage, b: Buffer, m: number): Promise<{ start: number; got: Buffer }> {
  const start = Math.floor((Number(b.readBigUInt64LE(m)) * 512) / (4 * MiB)) * 4 * MiB;
  const got = Buffer.alloc(Math.min(4 * MiB, img.size - start));
  assert.equal(await img.readInto!(start, got), got.length);
  return { start, got };
}

test('streamOptimized: a grain that does not inflate is CORRUPT at its offset; a wrong marker lba is read anyway', async () => {
  const src = await converted(await smallRaw(), 'streamOptimized');
  const orig = readFileSync(src);
  const bad = nthGrainMarker(orig, 5);
  const f = patched(src, 'bad-grain.vmdk', (b) => b.fill(0xff, bad + 12, bad + 20)); // not a zlib stream
  const img = await openImage(f);
  try {
    await assert.rejects(readWindowOf(img, orig, bad), (e: unknown) => {
      assert.ok(e instanceof StrataError, String(e));
      assert.equal(e.code, 'CORRUPT');
      assert.equal(e.structure, 'vmdk compressed grain');
      assert.equal(e.offset, bad);
      return true;
    });
  } finally {
    await closeChain(img);
  }
  const moved = nthGrainMarker(orig, 3);
  const g = patched(src, 'lba.vmdk', (b) => {
    b.writeBigUInt64LE(b.readBigUInt64LE(moved) + 128n, moved);
    return b;
  });
  const img2 = await openImage(g);
  try {
    const { start, got } = await readWindowOf(img2, orig, moved);
    const raw = readFileSync(await smallRaw());
    // qemu and VMware ignore the lba on read: the bytes are the source's
    assert.ok(got.equals(raw.subarray(start, start + got.length)), "the bytes are the source raw's");
  } finally {
    await closeChain(img2);
  }
});

test('streamOptimized with the grain directory in a footer (GD_AT_END) reads the footer', async () => {
  // qemu writes the GD offset into the header; VMware writes GD_AT_END and a footer. Make
  // the VMware layout from qemu's file by the spec: header gdOffset = ~0, then footer
  // marker, footer (the real header) and end-of-stream marker appended. qemu reads it too.
  const raw = await smallRaw();
  const src = await converted(raw, 'streamOptimized');
  const dir = await fixture('vmdk-gd-at-end-v1', async (out) => {
    mkdirSync(out);
    const b = readFileSync(src);
    const header = Buffer.from(b.subarray(0, 512));
    const first = Buffer.from(header);
    first.writeBigUInt64LE(0xffffffffffffffffn, 56);
    const footerMarker = Buffer.alloc(512);
    footerMarker.writeUInt32LE(3, 12);
    writeFileSync(
      path.join(out, 'disk.vmdk'),
      Buffer.concat([first, b.subarray(512), footerMarker, header, Buffer.alloc(512)]),
    );
  });
  const img = await checkAgainst(path.join(dir, 'disk.vmdk'), sha256File(raw), 'streamOptimized');
  await img.close();
});

/**
 * qemu rewrites a descriptor in place when it changes the CID (vmdk_write_cid); a shorter new
 * CID leaves the old text's last bytes after the new text's NUL ("...\n\0\n\0..."). A CI run
 * met it on a twoGbMaxExtentFlat disk qemu-img convert made (CID=1ef8a0), which we took for
 * raw. The same rewrite, done here on qemu's own descriptor, is still a vmdk to qemu-img and
 * must be to us: same bytes, same map.
 */
test('a descriptor qemu rewrote with a shorter CID (old text after the NUL) is still a vmdk', async () => {
  const raw = await smallRaw();
  const src = await converted(raw, 'monolithicFlat', ['-S', '0']);
  const dir = scratch('vmdk-short-cid');
  for (const f of ['disk.vmdk', 'disk-flat.vmdk']) copyFileSync(path.join(path.dirname(src), f), path.join(dir, f));
  const file = path.join(dir, 'disk.vmdk');
  const old = readFileSync(file);
  const text = old.subarray(0, old.indexOf(0)).toString('latin1');
  const cid = /^CID=([0-9a-f]+)$/m.exec(text);
  assert.ok(cid && cid[1].length >= 3, `qemu's descriptor has a CID line: ${text}`);
  const shorter = text.replace(`CID=${cid[1]}`, `CID=${cid[1].slice(2)}`);
  const rewritten = Buffer.from(old);
  rewritten.write(`${shorter}\0`, 0, 'latin1');
  const after = rewritten.subarray(rewritten.indexOf(0));
  assert.ok(
    after.some((b) => b !== 0),
    'old text is left after the NUL',
  );
  writeFileSync(file, rewritten);
  const info = JSON.parse(await run('qemu-img', ['info', '--output=json', file])) as { format: string };
  assert.equal(info.format, 'vmdk', 'qemu-img reads the rewritten descriptor as a vmdk');
  const img = await checkAgainst(file, sha256File(raw), 'monolithicFlat');
  await img.close();
});

test('monolithicFlat reads like its source raw and maps like qemu-img', async () => {
  const raw = await smallRaw();
  // -S 0: write the flat extent without holes. qemu-img map may report holes of a flat host
  // file as zero (SEEK_HOLE), which a reader cannot see through plain reads.
  const img = await checkAgainst(
    await converted(raw, 'monolithicFlat', ['-S', '0']),
    sha256File(raw),
    'monolithicFlat',
  );
  const d = details(img) as unknown as { extents: Array<{ type: string; file: string }> };
  assert.deepEqual(
    d.extents.map((e) => e.type),
    ['FLAT'],
  );
  await img.close();
});

test('twoGbMaxExtentSparse and twoGbMaxExtentFlat (split over several files) read and map like qemu-img', async () => {
  const raw = await bigRaw();
  const expected = sha256File(raw);
  for (const sub of ['twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']) {
    // The flat split case keeps qemu's holes (-S 0 would write 2 GiB): qemu 7.2 reports flat
    // holes as data:true zero:true, which the oracle counts as zero, as we see them (SEEK_HOLE).
    const img = await checkAgainst(await converted(raw, sub), expected, sub);
    const d = details(img) as unknown as { extents: Array<{ type: string; sectors: number }> };
    assert.ok(d.extents.length >= 2, `${sub}: split into ${d.extents.length} extents`);
    assert.equal(
      d.extents.reduce((a, e) => a + e.sectors * 512, 0),
      img.size,
    );
    await img.close();
  }
});

test('zeroed grains (GTE 1) read as zeros and report zero, not unallocated', async () => {
  const dir = await fixture('vmdk-zeroed-grain-v1', async (out) => {
    mkdirSync(out);
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', 'disk.vmdk', `${SMALL}`], {
      cwd: out,
    });
    await run(
      'qemu-io',
      [
        '-f',
        'vmdk',
        '-c',
        'write -P 0xab 0 2M',
        '-c',
        'write -z 512k 1M',
        '-c',
        `write -P 0xcd ${SMALL - 4096} 4096`,
        'disk.vmdk',
      ],
      { cwd: out },
    );
    await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', 'disk.vmdk', 'oracle.raw'], { cwd: out });
  });
  const file = path.join(dir, 'disk.vmdk');
  const img = await openImage(file);
  assert.equal(await sha256Image(img), sha256File(path.join(dir, 'oracle.raw')));
  assert.equal(await sha256ImageInto(img), sha256File(path.join(dir, 'oracle.raw')));
  const theirs = await qemuMap(file);
  assert.deepEqual(await strataMap(img), theirs);
  // qemu says [512k, 1.5M) holds no data although it was written: the zeroed-grain GTEs.
  assert.ok(theirs.some((r) => !r.data && r.start <= 512 * 1024 && r.start + r.length >= 1536 * 1024));
  const layer = await img.status(0, img.size);
  assert.ok(
    layer.some((e) => e.kind === 'zero' && e.offset <= 512 * 1024 && e.offset + e.length >= 1536 * 1024),
    `zeroed grains reported as zero: ${JSON.stringify(layer)}`,
  );
  assert.equal((details(img) as unknown as { zeroedGrain: boolean }).zeroedGrain, true);
  await img.close();
});

test('a differencing vmdk reads its parent where it has no grains', async () => {
  const raw = await smallRaw();
  const base = await converted(raw, 'monolithicSparse');
  const dir = await fixture('vmdk-diff-v1', async (out) => {
    mkdirSync(out);
    copyFileSync(base, path.join(out, 'base.vmdk'));
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', 'child.vmdk'], { cwd: out });
    await run(
      'qemu-io',
      [
        '-f',
        'vmdk',
        '-c',
        'write -P 0x5a 1M 200k',
        '-c',
        'write -P 0x33 4000k 64k',
        '-c',
        `write -P 0x77 ${SMALL - 512} 512`,
        'child.vmdk',
      ],
      { cwd: out },
    );
    await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', 'child.vmdk', 'oracle.raw'], { cwd: out });
  });
  const file = path.join(dir, 'child.vmdk');
  const img = await openImage(file);
  try {
    assert.equal(img.backingRef?.path, 'base.vmdk');
    assert.ok(img.backing, 'the parent was opened');
    assert.equal(await sha256Image(img), sha256File(path.join(dir, 'oracle.raw')));
    assert.equal(await sha256ImageInto(img), sha256File(path.join(dir, 'oracle.raw')));
    assert.deepEqual(await strataMap(img), await qemuMap(file));
    // This layer alone has far fewer data bytes than the chain.
    const own = (await img.status(0, img.size)).filter((e) => e.kind === 'data').reduce((a, e) => a + e.length, 0);
    assert.ok(own < 1024 * 1024, `child stores ${own} bytes`);
    const alone = await openImage(file, { noBacking: true });
    assert.equal(alone.backing, undefined);
    await alone.close();
  } finally {
    await closeChain(img);
  }
});

// ---- bad input -------------------------------------------------------------------------

function isStrata(code: string | RegExp, structure: RegExp, file: string) {
  return (e: unknown) => {
    assert.ok(e instanceof StrataError, `expected a StrataError, got ${(e as Error)?.stack ?? e}`);
    if (typeof code === 'string') assert.equal(e.code, code, e.message);
    else assert.match(e.code, code, e.message);
    assert.match(e.structure ?? '', structure, e.message);
    assert.ok(e.message.includes(file), `message names the file: ${e.message}`);
    return true;
  };
}

async function openAndReadAll(file: string, opts = {}): Promise<void> {
  const img = await openImage(file, opts);
  try {
    await sha256Image(img);
    await strataMap(img);
  } finally {
    await closeChain(img);
  }
}

/** A patched copy of a fixture in a fresh scratch folder. */
function patched(src: string, name: string, edit: (b: Buffer) => Buffer): string {
  const dir = scratch('vmdk-bad');
  const out = path.join(dir, name);
  writeFileSync(out, edit(readFileSync(src)));
  return out;
}

test('a truncated sparse extent fails with a StrataError naming the structure', async () => {
  const src = await converted(await smallRaw(), 'monolithicSparse');
  const f = patched(src, 'trunc.vmdk', (b) => b.subarray(0, Math.floor(b.length * 0.6)));
  await assert.rejects(openAndReadAll(f), isStrata(/CORRUPT|TRUNCATED/, /vmdk grain/, f));
});

test('a grain directory offset past the end of the file is refused', async () => {
  const src = await converted(await smallRaw(), 'monolithicSparse');
  const f = patched(src, 'gd.vmdk', (b) => {
    b.writeBigUInt64LE(0x7fffffffn, 56); // gdOffset
    b.writeBigUInt64LE(0x7ffffff0n, 48); // rgdOffset
    return b;
  });
  await assert.rejects(openImage(f), isStrata('CORRUPT', /vmdk grain directory/, f));
});

test('a primary grain directory past EOF falls back to the redundant one (qemu writes both)', async () => {
  const raw = await smallRaw();
  const src = await converted(raw, 'monolithicSparse');
  const f = patched(src, 'rgd.vmdk', (b) => {
    assert.ok(b.readUInt32LE(8) & 2, 'qemu sets the redundant-GD flag');
    b.writeBigUInt64LE(0x7fffffffn, 56); // gdOffset only; rgdOffset stays valid
    return b;
  });
  const img = await openImage(f);
  try {
    assert.equal(await sha256Image(img), sha256File(raw));
    assert.ok(
      img.warnings.some((w) => /redundant/.test(w)),
      `warned: ${JSON.stringify(img.warnings)}`,
    );
  } finally {
    await img.close();
  }
});

test('an absurd capacity is refused before any allocation', async () => {
  const src = await converted(await smallRaw(), 'monolithicSparse');
  const f = patched(src, 'cap.vmdk', (b) => {
    b.writeBigUInt64LE(1n << 62n, 12);
    return b;
  });
  await assert.rejects(openImage(f), isStrata('LIMIT', /vmdk sparse extent header/, f));
});

test('a descriptor naming an extent outside its folder is DENIED', async () => {
  const dir = scratch('vmdk-escape');
  const f = path.join(dir, 'escape.vmdk');
  writeFileSync(
    f,
    '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n' +
      'RW 8 FLAT "/etc/hostname" 0\n',
  );
  await assert.rejects(openImage(f), isStrata('DENIED', /vmdk/, f));
  writeFileSync(f, '# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 8 FLAT "../../escape-flat.vmdk" 0\n');
  await assert.rejects(openImage(f), isStrata('DENIED', /vmdk/, f));
});

test('a missing extent file is NOT_FOUND, naming the descriptor line', async () => {
  const dir = scratch('vmdk-missing');
  const f = path.join(dir, 'missing.vmdk');
  writeFileSync(f, '# Disk DescriptorFile\ncreateType="twoGbMaxExtentFlat"\nRW 2048 FLAT "missing-f001.vmdk" 0\n');
  await assert.rejects(openImage(f), isStrata('NOT_FOUND', /vmdk descriptor extent line 3/, f));
});

test('a flat extent shorter than its descriptor says is refused', async () => {
  const dir = scratch('vmdk-short');
  const f = path.join(dir, 'short.vmdk');
  writeFileSync(path.join(dir, 'short-flat.vmdk'), Buffer.alloc(4096));
  writeFileSync(f, '# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 2048 FLAT "short-flat.vmdk" 0\n');
  await assert.rejects(openImage(f), isStrata('TRUNCATED', /vmdk flat extent/, 'short-flat.vmdk'));
});

test('an empty file is refused with a StrataError naming file and structure', async () => {
  const dir = scratch('vmdk-empty');
  const f = path.join(dir, 'empty.vmdk');
  writeFileSync(f, '');
  await assert.rejects(
    openImage(f, { format: 'vmdk' }),
    (e: unknown) => e instanceof StrataError && e.message.includes(f),
  );
  const src = await FileSource.open(f);
  await assert.rejects(openImageSource(src, { format: 'vmdk' }), isStrata('CORRUPT', /vmdk header/, f));
  await src.close();
});

test('a hand-written descriptor: FLAT extents at file offsets, a ZERO extent, an RDONLY extent', async () => {
  // qemu 7.2 miscounts the size of such descriptors, so the oracle is the VMware layout
  // rule applied with dd: each FLAT extent is `sectors` sectors of its file from `offset`.
  const dir = scratch('vmdk-multi');
  const flat = path.join(dir, 'multi-flat.bin');
  writePatternDisk(flat, 3 * MiB, 21);
  writeFileSync(
    path.join(dir, 'multi.vmdk'),
    '# Disk DescriptorFile\nversion=1\nCID=0badc0de\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n' +
      '# Extent description\nRW 2048 FLAT "multi-flat.bin" 0\nRW 1024 ZERO\n' +
      'RW 2048 FLAT "multi-flat.bin" 4096\nRDONLY 100 FLAT "multi-flat.bin" 2048\n',
  );
  const dd = (skip: number, count: number) =>
    runBuffer('dd', [`if=${flat}`, 'bs=512', `skip=${skip}`, `count=${count}`, 'status=none']);
  const expected = Buffer.concat([
    await dd(0, 2048),
    Buffer.alloc(1024 * 512),
    await dd(4096, 2048),
    await dd(2048, 100),
  ]);
  const img = await openImage(path.join(dir, 'multi.vmdk'));
  try {
    assert.equal(img.size, expected.length);
    assert.equal(sha256(await img.read(0, img.size)), sha256(expected));
    assert.equal(await sha256ImageInto(img), sha256(expected));
    // The flat file is sparse: its holes read as zeros and show as zero, where qemu-img
    // map of the file (as raw) puts them; each FLAT extent takes its window of that map.
    const host = await qemuMapRaw(flat, { format: 'raw' });
    const want: Array<{ offset: number; length: number; kind: string }> = [];
    const push = (offset: number, length: number, kind: string) => {
      const last = want[want.length - 1];
      if (last && last.kind === kind && last.offset + last.length === offset) last.length += length;
      else if (length > 0) want.push({ offset, length, kind });
    };
    const window = (from: number, length: number, at: number) => {
      for (const e of host) {
        const s = Math.max(from, e.start);
        const t = Math.min(from + length, e.start + e.length);
        if (t > s) push(at + s - from, t - s, e.data ? 'data' : 'zero');
      }
    };
    window(0, MiB, 0);
    push(MiB, 512 * 1024, 'zero');
    window(2 * MiB, MiB, MiB + 512 * 1024);
    window(MiB, 100 * 512, 2 * MiB + 512 * 1024);
    assert.ok(
      want.some((e) => e.kind === 'zero' && e.offset < MiB),
      'the pattern file has holes in the first extent',
    );
    assert.deepEqual(await img.status(0, img.size), want);
    const d = details(img) as unknown as { extents: Array<{ type: string; access: string }>; cid: string };
    assert.deepEqual(
      d.extents.map((e) => `${e.access} ${e.type}`),
      ['RW FLAT', 'RW ZERO', 'RW FLAT', 'RDONLY FLAT'],
    );
    assert.equal(d.cid, '0badc0de');
  } finally {
    await img.close();
  }
});
