import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import type { Change } from '../../src/library/edit/changes.js';
import { checkUpperState, type UpperState, upperToChangeSet } from '../../src/serve/fuse/upper.js';
import { strata } from '../helpers/cli.js';
import { type KernelEntry, treeView } from '../helpers/ext-tree.js';
import { isMounted, mountPoint, type StrataMount, strataMount } from '../helpers/fuse-mount.js';
import { fixture, have, run, scratch } from '../helpers/tools.js';

/**
 * `strata mount --rw`: writes go to an upper folder, the version stays as it was, and the
 * upper layer becomes a change set (`strata commit --dry-run`). The oracle for what the
 * mount shows is the same shell script run on a plain copy (cp -a) of the kernel's loop
 * mount of the image; the change set is compared with the test's own list of what the
 * script changed.
 */

for (const tool of [
  'mount',
  'umount',
  'mkfs.ext4',
  'e2fsck',
  'debugfs',
  'getfattr',
  'setfattr',
  'python3',
  'cp',
  'dd',
]) {
  test(`tool ${tool} is installed`, () => assert.ok(have(tool), `${tool} is missing`));
}

// --- upperToChangeSet on states written by hand ---

const U = '/upper';
type L = [number, string];
function node(id: number, type: UpperState['nodes'][number]['type'], lowerLinks: L[], links: L[], more = {}) {
  return { id, type, lower: lowerLinks.length > 0, lowerLinks, links, ...more };
}
const state = (nodes: UpperState['nodes']): UpperState => ({
  format: 'strata-upper-1',
  root: 1,
  used: 0,
  nodes: [node(1, 'dir', [], []), ...nodes].map((n) => (n.id === 1 ? { ...n, lower: true } : n)),
});

test('change set: a swap of two names goes through one temporary name', () => {
  const s = state([node(2, 'file', [[1, 'a']], [[1, 'b']]), node(3, 'file', [[1, 'b']], [[1, 'a']])]);
  assert.deepEqual(upperToChangeSet(s, U).changes, [
    { op: 'rename', path: '/a', to: '/.strata-rename-1-a' },
    { op: 'rename', path: '/b', to: '/a' },
    { op: 'rename', path: '/.strata-rename-1-a', to: '/b' },
  ]);
});

test('change set: deletions first, a deleted tree is one rm, survivors move out before it goes', () => {
  // lower: /gone/{x, keep, sub/y}; final: /gone deleted, keep moved to /kept
  const s = state([
    node(2, 'dir', [[1, 'gone']], []),
    node(3, 'file', [[2, 'x']], []),
    node(4, 'file', [[2, 'keep']], [[1, 'kept']]),
    node(5, 'dir', [[2, 'sub']], []),
    node(6, 'file', [[5, 'y']], []),
    node(7, 'dir', [[1, 'old']], []),
    node(8, 'file', [[7, 'z']], []),
  ]);
  assert.deepEqual(upperToChangeSet(s, U).changes, [
    { op: 'rm', path: '/old', recursive: true },
    { op: 'rename', path: '/gone/keep', to: '/kept' },
    { op: 'rm', path: '/gone', recursive: true },
  ]);
});

