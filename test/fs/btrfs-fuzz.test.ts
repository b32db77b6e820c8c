import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { crc32c } from '../../src/util/crc32c.js';
import { StrataError } from '../../src/util/errors.js';
import { compressible } from '../helpers/btrfs-image.js';
import { withRwMount } from '../helpers/ext-tree.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { fixture, run } from '../helpers/tools.js';

const CASES = 1000;

/** A small btrfs touching every structure: dirs, inline/regular/compressed extents, subvolume, snapshot, reflink. */
async function image(): Promise<string> {
  const tree = await fixture('btrfs-fuzz-tree-v1', async (d) => {
    mkdirSync(path.join(d, 'a', 'b', 'c'), { recursive: true });
    writeFileSync(path.join(d, 'a', 'b', 'c', 'deep.txt'), 'deep\n');
    mkdirSync(path.join(d, 'many'));
    for (let i = 0; i < 300; i++) writeFileSync(path.join(d, 'many', `file-${i}-${'n'.repeat(i % 30)}`), `${i}\n`);
    writeFileSync(path.join(d, 'medium'), Buffer.alloc(70_000, 3));
    symlinkSync('medium', path.join(d, 'link'));
    execFileSync('setfattr', ['-n', 'user.k', '-v', 'v'.repeat(300), path.join(d, 'medium')]);
  });
  return fixture('btrfs-fuzz-v1.img', async (out) => {
    writeFileSync(out, '');
    truncateSync(out, 128 << 20);
    await run('mkfs.btrfs', ['-q', '-f', '--rootdir', tree, out]);
    await withRwMount(out, async (mnt) => {
      for (const alg of ['zstd', 'zlib', 'lzo']) {
        await run('mount', ['-o', `remount,compress=${alg}`, mnt]);
        writeFileSync(path.join(mnt, `c-${alg}`), compressible(alg, 300_000));
        writeFileSync(path.join(mnt, `i-${alg}`), compressible(`${alg}i`, 1500));
        execFileSync('sync');
      }
      execFileSync('btrfs', ['subvolume', 'create', path.join(mnt, 'sv')]);
      writeFileSync(path.join(mnt, 'sv', 'f'), compressible('sv', 20000));
      execFileSync('btrfs', ['subvolume', 'snapshot', path.join(mnt, 'sv'), path.join(mnt, 'snap')]);
      execFileSync('cp', ['--reflink=always', path.join(mnt, 'medium'), path.join(mnt, 'medium-copy')]);
    });
  });
}

/** Tree blocks and compressed extents, located with btrfs inspect-internal (not the code under test). */
async function regions(
  img: string,
): Promise<{ regs: Array<{ at: number[]; len: number }>; nodes: Array<{ phys: number[]; level: number }> }> {
  const chunkText = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'chunk', img]);
  const chunks: Array<{ logical: number; length: number; stripes: number[] }> = [];
  const re =
    /CHUNK_ITEM (\d+)\)[^\n]*\n\s*length (\d+)[\s\S]*?num_stripes \d+[^\n]*\n((?:\s*stripe \d+ devid \d+ offset \d+\n\s*dev_uuid [^\n]*\n)+)/g;
  for (let m = re.exec(chunkText); m; m = re.exec(chunkText)) {
    chunks.push({
      logical: Number(m[1]),
      length: Number(m[2]),
      stripes: [...m[3].matchAll(/offset (\d+)/g)].map((x) => Number(x[1])),
    });
  }
  const phys = (l: number) => {
    const c = chunks.find((x) => l >= x.logical && l < x.logical + x.length);
    assert.ok(c, `logical ${l} mapped by dump-tree`);
    return c.stripes.map((s) => s + l - c.logical);
  };
  const all = await run('btrfs', ['inspect-internal', 'dump-tree', img]);
  const sup = await run('btrfs', ['inspect-internal', 'dump-super', img]);
  const ns = Number(/^nodesize\s+(\d+)/m.exec(sup)?.[1]);
  const regs: Array<{ at: number[]; len: number }> = [{ at: [0x10000], len: 4096 }];
  const nodes: Array<{ phys: number[]; level: number }> = [];
  const seen = new Set<number>();
  for (const m of all.matchAll(/^(?:leaf|node) (\d+) (?:items|level) (\d+)/gm)) {
    const l = Number(m[1]);
    if (seen.has(l)) continue;
    seen.add(l);
    const level = m[0].startsWith('node') ? Number(/level (\d+)/.exec(m[0])?.[1]) : 0;
    const p = phys(l);
    nodes.push({ phys: p, level });
    regs.push({ at: p, len: ns }); // every DUP copy gets the same damage
  }
  for (const m of all.matchAll(/extent data disk byte (\d+) nr (\d+)\n[^\n]*compression [1-3]/g)) {
    const p = phys(Number(m[1]))[0];
    regs.push({ at: [p], len: Number(m[2]) });
  }
  return { regs, nodes };
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

