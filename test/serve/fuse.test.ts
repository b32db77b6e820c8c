import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import {
  BIG_SPARSE_PIECES,
  bytesOf,
  type ExtImageSpec,
  extImage,
  type KernelEntry,
  kernelViewCached,
  treeView,
} from '../helpers/ext-tree.js';
import { isMounted, mountPoint, type StrataMount, strataMount } from '../helpers/fuse-mount.js';
import { have, run } from '../helpers/tools.js';

/**
 * `strata mount` of an image file: the mounted tree must equal the kernel's own read-only
 * loop mount of the same image (every name, type, size, mode, owner, time, link target,
 * xattr, inode number, block count and file hash), and tools (find, tar, du, md5sum -c)
 * must see the same thing on both.
 */

const MiB = 1 << 20;
const N = ['-N', '30000'];
/** Every variant of test/fs/ext.test.ts (same fixture keys, so the images are shared). */
const VARIANTS: ExtImageSpec[] = [
  { name: 'ext4-4k', mkfs: 'mkfs.ext4', args: ['-b', '4096', ...N], size: 160 * MiB },
  { name: 'ext4-1k', mkfs: 'mkfs.ext4', args: ['-b', '1024', ...N], size: 160 * MiB },
  { name: 'ext4-no64bit', mkfs: 'mkfs.ext4', args: ['-b', '4096', '-O', '^64bit', ...N], size: 160 * MiB },
  { name: 'ext4-inline', mkfs: 'mkfs.ext4', args: ['-b', '4096', '-O', 'inline_data', ...N], size: 160 * MiB },
  {
    name: 'ext4-metabg',
    mkfs: 'mkfs.ext4',
    args: ['-b', '1024', '-g', '2048', '-O', 'meta_bg,^resize_inode', ...N],
    size: 160 * MiB,
  },
  {
    name: 'ext4-bigalloc',
    mkfs: 'mkfs.ext4',
    args: ['-b', '4096', '-O', 'bigalloc', '-C', '16384', ...N],
    size: 192 * MiB,
  },
  {
    name: 'ext4-nojournal-ss2',
    mkfs: 'mkfs.ext4',
    args: ['-b', '4096', '-g', '8192', '-O', '^has_journal,sparse_super2', ...N],
    size: 160 * MiB,
  },
  { name: 'ext3', mkfs: 'mkfs.ext3', args: ['-b', '4096', ...N], size: 160 * MiB },
  { name: 'ext2-1k', mkfs: 'mkfs.ext2', args: ['-b', '1024', ...N], size: 160 * MiB },
];

for (const tool of ['mount', 'umount', 'getfattr', 'find', 'tar', 'du', 'md5sum', 'rsync', 'mkfs.ext4', 'debugfs']) {
  test(`tool ${tool} is installed`, () => assert.ok(have(tool), `${tool} is missing`));
}

type Field = keyof KernelEntry;
const FIELDS: Field[] = [
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
  'allocated',
  'rdev',
  'target',
  'sha256',
  'xattrs',
];

