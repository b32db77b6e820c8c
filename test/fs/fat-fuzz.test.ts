import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem } from '../../src/fs/types.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { exfatImage, FAT_SPECS, fatImage } from '../helpers/fat-images.js';
import { exercise, expectCleanOutcome, mutateInPlace, prng } from '../helpers/fuzz.js';
import { run } from '../helpers/tools.js';

/** Sectors of the structures worth mutating, located with fsstat, fls and istat (not with the code under test). */
async function regions(img: string): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  const sectors = (a: number, b: number) => out.push([a * 512, (b + 1) * 512]);
  const fsstat = await run('fsstat', [img]);
  for (const m of fsstat.matchAll(/\*+ (Boot Sector|FS Info Sector|Backup Boot Sector)(?: \(MBR\))?: (\d+)/g))
    sectors(Number(m[2]), Number(m[2]));
  for (const m of fsstat.matchAll(
    /\*+ (?:Volume Boot Record \(VBR\)|Backup Volume Boot Record \(VBR\)): (\d+) - (\d+)/g,
  )) {
    sectors(Number(m[1]), Number(m[2]));
  }
  for (const m of fsstat.matchAll(/^\* FAT \d: (\d+) - (\d+)/gm))
    sectors(Number(m[1]), Math.min(Number(m[2]), Number(m[1]) + 7));
  for (const m of fsstat.matchAll(/\*+ Root Directory: (\d+) - (\d+)/g))
    sectors(Number(m[1]), Math.min(Number(m[2]), Number(m[1]) + 7));
  const fls = await run('fls', ['-r', '-p', '-u', img]);
  for (const want of ['many', 'frag', 'a/b/c', 'empty-dir', '$ALLOC_BITMAP', '$UPCASE_TABLE']) {
    const m = new RegExp(`^\\S+ (\\d+):\\t${want.replace(/\$/g, '\\$')}$`, 'm').exec(fls);
    if (!m) continue;
    const ist = await run('istat', [img, m[1]]);
    const list = ist
      .slice(ist.indexOf('Sectors:') + 8)
      .split(/\s+/)
      .filter((s) => /^\d+$/.test(s) && s !== '0')
      .map(Number);
    for (const s of list.slice(0, 8)) sectors(s, s);
  }
  return out;
}

interface Case {
  name: string;
  image: () => Promise<string>;
  cases: number;
  kind: string;
}

const CASES: Case[] = [
  ...FAT_SPECS.map((s) => ({ name: s.name, image: () => fatImage(s), cases: 340, kind: 'vfat' })),
  { name: 'exfat', image: exfatImage, cases: 1000, kind: 'exfat' },
];

for (const c of CASES) {
  test(`${c.name} fuzz: ${c.cases} mutated images open, walk and read cleanly or fail with StrataError`, async (t) => {
    const img = await c.image();
    const work = new Uint8Array(readFileSync(img));
    const clean = await openFileSystem(new MemorySource(work, `${c.name}.img`));
    assert.equal(clean.kind, c.kind);
    await exercise(clean);
    assert.deepEqual(clean.warnings, []);
    const regs = await regions(img);
    assert.ok(regs.length >= 6, `regions located: ${regs.length}`);
    const failures: string[] = [];
    let opened = 0;
    let completed = 0;
    let warned = 0;
    for (let k = 0; k < c.cases; k++) {
      const seed = 0xfa700000 + k * 7919 + c.name.length;
      const m = mutateInPlace(work, regs, prng(seed));
      const src = new MemorySource(work.subarray(0, m.length), `${c.name}-fuzz-${k}.img`);
      let fs: FileSystem | undefined;
      const outcome = await expectCleanOutcome(async () => {
        fs = await openFileSystem(src);
        opened++;
        await exercise(fs);
        completed++;
      }, 5000);
      if (fs && fs.warnings.length > 0) warned++;
      m.undo();
      if (outcome) failures.push(`case ${k} (seed ${seed}): ${outcome}`);
    }
    t.diagnostic(
      `${opened} opened, ${completed} walked and read completely (${warned} with warnings), ${c.cases - completed} refused`,
    );
    assert.deepEqual(failures, []);
    assert.ok(opened > c.cases / 4, `most mutations still open (${opened})`);
  });
}