/** A source that reads `base` with windows replaced (so 1,000 cases do not copy 128 MiB each). */
function patched(base: Uint8Array, ats: number[], window: Uint8Array, name: string): MemorySource {
  const src = new MemorySource(base, name);
  const read = src.read.bind(src);
  src.read = async (offset: number, length: number) => {
    const b = await read(offset, length);
    let out = b;
    for (const at of ats) {
      if (offset + b.length <= at || offset >= at + window.length) continue;
      if (out === b) out = new Uint8Array(b);
      for (let i = Math.max(offset, at); i < Math.min(offset + b.length, at + window.length); i++) {
        out[i - offset] = window[i - at];
      }
    }
    return out;
  };
  return src;
}

/** Re-stamp a tree block's crc32c (so a crafted change is parsed, not just warned about). */
function restamp(b: Uint8Array, at: number, size: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(at, crc32c(b.subarray(at + 0x20, at + size)), true);
}

test(`btrfs fuzz: ${CASES} mutated images open, walk and read cleanly or fail with StrataError`, async (t) => {
  const img = await image();
  const bytes = new Uint8Array(readFileSync(img));
  const clean = await openFileSystem(new MemorySource(bytes, 'btrfs-fuzz.img'));
  await exercise(clean);
  assert.deepEqual(clean.warnings, []);
  const { regs } = await regions(img);
  assert.ok(regs.length > 10);
  const failures: string[] = [];
  let opened = 0;
  let completed = 0;
  for (let c = 0; c < CASES; c++) {
    const seed = 0xb7f50000 + c * 7919;
    const rand = prng(seed);
    const r = regs[rand() % regs.length];
    const win = mutate(bytes.subarray(r.at[0], r.at[0] + r.len), [[0, r.len]], rand);
    const src = patched(bytes, r.at, win, `btrfs-fuzz-${c}.img`);
    const outcome = await expectCleanOutcome(async () => {
      const fs = await openFileSystem(src);
      opened++;
      await exercise(fs);
      completed++;
    }, 5000);
    if (outcome) failures.push(`case ${c} (seed ${seed}): ${outcome}`);
  }
  t.diagnostic(`${opened} opened, ${completed} walked and read completely, ${CASES - completed} refused`);
  assert.deepEqual(failures, []);
  assert.ok(opened > CASES / 4, `most mutations still open (${opened})`);
});

test('btrfs: a tree block pointing at itself is a clear error, not a hang', async () => {
  const img = await image();
  const bytes = new Uint8Array(readFileSync(img));
  const { nodes } = await regions(img);
  const sup = await run('btrfs', ['inspect-internal', 'dump-super', img]);
  const ns = Number(/^nodesize\s+(\d+)/m.exec(sup)?.[1]);
  const inner = nodes.find((n) => n.level > 0);
  assert.ok(inner, 'the image has an interior tree node');
  const copy = new Uint8Array(bytes);
  for (const p of inner.phys) {
    const dv = new DataView(copy.buffer, p);
    const self = dv.getBigUint64(0x30, true);
    dv.setBigUint64(101 + 17, self, true); // first child pointer = the node itself
    restamp(copy, p, ns);
  }
  const r = await expectCleanOutcome(async () => exercise(await openFileSystem(new MemorySource(copy, 'loop.img'))));
  assert.equal(r, null);
  await assert.rejects(
    (async () => exercise(await openFileSystem(new MemorySource(copy, 'loop.img'))))(),
    (e: unknown) => e instanceof StrataError && /level/.test(e.message) && e.offset !== undefined,
  );
});

