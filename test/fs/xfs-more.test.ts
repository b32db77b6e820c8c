/**
 * XFS v4 (no CRCs), the log, and the realtime device. This kernel refuses to mount v4 (CONFIG_XFS_SUPPORT_V4 is
 * off: "Deprecated V4 format (crc=0) not supported by kernel"), so the v4 image is filled by
 * mkfs.xfs -p from a protofile, and the oracles are the source tree (read by the kernel
 * from the host file system) and xfs_db. Attributes are added with xfs_db attr_set.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem, Inode } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import { FileSource } from '../../src/io/file-source.js';
import { StrataError } from '../../src/util/errors.js';
import { bytesOf, withRwMount } from '../helpers/ext-tree.js';
import { fixture, run } from '../helpers/tools.js';

const SIZE = 300 << 20;
const BIG = 3000;

/** The source tree and a protofile describing it (protofiles cannot hold hard links, xattrs or spaces in names). */
function buildSource(dir: string): string {
  const lines: string[] = ['/dev/null', '0 0', 'd--755 0 0'];
  let n = 0;
  const file = (name: string, content: Buffer, mode = '---644', uid = 0, gid = 0) => {
    const p = path.join(dir, 'src', `f-${n++}`);
    writeFileSync(p, content);
    lines.push(`${path.basename(name)} ${mode} ${uid} ${gid} ${p}`);
  };
  mkdirSync(path.join(dir, 'src'), { recursive: true });
  lines.push('files d--755 0 0');
  for (const n of [0, 1, 100, 4095, 4096, 4097, 65536, 300_000, 2_000_000])
    file(`files/size-${n}`, bytesOf(`v4-${n}`, n));
  file('files/setuid', Buffer.from('setuid\n'), '-u-755', 1234, 5678);
  file('files/setgid', Buffer.from('setgid\n'), '--g750', 70000, 80000);
  lines.push('$');
  lines.push('names d--700 1000 1000');
  file('names/' + 'n'.repeat(255), Buffer.from('long\n'));
  file('names/Grüße,世界🙂', Buffer.from('non-ascii\n'));
  file('names/' + 'é'.repeat(127) + 'a', Buffer.from('254 bytes\n'));
  lines.push('$');
  lines.push(`big d--755 0 0`);
  for (let i = 0; i < BIG; i++) file(`big/entry-${String(i).padStart(5, '0')}-${'x'.repeat(i % 40)}`, Buffer.from(''));
  lines.push('$');
  lines.push('links d--755 0 0');
  lines.push('short l--777 0 0 target.txt');
  lines.push(`long l--777 0 0 ${'t'.repeat(600)}`);
  lines.push(`max l--777 0 0 ${'m'.repeat(1024)}`);
  lines.push('$');
  lines.push('special d--755 0 0');
  lines.push('null-ish c--666 0 0 1 3');
  lines.push('blockdev b--660 0 6 8 17');
  lines.push('bigdev c--600 0 0 300 70000');
  lines.push('fifo p--644 0 0');
  lines.push('$');
  lines.push('$');
  return `${lines.join('\n')}\n`;
}

interface Want {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  sha256?: string;
  target?: string;
  rdev?: { major: number; minor: number };
}

async function v4Image(): Promise<string> {
  const dir = await fixture('xfs-v4-proto-v2', async (d) => {
    mkdirSync(d);
    const proto = buildSource(d);
    writeFileSync(path.join(d, 'proto'), proto);
    const img = path.join(d, 'xfs.img');
    writeFileSync(img, '');
    truncateSync(img, SIZE);
    await run('mkfs.xfs', ['-q', '-f', '-m', 'crc=0', '-n', 'ftype=0', '-p', path.join(d, 'proto'), img]);
    // attributes: short form on one file, leaf and node form on others, a remote value
    const sets: Array<[string, string[]]> = [
      [
        '/files/size-1',
        ['-c', 'attr_set -v 5 short', '-c', 'attr_set -r -v 3 root-one', '-c', 'attr_set -s -v 2 sec-one'],
      ],
      ['/files/size-100', Array.from({ length: 60 }, (_, i) => ['-c', `attr_set -v ${i + 1} leaf-${i}`]).flat()],
      [
        '/files/size-4095',
        Array.from({ length: 700 }, (_, i) => ['-c', `attr_set -v ${(i % 30) + 1} node-attribute-${i}`]).flat(),
      ],
      ['/files/size-4096', ['-c', 'attr_set -v 9000 remote']],
    ];
    for (const [p, cmds] of sets) {
      execFileSync('xfs_db', ['-x', '-c', `path ${p}`, ...cmds, img], { stdio: 'ignore' });
    }
  });
  return path.join(dir, 'xfs.img');
}

