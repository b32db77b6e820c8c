import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  type BigIntStats,
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import type { DirEntry, FileSystem, Inode } from '../../src/fs/types.js';
import { openAddress } from '../../src/library/address.js';
import { extractTree } from '../../src/library/extract.js';
import { StrataError } from '../../src/util/errors.js';
import { copyOf, type FsPlacements, fsPlacements, TIMES, withMount } from '../helpers/fs-cli-tree.js';
import { FIXTURES, fixture, run, scratch } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Relative paths of everything under `root`, parents before children. */
function listTree(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(root, rel)).sort()) {
    const r = rel === '' ? name : `${rel}/${name}`;
    out.push(r);
    if (lstatSync(path.join(root, r)).isDirectory()) out.push(...listTree(root, r));
  }
  return out;
}

const near = (a: bigint, b: bigint, tol = 1000n) => (a > b ? a - b : b - a) <= tol;

let fx: FsPlacements;
/** The kernel's times for every path (the image keeps only what mkfs and the TIMES fix-up wrote). */
const kernelTimes = new Map<string, { mtimeNs: bigint; atimeNs: bigint }>();

before(async () => {
  fx = await fsPlacements();
  await withMount(fx.whole, async (mnt) => {
    for (const r of listTree(mnt)) {
      const st = lstatSync(path.join(mnt, r), { bigint: true });
      kernelTimes.set(r, { mtimeNs: st.mtimeNs, atimeNs: st.atimeNs });
    }
  });
});