test('change set: a renamed folder carries its files; new things inside it come after, parents first', () => {
  const s = state([
    node(2, 'dir', [[1, 'd']], [[1, 'e']]),
    node(3, 'dir', [], [[2, 'new']], { mode: 0o750, uid: 0, gid: 0 }),
    node(4, 'file', [], [[3, 'f']], { content: 'data/4', size: 3, mode: 0o644, uid: 5, gid: 6, mtime: 100, atime: 99 }),
    node(5, 'symlink', [], [[2, 's']], { target: 'new/f', uid: 0, gid: 0, mode: 0o777 }),
    node(6, 'file', [[2, 'm']], [[2, 'm']], { mode: 0o600 }),
    node(7, 'file', [[2, 'c']], [[2, 'c']], {
      content: 'data/7',
      size: 1,
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: 5,
      atime: 5,
    }),
    node(
      8,
      'file',
      [[2, 'h1']],
      [
        [2, 'h1'],
        [3, 'h2'],
      ],
      { xattrs: { 'user.k': Buffer.from('v').toString('base64'), 'user.old': null } },
    ),
  ]);
  assert.deepEqual(upperToChangeSet(s, U, 'msg'), {
    message: 'msg',
    changes: [
      { op: 'rename', path: '/d', to: '/e' },
      { op: 'mkdir', path: '/e/new', mode: 0o750, uid: 0, gid: 0 },
      {
        op: 'put',
        path: '/e/new/f',
        content: { kind: 'file', path: '/upper/data/4' },
        mode: 0o644,
        uid: 5,
        gid: 6,
        mtime: 100,
        atime: 99,
      },
      { op: 'symlink', path: '/e/s', target: 'new/f', uid: 0, gid: 0 },
      { op: 'link', path: '/e/new/h2', target: '/e/h1' },
      {
        op: 'put',
        path: '/e/c',
        content: { kind: 'file', path: '/upper/data/7' },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 5,
        atime: 5,
      },
      { op: 'xattr', path: '/e/h1', name: 'user.k', value: Buffer.from('v') },
      { op: 'xattr', path: '/e/h1', name: 'user.old', value: null },
      { op: 'setattr', path: '/e/m', mode: 0o600 },
    ],
  });
});

test('change set: a new file over an old one is one put; a dir over a file waits for its rm', () => {
  const s = state([
    node(2, 'file', [[1, 'conf']], []),
    node(3, 'file', [], [[1, 'conf']], { content: 'data/3', size: 1, mode: 0o644, uid: 0, gid: 0, mtime: 1, atime: 1 }),
    node(4, 'file', [[1, 'was-file']], []),
    node(5, 'dir', [], [[1, 'was-file']], { mode: 0o755, uid: 0, gid: 0 }),
  ]);
  assert.deepEqual(upperToChangeSet(s, U).changes, [
    { op: 'rm', path: '/was-file' },
    {
      op: 'put',
      path: '/conf',
      content: { kind: 'file', path: '/upper/data/3' },
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: 1,
      atime: 1,
    },
    { op: 'mkdir', path: '/was-file', mode: 0o755, uid: 0, gid: 0 },
  ]);
});

test('a bad state file is a CORRUPT error naming it, never a crash or a read outside the upper folder', () => {
  const good = state([node(2, 'file', [], [[1, 'f']], { content: 'data/2', size: 1, mode: 0o644, uid: 0, gid: 0 })]);
  assert.deepEqual(checkUpperState(JSON.parse(JSON.stringify(good)), 'state.json'), good);
  const bad: Array<[string, unknown]> = [
    ['not a state', { format: 'x', nodes: [] }],
    ['content outside', { ...good, nodes: [{ ...good.nodes[1], content: '../../etc/shadow' }] }],
    ['absolute content', { ...good, nodes: [{ ...good.nodes[1], content: '/etc/shadow' }] }],
    ['a name with a slash', { ...good, nodes: [{ ...good.nodes[1], links: [[1, 'a/b']] }] }],
    ['a dot-dot name', { ...good, nodes: [{ ...good.nodes[1], links: [[1, '..']] }] }],
    ['no id', { ...good, nodes: [{ type: 'file', links: [], lowerLinks: [] }] }],
    ['null', null],
  ];
  for (const [why, x] of bad) {
    assert.throws(
      () => checkUpperState(x, '/u/state.json'),
      (e: Error) => {
        assert.equal((e as { code?: string }).code, 'CORRUPT', why);
        assert.match(e.message, /\/u\/state\.json/, why);
        return true;
      },
    );
  }
  // a node whose parent is missing, or a parent cycle: an error, not a hang
  const orphan = state([node(2, 'file', [], [[9, 'f']], { content: 'data/2', size: 1 })]);
  assert.throws(() => upperToChangeSet(orphan, U), /no place in the tree|cannot order/);
  const cycle = state([node(2, 'dir', [], [[3, 'a']], {}), node(3, 'dir', [], [[2, 'b']], {})]);
  assert.throws(() => upperToChangeSet(cycle, U), /no place in the tree|cannot order/);
});

