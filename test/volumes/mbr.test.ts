import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { discoverVolumes } from '../../src/volumes/discover.js';
import { findVolume } from '../../src/volumes/select.js';
import { run } from '../helpers/tools.js';
import { blkidType, mbrDisk, mmls, type SfdiskJson } from '../helpers/volume-images.js';

async function sfdiskJson(file: string) {
  const j = JSON.parse(await run('sfdisk', ['--json', file])) as SfdiskJson;
  return j.partitiontable;
}

test('MBR: primaries, extended and logicals match sfdisk --json, mmls and blkid', async () => {
  const { disk } = await mbrDisk();
  const src = await FileSource.open(disk);
  try {
    const r = await discoverVolumes(src);
    const t = await sfdiskJson(disk);
    assert.equal(r.scheme, 'mbr');
    assert.equal(t.label, 'dos');
    assert.equal(r.diskId, t.id);
    assert.deepEqual(r.warnings, []);
    const ss = t.sectorsize ?? 512;
    assert.deepEqual(
      r.volumes.map((v) => v.id),
      t.partitions.map((p) => p.node.slice(disk.length)),
    );
    for (const p of t.partitions) {
      const id = p.node.slice(disk.length);
      const v = r.volumes.find((x) => x.id === id)!;
      assert.equal(v.scheme, 'mbr');
      assert.equal(v.start, p.start * ss, `start of ${id}`);
      assert.equal(v.size, p.size * ss, `size of ${id}`);
      assert.equal(Number.parseInt(v.typeCode!, 16), Number.parseInt(p.type, 16), `type of ${id}`);
      assert.equal(v.flags!.includes('bootable'), p.bootable === true, `bootable of ${id}`);
      const ext = ['5', 'f', '85'].includes(p.type.toLowerCase());
      assert.equal(v.flags!.includes('extended'), ext);
      assert.equal(v.flags!.includes('logical'), Number(id) >= 5);
      if (ext) assert.equal(v.content, undefined, 'the extended container has no file system');
      else assert.equal(v.content, await blkidType(disk, v.start, v.size), `content of ${id}`);
    }
    assert.equal(r.volumes.find((v) => v.id === '1')!.content, 'ext2');
    assert.equal(r.volumes.find((v) => v.id === '5')!.content, 'ext4');
    assert.equal(r.volumes.find((v) => v.id === '4')!.type, 'extended');
    assert.equal(r.volumes.find((v) => v.id === '6')!.type, 'Linux LVM');
    // mmls -a lists the data partitions (not the extended containers) in the same places.
    const m = await mmls(disk);
    const data = r.volumes.filter((v) => !v.flags!.includes('extended'));
    assert.deepEqual(
      data.map((v) => [v.start, v.size]),
      m.rows.map((x) => [x.start * m.unit, x.length * m.unit]),
    );
    // Selection by id, and a USAGE error listing what exists.
    assert.equal(findVolume(r.volumes, { part: '5' }).start, r.volumes.find((v) => v.id === '5')!.start);
    assert.throws(
      () => findVolume(r.volumes, { part: '9' }),
      (e: unknown) => e instanceof StrataError && e.code === 'USAGE' && /available: 1 .*5 \[ext4\]/.test(e.message),
    );
    assert.throws(
      () => findVolume(r.volumes, { lv: 'vg/x' }),
      (e: unknown) => e instanceof StrataError && e.code === 'USAGE',
    );
  } finally {
    await src.close();
  }
});

/** Byte offsets of the EBRs in chain order, following the links by hand from sfdisk's extended start. */
function ebrOffsets(bytes: Uint8Array, extStartSector: number): number[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  const out: number[] = [];
  let lba = extStartSector;
  for (let i = 0; i < 16; i++) {
    const at = lba * 512;
    out.push(at);
    const link = dv.getUint32(at + 446 + 16 + 8, true);
    if (bytes[at + 446 + 16 + 4] === 0 || link === 0) break;
    lba = extStartSector + link;
  }
  return out;
}

