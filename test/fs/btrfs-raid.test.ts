/**
 * btrfs over several devices (issue 19): RAID1, RAID0, RAID10, RAID5, RAID1C3, RAID1C4 and
 * RAID6 file systems made by mkfs.btrfs over sparse files (loop devices, as root) and
 * populated through the kernel's mount of all of them (device=). Read
 * with every device given, in any order, the tree matches the kernel's multi-device mount
 * (names, types, stat fields, link targets, xattrs, sha256 of every file); every extent's
 * bytes, read raw from the device it names, are the file's bytes as the kernel reads them;
 * given fewer devices, a clear error names the missing devid and its uuid (dump-super's).
 * RAID1 with a tree block corrupted on one device reads the other copy.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openBtrfs } from '../../src/fs/btrfs/index.js';
import { openFileSystem } from '../../src/fs/open.js';
import type { FileSystem, Inode } from '../../src/fs/types.js';
import { walk } from '../../src/fs/walk.js';
import type { ByteSource } from '../../src/io/byte-source.js';
import { FileSource } from '../../src/io/file-source.js';
import { crc32c } from '../../src/util/crc32c.js';
import { StrataError } from '../../src/util/errors.js';
import { btrfsRaidImages, withMultiDeviceMount } from '../helpers/btrfs-image.js';
import { jsonLines, strata } from '../helpers/cli.js';
import { type KernelEntry, treeView } from '../helpers/ext-tree.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { run, scratch } from '../helpers/tools.js';

const SLOT = 2 ** 36;
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const CASES: Array<{ profile: string; devices: number }> = [
  { profile: 'raid1', devices: 2 },
  { profile: 'raid0', devices: 2 },
  { profile: 'raid10', devices: 4 },
  { profile: 'raid5', devices: 3 },
  { profile: 'raid1c3', devices: 3 },
  { profile: 'raid1c4', devices: 4 },
  { profile: 'raid6', devices: 4 },
];

/** Profiles whose every chunk has a copy on each device (with exactly as many devices as copies). */
const MIRRORED = new Set(['raid1', 'raid1c3', 'raid1c4']);

async function open(files: string[]): Promise<{ fs: FileSystem; close: () => Promise<void> }> {
  const srcs = await Promise.all(files.map((f) => FileSource.open(f)));
  const fs = await openFileSystem(srcs[0], { devices: srcs.slice(1) });
  return {
    fs,
    close: async () => {
      for (const s of srcs) await s.close();
    },
  };
}

async function readAll(fs: FileSystem, f: Inode): Promise<Uint8Array> {
  return fs.read(f, 0, f.size);
}

/** dump-super's devid and dev uuid of a device image. */
async function devItem(file: string): Promise<{ devid: number; uuid: string }> {
  const text = await run('btrfs', ['inspect-internal', 'dump-super', file]);
  const devid = /^dev_item\.devid\s+(\d+)/m.exec(text)?.[1];
  const uuid = /^dev_item\.uuid\s+(\S+)/m.exec(text)?.[1];
  assert.ok(devid && uuid, 'dump-super shows the dev item');
  return { devid: Number(devid), uuid };
}

