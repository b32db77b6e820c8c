/**
 * Bad and unusual input: garbled os-release, dpkg status with broken stanzas, bad passwd
 * lines, the fallbacks when os-release is missing (debian_version, redhat-release,
 * alpine-release with an apk database written in the format apk's documentation gives), a
 * garbage rpm database, file data overwritten with junk, a truncated image. The answer is
 * best effort with warnings; the only exception ever allowed out is a StrataError.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { inspectImage } from '../../src/inspect/inspect.js';
import type { OsInspection } from '../../src/inspect/types.js';
import { StrataError } from '../../src/util/errors.js';
import { fixture, run, scratch } from '../helpers/tools.js';

const GARBLED_OS_RELEASE =
  '\u0000\u00ff junk without equals\nID="unterminated\nPRETTY_NAME=Garbled Linux 1\nVERSION_ID=7.3\n=novalue\nNAME="Garbled"\n';

const STATUS = `Package: good-one
Status: install ok installed
Version: 1.0-1
Architecture: amd64

this line has no colon
Status: install ok installed
Version: 9

Package: good-two
Status: install ok installed
Version: 3:2.5.1-0.2
Architecture: all
Description: two
 continuation line: with a colon

Package: bad name!
Status: install ok installed
Version: 1

Package: no-version
Status: install ok installed

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: trunc
Status: install ok inst`;

const PASSWD =
  'root:x:0:0:root:/root:/bin/bash\nbroken line\nx:y:notnum:0::/:/bin/sh\nuser:x:1000:1000:A User:/home/user:/bin/sh\n';

// The installed database as apk's documentation (apk-v2 installed database, "P:", "V:", "A:" lines) gives it.
const APK_INSTALLED = `C:Q1abc=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:383152
T:the musl c library

C:Q1def=
P:busybox
V:1.36.1-r15
A:x86_64

C:Q1nov=
P:broken-record
A:x86_64
`;

type Files = Record<string, string | Buffer>;

async function image(out: string, name: string, files: Files): Promise<string> {
  const tree = path.join(out, name);
  for (const d of ['etc', 'usr/bin']) mkdirSync(path.join(tree, d), { recursive: true });
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(tree, p)), { recursive: true });
    writeFileSync(path.join(tree, p), c);
  }
  const img = path.join(out, `${name}.img`);
  await run('mkfs.ext4', ['-q', '-F', '-d', tree, img, '8M']);
  return img;
}

async function images(): Promise<Record<string, string>> {
  const dir = await fixture('inspect-bad-v1', async (out) => {
    mkdirSync(out);
    await image(out, 'garbled', {
      'etc/os-release': GARBLED_OS_RELEASE,
      'var/lib/dpkg/status': STATUS,
      'etc/passwd': PASSWD,
    });
    await image(out, 'debian-version', { 'etc/debian_version': '11.9\n', 'var/lib/dpkg/status': '' });
    await image(out, 'redhat', {
      'etc/redhat-release': 'CentOS Linux release 7.9.2009 (Core)\n',
      'var/lib/rpm/rpmdb.sqlite': Buffer.from('SQLite format 3\u0000 but then garbage '.repeat(200)),
    });
    await image(out, 'alpine', { 'etc/alpine-release': '3.19.1\n', 'lib/apk/db/installed': APK_INSTALLED });
  });
  const names = ['garbled', 'debian-version', 'redhat', 'alpine'];
  return Object.fromEntries(names.map((n) => [n, path.join(dir, `${n}.img`)]));
}

async function one(img: string): Promise<OsInspection> {
  const r = await inspectImage(img);
  assert.equal(r.roots.length, 1);
  return r.roots[0];
}

describe('inspect: bad input gives best-effort answers with warnings', () => {
  test('garbled os-release, broken dpkg stanzas, bad passwd lines', async () => {
    const img = (await images()).garbled;
    const os = await one(img);
    // No /etc/fstab: / is the root's own file system, named by the UUID dumpe2fs reports.
    const uuid = /^Filesystem UUID:\s+(\S+)/m.exec(await run('dumpe2fs', ['-h', img]))?.[1];
    assert.deepEqual(os.mountpoints, { '/': { device: `UUID=${uuid}`, fstype: 'ext4', volume: '' } });
    assert.equal(os.distro, null);
    assert.equal(os.productName, 'Garbled');
    assert.deepEqual([os.versionMajor, os.versionMinor], [7, 3]);
    assert.deepEqual(
      os.packages.map((p) => [p.name, p.epoch, p.version, p.release, p.arch]),
      [
        ['good-one', 0, '1.0', '1', 'amd64'],
        ['good-two', 3, '2.5.1', '0.2', 'all'],
      ],
    );
    assert.deepEqual(
      os.users.map((u) => u.name),
      ['root', 'user'],
    );
    const w = os.warnings.join('\n');
    assert.match(w, /os-release: \d+ garbled line/);
    assert.match(w, /no valid Package field/);
    assert.match(w, /no-version .*no Version/);
    assert.match(w, /passwd line 2/);
  });

  test('no os-release: /etc/debian_version, /etc/redhat-release, /etc/alpine-release', async () => {
    const im = await images();
    const deb = await one(im['debian-version']);
    assert.deepEqual([deb.distro, deb.versionMajor, deb.versionMinor, deb.packageFormat], ['debian', 11, 9, 'deb']);
    const rh = await one(im.redhat);
    assert.deepEqual([rh.distro, rh.versionMajor, rh.versionMinor], ['centos', 7, 9]);
    assert.equal(rh.productName, 'CentOS Linux release 7.9.2009 (Core)');
    assert.equal(rh.packageFormat, 'rpm');
    assert.deepEqual(rh.packages, []);
    assert.ok(
      rh.warnings.some((x) => x.includes('rpmdb.sqlite')),
      rh.warnings.join('\n'),
    );
    const alp = await one(im.alpine);
    assert.deepEqual([alp.distro, alp.versionMajor, alp.versionMinor], ['alpinelinux', 3, 19]);
    assert.deepEqual([alp.packageFormat, alp.packageManager], ['apk', 'apk']);
    assert.deepEqual(
      alp.packages.map((p) => [p.name, p.version, p.release, p.arch]),
      [
        ['musl', '1.2.4_git20230717', 'r4', 'x86_64'],
        ['busybox', '1.36.1', 'r15', 'x86_64'],
      ],
    );
    assert.ok(alp.warnings.some((x) => x.includes('record 3')));
  });

  test('file data overwritten with junk and a truncated image: StrataError or warnings, nothing else', async () => {
    const src = (await images()).garbled;
    const dir = scratch('inspect-junk');
    const blocks = (await run('debugfs', ['-R', 'blocks /var/lib/dpkg/status', src])).trim().split(/\s+/).map(Number);
    const bs = Number(/^Block size:\s+(\d+)/m.exec(await run('dumpe2fs', ['-h', src]))?.[1]);
    assert.ok(blocks.length > 0 && bs > 0);
    for (const [i, mode] of ['junk', 'zeros', 'truncate'].entries()) {
      const img = path.join(dir, `${mode}.img`);
      const b = readFileSync(src);
      for (const blk of blocks) {
        const junk = Buffer.alloc(bs);
        if (mode === 'junk') for (let j = 0; j < bs; j++) junk[j] = (j * 7919 + i * 31 + blk) & 0xff;
        junk.copy(b, blk * bs);
      }
      writeFileSync(img, b);
      if (mode === 'truncate') truncateSync(img, Math.floor(b.length / 3));
      try {
        const r = await inspectImage(img);
        for (const os of r.roots) assert.ok(Array.isArray(os.packages));
      } catch (e) {
        assert.ok(e instanceof StrataError, `${mode}: ${(e as Error).stack}`);
      }
    }
  });
});