test('btrfs: a chunk mapping outside the device is a clear error', async () => {
  const img = await image();
  const copy = new Uint8Array(readFileSync(img));
  const sb = 0x10000;
  const dv = new DataView(copy.buffer, sb);
  // first sys_chunk_array entry: key (17) + chunk header (48) + stripe 0: devid (8), offset (8)
  dv.setBigUint64(0x32b + 17 + 48 + 8, 1n << 40n, true);
  dv.setUint32(0, crc32c(copy.subarray(sb + 0x20, sb + 4096)), true);
  await assert.rejects(openFileSystem(new MemorySource(copy, 'outside.img')), (e: unknown) => {
    return e instanceof StrataError && /outside/.test(e.message) && e.file === 'outside.img';
  });
});

test('btrfs: a directory cycle (a dir index entry naming the root) is walked once, with a warning, no hang', async () => {
  const img = await image();
  const copy = new Uint8Array(readFileSync(img));
  const { phys } = await chunkMap(img);
  const text = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', '5', img]);
  // the leaf holding /a/b's index entry for c, as dump-tree prints it
  let hit: { leaf: number; itemoff: number } | undefined;
  for (const block of text.split(/^(?=leaf \d+ )/m)) {
    const leaf = /^leaf (\d+) /.exec(block);
    const m =
      /key \(\d+ DIR_INDEX \d+\) itemoff (\d+) itemsize \d+\n\s*location key \(\d+ INODE_ITEM 0\) type DIR\n[^\n]*\n\s*name: c\n/.exec(
        block,
      );
    if (leaf && m) hit = { leaf: Number(leaf[1]), itemoff: Number(m[1]) };
  }
  assert.ok(hit, 'dump-tree shows the dir index entry of c');
  const ns = Number(/^nodesize\s+(\d+)/m.exec(await run('btrfs', ['inspect-internal', 'dump-super', img]))?.[1]);
  for (const p of phys(hit.leaf)) {
    // the entry's location key objectid: the fs tree's root directory (256)
    new DataView(copy.buffer).setBigUint64(p + 101 + hit.itemoff, 256n, true);
    restamp(copy, p, ns);
  }
  const fs = await openFileSystem(new MemorySource(copy, 'cycle.img'));
  const paths: string[] = [];
  for await (const it of walk(fs, await fs.root(), '/')) paths.push(it.path);
  assert.ok(paths.includes('/a/b/c') && !paths.includes('/a/b/c/a'), 'c is listed, not entered');
  assert.ok(
    fs.warnings.some((w) => /\/a\/b\/c: directory inode \d+ was already visited \(cycle/.test(w)),
    fs.warnings.join('\n'),
  );
  await exercise(fs);
});

/** dump-tree's chunk map: logical -> every physical copy. */
async function chunkMap(img: string): Promise<{ phys: (l: number) => number[] }> {
  const text = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'chunk', img]);
  const chunks: Array<{ logical: number; length: number; stripes: number[] }> = [];
  const re =
    /CHUNK_ITEM (\d+)\)[^\n]*\n\s*length (\d+)[\s\S]*?num_stripes \d+[^\n]*\n((?:\s*stripe \d+ devid \d+ offset \d+\n\s*dev_uuid [^\n]*\n)+)/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    chunks.push({
      logical: Number(m[1]),
      length: Number(m[2]),
      stripes: [...m[3].matchAll(/offset (\d+)/g)].map((x) => Number(x[1])),
    });
  }
  return {
    phys: (l: number) => {
      const c = chunks.find((x) => l >= x.logical && l < x.logical + x.length);
      assert.ok(c, `logical ${l} mapped by dump-tree`);
      return c.stripes.map((s) => s + l - c.logical);
    },
  };
}
