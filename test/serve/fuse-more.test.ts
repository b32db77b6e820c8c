import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { type ExtImageSpec, extImage, type KernelEntry, kernelViewCached, treeView } from '../helpers/ext-tree.js';
import { type StrataMount, strataMount } from '../helpers/fuse-mount.js';
import { fixture, run, scratch } from '../helpers/tools.js';

/**
 * `strata mount` of a library version (from its file manifest and the store's chunks, no
 * checkout) against the kernel's loop mount of the image checked in; and corrupt images
 * (a directory cycle, names holding '/'): the bad entry fails, the rest keeps serving.
 */

const MiB = 1 << 20;
const EXT4_4K: ExtImageSpec = {
  name: 'ext4-4k',
  mkfs: 'mkfs.ext4',
  args: ['-b', '4096', '-N', '30000'],
  size: 160 * MiB,
};

async function stopClean(m: StrataMount): Promise<void> {
  const code = await m.stop();
  assert.equal(code, 0, m.stderr());
}

test('a library version mounts from its manifest: the tree equals the kernel loop mount of the image checked in', async () => {
  const img = await extImage(EXT4_4K);
  const kernel = await kernelViewCached(img);
  const dir = scratch('fuse-lib');
  try {
    const lib = path.join(dir, 'lib');
    const ci = await strata(['checkin', '--library', lib, '--name', 'ext', img]);
    assert.equal(ci.code, 0, ci.stderr);
    const m = await strataMount(['--library', lib, 'ext@1'], 'lib');
    try {
      const ours = treeView(m.mnt);
      const diffs: string[] = [];
      for (const [p, k] of kernel) {
        // the manifest keeps no record of the root directory itself; st_blocks is not kept either
        if (p === '/') continue;
        const o = ours.get(p);
        if (!o) {
          diffs.push(`${p}: missing`);
          continue;
        }
        for (const f of [
          'type',
          'mode',
          'uid',
          'gid',
          'size',
          'nlink',
          'ino',
          'mtimeNs',
          'atimeNs',
          'ctimeNs',
          'birthNs',
          'rdev',
          'target',
          'sha256',
          'xattrs',
        ] as Array<keyof KernelEntry>) {
          const a = JSON.stringify(k[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
          const b = JSON.stringify(o[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
          if (a !== b) diffs.push(`${p}: ${f} kernel ${a} mount ${b}`);
        }
      }
      for (const p of ours.keys()) if (!kernel.has(p)) diffs.push(`${p}: only in the mount`);
      assert.deepEqual(diffs.slice(0, 40), [], `${diffs.length} differences`);
      assert.equal(ours.get('/links/hard-1')?.ino, ours.get('/links/target.txt')?.ino, 'hard links: one inode');
      // a sequential read of a multi-chunk file through the cache and read-ahead
      const r = spawnSync('sh', ['-c', `cat '${m.mnt}/files/size-1500000' | sha256sum`], { encoding: 'utf8' });
      assert.equal(r.stdout.split(' ')[0], kernel.get('/files/size-1500000')?.sha256);
    } finally {
      await stopClean(m);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A small ext4 image with a directory cycle (/a/b/c/back-to-a is /a, /a/up-to-root is /)
 * made by debugfs, and a name holding '/' ("xsy" patched to "x/y" in /names' block).
 */
async function badImage(): Promise<string> {
  return fixture('fuse-bad-cycle-slash-v1.img', async (out) => {
    const tree = `${out}.tree`;
    mkdirSync(path.join(tree, 'a', 'b', 'c'), { recursive: true });
    writeFileSync(path.join(tree, 'a', 'b', 'c', 'file.txt'), 'deep file\n');
    mkdirSync(path.join(tree, 'names'));
    for (const n of ['xsy', 'good1', 'good2']) writeFileSync(path.join(tree, 'names', n), `${n}\n`);
    mkdirSync(path.join(tree, 'ok'));
    writeFileSync(path.join(tree, 'ok', 'data.bin'), Buffer.alloc(300_000, 9));
    try {
      writeFileSync(out, '');
      truncateSync(out, 32 << 20);
      await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-O', '^metadata_csum', '-d', tree, out]);
    } finally {
      rmSync(tree, { recursive: true, force: true });
    }
    for (const c of ['link /a /a/b/c/back-to-a', 'link / /a/up-to-root']) await run('debugfs', ['-w', '-R', c, out]);
    const blk = Number((await run('debugfs', ['-R', 'blocks /names', out])).trim().split(/\s+/)[0]);
    const img = readFileSync(out);
    const at = img.indexOf(Buffer.from('xsy'), blk * 4096);
    assert.ok(at > blk * 4096 && at < (blk + 1) * 4096, 'found xsy in the directory block');
    img.write('x/y', at);
    writeFileSync(out, img);
  });
}

test('a corrupt image: the cycle entries answer EIO, a name with / is left out, the rest keeps serving', async () => {
  const img = await badImage();
  const m = await strataMount([img], 'bad');
  try {
    const p = (...x: string[]) => path.join(m.mnt, ...x);
    // listed ...
    assert.ok(readdirSync(p('a', 'b', 'c')).includes('back-to-a'));
    assert.ok(readdirSync(p('a')).includes('up-to-root'));
    // ... but not entered
    assert.throws(() => lstatSync(p('a', 'b', 'c', 'back-to-a')), /EIO/);
    assert.throws(() => lstatSync(p('a', 'up-to-root')), /EIO/);
    assert.throws(() => readdirSync(p('a', 'up-to-root')), /EIO/);
    // the rest serves
    assert.equal(readFileSync(p('a', 'b', 'c', 'file.txt'), 'utf8'), 'deep file\n');
    assert.deepEqual(readdirSync(p('names')).sort(), ['good1', 'good2']);
    assert.equal(readFileSync(p('names', 'good2'), 'utf8'), 'good2\n');
    assert.ok(readFileSync(p('ok', 'data.bin')).equals(Buffer.alloc(300_000, 9)));
    // find walks everything else, reports the two entries, and ends
    const f = spawnSync('find', [m.mnt], { encoding: 'utf8' });
    assert.notEqual(f.status, 0);
    assert.match(f.stderr, /back-to-a.*Input\/output error/);
    assert.ok(f.stdout.includes(p('ok', 'data.bin')));
    assert.ok(f.stdout.includes(p('a', 'b', 'c', 'file.txt')));
  } finally {
    await stopClean(m);
  }
  assert.match(m.stderr(), /met twice \(a cycle\)/);
});