for (const c of CASES) {
  test(`btrfs ${c.profile} over ${c.devices} devices: the tree, the extents, the missing-device error`, async (t) => {
    const files = await btrfsRaidImages(c.profile, c.devices);
    const kernel: Map<string, KernelEntry> = await withMultiDeviceMount(files, true, (mnt) => treeView(mnt));
    // devices given in another order than mkfs's: the primary is the last one
    const order = [...files].reverse();
    const { fs, close } = await open(order);
    try {
      await t.test('info names the profile and the devices', async () => {
        const info = await fs.info();
        const extra = info.extra as { profiles: Record<string, string>; devices: number };
        assert.equal(extra.devices, c.devices);
        assert.equal(extra.profiles.data, c.profile);
        assert.equal(extra.profiles.metadata, c.profile);
      });

      const ours = new Map<string, Inode>();
      const root = await fs.root();
      ours.set('/', root);
      for await (const it of walk(fs, root, '/')) ours.set(it.path, it.inode);

      await t.test('the whole tree matches the kernel mount of all devices', async () => {
        assert.deepEqual([...ours.keys()].sort(), [...kernel.keys()].sort());
        const mine: string[] = [];
        const theirs: string[] = [];
        for (const [p, k] of kernel) {
          const i = ours.get(p) as Inode;
          const xa = [...(await fs.xattrs(i))].map(([n, v]) => `${n}=${hex(v)}`).sort();
          const kx = Object.entries(k.xattrs ?? {})
            .map(([n, v]) => `${n}=${v}`)
            .sort();
          mine.push(
            JSON.stringify([
              p,
              i.type,
              i.mode,
              i.uid,
              i.gid,
              i.size,
              i.nlink,
              i.ino % SLOT,
              i.rdev,
              k.target !== undefined ? await fs.readlink(i) : undefined,
              k.sha256 !== undefined ? sha(await readAll(fs, i)) : undefined,
              xa,
            ]),
          );
          theirs.push(
            JSON.stringify([p, k.type, k.mode, k.uid, k.gid, k.size, k.nlink, k.ino, k.rdev, k.target, k.sha256, kx]),
          );
        }
        assert.deepEqual(mine, theirs);
        assert.ok(ours.has('/sub-snap/inside') && !ours.has('/sub-snap/after-snapshot'));
        assert.deepEqual(fs.warnings, []);
      });

      await t.test("every extent's bytes, read raw from the device it names, are the kernel's file bytes", async () => {
        const byDevid = new Map<number, string>();
        for (const f of files) byDevid.set((await devItem(f)).devid, f);
        const primary = (await devItem(order[0])).devid;
        const fds = new Map([...byDevid].map(([d, f]) => [d, openSync(f, 'r')]));
        let elsewhere = 0;
        let here = 0;
        try {
          for (const p of [
            '/files/size-200000',
            '/files/size-1500000',
            '/files/size-6291579',
            '/files/sparse',
            '/reflinked',
            '/sub/inside',
          ]) {
            const i = ours.get(p) as Inode;
            const want = await withMultiDeviceMount(files, true, (mnt) => readFileSync(path.join(mnt, p)));
            let covered = 0;
            for await (const e of fs.extents(i)) {
              if (e.encoded || e.inline || e.unwritten) continue;
              const devid = e.device ?? primary;
              const buf = Buffer.alloc(Math.min(e.length, i.size - e.fileOffset));
              readSync(fds.get(devid) as number, buf, 0, buf.length, e.volumeOffset);
              assert.equal(
                sha(buf),
                sha(want.subarray(e.fileOffset, e.fileOffset + buf.length)),
                `${p} @${e.fileOffset}`,
              );
              covered += buf.length;
              if (e.device !== undefined) elsewhere++;
              else here++;
            }
            assert.ok(covered > 0, `${p} has extents`);
          }
        } finally {
          for (const fd of fds.values()) closeSync(fd);
        }
        assert.ok(here > 0, 'some extents are on the volume opened');
        // striped profiles put some of a file's bytes on the other devices only
        if (!MIRRORED.has(c.profile)) assert.ok(elsewhere > 0, 'some extents are on other devices');
        else assert.equal(elsewhere, 0, `${c.profile} over ${c.devices} devices: every byte has a copy on each`);
      });
    } finally {
      await close();
    }

    await t.test('one device only: a StrataError naming each missing devid and its uuid', async () => {
      const missing = await Promise.all(files.slice(1).map(devItem));
      const src = await FileSource.open(files[0]);
      try {
        await assert.rejects(openFileSystem(src), (e: unknown) => {
          assert.ok(e instanceof StrataError, String(e));
          assert.equal(e.code, 'NOT_FOUND');
          assert.equal(e.file, files[0]);
          for (const m of missing) {
            assert.match(e.message, new RegExp(`device ${m.devid}\\b`));
            // the uuid is named when the chunk tree could be read without the missing devices
            if (MIRRORED.has(c.profile)) assert.match(e.message, new RegExp(m.uuid));
          }
          return true;
        });
      } finally {
        await src.close();
      }
    });
  });
}

test('btrfs: a device of another file system, or one given twice, is a USAGE error', async () => {
  const [a, b] = await btrfsRaidImages('raid1', 2);
  const [x] = await btrfsRaidImages('raid0', 2);
  const srcs = await Promise.all([a, b, x].map((f) => FileSource.open(f)));
  try {
    await assert.rejects(openBtrfs(srcs[0], { devices: [srcs[2]] }), (e: unknown) => {
      return e instanceof StrataError && e.code === 'USAGE' && e.file === x && /not a device of/.test(e.message);
    });
    await assert.rejects(openBtrfs(srcs[0], { devices: [srcs[1], srcs[0]] }), (e: unknown) => {
      return e instanceof StrataError && e.code === 'USAGE' && /given twice/.test(e.message);
    });
  } finally {
    for (const s of srcs) await s.close();
  }
});

