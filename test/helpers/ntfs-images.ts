import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fixture, run, scratch, unmount } from './tools.js';

/** Entries of the large folder (a multi-level $I30 B+ tree). */
export const BIG_DIR_ENTRIES = 20000;

/** Mount an NTFS image with ntfs-3g (FUSE), run `fn` on the mount point, always unmount. */
export async function withNtfsMount<T>(img: string, opts: string, fn: (mnt: string) => Promise<T>): Promise<T> {
  const mnt = scratch('ntfs-mnt');
  mkdirSync(mnt, { recursive: true });
  await run('ntfs-3g', ['-o', opts, img, mnt]);
  try {
    return await fn(mnt);
  } finally {
    await unmount(mnt, 'ntfs-3g');
    rmSync(mnt, { recursive: true, force: true });
  }
}

/**
 * A 64 MiB NTFS made by `mkntfs -F -Q`, filled through ntfs-3g: nested folders, random and
 * empty files, a hard link, a symlink, an alternate data stream, a sparse file, a folder
 * with the compressed attribute (its files are LZNT1-compressed), a 20,000-entry folder,
 * long and non-ASCII names.
 */
export function ntfsImage(): Promise<string> {
  return fixture('ntfs-tree-v1.img', async (out) => {
    await run('truncate', ['-s', '64M', out]);
    await run('mkntfs', ['-F', '-Q', '-L', 'STRATA', out]);
    await withNtfsMount(out, 'streams_interface=xattr', async (m) => {
      const p = (...s: string[]) => path.join(m, ...s);
      mkdirSync(p('dir', 'sub', 'deeper'), { recursive: true });
      writeFileSync(p('dir', 'a.txt'), 'hello ntfs\n');
      writeFileSync(p('dir', 'empty'), '');
      let seed = 7;
      const rnd = (n: number) => {
        const b = Buffer.alloc(n);
        for (let i = 0; i < n; i++) {
          seed = (seed * 1103515245 + 12345) >>> 0;
          b[i] = seed >>> 24;
        }
        return b;
      };
      writeFileSync(p('dir', 'sub', 'rand.bin'), rnd(300001));
      writeFileSync(p('dir', 'sub', 'deeper', 'small.bin'), rnd(700)); // resident $DATA
      await run('ln', [p('dir', 'a.txt'), p('hardlink.txt')]);
      await run('ln', ['-s', 'dir/a.txt', p('symlink')]);
      await run('setfattr', ['-n', 'user.stream', '-v', 'alternate stream data', p('dir', 'a.txt')]);
      await run('truncate', ['-s', '10M', p('sparse.bin')]);
      writeFileSync(p('sparse.bin'), 'tail', { flag: 'a' });
      writeFileSync(p('sparse.bin'), 'head', { flag: 'r+' });
      mkdirSync(p('compressed'));
      await run('setfattr', ['-n', 'system.ntfs_attrib_be', '-v', '0x00000810', p('compressed')]);
      const text = Array.from({ length: 20000 }, (_, i) => `line ${i} of a compressible text file\n`).join('');
      writeFileSync(p('compressed', 'text.txt'), text);
      writeFileSync(p('compressed', 'mixed.bin'), Buffer.concat([rnd(70000), Buffer.alloc(200000), Buffer.from(text)]));
      mkdirSync(p('Ünïcødé — 名前 ñ'));
      writeFileSync(p('Ünïcødé — 名前 ñ', 'ファイル.txt'), 'unicode\n');
      writeFileSync(p('L'.repeat(255)), 'long name\n');
      mkdirSync(p('big'));
      for (let i = 0; i < BIG_DIR_ENTRIES; i++)
        writeFileSync(p('big', `entry-${String(i).padStart(5, '0')}.dat`), i % 97 === 0 ? `${i}\n` : '');
    });
  });
}

/** A small NTFS for fuzzing: a few folders, a 300-entry folder (INDX blocks), fragmented, sparse and compressed files. */
export function ntfsSmallImage(): Promise<string> {
  return fixture('ntfs-small-v1.img', async (out) => {
    await run('truncate', ['-s', '8M', out]);
    await run('mkntfs', ['-F', '-Q', '-c', '1024', out]);
    await withNtfsMount(out, 'streams_interface=xattr', async (m) => {
      const p = (...s: string[]) => path.join(m, ...s);
      mkdirSync(p('a', 'b'), { recursive: true });
      writeFileSync(p('a', 'b', 'c.txt'), 'c\n');
      mkdirSync(p('many'));
      for (let i = 0; i < 300; i++) writeFileSync(p('many', `n${i}`), i % 5 ? '' : 'x'.repeat(i * 10));
      for (let i = 0; i < 6; i++) writeFileSync(p('frag'), Buffer.alloc(20000, i), { flag: 'a' });
      await run('ln', ['-s', 'a/b/c.txt', p('link')]);
      await run('setfattr', ['-n', 'user.s', '-v', 'stream', p('a', 'b', 'c.txt')]);
      await run('truncate', ['-s', '1M', p('sparse')]);
      mkdirSync(p('z'));
      await run('setfattr', ['-n', 'system.ntfs_attrib_be', '-v', '0x00000810', p('z')]);
      writeFileSync(p('z', 'text'), 'compress me '.repeat(8000));
    });
  });
}

/** Names that Windows' $UpCase collation and JavaScript's toUpperCase fold differently, and some that agree. */
export const CASE_NAMES = ['straße.txt', 'ı-dotless', 'æble', 'ǆ-digraph', 'σίσυφος', 'Mixed.Case'];
/** Names that are legal on NTFS through ntfs-3g but dangerous or reserved for a host: extraction must keep them inside DEST. */
export const HOSTILE_NAMES = ['..\\..\\escape.txt', 'a\\b', 'CON', 'nul.txt', 'colon:name', 'trailing. ', '.. '];

