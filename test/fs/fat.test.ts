import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import type { FatFileSystem } from '../../src/fs/fat/index.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem, Inode } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { FileSource } from '../../src/io/file-source.js';
import { StrataError } from '../../src/util/errors.js';
import { exfatImage, FAT_SPECS, FRAGMENTED_SIZE, fatImage, fatTree, mtool, TREE_MTIME } from '../helpers/fat-images.js';
import { run, runBuffer, scratch, sha256 } from '../helpers/tools.js';

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

interface Ours {
  type: string;
  inode: Inode;
}

async function ourTree(fs: FileSystem): Promise<Map<string, Ours>> {
  const out = new Map<string, Ours>();
  for await (const it of walk(fs, await fs.root(), '/'))
    out.set(it.path.slice(1), { type: it.inode.type, inode: it.inode });
  return out;
}

/** `fls -r -p -u`: allocated names with TSK's inode addresses, without TSK's virtual files and the label entry. */
async function flsTree(img: string): Promise<Map<string, { type: string; addr: string }>> {
  const out = new Map<string, { type: string; addr: string }>();
  for (const line of (await run('fls', ['-r', '-p', '-u', img])).split('\n')) {
    const m = /^([-a-zA-Z])\/([-a-zA-Z]) \*?\s*(\d+):\t(.*)$/.exec(line);
    if (!m) continue;
    const [, , t, addr, name] = m;
    if (t === 'v' || t === 'V' || name.startsWith('$') || name.endsWith('(Volume Label Entry)')) continue;
    out.set(name, { type: t === 'd' ? 'dir' : t === 'r' ? 'file' : t, addr });
  }
  return out;
}

/** Every path of the host tree with its type, size and sha256. */
async function hostTree(root: string): Promise<Map<string, { type: string; size: number; sha?: string }>> {
  const out = new Map<string, { type: string; size: number; sha?: string }>();
  for (const rel of (await run('find', ['.', '-mindepth', '1'], { cwd: root })).split('\n').filter(Boolean)) {
    const p = path.join(root, rel);
    const st = statSync(p);
    const name = rel.slice(2);
    if (st.isDirectory()) out.set(name, { type: 'dir', size: 0 });
    else out.set(name, { type: 'file', size: st.size, sha: sha256(readFileSync(p)) });
  }
  return out;
}

async function checkAgainstOracles(img: string, fs: FileSystem, t: { diagnostic(s: string): void }): Promise<void> {
  const ours = await ourTree(fs);
  const fls = await flsTree(img);
  // names and types: The Sleuth Kit
  assert.deepEqual(
    [...ours].map(([p, o]) => `${o.type} ${p}`).sort(),
    [...fls].map(([p, o]) => `${o.type} ${p}`).sort(),
  );
  // content: icat of every regular file; sizes and bytes also against the host tree they came from
  const host = await hostTree(await fatTree());
  let files = 0;
  for (const [p, o] of ours) {
    if (o.type !== 'file') continue;
    const data = await fs.read(o.inode, 0, o.inode.size);
    const icat = await runBuffer('icat', [img, fls.get(p)!.addr]);
    assert.equal(sha(data), sha(icat), `icat ${p}`);
    const h = host.get(p);
    if (h) {
      assert.equal(o.inode.size, h.size, `size ${p}`);
      assert.equal(sha(data), h.sha, `host ${p}`);
      assert.deepEqual(o.inode.mtime, { sec: TREE_MTIME, nsec: 0 }, `mtime ${p}`);
    }
    files++;
  }
  for (const [p, h] of host) assert.ok(ours.has(p), `host path ${p} (${h.type}) is in the image`);
  t.diagnostic(`${ours.size} paths, ${files} files checked against fls/icat and the host tree`);
}

/** The sectors `istat` lists for an object (those holding its bytes): the block-map oracle for one file. */
async function istatSectors(img: string, addr: string): Promise<number[]> {
  const out = await run('istat', [img, addr]);
  const tail = out.slice(out.indexOf('Sectors:') + 'Sectors:'.length);
  // TSK pads the last cluster's row with 0 for sectors past the file size
  return tail
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s) && s !== '0')
    .map(Number);
}

async function ourSectors(fs: FileSystem, ino: Inode): Promise<number[]> {
  const out: number[] = [];
  for await (const e of fs.extents(ino)) {
    const n = Math.ceil(e.length / 512);
    for (let s = 0; s < n; s++) out.push(e.volumeOffset / 512 + s);
  }
  return out;
}

