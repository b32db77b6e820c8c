import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  type BigIntStats,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { CLI, strata } from '../helpers/cli.js';
import {
  FS_BYTES,
  type FsPlacements,
  fsPlacements,
  sfdiskParts,
  sgdiskStart,
  withMount,
} from '../helpers/fs-cli-tree.js';
import { fixture, run, scratch } from '../helpers/tools.js';

/** What the kernel shows for one entry (lstat through a loop mount). */
interface Seen {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  mtimeNs: bigint;
  target?: string;
}

function kind(st: BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return 'unknown';
}

/** Every entry under a mounted tree, keyed by its absolute path inside the file system. */
function kernelView(mnt: string): Map<string, Seen> {
  const out = new Map<string, Seen>();
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(mnt, rel))) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const full = path.join(mnt, r);
      const st = lstatSync(full, { bigint: true });
      const s: Seen = {
        type: kind(st),
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        size: Number(st.size),
        nlink: Number(st.nlink),
        ino: Number(st.ino),
        mtimeNs: st.mtimeNs,
      };
      if (s.type === 'symlink') s.target = readlinkSync(full);
      out.set(`/${r}`, s);
      if (s.type === 'dir') walk(r);
    }
  };
  walk('');
  return out;
}

/** "2024-01-02T03:04:05.123456789Z" -> nanoseconds since the epoch (parsed, not formatted). */
function isoToNs(s: string): bigint {
  const m = /^(.+T\d\d:\d\d:\d\d)\.(\d{9})Z$/.exec(s);
  assert.ok(m, `mtime ${s} is not ISO 8601 UTC with 9-digit nanoseconds`);
  const ms = Date.parse(`${m[1]}Z`);
  assert.ok(Number.isFinite(ms), `unparseable date ${s}`);
  return (BigInt(ms) / 1000n) * 1_000_000_000n + BigInt(m[2]);
}

interface LsJson {
  path: string;
  type: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  ino: number;
  mtime: string;
  target?: string;
}

function parseLines(stdout: string): LsJson[] {
  return stdout
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as LsJson);
}

