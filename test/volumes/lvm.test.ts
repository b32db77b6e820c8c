import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { discoverVolumes } from '../../src/volumes/discover.js';
import { parseLvmText } from '../../src/volumes/lvm-text.js';
import { findVolume } from '../../src/volumes/select.js';
import type { Volume } from '../../src/volumes/types.js';
import {
  blkidType,
  gptDisk,
  type LvmOracle,
  lvmDisk,
  lvmWrapDisk,
  lvRanges,
  metadataWraps,
  twoPvDisk,
} from '../helpers/volume-images.js';

const lvsOf = (vs: Volume[]) => vs.filter((v) => v.scheme === 'lvm');

/** Distinct LV names lvs reported (lvs sorts by name; we keep metadata order, so compare sorted) (visible ones: lvs -a marks hidden ones with [brackets]). */
function oracleLvs(o: LvmOracle): string[] {
  const names: string[] = [];
  for (const r of o.lvs) {
    const id = `${r.vg_name}/${r.lv_name}`;
    if (!r.lv_name.startsWith('[') && !names.includes(id)) names.push(id);
  }
  return names;
}

/**
 * Write a distinct marker at the first and last 32 bytes of every segment of every linear LV
 * (disk offsets from lvs/pvs, not from our code), then read each back through our LV source
 * at the LV offset lvs gives for that segment.
 */
async function checkMarkers(bytes: Uint8Array, o: LvmOracle, lvNames: string[], name: string): Promise<void> {
  const copy = new Uint8Array(bytes);
  const expect: Array<{ lv: string; lvOffset: number; marker: Uint8Array }> = [];
  for (const id of lvNames) {
    const [vg, lv] = id.split('/');
    for (const [k, seg] of lvRanges(o, vg, lv).entries()) {
      for (const [end, rel] of [
        ['start', 0],
        ['end', seg.length - 32],
      ] as const) {
        const marker = Buffer.from(`<${id} seg ${k} ${end}>`.padEnd(32, '#'));
        copy.set(marker, seg.diskOffset + rel);
        expect.push({ lv: id, lvOffset: seg.lvOffset + rel, marker });
      }
    }
  }
  const r = await discoverVolumes(new MemorySource(copy, name));
  for (const e of expect) {
    const v = findVolume(r.volumes, { lv: e.lv });
    assert.deepEqual(Buffer.from(await v.source.read(e.lvOffset, 32)), e.marker, `${e.lv} at ${e.lvOffset}`);
  }
}

test('LVM on a whole disk: LVs, segments and byte ranges match lvs/pvs; markers read back', async () => {
  const { disk, oracle } = await lvmDisk();
  const src = await FileSource.open(disk);
  try {
    const r = await discoverVolumes(src);
    assert.equal(r.scheme, 'whole');
    assert.deepEqual(r.warnings, []);
    const whole = r.volumes.find((v) => v.id === '')!;
    assert.equal(whole.content, await blkidType(disk));
    assert.equal(whole.content, 'LVM2_member');
    const lvs = lvsOf(r.volumes);
    assert.deepEqual(lvs.map((v) => v.id).sort(), oracleLvs(oracle).sort());
    for (const v of lvs) {
      const [vg, lv] = v.id.split('/');
      const ranges = lvRanges(oracle, vg, lv);
      assert.equal(
        v.size,
        ranges.reduce((n, x) => n + x.length, 0),
        `size of ${v.id}`,
      );
      assert.equal(v.parent, '');
      assert.equal(v.typeCode, 'linear');
      assert.equal(v.start, ranges[0].diskOffset, `start of ${v.id}`);
      const segs = v.details!.segments as unknown[];
      assert.equal(segs.length, oracle.lvs.filter((x) => x.vg_name === vg && x.lv_name === lv).length);
    }
    assert.equal(lvRanges(oracle, 'wvg', 'lv1').length, 2, 'lv1 has two segments per lvs');
    await checkMarkers(readFileSync(disk), oracle, oracleLvs(oracle), 'lvm-whole');
  } finally {
    await src.close();
  }
});

test('LVM: metadata text that wraps around the circular buffer is read', async () => {
  const { disk, oracle } = await lvmWrapDisk();
  assert.ok(metadataWraps(disk), 'the fixture really wraps');
  const bytes = readFileSync(disk);
  const r = await discoverVolumes(new MemorySource(bytes, 'wrap'));
  assert.deepEqual(r.warnings, []);
  assert.deepEqual(
    lvsOf(r.volumes)
      .map((v) => v.id)
      .sort(),
    oracleLvs(oracle).sort(),
  );
  await checkMarkers(bytes, oracle, oracleLvs(oracle), 'wrap');
});

