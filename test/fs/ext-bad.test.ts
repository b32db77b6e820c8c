import assert from 'node:assert/strict';
import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { ExtFileSystem } from '../../src/fs/ext/index.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { kernelViewCached } from '../helpers/ext-tree.js';
import { expectCleanOutcome } from '../helpers/fuzz.js';
import { bothListings } from '../helpers/name-lines.js';
import { fixture, run } from '../helpers/tools.js';

const BS = 4096;

/** A small tree with the shapes the corruptions need. */
async function smallTree(): Promise<string> {
  return fixture('ext-bad-tree-v1', async (d) => {
    mkdirSync(path.join(d, 'a', 'b', 'c'), { recursive: true });
    writeFileSync(path.join(d, 'a', 'b', 'c', 'file.txt'), 'deep file\n');
    mkdirSync(path.join(d, 'frag'));
    const f = path.join(d, 'frag', 'fragmented');
    writeFileSync(f, '');
    const fd = openSync(f, 'r+');
    for (let i = 0; i < 2000; i++) writeSync(fd, Buffer.from([1 + (i % 250)]), 0, 1, i * 8192);
    closeSync(fd);
    mkdirSync(path.join(d, 'names'));
    for (const n of ['xsy', 'ab', 'qzq', 'emp', 'bad-ino', 'good1', 'good2'])
      writeFileSync(path.join(d, 'names', n), n);
    mkdirSync(path.join(d, 'files'));
    writeFileSync(path.join(d, 'files', 'secret.txt'), 'not really encrypted\n');
    writeFileSync(path.join(d, 'files', 'big.bin'), Buffer.alloc(200_000, 7));
    symlinkSync('secret.txt', path.join(d, 'files', 'link'));
  });
}

/** The clean base image (ext4, 4 KiB blocks, metadata_csum). */
async function baseImage(): Promise<string> {
  const tree = await smallTree();
  return fixture('ext-bad-base-v1.img', async (out) => {
    writeFileSync(out, '');
    truncateSync(out, 48 << 20);
    await run('mkfs.ext4', ['-q', '-F', '-b', String(BS), '-d', tree, out]);
  });
}

/** A copy of the base image changed by debugfs -w commands and/or byte patches. */
async function crafted(
  name: string,
  cmds: string[],
  patch?: (img: Buffer, ctx: { blocksOf: (p: string) => Promise<number[]> }) => Promise<void> | void,
): Promise<string> {
  const base = await baseImage();
  return fixture(`ext-bad-${name}-v1.img`, async (out) => {
    writeFileSync(out, readFileSync(base));
    for (const c of cmds) await run('debugfs', ['-w', '-R', c, out]);
    if (patch) {
      const img = readFileSync(out);
      await patch(img, {
        blocksOf: async (p) =>
          (await run('debugfs', ['-R', `blocks ${p}`, out])).trim().split(/\s+/).filter(Boolean).map(Number),
      });
      writeFileSync(out, img);
    }
  });
}

const opened: FileSystem[] = [];
after(async () => {
  for (const fs of opened) await fs.close?.();
});

async function openImg(img: string): Promise<FileSystem> {
  const src = await FileSource.open(img);
  try {
    const fs = await openFileSystem(src);
    opened.push(fs);
    return fs;
  } catch (e) {
    await src.close();
    throw e;
  }
}

/** Walk everything and read every file, collecting (not throwing) per-file StrataErrors. */
async function walkAll(fs: FileSystem): Promise<{ paths: string[]; errors: StrataError[] }> {
  const paths: string[] = [];
  const errors: StrataError[] = [];
  for await (const it of walk(fs, await fs.root(), '/', { onError: (e) => errors.push(e) })) {
    paths.push(it.path);
    try {
      if (it.inode.type === 'file') await fs.read(it.inode, 0, it.inode.size);
      if (it.inode.type === 'symlink') await fs.readlink(it.inode);
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      errors.push(e);
    }
  }
  return { paths, errors };
}

