import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { bytesOf, extTree, populateMounted, withRwMount } from './ext-tree.js';
import { fixture, run } from './tools.js';

const VERSION = 'v2';
const MiB = 1 << 20;

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });

/** Compressible bytes: repeated text with a counter, so each 128 KiB chunk compresses. */
export function compressible(seed: string, n: number): Buffer {
  const parts: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const s = `${seed} line ${i} the quick brown fox jumps over the lazy dog\n`;
    parts.push(s);
    len += s.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

/**
 * Things the kernel makes on a read-write mount of a btrfs image: subvolumes (nested), a
 * snapshot, files written with compress=zstd/zlib/lzo, reflinked copies.
 */
export async function populateBtrfs(mnt: string): Promise<void> {
  populateMounted(mnt);
  for (const alg of ['zstd', 'zlib', 'lzo']) {
    await run('mount', ['-o', `remount,compress=${alg}`, mnt]);
    const d = path.join(mnt, `compress-${alg}`);
    mkdirSync(d);
    writeFileSync(path.join(d, 'text'), compressible(alg, 3 * MiB + 777));
    writeFileSync(path.join(d, 'small'), compressible(`${alg}-small`, 2000)); // inline, compressed
    writeFileSync(path.join(d, 'random'), bytesOf(`${alg}-random`, 300_000)); // incompressible
    sh('sync', []);
  }
  await run('mount', ['-o', 'remount,compress=no', mnt]);
  sh('cp', ['--reflink=always', path.join(mnt, 'files', 'size-1500000'), path.join(mnt, 'reflinked')]);
  sh('btrfs', ['subvolume', 'create', path.join(mnt, '@home')]);
  mkdirSync(path.join(mnt, '@home', 'user'));
  writeFileSync(path.join(mnt, '@home', 'user', 'notes'), bytesOf('notes', 50_000));
  sh('btrfs', ['subvolume', 'create', path.join(mnt, '@home', 'nested')]);
  writeFileSync(path.join(mnt, '@home', 'nested', 'deep-file'), 'in a nested subvolume\n');
  sh('btrfs', ['subvolume', 'create', path.join(mnt, 'data')]);
  writeFileSync(path.join(mnt, 'data', 'payload'), bytesOf('payload', 400_000));
  sh('btrfs', ['subvolume', 'snapshot', path.join(mnt, 'data'), path.join(mnt, 'data-snap')]);
  writeFileSync(path.join(mnt, 'data', 'after-snapshot'), 'written after the snapshot\n');
  sh('sync', []);
}

/** mkfs.btrfs --rootdir of the shared test tree, then populated through a kernel mount. */
export async function btrfsImage(): Promise<string> {
  const tree = await extTree();
  return fixture(`btrfs-main-${VERSION}.img`, async (out) => {
    // mkfs.btrfs --rootdir (6.2) writes a sparse file's holes as data, so the 5 GiB sparse file
    // would take 5 GiB of real disk (a CI machine ran out). It goes in through the kernel
    // instead, which keeps the holes: the tree is copied without it, and cp adds it on the mount.
    const big = path.join('sparse', 'big-over-4g');
    const copy = `${out}.tree`;
    rmSync(copy, { recursive: true, force: true });
    try {
      await run('cp', ['-a', tree, copy]);
      rmSync(path.join(copy, big));
      writeFileSync(out, '');
      truncateSync(out, 768 * MiB);
      await run('mkfs.btrfs', ['-q', '-f', '--rootdir', copy, out]);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
    await withRwMount(out, async (mnt) => {
      await run('cp', ['-a', '--sparse=always', path.join(tree, big), path.join(mnt, big)]);
      await populateBtrfs(mnt);
    });
    await run('btrfs', ['check', '--readonly', out]);
  });
}

/** A small image whose default subvolume (set-default) is not the top level. */
export async function btrfsDefaultSubvolImage(): Promise<string> {
  return fixture(`btrfs-setdefault-${VERSION}.img`, async (out) => {
    writeFileSync(out, '');
    truncateSync(out, 160 * MiB);
    await run('mkfs.btrfs', ['-q', '-f', out]);
    await withRwMount(out, (mnt) => {
      writeFileSync(path.join(mnt, 'top-file'), 'top level\n');
      sh('btrfs', ['subvolume', 'create', path.join(mnt, '@')]);
      mkdirSync(path.join(mnt, '@', 'etc'));
      writeFileSync(path.join(mnt, '@', 'etc', 'fstab'), 'UUID=x / btrfs subvol=@ 0 0\n');
      const id = /Subvolume ID:\s+(\d+)/.exec(String(sh('btrfs', ['subvolume', 'show', path.join(mnt, '@')])))?.[1];
      if (!id) throw new Error('no subvolume id');
      sh('btrfs', ['subvolume', 'set-default', id, mnt]);
    });
  });
}