for (const spec of FAT_SPECS) {
  test(`${spec.name} (mkfs.vfat -F ${spec.fatBits}, filled by mcopy): tree, sizes, times and bytes match fls/icat, mdir and the host tree`, async (t) => {
    const img = await fatImage(spec);
    const fs = await open(img);
    assert.equal(fs.kind, 'vfat');
    await checkAgainstOracles(img, fs, t);
    assert.deepEqual(fs.warnings, []);
    const info = await fs.info();
    assert.deepEqual(info.features, [spec.name]);
    // label and serial: mlabel / mdir
    const mdir = await mtool('mdir', ['-i', img, '::/']);
    assert.match(mdir, new RegExp(`Volume in drive : is ${spec.name.toUpperCase()}\\s`));
    assert.equal(info.label, spec.name.toUpperCase());
    assert.match(mdir, new RegExp(`Serial Number is ${info.uuid}`));
    assert.equal(info.uuid, '1234-ABCD');
    // free space: mdir's "bytes free"
    const free = Number(/([\d ]+) bytes free/.exec(mdir)![1].replace(/ /g, ''));
    assert.equal(info.freeBytes, free);
    assert.match(String(info.extra?.timeZone), /read as UTC/);
    // short names and long names as mdir shows them (mdir -/ -a lists every entry)
    const listing = await mtool('mdir', ['-/', '-a', '-i', img, '::/']);
    assert.match(
      listing,
      /LONGFI~1 TXT\s+5 2021-06-15\s+10:20\s+Long File Name with spaces and more than 13 units.txt/,
    );
    const readme = await fs.lookup('/README.TXT');
    assert.equal(readme.size, 20);
    assert.equal(
      sha(await fs.read(readme, 0, 100)),
      sha(Buffer.from(await mtool('mtype', ['-i', img, '::/README.TXT']))),
    );
    // case-insensitive lookup, as FAT is
    assert.equal((await fs.lookup('/readme.txt')).ino, readme.ino);
    // the fragmented file: more than one extent, exactly the sectors istat lists
    const frag = await fs.lookup('/frag/fragmented.bin');
    assert.equal(frag.size, FRAGMENTED_SIZE);
    const extents: unknown[] = [];
    for await (const e of fs.extents(frag)) extents.push(e);
    assert.ok(extents.length > 1, `fragmented into ${extents.length} extents`);
    const fls = await flsTree(img);
    assert.deepEqual(await ourSectors(fs, frag), await istatSectors(img, fls.get('frag/fragmented.bin')!.addr));
    const deep = await fs.lookup('/a/b/c/d/e/f/g/h/deep.txt');
    assert.deepEqual(await ourSectors(fs, deep), await istatSectors(img, fls.get('a/b/c/d/e/f/g/h/deep.txt')!.addr));
    // a directory spanning clusters
    const many = await fs.lookup('/many');
    let n = 0;
    for await (const _ of fs.readdir(many)) n++;
    assert.equal(n, 150);
    // inode numbers are stable: the same entry read again by number
    assert.deepEqual(await fs.inode(frag.ino), frag);
    // metadata regions: boot sector, FATs, root region (FAT12/16) or FSInfo (FAT32), directories
    const kinds = new Set<string>();
    for await (const r of fs.metadataRegions()) kinds.add(`${r.kind}:${r.detail ?? ''}`);
    assert.ok(kinds.has('boot-sector:boot sector'));
    assert.ok(kinds.has('bitmap:FAT 1') && kinds.has('bitmap:FAT 2'));
    if (spec.fatBits === 32) assert.ok(kinds.has('superblock:FSInfo') && kinds.has('boot-sector:backup boot sector'));
    else assert.ok(kinds.has('directory:root directory region'));
    // allocation: the used bytes are the volume minus mdir's free bytes
    let used = 0;
    for (const r of await fs.allocation()) used += r.length;
    // (sectors after the last whole cluster are neither: less than a cluster)
    const slack = (fs as FatFileSystem).geometry.totalBytes - used - free;
    assert.ok(slack >= 0 && slack < fs.blockSize, `slack ${slack}`);
  });
}