/** debugfs `ex` output: [level, physical] of each index/leaf line. */
async function extentLines(img: string, p: string): Promise<Array<{ level: number; phys: number }>> {
  const out = await run('debugfs', ['-R', `ex ${p}`, img]);
  const res: Array<{ level: number; phys: number }> = [];
  for (const line of out.split('\n')) {
    const m = /^\s*(\d+)\/\s*(\d+)\s+\d+\/\s*\d+\s+\d+\s+-\s+\d+\s+(\d+)/.exec(line);
    if (m) res.push({ level: Number(m[1]), phys: Number(m[3]) });
  }
  return res;
}

test('a clean base image opens without warnings (so the warnings below come from the damage)', async () => {
  const fs = await openImg(await baseImage());
  const r = await walkAll(fs);
  assert.deepEqual(r.errors, []);
  assert.deepEqual(fs.warnings, []);
  assert.ok(r.paths.includes('/frag/fragmented'));
});

test('corrupted superblock magic: ext refuses with CORRUPT naming the superblock and offset', async () => {
  const img = readFileSync(await baseImage());
  img[1024 + 0x38] ^= 0xff;
  const src = new MemorySource(img, 'bad-magic.img');
  await assert.rejects(
    ExtFileSystem.open(src),
    (e: StrataError) =>
      e instanceof StrataError &&
      e.code === 'CORRUPT' &&
      e.structure === 'ext superblock' &&
      e.offset === 1024 + 0x38 &&
      e.message.includes('bad-magic.img'),
  );
  await assert.rejects(openFileSystem(src), (e: StrataError) => e instanceof StrataError && e.code === 'UNSUPPORTED');
});

test('an unknown incompat feature is UNSUPPORTED and named', async () => {
  const img = readFileSync(await baseImage());
  img[1024 + 0x60 + 3] |= 0x80; // bit 31
  img[1024 + 0x60 + 1] |= 0x10; // dirdata (0x1000)
  await assert.rejects(
    openFileSystem(new MemorySource(img, 'feat.img')),
    (e: StrataError) =>
      e instanceof StrataError &&
      e.code === 'UNSUPPORTED' &&
      /dirdata/.test(e.message) &&
      /FEATURE_I31/.test(e.message),
  );
});

test('group descriptors pointing past the volume fail with CORRUPT naming the group', async () => {
  // descriptor 0 sits in block 1; inode table (lo) at +8, block bitmap (lo) at +0
  const img = await crafted('gdt-past-end2', [], (b) => {
    b.writeUInt32LE(99_999_999, BS + 8);
  });
  await assert.rejects(
    openImg(img),
    (e: StrataError) =>
      e instanceof StrataError && e.code === 'CORRUPT' && /group descriptor 0/.test(e.message) && e.offset === BS,
  );
  const img2 = await crafted('gdt-bitmap-past-end2', [], (b) => {
    b.writeUInt32LE(0x7fffffff, BS);
  });
  await assert.rejects(
    openImg(img2),
    (e: StrataError) => e instanceof StrataError && e.code === 'CORRUPT' && /block bitmap/.test(e.message),
  );
});

test('an extent index pointing back at itself is a LOOP, not a hang', async () => {
  const base = await baseImage();
  const lines = await extentLines(base, '/frag/fragmented');
  const level1 = lines.find((l) => l.level === 0)!.phys; // the root's child: an index block
  assert.ok(
    lines.some((l) => l.level === 1),
    'the fragmented file has a two-level tree',
  );
  const img = await crafted('extent-self-loop', [], (b) => {
    b.writeUInt32LE(level1, level1 * BS + 12 + 4); // first index entry -> the block itself
  });
  const fs = await openImg(img);
  const f = await fs.lookup('/frag/fragmented');
  await assert.rejects(
    fs.read(f, 0, f.size),
    (e: StrataError) =>
      e instanceof StrataError && e.code === 'LOOP' && /extent tree/.test(e.structure ?? '') && e.offset !== undefined,
  );
  const ex = async () => {
    for await (const _ of fs.extents(f)) {
      // drain
    }
  };
  await assert.rejects(ex(), (e: StrataError) => e instanceof StrataError && e.code === 'LOOP');
  assert.ok(
    fs.warnings.some((w) => /extent tree.*checksum mismatch/.test(w)),
    'the patched block fails its checksum',
  );
});

