import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem } from '../../src/fs/types.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { exercise, expectCleanOutcome, mutateInPlace, prng } from '../helpers/fuzz.js';
import { ntfsSmallImage } from '../helpers/ntfs-images.js';
import { run } from '../helpers/tools.js';

/** Byte ranges worth mutating, located with TSK's fsstat/fls/istat (not with the code under test). */
async function regions(img: string): Promise<Array<[number, number]>> {
  const fsstat = await run('fsstat', [img]);
  const cluster = Number(/Cluster Size: (\d+)/.exec(fsstat)![1]);
  const mftCluster = Number(/First Cluster of MFT: (\d+)/.exec(fsstat)![1]);
  const out: Array<[number, number]> = [[0, 512]];
  // MFT records 0..79 (system files and the files of the tree)
  out.push([mftCluster * cluster, mftCluster * cluster + 80 * 1024]);
  const fls = await run('fls', ['-r', '-p', img]);
  for (const want of ['many', 'frag', 'z/text']) {
    const m = new RegExp(`^\\S+ (\\d+)(?:-\\d+-\\d+)?:\\t${want}$`, 'm').exec(fls);
    assert.ok(m, `fls lists ${want}`);
    const ist = await run('istat', [img, m[1]]);
    // its MFT record (the MFT of a fresh small volume is one run)
    out.push([mftCluster * cluster + Number(m[1]) * 1024, mftCluster * cluster + (Number(m[1]) + 1) * 1024]);
    const list = [...ist.matchAll(/^(?:\d+ )+$/gm)]
      .flatMap((l) => l[0].trim().split(' ').map(Number))
      .filter((c) => c > 0);
    for (const c of list.slice(0, 8)) out.push([c * cluster, c * cluster + Math.min(cluster, 4096)]);
  }
  return out;
}

const CASES = 1000;

test(`ntfs fuzz: ${CASES} mutated images open, walk and read cleanly or fail with StrataError`, async (t) => {
  const img = await ntfsSmallImage();
  const work = new Uint8Array(readFileSync(img));
  const clean = await openFileSystem(new MemorySource(work, 'ntfs.img'));
  assert.equal(clean.kind, 'ntfs');
  await exercise(clean);
  assert.deepEqual(clean.warnings, []);
  const regs = await regions(img);
  assert.ok(regs.length >= 6, `regions located: ${regs.length}`);
  const failures: string[] = [];
  let opened = 0;
  let completed = 0;
  for (let k = 0; k < CASES; k++) {
    const seed = 0x7f500000 + k * 7919;
    const m = mutateInPlace(work, regs, prng(seed));
    const src = new MemorySource(work.subarray(0, m.length), `ntfs-fuzz-${k}.img`);
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
  t.diagnostic(`${opened} opened, ${completed} walked and read completely, ${CASES - completed} refused`);
  assert.deepEqual(failures, []);
  assert.ok(opened > CASES / 4, `most mutations still open (${opened})`);
});