test('exFAT (mkfs.exfat, filled through exfat-fuse): tree, sizes, times and bytes match fls/icat, fsck.exfat and the host tree', async (t) => {
  const img = await exfatImage();
  await run('fsck.exfat', ['-n', img]); // the writer left a clean volume
  // what the writer recorded: File entries (0x85) followed by their Stream Extension (0xC0)
  const raw = readFileSync(img);
  let noFatChain = 0;
  let offsets = 0;
  for (let i = 0; i + 64 <= raw.length; i += 32) {
    if (raw[i] !== 0x85 || raw[i + 32] !== 0xc0) continue;
    if (raw[i + 33] & 2) noFatChain++;
    if (raw[i + 23] === (0x80 | 22)) offsets++; // modification time marked UTC+05:30 (22 quarter hours)
  }
  t.diagnostic(`${noFatChain} NoFatChain streams, ${offsets} modification times with UTC offset +05:30`);
  assert.ok(noFatChain > 100, 'the writer made contiguous (NoFatChain) files');
  assert.ok(offsets > 100, 'the writer recorded its UTC offset');
  const fs = await open(img);
  assert.equal(fs.kind, 'exfat');
  await checkAgainstOracles(img, fs, t);
  assert.deepEqual(fs.warnings, []);
  const info = await fs.info();
  assert.equal(info.label, 'EXLABEL');
  const fsstat = await run('fsstat', [img]);
  assert.match(fsstat, /Volume Label \(from root directory\): EXLABEL/);
  // fsstat prints the halves without leading zeros (a CI run saw "6fd7-ca6")
  const serial = /Volume Serial Number: ([0-9A-F]{1,4})-([0-9A-F]{1,4})\b/i.exec(fsstat);
  assert.ok(serial, fsstat.slice(0, 400));
  assert.equal(info.uuid, `${serial[1].padStart(4, '0')}-${serial[2].padStart(4, '0')}`.toUpperCase());
  const frag = await fs.lookup('/frag/fragmented.bin');
  const fls = await flsTree(img);
  const extents: unknown[] = [];
  for await (const e of fs.extents(frag)) extents.push(e);
  t.diagnostic(`fragmented.bin: ${extents.length} extents`);
  assert.deepEqual(await ourSectors(fs, frag), await istatSectors(img, fls.get('frag/fragmented.bin')!.addr));
  const kinds = new Set<string>();
  for await (const r of fs.metadataRegions()) kinds.add(`${r.kind}:${r.detail ?? ''}`);
  for (const k of [
    'boot-sector:main boot region',
    'boot-sector:backup boot region',
    'bitmap:FAT 1',
    'bitmap:allocation bitmap',
    'reserved:up-case table',
  ]) {
    assert.ok(kinds.has(k), k);
  }
  // case-insensitive lookup through the up-case table (Cyrillic included)
  assert.equal(
    (await fs.lookup('/NAÏVE-ÜNÏCODE-ФАЙЛ-名前.TXT')).ino,
    (await fs.lookup('/naïve-ünïcode-файл-名前.txt')).ino,
  );
});

/** Find the byte offset of a UTF-16LE string in an image. */
function findUtf16(buf: Buffer, s: string): number {
  const at = buf.indexOf(Buffer.from(s, 'utf16le'));
  assert.ok(at >= 0, `${s} is in the image`);
  return at;
}

