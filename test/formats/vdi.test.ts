import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openImage } from '../../src/formats/open.js';
import type { DiskImage } from '../../src/formats/types.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { dataBytes, qemuMap, strataMap } from '../helpers/qemu-map.js';
import { fixture, run, scratch, sha256 } from '../helpers/tools.js';

const MiB = 1024 * 1024;
/** Not a multiple of the 1 MiB VDI block: the last block is partly past the disk's end. */
const SIZE = 7 * MiB + 3 * 512;

async function sha256Image(img: DiskImage): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < img.size; off += 4 * MiB) h.update(await img.read(off, Math.min(4 * MiB, img.size - off)));
  return h.digest('hex');
}

/** The same through readInto with one reused buffer full of junk (as convert uses it). */
async function sha256ImageInto(img: DiskImage): Promise<string> {
  assert.ok(img.readInto, 'the image offers readInto');
  const h = createHash('sha256');
  const buf = Buffer.alloc(MiB + 4096, 0xee);
  for (let off = 0; off < img.size; ) {
    buf.fill(0xee);
    const n = await img.readInto(off, buf);
    assert.ok(n > 0);
    h.update(buf.subarray(0, n));
    off += n;
  }
  return h.digest('hex');
}

async function sourceRaw(): Promise<string> {
  return fixture(`vdi-src-${SIZE}-s7.raw`, async (out) => writePatternDisk(out, SIZE, 7));
}

async function vdi(kind: 'dynamic' | 'static'): Promise<string> {
  const raw = await sourceRaw();
  const dir = await fixture(`vdi-${kind}-${SIZE}-v1`, async (out) => {
    mkdirSync(out);
    const opts = kind === 'static' ? ['-o', 'static=on'] : [];
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', ...opts, raw, path.join(out, 'disk.vdi')]);
  });
  return path.join(dir, 'disk.vdi');
}

for (const kind of ['dynamic', 'static'] as const) {
  test(`vdi ${kind}: bytes equal the source raw, map equals qemu-img map`, async () => {
    const raw = await sourceRaw();
    const file = await vdi(kind);
    const img = await openImage(file);
    try {
      assert.equal(img.format, 'vdi');
      assert.equal(img.subformat, kind);
      assert.equal(img.size, SIZE);
      assert.equal(img.clusterSize, MiB);
      assert.equal(await sha256Image(img), sha256(readFileSync(raw)));
      assert.equal(await sha256ImageInto(img), sha256(readFileSync(raw)));
      const theirs = await qemuMap(file);
      assert.ok(dataBytes(theirs) > 0);
      assert.deepEqual(await strataMap(img), theirs);
      // Reads that straddle block boundaries and the very end.
      const whole = readFileSync(raw);
      for (const [off, len] of [
        [MiB - 5, 10],
        [3 * MiB - 4096, 2 * MiB + 8192],
        [SIZE - 100, 100],
      ]) {
        assert.deepEqual(Buffer.from(await img.read(off, len)), whole.subarray(off, off + len));
      }
    } finally {
      await img.close();
    }
  });
}

test('vdi written piecewise by qemu-io: unallocated blocks and a partial last block', async () => {
  const dir = await fixture('vdi-piecewise-v1', async (out) => {
    mkdirSync(out);
    const f = path.join(out, 'disk.vdi');
    await run('qemu-img', ['create', '-q', '-f', 'vdi', f, `${SIZE}`]);
    await run('qemu-io', ['-f', 'vdi', '-c', 'write -P 0x11 0 3M', '-c', `write -P 0x22 ${SIZE - 512} 512`, f]);
    await run('qemu-img', ['convert', '-f', 'vdi', '-O', 'raw', f, path.join(out, 'oracle.raw')]);
  });
  const file = path.join(dir, 'disk.vdi');
  const img = await openImage(file);
  try {
    assert.equal(await sha256Image(img), sha256(readFileSync(path.join(dir, 'oracle.raw'))));
    assert.equal(await sha256ImageInto(img), sha256(readFileSync(path.join(dir, 'oracle.raw'))));
    assert.deepEqual(await strataMap(img), await qemuMap(file));
  } finally {
    await img.close();
  }
});

test('vdi: a discarded block (map entry 0xfffffffe) reads as zeros and reports zero', async () => {
  // qemu never writes this value but reads it as unallocated: its convert is the oracle.
  const dir = await fixture('vdi-discarded-entry-v1', async (out) => {
    mkdirSync(out);
    const b = readFileSync(await vdi('dynamic'));
    const bmap = b.readUInt32LE(0x154);
    b.writeUInt32LE(0xfffffffe, bmap + 4 * 2);
    const f = path.join(out, 'disk.vdi');
    writeFileSync(f, b);
    await run('qemu-img', ['convert', '-f', 'vdi', '-O', 'raw', f, path.join(out, 'oracle.raw')]);
  });
  const file = path.join(dir, 'disk.vdi');
  const img = await openImage(file);
  try {
    assert.equal(await sha256Image(img), sha256(readFileSync(path.join(dir, 'oracle.raw'))));
    assert.deepEqual(await strataMap(img), await qemuMap(file));
    assert.deepEqual(await img.status(2 * MiB, MiB), [{ offset: 2 * MiB, length: MiB, kind: 'zero' }]);
  } finally {
    await img.close();
  }
});

function expectStrata(code: string, structure: RegExp, file: string) {
  return (e: unknown) => {
    assert.ok(e instanceof StrataError, `expected a StrataError, got ${(e as Error)?.stack ?? e}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.structure ?? '', structure, e.message);
    assert.ok(e.message.includes(file), e.message);
    return true;
  };
}

function patched(src: string, name: string, edit: (b: Buffer) => Buffer): string {
  const out = path.join(scratch('vdi-bad'), name);
  writeFileSync(out, edit(readFileSync(src)));
  return out;
}

test('vdi: a block map past the end of the file is refused', async () => {
  const f = patched(await vdi('dynamic'), 'bmap.vdi', (b) => {
    b.writeUInt32LE(0x7ffffe00, 0x154);
    return b;
  });
  await assert.rejects(openImage(f), expectStrata('CORRUPT', /vdi block map/, f));
});

test('vdi: an absurd disk size is refused', async () => {
  const f = patched(await vdi('dynamic'), 'huge.vdi', (b) => {
    b.writeBigUInt64LE(1n << 62n, 0x170);
    return b;
  });
  await assert.rejects(openImage(f), expectStrata('LIMIT', /vdi header/, f));
});

test('vdi: a block map entry pointing past the data is refused on read', async () => {
  const f = patched(await vdi('dynamic'), 'entry.vdi', (b) => {
    const bmap = b.readUInt32LE(0x154);
    b.writeUInt32LE(4, bmap); // block 0 -> data block 4, but only a few exist
    b.writeUInt32LE(0x7ffffff0, bmap + 4);
    return b;
  });
  const img = await openImage(f);
  try {
    await assert.rejects(img.read(MiB, 4096), expectStrata('CORRUPT', /vdi block map entry/, f));
  } finally {
    await img.close();
  }
});

test('vdi: a truncated file fails cleanly', async () => {
  const f = patched(await vdi('static'), 'trunc.vdi', (b) => b.subarray(0, 300));
  await assert.rejects(openImage(f), expectStrata('TRUNCATED', /vdi header/, f));
});
