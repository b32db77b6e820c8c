import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { ntfsSmallImage, withNtfsMount } from '../helpers/ntfs-images.js';
import { run, scratch } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const lines = (s: string) =>
  s
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

async function ok(args: string[]): Promise<string> {
  const r = await strata(args);
  assert.equal(r.code, 0, `strata ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Regular files below `root` with their sha256, relative paths. */
async function shas(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const rel of (await run('find', ['.', '-type', 'f'], { cwd: root })).split('\n').filter(Boolean))
    out.set(rel.slice(2), sha(readFileSync(path.join(root, rel))));
  return out;
}

test('NTFS image through the CLI: ls, cat, stat, extract, blockmap and checkin work unchanged; results match the ntfs-3g mount and istat', async () => {
  const img = await ntfsSmallImage();
  const { paths, files } = await withNtfsMount(img, 'ro', async (m) => ({
    paths: (await run('find', ['.', '-mindepth', '1'], { cwd: m }))
      .split('\n')
      .filter(Boolean)
      .map((p) => p.slice(1)),
    files: await shas(m),
  }));
  const listed = lines(await ok(['ls', '-R', '--json', img, '/'])).map((x) => x.path as string);
  assert.deepEqual(listed.sort(), paths.sort());
  const cat = await strata(['cat', img, '/frag']);
  assert.equal(cat.code, 0, cat.stderr);
  assert.equal(sha(cat.stdoutBytes), files.get('frag'));
  // stat: the extents cover exactly the clusters istat lists for $DATA
  const st = JSON.parse(await ok(['stat', '--json', img, '/frag'])) as {
    size: number;
    extents: Array<{ volumeOffset: number; length: number }>;
  };
  assert.equal(st.size, 120000);
  const addr = /^r\/r (\d+)-128-\d+:\tfrag$/m.exec(await run('fls', ['-r', '-p', img]))![1];
  const fsstat = await run('fsstat', [img]);
  const cluster = Number(/Cluster Size: (\d+)/.exec(fsstat)![1]);
  const ist = await run('istat', [img, addr]);
  const clusters = [...ist.matchAll(/^(?:\d+ )+$/gm)].flatMap((l) => l[0].trim().split(' ').map(Number));
  const mine = st.extents.flatMap((e) =>
    Array.from({ length: Math.ceil(e.length / cluster) }, (_, k) => e.volumeOffset / cluster + k),
  );
  assert.deepEqual(mine, clusters);
  // blockmap: those clusters belong to /frag; the MFT is in the map
  const map = lines(await ok(['blockmap', '--json', img]));
  const covered = new Set<number>();
  for (const r of map.filter((r) => r.path === '/frag' && r.kind === 'file'))
    for (let c = 0; c < (r.length as number) / cluster; c++) covered.add((r.start as number) / cluster + c);
  for (const c of clusters) assert.ok(covered.has(c), `cluster ${c} mapped to /frag`);
  assert.ok(
    map.some((r) => r.kind === 'inode-table' && r.fs === 'ntfs'),
    'the MFT is in the map',
  );
  const dir = scratch('ntfs-cli');
  try {
    const dest = path.join(dir, 'x');
    await ok(['extract', img, '/', dest]);
    assert.deepEqual([...(await shas(dest))].sort(), [...files].sort());
    const lib = path.join(dir, 'lib');
    await ok(['checkin', img, '--name', 'win', '--library', lib]);
    const back = await strata(['cat', 'win', '/a/b/c.txt', '--library', lib], {});
    assert.equal(back.code, 0, back.stderr);
    assert.equal(sha(back.stdoutBytes), files.get('a/b/c.txt'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
