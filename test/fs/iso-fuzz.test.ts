import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem } from '../../src/fs/types.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { exercise, expectCleanOutcome, mutateInPlace, prng } from '../helpers/fuzz.js';
import { genisoJoliet, genisoRR, xorrisoBoot } from '../helpers/iso-images.js';
import { run } from '../helpers/tools.js';

/** Volume descriptors, the boot catalogue and directory extents, located with isoinfo (not with the code under test). */
async function regions(img: string): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [[16 * 2048, 21 * 2048]];
  const d = await run('isoinfo', ['-d', '-i', img]);
  const cat = /boot catalog is in sector (\d+)/.exec(d);
  if (cat) out.push([Number(cat[1]) * 2048, Number(cat[1]) * 2048 + 128]);
  for (const flags of [['-R'], ['-J'], []]) {
    const l = await run('isoinfo', [...flags, '-l', '-i', img]).catch(() => '');
    // the "." line after each "Directory listing of" header carries the directory's first sector
    for (const m of l.matchAll(/Directory listing of .*\n.*\[\s*(\d+)\s+\d+\]\s+\.\s*$/gm)) {
      const lba = Number(m[1]);
      out.push([lba * 2048, (lba + 1) * 2048]);
    }
  }
  return out;
}

const IMAGES: Array<[string, () => Promise<string>, number]> = [
  ['genisoimage -J -R', genisoRR, 400],
  ['xorriso El Torito', xorrisoBoot, 400],
  ['genisoimage -J', genisoJoliet, 200],
];

for (const [name, make, cases] of IMAGES) {
  test(`iso9660 fuzz (${name}): ${cases} mutated images open, walk and read cleanly or fail with StrataError`, async (t) => {
    const img = await make();
    const work = new Uint8Array(readFileSync(img));
    const clean = await openFileSystem(new MemorySource(work, 'clean.iso'));
    await exercise(clean);
    assert.deepEqual(clean.warnings, []);
    const regs = await regions(img);
    assert.ok(regs.length > 20, `regions located: ${regs.length}`);
    const failures: string[] = [];
    let opened = 0;
    let completed = 0;
    for (let k = 0; k < cases; k++) {
      const seed = 0x150f0000 + k * 7919 + name.length;
      const m = mutateInPlace(work, regs, prng(seed));
      const src = new MemorySource(work.subarray(0, m.length), `iso-fuzz-${k}.iso`);
      let fs: FileSystem | undefined;
      const outcome = await expectCleanOutcome(async () => {
        fs = await openFileSystem(src);
        opened++;
        await exercise(fs);
        completed++;
      }, 5000);
      m.undo();
      if (outcome) failures.push(`case ${k} (seed ${seed}): ${outcome}`);
    }
    t.diagnostic(`${opened} opened, ${completed} walked and read completely, ${cases - completed} refused`);
    assert.deepEqual(failures, []);
    assert.ok(opened > cases / 4, `most mutations still open (${opened})`);
  });
}
