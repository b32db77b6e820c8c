import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { FileEntry, FilesManifest } from '../../src/library/manifest.js';
import { compareTreePaths } from '../../src/library/manifest.js';
import { ManifestTree } from '../../src/serve/fuse/manifest-tree.js';
import type { MountNode } from '../../src/serve/fuse/tree.js';

/**
 * The index a version mount builds from its file manifest (manifest-index.ts): which entries
 * make the tree, found by lookup and listed in walk order, whatever order the manifest is in.
 * The FUSE tests compare a mounted version with the kernel's loop mount of the image; these
 * cover the manifests no check-in writes (left-out entries, another order).
 */

const blobs = { get: async (d: string): Promise<Uint8Array> => Promise.reject(new Error(`no blob ${d}`)) };
const T = '2023-11-14T22:13:20.000000123Z';

function entry(p: string, type: string, extra: Partial<FileEntry> = {}): FileEntry {
  return {
    path: p,
    type,
    mode: type === 'dir' ? 0o755 : 0o644,
    uid: 1000,
    gid: 100,
    size: type === 'dir' ? 4096 : 10,
    nlink: type === 'dir' ? 2 : 1,
    ino: 0,
    mtime: T,
    ...extra,
  };
}

function manifest(entries: FileEntry[]): FilesManifest {
  let ino = 100;
  for (const e of entries) if (!e.ino) e.ino = ino++;
  return { kind: 'strata.files', version: 1, volume: '', fsKind: 'ext4', fileChunkSize: 65536, entries };
}

/** Every path the tree serves, with its key and type, by listing from the root. */
async function walk(t: ManifestTree): Promise<Map<string, { key: number; type: string; node: MountNode }>> {
  const out = new Map<string, { key: number; type: string; node: MountNode }>();
  const go = async (dir: MountNode, prefix: string) => {
    const kids = await t.list(dir);
    const nodes = await t.nodes(dir, kids);
    for (let i = 0; i < kids.length; i++) {
      const p = `${prefix}/${kids[i].name}`;
      assert.equal(nodes[i].key, kids[i].key);
      out.set(p, { key: kids[i].key, type: kids[i].type, node: nodes[i] });
      const found = await t.lookup(dir, kids[i].name);
      assert.equal(found?.key, kids[i].key, `lookup of ${p}`);
      if (kids[i].type === 'dir') await go(nodes[i], p);
    }
  };
  await go(await t.root(), '');
  return out;
}

const ENTRIES = (): FileEntry[] => [
  entry('/', 'dir', { mode: 0o700, uid: 5, ino: 2 }),
  entry('/a', 'dir'),
  entry('/a/f', 'file', { nlink: 2, ino: 77 }),
  entry('/a/f', 'file', { size: 999 }), // the same path again: the first is kept
  entry('/a/g', 'file', { nlink: 2, ino: 77 }), // a hard link of /a/f
  entry('/a/s', 'symlink', { target: '../b/é', size: 6 }),
  entry('/a/x', 'file', { xattrs: { 'user.k': Buffer.from('v1').toString('base64') } }),
  entry('/a-b', 'file'),
  entry('/a-b/under-a-file', 'file'), // its parent is a file
  entry('/b', 'dir'),
  entry('/b/..', 'dir'), // not a name
  entry('/b/z', 'file'),
  entry('/b/é', 'file'),
  entry('/b/😀', 'file'), // code units: U+D83D U+DE00, before U+FFEE
  entry('/b/\uffee', 'file'),
  entry('/b/\uffee/x', 'file'), // its parent is a file
  entry('/c/orphan', 'file'), // no /c
];