describe('extractTree', () => {
  test('a whole tree from a GPT partition matches the source tree', async () => {
    const box = scratch('extract-all');
    const dest = path.join(box, 'dest');
    const at = await openAddress(fx.gpt);
    try {
      const warnings: string[] = [];
      const r = await extractTree(at.fs, '/', dest, { onWarning: (w) => warnings.push(w) });
      assert.deepEqual(warnings, []);
      assert.equal(r.skipped, 0);
      assert.equal(r.hardlinks, 1);
      assert.equal(r.fifos, 1);
      assert.equal(r.devices, 1);

      const srcPaths = listTree(fx.src);
      // lstat everything before reading anything: reading would move atimes (relatime)
      const destStats = new Map(srcPaths.map((rel) => [rel, lstatSync(path.join(dest, rel), { bigint: true })]));
      const destPaths = listTree(dest).filter((p) => p !== 'lost+found');
      assert.deepEqual(destPaths, srcPaths);
      const inoOf = new Map<bigint, string>();
      for (const rel of srcPaths) {
        const s = lstatSync(path.join(fx.src, rel), { bigint: true });
        const d = destStats.get(rel)!;
        const what = (st: BigIntStats) => Number(st.mode & 0o170000n);
        assert.equal(what(d), what(s), `${rel}: type`);
        if (!s.isSymbolicLink()) assert.equal(d.mode & 0o7777n, s.mode & 0o7777n, `${rel}: mode`);
        assert.equal(d.uid, s.uid, `${rel}: uid`);
        assert.equal(d.gid, s.gid, `${rel}: gid`);
        if (s.isFile()) {
          assert.equal(d.size, s.size, `${rel}: size`);
          assert.equal(sha(readFileSync(path.join(dest, rel))), sha(readFileSync(path.join(fx.src, rel))), rel);
          if (s.nlink > 1n) {
            const first = inoOf.get(s.ino);
            if (first)
              assert.equal(d.ino, lstatSync(path.join(dest, first), { bigint: true }).ino, `${rel} links ${first}`);
            else inoOf.set(s.ino, rel);
          }
        }
        if (s.isSymbolicLink()) assert.equal(readlinkSync(path.join(dest, rel)), readlinkSync(path.join(fx.src, rel)));
        if (s.isCharacterDevice()) assert.equal(d.rdev, s.rdev, `${rel}: rdev`);
        // Times: those the test set exactly must match the source; all must match the image.
        const k = kernelTimes.get(rel)!;
        assert.ok(near(d.mtimeNs, k.mtimeNs), `${rel}: mtime ${d.mtimeNs} vs image ${k.mtimeNs}`);
        assert.ok(near(d.atimeNs, k.atimeNs), `${rel}: atime ${d.atimeNs} vs image ${k.atimeNs}`);
        if (TIMES[rel]) assert.ok(near(d.mtimeNs, s.mtimeNs), `${rel}: mtime ${d.mtimeNs} vs source ${s.mtimeNs}`);
      }
      assert.ok(inoOf.size >= 1, 'the tree has a hard link');
      const sparse = lstatSync(path.join(dest, 'sparse.img'));
      assert.equal(sparse.size, 64 * 1024 * 1024);
      assert.ok(sparse.blocks * 512 < 1024 * 1024, `sparse.img holds ${sparse.blocks * 512} bytes on disk`);
    } finally {
      await at.close();
      rmSync(box, { recursive: true, force: true });
    }
  });

  test("a set-group-ID DEST and a strict umask still give every entry the image's owner and mode", async () => {
    // New entries in a set-group-ID folder take its group, and the umask trims the mode given
    // at creation: the extractor must notice both and set owner and mode itself.
    const box = scratch('extract-sgid');
    const dest = path.join(box, 'dest');
    mkdirSync(dest);
    chownSync(dest, 0, 4242);
    chmodSync(dest, 0o2775);
    const at = await openAddress(fx.whole);
    const old = process.umask(0o077);
    try {
      const r = await extractTree(at.fs, '/', dest);
      assert.equal(r.skipped, 0);
      let checked = 0;
      for (const rel of listTree(fx.src)) {
        const s = lstatSync(path.join(fx.src, rel));
        const d = lstatSync(path.join(dest, rel));
        assert.equal(d.uid, s.uid, `${rel}: uid`);
        assert.equal(d.gid, s.gid, `${rel}: gid (not DEST's 4242)`);
        if (!s.isSymbolicLink()) assert.equal(d.mode & 0o7777, s.mode & 0o7777, `${rel}: mode under umask 077`);
        checked++;
      }
      assert.ok(checked > 10, `${checked} entries compared`);
    } finally {
      process.umask(old);
      await at.close();
      rmSync(box, { recursive: true, force: true });
    }
  });

  test('a single file lands as DEST/name; a second run overwrites nothing', async () => {
    const box = scratch('extract-one');
    const at = await openAddress(fx.qcow2);
    try {
      const r = await extractTree(at.fs, '/dir1/dir2/dir3/deep.txt', box);
      assert.equal(r.files, 1);
      assert.equal(readFileSync(path.join(box, 'deep.txt'), 'utf8'), 'deep\n');
      writeFileSync(path.join(box, 'deep.txt'), 'mine');
      const again = await extractTree(at.fs, '/dir1/dir2/dir3/deep.txt', box);
      assert.equal(again.files, 0);
      assert.equal(again.skipped, 1);
      assert.match(again.warnings.join('\n'), /already exists/);
      assert.equal(readFileSync(path.join(box, 'deep.txt'), 'utf8'), 'mine');
    } finally {
      await at.close();
      rmSync(box, { recursive: true, force: true });
    }
  });

  test('symlinks already in DEST that point outside are never followed', async () => {
    const box = scratch('extract-pre');
    const outside = path.join(box, 'outside');
    const dest = path.join(box, 'dest');
    mkdirSync(outside);
    mkdirSync(dest);
    symlinkSync(path.join(outside, 'victim.txt'), path.join(dest, 'hello.txt')); // dangling, named like a file
    symlinkSync(outside, path.join(dest, 'dir1')); // named like a directory
    symlinkSync(outside, path.join(dest, 'fifo1'));
    const at = await openAddress(fx.whole);
    try {
      const r = await extractTree(at.fs, '/', dest);
      assert.deepEqual(readdirSync(outside), [], 'nothing written through the symlinks');
      const w = r.warnings.join('\n');
      assert.match(w, /hello\.txt/);
      assert.match(w, /dir1/);
      assert.equal(readlinkSync(path.join(dest, 'hello.txt')), path.join(outside, 'victim.txt'), 'left as it was');
      // the rest is extracted
      assert.equal(sha(readFileSync(path.join(dest, 'big.bin'))), sha(readFileSync(path.join(fx.src, 'big.bin'))));
    } finally {
      await at.close();
      rmSync(box, { recursive: true, force: true });
    }
  });

  test('hostile names from the reader are refused by extract itself', async () => {
    const box = scratch('extract-fake');
    const dest = path.join(box, 'dest');
    const at = await openAddress(fx.whole);
    try {
      const real = at.fs;
      const hello = await real.lookup('/hello.txt');
      const hostile = ['..', '.', '', '../evil', 'a/b', 'nul\0x', '/abs'];
      const fake: FileSystem = Object.create(real);
      fake.readdir = async function* (dir: Inode) {
        yield* real.readdir(dir);
        if (dir.ino === (await real.root()).ino) {
          for (const name of hostile) yield { name, ino: hello.ino, type: 'file' as const };
        }
      };
      // the batch form a walk prefers must say the same as readdir
      fake.readdirAll = async (dir: Inode) => {
        const out: DirEntry[] = [];
        for await (const e of fake.readdir(dir)) out.push(e);
        return out;
      };
      const r = await extractTree(fake, '/', dest);
      assert.deepEqual(readdirSync(box), ['dest']);
      for (const name of hostile)
        assert.ok(
          r.warnings.some((w) => w.includes(JSON.stringify(name))),
          `warned about ${JSON.stringify(name)}`,
        );
      assert.equal(r.skipped, hostile.length);
      assert.ok(!existsSync(path.join(dest, 'a')) && !existsSync(path.join(dest, 'abs')));
      assert.ok(existsSync(path.join(dest, 'hello.txt')));
    } finally {
      await at.close();
      rmSync(box, { recursive: true, force: true });
    }
  });

  test('a crafted image with "..", "../q" and a duplicate name never writes outside DEST', async () => {
    const outside = path.join(FIXTURES, 'extract-crafted-outside');
    const clean = await fixture('fs-cli-v1-crafted-src.img', async (out) => {
      const tree = scratch('crafted-tree');
      try {
        mkdirSync(path.join(tree, 'sub'));
        mkdirSync(path.join(tree, 'escB'));
        writeFileSync(path.join(tree, 'sub/XX'), 'dotdot\n');
        writeFileSync(path.join(tree, 'sub/QQQQ'), 'escape\n');
        writeFileSync(path.join(tree, 'sub/ok.txt'), 'fine\n');
        writeFileSync(path.join(tree, 'escB/payload'), 'payload\n');
        symlinkSync(outside, path.join(tree, 'escA'));
        // no metadata_csum: the patched directory blocks stay "valid" for the reader
        await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-O', '^metadata_csum', '-d', tree, out, '8M']);
      } finally {
        rmSync(tree, { recursive: true, force: true });
      }
    });
    const img = copyOf(clean, 'crafted');
    const bytes = readFileSync(img);
    const patch = async (dir: string, from: string, to: string) => {
      const blocks = (await run('debugfs', ['-R', `blocks ${dir}`, img])).trim().split(/\s+/).map(Number);
      for (const b of blocks) {
        const block = bytes.subarray(b * 4096, (b + 1) * 4096);
        for (let at = block.indexOf(from); at >= 0; at = block.indexOf(from, at + 1)) {
          if (block[at - 2] !== from.length) continue; // name_len byte of an ext4 dir entry
          block.write(to, at, 'latin1');
          return;
        }
      }
      throw new Error(`no entry ${from} in ${dir}`);
    };
    await patch('/sub', 'XX', '..');
    await patch('/sub', 'QQQQ', '../q');
    await patch('/', 'escB', 'escA');
    writeFileSync(img, bytes);

    const box = scratch('extract-crafted');
    const dest = path.join(box, 'dest');
    rmSync(outside, { recursive: true, force: true });
    mkdirSync(outside);
    const at = await openAddress(img);
    try {
      let r: Awaited<ReturnType<typeof extractTree>> | undefined;
      try {
        r = await extractTree(at.fs, '/', dest);
      } catch (e) {
        assert.ok(e instanceof StrataError, `only a StrataError may stop extraction: ${e}`);
      }
      assert.deepEqual(readdirSync(outside), [], 'nothing written where the symlink points');
      assert.deepEqual(readdirSync(box), ['dest'], 'nothing written next to DEST');
      assert.ok(!existsSync(path.join(box, 'q')) && !existsSync(path.join(path.dirname(box), 'q')));
      assert.ok(!existsSync(path.join(dest, 'q')), "'../q' from /sub would land here");
      if (r) {
        const w = r.warnings.join('\n');
        // refused by the reader or by extract itself, but named in the warnings either way
        assert.match(w, /"\.\."/);
        assert.match(w, /"\.\.\/q"/);
        assert.equal(readFileSync(path.join(dest, 'sub/ok.txt'), 'utf8'), 'fine\n');
        // escA is a symlink or a directory, never both; payload never lands outside
        assert.ok(r.skipped >= 1, `skipped ${r.skipped}`);
      }
    } finally {
      await at.close();
      rmSync(box, { recursive: true, force: true });
      rmSync(path.dirname(img), { recursive: true, force: true });
      rmSync(outside, { recursive: true, force: true });
    }
  });
});
