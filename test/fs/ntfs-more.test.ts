/**
 * NTFS beyond names and bytes: owners from $Secure (against ntfssecaudit and an ntfs-3g mount
 * with its default user mapping), Windows name collation through $UpCase (against lowntfs-3g
 * -o ignore_case), `path:stream` alternate data streams (against TSK fls/icat and an ntfs-3g
 * mount with streams_interface=windows), and index allocations (INDX blocks) by directory
 * (against TSK istat).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem, Inode } from '../../src/fs/types.js';
import { FileSource } from '../../src/io/file-source.js';
import { StrataError } from '../../src/util/errors.js';
import { strata } from '../helpers/cli.js';
import {
  CASE_NAMES,
  HOSTILE_NAMES,
  ntfsOwnersImage,
  ntfsReparseImage,
  REPARSE_POINTS,
  withNtfsMount,
} from '../helpers/ntfs-images.js';
import { run, runBuffer, scratch, sha256, unmount } from '../helpers/tools.js';

const opened: FileSource[] = [];
after(async () => {
  for (const s of opened) await s.close();
});

async function open(img: string): Promise<FileSystem> {
  const src = await FileSource.open(img);
  opened.push(src);
  return openFileSystem(src);
}

async function lookupOrUndefined(fs: FileSystem, p: string): Promise<Inode | undefined> {
  try {
    return await fs.lookup(p);
  } catch (e) {
    if (e instanceof StrataError && e.code === 'NOT_FOUND') return undefined;
    throw e;
  }
}

/** Clusters per attribute from `istat` ("Type: $INDEX_ALLOCATION (160-7)   Name: $I30 ..." then run lines). */
function istatClusters(text: string): Map<string, number[]> {
  const out = new Map<string, number[]>();
  let cur: number[] | undefined;
  for (const line of text.split('\n')) {
    const m = /^Type: (\S+) \((\d+)-(\d+)\)\s+Name: (\S+)/.exec(line);
    if (m) {
      cur = [];
      out.set(`${m[1]}:${m[4]}`, cur);
    } else if (cur && /^(\d+ )+$/.test(line)) cur.push(...line.trim().split(' ').map(Number));
    else cur = line.trim() === '' ? undefined : cur;
  }
  return out;
}

test('owners: SIDs from $Secure as ntfssecaudit reads them; uid/gid as ntfs-3g -o permissions maps them', async () => {
  const img = await ntfsOwnersImage();
  const fs = await open(img);
  const files = ['/root.txt', '/home', '/home/user', '/home/user/notes.txt', '/shared', '/shared/data.bin', '/case'];
  const mounted = await withNtfsMount(img, 'ro,permissions', async (m) =>
    files.map((f) => {
      const st = lstatSync(path.join(m, f));
      return { uid: st.uid, gid: st.gid };
    }),
  );
  const uids = new Set<number>();
  for (const [i, f] of files.entries()) {
    const audit = await run('ntfssecaudit', [img, f]);
    const owner = /^Windows owner (\S+)$/m.exec(audit)?.[1];
    const group = /^Windows group (\S+)$/m.exec(audit)?.[1];
    const unix = /^Interpreted Unix owner (\d+), group (\d+)/m.exec(audit);
    assert.ok(owner && group && unix, `ntfssecaudit ${f}: ${audit}`);
    const ino = await fs.lookup(f);
    assert.equal(ino.ownerSid, owner, f);
    assert.equal(ino.groupSid, group, f);
    assert.deepEqual({ uid: ino.uid, gid: ino.gid }, mounted[i], f);
    assert.deepEqual([ino.uid, ino.gid], [Number(unix[1]), Number(unix[2])], f);
    uids.add(ino.uid);
  }
  assert.deepEqual(
    [...uids].sort((a, b) => a - b),
    [0, 1000, 1234],
  );
  assert.deepEqual(fs.warnings, []);
});

