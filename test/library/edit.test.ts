/**
 * Issue 24, part 1: editing a version's files in place (applyChanges, the edit verbs, log).
 * Oracles nobody here wrote: e2fsck -fn on the new disk, the kernel's loop mount walked with
 * lstat/readlink/sha256 (hostTree) against a model tree the test builds with node:fs on the
 * host, getfattr, and a byte comparison of the parent's and the child's checkouts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  cpSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { applyChanges } from '../../src/library/edit/apply.js';
import type { Change } from '../../src/library/edit/changes.js';
import { parseEditScript } from '../../src/library/edit/script.js';
import { Library } from '../../src/library/library.js';
import { StrataError } from '../../src/util/errors.js';
import { strata } from '../helpers/cli.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { placeAt, sgdiskStart, withMount } from '../helpers/fs-cli-tree.js';
import { type HostRecord, hostTree } from '../helpers/host-tree.js';
import { fixture, run } from '../helpers/tools.js';
import { tempDir } from './images.js';

const FS_MIB = 96;
const BLOCK = 4096;

/** The source tree: a big directory (htree), nested dirs, large and small files, links. */
function buildSource(dir: string): void {
  mkdirSync(path.join(dir, 'big'), { recursive: true });
  for (let i = 0; i < 400; i++) writeFileSync(path.join(dir, 'big', `entry-with-a-longish-name-${i}`), `file ${i}\n`);
  mkdirSync(path.join(dir, 'etc', 'app'), { recursive: true });
  writeFileSync(path.join(dir, 'etc', 'hostname'), 'before\n');
  writeFileSync(path.join(dir, 'etc', 'app', 'conf'), 'a=1\n');
  mkdirSync(path.join(dir, 'usr', 'lib', 'deep', 'er'), { recursive: true });
  writeFileSync(path.join(dir, 'usr', 'lib', 'blob'), bytesOf('blob', 3 * 1024 * 1024 + 123));
  writeFileSync(path.join(dir, 'usr', 'lib', 'deep', 'er', 'x'), bytesOf('x', 70000));
  mkdirSync(path.join(dir, 'var', 'old'), { recursive: true });
  for (let i = 0; i < 20; i++) writeFileSync(path.join(dir, 'var', 'old', `log${i}`), bytesOf(`log${i}`, 9000 + i));
  symlinkSync('../usr/lib/blob', path.join(dir, 'etc', 'blob-link'));
  linkSync(path.join(dir, 'etc', 'hostname'), path.join(dir, 'etc', 'hostname.hard'));
}

async function baseImage(): Promise<{ image: string; source: string }> {
  const root = await fixture('edit-v1', async (out) => {
    mkdirSync(out);
    const src = path.join(out, 'src');
    buildSource(src);
    const img = path.join(out, 'disk.img');
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-I', '256', '-d', src, img, `${FS_MIB}M`]);
  });
  return { image: path.join(root, 'disk.img'), source: path.join(root, 'src') };
}

/** Kernel-mounted tree vs model tree: same paths, types, modes, owners, contents, link targets. */
function compareTrees(got: Map<string, HostRecord>, want: Map<string, HostRecord>): void {
  const strip = (m: Map<string, HostRecord>) =>
    new Map(
      [...m]
        .filter(([p]) => p !== '/lost+found' && !p.startsWith('/lost+found/'))
        .map(([p, r]) => [
          p,
          { type: r.type, mode: r.mode, uid: r.uid, gid: r.gid, size: r.size, sha: r.sha, target: r.target },
        ]),
    );
  const g = strip(got);
  const w = strip(want);
  assert.deepEqual([...g.keys()].sort(), [...w.keys()].sort(), 'same paths');
  for (const [p, r] of w) assert.deepEqual(g.get(p), r, p);
}

