import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import type { ByteSource } from '../../src/io/byte-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { StrataError } from '../../src/util/errors.js';
import { withRwMount } from '../helpers/ext-tree.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { fixture, run } from '../helpers/tools.js';

const SIZE = 300 << 20; // the smallest file system mkfs.xfs 6.1 makes

interface FuzzFixture {
  image: string;
  /** Inode numbers by path, from stat through the kernel mount that wrote the tree. */
  inodes: Record<string, number>;
}

/** A small XFS touching every structure: short-form, block, leaf and node directories, a BMBT, attribute forks, both symlink kinds. */
async function fuzzImage(): Promise<FuzzFixture> {
  const dir = await fixture('xfs-fuzz-v1', async (d) => {
    mkdirSync(d);
    const img = path.join(d, 'xfs.img');
    writeFileSync(img, '');
    truncateSync(img, SIZE);
    await run('mkfs.xfs', ['-q', '-f', img]);
    const inodes: Record<string, number> = {};
    await withRwMount(img, (m) => {
      mkdirSync(path.join(m, 'a', 'b', 'c'), { recursive: true });
      writeFileSync(path.join(m, 'a', 'b', 'c', 'deep.txt'), 'deep\n');
      mkdirSync(path.join(m, 'many'));
      for (let i = 0; i < 400; i++) writeFileSync(path.join(m, 'many', `file-${i}-${'n'.repeat(i % 30)}`), `${i}\n`);
      const f = path.join(m, 'fragmented');
      writeFileSync(f, '');
      const fd = openSync(f, 'r+');
      for (let i = 400; i >= 0; i--) writeSync(fd, Buffer.from([i & 0xff]), 0, 1, i * 8192);
      closeSync(fd);
      writeFileSync(path.join(m, 'small'), 'tiny');
      writeFileSync(path.join(m, 'medium'), Buffer.alloc(70_000, 3));
      symlinkSync('small', path.join(m, 'fast-link'));
      symlinkSync(`${'a/'.repeat(300)}x`, path.join(m, 'slow-link'));
      execFileSync('setfattr', ['-n', 'user.k', '-v', 'v'.repeat(300), path.join(m, 'small')]);
      let dump = `# file: ${path.join(m, 'medium')}\n`;
      for (let i = 0; i < 200; i++) dump += `user.attr-${i}="${'x'.repeat(i % 40)}"\n`;
      execFileSync('setfattr', ['--restore=-'], { input: `${dump}\n` });
      execFileSync('setfattr', ['-n', 'user.remote', '-v', 'r'.repeat(5000), path.join(m, 'a')]);
      for (const p of ['/', '/many', '/a', '/a/b', '/fragmented', '/medium', '/slow-link', '/small']) {
        inodes[p] = lstatSync(path.join(m, p)).ino;
      }
    });
    writeFileSync(path.join(d, 'inodes.json'), JSON.stringify(inodes));
  });
  return { image: path.join(dir, 'xfs.img'), inodes: JSON.parse(readFileSync(path.join(dir, 'inodes.json'), 'utf8')) };
}

/** Byte ranges worth mutating, located with xfs_db (not with the code under test). */
async function regions(f: FuzzFixture): Promise<Array<[number, number]>> {
  const db = (...cmds: string[]) => run('xfs_db', ['-r', ...cmds.flatMap((c) => ['-c', c]), f.image]);
  const sb = await db('sb 0', 'print blocksize agblocks agblklog inodesize');
  const num = (t: string, k: string) => Number(new RegExp(`${k} = (\\d+)`).exec(t)![1]);
  const bs = num(sb, 'blocksize');
  const agBlocks = num(sb, 'agblocks');
  const agShift = num(sb, 'agblklog');
  const isz = num(sb, 'inodesize');
  const lin = (fsb: number) => (Math.floor(fsb / 2 ** agShift) * agBlocks + (fsb % 2 ** agShift)) * bs;
  const out: Array<[number, number]> = [
    [0, 2048],
    [agBlocks * bs, agBlocks * bs + 2048],
  ];
  const agf = await db('agf 0', 'print bnoroot cntroot refcntroot');
  const agi = await db('agi 0', 'print root free_root');
  for (const b of [num(agf, 'bnoroot'), num(agf, 'cntroot'), num(agi, 'root')]) out.push([b * bs, (b + 1) * bs]);
  for (const [p, ino] of Object.entries(f.inodes)) {
    const d = await db(`convert inode ${ino} daddr`);
    const at = Number(/\((\d+)\)/.exec(d)![1]) * 512;
    out.push([at, at + isz]);
    const bm = await db(`inode ${ino}`, 'bmap', 'bmap -a');
    let k = 0;
    for (const m of bm.matchAll(/startblock (\d+) \(\d+\/\d+\) count (\d+)/g)) {
      if (k++ >= 3) break;
      const s = lin(Number(m[1]));
      out.push([s, s + Math.min(Number(m[2]), 2) * bs]);
    }
    if (p === '/fragmented') {
      const t = await db(`inode ${ino}`, 'print u3.bmbt.ptrs');
      for (const m of t.matchAll(/\d+:(\d+)/g)) out.push([lin(Number(m[1])), lin(Number(m[1])) + bs]);
    }
  }
  return out;
}