test('an inode whose bytes changed behind its checksum is read with a warning naming it', async () => {
  // debugfs's imap gives where the inode sits; flip a byte of its atime (not used for reading)
  const img = await crafted('inode-csum', [], async (buf) => {
    const at = (await run('debugfs', ['-R', 'imap /files/big.bin', await baseImage()])).match(
      /located at block (\d+), offset 0x([0-9a-f]+)/,
    );
    assert.ok(at, 'debugfs imap answered');
    buf[Number(at[1]) * BS + Number.parseInt(at[2], 16) + 0x08] ^= 0x5a;
  });
  const fs = await openImg(img);
  const f = await fs.lookup('/files/big.bin');
  const other = await fs.lookup('/files');
  assert.equal(f.type, 'file');
  assert.equal(other.type, 'dir');
  const mine = fs.warnings.filter((w) => new RegExp(`inode ${f.ino}: checksum mismatch`).test(w));
  assert.equal(mine.length, 1, fs.warnings.join('\n'));
  assert.equal(fs.warnings.filter((w) => /checksum mismatch/.test(w)).length, 1, 'no other structure fails');
});

test('two index entries sharing a leaf, and overlapping extents, are caught', async () => {
  const base = await baseImage();
  const lines = await extentLines(base, '/frag/fragmented');
  const level1 = lines.find((l) => l.level === 0)!.phys;
  const leaves = lines.filter((l) => l.level === 1).map((l) => l.phys);
  const shared = await crafted('extent-shared-leaf', [], (b) => {
    b.writeUInt32LE(leaves[0], level1 * BS + 24 + 4); // second entry -> first leaf
  });
  const fs = await openImg(shared);
  const f = await fs.lookup('/frag/fragmented');
  await assert.rejects(fs.read(f, 0, f.size), (e: StrataError) => e instanceof StrataError && e.code === 'LOOP');
  const overlap = await crafted('extent-overlap', [], (b) => {
    const leaf = leaves[0] * BS;
    b.writeUInt32LE(b.readUInt32LE(leaf + 12), leaf + 24); // extent 1 starts where extent 0 does
  });
  const fs2 = await openImg(overlap);
  const f2 = await fs2.lookup('/frag/fragmented');
  await assert.rejects(
    fs2.read(f2, 0, 10),
    (e: StrataError) => e instanceof StrataError && e.code === 'CORRUPT' && /overlaps/.test(e.message),
  );
});

test('an extent pointing past the end of the file system is CORRUPT', async () => {
  // i_block[3..5] hold the first extent of a depth-0 tree; block[5] is its physical start
  const img = await crafted('extent-past-end', ['sif /files/big.bin block[5] 0xfffffff0']);
  const fs = await openImg(img);
  const f = await fs.lookup('/files/big.bin');
  await assert.rejects(
    fs.read(f, 0, 4096),
    (e: StrataError) => e instanceof StrataError && e.code === 'CORRUPT' && /outside the file system/.test(e.message),
  );
  assert.ok(
    fs.warnings.some((w) => /inode \d+: checksum mismatch/.test(w)) === false,
    'debugfs kept the inode checksum',
  );
});

