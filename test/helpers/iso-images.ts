/**
 * ISO 9660 images made by genisoimage and xorriso from a host tree written here: deep folders
 * (relocated by genisoimage's Rock Ridge), symlinks, owners and modes, a fifo, names that are
 * hostile on other systems, El Torito boot images, a file over 4 GiB (multi-extent) and a
 * UDF bridge. The host tree is an oracle too (the tools copied its bytes, not our code).
 */
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  lchownSync,
  mkdirSync,
  openSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { bytesFor } from './fat-images.js';
import { fixture, run } from './tools.js';

export const ISO_MTIME = Date.UTC(2022, 2, 3, 4, 5, 6) / 1000;
/** Deep enough for genisoimage's Rock Ridge to relocate (ISO 9660 allows 8 levels). */
export const DEEP = 'l1/l2/l3/l4/l5/l6/l7/l8/l9/l10/l11/l12';

/**
 * A symlink target long enough to span SL entries and a continuation area. (Components are
 * kept short enough that genisoimage 1.1.11 does not write an SL entry over 255 bytes, whose
 * length byte then wraps: a bug of that writer, not a case for the reader.)
 */
export const LONG_LINK = `${'x'.repeat(150)}/${'y'.repeat(50)}`;
/** Bump with any change of the tree: every image's key includes it. */
const TREE = 'v2';

export async function isoTree(): Promise<string> {
  return fixture(`iso-tree-${TREE}`, async (d) => {
    const put = (rel: string, data: Buffer | string) => {
      const p = path.join(d, rel);
      mkdirSync(path.dirname(p), { recursive: true });
      writeFileSync(p, data);
    };
    put(`${DEEP}/deep.txt`, 'deep down\n');
    put('Long Name with ünïcödé, ×ß and 名前 that is rather long indeed.txt', 'long\n');
    put('back\\slash.txt', 'backslash\n');
    put('co:lon.txt', 'colon\n');
    put('CON', 'reserved on Windows\n');
    put('nul.txt', 'reserved too\n');
    put('empty', '');
    put('medium.bin', bytesFor(11, 100_000));
    put('boot/boot.img', bytesFor(12, 4096));
    put('boot/efi.img', bytesFor(13, 8192));
    put('owned/by-1000', 'owned\n');
    put('modes/private', 'private\n');
    put('modes/setuid', '#!/bin/sh\n');
    for (let i = 0; i < 120; i++) put(`many/entry-${String(i).padStart(3, '0')}-${'y'.repeat(i % 40)}`, `${i}\n`);
    mkdirSync(path.join(d, 'empty-dir'));
    symlinkSync('medium.bin', path.join(d, 'rel-link'));
    symlinkSync('/etc/passwd', path.join(d, 'abs-link'));
    symlinkSync('l1/l2', path.join(d, 'dir-link'));
    symlinkSync('../../nowhere/at/all', path.join(d, 'dangling'));
    symlinkSync(LONG_LINK, path.join(d, 'long-link'));
    spawnSync('mkfifo', [path.join(d, 'fifo')]);
    lchownSync(path.join(d, 'owned/by-1000'), 1000, 1001);
    lchownSync(path.join(d, 'owned'), 1000, 1001);
    chmodSync(path.join(d, 'modes/private'), 0o600);
    chmodSync(path.join(d, 'modes/setuid'), 0o4755);
    for (const e of spawnSync('find', [d, '-mindepth', '1', '!', '-type', 'l'], { encoding: 'utf8' }).stdout.split(
      '\n',
    )) {
      if (e) utimesSync(e, ISO_MTIME, ISO_MTIME);
    }
  });
}

/** genisoimage -J -R: Rock Ridge (with relocation of the deep folders) and Joliet. */
export async function genisoRR(): Promise<string> {
  const tree = await isoTree();
  return fixture(`iso-geniso-rr-${TREE}-v1.iso`, async (out) => {
    await run('genisoimage', ['-quiet', '-J', '-joliet-long', '-R', '-V', 'GENISO_RR', '-o', out, tree]);
  });
}

