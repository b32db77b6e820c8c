import assert from 'node:assert/strict';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { FILE_ATTR } from '../../src/fs/ntfs/structs.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem, Inode } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { FileSource } from '../../src/io/file-source.js';
import { BIG_DIR_ENTRIES, ntfsImage, withNtfsMount } from '../helpers/ntfs-images.js';
import { run, runBuffer, sha256 } from '../helpers/tools.js';

const opened: FileSource[] = [];
after(async () => {
  for (const s of opened) await s.close();
});

async function open(img: string): Promise<FileSystem> {
  const src = await FileSource.open(img);
  opened.push(src);
  return openFileSystem(src);
}

interface Entry {
  type: string;
  ino: number;
  size: number;
  nlink: number;
  sha?: string;
  target?: string;
}

/** The tree as ntfs-3g's own mount shows it. */
function mountTree(root: string): Map<string, Entry> {
  const out = new Map<string, Entry>();
  const visit = (rel: string) => {
    for (const name of readdirSync(path.join(root, rel))) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(root, r);
      const st = lstatSync(p);
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other';
      const e: Entry = { type, ino: st.ino, size: type === 'dir' ? 0 : st.size, nlink: st.nlink };
      if (type === 'file') e.sha = sha256(readFileSync(p));
      if (type === 'symlink') e.target = readlinkSync(p);
      out.set(r, e);
      if (type === 'dir') visit(r);
    }
  };
  visit('');
  return out;
}

async function ourTree(fs: FileSystem): Promise<Map<string, Entry & { inode: Inode }>> {
  const out = new Map<string, Entry & { inode: Inode }>();
  for await (const it of walk(fs, await fs.root(), '/')) {
    const i = it.inode;
    const e: Entry & { inode: Inode } = {
      type: i.type,
      ino: i.ino,
      size: i.type === 'dir' ? 0 : i.size,
      nlink: i.nlink,
      inode: i,
    };
    if (i.type === 'file') e.sha = sha256(await fs.read(i, 0, i.size));
    if (i.type === 'symlink') e.target = await fs.readlink(i);
    out.set(it.path.slice(1), e);
  }
  return out;
}

test('NTFS made by mkntfs and filled through ntfs-3g reads as ntfs-3g mounts it: names, types, inode numbers, link counts, sizes, sha256, link targets', async () => {
  const img = await ntfsImage();
  const fs = await open(img);
  assert.equal(fs.kind, 'ntfs');
  assert.deepEqual(fs.warnings, []);
  const ours = await ourTree(fs);
  const theirs = await withNtfsMount(img, 'ro,streams_interface=xattr', async (m) => mountTree(m));
  assert.ok(theirs.size > BIG_DIR_ENTRIES, `mount lists ${theirs.size} entries`);
  assert.deepEqual([...ours.keys()].sort(), [...theirs.keys()].sort());
  for (const [p, t] of theirs) {
    const { inode, ...o } = ours.get(p)!;
    assert.deepEqual(o, t, p);
  }
  // hard links share the MFT record; the symlink is ntfs-3g's
  assert.equal(ours.get('hardlink.txt')!.ino, ours.get('dir/a.txt')!.ino);
  assert.equal(ours.get('hardlink.txt')!.nlink, 2);
  assert.equal(ours.get('symlink')!.target, 'dir/a.txt');
  // the compressed folder's files carry the compressed attribute
  assert.ok(ours.get('compressed/text.txt')!.inode.flags! & FILE_ATTR.COMPRESSED);
});

test('ntfsls lists each folder as we do (Win32/POSIX names, no DOS 8.3 names, no $ files)', async () => {
  const img = await ntfsImage();
  const fs = await open(img);
  for (const dir of ['/', '/dir', '/big', '/Ünïcødé — 名前 ñ', '/compressed']) {
    const theirs = (await run('ntfsls', ['-p', dir, img]))
      .split('\n')
      .filter((n) => n && n !== '.' && n !== '..')
      .sort();
    const ours: string[] = [];
    for await (const e of fs.readdir(await fs.lookup(dir))) ours.push(e.name);
    assert.deepEqual(ours.sort(), theirs, dir);
  }
});

test('ntfscat gives the same bytes: unnamed $DATA (plain, resident, sparse, LZNT1) and the alternate data stream', async () => {
  const img = await ntfsImage();
  const fs = await open(img);
  for (const p of [
    '/dir/a.txt',
    '/dir/sub/rand.bin',
    '/dir/sub/deeper/small.bin',
    '/sparse.bin',
    '/compressed/text.txt',
    '/compressed/mixed.bin',
  ]) {
    const i = await fs.lookup(p);
    assert.equal(sha256(await fs.read(i, 0, i.size)), sha256(await runBuffer('ntfscat', [img, p])), p);
  }
  const a = await fs.lookup('/dir/a.txt');
  const ads = (await fs.xattrs(a)).get('ntfs.stream.stream');
  assert.ok(ads);
  assert.deepEqual(Buffer.from(ads), await runBuffer('ntfscat', ['-a', '0x80', '-n', 'stream', img, '/dir/a.txt']));
  assert.equal(Buffer.from(ads).toString(), 'alternate stream data');
});

test('extents: sparse holes are absent, compressed units are encoded, resident data is inline', async () => {
  const fs = await open(await ntfsImage());
  const list = async (p: string) => {
    const out = [];
    for await (const e of fs.extents(await fs.lookup(p))) out.push(e);
    return out;
  };
  const sparse = await list('/sparse.bin');
  const covered = sparse.reduce((s, e) => s + e.length, 0);
  assert.ok(covered > 0 && covered < 1 << 20, `sparse file maps ${covered} bytes`);
  const comp = await list('/compressed/text.txt');
  assert.ok(comp.some((e) => e.encoded === 'lznt1' && e.diskLength! < e.length));
  // ntfsinfo says a.txt's $DATA is resident and small.bin's is not
  const img = await ntfsImage();
  const info = async (p: string) =>
    /\$DATA \(0x80\)[\s\S]*?Resident:\s+(Yes|No)/.exec(await run('ntfsinfo', ['-F', p, img]))![1];
  assert.equal(await info('/dir/a.txt'), 'Yes');
  assert.equal(await info('/dir/sub/deeper/small.bin'), 'No');
  const a = await list('/dir/a.txt');
  assert.deepEqual(
    a.map((e) => [e.inline, e.length]),
    [[true, 11]],
  );
  const raw = await runBuffer('dd', [`if=${img}`, 'bs=1', `skip=${a[0].volumeOffset}`, 'count=11', 'status=none']);
  assert.equal(raw.toString(), 'hello ntfs\n');
  assert.ok((await list('/dir/sub/deeper/small.bin')).every((e) => !e.inline));
});