/**
 * A small NTFS written through ntfs-3g with `-o permissions` (its default user mapping
 * stores uid/gid as owner/group SIDs in $Secure): files owned by root, 1000 and 1234:55;
 * alternate data streams on a file and a folder; names that fold differently under $UpCase
 * and JavaScript; names with `\`, `:`, reserved Windows names; a 300-entry folder (INDX blocks).
 */
export function ntfsOwnersImage(): Promise<string> {
  return fixture('ntfs-owners-v2.img', async (out) => {
    await run('truncate', ['-s', '16M', out]);
    await run('mkntfs', ['-F', '-Q', '-L', 'OWNERS', out]);
    await withNtfsMount(out, 'permissions,streams_interface=windows', async (m) => {
      const p = (...s: string[]) => path.join(m, ...s);
      writeFileSync(p('root.txt'), 'root\n');
      mkdirSync(p('home', 'user'), { recursive: true });
      writeFileSync(p('home', 'user', 'notes.txt'), 'notes\n');
      await run('chown', ['-R', '1000:1000', p('home', 'user')]);
      mkdirSync(p('shared'));
      writeFileSync(p('shared', 'data.bin'), Buffer.alloc(9000, 7));
      await run('chown', ['-R', '1234:55', p('shared')]);
      writeFileSync(p('root.txt:stream'), 'alternate stream of root.txt\n');
      writeFileSync(p('root.txt:Zone.Identifier'), '[ZoneTransfer]\r\nZoneId=3\r\n');
      writeFileSync(p('shared:dirstream'), Buffer.alloc(5000, 0x5a)); // non-resident stream of a folder
      mkdirSync(p('case'));
      for (const n of CASE_NAMES) writeFileSync(p('case', n), `${n}\n`);
      mkdirSync(p('many'));
      for (let i = 0; i < 300; i++) writeFileSync(p('many', `file-${i}.txt`), '');
    });
    // ':' is a stream separator in the mount above, a plain character in this one
    await withNtfsMount(out, 'streams_interface=xattr', async (m) => {
      mkdirSync(path.join(m, 'hostile'));
      for (const n of HOSTILE_NAMES) writeFileSync(path.join(m, 'hostile', n), `${n}\n`);
    });
  });
}

/** The reparse points of ntfsReparseImage: path, tag, and what the recipe wrote as the target. */
export const REPARSE_POINTS = [
  { path: '/junction', tag: 0xa0000003, substitute: '\\??\\C:\\target', print: 'C:\\target' },
  { path: '/abs-link', tag: 0xa000000c, substitute: '\\??\\C:\\target\\f.txt', print: 'C:\\target\\f.txt', flags: 0 },
  { path: '/rel-link', tag: 0xa000000c, substitute: 'target\\f.txt', print: 'target\\f.txt', flags: 1 },
  { path: '/dedup', tag: 0x80000013, data: Buffer.from('dedup-stream-id') },
  { path: '/cloud', tag: 0x9000001a, data: Buffer.from('placeholder') },
] as const;

/** IO_REPARSE_TAG_MOUNT_POINT / IO_REPARSE_TAG_SYMLINK buffers as [MS-FSCC] 2.1.2.5 / 2.1.2.4 lay them out. */
function reparseBuffer(r: (typeof REPARSE_POINTS)[number]): Buffer {
  if ('data' in r) {
    const head = Buffer.alloc(8);
    head.writeUInt32LE(r.tag, 0);
    head.writeUInt16LE(r.data.length, 4);
    return Buffer.concat([head, r.data]);
  }
  const sub = Buffer.from(r.substitute, 'utf16le');
  const print = Buffer.from(r.print, 'utf16le');
  const junction = r.tag === 0xa0000003;
  // junctions end each name with a NUL and have no flags field; symlinks have flags, no NULs
  const names = junction ? Buffer.concat([sub, Buffer.alloc(2), print, Buffer.alloc(2)]) : Buffer.concat([sub, print]);
  const fields = Buffer.alloc(junction ? 8 : 12);
  fields.writeUInt16LE(0, 0);
  fields.writeUInt16LE(sub.length, 2);
  fields.writeUInt16LE(junction ? sub.length + 2 : sub.length, 4);
  fields.writeUInt16LE(print.length, 6);
  if (!junction) fields.writeUInt32LE('flags' in r ? r.flags : 0, 8);
  const body = Buffer.concat([fields, names]);
  const head = Buffer.alloc(8);
  head.writeUInt32LE(r.tag, 0);
  head.writeUInt16LE(body.length, 4);
  return Buffer.concat([head, body]);
}

/**
 * A small NTFS with reparse points set through ntfs-3g's `system.ntfs_reparse_data`: a
 * junction (mount point) on a folder, absolute and relative symbolic links, and two tags
 * that are neither (dedup, a cloud-files placeholder), beside the folder they point into.
 */
export function ntfsReparseImage(): Promise<string> {
  return fixture('ntfs-reparse-v1.img', async (out) => {
    await run('truncate', ['-s', '16M', out]);
    await run('mkntfs', ['-F', '-Q', '-L', 'REPARSE', out]);
    await withNtfsMount(out, 'rw', async (m) => {
      mkdirSync(path.join(m, 'target'));
      writeFileSync(path.join(m, 'target', 'f.txt'), 'reparse target\n');
      for (const r of REPARSE_POINTS) {
        const p = path.join(m, r.path);
        if (r.tag === 0xa0000003) mkdirSync(p);
        else writeFileSync(p, '');
        await run('setfattr', ['-n', 'system.ntfs_reparse_data', '-v', `0x${reparseBuffer(r).toString('hex')}`, p]);
      }
    });
  });
}