/** What the protofile and its source files say (the fixture folder was renamed after mkfs: sources are found by name). */
function sourceView(proto: string, srcDir: string): Map<string, Want> {
  const out = new Map<string, Want>();
  const toks = proto
    .split('\n')
    .filter((l) => l !== '')
    .slice(2);
  const stack: string[] = [];
  const modeOf = (t: string) =>
    Number.parseInt(t.slice(3), 8) | (t[1] === 'u' ? 0o4000 : 0) | (t[2] === 'g' ? 0o2000 : 0);
  out.set('/', { type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0 });
  for (const line of toks.slice(1)) {
    if (line === '$') {
      stack.pop();
      continue;
    }
    const [name, m, uid, gid, ...rest] = line.split(' ');
    const p = `/${[...stack, name].join('/')}`;
    const w: Want = { type: 'file', mode: modeOf(m), uid: Number(uid), gid: Number(gid), size: 0 };
    switch (m[0]) {
      case 'd':
        w.type = 'dir';
        stack.push(name);
        break;
      case 'l':
        w.type = 'symlink';
        w.target = rest[0];
        w.size = Buffer.byteLength(rest[0]);
        break;
      case 'c':
      case 'b':
        w.type = m[0] === 'c' ? 'char' : 'block';
        w.rdev = { major: Number(rest[0]), minor: Number(rest[1]) };
        break;
      case 'p':
        w.type = 'fifo';
        break;
      default: {
        const data = readFileSync(path.join(srcDir, path.basename(rest[0])));
        w.size = data.length;
        w.sha256 = createHash('sha256').update(data).digest('hex');
      }
    }
    out.set(p, w);
  }
  return out;
}

async function sha(fs: FileSystem, i: Inode): Promise<string> {
  return createHash('sha256')
    .update(await fs.read(i, 0, i.size))
    .digest('hex');
}