/** 4 KiB blocks that differ between two files of one size. */
function differingBlocks(a: string, b: string): number {
  assert.equal(statSync(a).size, statSync(b).size);
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const W = 4 * 1024 * 1024;
  const ba = Buffer.alloc(W);
  const bb = Buffer.alloc(W);
  let n = 0;
  try {
    for (let off = 0; ; off += W) {
      const ra = readSync(fa, ba, 0, W, off);
      const rb = readSync(fb, bb, 0, W, off);
      assert.equal(ra, rb);
      if (ra === 0) break;
      for (let o = 0; o < ra; o += BLOCK) if (!ba.subarray(o, o + BLOCK).equals(bb.subarray(o, o + BLOCK))) n++;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return n;
}

const e2fsck = (img: string) => {
  try {
    return { code: 0, out: execFileSync('e2fsck', ['-fn', img], { encoding: 'utf8', stdio: 'pipe' }) };
  } catch (e) {
    const x = e as { status: number; stdout: string; stderr: string };
    return { code: x.status, out: `${x.stdout}${x.stderr}` };
  }
};

describe('edit: applyChanges on ext4', { timeout: 900_000 }, () => {
  let libDir: string;
  let work: string;
  let base: { image: string; source: string };

  before(async () => {
    base = await baseImage();
    libDir = tempDir('lib-edit');
    work = tempDir('edit-work');
    const lib = await Library.open(libDir);
    try {
      await checkin(lib, base.image, { name: 'ed' });
    } finally {
      await lib.close();
    }
  });

  test('a batch of every operation: e2fsck clean, the kernel sees the model tree, blocks outside the change identical', async () => {
    const newConf = bytesOf('conf2', 20000);
    const put2 = path.join(work, 'put2');
    writeFileSync(put2, bytesOf('put2', 1024 * 1024 + 7));
    const changes: Change[] = [
      { op: 'put', path: '/etc/hostname', content: { kind: 'bytes', data: new TextEncoder().encode('after\n') } },
      { op: 'put', path: '/etc/app/conf', content: { kind: 'bytes', data: newConf }, mode: 0o600, uid: 1000, gid: 100 },
      { op: 'mkdir', path: '/opt/new', parents: true },
      { op: 'put', path: '/opt/new/file.bin', content: { kind: 'file', path: put2 } },
      { op: 'rm', path: '/big/entry-with-a-longish-name-7' },
      { op: 'rm', path: '/var/old', recursive: true },
      { op: 'mkdir', path: '/srv/www/html', parents: true, mode: 0o750 },
      { op: 'symlink', path: '/srv/www/current', target: 'html' },
      { op: 'link', path: '/srv/www/html/hard', target: '/etc/app/conf' },
      { op: 'rename', path: '/usr/lib/deep', to: '/srv/deep' },
      { op: 'rename', path: '/big/entry-with-a-longish-name-9', to: '/big/renamed-9' },
      { op: 'setattr', path: '/usr/lib/blob', mode: 0o640, uid: 70000, gid: 5 },
      { op: 'xattr', path: '/etc/hostname', name: 'user.note', value: new TextEncoder().encode('edited') },
      { op: 'put', path: '/big/new-entry', content: { kind: 'bytes', data: new TextEncoder().encode('n\n') } },
    ];
    // the model: the same edits on a copy of the source tree, by the host's own file calls
    // (the source tree's owners are root's, as mkfs.ext4 -d recorded them when run as root)
    const model = path.join(work, 'model');
    cpSync(base.source, model, { recursive: true, verbatimSymlinks: true });
    rmSync(path.join(model, 'etc', 'hostname'));
    writeFileSync(path.join(model, 'etc', 'hostname'), 'after\n');
    chmodSync(path.join(model, 'etc', 'hostname'), 0o644);
    rmSync(path.join(model, 'etc', 'app', 'conf'));
    writeFileSync(path.join(model, 'etc', 'app', 'conf'), newConf);
    chmodSync(path.join(model, 'etc', 'app', 'conf'), 0o600);
    chownSync(path.join(model, 'etc', 'app', 'conf'), 1000, 100);
    mkdirSync(path.join(model, 'opt', 'new'), { recursive: true });
    for (const d of ['opt', 'opt/new']) chmodSync(path.join(model, d), 0o755);
    cpSync(put2, path.join(model, 'opt', 'new', 'file.bin'));
    chmodSync(path.join(model, 'opt', 'new', 'file.bin'), 0o644);
    rmSync(path.join(model, 'big', 'entry-with-a-longish-name-7'));
    rmSync(path.join(model, 'var', 'old'), { recursive: true });
    mkdirSync(path.join(model, 'srv', 'www', 'html'), { recursive: true });
    for (const d of ['srv', 'srv/www']) chmodSync(path.join(model, d), 0o755);
    chmodSync(path.join(model, 'srv', 'www', 'html'), 0o750);
    symlinkSync('html', path.join(model, 'srv', 'www', 'current'));
    linkSync(path.join(model, 'etc', 'app', 'conf'), path.join(model, 'srv', 'www', 'html', 'hard'));
    renameSync(path.join(model, 'usr', 'lib', 'deep'), path.join(model, 'srv', 'deep'));
    renameSync(path.join(model, 'big', 'entry-with-a-longish-name-9'), path.join(model, 'big', 'renamed-9'));
    chmodSync(path.join(model, 'usr', 'lib', 'blob'), 0o640);
    chownSync(path.join(model, 'usr', 'lib', 'blob'), 70000, 5);
    writeFileSync(path.join(model, 'big', 'new-entry'), 'n\n');
    chmodSync(path.join(model, 'big', 'new-entry'), 0o644);

    const lib = await Library.open(libDir);
    let parentRaw: string;
    let childRaw: string;
    let result: Awaited<ReturnType<typeof applyChanges>>;
    try {
      result = await applyChanges(lib, 'ed@1', { changes, message: 'every operation' });
      assert.equal(result.parent, 'ed@1');
      assert.equal(result.ref, 'ed@2');
      assert.equal(result.fsKind, 'ext4');
      const v = await lib.catalog.resolve('ed@2');
      assert.deepEqual(v.parents, [{ image: 'ed', number: 1 }]);
      assert.equal(v.message, 'every operation');
      parentRaw = path.join(work, 'parent.raw');
      childRaw = path.join(work, 'child.raw');
      await checkout(lib, 'ed@1', parentRaw);
      await checkout(lib, 'ed@2', childRaw);
      // dedup against the parent: the 3 MiB blob and every untouched file are no new chunks
      assert.ok(result.newChunks < 40, `new chunks ${result.newChunks}`);
      assert.ok(result.newBytes < 2 * 1024 * 1024, `new bytes ${result.newBytes}`);
    } finally {
      await lib.close();
    }
    const fsck = e2fsck(childRaw);
    assert.equal(fsck.code, 0, fsck.out);
    const want = await hostTree(model);
    await withMount(childRaw, async (mnt) => {
      compareTrees(await hostTree(mnt), want);
      // hard link shares the inode; the moved directory's '..' is its new parent
      assert.equal(statSync(path.join(mnt, 'srv/www/html/hard')).ino, statSync(path.join(mnt, 'etc/app/conf')).ino);
      assert.equal(statSync(path.join(mnt, 'etc/app/conf')).nlink, 2);
      assert.equal(statSync(path.join(mnt, 'srv/deep/..')).ino, statSync(path.join(mnt, 'srv')).ino);
      const attr = await run('getfattr', ['-n', 'user.note', '--only-values', path.join(mnt, 'etc/hostname')]);
      assert.equal(attr, 'edited');
      // the old hard link of /etc/hostname keeps the old content (put replaces the path, not the inode)
      assert.equal(await run('cat', [path.join(mnt, 'etc/hostname.hard')]), 'before\n');
    });
    // blocks outside the change stay: at most the changed files' blocks, the removed ones, and some metadata
    const changedBytes = 6 + 20000 + (1024 * 1024 + 7) + 2 + 20 * 9020 + 10;
    const bound = Math.ceil(changedBytes / BLOCK) + 20 + 64;
    const diff = differingBlocks(parentRaw, childRaw);
    assert.ok(diff > 0, 'something changed');
    assert.ok(diff <= bound, `${diff} differing 4K blocks, bound ${bound}`);
  });

  test('sub-second mtimes survive (ext4 extra time fields, epoch bits past 2038), put -p makes missing parents', async () => {
    const script = path.join(work, 'times.script');
    writeFileSync(path.join(work, 'times-content'), 'deep\n');
    // a script line and the change-set fields: both keep nanoseconds exactly
    writeFileSync(
      script,
      'put -p /new/deep/er/file times-content --mtime 1700000000.123456789\ntouch /etc/app/conf 1.5\n',
    );
    const changes: Change[] = [
      ...parseEditScript(readFileSync(script, 'utf8'), { file: script }),
      // past 2038: the seconds need the extra field's epoch bits
      { op: 'setattr', path: '/usr/lib/blob', mtime: 2 ** 32 + 17, mtimeNsec: 999_999_999 },
      // before 1970
      { op: 'setattr', path: '/etc/hostname', mtime: -100, mtimeNsec: 250_000_000 },
    ];
    const lib = await Library.open(libDir);
    const raw = path.join(work, 'times.raw');
    try {
      const r = await applyChanges(lib, 'ed@1', { changes, message: 'times' });
      await checkout(lib, r.ref, raw);
      // our own reader's manifest keeps them too
      const ls = await strata(['stat', r.ref, '/new/deep/er/file', '--json', '--library', libDir]);
      assert.equal(ls.code, 0, ls.stderr);
      assert.match(ls.stdout, /2023-11-14T22:13:20\.123456789Z/);
    } finally {
      await lib.close();
    }
    const fsck = e2fsck(raw);
    assert.equal(fsck.code, 0, fsck.out);
    // debugfs (libext2fs) reads the extra fields: "mtime: 0x........:........ -- date"
    const dstat = (p: string) => execFileSync('debugfs', ['-R', `stat "${p}"`, raw], { encoding: 'utf8' });
    const mtimeLine = (p: string) => /^ mtime: (0x[0-9a-f]+):([0-9a-f]+)/m.exec(dstat(p));
    const m = mtimeLine('/new/deep/er/file');
    assert.ok(m, dstat('/new/deep/er/file'));
    assert.equal(Number(m[1]), 1700000000);
    assert.equal(Number.parseInt(m[2], 16), 123456789 * 4);
    // the kernel: stat's nanoseconds through a loop mount
    await withMount(raw, async (mnt) => {
      const ns = (p: string) => statSync(path.join(mnt, p), { bigint: true }).mtimeNs;
      assert.equal(ns('new/deep/er/file'), 1700000000123456789n);
      assert.equal(ns('etc/app/conf'), 1500000000n);
      assert.equal(ns('usr/lib/blob'), (2n ** 32n + 17n) * 1_000_000_000n + 999_999_999n);
      assert.equal(ns('etc/hostname'), -100n * 1_000_000_000n + 250_000_000n);
      for (const d of ['new', 'new/deep', 'new/deep/er']) {
        const st = statSync(path.join(mnt, d));
        assert.ok(st.isDirectory(), d);
        assert.equal(st.mode & 0o7777, 0o755, d);
        assert.equal(st.uid, 0, d);
      }
      assert.equal(readFileSync(path.join(mnt, 'new/deep/er/file'), 'utf8'), 'deep\n');
    });
    // without -p a missing parent is still an error naming the change
    const lib2 = await Library.open(libDir);
    try {
      await assert.rejects(
        applyChanges(lib2, 'ed@1', {
          changes: [{ op: 'put', path: '/no/dir/x', content: { kind: 'bytes', data: new Uint8Array(1) } }],
        }),
        /change 1 \(put \/no\/dir\/x\): no directory \/no\/dir/,
      );
    } finally {
      await lib2.close();
    }
  });

  test('ENOSPC: a file larger than the free space is an error and leaves no version', async () => {
    const huge = path.join(work, 'huge');
    const fd = openSync(huge, 'w');
    // real data (not a hole), larger than the whole file system
    const chunk = bytesOf('huge', 1024 * 1024);
    for (let i = 0; i < FS_MIB + 8; i++) writeFileSync(fd, chunk);
    closeSync(fd);
    const lib = await Library.open(libDir);
    try {
      const before = (await lib.catalog.versions('ed')).map((v) => v.number);
      await assert.rejects(
        applyChanges(lib, 'ed@1', { changes: [{ op: 'put', path: '/huge', content: { kind: 'file', path: huge } }] }),
        (e: unknown) =>
          e instanceof StrataError && e.code === 'LIMIT' && /ENOSPC/.test(e.message) && /\/huge/.test(e.message),
      );
      assert.deepEqual(
        (await lib.catalog.versions('ed')).map((v) => v.number),
        before,
      );
      // a bad operation is named before anything runs, and makes no version either
      await assert.rejects(
        applyChanges(lib, 'ed@1', {
          changes: [
            { op: 'mkdir', path: '/a' },
            { op: 'rm', path: '/no/such' },
          ],
        }),
        (e: unknown) =>
          e instanceof StrataError && e.code === 'NOT_FOUND' && /change 2 \(rm \/no\/such\)/.test(e.message),
      );
      await assert.rejects(applyChanges(lib, 'ed@1', { changes: [{ op: 'rm', path: '/etc' }] }), /non-empty directory/);
      assert.deepEqual(
        (await lib.catalog.versions('ed')).map((v) => v.number),
        before,
      );
    } finally {
      await lib.close();
      rmSync(huge, { force: true });
    }
  });

  test('a script with a syntax error names line and column', () => {
    assert.throws(
      () => parseEditScript('mkdir /a\nput /b "unterminated\n', { file: 's.txt' }),
      /s\.txt:2:8: unterminated double quote/,
    );
    assert.throws(
      () => parseEditScript('# c\n\n  frob /x\n', { file: 's.txt' }),
      /s\.txt:3:3: unknown operation 'frob'/,
    );
    assert.throws(() => parseEditScript('chmod 999 /x', { file: 's.txt' }), /s\.txt:1:7: '999' is not an octal mode/);
    assert.throws(() => parseEditScript('rm /x -q', { file: 's.txt' }), /s\.txt:1:7: unknown option -q/);
    assert.throws(() => parseEditScript('mv /x', { file: 's.txt' }), /s\.txt:1:6: mv needs PATH TO/);
    const ok = parseEditScript('put "/a b" ./f --mode 600 # comment\nln -s t /l\nchown :5 /a', { file: '/s/x.txt' });
    assert.deepEqual(ok, [
      { op: 'put', path: '/a b', content: { kind: 'file', path: '/s/f' }, mode: 0o600 },
      { op: 'symlink', path: '/l', target: 't' },
      { op: 'setattr', path: '/a', gid: 5 },
    ]);
  });

  test('mutated scripts and bad change sets: a parse or a USAGE error naming where, nothing else', async () => {
    const good =
      'put "/a b" ./f --mode 600\nrm /x -r\nmkdir /d -p\nln -s t /l\nmv /a /b\nchmod 755 /d\nchown 1:2 /d\ntouch /d 5\nsetxattr /d user.x "v\\n"\nrmxattr /d user.x\n';
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const alphabet = ' \t"\'\\#-/:\nabc0129pmrx';
    for (let k = 0; k < 3000; k++) {
      const chars = [...good];
      for (let m = 0; m < 1 + rnd(4); m++) {
        const at = rnd(chars.length);
        const what = rnd(3);
        if (what === 0) chars.splice(at, 1);
        else if (what === 1) chars.splice(at, 0, alphabet[rnd(alphabet.length)]);
        else chars[at] = alphabet[rnd(alphabet.length)];
      }
      try {
        parseEditScript(chars.join(''), { file: 'm.txt' });
      } catch (e) {
        assert.ok(e instanceof StrataError && e.code === 'USAGE', String(e));
        assert.match(e.message, /^m\.txt:\d+:\d+: /);
      }
    }
    const lib = await Library.open(libDir);
    try {
      for (const [c, re] of [
        [{ op: 'mkdir', path: 'relative' }, /not absolute/],
        [{ op: 'mkdir', path: '/a/../b' }, /holds '\.\.'/],
        [{ op: 'rm', path: '/' }, /root directory/],
        [{ op: 'frob', path: '/x' }, /unknown operation/],
        [{ op: 'setattr', path: '/etc', mode: 0o17777 }, /not 0\.\.07777/],
        [{ op: 'rename', path: '/etc', to: '/etc/app/x' }, /into itself/],
        [{ op: 'link', path: '/l', target: '/etc' }, /is a directory/],
        [{ op: 'put', path: '/etc', content: { kind: 'bytes', data: new Uint8Array(1) } }, /is a directory/],
      ] as Array<[Change, RegExp]>) {
        await assert.rejects(applyChanges(lib, 'ed@1', { changes: [c] }), (e: unknown) => {
          assert.ok(e instanceof StrataError, String(e));
          assert.match(e.message, re);
          return true;
        });
      }
    } finally {
      await lib.close();
    }
  });

  test('a file system Strata cannot write is a clear error', async () => {
    // (FAT is written since edit-fat.test; exFAT is not)
    const img = path.join(work, 'exfat.img');
    await run('truncate', ['-s', '32M', img]);
    await run('mkfs.exfat', [img]);
    const lib = await Library.open(libDir);
    try {
      await checkin(lib, img, { name: 'exfat' });
      await assert.rejects(
        applyChanges(lib, 'exfat', { changes: [{ op: 'mkdir', path: '/x' }] }),
        (e: unknown) =>
          e instanceof StrataError && e.code === 'UNSUPPORTED' && /cannot write exfat yet/.test(e.message),
      );
      assert.equal((await lib.catalog.versions('exfat')).length, 1);
    } finally {
      await lib.close();
    }
  });

  test('a partitioned disk: --part 2 is edited, everything outside that partition stays byte for byte', async () => {
    const disk = await fixture('edit-gpt-v1', async (out) => {
      mkdirSync(out);
      const d = path.join(out, 'disk.img');
      await run('truncate', ['-s', '80M', d]);
      await run('sgdisk', ['-n', '1:2048:+16M', '-t', '1:8300', '-n', '2:0:0', '-t', '2:8300', d]);
      for (const n of [1, 2]) {
        const src = path.join(out, `src${n}`);
        mkdirSync(path.join(src, 'etc'), { recursive: true });
        mkdirSync(path.join(src, 'usr'), { recursive: true });
        writeFileSync(path.join(src, 'etc', 'which'), `partition ${n}\n`);
        const fsimg = path.join(out, `p${n}.img`);
        const start = await sgdiskStart(d, n);
        const end = Number(/Last sector: (\d+)/.exec(await run('sgdisk', ['-i', String(n), d]))?.[1]);
        await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', src, fsimg, `${((end + 1) * 512 - start) >> 10}K`]);
        await placeAt(d, fsimg, start);
        rmSync(fsimg);
      }
    });
    const image = path.join(disk, 'disk.img');
    const start = await sgdiskStart(image, 2);
    const lib = await Library.open(libDir);
    const parentRaw = path.join(work, 'gpt-parent.raw');
    const childRaw = path.join(work, 'gpt-child.raw');
    try {
      await checkin(lib, image, { name: 'gpt' });
      // two OS roots: the default is ambiguous, and says so
      await assert.rejects(
        applyChanges(lib, 'gpt', { changes: [{ op: 'mkdir', path: '/x' }] }),
        /choose one with --part/,
      );
      const r = await applyChanges(
        lib,
        'gpt',
        { changes: [{ op: 'put', path: '/etc/which', content: { kind: 'bytes', data: Buffer.from('edited\n') } }] },
        { address: { part: '2' } },
      );
      assert.equal(r.volume, '2');
      await checkout(lib, 'gpt@1', parentRaw);
      await checkout(lib, r.ref, childRaw);
    } finally {
      await lib.close();
    }
    // outside partition 2 (tables, partition 1): identical
    const a = Buffer.alloc(start);
    const b = Buffer.alloc(start);
    const fa = openSync(parentRaw, 'r');
    const fb = openSync(childRaw, 'r');
    readSync(fa, a, 0, start, 0);
    readSync(fb, b, 0, start, 0);
    closeSync(fa);
    closeSync(fb);
    assert.ok(a.equals(b), 'bytes before partition 2 unchanged');
    const fsck = e2fsck(`${childRaw}?offset=${start}`);
    assert.equal(fsck.code, 0, fsck.out);
    await withMount(
      childRaw,
      async (mnt) => assert.equal(await run('cat', [path.join(mnt, 'etc/which')]), 'edited\n'),
      {
        offset: start,
      },
    );
    await withMount(
      childRaw,
      async (mnt) => assert.equal(await run('cat', [path.join(mnt, 'etc/which')]), 'partition 1\n'),
      {
        offset: await sgdiskStart(image, 1),
      },
    );
    assert.ok(differingBlocks(parentRaw, childRaw) <= 1 + 64);
  });

  test('CLI: put, rm, mkdir, ln -s, chmod, chown, edit --script, log', async () => {
    const env = { STRATA_LIBRARY: libDir };
    const local = path.join(work, 'motd');
    writeFileSync(local, 'hello from the CLI\n');
    const ok = async (args: string[]) => {
      const r = await strata(args, { env });
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      return r;
    };
    const p1 = JSON.parse(
      (await ok(['put', 'ed@1', '/etc/motd', local, '--mode', '640', '-m', 'motd', '--json'])).stdout,
    );
    const n1 = p1.number as number;
    await ok(['mkdir', `ed@${n1}`, '/srv/a/b', '-p']);
    await ok(['ln', '-s', '/etc/motd', `ed@${n1 + 1}`, '/srv/a/motd']);
    await ok(['chmod', '600', `ed@${n1 + 2}`, '/etc/motd']);
    await ok(['chown', '7:8', `ed@${n1 + 3}`, '/etc/motd']);
    await ok(['rm', `ed@${n1 + 4}`, '/big', '-r', '-m', 'no big']);
    const script = path.join(work, 'ops.txt');
    writeFileSync(script, `mkdir /data\nput /data/m motd --mode 444\nmv /data/m /data/n\n`);
    await ok(['edit', `ed@${n1 + 5}`, '--script', script, '-m', 'scripted']);
    const last = n1 + 6;
    const bad = path.join(work, 'bad.txt');
    writeFileSync(bad, 'mkdir /x\nchown nobody /x\n');
    const r = await strata(['edit', `ed@${last}`, '--script', bad], { env });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /bad\.txt:2:7: 'nobody' is not UID/);
    const log = JSON.parse((await ok(['log', 'ed', '--json'])).stdout) as Array<{
      ref: string;
      message: string | null;
      parents: string[];
      changes: { added: number; removed: number } | null;
    }>;
    assert.deepEqual(
      log.map((s) => s.ref),
      [last, last - 1, last - 2, last - 3, last - 4, last - 5, n1, 1].map((n) => `ed@${n}`),
    );
    assert.equal(log[0].message, 'scripted');
    assert.equal(log[0].changes?.added, 2); // /data and /data/n
    assert.equal(log[1].message, 'no big');
    assert.ok((log[1].changes?.removed ?? 0) >= 400);
    assert.equal(log[6].message, 'motd');
    assert.equal(log[7].parents.length, 0);
    const text = (await ok(['log', 'ed'])).stdout;
    assert.match(text, /ed@1 .*\n.*\n\s+\(no parent\)/);
    // one count: each step's is `strata diff`'s own (JSON summary and the printed line)
    for (const [i, s] of log.entries()) {
      if (!s.changes) continue;
      const d = await strata(['diff', s.parents[0], s.ref, '--json', '--library', libDir]);
      assert.deepEqual(s.changes, JSON.parse(d.stdout).files.summary, s.ref);
      if (i > 1) continue;
      const line = /^files: .*$/m.exec((await strata(['diff', s.parents[0], s.ref, '--library', libDir])).stdout)?.[0];
      assert.ok(line && text.includes(`    ${line} vs ${s.parents[0]}`), `${s.ref}: ${line}`);
    }
    // the final version, mounted by the kernel
    const out = path.join(work, 'last.raw');
    const lib = await Library.open(libDir);
    try {
      await checkout(lib, `ed@${last}`, out);
    } finally {
      await lib.close();
    }
    assert.equal(e2fsck(out).code, 0, e2fsck(out).out);
    await withMount(out, async (mnt) => {
      const st = statSync(path.join(mnt, 'etc/motd'));
      assert.equal(st.mode & 0o7777, 0o600);
      assert.equal(st.uid, 7);
      assert.equal(st.gid, 8);
      assert.equal(await run('readlink', [path.join(mnt, 'srv/a/motd')]), '/etc/motd\n');
      assert.equal(await run('cat', [path.join(mnt, 'data/n')]), 'hello from the CLI\n');
      assert.throws(() => statSync(path.join(mnt, 'big')));
      assert.throws(() => statSync(path.join(mnt, 'data/m')));
    });
  });
});