test('LVM PV inside a GPT partition: LVs nested under the partition, ext2 inside found', async () => {
  const { disk, oracle } = await gptDisk();
  const src = await FileSource.open(disk);
  try {
    const r = await discoverVolumes(src);
    const lv = findVolume(r.volumes, { lv: 'gvg/data' });
    assert.equal(lv.parent, '4');
    const [range] = lvRanges(oracle, 'gvg', 'data');
    assert.equal(lv.size, range.length);
    assert.equal(lv.content, await blkidType(disk, range.diskOffset, range.length));
    assert.equal(lv.content, 'ext2');
    const whole = readFileSync(disk);
    assert.deepEqual(
      Buffer.from(await lv.source.read(1024, 1024)),
      whole.subarray(range.diskOffset + 1024, range.diskOffset + 2048),
    );
  } finally {
    await src.close();
  }
});

test('LVM over two PVs: a linear LV spanning both reads right, the striped LV is UNSUPPORTED, a missing PV is NOT_FOUND', async () => {
  const { disk, oracle } = await twoPvDisk();
  const bytes = readFileSync(disk);
  const r = await discoverVolumes(new MemorySource(bytes, '2pv'));
  assert.deepEqual(r.warnings, []);
  assert.deepEqual(
    lvsOf(r.volumes)
      .map((v) => v.id)
      .sort(),
    oracleLvs(oracle).sort(),
  );
  const st = findVolume(r.volumes, { lv: 'svg/st' });
  const stRows = oracle.lvs.filter((x) => x.lv_name === 'st');
  assert.equal(stRows[0].segtype, 'striped');
  assert.equal(st.typeCode, 'striped');
  assert.ok(st.flags!.includes('unsupported'));
  await assert.rejects(
    st.source.read(0, 512),
    (e: unknown) => e instanceof StrataError && e.code === 'UNSUPPORTED' && /striped/.test(e.message),
  );
  const span = findVolume(r.volumes, { lv: 'svg/span' });
  const ranges = lvRanges(oracle, 'svg', 'span');
  assert.ok(new Set(ranges.map((x) => x.part)).size === 2, 'span lies on both PVs per lvs');
  assert.equal(span.parent, ranges[0].part);
  assert.equal(
    span.size,
    ranges.reduce((n, x) => n + x.length, 0),
  );
  await checkMarkers(bytes, oracle, ['svg/span'], '2pv');
  // A read across the boundary between the two PVs stitches both disk ranges together.
  const [r0, r1] = ranges;
  const across = await span.source.read(r1.lvOffset - 100, 200);
  assert.deepEqual(
    Buffer.from(across),
    Buffer.concat([
      bytes.subarray(r0.diskOffset + r0.length - 100, r0.diskOffset + r0.length),
      bytes.subarray(r1.diskOffset, r1.diskOffset + 100),
    ]),
  );
  assert.equal(r1.lvOffset, r0.length);

  // Wipe the label of the PV in partition 2: the VG is incomplete.
  const p2 = Object.values(oracle.devices).find((d) => d.part === '2')!;
  const cut = new Uint8Array(bytes);
  cut.fill(0, p2.offset, p2.offset + 4096);
  const r2 = await discoverVolumes(new MemorySource(cut, 'missing'));
  assert.ok(
    r2.warnings.some((w) => /svg: 1 of 2 PVs missing/.test(w)),
    JSON.stringify(r2.warnings),
  );
  const span2 = findVolume(r2.volumes, { lv: 'svg/span' });
  assert.ok(span2.flags!.includes('missing-pv'));
  await assert.rejects(
    span2.source.read(0, 512),
    (e: unknown) => e instanceof StrataError && e.code === 'NOT_FOUND' && /missing/.test(e.message),
  );
});

test('LVM text parser: sections, strings with escapes, numbers, arrays, comments; errors are CORRUPT', () => {
  const t = parseLvmText(
    'vg { id = "a\\"b" # comment\n n = -12\n arr = [ "x", 1, "y" ]\n empty = []\n sub { k = 1.5 } }\nversion = 1\n',
  );
  const vg = t.entries.get('vg');
  assert.ok(vg && typeof vg === 'object' && !Array.isArray(vg));
  assert.equal(vg.entries.get('id'), 'a"b');
  assert.equal(vg.entries.get('n'), -12);
  assert.deepEqual(vg.entries.get('arr'), ['x', 1, 'y']);
  assert.deepEqual(vg.entries.get('empty'), []);
  assert.equal(t.entries.get('version'), 1);
  for (const bad of ['vg {', 'x = ', 'x = "open', 'a = [1 2]', '}', 'x = @', `${'a{'.repeat(100)}`]) {
    assert.throws(
      () => parseLvmText(bad),
      (e: unknown) => e instanceof StrataError && (e.code === 'CORRUPT' || e.code === 'LIMIT'),
      bad,
    );
  }
});