test('MBR: a looping EBR chain ends with a warning, each logical listed once, no hang', async () => {
  const { disk } = await mbrDisk();
  const bytes = new Uint8Array(readFileSync(disk));
  const t = await sfdiskJson(disk);
  const ext = t.partitions.find((p) => p.type === '5')!;
  const ebrs = ebrOffsets(bytes, ext.start);
  assert.equal(ebrs.length, 3, 'three EBRs for three logicals');
  // Third EBR links back to the second one.
  const loop = new Uint8Array(bytes);
  const ldv = new DataView(loop.buffer);
  loop[ebrs[2] + 446 + 16 + 4] = 0x05;
  ldv.setUint32(ebrs[2] + 446 + 16 + 8, ebrs[1] / 512 - ext.start, true);
  ldv.setUint32(ebrs[2] + 446 + 16 + 12, 100, true);
  const r = await discoverVolumes(new MemorySource(loop, 'loop'));
  assert.deepEqual(
    r.volumes.map((v) => v.id),
    ['1', '2', '3', '4', '5', '6', '7'],
  );
  assert.ok(
    r.warnings.some((w) => /loops/.test(w)),
    JSON.stringify(r.warnings),
  );
  // A link to itself (relative offset of the first EBR = 0 -> the start of the extended partition).
  const self = new Uint8Array(bytes);
  new DataView(self.buffer).setUint32(ebrs[0] + 446 + 16 + 8, 0, true);
  const r2 = await discoverVolumes(new MemorySource(self, 'self'));
  assert.deepEqual(
    r2.volumes.map((v) => v.id),
    ['1', '2', '3', '4', '5'],
  );
  assert.ok(r2.warnings.some((w) => /loops/.test(w)));
});

test('MBR: past-the-end partitions are clamped with a warning; overlaps are reported', async () => {
  const { disk } = await mbrDisk();
  const bytes = new Uint8Array(readFileSync(disk));
  const dv = new DataView(bytes.buffer);
  // Entry 3: grow it to 1 TiB worth of sectors; entry 2: move it to overlap entry 1.
  dv.setUint32(446 + 2 * 16 + 12, 0x7fffffff, true);
  dv.setUint32(446 + 1 * 16 + 8, 4096, true);
  const r = await discoverVolumes(new MemorySource(bytes, 'odd'));
  const p3 = r.volumes.find((v) => v.id === '3')!;
  assert.equal(p3.start + p3.size, bytes.length, 'clamped to the disk end');
  assert.ok(p3.flags!.includes('truncated'));
  assert.ok(
    r.warnings.some((w) => /partition 3 .*runs past the disk end/.test(w)),
    JSON.stringify(r.warnings),
  );
  assert.ok(
    r.warnings.some((w) => /partitions 1 and 2 overlap/.test(w)),
    JSON.stringify(r.warnings),
  );
  // The clamped slice reads real bytes up to the end.
  const tail = await p3.source.read(p3.size - 16, 16);
  assert.deepEqual(tail, bytes.subarray(bytes.length - 16));
  // Starting past the end entirely: listed as empty with a warning.
  dv.setUint32(446 + 2 * 16 + 8, 0x7fff0000, true);
  const r2 = await discoverVolumes(new MemorySource(bytes, 'odd2'));
  assert.equal(r2.volumes.find((v) => v.id === '3')!.size, 0);
  assert.ok(r2.warnings.some((w) => /past the disk end/.test(w)));
});

test('MBR: no signature and no file system -> scheme none; tiny disks are refused', async () => {
  const r = await discoverVolumes(new MemorySource(new Uint8Array(1 << 20), 'zeros'));
  assert.equal(r.scheme, 'none');
  assert.deepEqual(r.volumes, []);
  assert.ok(r.warnings.length > 0);
  await assert.rejects(
    discoverVolumes(new MemorySource(new Uint8Array(100), 'tiny')),
    (e: unknown) => e instanceof StrataError && e.code === 'TRUNCATED',
  );
});

test('MBR: a stale GPT signature without a protective entry does not hide the MBR', async () => {
  const { disk } = await mbrDisk();
  const bytes = new Uint8Array(readFileSync(disk));
  bytes.set(Buffer.from('EFI PART'), 512);
  const r = await discoverVolumes(new MemorySource(bytes, 'stale-gpt'));
  assert.equal(r.scheme, 'mbr');
  assert.equal(r.volumes.length, 7);
  assert.ok(
    r.warnings.some((w) => /no protective .*using the MBR/.test(w)),
    JSON.stringify(r.warnings),
  );
});
