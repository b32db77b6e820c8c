import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { ExtFileSystem } from '../../src/fs/ext/index.js';
import type { ByteSource } from '../../src/io/byte-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { nativeExtDirPlus } from '../../src/io/native.js';
import { FsTree } from '../../src/serve/fuse/fs-tree.js';
import { FuseSession } from '../../src/serve/fuse/session.js';
import { debugfsBlocks, inodeOf, STRUCT_IMAGES, structImage } from '../helpers/ext-structs.js';
import { type ExtImageSpec, extImage } from '../helpers/ext-tree.js';
import { mutate, prng } from '../helpers/fuzz.js';

/**
 * READDIRPLUS replies built natively (native/dirplus.c) against the TypeScript path they stand
 * in for (src/serve/fuse/session.ts over src/fs/ext): for every directory of each ext image,
 * the two sessions' replies (offset 0 and every later offset), GETATTR of every entry and
 * LOOKUP of every name must be byte-identical, and so must the warnings. Then damaged copies:
 * bytes of the inode tables and directory blocks mutated; the native side must give the same
 * bytes (or fall back to the TypeScript path, which answers EIO where it must), never crash.
 */

const native = nativeExtDirPlus();
const READDIRPLUS = 44;
const GETATTR = 3;
const LOOKUP = 1;
const ROOT = 1;

type Handle = (op: number, nodeid: number, body: Buffer, h: object) => Promise<Buffer | undefined>;

/** The reply to one request (an errno as `E<n>`: the session throws those as numbers). */
async function ask(s: FuseSession, op: number, nodeid: number, body: Buffer): Promise<string> {
  const handle = (s as unknown as { handle: Handle }).handle.bind(s);
  try {
    const out = await handle(op, nodeid, body, { uid: 0, gid: 0, pid: 0, unique: 1n });
    return out ? out.toString('hex') : '';
  } catch (e) {
    if (typeof e === 'number') return `E${e}`;
    throw e;
  }
}

function readdirBody(offset: number, size: number): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(size, 16);
  return b;
}

interface Listed {
  names: string[];
  ids: number[];
  dirs: number[];
}

/** The entries of a READDIRPLUS reply: names, node ids, and the node ids of directories. */
function parsePlus(out: Buffer, into: Listed): number {
  let at = 0;
  let off = -1;
  while (at < out.length) {
    const id = Number(out.readBigUInt64LE(at));
    const mode = out.readUInt32LE(at + 40 + 60);
    const len = out.readUInt32LE(at + 128 + 16);
    off = Number(out.readBigUInt64LE(at + 128 + 8));
    const name = out.toString('latin1', at + 128 + 24, at + 128 + 24 + len);
    if (name !== '.' && name !== '..') {
      into.names.push(name);
      into.ids.push(id);
      if (id && (mode & 0o170000) === 0o040000) into.dirs.push(id);
    }
    at += 128 + ((24 + len + 7) & ~7);
  }
  return off;
}

interface Side {
  fs: ExtFileSystem;
  tree: FsTree;
  session: FuseSession;
}

async function side(src: ByteSource, useNative: boolean): Promise<Side> {
  const fs = await ExtFileSystem.open(src);
  const tree = new FsTree(fs, src.name, () => fs.close().then(() => src.close?.()), useNative);
  const session = new FuseSession(tree, '/nonexistent', { onWarning: () => {} });
  (session as unknown as { adopt: (n: unknown) => void }).adopt(await tree.root());
  return { fs, tree, session };
}

/** Walk both sides from the root with READDIRPLUS of `size`; assert equal replies. Returns directories listed. */
async function compareWalk(a: Side, b: Side, size: number, what: string): Promise<number> {
  const queue = [ROOT];
  let dirs = 0;
  while (queue.length > 0 && dirs < 5000) {
    const id = queue.pop() as number;
    dirs++;
    const listed: Listed = { names: [], ids: [], dirs: [] };
    let offset = 0;
    for (let round = 0; round < 10000; round++) {
      const ra = await ask(a.session, READDIRPLUS, id, readdirBody(offset, size));
      const rb = await ask(b.session, READDIRPLUS, id, readdirBody(offset, size));
      assert.equal(ra, rb, `${what}: READDIRPLUS of node ${id} at ${offset} (size ${size})`);
      if (ra === '' || ra.startsWith('E')) break;
      offset = parsePlus(Buffer.from(ra, 'hex'), listed);
    }
    for (let i = 0; i < listed.ids.length; i++) {
      if (listed.ids[i]) {
        const ga = await ask(a.session, GETATTR, listed.ids[i], Buffer.alloc(16));
        assert.equal(
          ga,
          await ask(b.session, GETATTR, listed.ids[i], Buffer.alloc(16)),
          `${what}: GETATTR ${listed.names[i]}`,
        );
      }
      const name = Buffer.from(`${listed.names[i]}\0`, 'latin1');
      const la = await ask(a.session, LOOKUP, id, name);
      assert.equal(la, await ask(b.session, LOOKUP, id, name), `${what}: LOOKUP ${listed.names[i]} in node ${id}`);
    }
    queue.push(...listed.dirs.reverse());
  }
  return dirs;
}

