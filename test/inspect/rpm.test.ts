/**
 * rpm: packages built by rpmbuild and installed by the real rpm (4.18, sqlite backend) into
 * a tree's /var/lib/rpm, the tree put into ext4 by mkfs.ext4 -d; every package field is
 * checked against `rpm -qa --dbpath` on the same database. The older Berkeley DB format:
 * the same kind of headers loaded by db5.3_load into a hash Packages file, checked against
 * rpm's own read-only bdb_ro backend. (Debian's rpm 4.18 cannot write ndb: none is tested.)
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { inspectImage } from '../../src/inspect/inspect.js';
import { readRpmBdb } from '../../src/inspect/rpm-db.js';
import { StrataError } from '../../src/util/errors.js';
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

/** rpm -qa on a database directory, with rpm's own backend `backend`. */
async function rpmQa(dbpath: string, backend?: string): Promise<string[]> {
  const args = ['--dbpath', dbpath, '-qa', '--qf', '%{NAME}|%{EPOCHNUM}|%{VERSION}|%{RELEASE}|%{ARCH}\\n'];
  if (backend) args.unshift('--define', `_db_backend ${backend}`);
  return (await run('rpm', args)).trim().split('\n').sort();
}

const BDB_PACKAGES = 24;

/**
 * CentOS 7 style: /var/lib/rpm/Packages in Berkeley DB hash format. Headers come from
 * packages built by rpmbuild (descriptions of up to ~21 KB, so many headers span overflow
 * pages) and installed by rpm into a scratch sqlite database; the sqlite3 tool dumps them
 * and db5.3_load writes the hash database keyed by instance number, as rpm did before 4.16.
 */
async function rpmBdbImage(): Promise<{ img: string; dbpath: string; maxHeader: number }> {
  const dir = await fixture('inspect-rpm-bdb-v1', async (out) => {
    const top = path.join(out, 'build');
    const tree = path.join(out, 'tree');
    const scratchDb = path.join(out, 'sqlite-db');
    for (const d of ['etc', 'usr/bin', 'var/lib/rpm']) mkdirSync(path.join(tree, d), { recursive: true });
    mkdirSync(top, { recursive: true });
    const specs: string[] = [];
    for (let i = 1; i <= BDB_PACKAGES; i++) {
      const spec = path.join(top, `b${i}.spec`);
      writeFileSync(
        spec,
        [
          '%global debug_package %{nil}',
          `Name: strata-bdb-${i}`,
          `Version: ${i}.${i % 3}`,
          `Release: ${(i % 4) + 1}.el7`,
          i % 5 === 0 ? `Epoch: ${i / 5}` : '',
          'Summary: inspect test package',
          'License: MIT',
          i % 2 === 0 ? 'BuildArch: noarch' : '',
          '%description',
          `package ${i} `.repeat(i * 90),
          '%files',
          '',
        ].join('\n'),
      );
      specs.push(spec);
    }
    for (const spec of specs) await run('rpmbuild', ['--define', `_topdir ${top}`, '-bb', spec]);
    const rpms = (await run('find', [path.join(top, 'RPMS'), '-name', '*.rpm'])).trim().split('\n');
    await run('rpm', ['--dbpath', scratchDb, '--initdb']);
    await run('rpm', ['--dbpath', scratchDb, '-i', '--nodeps', '--justdb', ...rpms]);
    const dump = await run('sqlite3', [path.join(scratchDb, 'rpmdb.sqlite'), 'SELECT hnum, hex(blob) FROM Packages']);
    const esc = (b: Buffer) => [...b].map((x) => `\\${x.toString(16).padStart(2, '0')}`).join('');
    const lines: string[] = [];
    let maxHeader = 0;
    for (const l of dump.trim().split('\n')) {
      const [h, hex] = l.split('|');
      const key = Buffer.alloc(4);
      key.writeUInt32LE(Number(h));
      const blob = Buffer.from(hex, 'hex');
      maxHeader = Math.max(maxHeader, blob.length);
      lines.push(esc(key), esc(blob));
    }
    writeFileSync(path.join(out, 'load.txt'), `${lines.join('\n')}\n`);
    writeFileSync(path.join(out, 'max-header'), String(maxHeader));
    await run('sh', [
      '-c',
      'db5.3_load -T -t hash "$1" < "$2"',
      'sh',
      path.join(tree, 'var/lib/rpm/Packages'),
      path.join(out, 'load.txt'),
    ]);
    writeFileSync(path.join(tree, 'etc/redhat-release'), 'CentOS Linux release 7.9.2009 (Core)\n');
    writeFileSync(path.join(tree, 'usr/bin/yum'), '#!/usr/bin/python\n');
    await run('mkfs.ext4', ['-q', '-F', '-d', tree, path.join(out, 'bdb.img'), '16M']);
  });
  return {
    img: path.join(dir, 'bdb.img'),
    dbpath: path.join(dir, 'tree', 'var', 'lib', 'rpm'),
    maxHeader: Number(readFileSync(path.join(dir, 'max-header'), 'utf8')),
  };
}

describe('inspect an rpm system', () => {
  test('a corrupted Berkeley DB file: records or StrataErrors, never another exception', async () => {
    const f = await rpmBdbImage();
    const good = readFileSync(path.join(f.dbpath, 'Packages'));
    let seed = 0xb0b;
    const rand = () => {
      seed ^= seed << 13;
      seed >>>= 0;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      seed >>>= 0;
      return seed;
    };
    let noticed = 0;
    for (let round = 0; round < 200; round++) {
      const b = Buffer.from(good);
      for (let i = 0; i < 1 + (round % 30); i++) b[rand() % b.length] = rand() & 0xff;
      const warnings: string[] = [];
      try {
        readRpmBdb(b, 'fuzz', (w) => warnings.push(w));
      } catch (e) {
        assert.ok(e instanceof StrataError, `round ${round}: ${(e as Error).stack}`);
        noticed++;
      }
      if (warnings.length > 0) noticed++;
    }
    assert.ok(noticed > 0);
  });

  test("Berkeley DB Packages (rpm < 4.16): packages match rpm -qa with rpm's bdb_ro backend", async () => {
    const f = await rpmBdbImage();
    const qa = await rpmQa(f.dbpath, 'bdb_ro');
    assert.equal(qa.length, BDB_PACKAGES);
    assert.ok(f.maxHeader > 16384, `largest header ${f.maxHeader} bytes: overflow pages must be exercised`);
    const r = await inspectImage(f.img);
    assert.equal(r.roots.length, 1);
    const os = r.roots[0];
    assert.deepEqual(os.packages.map((p) => `${p.name}|${p.epoch}|${p.version}|${p.release}|${p.arch}`).sort(), qa);
    assert.deepEqual(
      [os.distro, os.versionMajor, os.versionMinor, os.packageFormat, os.packageManager],
      ['centos', 7, 9, 'rpm', 'yum'],
    );
    assert.deepEqual(os.warnings, []);
  });

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