test('xfs v4 (crc=0, ftype=0) from a protofile: the tree matches the source and xfs_db', async (t) => {
  const img = await v4Image();
  const proto = readFileSync(path.join(path.dirname(img), 'proto'), 'utf8');
  const want = sourceView(proto, path.join(path.dirname(img), 'src'));
  const src = await FileSource.open(img);
  const fs = await openFileSystem(src);
  try {
    const info = await fs.info();
    assert.equal(info.kind, 'xfs');
    assert.equal(info.extra?.version, 4);
    assert.ok(info.features?.includes('v4') && !info.features.includes('ftype'));
    const got = new Map<string, Want>();
    const inos = new Map<string, number>();
    const root = await fs.root();
    const rows: Array<[string, Inode]> = [['/', root]];
    for await (const it of walk(fs, root, '/')) rows.push([it.path, it.inode]);
    for (const [p, i] of rows) {
      const w: Want = { type: i.type, mode: i.mode, uid: i.uid, gid: i.gid, size: i.type === 'dir' ? 0 : i.size };
      if (i.type === 'file') w.sha256 = await sha(fs, i);
      if (i.type === 'symlink') w.target = await fs.readlink(i);
      if (i.rdev) w.rdev = i.rdev;
      got.set(p, w);
      inos.set(p, i.ino);
    }
    assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
    for (const [p, w] of want) assert.deepEqual(got.get(p), w, p);
    await t.test('names, inode numbers and types match xfs_db ls', async () => {
      const dirs = [...want].filter(([, w]) => w.type === 'dir').map(([p]) => p);
      const out = await run('xfs_db', ['-r', ...dirs.flatMap((d) => ['-c', `ls ${d}`]), img]);
      const listed = new Map<string, number>();
      let cur = '';
      for (const line of out.split('\n')) {
        const h = /^(\/.*):$/.exec(line);
        if (h) {
          cur = h[1];
          continue;
        }
        const m = /^\s*\d+\s+(\d+)\s+(\S+)\s+\S+\s+\d+\s+(.*) \(good\)$/.exec(line);
        if (!m || m[3] === '.' || m[3] === '..') continue;
        listed.set(cur === '/' ? `/${m[3]}` : `${cur}/${m[3]}`, Number(m[1]));
      }
      const ours = new Map([...inos].filter(([p]) => p !== '/'));
      assert.deepEqual([...ours].sort(), [...listed].sort());
    });
    await t.test(
      'attributes set by xfs_db attr_set: short form, leaf, node, remote, root and secure namespaces',
      async () => {
        const x = async (p: string) => fs.xattrs(await fs.lookup(p));
        const v = (n: number) => 'v'.repeat(n);
        const s = await x('/files/size-1');
        assert.deepEqual([...s].map(([k, val]) => `${k}=${Buffer.from(val).toString()}`).sort(), [
          'security.sec-one=vv',
          'trusted.root-one=vvv',
          'user.short=vvvvv',
        ]);
        const leaf = await x('/files/size-100');
        assert.equal(leaf.size, 60);
        for (let i = 0; i < 60; i++) assert.equal(Buffer.from(leaf.get(`user.leaf-${i}`)!).toString(), v(i + 1));
        const node = await x('/files/size-4095');
        assert.equal(node.size, 700);
        for (let i = 0; i < 700; i += 37)
          assert.equal(Buffer.from(node.get(`user.node-attribute-${i}`)!).toString(), v((i % 30) + 1));
        const remote = await x('/files/size-4096');
        assert.equal(Buffer.from(remote.get('user.remote')!).toString(), v(9000));
        const hdr = await run('xfs_db', [
          '-r',
          '-c',
          'path /files/size-100',
          '-c',
          'ablock 0',
          '-c',
          'print hdr.count',
          img,
        ]);
        assert.match(hdr, /hdr.count = 60/, 'xfs_db: one leaf block with the 60 attributes');
        const fmt = await run('xfs_db', ['-r', '-c', 'path /files/size-4095', '-c', 'print core.aformat', img]);
        assert.match(fmt, /core.aformat = [23]/, 'the 700-attribute fork is in blocks');
        const root = await run('xfs_db', [
          '-r',
          '-c',
          'path /files/size-4095',
          '-c',
          'ablock 0',
          '-c',
          'print hdr.info.magic',
          img,
        ]);
        assert.match(root, /hdr.info.magic = 0xfebe/, 'xfs_db: its first block is a node (da B+tree)');
      },
    );
    await t.test('no warnings, and the log is clean per xfs_logprint', async () => {
      assert.deepEqual(fs.warnings, []);
      assert.match(await run('xfs_logprint', ['-t', img]).catch((e: Error) => e.message), /state: <CLEAN>/);
      assert.match(String(info.extra?.log), /clean/);
    });
  } finally {
    await src.close();
  }
});

test('a dirty log (a shut-down file system, as xfs_logprint says) is a warning; the tree still reads', async () => {
  const img = await fixture('xfs-dirty-log-v2.img', async (out) => {
    writeFileSync(out, '');
    truncateSync(out, SIZE);
    await run('mkfs.xfs', ['-q', '-f', out]);
    await withRwMount(out, async (m) => {
      writeFileSync(path.join(m, 'before'), 'written before the shutdown\n');
    });
    await withRwMount(out, async (m) => {
      writeFileSync(path.join(m, 'logged'), 'in the log only\n');
      // data and log on disk, metadata not yet written in place; then stop without an unmount record
      execFileSync('sync');
      execFileSync('xfs_io', ['-x', '-c', 'shutdown -f', m]);
    });
  });
  const lp = await run('xfs_logprint', ['-t', img]).catch((e: Error) => e.message);
  assert.match(lp, /state: <DIRTY>/, 'xfs_logprint says the log is dirty');
  const src = await FileSource.open(img);
  try {
    const fs = await openFileSystem(src);
    assert.ok(
      fs.warnings.some((w) => /log is dirty/.test(w)),
      fs.warnings.join('; '),
    );
    assert.match(String((await fs.info()).extra?.log), /dirty/);
    const before = await fs.lookup('/before');
    assert.equal(Buffer.from(await fs.read(before, 0, before.size)).toString(), 'written before the shutdown\n');
    // the file created since lives only in the log, which a read-only reader does not replay
    await assert.rejects(fs.lookup('/logged'), (e: StrataError) => e instanceof StrataError && e.code === 'NOT_FOUND');
  } finally {
    await src.close();
  }
});

