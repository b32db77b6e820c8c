/**
 * The layers above the file system on btrfs, through the built CLI and with no btrfs code of
 * their own: ls, cat, stat, fsinfo, extract, blockmap, checkin (dedup against ext4 of the same
 * tree), search, inspect (a Fedora-like root in subvolume @ with /home in @home, by fstab's
 * subvol=), diff (a snapshot against its source) and `strata nbd`; and `--subvol NAME|ID`.
 * Oracles: the kernel's loop mounts (with subvol= / subvolid=), btrfs inspect-internal
 * logical-resolve and dump-tree, btrfs check, rpm -qa, qemu-img compare.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage } from '../../src/formats/open.js';
import { withOsTrees } from '../../src/inspect/inspect.js';
import { discoverVolumes } from '../../src/volumes/discover.js';
import { btrfsImage, FEDORA_HOME, fedoraBtrfsFixture } from '../helpers/btrfs-image.js';
import { jsonLines, strata } from '../helpers/cli.js';
import { extImage, kernelView, kernelViewCached } from '../helpers/ext-tree.js';
import { qemuCompare } from '../helpers/qemu-oracles.js';
import { ROOT, run, scratch, unmount } from '../helpers/tools.js';

const MiB = 1 << 20;
const SLOT = 2 ** 36;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Seen {
  type: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  ino: number;
  target?: string;
  sha256?: string;
}

/** Mount `img` read-only with extra options (subvol=, subvolid=), walk it with lstat/readdir, unmount. */
async function mountedWalk(img: string, options: string): Promise<Map<string, Seen>> {
  const mnt = scratch('btrfs-cli-mnt');
  mkdirSync(mnt, { recursive: true });
  await run('mount', ['-o', `ro,loop,${options}`, img, mnt]);
  const out = new Map<string, Seen>();
  try {
    const walk = (rel: string) => {
      for (const name of readdirSync(path.join(mnt, rel))) {
        const p = `${rel}/${name}`;
        const st = lstatSync(path.join(mnt, p));
        const type = st.isFile()
          ? 'file'
          : st.isDirectory()
            ? 'dir'
            : st.isSymbolicLink()
              ? 'symlink'
              : st.isCharacterDevice()
                ? 'char'
                : st.isBlockDevice()
                  ? 'block'
                  : st.isFIFO()
                    ? 'fifo'
                    : 'socket';
        const e: Seen = {
          type,
          size: st.size,
          mode: st.mode & 0o7777,
          uid: st.uid,
          gid: st.gid,
          nlink: st.nlink,
          ino: st.ino,
        };
        if (type === 'symlink') e.target = readlinkSync(path.join(mnt, p));
        if (type === 'file' && st.size <= 64 * MiB) e.sha256 = sha(readFileSync(path.join(mnt, p)));
        out.set(p, e);
        if (type === 'dir') walk(p);
      }
    };
    walk('');
  } finally {
    await unmount(mnt);
    rmSync(mnt, { recursive: true, force: true });
  }
  return out;
}

/** `strata ls -R --json` records as the kernel walk's lines (ino within its tree: the kernel numbers per subvolume). */
function lsLines(stdout: string): string[] {
  return jsonLines<{
    path: string;
    type: string;
    size: number;
    mode: number;
    uid: number;
    gid: number;
    nlink: number;
    ino: number;
    target?: string;
  }>(stdout)
    .map(
      (x) => `${x.path} ${x.type} ${x.size} ${x.mode} ${x.uid} ${x.gid} ${x.nlink} ${x.ino % SLOT} ${x.target ?? ''}`,
    )
    .sort();
}

const seenLines = (m: Map<string, Seen>) =>
  [...m]
    .map(([p, k]) => `${p} ${k.type} ${k.size} ${k.mode} ${k.uid} ${k.gid} ${k.nlink} ${k.ino} ${k.target ?? ''}`)
    .sort();

/** The chunk map as `btrfs inspect-internal dump-tree -t chunk` prints it (one stripe each for data). */
async function dumpChunks(img: string): Promise<Array<{ logical: number; length: number; stripes: number[] }>> {
  const text = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'chunk', img]);
  const out: Array<{ logical: number; length: number; stripes: number[] }> = [];
  const re =
    /key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)[^\n]*\n\s*length (\d+)[\s\S]*?num_stripes (\d+)[^\n]*\n((?:\s*stripe \d+ devid \d+ offset \d+\n\s*dev_uuid [^\n]*\n)+)/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    out.push({
      logical: Number(m[1]),
      length: Number(m[2]),
      stripes: [...m[4].matchAll(/offset (\d+)/g)].map((x) => Number(x[1])),
    });
  }
  assert.ok(out.length >= 3, 'dump-tree lists chunks');
  return out;
}

