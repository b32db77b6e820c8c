import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { Library } from '../../src/library/library.js';
import { bytesOf, withRwMount } from '../helpers/ext-tree.js';
import { fixture, ROOT, run } from '../helpers/tools.js';

/**
 * Fixtures of the profile tests: version N, an ext4 image made by mkfs.ext4 -d of a small
 * "boot" tree, and N+1, N after an update through a kernel loop mount that rewrote the
 * boot files (cp to a new file, mv over the old: new inodes, new blocks, after a spacer
 * file took the free blocks right behind the old data).
 */
export const BOOT_FILES: Record<string, number> = {
  '/boot/vmlinuz': 1536 << 10,
  '/boot/initrd.img': 2560 << 10,
  '/etc/fstab': 3000,
  '/sbin/init': 300 << 10,
  '/usr/lib/libc.so': 1 << 20,
};
const OTHER_FILES: Record<string, number> = {
  '/usr/share/doc/readme': 200 << 10,
  '/usr/bin/tool': 700 << 10,
  '/var/log/old.log': 90 << 10,
};

async function tree(): Promise<string> {
  return fixture('profile-tree-v1', async (out) => {
    for (const [p, n] of Object.entries({ ...BOOT_FILES, ...OTHER_FILES })) {
      const f = path.join(out, p);
      mkdirSync(path.dirname(f), { recursive: true });
      writeFileSync(f, bytesOf(`profile:${p}`, n));
    }
  });
}

export async function versionN(): Promise<string> {
  const t = await tree();
  return fixture('profile-n-ext4-v1.img', async (out) => {
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', t, out, '64M']);
  });
}

export async function versionN1(): Promise<string> {
  const n = await versionN();
  return fixture('profile-n1-ext4-v1.img', async (out) => {
    copyFileSync(n, out);
    await withRwMount(out, async (mnt) => {
      writeFileSync(path.join(mnt, 'usr/share/spacer'), bytesOf('profile:spacer', 6 << 20));
      await run('sync', []);
      for (const p of Object.keys(BOOT_FILES).reverse()) {
        const f = path.join(mnt, p);
        await run('cp', [f, `${f}.new`]);
        await run('sync', []);
        await run('mv', [`${f}.new`, f]);
      }
      await run('sync', []);
    });
    await run('e2fsck', ['-fn', out]);
  });
}

/**
 * Physical data blocks of a file in logical order, from debugfs `dump_extents -l` (the oracle;
 * `blocks` would also list extent-tree blocks of a file with a deeper tree).
 */
export async function debugfsBlocks(image: string, p: string): Promise<number[]> {
  const out = await run('debugfs', ['-R', `dump_extents -l ${p}`, image]);
  const pieces: Array<[number, number, number]> = [];
  for (const m of out.matchAll(/^\s*\d+\/\s*\d+\s+\d+\/\s*\d+\s+(\d+) -\s*(\d+)\s+(\d+) -\s*(\d+)\s+(\d+)/gm)) {
    const [lo, hi, phys, physEnd, len] = m.slice(1).map(Number);
    assert.equal(hi - lo + 1, len, `debugfs dump_extents ${p}: ${m[0]}`);
    assert.equal(physEnd - phys + 1, len, `debugfs dump_extents ${p}: ${m[0]}`);
    pieces.push([lo, phys, len]);
  }
  pieces.sort((a, b) => a[0] - b[0]);
  const l = pieces.flatMap(([, phys, len]) => Array.from({ length: len }, (_, i) => phys + i));
  assert.ok(l.length > 0, `debugfs dump_extents ${p}: ${out}`);
  return l;
}

/** Runs of consecutive blocks, as [first, count]. */
export function runsOf(blocks: number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const b of blocks) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === b) last[1]++;
    else out.push([b, 1]);
  }
  return out;
}

/** A library with N as disk@1 and N+1 as disk@2 (parent disk@1), and their checkouts. */
export async function profileLibrary(
  dir: string,
): Promise<{ lib: string; n: string; n1: string; v1: string; v2: string }> {
  const lib = path.join(dir, 'lib');
  const n = await versionN();
  const n1 = await versionN1();
  const l = await Library.open(lib);
  try {
    assert.equal((await checkin(l, n, { name: 'disk' })).ref, 'disk@1');
    assert.equal((await checkin(l, n1, { name: 'disk' })).ref, 'disk@2');
    const v1 = path.join(dir, 'v1.raw');
    const v2 = path.join(dir, 'v2.raw');
    await checkout(l, 'disk@1', v1);
    await checkout(l, 'disk@2', v2);
    return { lib, n, n1, v1, v2 };
  } finally {
    await l.close();
  }
}