function checkAgainstKernel(records: LsJson[], oracle: Map<string, Seen>, where: string): void {
  const got = new Map(records.map((r) => [r.path, r]));
  assert.equal(got.size, records.length, `${where}: duplicate paths in ls output`);
  assert.deepEqual([...got.keys()].sort(), [...oracle.keys()].sort(), `${where}: set of paths`);
  for (const [p, k] of oracle) {
    const r = got.get(p)!;
    const mine = {
      type: r.type,
      mode: r.mode,
      uid: r.uid,
      gid: r.gid,
      size: r.size,
      nlink: r.nlink,
      ino: r.ino,
      mtimeNs: isoToNs(r.mtime),
      target: r.target,
    };
    assert.deepEqual(mine, { ...k, target: k.target }, `${where}: ${p}`);
  }
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let fx: FsPlacements;
let oracle: Map<string, Seen>;
const fileSha = new Map<string, string>();
const CAT_FILES = [
  '/big.bin',
  '/sparse.img',
  '/\u65e5\u672c\u8a9e/\u30d5\u30a1\u30a4\u30eb.txt',
  '/hello.txt',
  '/empty',
];

before(async () => {
  fx = await fsPlacements();
  oracle = await withMount(fx.whole, async (mnt) => {
    for (const f of CAT_FILES) fileSha.set(f, sha(readFileSync(path.join(mnt, f))));
    return kernelView(mnt);
  });
});

describe('strata ls', () => {
  test('ls -R --json matches the kernel view: whole disk, GPT, MBR logical, qcow2 (default and explicit address)', async () => {
    const cases: Array<[string, string[]]> = [
      ['whole', [fx.whole]],
      ['gpt default', [fx.gpt]],
      ['gpt --part 2', [fx.gpt, '--part', fx.gptPart]],
      ['mbr --part 6', [fx.mbr, '--part', fx.mbrPart]],
      ['qcow2 default', [fx.qcow2]],
    ];
    for (const [where, args] of cases) {
      const r = await strata(['ls', '-R', '--json', ...args]);
      assert.equal(r.code, 0, `${where}: ${r.stderr}`);
      checkAgainstKernel(parseLines(r.stdout), oracle, where);
    }
  });

  test('-R order is depth-first: every directory is followed by its own subtree', async () => {
    const r = await strata(['ls', '-R', '--json', fx.gpt, '/']);
    assert.equal(r.code, 0, r.stderr);
    const paths = parseLines(r.stdout).map((x) => x.path);
    const again = parseLines((await strata(['ls', '-R', '--json', fx.gpt, '/'])).stdout).map((x) => x.path);
    assert.deepEqual(again, paths, 'stable order between runs');
    for (let i = 0; i < paths.length; i++) {
      const parent = path.posix.dirname(paths[i]);
      if (parent === '/') continue;
      // the parent was listed before, and everything between is inside the parent
      const at = paths.indexOf(parent);
      assert.ok(at >= 0 && at < i, `${paths[i]} listed before its parent`);
      for (let j = at + 1; j < i; j++)
        assert.ok(paths[j].startsWith(`${parent}/`), `${paths[j]} interleaves ${parent}`);
    }
  });

  test('ls of a directory lists its children; ls of a file lists itself; -l looks like ls -l', async () => {
    const d = await strata(['ls', '--json', fx.qcow2, '/dir1']);
    assert.equal(d.code, 0, d.stderr);
    const recs = parseLines(d.stdout);
    const want = [...oracle.keys()].filter((p) => path.posix.dirname(p) === '/dir1').sort();
    assert.deepEqual(recs.map((x) => x.path).sort(), want);
    const f = await strata(['ls', '--json', fx.whole, '/dir1/link-rel']);
    assert.equal(f.code, 0, f.stderr);
    const [one] = parseLines(f.stdout);
    assert.equal(one.target, oracle.get('/dir1/link-rel')!.target);
    const l = await strata(['ls', '-l', fx.whole, '/']);
    assert.equal(l.code, 0, l.stderr);
    const line = l.stdout.split('\n').find((x) => x.endsWith(' setuid.sh'));
    assert.ok(line?.startsWith('-rwsr-xr-x'), `ls -l line for setuid.sh: ${line}`);
    const link = l.stdout.split('\n').find((x) => x.includes(' abs-link -> '));
    assert.ok(link?.startsWith('l') && link.endsWith('-> /etc/passwd'), `ls -l line for abs-link: ${link}`);
    const missing = await strata(['ls', fx.whole, '/no/such/thing']);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /no such file/);
  });
});

