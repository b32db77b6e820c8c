/**
 * Issue 24's Debian trio for rebase (tests and bench/rebase.ts build it here, once, cached
 * with fixture()): A0 is a part of the debootstrapped Debian (its /etc, its dpkg database, a
 * few binaries) with a package strata-base 1.0 installed by dpkg; A1 is A0 with strata-base
 * upgraded to 1.1 (a file changed, one added, one removed, its conffile-like /etc file
 * changed) and strata-tool installed, by dpkg; B1 is A0 with strata-app installed by dpkg and
 * /etc/motd edited. The packages are real .deb files built by dpkg-deb (apt in a chroot would
 * need the network). Each tree is also a 48 MiB ext4 image made by `mkfs.ext4 -d`.
 */
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { debianTree } from './debian-tree.js';
import { fixture, run } from './tools.js';

/** The three trees (A0 = base) and their ext4 images. */
export interface DebianTrio {
  base: string;
  a1: string;
  b1: string;
  img: { a0: string; a1: string; b1: string };
}

/** A .deb built by dpkg-deb from a file list. */
export async function deb(out: string, name: string, version: string, files: Record<string, string>): Promise<string> {
  const root = path.join(out, `pkg-${name}-${version}`);
  mkdirSync(path.join(root, 'DEBIAN'), { recursive: true });
  writeFileSync(
    path.join(root, 'DEBIAN/control'),
    `Package: ${name}\nVersion: ${version}\nArchitecture: all\nMaintainer: Strata <strata@example.org>\nDescription: rebase test package\n`,
  );
  for (const [p, text] of Object.entries(files)) {
    mkdirSync(path.join(root, path.dirname(p)), { recursive: true });
    writeFileSync(path.join(root, p), text, { mode: p.includes('/bin/') ? 0o755 : 0o644 });
  }
  const file = path.join(out, `${name}_${version}_all.deb`);
  await run('dpkg-deb', ['-b', '--root-owner-group', root, file]);
  rmSync(root, { recursive: true });
  return file;
}

export async function debianTrio(): Promise<DebianTrio> {
  const tree = await debianTree();
  const dir = await fixture('rebase-debian-pair-v1', async (out) => {
    const base = path.join(out, 'base');
    mkdirSync(path.join(base, 'usr/bin'), { recursive: true });
    mkdirSync(path.join(base, 'var/lib'), { recursive: true });
    mkdirSync(path.join(base, 'var/log'), { recursive: true });
    await run('cp', ['-a', path.join(tree, 'etc'), base]);
    await run('cp', ['-a', path.join(tree, 'var/lib/dpkg'), path.join(base, 'var/lib/')]);
    for (const b of ['dash', 'ls', 'cat', 'true'])
      await run('cp', ['-a', path.join(tree, 'usr/bin', b), path.join(base, 'usr/bin/')]);
    symlinkSync('usr/bin', path.join(base, 'bin'));
    const base10 = await deb(out, 'strata-base', '1.0', {
      'usr/share/strata-base/data.txt': 'data v1\n',
      'usr/lib/strata-base/old.txt': 'only in 1.0\n',
      'etc/strata-base.conf': 'level=1\n',
    });
    const base11 = await deb(out, 'strata-base', '1.1', {
      'usr/share/strata-base/data.txt': 'data v2, longer than before\n',
      'usr/lib/strata-base/new.txt': 'only in 1.1\n',
      'etc/strata-base.conf': 'level=2\n',
    });
    const tool = await deb(out, 'strata-tool', '1.0', { 'usr/bin/strata-tool': '#!/bin/sh\necho tool\n' });
    const app = await deb(out, 'strata-app', '1.0', {
      'opt/strata-app/app.txt': 'the app\n',
      'etc/strata-app.conf': 'app=1\n',
    });
    await run('dpkg', [`--root=${base}`, '-i', base10]);
    const a1 = path.join(out, 'a1');
    const b1 = path.join(out, 'b1');
    await run('cp', ['-a', base, a1]);
    await run('cp', ['-a', base, b1]);
    await run('dpkg', [`--root=${a1}`, '-i', base11, tool]);
    await run('dpkg', [`--root=${b1}`, '-i', app]);
    writeFileSync(path.join(b1, 'etc/motd'), 'B1: the app image\n');
    for (const [src, img] of [
      [base, 'a0.img'],
      [a1, 'a1.img'],
      [b1, 'b1.img'],
    ]) {
      await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-I', '256', '-d', src, path.join(out, img), '48M']);
    }
  });
  const p = (x: string) => path.join(dir, x);
  return { base: p('base'), a1: p('a1'), b1: p('b1'), img: { a0: p('a0.img'), a1: p('a1.img'), b1: p('b1.img') } };
}