test('the index: root entry, duplicates, hard links, orphans; listings in walk order; lookups', async () => {
  const entries = ENTRIES();
  // in walk order (a repeated path aside): the index is built as the manifest streams
  for (let i = 1; i < entries.length; i++) assert.ok(compareTreePaths(entries[i - 1].path, entries[i].path) <= 0);
  const t = await ManifestTree.open(blobs, manifest(entries), 't@1');
  try {
    const w = await walk(t);
    assert.deepEqual(
      [...w.keys()],
      ['/a', '/a/f', '/a/g', '/a/s', '/a/x', '/a-b', '/b', '/b/z', '/b/é', '/b/😀', '/b/\uffee'],
    );
    const root = await t.root();
    assert.equal(root.attr.mode, 0o40700, "the root's own entry");
    assert.equal(root.attr.uid, 5);
    assert.equal(w.get('/a/f')?.key, w.get('/a/g')?.key, 'hard links: one node');
    assert.equal(w.get('/a/f')?.node.attr.size, 10, 'the first of a repeated path');
    assert.notEqual(w.get('/a/f')?.key, w.get('/a/x')?.key);
    assert.deepEqual(w.get('/a/f')?.node.attr.mtime, { sec: 1_700_000_000, nsec: 123 });
    const s = w.get('/a/s')?.node as MountNode;
    assert.equal(Buffer.from(await t.readlink(s)).toString('utf8'), '../b/é');
    const x = await t.xattrs(w.get('/a/x')?.node as MountNode);
    assert.deepEqual(
      [...x].map(([k, v]) => [k, Buffer.from(v).toString()]),
      [['user.k', 'v1']],
    );
    const b = await t.lookup(root, 'b');
    assert.ok(b);
    assert.equal(await t.lookup(b, 'missing'), undefined);
    assert.equal(await t.lookup(root, 'c'), undefined);
    const st = await t.statfs();
    // root, /a, /a/f (= /a/g), /a/s, /a/x, /a-b, /b and its four files
    assert.equal(st.files, 11);
    for (const [p, v] of w) assert.deepEqual((await t.nodeByKey(v.key)).attr, v.node.attr, p);
  } finally {
    await t.close();
  }
});

test('the index of a manifest in another order (not written by check-in) is the tree of the sorted one', async () => {
  const sorted = ENTRIES();
  // a fixed shuffle, the root entry kept first (a root entry elsewhere is left out, as a duplicate)
  const shuffled = [sorted[0], ...sorted.slice(1).reverse()];
  const want = await ManifestTree.open(blobs, manifest(sorted), 'a@1');
  const got = await ManifestTree.open(blobs, manifest(shuffled), 'b@1');
  try {
    const a = await walk(want);
    const b = await walk(got);
    assert.deepEqual([...b.keys()], [...a.keys()]);
    for (const [p, v] of a) {
      const o = b.get(p);
      assert.equal(o?.type, v.type, p);
      // the first of a repeated path is the first in the manifest: here the reversed one's
      if (p === '/a/f') continue;
      assert.deepEqual(o?.node.attr, v.node.attr, p);
    }
    assert.equal(b.get('/a/f')?.node.attr.size, 999);
  } finally {
    await want.close();
    await got.close();
  }
});

test('a directory of 20,000 names, some beyond the BMP: each found by lookup, listed in code-unit order', async () => {
  const names: string[] = [];
  for (let i = 0; i < 20_000; i++) names.push(i % 7 === 0 ? `n${i}-\u{1F600}` : i % 5 === 0 ? `n${i}-\uFF21` : `n${i}`);
  const entries = [entry('/big', 'dir'), ...names.map((n) => entry(`/big/${n}`, 'file'))];
  entries.sort((a, b) => compareTreePaths(a.path, b.path));
  const t = await ManifestTree.open(blobs, manifest(entries), 'big@1');
  try {
    const big = await t.lookup(await t.root(), 'big');
    assert.ok(big);
    const kids = await t.list(big);
    assert.deepEqual(
      kids.map((k) => k.name),
      [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
    );
    for (const n of names) assert.ok(await t.lookup(big, n), n);
    assert.equal(await t.lookup(big, 'n1-\uFF21'), undefined);
  } finally {
    await t.close();
  }
});