describe('strata cat', () => {
  test('sha256 of cat equals the mounted file through every placement', async () => {
    const cases: Array<[string[], string[]]> = [
      [[fx.whole], CAT_FILES],
      [[fx.gpt], ['/sparse.img', CAT_FILES[2]]],
      [
        [fx.mbr, '--part', fx.mbrPart],
        ['/big.bin', '/empty'],
      ],
      [[fx.qcow2], ['/sparse.img', '/hello.txt']],
    ];
    for (const [args, files] of cases) {
      for (const f of files) {
        const r = await strata(['cat', ...args, f]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(sha(r.stdoutBytes), fileSha.get(f), `${args[0]} ${f}`);
      }
    }
  });

  test('cat into a closed pipe stops quietly; cat of a directory is refused', () => {
    const sh = spawnSync(
      'bash',
      [
        '-c',
        `set -o pipefail; node ${JSON.stringify(CLI)} cat ${JSON.stringify(fx.whole)} /sparse.img | head -c 10 >/dev/null`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(sh.status, 0, `exit ${sh.status}: ${sh.stderr}`);
    assert.equal(sh.stderr, '');
    const d = spawnSync(process.execPath, [CLI, 'cat', fx.whole, '/dir1'], { encoding: 'utf8' });
    assert.notEqual(d.status, 0);
    assert.match(d.stderr, /not a regular file/);
  });
});

describe('strata parts', () => {
  test('GPT volumes match sgdisk -i', async () => {
    const r = await strata(['parts', '--json', fx.gpt]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      scheme: string;
      volumes: Array<{ id: string; start: number; size: number; name: string; typeCode: string; content?: string }>;
    };
    assert.equal(j.scheme, 'gpt');
    assert.deepEqual(
      j.volumes.map((v) => v.id),
      ['1', '2'],
    );
    for (const v of j.volumes) {
      const info = await run('sgdisk', ['-i', v.id, fx.gpt]);
      const first = Number(/First sector: (\d+)/.exec(info)![1]);
      const last = Number(/Last sector: (\d+)/.exec(info)![1]);
      const guid = /Partition GUID code: ([0-9A-F-]+)/i.exec(info)![1];
      const name = /Partition name: '(.*)'/.exec(info)![1];
      assert.equal(v.start, first * 512, `start of ${v.id}`);
      assert.equal(v.size, (last - first + 1) * 512, `size of ${v.id}`);
      assert.equal(v.typeCode.toUpperCase(), guid.toUpperCase());
      assert.equal(v.name, name);
    }
    assert.equal(j.volumes[1].content, 'ext4');
    assert.equal(j.volumes[0].content ?? null, null, 'the EFI partition is empty');
  });

  test('MBR volumes (primary, extended, logicals) match sfdisk --json, also through qcow2', async () => {
    const want = await sfdiskParts(fx.mbr);
    for (const img of [fx.mbr, fx.qcow2]) {
      const r = await strata(['parts', '--json', img]);
      assert.equal(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout) as {
        scheme: string;
        volumes: Array<{
          id: string;
          start: number;
          size: number;
          typeCode: string;
          flags: string[];
          content?: string;
        }>;
      };
      assert.equal(j.scheme, 'mbr');
      const got = j.volumes.map((v) => ({
        id: v.id,
        start: v.start,
        size: v.size,
        type: Number.parseInt(v.typeCode, 16),
        boot: v.flags.includes('bootable'),
      }));
      const expect = want.map((p) => ({
        id: /(\d+)$/.exec(p.node)![1],
        start: p.start * 512,
        size: p.size * 512,
        type: Number.parseInt(p.type, 16),
        boot: Boolean(p.bootable),
      }));
      assert.deepEqual(got, expect, img);
      assert.equal(j.volumes.find((v) => v.id === fx.mbrPart)?.content, 'ext4');
    }
  });
});

describe('strata fsinfo and stat', () => {
  test('fsinfo --json matches dumpe2fs -h', async () => {
    const r = await strata(['fsinfo', '--json', fx.mbr, '--part', fx.mbrPart]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    const d = await run('dumpe2fs', ['-h', fx.whole]);
    const field = (k: string) => new RegExp(`^${k}:\\s+(.*)$`, 'm').exec(d)![1].trim();
    const bs = Number(field('Block size'));
    assert.equal(j.kind, 'ext4');
    assert.equal(j.label, field('Filesystem volume name'));
    assert.equal(j.uuid.toLowerCase(), field('Filesystem UUID').toLowerCase());
    assert.equal(j.blockSize, bs);
    assert.equal(j.totalBytes, Number(field('Block count')) * bs);
    assert.equal(j.freeBytes, Number(field('Free blocks')) * bs);
    assert.equal(j.totalInodes, Number(field('Inode count')));
    assert.equal(j.freeInodes, Number(field('Free inodes')));
    for (const f of field('Filesystem features').split(/\s+/)) assert.ok(j.features.includes(f), `feature ${f}`);
    assert.equal(j.totalBytes, FS_BYTES);
  });

  test('stat extents match debugfs blocks, and diskOffset points at the file bytes in the virtual disk', async () => {
    const partStart = await sgdiskStart(fx.gpt, 2);
    const disk = readFileSync(fx.gpt);
    const srcBytes = (p: string) => readFileSync(path.join(fx.src, p));
    for (const f of ['/big.bin', '/sparse.img', '/hello.txt']) {
      const r = await strata(['stat', '--json', fx.gpt, f]);
      assert.equal(r.code, 0, r.stderr);
      const st = JSON.parse(r.stdout);
      const k = oracle.get(f)!;
      assert.equal(st.ino, k.ino);
      assert.equal(st.size, k.size);
      assert.equal(st.mode, k.mode);
      const bs = 4096;
      const mine: number[] = [];
      for (const e of st.extents) {
        assert.equal(e.volumeOffset % bs, 0);
        for (let b = 0; b < Math.ceil(e.length / bs); b++) mine.push(e.volumeOffset / bs + b);
        assert.equal(e.diskOffset, partStart + e.volumeOffset);
        if (e.flags.length === 0) {
          const n = Math.min(e.length, st.size - e.fileOffset);
          const want = srcBytes(f).subarray(e.fileOffset, e.fileOffset + n);
          assert.ok(disk.subarray(e.diskOffset, e.diskOffset + n).equals(want), `${f} bytes at disk ${e.diskOffset}`);
        }
      }
      const dbg = (await run('debugfs', ['-R', `blocks ${f}`, fx.whole]))
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map(Number);
      assert.deepEqual(mine, dbg, `${f} blocks`);
    }
    const x = JSON.parse((await strata(['stat', '--json', fx.whole, '/hello.txt'])).stdout);
    const names = await withMount(fx.whole, async (mnt) =>
      (await run('getfattr', ['-d', '-m', '-', '--absolute-names', path.join(mnt, 'hello.txt')]))
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => l.split('=')[0])
        .sort(),
    );
    assert.deepEqual(x.xattrs, names);
    assert.equal(isoToNs(x.mtime), oracle.get('/hello.txt')!.mtimeNs);
  });

  test('mtimes past 2038 and with nanoseconds come out exact', async () => {
    const r = await strata(['ls', '--json', fx.whole, '/future.txt']);
    const [rec] = parseLines(r.stdout);
    assert.equal(isoToNs(rec.mtime), oracle.get('/future.txt')!.mtimeNs);
    assert.match(rec.mtime, /^2100-01-01T00:00:00\.\d{9}Z$/);
  });
});

describe('default volume choice', () => {
  test('two file systems, no OS root: USAGE error listing the candidates; --part picks one', async () => {
    const img = await fixture('fs-cli-ambiguous-v1.img', async (out) => {
      await run('truncate', ['-s', `${2 * FS_BYTES + (4 << 20)}`, out]);
      await run('sgdisk', ['-n', `1:2048:+${FS_BYTES >> 10}K`, '-n', '2:0:0', out]);
      for (const n of [1, 2]) {
        await run('dd', [
          `if=${fx.whole}`,
          `of=${out}`,
          'bs=1M',
          `seek=${await sgdiskStart(out, n)}`,
          'oflag=seek_bytes',
          'conv=notrunc,sparse',
          'status=none',
        ]);
      }
    });
    const r = await strata(['ls', img]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /--part/);
    assert.match(r.stderr, /\b1 \(.*ext4/);
    assert.match(r.stderr, /\b2 \(.*ext4/);
    const ok = await strata(['ls', '--json', img, '--part', '2', '/dir1']);
    assert.equal(ok.code, 0, ok.stderr);
    const bad = await strata(['ls', img, '--part', '7']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /no partition '7'/);
  });

  test('two file systems, one holds /etc and /usr: that one is the default', async () => {
    const img = await fixture('fs-cli-osroot-v1.img', async (out) => {
      const tree = scratch('osroot');
      try {
        mkdirSync(`${tree}/etc`);
        mkdirSync(`${tree}/usr/bin`, { recursive: true });
        writeFileSync(`${tree}/etc/os-release`, 'ID=strata-test\n');
        const fsImg = `${out}.fs`;
        await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', tree, fsImg, '8M']);
        await run('truncate', ['-s', `${FS_BYTES + (12 << 20)}`, out]);
        await run('sgdisk', ['-n', `1:2048:+${FS_BYTES >> 10}K`, '-n', '2:0:0', out]);
        await run('dd', [
          `if=${fx.whole}`,
          `of=${out}`,
          'bs=1M',
          `seek=${await sgdiskStart(out, 1)}`,
          'oflag=seek_bytes',
          'conv=notrunc,sparse',
          'status=none',
        ]);
        await run('dd', [
          `if=${fsImg}`,
          `of=${out}`,
          'bs=1M',
          `seek=${await sgdiskStart(out, 2)}`,
          'oflag=seek_bytes',
          'conv=notrunc,sparse',
          'status=none',
        ]);
        rmSync(fsImg);
      } finally {
        rmSync(tree, { recursive: true, force: true });
      }
    });
    const r = await strata(['cat', img, '/etc/os-release']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'ID=strata-test\n');
    const p1 = await strata(['cat', img, '--part', '1', '/hello.txt']);
    assert.equal(p1.code, 0, p1.stderr);
    assert.equal(sha(p1.stdoutBytes), fileSha.get('/hello.txt'));
  });
});

describe('strata extract (CLI)', () => {
  test('extract a subtree from the qcow2 image matches the source tree', async () => {
    const dest = path.join(scratch('cli-extract'), 'out');
    try {
      const r = await strata(['extract', '--json', fx.qcow2, '/dir1', dest]);
      assert.equal(r.code, 0, r.stderr);
      const sum = JSON.parse(r.stdout);
      assert.equal(sum.skipped, 0, r.stderr);
      assert.equal(readFileSync(path.join(dest, 'dir2/dir3/deep.txt'), 'utf8'), 'deep\n');
      assert.equal(readlinkSync(path.join(dest, 'link-rel')), '../hello.txt');
      assert.equal(sha(readFileSync(path.join(dest, 'hard-b'))), sha(readFileSync(path.join(fx.src, 'dir1/hard-b'))));
      const st = lstatSync(path.join(dest, 'link-rel'), { bigint: true });
      assert.equal(st.mtimeNs / 1000n, oracle.get('/dir1/link-rel')!.mtimeNs / 1000n, 'symlink mtime (lutimes)');
      assert.equal(Number(st.uid), 1234);
    } finally {
      rmSync(path.dirname(dest), { recursive: true, force: true });
    }
  });
});

describe('LVM address (--lv VG/LV)', () => {
  test('--lv reads the file system inside a logical volume; extents map to the disk bytes the LVM tools report', async () => {
    const { gptDisk, lvRanges } = await import('../helpers/volume-images.js');
    const g = await gptDisk();
    const [range] = lvRanges(g.oracle, 'gvg', 'data');
    const info = await strata(['fsinfo', '--json', g.disk, '--lv', 'gvg/data']);
    assert.equal(info.code, 0, info.stderr);
    const fi = JSON.parse(info.stdout);
    assert.equal(fi.kind, 'ext2');
    assert.equal(fi.label, 'inlv');
    // the root directory's blocks, as debugfs sees them in a copy of the LV's bytes
    const lvCopy = path.join(scratch('lv-copy'), 'lv.img');
    try {
      await run('dd', [
        `if=${g.disk}`,
        `of=${lvCopy}`,
        'bs=64K',
        `skip=${range.diskOffset}`,
        `count=${range.length}`,
        'iflag=skip_bytes,count_bytes',
        'status=none',
      ]);
      const blocks = (await run('debugfs', ['-R', 'blocks /', lvCopy])).trim().split(/\s+/).map(Number);
      const st = await strata(['stat', '--json', g.disk, '--lv', 'gvg/data', '/']);
      assert.equal(st.code, 0, st.stderr);
      const j = JSON.parse(st.stdout);
      const mine: number[] = [];
      for (const e of j.extents) {
        for (let b = 0; b < Math.ceil(e.length / fi.blockSize); b++) mine.push(e.volumeOffset / fi.blockSize + b);
        if (e.diskOffset !== null) assert.equal(e.diskOffset, range.diskOffset + e.volumeOffset);
      }
      assert.deepEqual(mine, blocks);
    } finally {
      rmSync(path.dirname(lvCopy), { recursive: true, force: true });
    }
    // vfat, ext4 and the LV's ext2 all hold file systems, none an OS root: the default is refused
    const amb = await strata(['ls', g.disk]);
    assert.notEqual(amb.code, 0);
    assert.match(amb.stderr, /gvg\/data \(/);
    assert.match(amb.stderr, /\b2 \(.*ext4/);
  });
});