/** Directories the native side served (`fd`: in one call that read the file itself), and those it left to the TypeScript path. */
interface Served {
  served: number;
  fd: number;
  fellBack: number;
}

async function compareImage(
  src: () => ByteSource | Promise<ByteSource>,
  what: string,
  expectServed: boolean,
): Promise<Served> {
  const n: Served = { served: 0, fd: 0, fellBack: 0 };
  for (const size of [4096, 131072]) {
    const src0 = await src();
    const a = await side(src0, true);
    const b = await side(await src(), false);
    assert.ok(a.tree.plus, 'the native builder is used for ext');
    assert.equal(b.tree.plus, undefined);
    const dirs = await compareWalk(a, b, size, what);
    assert.ok(dirs > 0);
    assert.deepEqual([...a.fs.warnings].sort(), [...b.fs.warnings].sort(), `${what}: warnings`);
    if (expectServed) assert.ok(a.tree.plus.served > 0, `${what}: no directory was served natively`);
    // a local file: the builder reads it itself (extDirPlusFd), a memory source hands it the bytes
    assert.equal(a.tree.plus.now, src0 instanceof FileSource, `${what}: the fd builder where the image is a file`);
    if (expectServed && a.tree.plus.now) assert.ok(a.tree.plus.servedFd > 0, `${what}: none served by the fd builder`);
    n.served += a.tree.plus.served;
    n.fd += a.tree.plus.servedFd;
    for (const k of a.tree.plus.fellBack.values()) n.fellBack += k;
    await a.tree.close();
    await b.tree.close();
  }
  return n;
}

const MiB = 1 << 20;
/** Two of test/serve/fuse.test.ts's images (same fixture keys): a Debian-like tree, and inline directories (the reader's alone). */
const TREE_IMAGES: ExtImageSpec[] = [
  { name: 'ext4-4k', mkfs: 'mkfs.ext4', args: ['-b', '4096', '-N', '30000'], size: 160 * MiB },
  { name: 'ext4-inline', mkfs: 'mkfs.ext4', args: ['-b', '4096', '-O', 'inline_data', '-N', '30000'], size: 160 * MiB },
];

test('the native READDIRPLUS builder is built (native/dirplus.c)', () => {
  assert.equal(typeof native, 'function', 'npm run build builds native/build/Release/strata_native.node');
});

for (const spec of TREE_IMAGES) {
  test(`native and TypeScript READDIRPLUS replies are byte-identical: ${spec.name}`, { skip: !native }, async () => {
    const img = await extImage(spec);
    await compareImage(() => FileSource.open(img), spec.name, true);
  });
}

for (const spec of STRUCT_IMAGES) {
  test(`native and TypeScript READDIRPLUS replies are byte-identical: ${spec.name}`, { skip: !native }, async () => {
    const img = await structImage(spec);
    await compareImage(() => FileSource.open(img), spec.name, true);
  });

  test(`damaged copies of ${spec.name}: the same replies (or the same EIO), no crash`, { skip: !native }, async (t) => {
    const img = await structImage(spec);
    const bytes = readFileSync(img);
    // the regions: the inode table of group 0 (most inodes) and the blocks of /, /big and /a/b
    const fs = await ExtFileSystem.open(new MemorySource(new Uint8Array(bytes)));
    const g = fs.plusGeometry();
    const bs = g.blockSize;
    const regions: Array<[number, number]> = [[g.inodeTables[0], g.inodeTables[0] + g.inodesPerGroup * g.inodeSize]];
    for (const p of ['/', '/big', '/a/b']) {
      const ino = p === '/' ? 2 : await inodeOf(img, p);
      for (const [, pblk] of (await debugfsBlocks(img, ino)).data) regions.push([pblk * bs, (pblk + 1) * bs]);
    }
    await fs.close();
    const rand = prng(0x5eed + spec.name.length);
    const total: Served = { served: 0, fd: 0, fellBack: 0 };
    const dir = mkdtempSync(path.join(tmpdir(), 'strata-dirplus-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    for (let c = 0; c < 32; c++) {
      const m = mutate(bytes, regions, rand);
      if (m.length < bytes.length) continue; // a truncated image: the superblock's own checks
      // odd cases from a file (the builder reads it itself), even ones from memory (it is handed the bytes)
      const file = path.join(dir, `case-${c}.img`);
      if (c % 2) writeFileSync(file, m);
      const src = () => (c % 2 ? FileSource.open(file) : new MemorySource(m, `${spec.name} case ${c}`));
      let opened = true;
      const probe = await src();
      await ExtFileSystem.open(probe).then(
        (fs) => fs.close(),
        () => {
          opened = false;
        },
      );
      if (probe instanceof FileSource) await probe.close();
      if (!opened) continue;
      const n = await compareImage(src, `${spec.name} case ${c}`, false);
      total.served += n.served;
      total.fd += n.fd;
      total.fellBack += n.fellBack;
      if (c % 2) rmSync(file);
    }
    t.diagnostic(
      `directories served natively ${total.served} (${total.fd} reading the file itself), left to the TypeScript path ${total.fellBack}`,
    );
    // both paths were taken: damaged directories the native side declined, and the rest it served (some from the file itself)
    assert.ok(total.served > 0 && total.fd > 0 && total.fellBack > 0, JSON.stringify(total));
  });
}
