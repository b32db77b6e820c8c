/**
 * rpm: packages built by rpmbuild and installed by the real rpm (4.18, sqlite backend) into
 * a tree's /var/lib/rpm, the tree put into ext4 by mkfs.ext4 -d; every package field is
 * checked against `rpm -qa --dbpath` on the same database. (Debian's rpm 4.18 has only the
 * sqlite backend, plus bdb_ro which cannot write: no ndb or Berkeley DB database can be
 * made here.)
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { inspectImage } from '../../src/inspect/inspect.js';
import { fixture, run } from '../helpers/tools.js';

const SPECS: Array<{ name: string; epoch?: number; version: string; release: string; noarch: boolean }> = [
  { name: 'strata-a', epoch: 2, version: '1.2.3', release: '4.fc40', noarch: true },
  { name: 'strata-b', version: '0.9~rc1', release: '1', noarch: false },
  { name: 'strata-c', version: '10.0^git1', release: '0.1.fc40', noarch: true },
  { name: 'strata-d', epoch: 0, version: '1.0', release: '1', noarch: true },
];

const OS_RELEASE =
  'NAME="Fedora Linux"\nVERSION="40 (Forty)"\nID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40 (Forty)"\n';

async function rpmImage(): Promise<{ dir: string; img: string; tree: string }> {
  const dir = await fixture('inspect-rpm-v1', async (out) => {
    const top = path.join(out, 'build');
    const tree = path.join(out, 'tree');
    for (const d of ['etc', 'usr/bin', 'var/lib/rpm', 'build']) mkdirSync(path.join(tree, d), { recursive: true });
    mkdirSync(top, { recursive: true });
    for (const s of SPECS) {
      const spec = path.join(top, `${s.name}.spec`);
      writeFileSync(
        spec,
        [
          '%global debug_package %{nil}',
          `Name: ${s.name}`,
          `Version: ${s.version}`,
          `Release: ${s.release}`,
          s.epoch !== undefined ? `Epoch: ${s.epoch}` : '',
          'Summary: inspect test package',
          'License: MIT',
          s.noarch ? 'BuildArch: noarch' : '',
          '%description',
          'inspect test package',
          '%files',
          '',
        ].join('\n'),
      );
      await run('rpmbuild', ['--define', `_topdir ${top}`, '-bb', spec]);
    }
    const rpms = (await run('find', [path.join(top, 'RPMS'), '-name', '*.rpm'])).trim().split('\n');
    await run('rpm', ['--root', tree, '--dbpath', '/var/lib/rpm', '--initdb']);
    await run('rpm', ['--root', tree, '--dbpath', '/var/lib/rpm', '-i', '--nodeps', '--justdb', ...rpms]);
    writeFileSync(path.join(tree, 'etc/os-release'), OS_RELEASE);
    writeFileSync(path.join(tree, 'etc/hostname'), 'rpmhost\n');
    writeFileSync(path.join(tree, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
    writeFileSync(path.join(tree, 'usr/bin/dnf'), '#!/usr/bin/python3\n');
    await run('cp', ['/usr/bin/dash', path.join(tree, 'usr/bin/sh')]);
    await run('mkfs.ext4', ['-q', '-F', '-d', tree, path.join(out, 'rpm.img'), '16M']);
  });
  return { dir, img: path.join(dir, 'rpm.img'), tree: path.join(dir, 'tree') };
}

describe('inspect an rpm system', () => {
  test('packages from rpmdb.sqlite match rpm -qa on the same database', async () => {
    const f = await rpmImage();
    const qa = (
      await run('rpm', [
        '--root',
        f.tree,
        '--dbpath',
        '/var/lib/rpm',
        '-qa',
        '--qf',
        '%{NAME}|%{EPOCHNUM}|%{VERSION}|%{RELEASE}|%{ARCH}\\n',
      ])
    )
      .trim()
      .split('\n')
      .sort();
    assert.equal(qa.length, SPECS.length);
    const r = await inspectImage(f.img);
    assert.equal(r.roots.length, 1);
    const os = r.roots[0];
    assert.deepEqual(os.packages.map((p) => `${p.name}|${p.epoch}|${p.version}|${p.release}|${p.arch}`).sort(), qa);
    assert.equal(os.packageFormat, 'rpm');
    assert.equal(os.packageManager, 'dnf');
    const sh = (
      await run('sh', [
        '-c',
        '. "$1"; printf "%s|%s|%s" "$ID" "$PRETTY_NAME" "$VERSION_ID"',
        'sh',
        path.join(f.tree, 'etc/os-release'),
      ])
    ).split('|');
    assert.deepEqual([os.distro, os.productName, String(os.versionMajor)], sh);
    assert.equal(os.versionMinor, 0);
    assert.equal(os.hostname, 'rpmhost');
    assert.equal(os.arch, (await run('uname', ['-m'])).trim());
    assert.deepEqual(os.warnings, []);
  });
});
