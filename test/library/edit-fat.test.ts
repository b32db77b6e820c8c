/**
 * Issue 24: editing a FAT file system in place (applyChanges with mtools as the writer).
 * Oracles nobody here wrote: `fsck.fat -n` on the new disk, mtools' own listing (`mdir -/ -b`)
 * and contents (`mtype`) of the parent's and the child's checkouts, sgdisk for the partition's
 * place, and a byte comparison of the two checkouts outside the file system and inside it.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { applyChanges } from '../../src/library/edit/apply.js';
import type { Change } from '../../src/library/edit/changes.js';
import { Library } from '../../src/library/library.js';
import { StrataError } from '../../src/util/errors.js';
import { FAT_SPECS, fatImage, mtool } from '../helpers/fat-images.js';
import { sgdiskStart } from '../helpers/fs-cli-tree.js';
import { run } from '../helpers/tools.js';
import { tempDir } from './images.js';

const MiB = 2 ** 20;
const bytes = (s: string, n: number) => Buffer.from(s.repeat(Math.ceil(n / s.length)).slice(0, n));

/** Every path on the FAT at `offset` of `img`, as mtools lists it (directories end in "/"). */
async function mtoolsTree(img: string, offset = 0): Promise<string[]> {
  const at = offset ? `${img}@@${offset}` : img;
  const out = await mtool('mdir', ['-/', '-b', '-i', at, '::/']);
  const paths = out
    .split('\n')
    .filter((l) => l.startsWith('::/'))
    .map((l) => l.slice(2).replace(/\/$/, ''));
  const dirs = new Set<string>();
  for (const p of paths) for (let d = path.posix.dirname(p); d !== '/'; d = path.posix.dirname(d)) dirs.add(d);
  return paths.map((p) => (dirs.has(p) ? `${p}/` : p)).sort();
}

async function mtype(img: string, p: string, offset = 0): Promise<Buffer> {
  const at = offset ? `${img}@@${offset}` : img;
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync('mtype', ['-i', at, `::${p}`], {
    env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
    maxBuffer: 1 << 28,
  });
  assert.equal(r.status, 0, `mtype ${p}: ${r.stderr}`);
  return r.stdout;
}

/** Count of 512-byte sectors in [from, to) that differ between two files. */
function differingSectors(a: Buffer, b: Buffer, from = 0, to = Math.max(a.length, b.length)): number {
  let n = 0;
  for (let o = from; o < to; o += 512) if (Buffer.compare(a.subarray(o, o + 512), b.subarray(o, o + 512)) !== 0) n++;
  return n;
}

