/**
 * An exact check-in of the same image gives the same manifest whatever the host's page
 * cache holds. Linux's SEEK_DATA reports a file's unwritten (fallocated) extents as holes
 * while their pages are not cached and as data once they are (CI failed on this: the
 * 200,000-entry check-in's two runs differed in usedBytes). The image here has such extents,
 * made by fallocate(1); the page cache is emptied for the file with posix_fadvise(DONTNEED)
 * (python3's os.posix_fadvise) and filled by reading it with cat.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { Library } from '../../src/library/library.js';
import { run } from '../helpers/tools.js';
import { tempDir } from './images.js';

/** Data bytes of `file` as SEEK_DATA / SEEK_HOLE report them now (python3's os.lseek). */
function seekDataBytes(file: string): number {
  const py = `import os,sys
fd=os.open(sys.argv[1],os.O_RDONLY); end=os.lseek(fd,0,os.SEEK_END); pos=0; n=0
while pos<end:
    try: d=os.lseek(fd,pos,os.SEEK_DATA)
    except OSError: break
    h=os.lseek(fd,d,os.SEEK_HOLE); n+=h-d; pos=h
print(n)`;
  return Number(execFileSync('python3', ['-c', py, file], { encoding: 'utf8' }).trim());
}

function dropCache(file: string): void {
  execFileSync('python3', [
    '-c',
    'import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.fdatasync(fd); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)',
    file,
  ]);
}

test('exact check-in: the same manifest with the image out of the page cache and in it (fallocated extents)', async (t) => {
  const dir = tempDir('exact-cache');
  const img = path.join(dir, 'disk.raw');
  await run('truncate', ['-s', '64M', img]);
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'nodiscard', img]);
  // unwritten extents inside the file system's free space: zeros to every reader
  await run('fallocate', ['-o', String(40 * 2 ** 20), '-l', String(8 * 2 ** 20), '-n', img]);
  await run('fallocate', ['-o', String(8 * 2 ** 20 + 4096 * 3), '-l', String(4096 * 5), '-n', img]);

  const manifests: string[] = [];
  const seen: number[] = [];
  for (const cached of [false, true, false]) {
    if (cached) execFileSync('sh', ['-c', 'cat "$1" > /dev/null', 'sh', img]);
    else dropCache(img);
    seen.push(seekDataBytes(img));
    const lib = await Library.open(path.join(dir, `lib-${manifests.length}`));
    try {
      const r = await checkin(lib, img, { name: 'd', exact: true });
      manifests.push(r.manifest);
      if (manifests.length === 1) {
        const out = path.join(dir, 'out.raw');
        await checkout(lib, r.ref, out);
        await run('cmp', [img, out]);
      }
    } finally {
      await lib.close();
    }
  }
  t.diagnostic(`SEEK_DATA data bytes: uncached ${seen[0]}, cached ${seen[1]}, uncached again ${seen[2]}`);
  assert.equal(manifests[1], manifests[0], 'cached vs uncached');
  assert.equal(manifests[2], manifests[0], 'uncached again');
});