/** Every difference between two views, one line each (empty when equal). */
export function differences(
  want: Map<string, KernelEntry>,
  got: Map<string, KernelEntry>,
  fields: Field[] = FIELDS,
  skip: (p: string) => boolean = () => false,
): string[] {
  const out: string[] = [];
  for (const [p, k] of want) {
    if (skip(p)) continue;
    const o = got.get(p);
    if (!o) {
      out.push(`${p}: missing from the mount`);
      continue;
    }
    for (const f of fields) {
      const a = JSON.stringify(k[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
      const b = JSON.stringify(o[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
      if (a !== b) out.push(`${p}: ${f} kernel ${a} mount ${b}`);
    }
  }
  for (const p of got.keys()) if (!want.has(p) && !skip(p)) out.push(`${p}: only in the mount`);
  return out;
}

async function withMount<T>(args: string[], fn: (m: StrataMount) => Promise<T>): Promise<T> {
  const m = await strataMount(args);
  try {
    return await fn(m);
  } finally {
    const code = await m.stop();
    assert.equal(code, 0, `the server ends cleanly on SIGTERM: ${m.stderr()}`);
    assert.ok(!isMounted(m.mnt), 'unmounted');
  }
}

for (const spec of VARIANTS) {
  test(`${spec.name}: the mounted tree equals the kernel's loop mount`, async () => {
    const img = await extImage(spec);
    const kernel = await kernelViewCached(img);
    await withMount([img], async (m) => {
      const ours = treeView(m.mnt);
      const diff = differences(kernel, ours);
      assert.deepEqual(diff.slice(0, 40), [], `${diff.length} differences`);
      assert.ok(kernel.size > 20_000, 'the tree has the big directory');
      // hard links: one inode, several names
      assert.equal(ours.get('/links/hard-1')?.ino, ours.get('/links/target.txt')?.ino);
      assert.equal(ours.get('/names/hard-2-elsewhere')?.ino, ours.get('/links/target.txt')?.ino);
      // the > 4 GiB sparse file is not hashed by the walk: its data pieces and a hole are read here
      const fd = openSync(path.join(m.mnt, 'sparse/big-over-4g'), 'r');
      try {
        for (const [at, len] of BIG_SPARSE_PIECES) {
          const b = Buffer.alloc(len);
          assert.equal(readSync(fd, b, 0, len, at), len);
          assert.ok(b.equals(bytesOf(`big-${at}`, len)), `piece at ${at}`);
        }
        const hole = Buffer.alloc(1 << 20, 1);
        assert.equal(readSync(fd, hole, 0, hole.length, 2 ** 31), hole.length);
        assert.ok(hole.every((x) => x === 0));
      } finally {
        closeSync(fd);
      }
    });
  });
}

/** Run a shell pipeline; stdout, throwing on a non-zero status. */
function sh(script: string): string {
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', script], { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`${script} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

test('find, tar, rsync -a --dry-run, du and md5sum -c see the same tree on the mount as on the kernel loop mount', async () => {
  const img = await extImage(VARIANTS[0]);
  const kmnt = mountPoint('kernel');
  await run('mount', ['-o', 'ro,loop,noload', img, kmnt]);
  try {
    await withMount([img], async (m) => {
      const q = (s: string) => `'${s}'`;
      const find = (d: string) =>
        sh(`cd ${q(d)} && find . -printf '%p %y %m %U %G %s %n %i %T@ %l\\n' | LC_ALL=C sort`);
      assert.equal(find(m.mnt), find(kmnt), 'find -printf of every entry');
      const tar = (d: string) =>
        sh(`tar c --sort=name --exclude=./sparse/big-over-4g -C ${q(d)} . | sha256sum`).split(' ')[0];
      assert.equal(tar(m.mnt), tar(kmnt), 'tar c of the tree (content, owners, modes, times, links, devices)');
      // rsync's own comparison (sizes, times, modes, owners, hard links, xattrs, ACLs, devices): nothing to do
      const rs = sh(`rsync -a -n -i -H -X -A --delete --exclude=/sparse/big-over-4g ${q(m.mnt)}/ ${q(kmnt)}/`);
      assert.equal(rs, '', 'rsync -a --dry-run from the mount to the loop mount itemizes nothing');
      const du = (d: string, a = '') => sh(`du -s ${a} ${q(d)}`).split('\t')[0];
      assert.equal(du(m.mnt), du(kmnt), 'du -s');
      assert.equal(du(m.mnt, '--apparent-size'), du(kmnt, '--apparent-size'), 'du -s --apparent-size');
      const list = path.join(path.dirname(m.mnt), `md5-${process.pid}-${Date.now()}.txt`);
      writeFileSync(list, sh(`cd ${q(kmnt)} && find . -type f ! -name big-over-4g -print0 | xargs -0 md5sum`));
      try {
        const out = sh(`cd ${q(m.mnt)} && md5sum -c --quiet ${q(list)} && echo all-ok`);
        assert.match(out, /all-ok/);
        assert.ok(readFileSync(list, 'utf8').split('\n').length > 20_000, 'md5sum checked every file');
      } finally {
        spawnSync('rm', ['-f', list]);
      }
      // concurrent readers: 16 processes hashing the same and different files at once
      const files = ['files/size-1500000', 'files/size-200000', 'sparse/holes', 'sparse/fragmented', 'prealloc'];
      const jobs = Array.from({ length: 16 }, (_, i) => files[i % files.length]);
      const hashes = await Promise.all(jobs.map((f) => run('sha256sum', [path.join(m.mnt, f)])));
      for (const [i, h] of hashes.entries()) {
        const want = createHash('sha256')
          .update(readFileSync(path.join(kmnt, jobs[i])))
          .digest('hex');
        assert.equal(h.split(' ')[0], want, jobs[i]);
      }
      // read-only
      assert.throws(() => writeFileSync(path.join(m.mnt, 'new-file'), 'x'), /EROFS/);
      assert.throws(() => mkdirSync(path.join(m.mnt, 'new-dir')), /EROFS/);
    });
  } finally {
    await run('umount', [kmnt]).catch(() => run('umount', ['-l', kmnt]));
    rmdirSync(kmnt);
  }
});

test('strata umount ends the server; a killed server leaves a mount umount -l clears', async () => {
  const img = await extImage(VARIANTS[0]);
  const a = await strataMount([img]);
  assert.ok(statSync(path.join(a.mnt, 'files')).isDirectory());
  const r = await strata(['umount', a.mnt]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await a.exited, 0, a.stderr());
  assert.ok(!isMounted(a.mnt));
  rmdirSync(a.mnt);

  const b = await strataMount([img]);
  b.child.kill('SIGKILL');
  await b.exited;
  assert.ok(isMounted(b.mnt), 'the mount outlives a killed server');
  assert.throws(() => statSync(path.join(b.mnt, 'files')), /ENOTCONN/);
  await run('umount', ['-l', b.mnt]);
  assert.ok(!isMounted(b.mnt));
  rmdirSync(b.mnt);
});