test('a directory cycle (an entry pointing back to an ancestor) is listed but not entered', async () => {
  const img = await crafted('dir-cycle', ['link /a /a/b/c/back-to-a', 'link / /a/up-to-root']);
  const fs = await openImg(img);
  const names: string[] = [];
  for await (const e of fs.readdir(await fs.lookup('/a/b/c'))) names.push(e.name);
  assert.ok(names.includes('back-to-a'));
  const { paths } = await walkAll(fs);
  assert.ok(paths.includes('/a/b/c/back-to-a'));
  assert.ok(paths.includes('/a/up-to-root'));
  assert.ok(!paths.some((p) => p.startsWith('/a/b/c/back-to-a/')), 'did not descend into the cycle');
  assert.ok(!paths.some((p) => p.startsWith('/a/up-to-root/')));
  assert.equal(new Set(paths).size, paths.length);
  assert.ok(fs.warnings.some((w) => /already visited/.test(w)));
  // ls -R, names only: the same lines and the same loop warnings as the object walk
  const both = await bothListings(fs);
  assert.equal(both.text, both.expected);
  assert.deepEqual(both.linesWarned, both.pathsWarned);
  assert.ok(both.paths.includes('/a/b/c/back-to-a'));
  assert.ok(both.linesWarned.some((w) => /seen twice/.test(w)));
});

test("names with '/', NUL, '..', empty names and bad inode numbers are never returned", async () => {
  const img = await crafted('bad-names', [], async (b, { blocksOf }) => {
    const blocks = await blocksOf('/names');
    const blk = b.subarray(blocks[0] * BS, (blocks[0] + 1) * BS);
    const find = (s: string) => {
      const at = blk.indexOf(Buffer.from(s));
      assert.ok(at >= 8, `found ${s} in the directory block`);
      return at;
    };
    blk.write('x/y', find('xsy'));
    blk.write('..', find('ab'));
    blk[find('qzq') + 1] = 0;
    blk[find('emp') - 2] = 0; // name_len 0
    blk.writeUInt32LE(0xfffffff0, find('bad-ino') - 8);
  });
  const fs = await openImg(img);
  const names: string[] = [];
  for await (const e of fs.readdir(await fs.lookup('/names'))) names.push(e.name);
  assert.deepEqual(names.sort(), ['good1', 'good2']);
  for (const n of names) assert.ok(n !== '' && n !== '.' && n !== '..' && !n.includes('/') && !n.includes('\0'));
  assert.ok(fs.warnings.filter((w) => /unsafe name/.test(w)).length >= 3, fs.warnings.join('\n'));
  assert.ok(fs.warnings.some((w) => /out of range/.test(w)));
  assert.ok(
    fs.warnings.some((w) => /directory block at \d+ checksum mismatch/.test(w)),
    'dir block checksum warned',
  );
  const { paths } = await walkAll(fs);
  assert.ok(
    !paths.some((p) =>
      p
        .split('/')
        .slice(1)
        .some((c) => c === '' || c === '..' || c === '.'),
    ),
  );
  await assert.rejects(fs.lookup('/names/x/y'), (e: StrataError) => e instanceof StrataError && e.code === 'NOT_FOUND');
  const both = await bothListings(fs);
  assert.equal(both.text, both.expected);
  assert.ok(both.paths.includes('/names/good1') && !both.paths.some((l) => l.startsWith('/names/x')));
});

test('needs_recovery gives a warning; encrypted files list but refuse content', async () => {
  const img = await crafted('recover-encrypt', [
    'feature needs_recovery',
    'sif /files/secret.txt flags 0x80800',
    'sif /files/link flags 0x800',
  ]);
  const fs = await openImg(img);
  assert.ok(fs.warnings.some((w) => /needs_recovery/.test(w)));
  const f = await fs.lookup('/files/secret.txt');
  assert.equal(f.size, 'not really encrypted\n'.length);
  await assert.rejects(fs.read(f, 0, 10), (e: StrataError) => e instanceof StrataError && e.code === 'UNSUPPORTED');
  await assert.rejects(
    fs.readlink(await fs.lookup('/files/link')),
    (e: StrataError) => e instanceof StrataError && e.code === 'UNSUPPORTED',
  );
  const names: string[] = [];
  for await (const e of fs.readdir(await fs.lookup('/files'))) names.push(e.name);
  assert.deepEqual(names.sort(), ['big.bin', 'link', 'secret.txt']);
});