describe('edit: applyChanges on FAT', { timeout: 900_000 }, () => {
  let dir: string;
  let lib: Library;
  before(async () => {
    dir = tempDir('edit-fat');
    lib = await Library.open(path.join(dir, 'lib'));
  });

  test('whole-disk FAT16: put (new, replaced, with parents), mkdir, rm, rm -r, rename; fsck.fat clean, mtools sees exactly the edit', async () => {
    const img = path.join(dir, 'fat16.img');
    copyFileSync(await fatImage(FAT_SPECS[1]), img);
    await checkin(lib, img, { name: 'fat', exact: true });
    const before = await mtoolsTree(img);
    assert.ok(before.includes('/many/'), 'the fixture has /many');
    assert.ok(before.includes('/README.TXT'));
    const local = path.join(dir, 'local.bin');
    writeFileSync(local, bytes('local file ', 200_000));
    const changes: Change[] = [
      {
        op: 'put',
        path: '/new/deeper/hello.txt',
        content: { kind: 'bytes', data: bytes('hello\n', 6) },
        parents: true,
      },
      { op: 'put', path: '/README.TXT', content: { kind: 'file', path: local } },
      { op: 'mkdir', path: '/made' },
      { op: 'rm', path: '/lower.txt' },
      { op: 'rm', path: '/many', recursive: true },
      { op: 'rename', path: '/empty-file', to: '/made/moved-file' },
    ];
    const r = await applyChanges(lib, 'fat@1', { changes, message: 'FAT edit' });
    assert.equal(r.ref, 'fat@2');
    assert.equal(r.fsKind, 'vfat');
    const parentDisk = path.join(dir, 'p.raw');
    const childDisk = path.join(dir, 'c.raw');
    await checkout(lib, 'fat@1', parentDisk);
    await checkout(lib, 'fat@2', childDisk);
    await run('fsck.fat', ['-n', childDisk]);

    const want = new Set(before);
    for (const p of ['/new/', '/new/deeper/', '/new/deeper/hello.txt', '/made/', '/made/moved-file']) want.add(p);
    for (const p of ['/lower.txt', '/empty-file']) want.delete(p);
    for (const p of before) if (p.startsWith('/many/')) want.delete(p);
    assert.deepEqual(await mtoolsTree(childDisk), [...want].sort());
    assert.deepEqual(await mtype(childDisk, '/new/deeper/hello.txt'), bytes('hello\n', 6));
    assert.deepEqual(await mtype(childDisk, '/README.TXT'), readFileSync(local));
    assert.deepEqual(
      await mtype(childDisk, '/a/b/c/d/e/f/g/h/deep.txt'),
      await mtype(parentDisk, '/a/b/c/d/e/f/g/h/deep.txt'),
    );

    // in place: what changed is the FATs, the directories touched and the new file's clusters
    const a = readFileSync(parentDisk);
    const b = readFileSync(childDisk);
    assert.equal(a.length, b.length);
    const changed = differingSectors(a, b);
    const contentSectors = Math.ceil(200_006 / 512);
    assert.ok(changed > 0 && changed < contentSectors + 600, `${changed} of ${a.length / 512} sectors differ`);

    const versions = await lib.catalog.versions('fat');
    assert.deepEqual(
      versions.map((v) => v.number),
      [1, 2],
    );
  });

  test('FAT32 in a GPT partition: the partition changes in place, every byte outside it stays', async () => {
    const disk = path.join(dir, 'gpt.img');
    writeFileSync(disk, '');
    await run('truncate', ['-s', `${80 * MiB}`, disk]);
    await run('sgdisk', ['-n', '1:2048:+40M', '-t', '1:ef00', '-n', '2:0:+8M', disk]);
    const start = await sgdiskStart(disk, 1);
    await run('mkfs.vfat', [
      '-F',
      '32',
      '-s',
      '1',
      '-n',
      'ESP',
      '--offset',
      String(start / 512),
      disk,
      String((40 * MiB) / 1024),
    ]);
    await mtool('mmd', ['-i', `${disk}@@${start}`, '::/EFI']);
    const cfg = path.join(dir, 'grub.cfg');
    writeFileSync(cfg, 'set timeout=5\n');
    await mtool('mcopy', ['-i', `${disk}@@${start}`, cfg, '::/EFI/grub.cfg']);
    // a marker in partition 2, which the edit must leave alone
    const fd = readFileSync(disk);
    const p2 = await sgdiskStart(disk, 2);
    fd.write('partition two marker', p2);
    writeFileSync(disk, fd);
    await checkin(lib, disk, { name: 'esp', exact: true });
    const r = await applyChanges(
      lib,
      'esp@1',
      {
        changes: [
          { op: 'put', path: '/EFI/grub.cfg', content: { kind: 'bytes', data: Buffer.from('set timeout=0\n') } },
          {
            op: 'put',
            path: '/EFI/BOOT/BOOTX64.EFI',
            content: { kind: 'bytes', data: bytes('MZ', 70_000) },
            parents: true,
          },
        ],
      },
      { address: { part: '1' } },
    );
    assert.equal(r.fsKind, 'vfat');
    const out = path.join(dir, 'esp2.raw');
    await checkout(lib, r.ref, out);
    const a = readFileSync(disk);
    const b = readFileSync(out);
    const end = start + 40 * MiB;
    assert.equal(differingSectors(a, b, 0, start), 0, 'nothing before the partition changed');
    assert.equal(differingSectors(a, b, end, a.length), 0, 'nothing after the partition changed');
    assert.ok(differingSectors(a, b, start, end) > 0);
    const window = path.join(dir, 'esp2.fat');
    writeFileSync(window, b.subarray(start, end));
    await run('fsck.fat', ['-n', window]);
    assert.equal((await mtype(out, '/EFI/grub.cfg', start)).toString(), 'set timeout=0\n');
    assert.deepEqual(await mtype(out, '/EFI/BOOT/BOOTX64.EFI', start), bytes('MZ', 70_000));
    assert.deepEqual(await mtoolsTree(out, start), ['/EFI/', '/EFI/BOOT/', '/EFI/BOOT/BOOTX64.EFI', '/EFI/grub.cfg']);
  });

  test('what FAT cannot hold is refused before anything is written, and no version is made', async () => {
    const refusals: Array<[Change, RegExp]> = [
      [{ op: 'symlink', path: '/l', target: '/README.TXT' }, /no symbolic links/],
      [{ op: 'link', path: '/h', target: '/README.TXT' }, /no hard links/],
      [{ op: 'setattr', path: '/README.TXT', mode: 0o600 }, /cannot change owners/],
      [{ op: 'put', path: '/x', content: { kind: 'bytes', data: Buffer.from('x') }, uid: 5 }, /no owners/],
      [{ op: 'xattr', path: '/README.TXT', name: 'user.a', value: Buffer.from('1') }, /no extended attributes/],
      [{ op: 'rm', path: '/a' }, /not empty/],
      [{ op: 'put', path: '/no/such/dir/f', content: { kind: 'bytes', data: Buffer.from('x') } }, /no directory/],
    ];
    for (const [c, why] of refusals) {
      await assert.rejects(
        applyChanges(lib, 'fat@1', {
          changes: [{ op: 'put', path: '/ok', content: { kind: 'bytes', data: Buffer.from('ok') } }, c],
        }),
        (e: unknown) => e instanceof StrataError && why.test(e.message) && e.message.includes('change 2'),
        `${c.op} ${c.path}`,
      );
    }
    assert.deepEqual(
      (await lib.catalog.versions('fat')).map((v) => v.number),
      [1, 2],
    );
  });
});
