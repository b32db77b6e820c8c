import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, symlinkSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { bytesOf, treeView } from '../helpers/ext-tree.js';
import { run, unmount } from '../helpers/tools.js';
import { tempDir, textOf } from '../library/images.js';
import { addPeople, serve } from './http-helpers.js';

/**
 * GET .../files/tar: a folder of a stored version as a tar. The oracle: GNU tar extracts it,
 * and the result is walked beside the kernel's own loop mount of the image that was checked
 * in (names, types, modes, owners, mtimes to the nanosecond, link targets, hard links,
 * device numbers, user xattrs, sha256 of every file).
 */
let dir: string;
let img: string;
let lib: Library;
let server: RunningServer;
let tokens: Record<string, string>;

before(async () => {
  dir = tempDir('http-tar');
  const tree = path.join(dir, 'tree');
  const deep = path.join(tree, 'share', 'doc', `${'long-name-'.repeat(12)}dir`, 'ünïcödé');
  mkdirSync(deep, { recursive: true });
  writeFileSync(path.join(deep, `${'f'.repeat(120)}.txt`), textOf('deep', 3000));
  writeFileSync(path.join(tree, 'share', 'doc', 'big.bin'), bytesOf('tar-big', 3 * 1024 * 1024 + 77));
  writeFileSync(path.join(tree, 'share', 'doc', 'odd.txt'), textOf('odd', 511));
  writeFileSync(path.join(tree, 'share', 'doc', 'empty'), '');
  const sparse = path.join(tree, 'share', 'doc', 'sparse');
  writeFileSync(sparse, '');
  const fd = openSync(sparse, 'r+');
  writeSync(fd, bytesOf('tail', 4000), 0, 4000, 2 * 1024 * 1024);
  closeSync(fd);
  execFileSync('ln', [path.join(tree, 'share', 'doc', 'odd.txt'), path.join(tree, 'share', 'doc', 'odd-hardlink.txt')]);
  symlinkSync('odd.txt', path.join(tree, 'share', 'doc', 'link'));
  symlinkSync(`/${'t'.repeat(150)}/target`, path.join(tree, 'share', 'doc', 'long-link'));
  execFileSync('mknod', [path.join(tree, 'share', 'doc', 'tty0'), 'c', '4', '0']);
  execFileSync('mkfifo', [path.join(tree, 'share', 'doc', 'fifo')]);
  execFileSync('setfattr', ['-n', 'user.comment', '-v', 'kept in the tar', path.join(tree, 'share', 'doc', 'odd.txt')]);
  execFileSync('chown', ['1234:5678', path.join(tree, 'share', 'doc', 'big.bin')]);
  execFileSync('chmod', ['4751', path.join(tree, 'share', 'doc', 'big.bin')]);
  execFileSync('touch', ['-h', '-d', '2001-02-03 04:05:06.123456789 UTC', path.join(tree, 'share', 'doc', 'link')]);
  utimesSync(path.join(tree, 'share', 'doc', 'empty'), 1_000_000_000.5, 1_000_000_000.25);
  img = path.join(dir, 'tar.img');
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-I', '256', '-E', 'root_owner=0:0', '-d', tree, img, '64M']);
  lib = await Library.open(path.join(dir, 'lib'));
  const people = await addPeople(lib);
  tokens = people.tokens;
  await checkin(lib, img, { name: 'own/tar' });
  await people.access.setImageAccess('own/tar', 'own', 'private');
  server = await serve(lib);
});

after(async () => {
  await server?.close();
  await lib?.close();
});

/** What a tar carries of each entry, from the shared mounted-tree walk (test/helpers/ext-tree.ts). */
function walkTree(root: string): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  for (const [p, e] of treeView(root)) {
    if (p === '/' || p === '/lost+found' || p.startsWith('/lost+found/')) continue;
    const xattrs = Object.entries(e.xattrs ?? {}).filter(([k]) => k.startsWith('user.'));
    out.set(p, {
      type: e.type,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      size: e.type === 'file' ? e.size : 0,
      mtimeNs: e.mtimeNs,
      nlink: e.type === 'dir' ? 0 : e.nlink,
      target: e.target,
      rdev: e.rdev,
      sha256: e.sha256,
      xattrs: Object.fromEntries(xattrs),
    });
  }
  return out;
}

async function getTar(p: string, token: string): Promise<Response> {
  return fetch(`${server.url}/v1/images/own%2Ftar/versions/1/files/tar?path=${encodeURIComponent(p)}`, {
    headers: { authorization: `Bearer ${token}` },
  });
}

test('files/tar: GNU tar extracts a folder equal to the kernel mount of the image', async () => {
  const r = await getTar('/share/doc', tokens['own-reader']);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'application/x-tar');
  assert.match(r.headers.get('content-disposition') ?? '', /filename="doc\.tar"/);
  const tarFile = path.join(dir, 'doc.tar');
  writeFileSync(tarFile, Buffer.from(await r.arrayBuffer()));
  const out = path.join(dir, 'out');
  mkdirSync(out);
  // tar's own check of its input: a bad header or checksum is an error here
  await run('tar', ['--xattrs', '--xattrs-include=user.*', '--numeric-owner', '-xpf', tarFile, '-C', out]);
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt);
  await run('mount', ['-o', 'ro,loop', img, mnt]);
  let kernel: Map<string, Record<string, unknown>>;
  try {
    kernel = walkTree(path.join(mnt, 'share'));
  } finally {
    await unmount(mnt);
  }
  const ours = walkTree(out);
  // the extraction holds doc/ (what was asked for), the mount's share/ holds doc/ too
  assert.deepEqual([...ours.keys()].sort(), [...kernel.keys()].sort());
  for (const [p, k] of kernel) {
    const o = ours.get(p);
    assert.deepEqual(o, k, p); // GNU tar sets symlinks' mtimes too (lutimes): every field compared
  }
  assert.ok(kernel.size >= 12);
  // the walk saw what the tree was made to hold (so the comparison above covers it)
  const seen = [...kernel.values()];
  assert.ok(
    seen.some((e) => Object.keys(e.xattrs as object).length > 0),
    'an xattr',
  );
  assert.ok(
    seen.some((e) => e.type === 'char' && e.rdev),
    'a device node',
  );
  assert.ok(
    seen.some((e) => e.type === 'file' && (e.nlink as number) > 1),
    'a hard link',
  );
});

test('files/tar: one file, the whole version, and access: 404 for a project that may not read', async () => {
  const one = await getTar('/share/doc/odd.txt', tokens['own-reader']);
  assert.equal(one.status, 200);
  const listing = execFileSync('tar', ['-tvf', '-'], { input: Buffer.from(await one.arrayBuffer()), encoding: 'utf8' });
  assert.match(listing, /odd\.txt$/m);
  assert.equal(listing.trim().split('\n').length, 1);
  const all = await getTar('/', tokens['own-reader']);
  assert.equal(all.status, 200);
  const names = execFileSync('tar', ['-tf', '-'], { input: Buffer.from(await all.arrayBuffer()), encoding: 'utf8' });
  assert.match(names, /^share\/doc\/big\.bin$/m);
  assert.match(names, /^lost\+found\/$/m);
  const denied = await getTar('/share/doc', tokens['other-member']);
  assert.equal(denied.status, 404);
  const missing = await getTar('/no/such', tokens['own-reader']);
  assert.equal(missing.status, 404);
});
