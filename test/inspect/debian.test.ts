/**
 * Inspection of a real debootstrapped Debian (bookworm minbase) placed by the real tools in
 * GPT partitions and in LVM logical volumes. Every field is checked against the tree itself
 * through programs nobody here wrote: the shell sourcing /etc/os-release, `dpkg-query -W
 * --admindir` on the tree's dpkg database, `getent` run inside the tree by chroot, `ls`
 * of /boot and /lib/modules, the fstab the fixture wrote with the uuids it chose.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { inspectImage } from '../../src/inspect/inspect.js';
import type { OsInspection } from '../../src/inspect/types.js';
import { jsonLines } from '../helpers/cli.js';
import { type DebDisk, debianGptDisk, debianLvmDisk, debianTree, HOSTNAME, KERNEL } from '../helpers/debian-tree.js';
import { ROOT, run } from '../helpers/tools.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'strata.cjs');

interface TreeOracle {
  id: string;
  prettyName: string;
  versionId: string;
  debianVersion: string;
  packages: string[];
  users: string[];
  groups: string[];
  arch: string;
  kernels: string[];
  modules: string[];
}

async function oracle(tree: string): Promise<TreeOracle> {
  const os = (
    await run('sh', [
      '-c',
      '. "$1"; printf "%s\\n%s\\n%s\\n" "$ID" "$PRETTY_NAME" "$VERSION_ID"',
      'sh',
      path.join(tree, 'etc/os-release'),
    ])
  ).split('\n');
  const q = await run('dpkg-query', [
    '-W',
    `--admindir=${path.join(tree, 'var/lib/dpkg')}`,
    '-f',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own field syntax
    '${db:Status-Abbrev}|${Package}|${Version}|${Architecture}\\n',
  ]);
  const packages = q
    .split('\n')
    .filter((l) => l.startsWith('ii'))
    .map((l) => l.split('|').slice(1).join('|'))
    .sort();
  const getent = async (db: string) => (await run('chroot', [tree, 'getent', db])).split('\n').filter(Boolean).sort();
  return {
    id: os[0],
    prettyName: os[1],
    versionId: os[2],
    debianVersion: readFileSync(path.join(tree, 'etc/debian_version'), 'utf8').trim(),
    packages,
    users: await getent('passwd'),
    groups: await getent('group'),
    arch: (await run('uname', ['-m'])).trim(),
    kernels: readdirSync(path.join(tree, 'boot'))
      .filter((n) => n.startsWith('vmlinuz-'))
      .map((n) => n.slice('vmlinuz-'.length)),
    modules: readdirSync(path.join(tree, 'lib/modules')),
  };
}

/** Our package record in dpkg's own spelling: [epoch:]version[-release]. */
const dpkgSpelling = (p: { epoch: number; version: string; release: string }) =>
  `${p.epoch ? `${p.epoch}:` : ''}${p.version}${p.release ? `-${p.release}` : ''}`;