/** `strata nbd ARGS --json --port 0` until stopped; the URI of its first export. */
export async function strataNbd(
  args: string[],
): Promise<{ uri: string; pid: number; stop: () => Promise<number | null> }> {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'dist/cli/strata.cjs'), 'nbd', ...args, '--port', '0', '--json'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const listening = await new Promise<{ exports: Array<{ uri: string }> }>((resolve, reject) => {
    child.stdout.on('data', (c) => {
      out += c;
      try {
        resolve(JSON.parse(out));
      } catch {}
    });
    exited.then(() => reject(new Error(`strata nbd exited: ${err}`)));
  });
  return {
    uri: listening.exports[0].uri,
    pid: child.pid!,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** qemu-io reads of [offset, length] ranges through an NBD URI, in order (the guest of the trace). */
export async function qemuIoReads(uri: string, ranges: Array<[number, number]>): Promise<void> {
  const cmds = ranges.flatMap(([o, n]) => ['-c', `read ${o} ${n}`]);
  // qemu-io takes a command line per -c; keep each call to a sane number of them
  for (let i = 0; i < cmds.length; i += 200) {
    await run('qemu-io', ['-r', '-f', 'raw', ...cmds.slice(i, i + 200), uri]);
  }
}

/**
 * A real kernel's reads of version N: `strata nbd REF --trace FILE`, that export as a file
 * through nbdfuse, a loop device on it (direct I/O, so each loop request is one NBD read),
 * ext4 mounted read-only by the kernel and the `files` read whole, in order. Returns the
 * files' contents (to check against the tree).
 */
export async function kernelReads(nbdArgs: string[], files: string[]): Promise<Buffer[]> {
  const nbd = await strataNbd(nbdArgs);
  const base = `/tmp/strata-profile-${process.pid}-${Date.now()}`;
  const fz = `${base}-fuse`;
  const mnt = `${base}-mnt`;
  mkdirSync(fz, { recursive: true });
  mkdirSync(mnt, { recursive: true });
  const fuse = spawn('nbdfuse', [fz, nbd.uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let fuseErr = '';
  fuse.stderr.on('data', (c) => (fuseErr += c));
  const fuseExited = new Promise<void>((resolve) => fuse.on('exit', () => resolve()));
  let loop = '';
  let mounted = false;
  try {
    for (let i = 0; !existsSync(path.join(fz, 'nbd')); i++) {
      if (i > 200 || fuse.exitCode !== null) throw new Error(`nbdfuse did not come up: ${fuseErr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    loop = (await run('losetup', ['--direct-io=on', '-r', '-f', '--show', path.join(fz, 'nbd')])).trim();
    await run('mount', ['-o', 'ro', loop, mnt]);
    mounted = true;
    return files.map((f) => readFileSync(path.join(mnt, f)));
  } finally {
    if (mounted) await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]));
    if (loop) await run('losetup', ['-d', loop]).catch(() => {});
    await run('fusermount3', ['-u', fz]).catch(() => fuse.kill('SIGTERM'));
    await fuseExited;
    rmSync(fz, { recursive: true, force: true });
    rmSync(mnt, { recursive: true, force: true });
    assert.equal(await nbd.stop(), 0);
  }
}

/** debugfs icheck: the inode owning each block (undefined: no inode's, e.g. an inode table). */
export async function icheck(image: string, blocks: number[]): Promise<Map<number, number | undefined>> {
  const out = new Map<number, number | undefined>();
  for (let i = 0; i < blocks.length; i += 500) {
    const text = await run('debugfs', ['-R', `icheck ${blocks.slice(i, i + 500).join(' ')}`, image]);
    for (const m of text.matchAll(/^(\d+)\s+(\d+|<block not found>)$/gm)) {
      out.set(Number(m[1]), m[2].startsWith('<') ? undefined : Number(m[2]));
    }
  }
  return out;
}

/** debugfs stat: the inode number of a path. */
export async function inodeOf(image: string, p: string): Promise<number> {
  const out = await run('debugfs', ['-R', `stat ${p}`, image]);
  const m = /Inode: (\d+)/.exec(out);
  assert.ok(m, `debugfs stat ${p}: ${out}`);
  return Number(m[1]);
}