// --- a real writable mount of a library version ---

const pattern = (seed: string, n: number) => {
  const out = Buffer.alloc(n);
  let h = createHash('sha256').update(seed).digest();
  for (let at = 0; at < n; at += h.length) {
    h.copy(out, at);
    h = createHash('sha256').update(h).digest();
  }
  return out;
};

/** A small ext4 image with a tree the edit script works on. */
async function rwImage(): Promise<string> {
  return fixture('fuse-rw-ext4-v1.img', async (out) => {
    const t = `${out}.tree`;
    const w = (p: string, data: string | Buffer) => {
      mkdirSync(path.dirname(path.join(t, p)), { recursive: true });
      writeFileSync(path.join(t, p), data);
    };
    try {
      w('etc/hostname', 'old-host\n');
      w('etc/conf.d/a.conf', 'a=1\n');
      w('data/big.bin', pattern('big', 3_000_000));
      for (let i = 1; i <= 5; i++) w(`docs/${i}.txt`, `doc ${i}\n`);
      w('links/a-target', 'linked\n');
      spawnSync('ln', [path.join(t, 'links/a-target'), path.join(t, 'links/b-hard')]);
      w('old-dir/sub/file.txt', 'in old dir\n');
      w('old-dir/top.txt', 'top\n');
      w('keep.txt', 'keep\n');
      w('to-delete/x', 'x\n');
      w('to-delete/y/z', 'z\n');
      spawnSync('ln', ['-s', 'etc/hostname', path.join(t, 'sym')]);
      spawnSync('setfattr', ['-n', 'user.orig', '-v', 'one', path.join(t, 'keep.txt')]);
      writeFileSync(out, '');
      truncateSync(out, 64 << 20);
      await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', t, out]);
    } finally {
      rmSync(t, { recursive: true, force: true });
    }
  });
}

/** The edit, run with bash in a folder (the mount, and the plain copy). */
const SCRIPT = `set -e
echo new-host > etc/hostname
echo appended >> docs/1.txt
python3 -c "
f = open('data/big.bin', 'r+b'); f.seek(1000000); f.write(b'X' * 5000); f.truncate(2500000); f.close()"
rm docs/2.txt
mv old-dir new-dir
mkdir -p made/deeper
printf 'made here\\n' > made/deeper/new.txt
ln -s ../etc/hostname made/link-to-hostname
ln links/a-target links/c-hard
chmod 600 docs/3.txt
chown 1234:5678 docs/4.txt
touch -d '2020-01-02T03:04:05Z' docs/5.txt
setfattr -n user.added -v hello keep.txt
mv docs/1.txt docs/one.txt
rm -r to-delete
python3 -c "
import os
open('etc/conf.d/x.tmp', 'w').write('a=2\\n')
os.replace('etc/conf.d/x.tmp', 'etc/conf.d/a.conf')"
`;

