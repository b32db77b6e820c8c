import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Access } from '../../catalog/access.js';
import { checkin } from '../../library/checkin.js';
import { runDemo } from '../../library/demo.js';
import { Library } from '../../library/library.js';

/**
 * A ready library for `npm start`: the demo disks (`strata demo`: a disk written as qcow2,
 * and a qcow2 child of it) checked in as demo/disk and demo/child, and, when mkfs.ext4
 * is installed, a small ext4 image with files to browse (demo/files, then demo/files@2
 * with one file changed); all public in project "demo". Made once; later starts reuse it.
 */
export async function demoLibrary(dir: string): Promise<{ lib: Library; made: boolean; notes: string[] }> {
  const notes: string[] = [];
  const marker = path.join(dir, 'demo-ready');
  if (existsSync(marker)) return { lib: await Library.open(path.join(dir, 'library')), made: false, notes };
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const lib = await Library.open(path.join(dir, 'library'));
  const access = await Access.open(lib.catalog.db);
  await access.addProject('demo');
  const images = path.join(dir, 'images');
  await runDemo(images);
  await checkin(lib, path.join(images, 'disk.qcow2'), { name: 'demo/disk', tags: ['base'] });
  await checkin(lib, path.join(images, 'child.qcow2'), { name: 'demo/child', parents: ['demo/disk@1'] });
  const run = promisify(execFile);
  try {
    for (const [n, extra] of [
      [1, 'first'],
      [2, 'second: this line changed'],
    ] as const) {
      const tree = path.join(dir, `tree${n}`);
      mkdirSync(path.join(tree, 'etc'), { recursive: true });
      mkdirSync(path.join(tree, 'usr', 'share', 'doc'), { recursive: true });
      writeFileSync(path.join(tree, 'etc', 'os-release'), 'NAME="Strata demo"\nID=strata-demo\nVERSION_ID=1\n');
      writeFileSync(path.join(tree, 'etc', 'motd'), `Welcome to the Strata demo (${extra})\n`);
      writeFileSync(
        path.join(tree, 'usr', 'share', 'doc', 'README'),
        'Files served straight from the manifests.\n'.repeat(200),
      );
      const img = path.join(images, `files${n}.img`);
      await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, img, '16M']);
      await checkin(lib, img, { name: 'demo/files', tags: n === 2 ? ['latest'] : [] });
    }
  } catch (e) {
    notes.push(`no demo/files image (mkfs.ext4: ${(e as Error).message.split('\n')[0]})`);
  }
  await access.adoptImages(
    (await lib.catalog.images()).map((i) => i.name),
    'demo',
    'public',
  );
  writeFileSync(marker, `${new Date().toISOString()}\n`);
  return { lib, made: true, notes };
}