/** The image with some bytes replaced, read through an overlay (no 300 MiB copy per case). */
class Overlay implements ByteSource {
  readonly size: number;
  constructor(
    private readonly base: ByteSource,
    private readonly at: number,
    private readonly patch: Uint8Array,
    size: number,
    readonly name: string,
  ) {
    this.size = size;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = Math.max(0, Math.min(length, this.size - offset));
    const out = new Uint8Array(await this.base.read(offset, n));
    const s = Math.max(offset, this.at);
    const e = Math.min(offset + n, this.at + this.patch.length);
    if (s < e) out.set(this.patch.subarray(s - this.at, e - this.at), s - offset);
    return out;
  }
}

async function exercise(fs: FileSystem): Promise<void> {
  await fs.info();
  for await (const it of walk(fs, await fs.root(), '/')) {
    const i = it.inode;
    if (i.type === 'file') {
      await fs.read(i, 0, Math.min(i.size, 1 << 20));
      for await (const _ of fs.extents(i)) {
        // drain
      }
    }
    if (i.type === 'symlink') await fs.readlink(i);
    await fs.xattrs(i);
  }
  await fs.allocation();
  for await (const _ of fs.metadataRegions()) {
    // drain
  }
}

const CASES = 1000;

test(`xfs fuzz: ${CASES} mutated images open, walk and read cleanly or fail with StrataError`, async (t) => {
  const f = await fuzzImage();
  // in memory: a case reads hundreds of small pieces, each an await on a file read otherwise
  const { MemorySource } = await import('../../src/io/memory-source.js');
  const base: ByteSource = new MemorySource(new Uint8Array(readFileSync(f.image)), 'xfs-fuzz.img');
  try {
    const clean = await openFileSystem(base);
    await exercise(clean);
    assert.deepEqual(clean.warnings, []);
    const regs = await regions(f);
    const failures: string[] = [];
    let opened = 0;
    let completed = 0;
    let warned = 0;
    for (let c = 0; c < CASES; c++) {
      const seed = 0x5eed0000 + c * 7919;
      const rand = prng(seed);
      const [s, e] = regs[rand() % regs.length];
      const window = await base.read(s, e - s);
      const m = mutate(window, [[0, window.length]], rand);
      // a shortened window means the mutation truncated the image there
      const size = m.length < window.length ? s + m.length : base.size;
      const src = new Overlay(base, s, m, size, `xfs-fuzz-${c}.img`);
      const outcome = await expectCleanOutcome(async () => {
        const fs = await openFileSystem(src);
        opened++;
        await exercise(fs);
        completed++;
        if (fs.warnings.length > 0) warned++;
      }, 5000);
      if (outcome) failures.push(`case ${c} (seed ${seed}): ${outcome}`);
    }
    t.diagnostic(
      `${opened} opened, ${completed} walked and read completely (${warned} with warnings), ${CASES - completed} refused`,
    );
    assert.deepEqual(failures, []);
    assert.ok(opened > CASES / 4, `most mutations still open (${opened})`);
    assert.ok(warned > 0, 'some mutations were caught by checksums');
  } finally {
    await base.close?.();
  }
});

/** A copy of the fuzz image with `patches` written at volume offsets. */
function patched(img: string, patches: Array<[number, Uint8Array]>): Uint8Array {
  const b = new Uint8Array(readFileSync(img));
  for (const [at, bytes] of patches) b.set(bytes, at);
  return b;
}

test('the fuzz image read cleanly: a leaf-form directory matches xfs_db ls, the leaf/node attribute fork holds what setfattr wrote', async () => {
  const f = await fuzzImage();
  const bm = await run('xfs_db', ['-r', '-c', 'path /many', '-c', 'bmap', f.image]);
  // data blocks plus one block at the leaf offset (32 GiB / 4 KiB): a leaf-form directory
  assert.match(bm, /data offset 8388608 /);
  assert.ok((bm.match(/data offset \d+ /g) ?? []).length >= 3);
  const ls = await run('xfs_db', ['-r', '-c', 'ls /many', f.image]);
  const want = [...ls.matchAll(/^\s*\d+\s+(\d+)\s+\S+\s+\S+\s+\d+\s+(\S+) \(good\)$/gm)]
    .filter((m) => m[2] !== '.' && m[2] !== '..')
    .map((m) => `${m[2]} ${m[1]}`)
    .sort();
  const src = await FileSource.open(f.image);
  try {
    const fs = await openFileSystem(src);
    const many = await fs.lookup('/many');
    const got = (await fs.readdirAll!(many)).map((e) => `${e.name} ${e.ino}`).sort();
    assert.equal(got.length, 400);
    assert.deepEqual(got, want);
    const x = await fs.xattrs(await fs.lookup('/medium'));
    assert.equal(x.size, 200);
    for (let i = 0; i < 200; i++) assert.equal(Buffer.from(x.get(`user.attr-${i}`)!).toString(), 'x'.repeat(i % 40));
    const remote = await fs.xattrs(await fs.lookup('/a'));
    assert.equal(Buffer.from(remote.get('user.remote')!).toString(), 'r'.repeat(5000));
    assert.equal(await fs.readlink(await fs.lookup('/slow-link')), `${'a/'.repeat(300)}x`);
  } finally {
    await src.close();
  }
});