function sh(dir: string, script: string): void {
  const r = spawnSync('bash', ['-c', script], { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, `${script}: ${r.stderr}`);
}

const FIELDS: Array<keyof KernelEntry> = ['type', 'mode', 'uid', 'gid', 'size', 'nlink', 'target', 'sha256', 'xattrs'];
function differences(want: Map<string, KernelEntry>, got: Map<string, KernelEntry>, fields = FIELDS): string[] {
  const out: string[] = [];
  for (const [p, k] of want) {
    const o = got.get(p);
    if (!o) {
      out.push(`${p}: missing`);
      continue;
    }
    for (const f of fields) {
      // a directory's size is its file system's business (cp makes lost+found anew, mkfs pre-sizes it)
      if (f === 'size' && k.type === 'dir') continue;
      const a = JSON.stringify(k[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
      const b = JSON.stringify(o[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
      if (a !== b) out.push(`${p}: ${f} want ${a} got ${b}`);
    }
  }
  for (const p of got.keys()) if (!want.has(p)) out.push(`${p}: only in the mount`);
  return out;
}

async function kernelCopy(img: string, to: string): Promise<Map<string, KernelEntry>> {
  const k = mountPoint('rw-kernel');
  await run('mount', ['-o', 'ro,loop', img, k]);
  try {
    const view = treeView(k);
    await run('cp', ['-a', `${k}/.`, to]);
    return view;
  } finally {
    await run('umount', [k]).catch(() => run('umount', ['-l', k]));
    rmSync(k, { recursive: true, force: true });
  }
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('mount --rw: a shell edit shows on the mount as on a plain copy, the version is unchanged, the change set is what the script did', async () => {
  const img = await rwImage();
  const dir = scratch('fuse-rw');
  let m: StrataMount | undefined;
  try {
    const lib = path.join(dir, 'lib');
    const ci = await strata(['checkin', '--library', lib, '--name', 'rw', img]);
    assert.equal(ci.code, 0, ci.stderr);
    const copy = path.join(dir, 'copy');
    mkdirSync(copy);
    const original = await kernelCopy(img, copy);
    const upper = path.join(dir, 'upper');
    m = await strataMount(['--library', lib, 'rw@1', '--rw', '--upper', upper], 'rw');
    const mnt = m.mnt;
    sh(copy, SCRIPT);
    sh(mnt, SCRIPT);
    const want = treeView(copy);
    const got = treeView(mnt);
    // the manifest keeps no record of the root directory itself (its link count)
    const diffs = differences(want, got).filter((d) => !/^\/: nlink /.test(d));
    assert.deepEqual(diffs, [], `${diffs.length} differences`);
    assert.equal(got.get('/docs/5.txt')?.mtimeNs, BigInt(Date.parse('2020-01-02T03:04:05Z')) * 1_000_000n);
    assert.equal(got.get('/links/c-hard')?.ino, got.get('/links/a-target')?.ino, 'a new hard link is the same inode');
    assert.equal(got.get('/links/a-target')?.nlink, 3);
    assert.ok(got.size > 20);

    // the change set, as of now, from the live mount
    const dry = await strata(['commit', mnt, '--dry-run', '--json', '-m', 'edited']);
    assert.equal(dry.code, 0, dry.stderr);
    const cs = JSON.parse(dry.stdout) as { live: boolean; message: string; changes: Change[] };
    assert.equal(cs.live, true);
    assert.equal(cs.message, 'edited');
    const f = (p: string) => readFileSync(path.join(copy, p));
    const st = (p: string) => statSync(path.join(copy, p));
    // what the script did, in the order the contract asks: deletions, renames, new names (parents
    // first), then contents and metadata by path
    const expected: Array<Record<string, unknown>> = [
      { op: 'rm', path: '/docs/2.txt' },
      { op: 'rm', path: '/to-delete', recursive: true },
      { op: 'rename', path: '/docs/1.txt', to: '/docs/one.txt' },
      { op: 'rename', path: '/old-dir', to: '/new-dir' },
      { op: 'put', path: '/etc/conf.d/a.conf', bytes: sha(f('etc/conf.d/a.conf')), mode: 0o644, uid: 0, gid: 0 },
      { op: 'mkdir', path: '/made', mode: st('made').mode & 0o7777, uid: 0, gid: 0 },
      { op: 'mkdir', path: '/made/deeper', mode: st('made/deeper').mode & 0o7777, uid: 0, gid: 0 },
      { op: 'put', path: '/made/deeper/new.txt', bytes: sha(f('made/deeper/new.txt')), mode: 0o644, uid: 0, gid: 0 },
      { op: 'symlink', path: '/made/link-to-hostname', target: '../etc/hostname', uid: 0, gid: 0 },
      { op: 'link', path: '/links/c-hard', target: '/links/a-target' },
      { op: 'put', path: '/data/big.bin', bytes: sha(f('data/big.bin')), mode: 0o644, uid: 0, gid: 0 },
      { op: 'setattr', path: '/docs/3.txt', mode: 0o600 },
      { op: 'setattr', path: '/docs/4.txt', uid: 1234, gid: 5678 },
      { op: 'setattr', path: '/docs/5.txt', mtime: 1577934245, atime: 1577934245 },
      { op: 'put', path: '/docs/one.txt', bytes: sha(f('docs/one.txt')), mode: 0o644, uid: 0, gid: 0 },
      { op: 'put', path: '/etc/hostname', bytes: sha(f('etc/hostname')), mode: 0o644, uid: 0, gid: 0 },
      { op: 'xattr', path: '/keep.txt', name: 'user.added', value: Buffer.from('hello').toString('base64') },
    ];
    const norm = (c: Record<string, unknown>) => {
      const o = { ...c };
      if (c.op === 'put') {
        const content = c.content as { kind: string; path: string };
        assert.equal(content.kind, 'file');
        o.bytes = sha(readFileSync(content.path));
        assert.ok(content.path.startsWith(upper), `${content.path} is in the upper folder`);
        delete o.content;
      }
      if (c.op === 'put' || c.op === 'symlink') {
        // a written file's (a new link's) times are when the script ran: only their presence is checked
        assert.equal(typeof c.mtime, 'number');
        delete o.mtime;
        delete o.atime;
      }
      return o;
    };
    assert.deepEqual(
      cs.changes.map((c) => norm(c as unknown as Record<string, unknown>)),
      expected,
    );

    // nothing past the limit: ENOSPC
    assert.equal(existsSync(path.join(upper, 'state.json')), true);
    await m.stop().then((code) => assert.equal(code, 0, m?.stderr()));
    assert.ok(!isMounted(mnt));

    // after umount: the same change set from the upper folder, and from the old mount point's name
    for (const at of [upper, mnt]) {
      const after = await strata(['commit', at, '--dry-run', '--json', '-m', 'edited']);
      assert.equal(after.code, 0, after.stderr);
      const cs2 = JSON.parse(after.stdout) as { live: boolean; changes: Change[] };
      assert.equal(cs2.live, false);
      assert.deepEqual(
        cs2.changes.map((c) => norm(c as unknown as Record<string, unknown>)),
        expected,
      );
    }

    // commit: a new version whose disk, checked out and mounted by the kernel, is the edited tree
    const c = await strata(['commit', upper, '-m', 'edited', '--json']);
    assert.equal(c.code, 0, c.stderr);
    const made = JSON.parse(c.stdout) as { ref: string; parent: string; changes: number };
    assert.equal(made.parent, 'rw@1');
    assert.equal(made.ref, 'rw@2');
    assert.equal(made.changes, expected.length);
    const disk = path.join(dir, 'edited.raw');
    const co = await strata(['checkout', '--library', lib, made.ref, disk]);
    assert.equal(co.code, 0, co.stderr);
    const fsck = spawnSync('e2fsck', ['-fn', disk], { encoding: 'utf8' });
    assert.equal(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
    const k = mountPoint('rw-edited');
    await run('mount', ['-o', 'ro,loop', disk, k]);
    try {
      const edited = treeView(k);
      const d2 = differences(want, edited);
      assert.deepEqual(d2, [], `${d2.length} differences between the new version and the edited copy`);
      assert.equal(edited.get('/docs/5.txt')?.mtimeNs, BigInt(Date.parse('2020-01-02T03:04:05Z')) * 1_000_000n);
      assert.equal(edited.get('/links/c-hard')?.ino, edited.get('/links/a-target')?.ino);
    } finally {
      await run('umount', [k]).catch(() => run('umount', ['-l', k]));
      rmSync(k, { recursive: true, force: true });
    }

    // the version is unchanged: mounted read-only again it is the image as it was
    m = await strataMount(['--library', lib, 'rw@1'], 'ro-again');
    const again = treeView(m.mnt);
    const back = differences(original, again, [...FIELDS, 'mtimeNs']).filter((d) => !d.startsWith('/: '));
    assert.deepEqual(back, []);
  } finally {
    if (m) await m.stop().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
});

test('mount --rw --max-size: writing past the limit is ENOSPC, the mount keeps serving', async () => {
  const img = await rwImage();
  const dir = scratch('fuse-rw-full');
  const m = await strataMount([img, '--rw', '--upper', path.join(dir, 'upper'), '--max-size', '1M'], 'full');
  try {
    const r = spawnSync('dd', ['if=/dev/zero', `of=${path.join(m.mnt, 'big')}`, 'bs=64k', 'count=32'], {
      encoding: 'utf8',
    });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /No space left on device/);
    // a copy-up of the 3 MB file does not fit either
    const a = spawnSync('bash', ['-c', `echo x >> '${m.mnt}/data/big.bin'`], { encoding: 'utf8' });
    assert.notEqual(a.status, 0);
    assert.match(a.stderr, /No space left on device/);
    // the failed file's bytes are freed with it; then small writes work, and the rest serves
    rmSync(path.join(m.mnt, 'big'));
    writeFileSync(path.join(m.mnt, 'small'), 'small\n');
    assert.equal(readFileSync(path.join(m.mnt, 'small'), 'utf8'), 'small\n');
    assert.equal(readFileSync(path.join(m.mnt, 'etc/hostname'), 'utf8'), 'old-host\n');
    const df = spawnSync('df', ['-B1', '--output=avail', m.mnt], { encoding: 'utf8' });
    assert.equal(df.status, 0, df.stderr);
    assert.ok(Number(df.stdout.split('\n')[1]) <= 1 << 20, `df shows the limit: ${df.stdout}`);
  } finally {
    assert.equal(await m.stop(), 0, m.stderr());
    rmSync(dir, { recursive: true, force: true });
  }
});

test('mount --rw: concurrent first writes to one file copy it up once and keep every write', async () => {
  const img = await rwImage();
  const dir = scratch('fuse-rw-conc');
  const m = await strataMount([img, '--rw', '--upper', path.join(dir, 'upper')], 'conc');
  try {
    // 16 processes write 4 KiB each at their own offset of the 3 MB file at once
    const f = path.join(m.mnt, 'data/big.bin');
    const py = `
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
i = int(sys.argv[2])
os.pwrite(fd, bytes([65 + i]) * 4096, i * 131072 + 7)
os.close(fd)`;
    const jobs = Array.from({ length: 16 }, (_, i) => run('python3', ['-c', py, f, String(i)]));
    await Promise.all(jobs);
    const want = pattern('big', 3_000_000);
    for (let i = 0; i < 16; i++) want.fill(65 + i, i * 131072 + 7, i * 131072 + 7 + 4096);
    const got = readFileSync(f);
    assert.equal(got.length, want.length);
    assert.ok(got.equals(want), 'every write is there, over the version bytes');
  } finally {
    assert.equal(await m.stop(), 0, m.stderr());
    rmSync(dir, { recursive: true, force: true });
  }
});

test('commit twice without a change makes one version; umount --commit; a mounted image file commits onto --parent; unchanged files share chunks', async () => {
  const img = await rwImage();
  const dir = scratch('fuse-rw-twice');
  const lib = path.join(dir, 'lib');
  let m: StrataMount | undefined;
  try {
    assert.equal((await strata(['checkin', '--library', lib, '--name', 'tw', img])).code, 0);
    m = await strataMount(['--library', lib, 'tw@1', '--rw', '--upper', path.join(dir, 'upper')], 'twice');
    const mnt = m.mnt;
    sh(mnt, 'echo new-host > etc/hostname');
    const first = await strata(['commit', mnt, '--json', '-m', 'hostname']);
    assert.equal(first.code, 0, first.stderr);
    assert.equal((JSON.parse(first.stdout) as { ref: string }).ref, 'tw@2');
    // again, nothing changed: no version, and it says which one holds the changes
    const again = await strata(['commit', mnt, '-m', 'hostname']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /nothing changed since tw@2 .*no new version/);
    const againJson = await strata(['commit', mnt, '--json']);
    assert.deepEqual(JSON.parse(againJson.stdout).unchanged, true);
    const versions = () =>
      strata(['versions', 'tw', '--library', lib, '--json']).then((r) =>
        r.stdout
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as { number: number }),
      );
    assert.equal((await versions()).length, 2);

    // one more change: umount --commit makes tw@3 (all changes over tw@1, tw@2 a further parent) and unmounts
    sh(mnt, 'echo more > more.txt');
    const u = await strata(['umount', mnt, '--commit', '--json', '-m', 'more']);
    assert.equal(u.code, 0, u.stderr);
    const made = JSON.parse(u.stdout) as { ref: string; parent: string; changes: number };
    assert.equal(made.ref, 'tw@3');
    assert.equal(made.parent, 'tw@1');
    assert.equal(made.changes, 2);
    assert.notEqual(await m.exited, undefined);
    assert.ok(!isMounted(mnt), 'umount --commit unmounted');
    const { Library } = await import('../../src/library/library.js');
    const { layoutFiles } = await import('../../src/library/library-verbs.js');
    const L = await Library.open(lib);
    try {
      const v3 = await L.catalog.resolve('tw@3');
      assert.deepEqual(
        v3.parents.map((p) => `${p.image}@${p.number}`),
        ['tw@1', 'tw@2'],
      );
      const filesOf = async (ref: string) => {
        const v = await L.catalog.resolve(ref);
        const f = await layoutFiles(L, v, await L.layout(v.manifest));
        return new Map(f.entries.map((e) => [e.path, e]));
      };
      const f1 = await filesOf('tw@1');
      const f3 = await filesOf('tw@3');
      // unchanged files: the same chunks; changed ones: not
      const big = f3.get('/data/big.bin');
      assert.ok(big?.chunks && big.chunks.length > 1);
      assert.deepEqual(big.chunks, f1.get('/data/big.bin')?.chunks);
      assert.deepEqual(f3.get('/keep.txt')?.chunks, f1.get('/keep.txt')?.chunks);
      assert.notDeepEqual(f3.get('/etc/hostname')?.chunks, f1.get('/etc/hostname')?.chunks);
      assert.equal(f3.get('/more.txt')?.size, 5);
    } finally {
      await L.close();
    }
    await m.stop();
    m = undefined;

    // an image file mounted --rw: commit needs the version the changes go onto
    m = await strataMount([img, '--rw', '--upper', path.join(dir, 'upper2')], 'img-rw');
    sh(m.mnt, 'echo from-image > etc/hostname');
    const none = await strata(['commit', m.mnt]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /--parent REF --library DIR/);
    const onto = await strata(['commit', m.mnt, '--parent', 'tw@1', '--library', lib, '--json']);
    assert.equal(onto.code, 0, onto.stderr);
    assert.equal((JSON.parse(onto.stdout) as { ref: string }).ref, 'tw@4');
    const cat = await strata(['cat', '--library', lib, 'tw@4', '/etc/hostname']);
    assert.equal(cat.stdout, 'from-image\n');
  } finally {
    if (m) await m.stop().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
});