function checkAgainstTree(r: OsInspection, o: TreeOracle, d: DebDisk): void {
  assert.equal(r.osType, 'linux');
  assert.equal(r.root, d.facts.root);
  assert.equal(r.distro, o.id);
  assert.equal(r.productName, o.prettyName);
  assert.equal(r.versionMajor, Number(o.versionId));
  // os-release has only the major; debian_version ("12.7") gives the minor, as virt-inspector reads it.
  const [maj, min] = o.debianVersion.split('.').map(Number);
  assert.equal(maj, Number(o.versionId));
  assert.equal(r.versionMinor, min);
  assert.equal(r.arch, o.arch);
  assert.equal(r.hostname, HOSTNAME);
  assert.equal(r.packageFormat, 'deb');
  assert.equal(r.packageManager, 'apt');
  const ours = r.packages.map((p) => `${p.name}|${dpkgSpelling(p)}|${p.arch}`).sort();
  assert.ok(o.packages.length > 50, `dpkg-query listed only ${o.packages.length} packages`);
  assert.deepEqual(ours, o.packages);
  for (const p of r.packages) {
    assert.ok(!p.version.includes(':') || p.epoch > 0, `${p.name}: epoch left in version ${p.version}`);
    assert.ok(!p.release.includes('-'), `${p.name}: release ${p.release} has a dash (split at the last one)`);
  }
  const users = r.users.map((u) => `${u.name}:x:${u.uid}:${u.gid}:`).sort();
  const want = o.users.map((l) => {
    const f = l.split(':');
    return `${f[0]}:x:${f[2]}:${f[3]}:`;
  });
  assert.deepEqual(users, want);
  for (const l of o.users) {
    const f = l.split(':');
    const u = r.users.find((x) => x.name === f[0]);
    assert.equal(u?.home, f[5]);
    assert.equal(u?.shell, f[6]);
  }
  assert.ok(r.users.some((u) => u.name === 'deploy' && u.uid === 2001));
  assert.deepEqual(
    r.groups.map((g) => `${g.name}:x:${g.gid}:${g.members.join(',')}`).sort(),
    o.groups.map((l) => l.replace(/^([^:]*):[^:]*:/, '$1:x:')),
  );
  assert.deepEqual(
    r.kernels.map((k) => k.version),
    [KERNEL],
  );
  assert.deepEqual(o.kernels, [KERNEL]);
  assert.deepEqual(o.modules, [KERNEL]);
  assert.equal(r.kernels[0].path, `/boot/vmlinuz-${KERNEL}`);
  assert.equal(r.kernels[0].modules, `/lib/modules/${KERNEL}`);
  // Mount points: exactly the block devices of the fstab the fixture wrote, each on the volume it chose.
  const fstabPoints = d.facts.fstab
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.split(/\s+/))
    .filter((f) => f[1].startsWith('/') && f[2] !== 'proc');
  assert.deepEqual(Object.keys(r.mountpoints).sort(), fstabPoints.map((f) => f[1]).sort());
  for (const f of fstabPoints) {
    assert.equal(r.mountpoints[f[1]].device, f[0]);
    assert.equal(r.mountpoints[f[1]].volume, d.facts.expectVolume[f[0]], `volume for ${f[0]}`);
  }
}

describe('inspect a debootstrapped Debian', { timeout: 900_000 }, () => {
  test('ext4 in GPT partitions, /boot and /var mounted from fstab by LABEL= and PARTUUID=', async () => {
    const d = await debianGptDisk();
    const o = await oracle(await debianTree());
    const r = await inspectImage(d.disk);
    assert.equal(r.roots.length, 1);
    checkAgainstTree(r.roots[0], o, d);
    assert.deepEqual(r.roots[0].warnings, []);
  });

  test('ext4 in LVM logical volumes named /dev/mapper/VG-LV and /dev/VG/LV', async () => {
    const d = await debianLvmDisk();
    const o = await oracle(await debianTree());
    const r = await inspectImage(d.disk);
    assert.equal(r.roots.length, 1);
    checkAgainstTree(r.roots[0], o, d);
  });

  test('strata inspect --json: one object per root with the documented keys; text form names the distro', async () => {
    const d = await debianGptDisk();
    const out = jsonLines<Record<string, unknown>>(await run('node', [CLI, 'inspect', d.disk, '--json']));
    assert.equal(out.length, 1);
    for (const k of [
      'root',
      'osType',
      'distro',
      'productName',
      'versionMajor',
      'versionMinor',
      'arch',
      'hostname',
      'packageFormat',
      'packageManager',
      'packages',
      'kernels',
      'users',
      'mountpoints',
    ]) {
      assert.ok(k in out[0], `key ${k} missing`);
    }
    const pk = (out[0].packages as Array<Record<string, unknown>>)[0];
    assert.deepEqual(Object.keys(pk).sort(), ['arch', 'epoch', 'name', 'release', 'version']);
    for (const u of out[0].users as Array<Record<string, unknown>>) {
      assert.deepEqual(Object.keys(u).sort(), ['gid', 'home', 'name', 'shell', 'uid']);
    }
    const o = await oracle(await debianTree());
    const text = await run('node', [CLI, 'inspect', d.disk]);
    assert.match(text, new RegExp(`product:\\s+${o.prettyName.replace(/[()]/g, '\\$&')}`));
    assert.match(text, new RegExp(`packages:\\s+${o.packages.length} \\(deb, apt\\)`));
  });
});