test('case-insensitive lookup collates through $UpCase as lowntfs-3g -o ignore_case does (not as JavaScript folds case)', async () => {
  const img = await ntfsOwnersImage();
  const fs = await open(img);
  const variants = new Set<string>();
  for (const n of CASE_NAMES) {
    variants.add(n);
    variants.add(n.toUpperCase());
    variants.add(n.toLowerCase());
    variants.add([...n].map((c, i) => (i % 2 ? c.toUpperCase() : c)).join(''));
  }
  for (const v of [
    'STRAßE.TXT',
    'STRAẞE.TXT',
    'ı-DOTLESS',
    'I-DOTLESS',
    'Ǆ-DIGRAPH',
    'ǅ-digraph',
    'ΣΊΣΥΦΟΣ',
    'ΣΙΣΥΦΟΣ',
  ])
    variants.add(v);
  const mnt = scratch('ntfs-icase');
  await run('lowntfs-3g', ['-o', 'ro,ignore_case', img, mnt]);
  const found = new Map<string, number | undefined>();
  try {
    for (const v of variants) {
      try {
        found.set(v, lstatSync(path.join(mnt, 'case', v)).ino);
      } catch {
        found.set(v, undefined);
      }
    }
  } finally {
    await unmount(mnt);
    rmSync(mnt, { recursive: true, force: true });
  }
  let jsWouldDiffer = 0;
  let folded = 0;
  for (const v of variants) {
    const ours = await lookupOrUndefined(fs, `/case/${v}`);
    assert.equal(ours?.ino, found.get(v), v);
    const js = CASE_NAMES.some((n) => n.toUpperCase() === v.toUpperCase());
    if (js !== (found.get(v) !== undefined)) jsWouldDiffer++;
    if (found.get(v) !== undefined && !CASE_NAMES.includes(v)) folded++;
  }
  assert.ok(folded >= 5, `case variants found: ${folded}`);
  assert.ok(jsWouldDiffer >= 2, `variants where JavaScript's folding disagrees with $UpCase: ${jsWouldDiffer}`);
});

test('path:stream reads an alternate data stream: every named stream fls lists, with icat bytes; the ntfs-3g mount with streams_interface=windows agrees', async () => {
  const img = await ntfsOwnersImage();
  const fs = await open(img);
  const fls = await run('fls', ['-r', '-p', img]);
  const streams = [...fls.matchAll(/^\S+ (\d+-128-\d+):\t([^$\n][^\n]*?:[^\n]+)$/gm)]
    .map((m) => ({ addr: m[1], p: `/${m[2]}` }))
    .filter((s) => !s.p.startsWith('/hostile/') && !s.p.includes('/.:'));
  assert.deepEqual(streams.map((s) => s.p).sort(), [
    '/root.txt:Zone.Identifier',
    '/root.txt:stream',
    '/shared:dirstream',
  ]);
  const viaMount = await withNtfsMount(img, 'ro,streams_interface=windows', async (m) =>
    streams.map((s) => sha256(readFileSync(path.join(m, s.p)))),
  );
  for (const [i, s] of streams.entries()) {
    const icat = await runBuffer('icat', [img, s.addr]);
    const ino = await fs.lookup(s.p);
    assert.equal(ino.type, 'file', s.p);
    assert.equal(ino.size, icat.length, s.p);
    assert.equal(sha256(await fs.read(ino, 0, ino.size)), sha256(icat), s.p);
    assert.equal(viaMount[i], sha256(icat), s.p);
    // its own inode number, its base file's owner; the same stream by other spellings
    const base = await fs.lookup(s.p.slice(0, s.p.lastIndexOf(':')));
    assert.notEqual(ino.ino, base.ino);
    assert.equal(ino.ownerSid, base.ownerSid);
    assert.equal((await fs.inode(ino.ino)).size, ino.size);
    assert.equal((await fs.lookup(`${s.p}:$DATA`)).ino, ino.ino);
    assert.equal((await fs.lookup(s.p.toUpperCase())).ino, ino.ino);
    // extents cover the clusters istat lists for that attribute, in order
    const cluster = Number(/Cluster Size: (\d+)/.exec(await run('fsstat', [img]))![1]);
    const ext = [];
    for await (const e of fs.extents(ino)) ext.push(e);
    const attrs = istatClusters(await run('istat', [img, s.addr.split('-')[0]]));
    const listed = attrs.get(`$DATA:${s.p.slice(s.p.lastIndexOf(':') + 1)}`);
    if (ext.every((e) => e.inline)) assert.deepEqual(listed ?? [], [], `${s.p} is resident`);
    else
      assert.deepEqual(
        ext.flatMap((e) =>
          Array.from({ length: Math.ceil(e.length / cluster) }, (_, k) => e.volumeOffset / cluster + k),
        ),
        listed,
        s.p,
      );
  }
  // base::$DATA is the unnamed stream; readdir does not list streams; xattrs still name them
  assert.equal((await fs.lookup('/root.txt::$DATA')).ino, (await fs.lookup('/root.txt')).ino);
  const names: string[] = [];
  for await (const e of fs.readdir(await fs.root())) names.push(e.name);
  assert.ok(!names.some((n) => n.includes(':')), names.join(' '));
  assert.deepEqual([...(await fs.xattrs(await fs.lookup('/root.txt'))).keys()].sort(), [
    'ntfs.stream.Zone.Identifier',
    'ntfs.stream.stream',
  ]);
  // no such stream, and a real name holding ':' (POSIX namespace) wins over the stream syntax
  assert.equal(await lookupOrUndefined(fs, '/root.txt:nope'), undefined);
  const colon = await fs.lookup('/hostile/colon:name');
  assert.equal(sha256(await fs.read(colon, 0, colon.size)), sha256(Buffer.from('colon:name\n')));
});