test('a clean copy of the same image after log recovery by the kernel has no log warning', async () => {
  const dirty = await fixture('xfs-dirty-log-v2.img', async () => {
    throw new Error('made by the previous test');
  });
  const copy = `${dirty}.recovered-${process.pid}`;
  copyFileSync(dirty, copy);
  try {
    await withRwMount(copy, () => {});
    assert.match(await run('xfs_logprint', ['-t', copy]), /state: <CLEAN>/);
    const src = await FileSource.open(copy);
    const fs = await openFileSystem(src);
    assert.deepEqual(fs.warnings, []);
    const logged = await fs.lookup('/logged');
    assert.equal(Buffer.from(await fs.read(logged, 0, logged.size)).toString(), 'in the log only\n');
    await src.close();
  } finally {
    rmSync(copy, { force: true });
  }
});

test('a file system with a realtime device opens with a warning; a realtime file is a clear UNSUPPORTED error', async () => {
  // this kernel has no realtime support (mount with rtdev= fails with ENOSYS): mkfs.xfs -r makes
  // the device, -p fills the data device, and xfs_db sets the realtime flag on one inode
  const dir = await fixture('xfs-realtime-v1', async (d) => {
    mkdirSync(d);
    writeFileSync(path.join(d, 'content'), 'on the data device\n');
    writeFileSync(
      path.join(d, 'proto'),
      `/dev/null\n0 0\nd--755 0 0\nrtfile ---644 0 0 ${path.join(d, 'content')}\nnormal ---644 0 0 ${path.join(d, 'content')}\n$\n`,
    );
    const img = path.join(d, 'data.img');
    const rt = path.join(d, 'rt.img');
    for (const [f, size] of [
      [img, SIZE],
      [rt, 64 << 20],
    ] as const) {
      writeFileSync(f, '');
      truncateSync(f, size);
    }
    await run('mkfs.xfs', ['-q', '-f', '-r', `rtdev=${rt}`, '-p', path.join(d, 'proto'), img]);
    await run('xfs_db', ['-x', '-c', 'path /rtfile', '-c', 'write core.realtime 1', img]);
  });
  const img = path.join(dir, 'data.img');
  const sb = await run('xfs_db', [
    '-r',
    '-c',
    'sb 0',
    '-c',
    'print rblocks',
    '-c',
    'path /rtfile',
    '-c',
    'print core.realtime',
    img,
  ]);
  assert.match(sb, /rblocks = [1-9]/);
  assert.match(sb, /core.realtime = 1/);
  const src = await FileSource.open(img);
  try {
    const fs = await openFileSystem(src);
    assert.ok(
      fs.warnings.some((w) => /realtime device/.test(w)),
      fs.warnings.join('; '),
    );
    assert.ok((await fs.info()).features?.includes('realtime'));
    const normal = await fs.lookup('/normal');
    assert.equal(Buffer.from(await fs.read(normal, 0, normal.size)).toString(), 'on the data device\n');
    const rt = await fs.lookup('/rtfile');
    await assert.rejects(
      fs.read(rt, 0, rt.size),
      (e: unknown) =>
        e instanceof StrataError && e.code === 'UNSUPPORTED' && /realtime/.test(e.message) && e.offset !== undefined,
    );
    await assert.rejects(
      async () => {
        for await (const _ of fs.extents(rt)) {
          // drain
        }
      },
      (e: unknown) => e instanceof StrataError && e.code === 'UNSUPPORTED',
    );
  } finally {
    await src.close();
  }
});
