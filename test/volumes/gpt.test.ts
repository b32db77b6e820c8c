import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { discoverVolumes } from '../../src/volumes/discover.js';
import type { Volume } from '../../src/volumes/types.js';
import { run, scratch } from '../helpers/tools.js';
import { blkidType, gpt4kDisk, gptDisk, mmls } from '../helpers/volume-images.js';

/** `sgdisk -i N` parsed. */
async function sgdiskInfo(file: string, n: number) {
  const out = await run('sgdisk', ['-i', String(n), file]);
  const field = (label: string) => {
    const m = new RegExp(`^${label}: (.*)$`, 'm').exec(out);
    if (!m) throw new Error(`sgdisk -i ${n} printed no ${label}: ${out}`);
    return m[1];
  };
  return {
    typeGuid: field('Partition GUID code').split(' ')[0],
    uniqueGuid: field('Partition unique GUID'),
    first: Number(field('First sector').split(' ')[0]),
    last: Number(field('Last sector').split(' ')[0]),
    attributes: field('Attribute flags'),
    name: /^'(.*)'$/.exec(field('Partition name'))?.[1],
  };
}

/** `sgdisk -p` parsed: disk GUID and the table rows (number, start, end, code, name). */
async function sgdiskPrint(file: string) {
  const out = await run('sgdisk', ['-p', file]);
  const guid = /Disk identifier \(GUID\): (\S+)/.exec(out)?.[1];
  const rows: Array<{ n: number; start: number; end: number; code: string; name: string }> = [];
  for (const line of out.split('\n')) {
    const m = /^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+([0-9A-F]{4})\s+(.*)$/.exec(line);
    if (m) rows.push({ n: Number(m[1]), start: Number(m[2]), end: Number(m[3]), code: m[4], name: m[5].trim() });
  }
  return { guid, rows, out };
}

const parts = (vs: Volume[]) => vs.filter((v) => v.scheme === 'gpt');

/** sgdisk type codes of the fixture and the names the brief asks us to give them. */
const EXPECTED_NAMES: Record<string, string> = {
  EF00: 'EFI System',
  '8300': 'Linux filesystem',
  '8200': 'Linux swap',
  '8E00': 'Linux LVM',
  '0700': 'Microsoft basic data',
};

test('GPT: every field matches sgdisk -p / -i, mmls and blkid', async () => {
  const { disk } = await gptDisk();
  const src = await FileSource.open(disk);
  try {
    const r = await discoverVolumes(src);
    assert.equal(r.scheme, 'gpt');
    assert.equal(r.sectorSize, 512);
    assert.deepEqual(r.warnings, []);
    const p = await sgdiskPrint(disk);
    assert.equal(r.diskId, p.guid);
    const ours = parts(r.volumes);
    assert.deepEqual(
      ours.map((v) => v.id),
      p.rows.map((x) => String(x.n)),
    );
    for (const row of p.rows) {
      const v = ours.find((x) => x.id === String(row.n))!;
      const i = await sgdiskInfo(disk, row.n);
      assert.equal(v.typeCode, i.typeGuid, `type of ${row.n}`);
      assert.equal(v.type, EXPECTED_NAMES[row.code], `type name of ${row.n} (${row.code})`);
      assert.equal(v.uuid, i.uniqueGuid, `unique GUID of ${row.n}`);
      assert.equal(v.start, i.first * 512);
      assert.equal(v.size, (i.last - i.first + 1) * 512);
      assert.equal(v.name, i.name, `name of ${row.n}`);
      assert.equal(String(v.details?.attributes).toUpperCase(), i.attributes.toUpperCase());
      assert.equal(v.content, await blkidType(disk, v.start, v.size), `content of ${row.n}`);
    }
    // Named attribute bits: sgdisk set bit 2 on 2 and bit 62 on 5.
    assert.ok(ours.find((v) => v.id === '2')!.flags!.includes('legacy-bios-bootable'));
    assert.ok(ours.find((v) => v.id === '5')!.flags!.includes('hidden'));
    assert.ok(!ours.find((v) => v.id === '1')!.flags!.includes('hidden'));
    // The Sleuth Kit agrees on every extent.
    const m = await mmls(disk);
    assert.equal(m.unit, 512);
    assert.deepEqual(
      ours.map((v) => [v.start, v.size, v.name]),
      m.rows.map((x) => [x.start * 512, x.length * 512, x.description]),
    );
    // Each partition's bytes are the disk's bytes.
    const whole = readFileSync(disk);
    for (const v of ours) {
      const b = await v.source.read(0, 4096);
      assert.deepEqual(Buffer.from(b), whole.subarray(v.start, v.start + 4096));
    }
  } finally {
    await src.close();
  }
});