test('directories own their INDX blocks: extents and metadata regions match istat $INDEX_ALLOCATION; $Secure, $UpCase and $Extend indexes are metadata', async () => {
  const img = await ntfsOwnersImage();
  const fs = await open(img);
  const cluster = Number(/Cluster Size: (\d+)/.exec(await run('fsstat', [img]))![1]);
  const regions = [];
  for await (const r of fs.metadataRegions()) regions.push(r);
  const clustersOf = (rs: Array<{ offset?: number; volumeOffset?: number; length: number }>) =>
    rs.flatMap((r) =>
      Array.from({ length: Math.ceil(r.length / cluster) }, (_, k) => (r.offset ?? r.volumeOffset!) / cluster + k),
    );
  const fls = await run('fls', ['-r', '-p', '-D', img]);
  let withIndx = 0;
  for (const m of fls.matchAll(/^d\/d (\d+)-144-\d+:\t(.+)$/gm)) {
    const rec = Number(m[1]);
    const want = istatClusters(await run('istat', [img, String(rec)])).get('$INDEX_ALLOCATION:$I30');
    const mine = clustersOf(
      regions.filter((r) => r.ino === rec && r.kind === 'directory' && r.detail?.startsWith('$I30')),
    );
    assert.deepEqual(mine, want ?? [], m[2]);
    if (!want) continue;
    withIndx++;
    if (m[2].startsWith('$')) continue;
    const ext = [];
    for await (const e of fs.extents(await fs.lookup(`/${m[2]}`))) ext.push(e);
    assert.deepEqual(clustersOf(ext), want, `extents of /${m[2]}`);
  }
  assert.ok(withIndx >= 2, `folders with INDX blocks: ${withIndx}`); // the root and /many at least
  // $Secure's $SDS stream and $SII/$SDH indexes, $UpCase: where istat puts them
  const secure = istatClusters(await run('istat', [img, '9']));
  for (const [attr, kind] of [
    ['$DATA:$SDS', 'reserved'],
    ['$INDEX_ALLOCATION:$SII', 'index'],
    ['$INDEX_ALLOCATION:$SDH', 'index'],
  ]) {
    const want = secure.get(attr);
    if (!want) continue; // a fresh volume's $SII/$SDH may still fit in the record
    assert.deepEqual(
      clustersOf(regions.filter((r) => r.ino === 9 && r.kind === kind)).filter((c) => want.includes(c)),
      want,
      attr,
    );
  }
  assert.ok(secure.get('$DATA:$SDS')?.length, 'istat lists $SDS clusters');
  const upcase = istatClusters(await run('istat', [img, '10'])).get('$DATA:N/A');
  assert.deepEqual(clustersOf(regions.filter((r) => r.ino === 10)), upcase);
});

