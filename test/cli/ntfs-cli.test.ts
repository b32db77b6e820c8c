import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { strataMount } from '../helpers/fuse-mount.js';
import { ntfsImage, ntfsSmallImage, withNtfsMount } from '../helpers/ntfs-images.js';
import { run, runBuffer, scratch } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const lines = (s: string) =>
  s
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

async function ok(args: string[]): Promise<string> {
  const r = await strata(args);
  assert.equal(r.code, 0, `strata ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Regular files below `root` with their sha256, relative paths. */
async function shas(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const rel of (await run('find', ['.', '-type', 'f'], { cwd: root })).split('\n').filter(Boolean))
    out.set(rel.slice(2), sha(readFileSync(path.join(root, rel))));
  return out;
}

test('NTFS image through the CLI: ls, cat, stat, extract, blockmap and checkin work unchanged; results match the ntfs-3g mount and istat', async () => {
  const img = await ntfsSmallImage();
  const { paths, files } = await withNtfsMount(img, 'ro', async (m) => ({
    paths: (await run('find', ['.', '-mindepth', '1'], { cwd: m }))
      .split('\n')
      .filter(Boolean)
      .map((p) => p.slice(1)),
    files: await shas(m),
  }));
  const listed = lines(await ok(['ls', '-R', '--json', img, '/'])).map((x) => x.path as string);
  assert.deepEqual(listed.sort(), paths.sort());
  const cat = await strata(['cat', img, '/frag']);
  assert.equal(cat.code, 0, cat.stderr);
  assert.equal(sha(cat.stdoutBytes), files.get('frag'));
  // stat: the extents cover exactly the clusters istat lists for $DATA
  const st = JSON.parse(await ok(['stat', '--json', img, '/frag'])) as {
    size: number;
    extents: Array<{ volumeOffset: number; length: number }>;
  };
  assert.equal(st.size, 120000);
  const addr = /^r\/r (\d+)-128-\d+:\tfrag$/m.exec(await run('fls', ['-r', '-p', img]))![1];
  const fsstat = await run('fsstat', [img]);
  const cluster = Number(/Cluster Size: (\d+)/.exec(fsstat)![1]);
  const ist = await run('istat', [img, addr]);
  const clusters = [...ist.matchAll(/^(?:\d+ )+$/gm)].flatMap((l) => l[0].trim().split(' ').map(Number));
  const mine = st.extents.flatMap((e) =>
    Array.from({ length: Math.ceil(e.length / cluster) }, (_, k) => e.volumeOffset / cluster + k),
  );
  assert.deepEqual(mine, clusters);
  // blockmap: those clusters belong to /frag; the MFT is in the map
  const map = lines(await ok(['blockmap', '--json', img]));
  const covered = new Set<number>();
  for (const r of map.filter((r) => r.path === '/frag' && r.kind === 'file'))
    for (let c = 0; c < (r.length as number) / cluster; c++) covered.add((r.start as number) / cluster + c);
  for (const c of clusters) assert.ok(covered.has(c), `cluster ${c} mapped to /frag`);
  assert.ok(
    map.some((r) => r.kind === 'inode-table' && r.fs === 'ntfs'),
    'the MFT is in the map',
  );
  // every cluster $Bitmap marks in use has an owner: file data, INDX blocks by folder, streams, system files
  assert.deepEqual(
    map.filter((r) => r.kind === 'allocated'),
    [],
  );
  const many = /^d\/d (\d+)-144-\d+:\tmany$/m.exec(await run('fls', ['-r', '-p', img]))![1];
  const indx = [...(await run('istat', [img, many])).split('$INDEX_ALLOCATION')[1].matchAll(/^(?:\d+ )+$/gm)].flatMap(
    (l) => l[0].trim().split(' ').map(Number),
  );
  assert.ok(indx.length > 0, 'istat lists /many INDX clusters');
  for (const c of indx)
    assert.ok(
      map.some(
        (r) =>
          r.kind === 'directory' &&
          r.path === '/many' &&
          (r.start as number) <= c * cluster &&
          c * cluster < (r.start as number) + (r.length as number),
      ),
      `INDX cluster ${c} mapped to /many`,
    );
  const dir = scratch('ntfs-cli');
  try {
    const dest = path.join(dir, 'x');
    await ok(['extract', img, '/', dest]);
    assert.deepEqual([...(await shas(dest))].sort(), [...files].sort());
    const lib = path.join(dir, 'lib');
    await ok(['checkin', img, '--name', 'win', '--library', lib]);
    const back = await strata(['cat', 'win', '/a/b/c.txt', '--library', lib], {});
    assert.equal(back.code, 0, back.stderr);
    assert.equal(sha(back.stdoutBytes), files.get('a/b/c.txt'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Paths fls -r -p lists for files and folders, without system files, streams and TSK's virtual folders. */
async function flsPaths(img: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const m of (await run('fls', ['-r', '-p', img])).matchAll(/^(\S+) (\d+)(?:-\d+-\d+)?:\t(.+)$/gm)) {
    const p = m[3];
    if (p.startsWith('$') || p.includes(':')) continue;
    out.set(`/${p}`, m[2]);
  }
  return out;
}

test('NTFS through the CLI against ntfsls, ntfscat and TSK: ls -R is fls -r -p, each folder is ntfsls, cat is icat and ntfscat, stat is istat', async () => {
  const img = await ntfsSmallImage();
  const fls = await flsPaths(img);
  const listed = lines(await ok(['ls', '-R', '--json', img, '/']));
  assert.deepEqual(listed.map((x) => x.path as string).sort(), [...fls.keys()].sort());
  for (const x of listed) assert.equal(String(x.ino), fls.get(x.path as string), `${x.path}: MFT record`);
  for (const dir of ['/', '/a', '/a/b', '/many', '/z']) {
    const theirs = (await run('ntfsls', ['-p', dir, img])).split('\n').filter((n) => n && n !== '.' && n !== '..');
    const ours = lines(await ok(['ls', '--json', img, dir])).map((x) => path.posix.basename(x.path as string));
    assert.deepEqual(ours.sort(), theirs.sort(), dir);
  }
  const files = listed.filter((x) => x.type === 'file').map((x) => x.path as string);
  // every file outside /many, and every 25th inside it
  const sample = files.filter((p, i) => !p.startsWith('/many/') || i % 25 === 0);
  assert.ok(sample.length >= 12, `${sample.length} files`);
  for (const p of sample) {
    const cat = await strata(['cat', img, p]);
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(sha(cat.stdoutBytes), sha(await runBuffer('icat', [img, fls.get(p)!])), `${p} vs icat`);
    assert.equal(sha(cat.stdoutBytes), sha(await runBuffer('ntfscat', [img, p])), `${p} vs ntfscat`);
    const st = JSON.parse(await ok(['stat', '--json', img, p])) as { size: number; nlink: number; ino: number };
    const ist = await run('istat', [img, fls.get(p)!]);
    assert.equal(st.ino, Number(/^Entry: (\d+)/m.exec(ist)![1]), p);
    assert.equal(st.nlink, Number(/^Links: (\d+)/m.exec(ist)![1]), p);
  }
  // a stream by path:stream through cat, as ntfscat -n reads it
  const s = await strata(['cat', img, '/a/b/c.txt:s']);
  assert.equal(s.code, 0, s.stderr);
  assert.equal(sha(s.stdoutBytes), sha(await runBuffer('ntfscat', ['-a', '0x80', '-n', 's', img, '/a/b/c.txt'])));
});

test('strata diff of two NTFS images: added, removed and changed files as a walk of their two ntfs-3g mounts sees them', async () => {
  const base = await ntfsSmallImage();
  const dir = scratch('ntfs-diff');
  try {
    const derived = path.join(dir, 'derived.img');
    await run('cp', ['--sparse=always', base, derived]);
    await withNtfsMount(derived, 'streams_interface=xattr', async (m) => {
      writeFileSync(path.join(m, 'added.txt'), 'new\n');
      mkdirSync(path.join(m, 'newdir'));
      writeFileSync(path.join(m, 'newdir', 'inner.bin'), Buffer.alloc(10000, 3));
      rmSync(path.join(m, 'many', 'n7'));
      rmSync(path.join(m, 'link'));
      const frag = readFileSync(path.join(m, 'frag'));
      frag[50000] ^= 0xff; // same size, one byte
      writeFileSync(path.join(m, 'frag'), frag);
      writeFileSync(path.join(m, 'many', 'n10'), 'longer than before\n');
      await run('setfattr', ['-n', 'user.s', '-v', 'changed stream', path.join(m, 'a', 'b', 'c.txt')]);
    });
    const walkMount = (img: string) =>
      withNtfsMount(img, 'ro,streams_interface=xattr', async (m) => {
        const out = new Map<string, string>();
        for (const rel of (await run('find', ['.', '-mindepth', '1'], { cwd: m })).split('\n').filter(Boolean)) {
          const p = path.join(m, rel);
          const st = lstatSync(p);
          out.set(
            rel.slice(1),
            st.isFile()
              ? `file ${st.size} ${sha(readFileSync(p))}`
              : st.isDirectory()
                ? 'dir'
                : `link ${readlinkSync(p)}`,
          );
        }
        return out;
      });
    const [a, b] = [await walkMount(base), await walkMount(derived)];
    const want = {
      added: [...b.keys()].filter((p) => !a.has(p)).sort(),
      removed: [...a.keys()].filter((p) => !b.has(p)).sort(),
      changed: [...b.keys()].filter((p) => a.has(p) && a.get(p) !== b.get(p) && b.get(p)!.startsWith('file')).sort(),
    };
    assert.deepEqual(want.added, ['/added.txt', '/newdir', '/newdir/inner.bin']);
    assert.deepEqual(want.removed, ['/link', '/many/n7']);
    assert.deepEqual(want.changed, ['/frag', '/many/n10']);
    const r = await strata(['diff', base, derived, '--json']);
    assert.equal(r.code, 1, r.stderr);
    const f = (
      JSON.parse(r.stdout) as {
        files: Record<'added' | 'removed' | 'changed' | 'metadata', Array<{ path: string; fields?: string[] }>>;
      }
    ).files;
    assert.deepEqual(f.added.map((x) => x.path).sort(), want.added);
    assert.deepEqual(f.removed.map((x) => x.path).sort(), want.removed);
    assert.deepEqual(f.changed.map((x) => x.path).sort(), want.changed);
    // the stream rewritten through the xattr interface is a metadata change of its file
    assert.ok(
      f.metadata.some((x) => x.path === '/a/b/c.txt' && x.fields?.includes('xattrs')),
      JSON.stringify(f.metadata),
    );
    // an image against itself: no differences
    const same = await strata(['diff', derived, derived, '--json']);
    assert.equal(same.code, 0, same.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('NTFS block maps and whatis: file data and index-allocation samples match The Sleuth Kit (ifind -d names the MFT record and attribute, ffind -a the path)', async () => {
  for (const img of [await ntfsSmallImage(), await ntfsImage()]) {
    const r = await strata(['blockmap', '--json', img]);
    assert.equal(r.code, 0, r.stderr);
    const map = lines(r.stdout);
    const cluster = Number(/Cluster Size: (\d+)/.exec(await run('fsstat', [img]))![1]);
    const sample = (kind: string, n: number) => {
      const rs = map.filter((x) => x.kind === kind && typeof x.path === 'string');
      assert.ok(rs.length > 0, `${img}: no ${kind} ranges`);
      // spread over the ranges, and inside each over its clusters
      return Array.from({ length: n }, (_, k) => {
        const x = rs[Math.floor((k * rs.length) / n)];
        const units = Math.floor((x.length as number) / cluster);
        return { x, unit: Math.floor((x.start as number) / cluster) + (k % Math.max(1, units)) };
      });
    };
    for (const [kind, attr, n] of [
      ['file', 128, 16],
      ['directory', 160, 2],
    ] as const) {
      for (const { x, unit } of sample(kind, n)) {
        const addr = (await run('ifind', ['-d', String(unit), img])).trim();
        const m = /^(\d+)-(\d+)-\d+$/.exec(addr);
        assert.ok(m, `${img} cluster ${unit}: ifind -d says ${JSON.stringify(addr)}`);
        assert.equal(Number(m[1]), x.inode, `${img} cluster ${unit} (${x.path}): MFT record`);
        assert.equal(Number(m[2]), attr, `${img} cluster ${unit} (${x.path}): attribute type`);
        const names = (await run('ffind', ['-a', img, addr]))
          .split('\n')
          .filter(Boolean)
          .map((p) => p.replace(/^\/\//, '/').replace(/:\$I30$/, ''));
        // whatis of the cluster's first byte answers from the same map
        const w = lines(await ok(['whatis', '--json', img, String(unit * cluster)]));
        assert.ok(names.includes(w[0]?.path as string), `whatis ${unit * cluster}: ${JSON.stringify(w[0])}`);
        assert.ok(
          names.includes(x.path as string),
          `${img} cluster ${unit}: ffind -a ${addr} gives ${names.join(', ')}, not ${x.path}`,
        );
      }
    }
  }
});

test('strata mount of an NTFS image: the tree (paths, types, symlink targets, file contents) equals the ntfs-3g mount', async () => {
  const img = await ntfsImage();
  const view = async (root: string) => {
    const out = new Map<string, string>();
    for (const rel of (await run('find', ['.', '-mindepth', '1'], { cwd: root })).split('\n').filter(Boolean)) {
      const p = path.join(root, rel);
      const st = lstatSync(p);
      out.set(
        rel.slice(1),
        st.isSymbolicLink()
          ? `link ${readlinkSync(p)}`
          : st.isDirectory()
            ? 'dir'
            : `file ${st.size} ${st.size < 1 << 20 ? sha(readFileSync(p)) : ''}`,
      );
    }
    return out;
  };
  const theirs = await withNtfsMount(img, 'ro', view);
  const m = await strataMount([img], 'ntfs');
  try {
    const ours = await view(m.mnt);
    assert.ok(theirs.size > 20_000, `${theirs.size} paths (the 20,000-entry folder)`);
    const diff = [...new Set([...theirs.keys(), ...ours.keys()])]
      .filter((p) => theirs.get(p) !== ours.get(p))
      .map((p) => `${p}: ntfs-3g ${theirs.get(p)}, strata ${ours.get(p)}`);
    assert.deepEqual(diff.slice(0, 20), [], `${diff.length} differences`);
  } finally {
    assert.equal(await m.stop(), 0, m.stderr());
  }
});

test('NTFS modification times to the 100 ns tick: ls -R --json mtime equals what the ntfs-3g mount reports (find -printf %T@)', async () => {
  for (const img of [await ntfsSmallImage(), await ntfsImage()]) {
    const theirs = new Map<string, bigint>();
    await withNtfsMount(img, 'ro', async (m) => {
      for (const l of (await run('find', ['.', '-mindepth', '1', '-printf', '%T@ %P\\n'], { cwd: m }))
        .split('\n')
        .filter(Boolean)) {
        const [, s, frac, p] = /^(\d+)\.(\d+) (.*)$/.exec(l)!;
        theirs.set(`/${p}`, BigInt(s) * 1_000_000_000n + BigInt(frac.padEnd(9, '0').slice(0, 9)));
      }
    });
    const ns = (iso: string) => {
      const [, whole, frac] = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(iso)!;
      return BigInt(Date.parse(`${whole}Z`) / 1000) * 1_000_000_000n + BigInt((frac ?? '').padEnd(9, '0'));
    };
    const ours = lines(await ok(['ls', '-R', '--json', img, '/']));
    assert.equal(ours.length, theirs.size);
    let ticks = 0;
    for (const r of ours) {
      const want = theirs.get(r.path as string);
      assert.equal(want !== undefined && ns(r.mtime as string), want, `${r.path}: ${r.mtime}`);
      if (want! % 1_000_000_000n !== 0n) ticks++;
    }
    assert.ok(ticks > ours.length / 2, 'most times have a fraction of a second');
  }
});
