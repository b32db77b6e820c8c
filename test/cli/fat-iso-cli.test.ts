import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { bytesFor, exfatImage, FAT_SPECS, fatImage, fatTree, mtool, TREE_MTIME } from '../helpers/fat-images.js';
import { strataMount } from '../helpers/fuse-mount.js';
import { genisoJoliet, genisoRR, isoTree, xorrisoBoot } from '../helpers/iso-images.js';
import { fixture, run, scratch } from '../helpers/tools.js';
import { copyInto, mkfsImage, sparse } from '../helpers/volume-images.js';

const MiB = 1024 * 1024;
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

/** Every file below `root` with its sha256, relative paths. */
async function shas(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const rel of (await run('find', ['.', '-type', 'f'], { cwd: root })).split('\n').filter(Boolean)) {
    out.set(rel.slice(2), sha(readFileSync(path.join(root, rel))));
  }
  return out;
}

/**
 * Block-map samples against The Sleuth Kit: for file data units spread over the map, `ifind
 * -d` names the object that owns the unit and `ffind` its path; both must be ours.
 */
async function sampleAgainstTsk(img: string, map: Array<Record<string, unknown>>, unit: number): Promise<void> {
  // /frag/ is left out: its clusters first belonged to deleted files, and ifind names the first
  // entry pointing at a unit, deleted ones included (the fragmented file is checked against istat)
  const files = map.filter(
    (r) =>
      r.kind === 'file' && typeof r.path === 'string' && /^[\x20-\x7e]+$/.test(r.path) && !r.path.startsWith('/frag/'),
  );
  assert.ok(files.length >= 12, `${files.length} file ranges`);
  for (let k = 0; k < 12; k++) {
    const r = files[Math.floor((k * files.length) / 12)];
    const u = Math.floor((r.start as number) / unit);
    const addr = (await run('ifind', ['-d', String(u), img])).trim();
    const where = (await run('ffind', [img, addr])).trim();
    assert.equal(where, r.path, `unit ${u}`);
    // whatis of the unit's first byte names the path ffind gives
    const w = lines(await ok(['whatis', '--json', img, String(u * unit)]));
    assert.equal(w[0]?.path, where, `whatis ${u * unit}: ${JSON.stringify(w[0])}`);
  }
}

