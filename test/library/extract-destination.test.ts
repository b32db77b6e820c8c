import assert from 'node:assert/strict';
import { closeSync, existsSync, lstatSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import type { Inode } from '../../src/fs/types.js';
import { Destination } from '../../src/library/extract/destination.js';
import { tempDir } from './images.js';

/** The destination side of extract on its own: paths stay under DEST, nothing there is followed, the owner and mode policy. */

const inode = (over: Partial<Inode>): Inode =>
  ({
    ino: 12,
    type: 'file',
    mode: 0o100644,
    uid: 0,
    gid: 0,
    size: 0,
    nlink: 1,
    mtime: { sec: 1_600_000_000, nsec: 0 },
    atime: { sec: 1_600_000_100, nsec: 0 },
    ...over,
  }) as Inode;

test('pathOf keeps every target under DEST and refuses names that could leave it', () => {
  const root = tempDir('dest-paths');
  const d = Destination.open(path.join(root, 'out'), false);
  assert.equal(d.created, true);
  assert.equal(d.pathOf('/a/b'), `${d.root}/a/b`);
  assert.equal(d.pathOf(''), d.root);
  assert.equal(d.pathOf('/...'), `${d.root}/...`);
  for (const bad of ['/..', '/a/../../etc', '/a/.', '//etc', '/a/', 'etc', '/a\0b', '/.']) {
    assert.throws(
      () => d.pathOf(bad),
      (e: Error & { code?: string }) => e.code === 'DENIED',
      JSON.stringify(bad),
    );
  }
});

test('existing symlinks in DEST are never followed: mkdir says not-a-dir, createFile fails, outside stays untouched', () => {
  const root = tempDir('dest-symlinks');
  const outside = path.join(root, 'outside');
  mkdirSync(outside);
  const destDir = path.join(root, 'dest');
  mkdirSync(destDir);
  symlinkSync(outside, path.join(destDir, 'dir'));
  symlinkSync(path.join(outside, 'file'), path.join(destDir, 'file'));
  writeFileSync(path.join(destDir, 'plain'), 'x');
  const d = Destination.open(destDir, false);
  assert.equal(d.created, false);
  assert.deepEqual(d.mkdir(d.pathOf('/dir'), inode({ type: 'dir', mode: 0o40755 })), { kind: 'not-a-dir' });
  assert.deepEqual(d.mkdir(d.pathOf('/plain'), inode({ type: 'dir', mode: 0o40755 })), { kind: 'not-a-dir' });
  assert.throws(() => d.createFile(d.pathOf('/file'), inode({})), /EEXIST|ELOOP/);
  assert.throws(() => d.createFile(d.pathOf('/plain'), inode({})), /EEXIST/);
  assert.deepEqual(readdirSync(outside), [], 'nothing written outside DEST');
  assert.throws(() => Destination.open(path.join(destDir, 'plain'), false), /not a directory|EEXIST|ENOTDIR/);
});

test('owner and mode: set-ID bits and owners are applied, directories get theirs last', () => {
  const root = tempDir('dest-owner');
  const d = Destination.open(path.join(root, 'out'), true);
  const isRoot = process.getuid?.() === 0;
  const dirIno = inode({ type: 'dir', mode: 0o40750, uid: isRoot ? 4321 : (process.getuid?.() ?? 0) });
  assert.deepEqual(d.mkdir(d.pathOf('/sub'), dirIno), { kind: 'created' });
  assert.equal(lstatSync(d.pathOf('/sub')).mode & 0o7777, 0o700, 'private until finished');
  const fileIno = inode({ mode: 0o104755, uid: isRoot ? 1234 : (process.getuid?.() ?? 0), gid: isRoot ? 99 : 0 });
  const target = d.pathOf('/sub/prog');
  const { fd, modeSet } = d.createFile(target, fileIno);
  assert.equal(modeSet, false, 'a set-ID mode is never given to open()');
  d.finishFile(fd, target, { ...fileIno, size: 5000 }, 0, modeSet);
  closeSync(fd);
  const st = lstatSync(target);
  assert.equal(st.size, 5000, 'truncated to its size: a trailing hole');
  assert.equal(st.mtimeMs, 1_600_000_000_000);
  if (isRoot) {
    assert.equal(st.mode & 0o7777, 0o4755);
    assert.deepEqual([st.uid, st.gid], [1234, 99]);
  }
  const warnings: string[] = [];
  d.finishDirs((m) => warnings.push(m));
  assert.deepEqual(warnings, []);
  const ds = lstatSync(d.pathOf('/sub'));
  assert.equal(ds.mode & 0o7777, 0o750);
  assert.equal(ds.mtimeMs, 1_600_000_000_000);
  if (isRoot) assert.equal(ds.uid, 4321);
  assert.ok(existsSync(target));
});
