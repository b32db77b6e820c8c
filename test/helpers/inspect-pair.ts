import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { debianTree } from './debian-tree.js';
import { fixture, run } from './tools.js';

export { type Expected, expectedDiff, type HostRecord, hostTree } from './host-tree.js';

/**
 * Two ext4 images made by mkfs.ext4 -d for the library's inspect, search and diff tests: a
 * base tree (part of the debootstrapped Debian: /etc, the dpkg database, a few binaries)
 * and a derived tree (files added, removed, rewritten, chmod-ed, chown-ed, re-linked,
 * touched, given an xattr; a user added; dpkg status with bash upgraded, gzip downgraded,
 * hostname removed, strata-probe added). Expected answers come from the trees on the host.
 */
export interface Pair {
  base: string;
  derived: string;
  a: string;
  b: string;
}

function editStatus(text: string): string {
  const out: string[] = [];
  for (const s of text.split(/\n\n+/).filter((x) => x.trim() !== '')) {
    const name = /^Package: (.+)$/m.exec(s)?.[1];
    if (name === 'hostname') continue;
    if (name === 'bash') out.push(s.replace(/^Version: .*$/m, 'Version: 9.9-1'));
    else if (name === 'gzip') out.push(s.replace(/^Version: .*$/m, 'Version: 1.11-1'));
    else out.push(s);
  }
  out.push(
    'Package: strata-probe\nStatus: install ok installed\nVersion: 1:0.1-1\nArchitecture: all\nDescription: added',
  );
  return `${out.join('\n\n')}\n`;
}

export async function inspectPair(): Promise<Pair> {
  const tree = await debianTree();
  const dir = await fixture('inspect-pair-v1', async (out) => {
    const base = path.join(out, 'base');
    const derived = path.join(out, 'derived');
    mkdirSync(path.join(base, 'usr/bin'), { recursive: true });
    mkdirSync(path.join(base, 'var/lib'), { recursive: true });
    await run('cp', ['-a', path.join(tree, 'etc'), base]);
    await run('cp', ['-a', path.join(tree, 'var/lib/dpkg'), path.join(base, 'var/lib/')]);
    for (const b of ['dash', 'ls', 'cat', 'true', 'gzip'])
      await run('cp', ['-a', path.join(tree, 'usr/bin', b), path.join(base, 'usr/bin/')]);
    await run('ln', ['-s', 'usr/bin', path.join(base, 'bin')]);
    await run('ln', ['-s', 'hostname', path.join(base, 'etc/strata-link')]);
    await run('cp', ['-a', base, derived]);
    const d = (p: string) => path.join(derived, p);
    writeFileSync(d('etc/added.conf'), 'new=1\n');
    mkdirSync(d('usr/local/newdir'), { recursive: true });
    await run('cp', [d('usr/bin/ls'), d('usr/local/newdir/ls-copy')]);
    await run('rm', ['-f', d('etc/issue'), d('usr/bin/cat')]);
    await run('rm', ['-rf', d('etc/cron.daily')]);
    writeFileSync(d('etc/hostname'), readFileSync(d('etc/hostname'), 'utf8').toUpperCase());
    writeFileSync(d('etc/passwd'), `${readFileSync(d('etc/passwd'), 'utf8')}probe:x:3000:3000::/home/probe:/bin/sh\n`);
    await run('chmod', ['600', d('etc/debian_version')]);
    await run('chown', ['1000:1000', d('etc/issue.net')]);
    await run('ln', ['-sfn', 'passwd', d('etc/strata-link')]);
    await run('touch', ['-d', '2001-02-03 04:05:06', d('etc/shells')]);
    await run('setfattr', ['-n', 'user.strata', '-v', 'probe', d('etc/motd')]);
    writeFileSync(d('var/lib/dpkg/status'), editStatus(readFileSync(d('var/lib/dpkg/status'), 'utf8')));
    for (const [src, img] of [
      [base, 'a.img'],
      [derived, 'b.img'],
    ]) {
      await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-I', '256', '-d', src, path.join(out, img), '40M']);
    }
  });
  return {
    base: path.join(dir, 'base'),
    derived: path.join(dir, 'derived'),
    a: path.join(dir, 'a.img'),
    b: path.join(dir, 'b.img'),
  };
}

/** Installed packages of a tree's dpkg database (name -> version), as dpkg-query lists them. */
export async function dpkgPackages(tree: string): Promise<Map<string, string>> {
  const out = await run('dpkg-query', [
    '-W',
    `--admindir=${path.join(tree, 'var/lib/dpkg')}`,
    '-f',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own field syntax
    '${db:Status-Abbrev}|${Package}|${Version}\\n',
  ]);
  return new Map(
    out
      .split('\n')
      .filter((l) => l.startsWith('ii'))
      .map((l) => l.split('|').slice(1) as [string, string]),
  );
}

/** dpkg --compare-versions a OP b (OP: lt le eq ge gt). */
export async function dpkgCompare(a: string, op: string, b: string): Promise<boolean> {
  const r = await run('sh', ['-c', 'dpkg --compare-versions "$1" "$2" "$3" && echo yes || echo no', 'sh', a, op, b]);
  return r.trim() === 'yes';
}

/** mkfs.ext4 makes /lost+found; it is not in the trees. */
export const notLostFound = (p: string) => p !== '/lost+found' && !p.startsWith('/lost+found/');

/** The blocks dumpe2fs does not list as free, and the block size. */
export async function usedBlocks(img: string): Promise<{ bs: number; blocks: number[] }> {
  const d = await run('dumpe2fs', [img]);
  const total = Number(/^Block count:\s+(\d+)/m.exec(d)?.[1]);
  const bs = Number(/^Block size:\s+(\d+)/m.exec(d)?.[1]);
  const free = new Uint8Array(total);
  for (const m of d.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const r of m[1]
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean)) {
      const [s, e] = r.split('-').map(Number);
      for (let i = s; i <= (e ?? s); i++) free[i] = 1;
    }
  }
  const blocks: number[] = [];
  for (let i = 0; i < total; i++) if (!free[i]) blocks.push(i);
  return { bs, blocks };
}