test('GPT: a damaged primary header or entry array falls back to the backup with a warning', async () => {
  const { disk } = await gptDisk();
  const bytes = readFileSync(disk);
  const good = await discoverVolumes(new MemorySource(bytes, 'good'));
  const shape = (vs: Volume[]) => parts(vs).map((v) => [v.id, v.start, v.size, v.typeCode, v.uuid, v.name]);

  for (const [what, at] of [
    ['header', 512],
    ['entry array', 1024],
  ] as const) {
    const bad = new Uint8Array(bytes);
    bad.fill(0x5a, at, at + 512);
    const r = await discoverVolumes(new MemorySource(bad, `damaged-${what}`));
    assert.equal(r.scheme, 'gpt');
    assert.deepEqual(shape(r.volumes), shape(good.volumes), what);
    assert.ok(
      r.warnings.some((w) => /primary GPT .*damaged.*backup/.test(w)),
      `${what}: ${JSON.stringify(r.warnings)}`,
    );
    // sgdisk reads the same damaged disk from its backup and prints the same table.
    const f = path.join(scratch('gpt-damaged'), 'disk.img');
    writeFileSync(f, bad);
    const p = await sgdiskPrint(f);
    assert.deepEqual(
      parts(r.volumes).map((v) => [v.start / 512, (v.start + v.size) / 512 - 1]),
      p.rows.map((x) => [x.start, x.end]),
    );
  }

  // A damaged backup alone: the primary is used and the problem reported.
  const noBackup = new Uint8Array(bytes);
  noBackup.fill(0, noBackup.length - 512);
  const r2 = await discoverVolumes(new MemorySource(noBackup, 'no-backup'));
  assert.deepEqual(shape(r2.volumes), shape(good.volumes));
  assert.ok(
    r2.warnings.some((w) => /backup GPT header .* not usable/.test(w)),
    JSON.stringify(r2.warnings),
  );

  // Both headers gone behind a protective MBR: a clear CORRUPT error, no MBR fallback.
  const both = new Uint8Array(noBackup);
  both.fill(0, 512, 1024);
  await assert.rejects(
    discoverVolumes(new MemorySource(both, 'both-damaged')),
    (e: unknown) =>
      e instanceof StrataError &&
      e.code === 'CORRUPT' &&
      /primary header unusable.*backup.*unusable/.test(e.message) &&
      e.message.includes('both-damaged'),
  );
});

test('GPT: primary and backup that disagree are reported', async () => {
  const { disk } = await gptDisk();
  const bytes = new Uint8Array(readFileSync(disk));
  // Rename partition 1 in the backup entry array only and fix both backup CRCs with the
  // same IEEE CRC-32 zlib computes (the primary stays untouched and valid).
  const { crc32 } = await import('node:zlib');
  const lastLba = bytes.length / 512 - 1;
  const hdr = lastLba * 512;
  const dv = new DataView(bytes.buffer);
  const entriesLba = Number(dv.getBigUint64(hdr + 72, true));
  const count = dv.getUint32(hdr + 80, true);
  const size = dv.getUint32(hdr + 84, true);
  const e0 = entriesLba * 512;
  bytes[e0 + 56] = 'X'.charCodeAt(0);
  dv.setUint32(hdr + 88, crc32(bytes.subarray(e0, e0 + count * size)) >>> 0, true);
  dv.setUint32(hdr + 16, 0, true);
  dv.setUint32(hdr + 16, crc32(bytes.subarray(hdr, hdr + dv.getUint32(hdr + 12, true))) >>> 0, true);
  const r = await discoverVolumes(new MemorySource(bytes, 'disagree'));
  assert.ok(
    r.warnings.some((w) => /disagree.*partition entries/.test(w)),
    JSON.stringify(r.warnings),
  );
  assert.equal(parts(r.volumes)[0].name, 'EFI', 'the primary wins');
});

test('GPT with 4096-byte sectors is found and matches mmls -b 4096 and blkid', async () => {
  const { disk } = await gpt4kDisk();
  const src = await FileSource.open(disk);
  try {
    const r = await discoverVolumes(src);
    assert.equal(r.scheme, 'gpt');
    assert.equal(r.sectorSize, 4096);
    const m = await mmls(disk, ['-b', '4096']);
    assert.equal(m.unit, 4096);
    const ours = parts(r.volumes);
    assert.deepEqual(
      ours.map((v) => [v.start, v.size, v.name ?? '']),
      m.rows.map((x) => [x.start * 4096, x.length * 4096, x.description]),
    );
    assert.equal(ours[0].content, await blkidType(disk, ours[0].start, ours[0].size));
    assert.equal(ours[0].content, 'ext4');
    // Forcing 512-byte sectors finds no GPT at LBA 1 and, behind a protective MBR, says so.
    await assert.rejects(discoverVolumes(src, { sectorSize: 512 }), (e: unknown) => e instanceof StrataError);
  } finally {
    await src.close();
  }
});
