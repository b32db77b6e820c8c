import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem, Inode } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { FileSource } from '../../src/io/file-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { bytesFor } from '../helpers/fat-images.js';
import {
  BIG_MARKS,
  BIG_SIZE,
  DEEP,
  genisoJoliet,
  genisoPlainUdf,
  genisoRR,
  ISO_MTIME,
  isoTree,
  LONG_LINK,
  xorrisoBig,
  xorrisoBoot,
  xorrisoZisofs,
} from '../helpers/iso-images.js';
import { run, scratch } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const opened: FileSource[] = [];
after(async () => {
  for (const s of opened) await s.close();
});

async function open(img: string): Promise<FileSystem> {
  const src = await FileSource.open(img);
  opened.push(src);
  return openFileSystem(src);
}

const TYPE_CHAR: Record<string, string> = {
  file: '-',
  dir: 'd',
  symlink: 'l',
  fifo: 'p',
  char: 'c',
  block: 'b',
  socket: 's',
};

function perms(i: Inode): string {
  const m = i.mode;
  const r = (bit: number, ch: string) => (m & bit ? ch : '-');
  let s = TYPE_CHAR[i.type] ?? '?';
  s += r(0o400, 'r') + r(0o200, 'w');
  s += m & 0o4000 ? (m & 0o100 ? 's' : 'S') : r(0o100, 'x');
  s += r(0o040, 'r') + r(0o020, 'w');
  s += m & 0o2000 ? (m & 0o010 ? 's' : 'S') : r(0o010, 'x');
  s += r(0o004, 'r') + r(0o002, 'w');
  s += m & 0o1000 ? (m & 0o001 ? 't' : 'T') : r(0o001, 'x');
  return s;
}

interface Row {
  perms: string;
  uid: string;
  gid: string;
  size: string;
  target?: string;
}