test('FAT32 image through the CLI: ls, cat, stat, extract, blockmap and checkin work unchanged; results match fls, istat, ifind/ffind and the host tree', async () => {
  const img = await fatImage(FAT_SPECS[2]);
  const tree = await fatTree();
  // ls -R: the paths fls lists
  const listed = lines(await ok(['ls', '-R', '--json', img, '/'])).map((x) => x.path as string);
  const fls = (await run('fls', ['-r', '-p', '-u', img]))
    .split('\n')
    .map((l) => /^[dr]\/[dr] \d+:\t(.*)$/.exec(l)?.[1])
    .filter((p): p is string => p !== undefined && !p.startsWith('$') && !p.endsWith('(Volume Label Entry)'))
    .map((p) => `/${p}`);
  assert.deepEqual(listed.sort(), fls.sort());
  // cat
  const cat = await strata(['cat', img, '/medium.bin']);
  assert.equal(cat.code, 0);
  assert.equal(sha(cat.stdoutBytes), sha(readFileSync(path.join(tree, 'medium.bin'))));
  // stat: size, times and the extents istat lists
  const st = JSON.parse(await ok(['stat', '--json', img, '/frag/fragmented.bin'])) as {
    size: number;
    mtime: string;
    extents: Array<{ volumeOffset: number; length: number }>;
  };
  assert.equal(st.size, 300_000);
  assert.equal(st.mtime, new Date(TREE_MTIME * 1000).toISOString().replace('.000Z', '.000000000Z'));
  const addr = /^r\/r (\d+):\tfrag\/fragmented.bin$/m.exec(await run('fls', ['-r', '-p', '-u', img]))![1];
  const ist = await run('istat', [img, addr]);
  const sectors = ist
    .slice(ist.indexOf('Sectors:') + 8)
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s) && s !== '0')
    .map(Number);
  const mine = st.extents.flatMap((e) =>
    Array.from({ length: Math.ceil(e.length / 512) }, (_, k) => e.volumeOffset / 512 + k),
  );
  assert.deepEqual(mine, sectors);
  // blockmap: those sectors belong to the file, by path
  const map = lines(await ok(['blockmap', '--json', img]));
  const owned = map.filter((r) => r.path === '/frag/fragmented.bin' && r.kind === 'file');
  const covered = new Set<number>();
  for (const r of owned)
    for (let s = 0; s < (r.length as number) / 512; s++) covered.add((r.start as number) / 512 + s);
  for (const s of sectors) assert.ok(covered.has(s), `sector ${s} mapped to the file`);
  assert.ok(
    map.some((r) => r.kind === 'bitmap' && r.fs === 'vfat'),
    'the FATs are in the map',
  );
  // file data samples (and whatis of them) against ifind -d / ffind
  await sampleAgainstTsk(img, map, 512);
  const dir = scratch('fat-cli');
  try {
    // extract: the host tree, byte for byte, with its times
    const dest = path.join(dir, 'x');
    await ok(['extract', img, '/', dest]);
    const want = await shas(tree);
    const got = await shas(dest);
    for (const [p, h] of want) assert.equal(got.get(p), h, p);
    assert.equal(statSync(path.join(dest, 'medium.bin')).mtimeMs, TREE_MTIME * 1000);
    // checkin, then read back from the library
    const lib = path.join(dir, 'lib');
    await ok(['checkin', img, '--name', 'esp', '--library', lib]);
    const back = await strata(['cat', 'esp', '/frag/fragmented.bin', '--library', lib], {});
    assert.equal(back.code, 0, back.stderr);
    assert.equal(sha(back.stdoutBytes), sha(bytesFor(999, 300_000)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** GPT: 1 EF00 ESP (FAT32, filled by mtools), 2 8300 ext4 root (mkfs.ext4 -d). */
async function gptEspDisk(): Promise<string> {
  return fixture('fat-gpt-esp-v2.img', async (out) => {
    await sparse(out, 96 * MiB);
    await run('sgdisk', [
      '-o',
      '-n',
      '1:2048:+40M',
      '-t',
      '1:EF00',
      '-c',
      '1:EFI system',
      '-n',
      '2:0:+40M',
      '-t',
      '2:8300',
      '-c',
      '2:root',
      out,
    ]);
    const esp = `${out}.esp`;
    const root = `${out}.root.d`;
    const rootImg = `${out}.root`;
    try {
      await mkfsImage(esp, 40 * MiB, 'mkfs.vfat', ['-F', '32', '-n', 'ESP']);
      await mtool('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT', '::/EFI/debian']);
      const put = (name: string, data: Buffer | string) => {
        const f = `${out}.put`;
        writeFileSync(f, data);
        return mtool('mcopy', ['-i', esp, f, name]).finally(() => rmSync(f));
      };
      await put('::/EFI/BOOT/BOOTX64.EFI', bytesFor(21, 200_000));
      await put('::/EFI/debian/grub.cfg', 'search --fs-uuid --set=root 1234\nconfigfile ($root)/boot/grub/grub.cfg\n');
      mkdirSync(path.join(root, 'etc'), { recursive: true });
      mkdirSync(path.join(root, 'usr/bin'), { recursive: true });
      mkdirSync(path.join(root, 'boot/efi'), { recursive: true });
      writeFileSync(
        path.join(root, 'etc/os-release'),
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
      );
      writeFileSync(path.join(root, 'etc/hostname'), 'esp-test\n');
      writeFileSync(path.join(root, 'etc/fstab'), 'UUID=1234-ABCD /boot/efi vfat umask=0077 0 1\n');
      await mkfsImage(rootImg, 40 * MiB, 'mkfs.ext4', ['-q', '-F', '-d', root]);
      copyInto(out, 2048 * 512, esp);
      copyInto(out, (2048 + 40 * 2048) * 512, rootImg);
    } finally {
      rmSync(esp, { force: true });
      rmSync(rootImg, { force: true });
      rmSync(root, { recursive: true, force: true });
    }
  });
}

test('GPT disk with an EFI system partition and an ext4 root: parts, ls, cat, blockmap and checkin reach the ESP files', async () => {
  const disk = await gptEspDisk();
  const parts = JSON.parse(await ok(['parts', '--json', disk])) as { volumes: Array<{ id: string; content?: string }> };
  assert.deepEqual(
    parts.volumes.map((v) => [v.id, v.content]),
    [
      ['1', 'vfat'],
      ['2', 'ext4'],
    ],
  );
  const info = JSON.parse(await ok(['fsinfo', '--json', disk, '--part', '1'])) as { kind: string; label: string };
  assert.equal(info.kind, 'vfat');
  assert.equal(info.label, 'ESP');
  // the ESP tree, as mdir sees it on the partition
  const listed = lines(await ok(['ls', '-R', '--json', disk, '--part', '1', '/'])).map((x) => x.path);
  const espAt = 2048 * 512;
  const mdir = await mtool('mdir', ['-/', '-b', '-i', `${disk}@@${espAt}`, '::/']);
  const theirs = mdir
    .split('\n')
    .filter(Boolean)
    .map((p) => p.replace(/^::/, '').replace(/\/$/, ''));
  assert.deepEqual(listed.sort(), theirs.sort());
  const efi = await strata(['cat', disk, '--part', '1', '/EFI/BOOT/BOOTX64.EFI']);
  assert.equal(sha(efi.stdoutBytes), sha(bytesFor(21, 200_000)));
  // without --part, the OS root is chosen (the ESP holds no OS)
  assert.match(await ok(['cat', disk, '/etc/os-release']), /ID=debian/);
  // the block map names the ESP's files on the disk
  const map = lines(await ok(['blockmap', '--json', disk]));
  const boot = map.filter((r) => r.path === '/EFI/BOOT/BOOTX64.EFI');
  assert.ok(boot.length > 0 && boot.every((r) => r.volume === '1' && r.fs === 'vfat' && r.kind === 'file'));
  assert.equal(
    boot.reduce((a, r) => a + (r.length as number), 0),
    Math.ceil(200_000 / 512) * 512,
  );
  const dir = scratch('gpt-esp');
  try {
    const lib = path.join(dir, 'lib');
    await ok(['checkin', disk, '--name', 'gpt', '--library', lib]);
    const back = await strata(['cat', 'gpt', '--part', '1', '/EFI/debian/grub.cfg', '--library', lib]);
    assert.equal(back.code, 0, back.stderr);
    assert.match(back.stdout, /configfile/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ISO 9660 through the CLI: ls, cat and extract match the host tree; block-map samples match ifind/ffind', async () => {
  const img = await genisoRR();
  const tree = await isoTree();
  const ls = lines(await ok(['ls', '--json', img, '/modes']));
  assert.deepEqual(
    ls.map((x) => [x.path, x.mode]),
    [
      ['/modes/private', 0o600],
      ['/modes/setuid', 0o4755],
    ],
  );
  assert.equal(await ok(['cat', img, '/l1/l2/l3/l4/l5/l6/l7/l8/l9/l10/l11/l12/deep.txt']), 'deep down\n');
  // TSK reads the Joliet tree of an ISO: sample the Joliet-only image, whose names are the same for both
  const joliet = await genisoJoliet();
  await sampleAgainstTsk(joliet, lines(await ok(['blockmap', '--json', joliet])), 2048);
  const dir = scratch('iso-cli');
  try {
    const dest = path.join(dir, 'x');
    await ok(['extract', img, '/', dest]);
    const want = await shas(tree);
    const got = await shas(dest);
    assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
    for (const [p, h] of want) assert.equal(got.get(p), h, p);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('FAT12, exFAT and ISO block maps: no overlapping claims; FAT file data samples match ifind/ffind, metadata is named', async () => {
  for (const img of [await fatImage(FAT_SPECS[0]), await exfatImage(), await xorrisoBoot()]) {
    const r = await strata(['blockmap', '--json', img]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /claimed by/, 'no two structures claim the same bytes');
    const map = lines(r.stdout);
    if (img.endsWith('.iso')) continue; // TSK samples of ISO: the Joliet test above
    await sampleAgainstTsk(img, map, 512);
    const kinds = new Set(map.map((r) => r.kind));
    for (const k of ['boot', 'bitmap', 'directory', 'file', 'free']) assert.ok(kinds.has(k), `${img}: ${k}`);
    assert.ok(!kinds.has('allocated'), `${img}: every used byte has an owner`);
  }
});

/** A tree as a walk sees it: relative path -> type, size and sha256 (or symlink target). */
async function view(root: string): Promise<Map<string, string>> {
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
          : st.isFIFO()
            ? 'fifo'
            : st.isFile()
              ? `file ${st.size} ${sha(readFileSync(p))}`
              : `other ${st.mode.toString(8)}`,
    );
  }
  return out;
}

test('strata mount of FAT32, exFAT and ISO 9660 images: the tree (names, types, sizes, sha256 of every file) equals the host tree they were made from', async () => {
  // FAT and exFAT: the host tree, plus /frag as the image recipe left it (odd small files, the fragmented one)
  const fatWant = await view(await fatTree());
  fatWant.set('/frag', 'dir');
  for (let i = 1; i < 40; i += 2) fatWant.set(`/frag/s${i}.bin`, `file 16000 ${sha(bytesFor(100 + i, 16_000))}`);
  fatWant.set('/frag/fragmented.bin', `file 300000 ${sha(bytesFor(999, 300_000))}`);
  // ISO: the host tree; the names are also those xorriso -find lists, which shows the (emptied)
  // Rock Ridge relocation folder rr_moved the writer adds, as the kernel's isofs does
  const iso = await genisoRR();
  const isoWant = await view(await isoTree());
  const xorrisoNames = (await run('xorriso', ['-indev', iso, '-find', '/']))
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/^'(.*)'$/, '$1'))
    .filter((p) => p !== '/');
  assert.ok(xorrisoNames.includes('/rr_moved') && !xorrisoNames.some((p) => p.startsWith('/rr_moved/')));
  isoWant.set('/rr_moved', 'dir');
  assert.deepEqual([...isoWant.keys()].sort(), xorrisoNames.sort(), 'host tree + rr_moved = xorriso -find');
  for (const [name, img, want] of [
    ['fat32', await fatImage(FAT_SPECS[2]), fatWant],
    ['exfat', await exfatImage(), fatWant],
    ['iso', iso, isoWant],
  ] as const) {
    const m = await strataMount([img], name);
    try {
      const ours = await view(m.mnt);
      assert.ok(want.size > 150, `${name}: ${want.size} paths`);
      const diff = [...new Set([...want.keys(), ...ours.keys()])]
        .filter((p) => want.get(p) !== ours.get(p))
        .map((p) => `${p}: host ${want.get(p)}, strata ${ours.get(p)}`);
      assert.deepEqual(diff.slice(0, 20), [], `${name}: ${diff.length} differences`);
    } finally {
      assert.equal(await m.stop(), 0, m.stderr());
    }
  }
});