test('extraction of names with \\, :, .., reserved Windows names and trailing dots or spaces stays inside DEST, each file under its own name', async () => {
  const img = await ntfsOwnersImage();
  const dir = scratch('ntfs-hostile');
  const dest = path.join(dir, 'dest');
  mkdirSync(dest);
  try {
    const r = await strata(['extract', img, '/hostile', dest]);
    assert.equal(r.code, 0, r.stderr);
    // everything the extraction made is DEST's own entries, one per name the ntfs-3g mount lists
    const theirs = await withNtfsMount(img, 'ro', async (m) => readdirSync(path.join(m, 'hostile')).sort());
    assert.equal(theirs.length, HOSTILE_NAMES.length);
    assert.deepEqual(
      (await run('find', [dir, '-mindepth', '1'])).split('\n').filter(Boolean).sort(),
      [dest, ...theirs.map((n) => path.join(dest, n))].sort(),
    );
    for (const n of theirs) assert.equal(readFileSync(path.join(dest, n), 'utf8'), `${n}\n`, n);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a volume whose dirty flag is set (as ntfsinfo -m reports it) opens with a warning; ntfsfix -d clears it and the warning goes', async () => {
  const dir = scratch('ntfs-dirty');
  try {
    const img = path.join(dir, 'dirty.img');
    await run('cp', ['--sparse=always', await ntfsOwnersImage(), img]);
    // $VOLUME_INFORMATION's flags in MFT record 3 (located with fsstat; the record's first sector holds it)
    const fsstat = await run('fsstat', [img]);
    const cluster = Number(/Cluster Size: (\d+)/.exec(fsstat)![1]);
    const at = Number(/First Cluster of MFT: (\d+)/.exec(fsstat)![1]) * cluster + 3 * 1024;
    const b = readFileSync(img);
    let p = at + b.readUInt16LE(at + 20);
    while (b.readUInt32LE(p) !== 0x70) p += b.readUInt32LE(p + 4);
    const flagsAt = p + b.readUInt16LE(p + 20) + 10;
    assert.ok(flagsAt + 2 < at + 510);
    const fd = openSync(img, 'r+');
    // the same byte in the record's copy in $MFTMirr, which ntfs-3g's tools compare
    const mirror = Number(/First Cluster of MFT Mirror: (\d+)/.exec(fsstat)![1]) * cluster + 3 * 1024;
    for (const o of [flagsAt, mirror + (flagsAt - at)]) writeSync(fd, Buffer.from([b[flagsAt] | 1]), 0, 1, o);
    closeSync(fd);
    // ntfs-3g's tools refuse a dirty volume ("scheduled for check") unless forced
    await assert.rejects(run('ntfsinfo', ['-m', img]), /scheduled for check/);
    assert.match(await run('ntfsinfo', ['-f', '-m', img]), /Volume Flags: 0x0001/);
    const fs = await open(img);
    assert.ok(
      fs.warnings.some((w) => /dirty/.test(w)),
      fs.warnings.join('\n'),
    );
    assert.equal((await fs.info()).extra?.dirty, true);
    await run('ntfsfix', ['-d', img]);
    assert.match(await run('ntfsinfo', ['-m', img]), /Volume Flags: 0x0000/);
    const clean = await open(img);
    assert.deepEqual(clean.warnings, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('reparse points: junctions and symbolic links read as symlinks with the targets ntfs-3g resolves; other tags are named; TSK sees $REPARSE_POINT on exactly these', async () => {
  const img = await ntfsReparseImage();
  const fs = await open(img);
  // what ntfs-3g reads back from the volume: the reparse buffer (its tag) and, for links, the target
  const viaMount = await withNtfsMount(img, 'ro', async (m) =>
    REPARSE_POINTS.map((r) => {
      const hex = execFileSync(
        'getfattr',
        ['-h', '-e', 'hex', '-n', 'system.ntfs_reparse_data', path.join(m, r.path)],
        {
          encoding: 'utf8',
        },
      );
      const data = Buffer.from(/=0x([0-9a-f]+)/.exec(hex)![1], 'hex');
      let link: string | undefined;
      try {
        link = readlinkSync(path.join(m, r.path));
        // ntfs-3g maps C:\ to its mount point
        if (link.startsWith(`${m}/`)) link = `C:/${link.slice(m.length + 1)}`;
      } catch {
        link = undefined;
      }
      return { tag: data.readUInt32LE(0), link };
    }),
  );
  const fls = await run('fls', ['-r', '-p', img]);
  const flsIno = new Map([...fls.matchAll(/^\S+ (\d+)-\d+-\d+:\t(.+)$/gm)].map((x) => [`/${x[2]}`, Number(x[1])]));
  for (const [i, r] of REPARSE_POINTS.entries()) {
    assert.equal(viaMount[i].tag, r.tag, `${r.path}: the tag on the volume`);
    const ino = await fs.lookup(r.path);
    assert.equal(ino.ino, flsIno.get(r.path), r.path);
    assert.match(await run('istat', [img, String(ino.ino)]), /Type: \$REPARSE_POINT \(192-/, `${r.path}: istat`);
    if ('print' in r) {
      assert.equal(ino.type, 'symlink', r.path);
      const target = await fs.readlink(ino);
      // the recipe's print name with / for \, and what ntfs-3g resolves it to
      assert.equal(target, r.print.replaceAll('\\', '/'), r.path);
      assert.equal(target, viaMount[i].link, `${r.path}: ntfs-3g readlink`);
      assert.equal(ino.size, target.length, r.path);
    } else {
      assert.equal(ino.type, 'file', r.path);
      const x = await fs.xattrs(ino);
      assert.equal(new TextDecoder().decode(x.get('ntfs.reparse_tag')), `0x${r.tag.toString(16)}`, r.path);
    }
  }
  // nothing else carries one: every other file TSK lists has no $REPARSE_POINT, and reads as what it is
  const others = [...flsIno.entries()].filter(
    ([p]) => !p.startsWith('/$') && !REPARSE_POINTS.some((r) => r.path === p) && !p.includes(':'),
  );
  assert.deepEqual(others.map(([p]) => p).sort(), ['/target', '/target/f.txt']);
  for (const [p, n] of others) {
    assert.doesNotMatch(await run('istat', [img, String(n)]), /\$REPARSE_POINT/, p);
    assert.notEqual((await fs.lookup(p)).type, 'symlink', p);
  }
  // the CLI: ls -l shows the links with their targets; extract writes them as symlinks inside DEST
  const lsRun = await strata(['ls', '-l', img, '/']);
  assert.equal(lsRun.code, 0, lsRun.stderr);
  const ls = lsRun.stdout;
  assert.match(ls, /^l\S+ .* junction -> C:\/target$/m);
  assert.match(ls, /^l\S+ .* rel-link -> target\/f\.txt$/m);
  const dest = scratch('ntfs-reparse-extract');
  try {
    const ex = await strata(['extract', img, '/', dest]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.equal(readlinkSync(path.join(dest, 'rel-link')), 'target/f.txt');
    assert.equal(readFileSync(path.join(dest, 'rel-link'), 'utf8'), 'reparse target\n');
    assert.equal(readlinkSync(path.join(dest, 'junction')), 'C:/target');
    assert.ok(lstatSync(path.join(dest, 'dedup')).isFile());
  } finally {
    rmSync(dest, { recursive: true, force: true });
  }
});
