/**
 * The layers above the file system on XFS, through the built CLI and with no XFS-specific
 * code of their own: ls, cat, stat, extract, blockmap, checkin (dedup against ext4 of the
 * same tree), inspect (an rpm root like Rocky's) and diff.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { extImage, kernelViewCached, withRwMount } from '../helpers/ext-tree.js';
import { fixture, run, scratch } from '../helpers/tools.js';
import { xfsImage } from '../helpers/xfs-images.js';

const MiB = 1 << 20;
const XFS = { name: 'v5-default', args: [], size: 400 * MiB, reflink: true };
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const lines = (s: string) =>
  s
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));

/** A Rocky-like root (rpm database written by rpm, os-release, passwd, fstab) copied by the kernel into mkfs.xfs. */
async function rockyFixture(): Promise<string> {
  return fixture('xfs-inspect-rocky-v1', async (out) => {
    mkdirSync(out);
    const tree = path.join(out, 'tree');
    const top = path.join(out, 'build');
    for (const d of ['etc', 'usr/bin', 'var/lib/rpm']) mkdirSync(path.join(tree, d), { recursive: true });
    mkdirSync(top, { recursive: true });
    for (const [name, version] of [
      ['rocky-release', '9.4'],
      ['strata-xfs-test', '1.2.3'],
    ]) {
      const spec = path.join(top, `${name}.spec`);
      writeFileSync(
        spec,
        `%global debug_package %{nil}\nName: ${name}\nVersion: ${version}\nRelease: 1.el9\nSummary: t\nLicense: MIT\nBuildArch: noarch\n%description\nt\n%files\n`,
      );
      await run('rpmbuild', ['--define', `_topdir ${top}`, '-bb', spec]);
    }
    const rpms = (await run('find', [path.join(top, 'RPMS'), '-name', '*.rpm'])).trim().split('\n');
    await run('rpm', ['--root', tree, '--dbpath', '/var/lib/rpm', '--initdb']);
    await run('rpm', ['--root', tree, '--dbpath', '/var/lib/rpm', '-i', '--nodeps', '--justdb', ...rpms]);
    writeFileSync(
      path.join(tree, 'etc/os-release'),
      'NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\nPRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n',
    );
    writeFileSync(path.join(tree, 'etc/hostname'), 'rocky-xfs\n');
    writeFileSync(
      path.join(tree, 'etc/passwd'),
      'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n',
    );
    writeFileSync(path.join(tree, 'etc/fstab'), '/dev/mapper/rl-root / xfs defaults 0 0\n');
    writeFileSync(path.join(tree, 'usr/bin/dnf'), '#!/usr/bin/python3\n');
    await run('cp', ['/usr/bin/dash', path.join(tree, 'usr/bin/sh')]);
    const img = path.join(out, 'rocky.img');
    writeFileSync(img, '');
    truncateSync(img, 300 * MiB);
    await run('mkfs.xfs', ['-q', '-f', img]);
    await withRwMount(img, async (m) => {
      await run('cp', ['-a', `${tree}/.`, m]);
    });
  });
}