test('a truncated image warns at open and fails reads past the end with a StrataError', async () => {
  const full = readFileSync(await baseImage());
  const src = new MemorySource(full.subarray(0, 24 << 20), 'half.img');
  const fs = await openFileSystem(src);
  assert.ok(fs.warnings.some((w) => /claims/.test(w)));
  const outcome = await expectCleanOutcome(async () => walkAll(fs));
  assert.equal(outcome, null);
});

test('content we recognise but do not read is named; unknown content is refused clearly', async () => {
  const mk = (fill: (b: Uint8Array) => void) => {
    const b = new Uint8Array(256 * 1024);
    fill(b);
    return new MemorySource(b, 'sig.img');
  };
  const put = (b: Uint8Array, at: number, s: string) => {
    for (let i = 0; i < s.length; i++) b[at + i] = s.charCodeAt(i);
  };
  const cases: Array<[string, (b: Uint8Array) => void]> = [
    ['xfs', (b) => put(b, 0, 'XFSB')],
    ['btrfs', (b) => put(b, 0x10040, '_BHRfS_M')],
    ['ntfs', (b) => put(b, 3, 'NTFS    ')],
  ];
  for (const [kind, fill] of cases) {
    await assert.rejects(
      openFileSystem(mk(fill)),
      (e: StrataError) => e instanceof StrataError && e.code === 'UNSUPPORTED' && e.message.includes(kind),
      kind,
    );
  }
  await assert.rejects(
    openFileSystem(mk(() => {})),
    (e: StrataError) => e instanceof StrataError && /no known file system/.test(e.message),
  );
});

test('a real vfat volume (mkfs.vfat) is opened by the FAT reader, not mistaken for ext', async () => {
  const img = await fixture('ext-bad-vfat-v1.img', async (out) => {
    writeFileSync(out, '');
    truncateSync(out, 8 << 20);
    await run('mkfs.vfat', [out]);
  });
  const fs = await openImg(img);
  assert.equal(fs.kind, 'vfat');
});

test('a lone ISO 9660 signature with no volume descriptor set is refused by the ISO reader, naming it', async () => {
  const b = new Uint8Array(256 * 1024);
  for (let i = 0; i < 5; i++) b[0x8001 + i] = 'CD001'.charCodeAt(i);
  await assert.rejects(
    openFileSystem(new MemorySource(b, 'sig.img')),
    (e: StrataError) =>
      e instanceof StrataError && e.code === 'CORRUPT' && /ISO 9660 volume descriptor/.test(e.message),
  );
});

test('ext2 without the filetype feature: entry types come from the inodes and match the kernel', async () => {
  const tree = await smallTree();
  const img = await fixture('ext-bad-nofiletype-v1.img', async (out) => {
    writeFileSync(out, '');
    truncateSync(out, 16 << 20);
    await run('mkfs.ext2', ['-q', '-F', '-b', '1024', '-O', '^filetype', '-d', tree, out]);
  });
  const kernel = await kernelViewCached(img);
  const fs = await openImg(img);
  assert.ok(!(await fs.info()).features?.includes('filetype'));
  let n = 0;
  for await (const it of walk(fs, await fs.root(), '/')) {
    const k = kernel.get(it.path);
    assert.ok(k, `${it.path} exists for the kernel`);
    assert.equal(it.entry.type, k.type, `${it.path}: entry type`);
    assert.equal(it.inode.type, k.type, `${it.path}: inode type`);
    n++;
  }
  assert.equal(n, kernel.size - 1);
});