test('VFAT: a long name whose checksum does not match its short entry falls back to the short name, with a warning', async () => {
  const img = await fatImage(FAT_SPECS[1]);
  const dir = scratch('fat-lfn');
  try {
    const copy = path.join(dir, 'bad.img');
    copyFileSync(img, copy);
    const buf = readFileSync(copy);
    // the long-name entry with sequence 1 of "Long File Name ..." holds "Long " at byte 1; the
    // entries before it hold the rest of the name: all of them get the same wrong checksum
    let at = findUtf16(buf, 'Long ') - 1;
    assert.equal(buf[at] & 0x3f, 1, 'sequence 1');
    const wrong = buf[at + 13] ^ 0xff;
    for (; buf[at + 11] === 0x0f; at -= 32) buf[at + 13] = wrong;
    writeFileSync(copy, buf);
    const fs = await open(copy);
    const root = await fs.root();
    const names = [];
    for await (const e of fs.readdir(root)) names.push(e.name);
    // mdir shows the same short name for the entry
    const mdir = await mtool('mdir', ['-i', copy, '::/']);
    assert.match(mdir, /LONGFI~1 TXT/);
    assert.ok(names.includes('LONGFI~1.TXT'), names.join(', '));
    assert.ok(!names.some((n) => n.startsWith('Long File')));
    assert.ok(
      fs.warnings.some((w) => /checksum .* does not match short name "LONGFI~1.TXT"/.test(w)),
      fs.warnings.join('\n'),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('FAT: a cluster chain that cycles fails with LOOP, a chain into a free cluster with CORRUPT; no hang', async () => {
  const spec = FAT_SPECS[2];
  const img = await fatImage(spec);
  const fs0 = (await open(img)) as FatFileSystem;
  const geo = fs0.geometry;
  const firstCluster = async (p: string) => {
    for await (const e of fs0.extents(await fs0.lookup(p)))
      return (e.volumeOffset - geo.heapOffset) / geo.clusterSize + 2;
    throw new Error(`${p} has no extent`);
  };
  const dir = scratch('fat-loop');
  const buf = readFileSync(img);
  /** A copy of the image with FAT entries set (in every FAT copy). */
  const patched = (name: string, entries: Array<[number, number]>) => {
    const b = Buffer.from(buf);
    for (const [c, v] of entries)
      for (let k = 0; k < geo.numFats; k++) b.writeUInt32LE(v, geo.fatOffset + k * geo.fatBytes + 4 * c);
    const out = path.join(dir, name);
    writeFileSync(out, b);
    return out;
  };
  try {
    // a file whose first cluster points back at itself
    const f = await firstCluster('/frag/fragmented.bin');
    const cyc = await open(patched('cycle.img', [[f, f]]));
    await assert.rejects(
      cyc.read(await cyc.lookup('/frag/fragmented.bin'), 0, 1 << 20),
      (e: unknown) => e instanceof StrataError && e.code === 'LOOP' && /revisits cluster/.test(e.message),
    );
    // a directory whose chain comes back to its first cluster (directories have no size to stop at)
    const m = await firstCluster('/many');
    assert.ok((await fs0.lookup('/many')).size > geo.clusterSize, 'the directory spans clusters');
    const dcyc = await open(patched('dircycle.img', [[m, m]]));
    await assert.rejects(
      (async () => dcyc.readdirAll!(await dcyc.lookup('/many')))(),
      (e: unknown) => e instanceof StrataError && e.code === 'LOOP',
    );
    // the walk over the whole tree reports it and goes on
    const seen: string[] = [];
    for await (const it of walk(dcyc, await dcyc.root(), '/', { onError: (_e, p) => seen.push(p) })) void it;
    assert.ok(seen.includes('/many'), seen.join(', '));
    // a chain that runs into a free cluster
    const free = await open(patched('free.img', [[f, geo.clusterCount]]));
    await assert.rejects(
      free.read(await free.lookup('/frag/fragmented.bin'), 0, 1 << 20),
      (e: unknown) => e instanceof StrataError && e.code === 'CORRUPT' && /free cluster/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('FAT names hostile elsewhere (\\, :, CON, "..") are listed as stored or dropped with a warning, and extraction stays in DEST', async () => {
  const img = await fatImage(FAT_SPECS[1]);
  const dir = scratch('fat-names');
  try {
    const copy = path.join(dir, 'names.img');
    const buf = readFileSync(img);
    /**
     * Rewrite the one long-name entry of a name of up to 13 units (the short name, and so the
     * checksum, stay as they are): units at their VFAT offsets, NUL-terminated, 0xFFFF-padded.
     */
    const rename = (from: string, to: string) => {
      const at = findUtf16(buf, from.slice(0, 5)) - 1;
      assert.equal(buf[at + 11], 0x0f, `${from}: a long-name entry`);
      assert.equal(buf[at], 0x41, `${from}: the only entry of its name`);
      const units = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
      for (const [k, o] of units.entries())
        buf.writeUInt16LE(k < to.length ? to.charCodeAt(k) : k === to.length ? 0 : 0xffff, at + o);
    };
    rename('MiXeD.Txt', 'a\\b:c.txt'); // a backslash and a colon: ordinary bytes in a Linux name
    rename('empty-dir', 'CON'); // the reserved DOS device name
    rename('empty-file', '..'); // not a usable name: dropped with a warning
    writeFileSync(copy, buf);
    const fs = await open(copy);
    const names = (await fs.readdirAll!(await fs.root())).map((e) => e.name);
    assert.ok(names.includes('a\\b:c.txt'), names.join(', '));
    assert.ok(names.includes('CON'), names.join(', '));
    assert.ok(!names.includes('..') && !names.includes('empty-file'));
    assert.ok(
      fs.warnings.some((w) => /"\.\." .*not a usable name/.test(w)),
      fs.warnings.join('\n'),
    );
    const { strata } = await import('../helpers/cli.js');
    const dest = path.join(dir, 'dest');
    const r = await strata(['extract', copy, '/', dest]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(path.join(dest, 'a\\b:c.txt'), 'utf8'), 'mixed-case name\n');
    assert.ok(statSync(path.join(dest, 'CON')).isDirectory());
    assert.deepEqual((await run('ls', ['-A', dir])).split('\n').filter(Boolean).sort(), ['dest', 'names.img']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