/** `xorriso -find / -exec lsdl`: ls -ld lines of the Rock Ridge tree (relocation resolved by xorriso). */
async function xorrisoList(img: string): Promise<Map<string, Row>> {
  const out = new Map<string, Row>();
  const text = await run('xorriso', ['-indev', img, '-find', '/', '-exec', 'lsdl']);
  for (const line of text.split('\n')) {
    const m = /^(\S{10})\s+\d+\s+(\S+)\s+(\S+)\s+(\d+)\s+\w{3}\s+\d+\s+[\d:]+\s+'(.*?)'(?: -> '(.*)')?$/.exec(line);
    if (!m || m[5] === '/') continue;
    const unq = (s: string) => s.replace(/'\\''/g, "'");
    // xorriso marks the El Torito boot catalogue with type 'e'; it is a plain file in the tree
    const perms = m[1].startsWith('e') ? `-${m[1].slice(1)}` : m[1];
    out.set(unq(m[5]), { perms, uid: m[2], gid: m[3], size: m[4], target: m[6] === undefined ? undefined : unq(m[6]) });
  }
  return out;
}

async function ours(fs: FileSystem): Promise<Map<string, Inode>> {
  const out = new Map<string, Inode>();
  for await (const it of walk(fs, await fs.root(), '/')) out.set(it.path, it.inode);
  return out;
}

/** Everything xorriso says about the Rock Ridge tree, and the bytes xorriso extracts, against ours. */
async function checkRockRidge(img: string, fs: FileSystem, t: { diagnostic(s: string): void }): Promise<void> {
  const mine = await ours(fs);
  const theirs = await xorrisoList(img);
  const tree = await isoTree();
  assert.deepEqual([...mine.keys()].sort(), [...theirs.keys()].sort());
  for (const [p, i] of mine) {
    const x = theirs.get(p)!;
    assert.equal(perms(i), x.perms, `mode ${p}`);
    assert.equal(String(i.uid), x.uid, `uid ${p}`);
    assert.equal(String(i.gid), x.gid, `gid ${p}`);
    if (i.type === 'file') assert.equal(String(i.size), x.size, `size ${p}`);
    if (i.type === 'symlink') assert.equal(await fs.readlink(i), x.target, `target ${p}`);
    // times of what came from the host tree (rr_moved and the boot catalogue are the writer's)
    if (i.type !== 'symlink' && existsSync(path.join(tree, p)))
      assert.deepEqual(i.mtime, { sec: ISO_MTIME, nsec: 0 }, `mtime ${p}`);
  }
  // bytes: what xorriso extracts, and the host tree it was made from
  const dest = scratch('iso-x');
  try {
    await run('xorriso', ['-osirrox', 'on', '-indev', img, '-extract', '/', dest]);
    let files = 0;
    for (const [p, i] of mine) {
      if (i.type !== 'file') continue;
      const data = await fs.read(i, 0, i.size);
      assert.equal(sha(data), sha(readFileSync(path.join(dest, p))), `xorriso -extract ${p}`);
      if (existsSync(path.join(tree, p))) assert.equal(sha(data), sha(readFileSync(path.join(tree, p))), `host ${p}`);
      files++;
    }
    t.diagnostic(
      `${mine.size} paths compared with xorriso -find -exec lsdl, ${files} files with xorriso -extract and the host tree`,
    );
  } finally {
    rmSync(dest, { recursive: true, force: true });
  }
}

test('genisoimage -J -R: Rock Ridge names, modes, owners, times, symlinks, fifo and relocated deep folders match xorriso', async (t) => {
  const img = await genisoRR();
  const fs = await open(img);
  assert.equal(fs.kind, 'iso9660');
  await checkRockRidge(img, fs, t);
  const info = await fs.info();
  assert.deepEqual(info.features, ['rock-ridge', 'joliet-level-3']);
  assert.equal(info.label, 'GENISO_RR');
  assert.equal((info.extra as { tree: string }).tree, 'Rock Ridge');
  // the deep folder was relocated (isoinfo shows the CL placeholder's target under rr_moved) and is read in place
  const raw = await run('isoinfo', ['-R', '-l', '-i', img]);
  assert.match(raw, /Directory listing of \/rr_moved\//);
  const deep = await fs.lookup(`/${DEEP}/deep.txt`);
  assert.equal(new TextDecoder().decode(await fs.read(deep, 0, 100)), 'deep down\n');
  assert.equal((await fs.lookup('/fifo')).type, 'fifo');
  assert.equal(await fs.readlink(await fs.lookup('/long-link')), LONG_LINK);
  // symlinks in the middle of a path are followed
  assert.equal((await fs.lookup('/dir-link/l3')).type, 'dir');
  assert.deepEqual(fs.warnings, []);
});

test('xorriso -iso-level 3 -J -R with El Torito BIOS and EFI images: tree matches xorriso, catalogue matches -report_el_torito and isoinfo -d', async (t) => {
  const img = await xorrisoBoot();
  const fs = await open(img);
  await checkRockRidge(img, fs, t);
  const info = await fs.info();
  assert.ok(info.features?.includes('el-torito'));
  const cat = (info.extra as { bootCatalog: { sector: number; entries: Array<Record<string, unknown>> } }).bootCatalog;
  const rep = await run('xorriso', ['-indev', img, '-report_el_torito', 'plain']);
  assert.equal(cat.sector, Number(/El Torito catalog\s*:\s*(\d+)/.exec(rep)![1]));
  const imgs = [
    ...rep.matchAll(/El Torito boot img :\s+(\d+)\s+(\S+)\s+(\S)\s+(\S+)\s+(0x[0-9a-f]+)\s+\S+\s+(\d+)\s+(\d+)/g),
  ];
  assert.equal(cat.entries.length, imgs.length);
  for (const [k, m] of imgs.entries()) {
    const e = cat.entries[k];
    assert.equal(e.platform, m[2] === 'BIOS' ? 'x86' : 'EFI');
    assert.equal(e.bootable, m[3] === 'y');
    assert.equal(e.media, m[4] === 'none' ? 'no emulation' : m[4]);
    assert.equal(e.loadSegment, Number(m[5]));
    assert.equal(e.sectors, Number(m[6]));
    assert.equal(e.imageSector, Number(m[7]));
  }
  const isoinfo = await run('isoinfo', ['-d', '-i', img]);
  assert.match(isoinfo, new RegExp(`boot catalog is in sector ${cat.sector}\\b`));
  // the boot image is the file boot/boot.img
  const boot = await fs.lookup('/boot/boot.img');
  const ext = [];
  for await (const e of fs.extents(boot)) ext.push(e);
  assert.equal(ext[0].volumeOffset, (cat.entries[0].imageSector as number) * 2048);
  assert.deepEqual(fs.warnings, []);
});

test('genisoimage -J without Rock Ridge: the Joliet tree (UCS-2 names) matches xorriso (names, types, sizes)', async () => {
  const img = await genisoJoliet();
  const fs = await open(img);
  assert.equal((await fs.info()).extra?.tree, 'Joliet');
  const mine = await ours(fs);
  const theirs = await xorrisoList(img);
  const row = (i: Inode) => `${TYPE_CHAR[i.type]} ${i.type === 'file' ? i.size : 0}`;
  assert.deepEqual(
    [...mine].map(([p, i]) => `${p} ${row(i)}`).sort(),
    [...theirs].map(([p, x]) => `${p} ${x.perms[0]} ${x.perms[0] === '-' ? x.size : 0}`).sort(),
  );
  assert.ok(mine.has('/Long Name with ünïcödé, ×ß and 名前 that is rather long indeed.txt'));
  const tree = await isoTree();
  const f = await fs.lookup('/medium.bin');
  assert.equal(sha(await fs.read(f, 0, f.size)), sha(readFileSync(path.join(tree, 'medium.bin'))));
  assert.equal(f.mode, 0o444);
  assert.deepEqual(f.mtime, { sec: ISO_MTIME, nsec: 0 });
});

test('plain ISO 9660 with a UDF bridge: 8.3 names match isoinfo -f, the bridge is named', async () => {
  const img = await genisoPlainUdf();
  const fs = await open(img);
  const info = await fs.info();
  assert.ok(info.features?.includes('udf-bridge'));
  assert.equal((info.extra as { tree: string }).tree, 'ISO 9660');
  assert.ok(
    fs.warnings.some((w) => /UDF bridge disc .*NSR0[23].*not read/.test(w)),
    fs.warnings.join('\n'),
  );
  const mine = [...(await ours(fs)).keys()].sort();
  const theirs = (await run('isoinfo', ['-f', '-i', img]))
    .split('\n')
    .filter(Boolean)
    .map((p) => p.replace(/;\d+$/, '').replace(/\.$/, ''))
    .sort();
  assert.deepEqual(mine, theirs);
  const f = await fs.lookup('/MEDIUM.BIN');
  assert.equal(sha(await fs.read(f, 0, f.size)), sha(bytesFor(11, 100_000)));
});

test('a file over 4 GiB (xorriso -iso-level 3): its extents are those xorriso reports, its bytes are the source', async () => {
  const img = await xorrisoBig();
  const fs = await open(img);
  const big = await fs.lookup('/big.bin');
  assert.equal(big.size, BIG_SIZE);
  const mine = [];
  for await (const e of fs.extents(big)) mine.push([e.volumeOffset / 2048, Math.ceil(e.length / 2048), e.length]);
  const rep = await run('xorriso', ['-indev', img, '-find', '/big.bin', '-exec', 'report_lba']);
  const theirs = [...rep.matchAll(/File data lba:\s+\d+\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,/g)].map((m) => [
    Number(m[1]),
    Number(m[2]),
  ]);
  assert.ok(theirs.length > 1, 'xorriso stored several extents');
  assert.deepEqual(
    mine.map(([lba, blocks]) => [lba, blocks]),
    theirs,
  );
  for (const [i, at] of BIG_MARKS.entries()) {
    const pre = Math.min(7, at);
    const got = await fs.read(big, at - pre, pre + 5000 + 7);
    const want = Buffer.concat([Buffer.alloc(pre), bytesFor(50 + i, 5000), Buffer.alloc(7)]).subarray(0, got.length);
    assert.equal(got.length, Math.min(pre + 5007, BIG_SIZE - at + pre));
    assert.equal(sha(got), sha(want), `mark ${i} at ${at}`);
  }
  assert.equal(
    new TextDecoder().decode(await fs.read(await fs.lookup('/after.txt'), 0, 100)),
    'a file after the big one\n',
  );
});

test('a directory whose record points back at the root: the walk stops with a warning, no hang', async () => {
  const img = await genisoRR();
  const b = new Uint8Array(readFileSync(img));
  const le32 = (o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
  const rootLba = le32(0x8000 + 156 + 2);
  // find the record of "MANY" in the root directory (ISO 9660 identifiers, as isoinfo -l shows them)
  const rootSize = le32(0x8000 + 156 + 10);
  const base = rootLba * 2048;
  let found = -1;
  for (let sec = base; sec < base + rootSize; sec += 2048) {
    for (let at = sec; at < sec + 2048 && b[at] !== 0; at += b[at]) {
      const n = b[at + 32];
      if (String.fromCharCode(...b.subarray(at + 33, at + 33 + n)) === 'MANY') found = at;
    }
  }
  assert.ok(found > 0, 'the MANY record');
  const dv = new DataView(b.buffer);
  dv.setUint32(found + 2, rootLba, true);
  dv.setUint32(found + 6, rootLba, false);
  const fs = await openFileSystem(new MemorySource(b, 'recursive.iso'));
  const paths: string[] = [];
  for await (const it of walk(fs, await fs.root(), '/')) paths.push(it.path);
  assert.ok(paths.includes('/many'));
  assert.ok(!paths.some((p) => p.startsWith('/many/')), 'not entered');
  assert.ok(
    fs.warnings.some((w) => /already visited/.test(w)),
    fs.warnings.join('\n'),
  );
});

test('extraction of hostile names (\\, :, CON, absolute and dangling symlinks) stays inside DEST', async () => {
  const img = await genisoRR();
  const { strata } = await import('../helpers/cli.js');
  const dir = scratch('iso-extract');
  try {
    const dest = path.join(dir, 'dest');
    const r = await strata(['extract', img, '/', dest]);
    assert.equal(r.code, 0, r.stderr);
    for (const n of ['back\\slash.txt', 'co:lon.txt', 'CON', 'nul.txt'])
      assert.ok(lstatSync(path.join(dest, n)).isFile(), n);
    assert.equal(readlinkSync(path.join(dest, 'abs-link')), '/etc/passwd');
    assert.equal(readlinkSync(path.join(dest, 'dangling')), '../../nowhere/at/all');
    // nothing was written beside DEST
    assert.deepEqual((await run('ls', ['-A', dir])).split('\n').filter(Boolean), ['dest']);
    assert.equal(readFileSync(path.join(dest, DEEP, 'deep.txt'), 'utf8'), 'deep down\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a zisofs-compressed file (Rock Ridge ZF, xorriso --zisofs) is listed with its size and named as unsupported when read', async () => {
  const img = await xorrisoZisofs();
  const fs = await open(img);
  const theirs = await xorrisoList(img);
  const z = await fs.lookup('/zeros.bin');
  assert.equal(String(z.size), theirs.get('/zeros.bin')!.size);
  const ext = [];
  for await (const e of fs.extents(z)) ext.push(e);
  assert.equal(ext.length, 1);
  assert.equal(ext[0].encoded, 'zisofs');
  assert.ok(ext[0].diskLength! < z.size, 'stored compressed');
  await assert.rejects(
    fs.read(z, 0, 10),
    (e: unknown) => e instanceof StrataError && e.code === 'UNSUPPORTED' && /zisofs/.test(e.message),
  );
  assert.ok(
    fs.warnings.some((w) => /zisofs-compressed file \(Rock Ridge ZF/.test(w)),
    fs.warnings.join('\n'),
  );
  assert.equal(new TextDecoder().decode(await fs.read(await fs.lookup('/plain.txt'), 0, 100)), 'not compressed\n');
});