/** genisoimage -J only (no Rock Ridge): the Joliet tree is read. */
export async function genisoJoliet(): Promise<string> {
  const tree = await isoTree();
  return fixture(`iso-geniso-joliet-${TREE}-v1.iso`, async (out) => {
    await run('genisoimage', ['-quiet', '-J', '-joliet-long', '-V', 'JOLIET', '-o', out, tree]);
  });
}

/** Plain ISO 9660 level 1 (8.3 upper-case names) with a UDF bridge. */
export async function genisoPlainUdf(): Promise<string> {
  const tree = await isoTree();
  return fixture(`iso-geniso-plain-udf-${TREE}-v1.iso`, async (out) => {
    await run('genisoimage', ['-quiet', '-udf', '-V', 'PLAIN', '-o', out, tree]);
  });
}

/** xorriso -as mkisofs -iso-level 3 -J -R, El Torito BIOS + EFI boot images. */
export async function xorrisoBoot(): Promise<string> {
  const tree = await isoTree();
  return fixture(`iso-xorriso-boot-${TREE}-v1.iso`, async (out) => {
    await run('xorriso', [
      '-as',
      'mkisofs',
      '-quiet',
      '-iso-level',
      '3',
      '-J',
      '-joliet-long',
      '-R',
      '-V',
      'XORRISO_BOOT',
      '-b',
      'boot/boot.img',
      '-no-emul-boot',
      '-boot-load-size',
      '4',
      '-c',
      'boot/boot.cat',
      '-eltorito-alt-boot',
      '-e',
      'boot/efi.img',
      '-no-emul-boot',
      '-o',
      out,
      tree,
    ]);
  });
}

/** Size of the multi-extent file: over 4 GiB, not a multiple of 2048. */
export const BIG_SIZE = 4 * 1024 ** 3 + 123_457;
/** Where the big file holds non-zero marks (the rest is a hole in the source). */
export const BIG_MARKS = [0, 4 * 1024 ** 3 - 2048 - 10, 4 * 1024 ** 3 + 10_000, BIG_SIZE - 5000];

/** xorriso -iso-level 3 with a sparse 4 GiB + file: stored as several extents, written sparse. */
export async function xorrisoBig(): Promise<string> {
  return fixture('iso-xorriso-big-v2.iso', async (out) => {
    const src = `${out}.d`;
    mkdirSync(src, { recursive: true });
    const big = path.join(src, 'big.bin');
    writeFileSync(big, '');
    const fd = openSync(big, 'r+');
    try {
      for (const [i, at] of BIG_MARKS.entries()) writeSync(fd, bytesFor(50 + i, 5000), 0, 5000, at);
      spawnSync('truncate', ['-s', String(BIG_SIZE), big]);
    } finally {
      closeSync(fd);
    }
    writeFileSync(path.join(src, 'after.txt'), 'a file after the big one\n');
    utimesSync(big, ISO_MTIME, ISO_MTIME);
    try {
      // through cp --sparse=always, so the 4 GiB of zeros never land on disk (CI has little room)
      await run('bash', [
        '-o',
        'pipefail',
        '-c',
        'xorriso -as mkisofs -quiet -iso-level 3 -R "$1" | cp --sparse=always /dev/stdin "$2"',
        'xorriso-big',
        src,
        out,
      ]);
    } finally {
      spawnSync('rm', ['-rf', src]);
    }
  });
}

/** xorriso with its zisofs filter on a compressible file: Rock Ridge ZF entries. */
export async function xorrisoZisofs(): Promise<string> {
  return fixture('iso-xorriso-zisofs-v1.iso', async (out) => {
    const src = `${out}.d`;
    mkdirSync(src, { recursive: true });
    writeFileSync(path.join(src, 'zeros.bin'), Buffer.alloc(300_000));
    writeFileSync(path.join(src, 'plain.txt'), 'not compressed\n');
    try {
      await run('xorriso', [
        '-outdev',
        out,
        '-map',
        src,
        '/',
        '-set_filter_r',
        '--zisofs',
        '/zeros.bin',
        '--',
        '-commit',
      ]);
    } finally {
      spawnSync('rm', ['-rf', src]);
    }
  });
}