test('btrfs raid1: a tree block and a data sector corrupted on one device are read from the other copy, with warnings', async () => {
  const files = await btrfsRaidImages('raid1', 2);
  const dir = scratch('btrfs-raid1-bad');
  const copies = files.map((_f, i) => path.join(dir, `dev${i + 1}.img`));
  try {
    for (let i = 0; i < files.length; i++) await run('cp', ['--sparse=always', files[i], copies[i]]);
    // the first copy of a logical address (stripe 0 of its chunk, the one read first), as dump-tree -t chunk maps it
    const map = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'chunk', files[0]]);
    const stripe0 = (logical: number): { devid: number; physical: number } => {
      const re =
        /key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)[^\n]*\n\s*length (\d+)[\s\S]*?stripe 0 devid (\d+) offset (\d+)[\s\S]*?stripe 1 devid (\d+) offset (\d+)/g;
      for (let c = re.exec(map); c; c = re.exec(map)) {
        const [start, len] = [Number(c[1]), Number(c[2])];
        if (logical < start || logical >= start + len) continue;
        return { devid: Number(c[3]), physical: Number(c[4]) + logical - start };
      }
      throw new Error(`no chunk holds ${logical}`);
    };
    // the fs tree's root node (dump-tree -t root), and the first data block of a file (filefrag on the kernel mount)
    const roots = await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'root', files[0]]);
    const m = /item \d+ key \(FS_TREE ROOT_ITEM 0\)[^\n]*\n[^\n]*bytenr (\d+)/.exec(roots);
    assert.ok(m, 'dump-tree shows the fs tree root item');
    const frag = await withMultiDeviceMount(files, true, (mnt) =>
      run('filefrag', ['-v', '-b4096', path.join(mnt, 'files', 'size-1500000')]),
    );
    const f = /^\s*0:\s+0\.\.\s*\d+:\s+(\d+)\.\./m.exec(frag);
    assert.ok(f, `filefrag shows the first extent: ${frag}`);
    const spoil = (at: { devid: number; physical: number }, skip: number, n: number, byte: number) => {
      const fd = openSync(copies[at.devid - 1], 'r+');
      writeSync(fd, Buffer.alloc(n, byte), 0, n, at.physical + skip);
      closeSync(fd);
    };
    spoil(stripe0(Number(m[1])), 4096, 4096, 0xa5);
    spoil(stripe0(Number(f[1]) * 4096), 2 * 4096 + 7, 100, 0x5a);
    const kernel = await withMultiDeviceMount(files, true, (mnt) => treeView(mnt));
    const { fs, close } = await open(copies);
    try {
      const seen: string[] = [];
      for await (const it of walk(fs, await fs.root(), '/')) {
        const k = kernel.get(it.path);
        assert.ok(k, it.path);
        if (k.sha256 !== undefined) assert.equal(sha(await fs.read(it.inode, 0, it.inode.size)), k.sha256, it.path);
        seen.push(it.path);
      }
      assert.equal(seen.length, kernel.size - 1);
      assert.ok(
        fs.warnings.some((w) => /fs tree 5 node at \d+: checksum mismatch in copy 1 of 2 .*read copy 2/.test(w)),
        fs.warnings.join('\n'),
      );
      const sector = Number(f[1]) * 4096 + 2 * 4096;
      assert.ok(
        fs.warnings.some((w) => w.includes(`btrfs data at ${sector}: checksum mismatch in copy 1; read copy 2`)),
        fs.warnings.join('\n'),
      );
    } finally {
      await close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('strata CLI: --device FILE names the other devices; without it the error names the missing one', async () => {
  const files = await btrfsRaidImages('raid0', 2);
  const kernel = await withMultiDeviceMount(files, true, (mnt) => treeView(mnt));
  const ls = await strata(['ls', '-R', '--json', files[0], '/', '--device', files[1]]);
  assert.equal(ls.code, 0, ls.stderr);
  const paths = jsonLines(ls.stdout).map((r) => (r as { path: string }).path);
  assert.deepEqual(paths.sort(), [...kernel.keys()].filter((p) => p !== '/').sort());
  const cat = await strata(['cat', files[1], '/files/size-6291579', '--device', files[0]]);
  assert.equal(cat.code, 0, cat.stderr);
  assert.equal(sha(cat.stdoutBytes), kernel.get('/files/size-6291579')?.sha256);
  // stat: extents on device 2 carry device:2 and no disk offset in device 1's image
  const st = await strata(['stat', '--json', files[0], '/files/size-6291579', '--device', files[1]]);
  assert.equal(st.code, 0, st.stderr);
  const ext = (JSON.parse(st.stdout) as { extents: Array<{ flags: string[]; diskOffset: number | null }> }).extents;
  const other = ext.filter((e) => e.flags.includes('device:2'));
  assert.ok(other.length > 0 && other.length < ext.length, JSON.stringify(ext));
  assert.ok(other.every((e) => e.diskOffset === null));
  assert.ok(ext.filter((e) => !e.flags.includes('device:2')).every((e) => typeof e.diskOffset === 'number'));
  const alone = await strata(['ls', files[0], '/']);
  assert.notEqual(alone.code, 0);
  assert.match(alone.stderr, /device 2\b.*not given/);
  assert.match(alone.stderr, /--device/);
});

/** A device whose bytes in [at, at+window.length) read as `window` (a mutated copy), the rest from `base`. */
function patchedSource(base: ByteSource, at: number, window: Uint8Array, name: string): ByteSource {
  return {
    name,
    size: base.size,
    async read(offset: number, length: number) {
      const b = new Uint8Array(await base.read(offset, length));
      for (let i = Math.max(offset, at); i < Math.min(offset + b.length, at + window.length); i++)
        b[i - offset] = window[i - at];
      return b;
    },
    async readInto(offset: number, out: Uint8Array) {
      const b = await this.read(offset, out.length);
      out.set(b);
      return b.length;
    },
    close: async () => {},
  } as ByteSource;
}

const FUZZ_CASES = 300;

test(`btrfs raid fuzz: ${FUZZ_CASES} mutated superblocks (sys_chunk_array) and chunk/root tree blocks on every device, re-checksummed, open and read cleanly or fail with StrataError`, async (t) => {
  const failures: string[] = [];
  let opened = 0;
  for (const [profile, n] of [
    ['raid0', 2],
    ['raid1', 2],
    ['raid10', 4],
  ] as const) {
    const files = await btrfsRaidImages(profile, n);
    const srcs = await Promise.all(files.map((f) => FileSource.open(f)));
    try {
      // where to mutate: device 1's superblock and the chunk and root tree blocks on every
      // device (as our reader lists them, each device opened as the primary with the others
      // given); the kernel's allocation decides which device holds which (on raid10 a block
      // sits on two of the four)
      const regs: Array<{ dev: number; at: number; len: number; node: boolean }> = [
        { dev: 0, at: 0x10000, len: 4096, node: false },
      ];
      const kinds = new Set<string>();
      for (let k = 0; k < srcs.length; k++) {
        const clean = await openBtrfs(srcs[k], { devices: srcs.filter((_, j) => j !== k) });
        for await (const r of clean.metadataRegions())
          if (r.detail === 'chunk tree' || r.detail === 'root tree') {
            regs.push({ dev: k, at: r.offset, len: r.length, node: true });
            kinds.add(r.detail);
          }
      }
      assert.equal(kinds.size, 2, `${profile}: chunk and root tree blocks found on the devices`);
      const base = new Uint8Array(await srcs[0].read(0, 0x10000 + 4096));
      for (let c = 0; c < FUZZ_CASES / 3; c++) {
        const seed = 0x4a1d0000 + c * 7919 + n;
        const rand = prng(seed);
        const r = regs[rand() % regs.length];
        const orig =
          r.dev === 0 && r.at + r.len <= base.length
            ? base.subarray(r.at, r.at + r.len)
            : await srcs[r.dev].read(r.at, r.len);
        // sys_chunk_array and chunk items most of the time, anything else in the block otherwise
        const focus: Array<[number, number]> = r.node
          ? [[0x65, r.len]]
          : [
              [0x32b, 0x32b + 0x200],
              [0, r.len],
            ];
        const win = mutate(orig, focus, rand);
        const w = new Uint8Array(r.len);
        w.set(win.subarray(0, r.len));
        // re-checksum, so the mutated structure is parsed rather than refused at the checksum
        if (rand() % 4 !== 0) new DataView(w.buffer).setUint32(0, crc32c(w.subarray(0x20)), true);
        const devs = srcs.map((d, j) =>
          j === r.dev ? patchedSource(d, r.at, w, `${profile}-fuzz-${c}-dev${j + 1}.img`) : d,
        );
        const outcome = await expectCleanOutcome(async () => {
          const fs = await openBtrfs(devs[0], { devices: devs.slice(1) });
          opened++;
          for await (const it of walk(fs, await fs.root(), '/')) {
            if (it.inode.type === 'file') await fs.read(it.inode, 0, Math.min(it.inode.size, 1 << 20));
            for await (const _ of fs.extents(it.inode)) {
              // drain
            }
          }
          await fs.allocation();
        }, 20000);
        if (outcome) failures.push(`${profile} case ${c} (seed ${seed}): ${outcome}`);
      }
    } finally {
      for (const s of srcs) await s.close();
    }
  }
  t.diagnostic(`${opened} of ${FUZZ_CASES} mutated file systems opened`);
  assert.deepEqual(failures, []);
  assert.ok(opened > 0);
});