test('a BMBT pointer back to its own block is a LOOP error naming the structure, not a hang', async () => {
  const f = await fuzzImage();
  const db = (...cmds: string[]) => run('xfs_db', ['-r', ...cmds.flatMap((c) => ['-c', c]), f.image]);
  const ino = f.inodes['/fragmented'];
  const root = await db(`inode ${ino}`, 'print u3.bmbt.level u3.bmbt.ptrs');
  const ptr = Number(/ptrs\[1(?:-\d+)?\] = 1:(\d+)/.exec(root)![1]);
  const level = Number(/level = (\d+)/.exec(root)![1]);
  assert.ok(level >= 1);
  // point the root's first child at the inode's own root again: make the child a node whose pointer is itself
  const sb = await db('sb 0', 'print blocksize agblocks agblklog');
  const num = (k: string) => Number(new RegExp(`${k} = (\\d+)`).exec(sb)![1]);
  const bs = num('blocksize');
  const lin = (fsb: number) =>
    (Math.floor(fsb / 2 ** num('agblklog')) * num('agblocks') + (fsb % 2 ** num('agblklog'))) * bs;
  const at = lin(ptr);
  const blk = new Uint8Array(readFileSync(f.image).subarray(at, at + bs));
  const v = new DataView(blk.buffer);
  v.setUint16(4, 1); // level 1: a node
  v.setUint16(6, 1); // one key
  const maxrecs = Math.floor((bs - 72) / 16);
  v.setBigUint64(72 + maxrecs * 8, BigInt(ptr)); // its pointer: itself
  const { MemorySource } = await import('../../src/io/memory-source.js');
  const src = new MemorySource(patched(f.image, [[at, blk]]), 'bmbt-loop.img');
  const fs = await openFileSystem(src);
  const file = await fs.lookup('/fragmented');
  await assert.rejects(
    fs.read(file, 0, file.size),
    (e: unknown) =>
      e instanceof StrataError &&
      (e.code === 'LOOP' || e.code === 'CORRUPT') &&
      /B\+tree/.test(e.structure ?? '') &&
      e.offset !== undefined,
  );
});

test('a directory entry pointing back at an ancestor is listed but not entered', async () => {
  const f = await fuzzImage();
  // rewrite the inode number of /a/b/c's short-form entry in /a/b to /a's: a cycle a -> b -> "c" = a
  const { MemorySource } = await import('../../src/io/memory-source.js');
  const db = (...cmds: string[]) => run('xfs_db', ['-r', ...cmds.flatMap((c) => ['-c', c]), f.image]);
  const d = await db(`convert inode ${f.inodes['/a/b']} daddr`);
  const at = Number(/\((\d+)\)/.exec(d)![1]) * 512;
  const bytes = new Uint8Array(readFileSync(f.image));
  // v3 inode literal area at 176: count, i8count, parent(4), then namelen, offset(2), name, ftype, ino(4)
  const lit = at + 176;
  assert.equal(bytes[lit], 1, 'one entry in /a/b');
  const nl = bytes[lit + 6];
  assert.equal(Buffer.from(bytes.subarray(lit + 9, lit + 9 + nl)).toString(), 'c');
  new DataView(bytes.buffer).setUint32(lit + 9 + nl + 1, f.inodes['/a']);
  // the inode CRC no longer matches: that is a warning, the walk goes on
  const fs = await openFileSystem(new MemorySource(bytes, 'dir-cycle.img'));
  const paths: string[] = [];
  for await (const it of walk(fs, await fs.root(), '/')) paths.push(it.path);
  assert.ok(paths.includes('/a/b/c'));
  assert.ok(!paths.some((p) => p.startsWith('/a/b/c/')), 'did not descend into the cycle');
  assert.ok(
    fs.warnings.some((w) => /inode \d+.*checksum mismatch/.test(w)),
    'the changed inode fails its CRC',
  );
  assert.ok(
    fs.warnings.some((w) => /already visited/.test(w)),
    'the walk noted the cycle',
  );
});
