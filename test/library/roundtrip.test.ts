import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout, openVersionSource } from '../../src/library/checkout.js';
import { Library } from '../../src/library/library.js';
import { verifyLibrary } from '../../src/library/library-verbs.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { fixture, run } from '../helpers/tools.js';
import { gptDisk, lvRanges, mbrDisk } from '../helpers/volume-images.js';
import { baseTree, extImageOf, freeRanges, MiB, qemuSha, sha256File, tempDir } from './images.js';

/**
 * Round trips through the library: check in, check out, compare with what qemu-img,
 * e2fsck and dumpe2fs say about the original.
 */
let lib: Library;
let dir: string;

before(async () => {
  dir = tempDir('lib-roundtrip');
  lib = await Library.open(path.join(dir, 'lib'));
});
after(async () => {
  await lib?.close();
});

let n = 0;
async function roundTrip(image: string, exact: boolean, format: 'raw' | 'qcow2' = 'raw') {
  const name = `img${++n}`;
  const r = await checkin(lib, image, { name, exact });
  const out = path.join(dir, `${name}.${format}`);
  await checkout(lib, r.ref, out, { format });
  return { r, out };
}

function e2fsckClean(file: string): void {
  const p = spawnSync('e2fsck', ['-fn', file], { encoding: 'utf8' });
  assert.equal(p.status, 0, `e2fsck -fn ${file}: ${p.stdout}${p.stderr}`);
}

async function qemuCompare(a: string, b: string): Promise<void> {
  const p = spawnSync('qemu-img', ['compare', a, b], { encoding: 'utf8' });
  assert.equal(p.status, 0, `qemu-img compare ${a} ${b}: ${p.stdout}${p.stderr}`);
}

/** Copy bytes [offset, offset+length) of `file` to a new file. */
function slice(file: string, offset: number, length: number, out: string): string {
  const src = openSync(file, 'r');
  const dst = openSync(out, 'w');
  const buf = Buffer.alloc(MiB);
  for (let done = 0; done < length; ) {
    const k = readSync(src, buf, 0, Math.min(MiB, length - done), offset + done);
    if (k <= 0) break;
    writeSync(dst, buf, 0, k, done);
    done += k;
  }
  closeSync(src);
  closeSync(dst);
  return out;
}

/** The original with the ranges dumpe2fs calls free zeroed: what a default checkout must equal. */
async function freeZeroed(image: string, base: number, out: string): Promise<string> {
  copyFileSync(image, out);
  const fd = openSync(out, 'r+');
  for (const [s, e] of await freeRanges(image)) {
    writeSync(fd, Buffer.alloc(e - s), 0, e - s, base + s);
  }
  closeSync(fd);
  return out;
}