describe('strata on XFS', () => {
  test('ls -R --json matches the kernel walk; cat matches its hashes; stat shows shared extents', async () => {
    const img = await xfsImage(XFS);
    const kernel = await kernelViewCached(img);
    const r = await strata(['ls', '-R', '--json', img, '/']);
    assert.equal(r.code, 0, r.stderr);
    const recs = lines(r.stdout);
    const got = recs.map(
      (x) => `${x.path} ${x.type} ${x.size} ${x.mode} ${x.uid} ${x.gid} ${x.nlink} ${x.ino} ${x.target ?? ''}`,
    );
    const want = [...kernel.values()]
      .filter((k) => k.path !== '/')
      .map((k) => `${k.path} ${k.type} ${k.size} ${k.mode} ${k.uid} ${k.gid} ${k.nlink} ${k.ino} ${k.target ?? ''}`);
    assert.deepEqual(got.sort(), want.sort());
    for (const p of ['/files/size-1500000', '/sparse/holes', '/reflink/clone-changed', '/fragmented-backwards']) {
      const c = await strata(['cat', img, p]);
      assert.equal(c.code, 0, c.stderr);
      assert.equal(sha(c.stdoutBytes), kernel.get(p)!.sha256, p);
    }
    const st = await strata(['stat', '--json', img, '/reflink/clone-changed']);
    assert.equal(st.code, 0, st.stderr);
    const ex = JSON.parse(st.stdout).extents as Array<{ flags: string[] }>;
    assert.deepEqual(
      ex.map((e) => e.flags.includes('shared')),
      [true, false, true],
    );
    const info = await strata(['fsinfo', '--json', img]);
    assert.equal(info.code, 0, info.stderr);
    const fi = JSON.parse(info.stdout);
    assert.equal((Array.isArray(fi) ? fi[0] : fi).kind ?? (Array.isArray(fi) ? fi[0] : fi).fs?.kind, 'xfs');
  });

  test('extract copies a subtree the way the kernel shows it', async () => {
    const img = await xfsImage(XFS);
    const kernel = await kernelViewCached(img);
    const dest = path.join(scratch('xfs-extract'), 'out');
    try {
      const r = await strata(['extract', '--json', img, '/', dest]);
      assert.equal(r.code, 0, r.stderr);
      for (const k of kernel.values()) {
        // extract makes no sockets (nothing can be bound there without a server)
        if (k.path === '/' || k.type === 'socket') continue;
        const p = path.join(dest, k.path);
        const st = lstatSync(p, { bigint: true });
        assert.equal(Number(st.mode & 0o7777n), k.mode, `${k.path}: mode`);
        assert.equal(Number(st.uid), k.uid, `${k.path}: uid`);
        // extract sets times with microseconds (as the ext CLI test checks them)
        assert.equal(st.mtimeNs / 1000n, k.mtimeNs / 1000n, `${k.path}: mtime`);
        if (k.type === 'symlink') assert.equal(readlinkSync(p), k.target);
        if (k.type === 'file' && k.sha256 && k.size < 64 * MiB) assert.equal(sha(readFileSync(p)), k.sha256, k.path);
      }
    } finally {
      rmSync(path.dirname(dest), { recursive: true, force: true });
    }
  });

  test('blockmap: the kinds of an XFS disk, every metadata kind present', async () => {
    const img = await xfsImage(XFS);
    const r = await strata(['blockmap', '--json', img]);
    assert.equal(r.code, 0, r.stderr);
    const text = r.stdout;
    for (const k of [
      'superblock',
      'group-desc',
      'bitmap',
      'inode-table',
      'journal',
      'extent-tree',
      'directory',
      'file',
      'xattr',
      'free',
    ]) {
      assert.ok(text.includes(`"${k}"`), `blockmap names ${k}`);
    }
    // whatis on the first inode chunk names the root inode
    const w = await strata(['whatis', '--json', img, String(64 * 4096)]);
    assert.equal(w.code, 0, w.stderr);
  });

  test('checkin: file data cut by file dedups between ext4 and XFS images of the same tree', async (t) => {
    const ext = await extImage({
      name: 'ext4-4k',
      mkfs: 'mkfs.ext4',
      args: ['-b', '4096', '-N', '30000'],
      size: 160 * MiB,
    });
    const img = await xfsImage(XFS);
    const lib = scratch('xfs-lib');
    try {
      const a = await strata(['checkin', '--json', '--library', lib, '--name', 'ext', ext]);
      assert.equal(a.code, 0, a.stderr);
      const b = await strata(['checkin', '--json', '--library', lib, '--name', 'xfs', img]);
      assert.equal(b.code, 0, b.stderr);
      const x = JSON.parse(b.stdout);
      assert.deepEqual(x.warnings, []);
      assert.equal(x.volumes[0].fs.kind, 'xfs');
      const data = x.volumes[0].fs.fileDataBytes as number;
      // the XFS-only extras (xattr files, the backwards-written file, three 3 MiB reflink files, one
      // of them partly new) are what may be new; everything from the shared tree must dedup
      t.diagnostic(`ext4 then XFS of the same tree: XFS stored ${x.newBytes} new bytes for ${data} bytes of file data`);
      assert.ok(x.newBytes < data / 2, `new ${x.newBytes} of ${data} file bytes`);
      const again = await strata(['checkin', '--json', '--library', lib, '--name', 'xfs', img]);
      assert.equal(JSON.parse(again.stdout).newChunks, 0, 'a second check-in adds nothing');
    } finally {
      rmSync(lib, { recursive: true, force: true });
    }
  });

  test('diff: files added, removed and changed on an XFS image, as made through the kernel', async () => {
    const a = await fixture('xfs-diff-a-v1.img', async (out) => {
      writeFileSync(out, '');
      truncateSync(out, 300 * MiB);
      await run('mkfs.xfs', ['-q', '-f', out]);
      await withRwMount(out, (m) => {
        mkdirSync(path.join(m, 'etc'));
        writeFileSync(path.join(m, 'etc', 'keep'), 'same\n');
        writeFileSync(path.join(m, 'etc', 'change'), 'before\n');
        writeFileSync(path.join(m, 'etc', 'remove'), 'gone\n');
      });
    });
    const b = `${a}.b-${process.pid}`;
    copyFileSync(a, b);
    try {
      await withRwMount(b, (m) => {
        writeFileSync(path.join(m, 'etc', 'change'), 'after, longer\n');
        unlinkSync(path.join(m, 'etc', 'remove'));
        writeFileSync(path.join(m, 'etc', 'added'), 'new\n');
      });
      const r = await strata(['diff', '--json', a, b]);
      assert.equal(r.code, 0, r.stderr);
      const d = JSON.parse(r.stdout);
      const text = JSON.stringify(d.files ?? d);
      assert.match(text, /\/etc\/added/);
      assert.match(text, /\/etc\/remove/);
      assert.match(text, /\/etc\/change/);
      assert.doesNotMatch(text, /\/etc\/keep/);
    } finally {
      rmSync(b, { force: true });
    }
  });

  test('inspect: a Rocky-like rpm root on XFS (packages as rpm -qa says, users, fstab)', async () => {
    const dir = await rockyFixture();
    const img = path.join(dir, 'rocky.img');
    const qa = (
      await run('rpm', [
        '--root',
        path.join(dir, 'tree'),
        '--dbpath',
        '/var/lib/rpm',
        '-qa',
        '--qf',
        '%{NAME}|%{VERSION}|%{RELEASE}\\n',
      ])
    )
      .trim()
      .split('\n')
      .sort();
    const r = await strata(['inspect', '--json', img]);
    assert.equal(r.code, 0, r.stderr);
    const [os] = JSON.parse(r.stdout);
    assert.equal(os.distro, 'rocky');
    assert.equal(os.packageFormat, 'rpm');
    assert.deepEqual(
      os.packages
        .map((p: { name: string; version: string; release: string }) => `${p.name}|${p.version}|${p.release}`)
        .sort(),
      qa,
    );
    assert.ok(JSON.stringify(os.users ?? os).includes('alice'));
  });

  test('inspect: the same root on XFS inside an LVM logical volume (rl/root), as RHEL-family installs lay it out', async () => {
    const { copyInto, lvm, sparse, withLoop } = await import('../helpers/volume-images.js');
    const rocky = path.join(await rockyFixture(), 'rocky.img');
    const disk = await fixture('xfs-inspect-rocky-lvm-v1.img', async (out) => {
      await sparse(out, 400 * MiB);
      await withLoop(out, {}, async (dev) => {
        await lvm('pvcreate', ['-ff', '-y', dev], [dev]);
        await lvm('vgcreate', ['rl', dev], [dev]);
        await lvm(
          'lvcreate',
          [
            '--driverloaded',
            'n',
            '--activate',
            'n',
            '--zero',
            'n',
            '--wipesignatures',
            'n',
            '-y',
            '-n',
            'root',
            '-L',
            '320M',
            'rl',
          ],
          [dev],
        );
        const seg = (
          await lvm(
            'lvs',
            ['--noheadings', '--units', 'b', '--nosuffix', '-o', 'seg_pe_ranges,vg_extent_size', 'rl/root'],
            [dev],
          )
        )
          .trim()
          .split(/\s+/);
        const pe = Number(
          (await lvm('pvs', ['--noheadings', '--units', 'b', '--nosuffix', '-o', 'pe_start', dev], [dev])).trim(),
        );
        const m = /:(\d+)-(\d+)$/.exec(seg[0])!;
        // one linear segment: the LV's bytes are the disk's from pe_start + first extent
        copyInto(out, pe + Number(m[1]) * Number(seg[1]), rocky);
      });
    });
    const r = await strata(['inspect', '--json', disk]);
    assert.equal(r.code, 0, r.stderr);
    const roots = JSON.parse(r.stdout);
    assert.equal(roots.length, 1);
    assert.equal(roots[0].distro, 'rocky');
    assert.ok(roots[0].packages.some((p: { name: string }) => p.name === 'strata-xfs-test'));
    const ls = await strata(['ls', '--json', disk, '--lv', 'rl/root', '/etc/os-release']);
    assert.equal(ls.code, 0, ls.stderr);
  });
});