/** Start `strata nbd ARGS --json --port 0`; its exports and a stop function. */
async function strataNbd(args: string[]) {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'dist/cli/strata.cjs'), 'nbd', '--port', '0', '--json', ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const listening = await new Promise<{ exports: Array<{ uri: string; name: string }> }>((resolve, reject) => {
    child.stdout.on('data', (c) => {
      out += c;
      try {
        resolve(JSON.parse(out));
      } catch {}
    });
    exited.then(() => reject(new Error(`strata nbd exited: ${err}`)));
  });
  return {
    exports: listening.exports,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

describe('strata on btrfs', () => {
  test('ls -R --json matches the kernel walk; cat matches its hashes; stat shows encoded and shared extents; fsinfo', async () => {
    const img = await btrfsImage();
    const kernel = await kernelViewCached(img);
    const r = await strata(['ls', '-R', '--json', img, '/']);
    assert.equal(r.code, 0, r.stderr);
    const want = [...kernel.values()]
      .filter((k) => k.path !== '/')
      .map((k) => `${k.path} ${k.type} ${k.size} ${k.mode} ${k.uid} ${k.gid} ${k.nlink} ${k.ino} ${k.target ?? ''}`)
      .sort();
    assert.deepEqual(lsLines(r.stdout), want);
    for (const p of [
      '/files/size-1500000',
      '/reflinked',
      '/compress-zstd/text',
      '/compress-lzo/small',
      '/data-snap/payload',
      '/@home/nested/deep-file',
    ]) {
      const c = await strata(['cat', img, p]);
      assert.equal(c.code, 0, c.stderr);
      assert.equal(sha(c.stdoutBytes), kernel.get(p)!.sha256, p);
    }
    const st = await strata(['stat', '--json', img, '/compress-zlib/text']);
    assert.equal(st.code, 0, st.stderr);
    const ex = JSON.parse(st.stdout).extents as Array<{ flags: string[] }>;
    assert.ok(ex.length > 20 && ex.slice(0, -1).every((e) => e.flags.includes('encoded:zlib')), JSON.stringify(ex[0]));
    const rl = await strata(['stat', '--json', img, '/reflinked']);
    assert.ok((JSON.parse(rl.stdout).extents as Array<{ flags: string[] }>).every((e) => e.flags.includes('shared')));
    const parts = await strata(['parts', '--json', img]);
    assert.equal(JSON.parse(parts.stdout).volumes[0].content, 'btrfs');
    const info = await strata(['fsinfo', '--json', img]);
    assert.equal(info.code, 0, info.stderr);
    const fi = JSON.parse(info.stdout);
    assert.equal(fi.kind, 'btrfs');
    assert.deepEqual(fi.warnings, []);
  });

  test('--subvol NAME|ID presents that subvolume as / (the kernel mounted with subvol= / subvolid= agrees); bad ones are errors', async () => {
    const img = await btrfsImage();
    const home = await strata(['ls', '-R', '--json', '--subvol', '@home', img, '/']);
    assert.equal(home.code, 0, home.stderr);
    assert.deepEqual(lsLines(home.stdout), seenLines(await mountedWalk(img, 'subvol=@home')));
    // the id as the kernel's own listing gives it
    const mnt = scratch('btrfs-cli-list');
    mkdirSync(mnt, { recursive: true });
    await run('mount', ['-o', 'ro,loop', img, mnt]);
    let list: string;
    try {
      list = await run('btrfs', ['subvolume', 'list', mnt]);
    } finally {
      await unmount(mnt);
      rmSync(mnt, { recursive: true, force: true });
    }
    const id = /^ID (\d+) .* path data-snap$/m.exec(list)?.[1];
    assert.ok(id, list);
    const snap = await strata(['ls', '-R', '--json', '--subvol', id, img]);
    assert.equal(snap.code, 0, snap.stderr);
    const kernelSnap = await mountedWalk(img, `subvolid=${id}`);
    assert.deepEqual(lsLines(snap.stdout), seenLines(kernelSnap));
    const cat = await strata(['cat', '--subvol', '/@home/nested/', img, '/deep-file']);
    assert.equal(cat.stdout, 'in a nested subvolume\n');
    const fi = await strata(['fsinfo', '--json', '--subvol', 'data', img]);
    assert.equal(JSON.parse(fi.stdout).extra.subvolume, Number(/^ID (\d+) .* path data$/m.exec(list)?.[1]));
    const bad = await strata(['ls', '--subvol', 'nope', img]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /no subvolume "nope".*@home/);
    const ext = await extImage({
      name: 'ext4-4k',
      mkfs: 'mkfs.ext4',
      args: ['-b', '4096', '-N', '30000'],
      size: 160 * MiB,
    });
    const onExt = await strata(['ls', '--subvol', '@', ext]);
    assert.notEqual(onExt.code, 0);
    assert.match(onExt.stderr, /--subvol does not apply to ext /);
  });

  test('extract copies the tree the way the kernel shows it (subvolumes and snapshots as directories)', async () => {
    const img = await btrfsImage();
    const kernel = await kernelViewCached(img);
    const dest = path.join(scratch('btrfs-extract'), 'out');
    try {
      const r = await strata(['extract', '--json', img, '/', dest]);
      assert.equal(r.code, 0, r.stderr);
      let checked = 0;
      for (const k of kernel.values()) {
        if (k.path === '/' || k.type === 'socket') continue;
        const p = path.join(dest, k.path);
        const st = lstatSync(p, { bigint: true });
        assert.equal(Number(st.mode & 0o7777n), k.mode, `${k.path}: mode`);
        assert.equal(Number(st.uid), k.uid, `${k.path}: uid`);
        assert.equal(st.mtimeNs / 1000n, k.mtimeNs / 1000n, `${k.path}: mtime`);
        if (k.type === 'symlink') assert.equal(readlinkSync(p), k.target);
        if (k.type === 'file' && k.sha256 && k.size < 64 * MiB) {
          assert.equal(sha(readFileSync(p)), k.sha256, k.path);
          checked++;
        }
      }
      assert.ok(checked > 100);
    } finally {
      rmSync(path.dirname(dest), { recursive: true, force: true });
    }
  });

  test('blockmap: the kinds of a btrfs disk, shared extents without overlap warnings, file samples as logical-resolve says', async () => {
    const img = await btrfsImage();
    const r = await strata(['blockmap', '--json', img]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /claimed by/, 'reflinked and snapshot extents are shared, not overlaps');
    const recs = jsonLines<{
      start: number;
      length: number;
      kind: string;
      path?: string;
      inode?: number;
      fileOffset?: number;
    }>(r.stdout);
    for (const k of ['superblock', 'reserved', 'file', 'free'])
      assert.ok(
        recs.some((x) => x.kind === k),
        k,
      );
    const chunks = await dumpChunks(img);
    const files = recs.filter((x) => x.kind === 'file' && x.path);
    assert.ok(files.length > 30);
    const sample = files.filter((_, i) => i % Math.ceil(files.length / 25) === 0);
    const mnt = scratch('btrfs-cli-lr');
    mkdirSync(mnt, { recursive: true });
    await run('mount', ['-o', 'ro,loop', img, mnt]);
    try {
      for (const f of sample) {
        const c = chunks.find((x) => x.stripes.some((s) => f.start >= s && f.start < s + x.length));
        assert.ok(c, `${f.start} is in a chunk`);
        const logical = c.logical + f.start - c.stripes[0];
        const out = await run('btrfs', ['inspect-internal', 'logical-resolve', String(logical), mnt]).catch(
          (e: Error) => e.message,
        );
        const paths = out
          .split('\n')
          .filter((l) => l.startsWith(mnt))
          .map((l) => l.slice(mnt.length));
        // files of subvolumes below the top level: "inode N subvol S could not be accessed"
        const inSub = [...out.matchAll(/inode (\d+) subvol (\S+) could not/g)].map((m) => `${m[2]}:${m[1]}`);
        const top = f.path!.split('/')[1];
        const mine = `${top}:${(f.inode ?? 0) % SLOT}`;
        assert.ok(paths.includes(f.path!) || inSub.includes(mine), `${f.path} at ${f.start}: ${out}`);
        // whatis of the same byte answers from the same map
        const w = await strata(['whatis', '--json', img, String(f.start)]);
        assert.equal(w.code, 0, w.stderr);
        assert.equal(jsonLines<{ path?: string }>(w.stdout)[0]?.path, f.path);
      }
    } finally {
      await unmount(mnt);
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  test('checkin: file data cut by file dedups between ext4 and btrfs images of the same tree; search finds btrfs files', async (t) => {
    const ext = await extImage({
      name: 'ext4-4k',
      mkfs: 'mkfs.ext4',
      args: ['-b', '4096', '-N', '30000'],
      size: 160 * MiB,
    });
    const img = await btrfsImage();
    const kernel = await kernelViewCached(img);
    const lib = scratch('btrfs-lib');
    try {
      const a = await strata(['checkin', '--json', '--library', lib, '--name', 'ext', ext]);
      assert.equal(a.code, 0, a.stderr);
      const b = await strata(['checkin', '--json', '--library', lib, '--name', 'btrfs', img]);
      assert.equal(b.code, 0, b.stderr);
      const x = JSON.parse(b.stdout);
      assert.deepEqual(x.warnings, []);
      assert.equal(x.volumes[0].fs.kind, 'btrfs');
      const data = x.volumes[0].fs.fileDataBytes as number;
      // the btrfs-only extras (compressed files, subvolumes, the snapshot) may be new; the shared tree must dedup
      t.diagnostic(
        `ext4 then btrfs of the same tree: btrfs stored ${x.newBytes} new bytes for ${data} bytes of file data`,
      );
      assert.ok(x.newBytes < data / 2, `new ${x.newBytes} of ${data} file bytes`);
      const s = await strata(['search', '--json', '--library', lib, '--path', '/compress-*/text']);
      assert.equal(s.code, 0, s.stderr);
      const hits = jsonLines<{ ref: string; paths: Array<{ path: string; digest: string }> }>(s.stdout);
      assert.deepEqual(
        hits.map((h) => h.ref),
        ['btrfs@1'],
      );
      const found = new Map(hits[0].paths.map((p) => [p.path, p.digest]));
      for (const alg of ['zstd', 'zlib', 'lzo']) {
        assert.equal(found.get(`/compress-${alg}/text`), kernel.get(`/compress-${alg}/text`)?.sha256, alg);
      }
      const again = await strata(['checkin', '--json', '--library', lib, '--name', 'btrfs', img]);
      assert.equal(JSON.parse(again.stdout).newChunks, 0, 'a second check-in adds nothing');
      // the version read back through `strata ls` of the stored manifest: the same tree
      const ls = await strata(['ls', '-R', '--json', '--library', lib, 'btrfs', '/']);
      assert.equal(ls.code, 0, ls.stderr);
      assert.deepEqual(
        jsonLines<{ path: string }>(ls.stdout)
          .map((e) => e.path)
          .sort(),
        [...kernel.keys()].filter((p) => p !== '/').sort(),
      );
    } finally {
      rmSync(lib, { recursive: true, force: true });
    }
  });

  test('strata nbd: the image and its check-in served; qemu-img compare, btrfs check and the kernel agree', async () => {
    const img = await btrfsImage();
    const kernel = await kernelViewCached(img);
    const dir = scratch('btrfs-nbd');
    const lib = path.join(dir, 'lib');
    try {
      const file = await strataNbd([img]);
      try {
        await qemuCompare(img, 'raw', file.exports[0].uri, 'raw');
      } finally {
        await file.stop();
      }
      const ci = await strata(['checkin', '--json', '--library', lib, '--name', 'b', img]);
      assert.equal(ci.code, 0, ci.stderr);
      // a check-in keeps only what btrfs allocates: read back over NBD, the file system must be whole
      const version = await strataNbd(['--library', lib, 'b@1']);
      const raw = path.join(dir, 'back.raw');
      try {
        await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', version.exports[0].uri, raw]);
      } finally {
        await version.stop();
      }
      await run('btrfs', ['check', '--readonly', '--check-data-csum', raw]);
      const back = await kernelView(raw);
      const line = (k: { path: string; type: string; size: number; mode: number; sha256?: string; target?: string }) =>
        `${k.path} ${k.type} ${k.size} ${k.mode} ${k.sha256 ?? ''} ${k.target ?? ''}`;
      assert.deepEqual([...back.values()].map(line).sort(), [...kernel.values()].map(line).sort());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('diff: a snapshot against its source (--subvol, --subvol-b) lists what the kernel mounts show', async () => {
    const img = await btrfsImage();
    const a = await mountedWalk(img, 'subvol=data');
    const b = await mountedWalk(img, 'subvol=data-snap');
    const r = await strata(['diff', '--json', '--subvol', 'data', '--subvol-b', 'data-snap', img, img]);
    assert.equal(r.code, 1, r.stderr);
    const d = JSON.parse(r.stdout).files as {
      added: Array<{ path: string }>;
      removed: Array<{ path: string }>;
      changed: Array<{ path: string }>;
    };
    const names = (xs: Array<{ path: string }>) => xs.map((x) => x.path).sort();
    assert.deepEqual(names(d.added), [...b.keys()].filter((p) => !a.has(p)).sort());
    assert.deepEqual(names(d.removed), [...a.keys()].filter((p) => !b.has(p)).sort());
    assert.deepEqual(names(d.removed), ['/after-snapshot']);
    const changed = [...a.keys()].filter((p) => b.has(p) && a.get(p)?.sha256 !== b.get(p)?.sha256);
    for (const p of changed) assert.ok(names(d.changed).includes(p), p);
    const same = await strata(['diff', '--json', '--subvol', 'data-snap', img, img]);
    assert.equal(same.code, 0, same.stderr);
  });

  test('inspect: a Fedora-like root in subvolume @ with /home in @home, as its fstab (subvol=) mounts them', async () => {
    const dir = await fedoraBtrfsFixture();
    const img = path.join(dir, 'fedora.img');
    const qa = (
      await run('rpm', [
        '--root',
        path.join(dir, 'tree'),
        '--dbpath',
        '/var/lib/rpm',
        '-qa',
        '--qf',
        '%{NAME}|%{VERSION}|%{RELEASE}\\n',
      ])
    )
      .trim()
      .split('\n')
      .sort();
    const r = await strata(['inspect', '--json', img]);
    assert.equal(r.code, 0, r.stderr);
    const roots = jsonLines<{
      root: string;
      subvolume?: string;
      distro: string;
      hostname: string;
      packageFormat: string;
      packages: Array<{ name: string; version: string; release: string }>;
      users: Array<{ name: string; home: string }>;
      mountpoints: Record<string, { device: string; fstype?: string; volume?: string; subvol?: string }>;
      warnings: string[];
    }>(r.stdout);
    // the read-only snapshot @snapshots/1 is a root too, but its fstab names @ at /: not counted
    assert.equal(roots.length, 1, JSON.stringify(roots.map((x) => x.subvolume)));
    const os = roots[0];
    assert.equal(os.subvolume, '@');
    assert.equal(os.distro, 'fedora');
    assert.equal(os.hostname, 'fedora-btrfs');
    assert.equal(os.packageFormat, 'rpm');
    assert.deepEqual(os.packages.map((p) => `${p.name}|${p.version}|${p.release}`).sort(), qa);
    assert.deepEqual(
      os.users.map((u) => `${u.name} ${u.home}`),
      ['root /root', 'alice /home/alice', 'bob /home/bob'],
    );
    assert.equal(os.mountpoints['/home']?.subvol, '@home');
    assert.equal(os.mountpoints['/home']?.volume, '');
    assert.equal(os.mountpoints['/']?.subvol, '@');
    assert.deepEqual(os.warnings, []);
    // the assembled tree reads /home from @home (the kernel, mounted with subvol=@home, holds the same)
    const kernelHome = await mountedWalk(img, 'subvol=@home');
    const disk = await openImage(img);
    try {
      const { volumes } = await discoverVolumes(disk);
      await withOsTrees(volumes, img, async (trees) => {
        assert.equal(trees.length, 1);
        for (const [p, text] of Object.entries(FEDORA_HOME)) {
          assert.equal(kernelHome.get(`/${p}`)?.sha256, sha(Buffer.from(text)), `kernel: ${p}`);
          assert.equal(await trees[0].tree.readText(`/home/${p}`, 4096), text, p);
        }
        assert.equal(await trees[0].tree.readText('/etc/hostname', 4096), 'fedora-btrfs\n');
      });
    } finally {
      await closeChain(disk);
    }
    const human = await strata(['inspect', img]);
    assert.match(human.stdout, /root: +\(whole disk\) \(btrfs subvolume @\)/);
    assert.match(human.stdout, /mount: +\/home <- UUID=\S+ subvol=@home/);
  });

  test('search: a checked-in Fedora-like btrfs image is found by OS, package and user', async () => {
    const dir = await fedoraBtrfsFixture();
    const img = path.join(dir, 'fedora.img');
    const lib = scratch('btrfs-search-lib');
    try {
      const ci = await strata(['checkin', '--json', '--library', lib, '--name', 'fedora', img]);
      assert.equal(ci.code, 0, ci.stderr);
      for (const q of [
        ['--os', 'fedora'],
        ['--package', 'strata-btrfs-test>=2.0'],
        ['--user', 'bob'],
        ['--path', '/@home/alice/notes/todo.txt'],
      ]) {
        const s = await strata(['search', '--json', '--library', lib, ...q]);
        assert.equal(s.code, 0, `${q.join(' ')}: ${s.stderr}`);
        assert.deepEqual(
          jsonLines<{ image: string }>(s.stdout).map((h) => h.image),
          ['fedora'],
          q.join(' '),
        );
      }
      const none = await strata(['search', '--json', '--library', lib, '--package', 'strata-btrfs-test>=2.1']);
      assert.equal(none.code, 1);
    } finally {
      rmSync(lib, { recursive: true, force: true });
    }
  });
});