describe('library round trips', () => {
  test('ext4, default: equal to the original with free blocks (dumpe2fs) zeroed; e2fsck -fn clean', async () => {
    const img = await extImageOf('ext4', await baseTree(), 'base');
    const { r, out } = await roundTrip(img, false);
    const expected = await freeZeroed(img, 0, path.join(dir, 'ext4-expected.raw'));
    assert.notEqual(sha256File(expected), sha256File(img), 'the fixture has garbage in its free space');
    await qemuCompare(expected, out);
    e2fsckClean(out);
    assert.ok(r.usedBytes < r.virtualSize, 'free space is not stored');
  });

  test('ext4, --exact: raw and qcow2 checkouts are the original byte for byte', async () => {
    const img = await extImageOf('ext4', await baseTree(), 'base');
    const { r, out } = await roundTrip(img, true);
    assert.equal(sha256File(out), sha256File(img));
    const q = path.join(dir, 'exact.qcow2');
    await checkout(lib, r.ref, q, { format: 'qcow2' });
    await run('qemu-img', ['check', q]);
    await qemuCompare(q, img);
    // the same version read through the on-demand ByteSource
    const src = await openVersionSource(lib, r.ref);
    const probe = Buffer.alloc(3 * MiB + 17);
    const fd = openSync(img, 'r');
    readSync(fd, probe, 0, probe.length, 5 * MiB + 3);
    closeSync(fd);
    assert.deepEqual(Buffer.from(await src.read(5 * MiB + 3, probe.length)), probe);
  });

  for (const kind of ['ext2', 'ext3'] as const) {
    test(`${kind}: --exact has the original's sha256; default passes e2fsck -fn`, async () => {
      const img = await extImageOf(kind, await baseTree(), 'base', 40);
      const exact = await roundTrip(img, true);
      assert.equal(sha256File(exact.out), sha256File(img));
      const def = await roundTrip(img, false);
      e2fsckClean(def.out);
      await qemuCompare(await freeZeroed(img, 0, path.join(dir, `${kind}-expected.raw`)), def.out);
    });
  }

  test('qcow2 with a backing chain, vmdk and vhdx: --exact equals the virtual disk qemu-img sees', async () => {
    const raw = await extImageOf('ext4', await baseTree(), 'base');
    const chain = await fixture('lib-v1-chain', async (out) => {
      const { mkdirSync } = await import('node:fs');
      mkdirSync(out);
      await run('qemu-img', ['convert', '-O', 'qcow2', raw, path.join(out, 'base.qcow2')]);
      await run('qemu-img', [
        'create',
        '-f',
        'qcow2',
        '-b',
        'base.qcow2',
        '-F',
        'qcow2',
        path.join(out, 'child.qcow2'),
      ]);
      await run('qemu-io', ['-c', 'write -P 0x5a 47M 512k', path.join(out, 'child.qcow2')]);
      await run('qemu-img', ['convert', '-O', 'vmdk', raw, path.join(out, 'disk.vmdk')]);
      await run('qemu-img', ['convert', '-O', 'vhdx', raw, path.join(out, 'disk.vhdx')]);
    });
    const child = path.join(chain, 'child.qcow2');
    const c = await roundTrip(child, true);
    assert.equal(c.r.volumes[0]?.fs?.kind, 'ext4', 'the file system was read through the chain');
    assert.equal(sha256File(c.out), await qemuSha(child));
    const d = await roundTrip(child, false);
    e2fsckClean(d.out);
    for (const f of ['disk.vmdk', 'disk.vhdx']) {
      const x = await roundTrip(path.join(chain, f), true, 'qcow2');
      await qemuCompare(x.out, raw);
      assert.equal(await qemuSha(x.out), sha256File(raw));
    }
  });

  test('GPT disk with vfat, ext4, swap and an ext2 in an LVM LV', async () => {
    const g = await gptDisk();
    const exact = await roundTrip(g.disk, true);
    assert.equal(sha256File(exact.out), sha256File(g.disk));
    const def = await roundTrip(g.disk, false);
    const parts = JSON.parse(await run('sfdisk', ['--json', g.disk])) as {
      partitiontable: { partitions: Array<{ start: number; size: number }> };
    };
    const p = parts.partitiontable.partitions.map((x) => ({ start: x.start * 512, size: x.size * 512 }));
    // vfat (1) and swap (3) are not read as file systems: stored block-wise, equal byte for byte
    for (const i of [0, 2]) {
      const a = slice(g.disk, p[i].start, p[i].size, path.join(dir, `gpt-orig-${i}`));
      const b = slice(def.out, p[i].start, p[i].size, path.join(dir, `gpt-out-${i}`));
      assert.equal(sha256File(b), sha256File(a), `partition ${i + 1}`);
    }
    e2fsckClean(slice(def.out, p[1].start, p[1].size, path.join(dir, 'gpt-p2')));
    const [lv] = lvRanges(g.oracle, 'gvg', 'data');
    e2fsckClean(slice(def.out, lv.diskOffset, lv.length, path.join(dir, 'gpt-lv')));
    assert.ok(
      def.r.volumes.some((v) => v.id === 'gvg/data' && v.fs?.kind === 'ext2'),
      'the LV was read',
    );
  });

  test('MBR disk with logical partitions', async () => {
    const m = await mbrDisk();
    const exact = await roundTrip(m.disk, true);
    assert.equal(sha256File(exact.out), sha256File(m.disk));
    const def = await roundTrip(m.disk, false);
    const parts = JSON.parse(await run('sfdisk', ['--json', m.disk])) as {
      partitiontable: { partitions: Array<{ node: string; start: number; size: number }> };
    };
    for (const node of ['1', '5']) {
      const p = parts.partitiontable.partitions.find((x) => x.node === `${m.disk}${node}`)!;
      e2fsckClean(slice(def.out, p.start * 512, p.size * 512, path.join(dir, `mbr-p${node}`)));
    }
  });

  test('a disk with no file system is stored block-wise and comes back whole', async () => {
    const disk = await fixture('lib-v1-pattern.raw', async (out) => writePatternDisk(out, 24 * MiB + 4096, 7));
    const { r, out } = await roundTrip(disk, false);
    assert.equal(r.volumes.filter((v) => v.fs).length, 0);
    assert.equal(sha256File(out), sha256File(disk));
    const v = await verifyLibrary(lib);
    assert.deepEqual(v.errors, []);
    assert.deepEqual(v.missing, []);
  });

  test('a 10-byte file checks in as a tiny raw disk; a missing file fails with a clear error', async () => {
    const bad = path.join(dir, 'tiny.bin');
    writeFileSync(bad, Buffer.from('not a disk'));
    const before = (await lib.catalog.images()).length;
    const r = await checkin(lib, bad, { name: 'tiny' });
    // 10 bytes of raw data: a valid (tiny) raw disk, stored block-wise
    assert.equal(r.virtualSize, 10);
    assert.equal((await lib.catalog.images()).length, before + 1);
    await assert.rejects(checkin(lib, path.join(dir, 'missing.img'), { name: 'x' }), /cannot open/);
  });
});
