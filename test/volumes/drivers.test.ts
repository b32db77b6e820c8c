import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FileSource } from '../../src/io/file-source.js';
import { discoverVolumes, VOLUME_DRIVERS } from '../../src/volumes/discover.js';
import type { StackDriver, Volume } from '../../src/volumes/types.js';
import { blkidType, gptDisk, mmls } from '../helpers/volume-images.js';

/**
 * Volume drivers plug in: discovery uses the list it is given, table drivers in order and
 * stack drivers over what the tables found. The disk is sgdisk's (test/helpers/volume-images.ts);
 * mmls and blkid say what each driver should see.
 */

test('without the GPT driver, a GPT disk is its protective MBR, as mmls -t dos reads it', async () => {
  const { disk } = await gptDisk();
  const src = await FileSource.open(disk);
  try {
    const drivers = VOLUME_DRIVERS.filter((d) => d.kind !== 'gpt');
    const found = await discoverVolumes(src, { drivers });
    assert.equal(found.scheme, 'mbr');
    const m = await mmls(disk, ['-t', 'dos']);
    assert.deepEqual(
      found.volumes.map((v) => [v.start, v.size, v.typeCode]),
      m.rows.map((r) => [r.start * m.unit, r.length * m.unit, /\((0x[0-9a-f]{2})\)/.exec(r.description)?.[1]]),
    );
    const all = await discoverVolumes(src);
    assert.equal(all.scheme, 'gpt', 'with every driver the same disk is GPT');
  } finally {
    await src.close();
  }
});

test('a stack driver gets exactly the volumes whose content it claims, and its volumes are listed', async () => {
  const { disk } = await gptDisk();
  const src = await FileSource.open(disk);
  try {
    const seen: string[] = [];
    const vfat: StackDriver = {
      level: 'stack',
      kind: 'fat-files',
      probe: (v) => v.content === 'vfat',
      async open(members) {
        seen.push(...members.map((m) => m.id));
        return members.map(
          (m): Volume => ({
            id: `${m.id}/fat`,
            scheme: 'fat-files',
            type: 'FAT',
            start: 0,
            size: 0,
            source: m.source,
            parent: m.id,
          }),
        );
      },
    };
    const found = await discoverVolumes(src, { drivers: [...VOLUME_DRIVERS, vfat] });
    const expected: string[] = [];
    for (const v of found.volumes) {
      if (v.scheme !== 'gpt' || v.size === 0) continue;
      if ((await blkidType(disk, v.start, v.size)) === 'vfat') expected.push(v.id);
    }
    assert.ok(expected.length > 0, 'blkid finds a vfat partition');
    assert.deepEqual(seen, expected);
    const added = found.volumes.filter((v) => v.scheme === 'fat-files');
    assert.deepEqual(
      added.map((v) => [v.id, v.parent]),
      expected.map((id) => [`${id}/fat`, id]),
    );
    const plain = await discoverVolumes(src);
    assert.deepEqual(
      found.volumes.filter((v) => v.scheme !== 'fat-files').map((v) => v.id),
      plain.volumes.map((v) => v.id),
      'the other volumes are as without the driver',
    );
  } finally {
    await src.close();
  }
});
