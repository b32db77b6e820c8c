/**
 * `--device FILE` on every verb that opens an image (issue 19): a btrfs over two devices
 * (RAID1, and RAID0 where file data sits on the second device only), made by mkfs.btrfs
 * over sparse files and populated through the kernel's mount of both. blockmap, whatis,
 * inspect, checkin (and checkout), fsinfo, parts and diff take the other device the one way
 * (library/target.ts openTargetImage); without it they say which device is missing.
 *
 * Oracles: the kernel's mount of all devices (device=), walked (names, types, sizes, link
 * targets, sha256 of every file); the device image's raw bytes at each block-map record
 * against the kernel's file bytes; the kernel mounting a checked-out device 1 with the
 * original device 2 (what `checkin` stores is device 1's disk: see README, "btrfs RAID").
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { btrfsRaidImages, btrfsRaidOsImages, withMultiDeviceMount } from '../helpers/btrfs-image.js';
import { jsonLines, strata } from '../helpers/cli.js';
import { type KernelEntry, treeView } from '../helpers/ext-tree.js';
import { scratch } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** What a walk of a tree shows that survives extract and checkout: type, size, link target, content. */
function comparable(view: Map<string, KernelEntry>): string[] {
  return [...view]
    .filter(([p]) => p !== '/')
    .map(([p, k]) => JSON.stringify([p, k.type, k.type === 'file' ? k.size : null, k.target ?? null, k.sha256 ?? null]))
    .sort();
}

interface Rec {
  start: number;
  length: number;
  kind: string;
  path?: string;
  fileOffset?: number;
}

test('btrfs raid1 over 2 devices: blockmap, whatis, inspect, fsinfo, parts, diff, checkin take --device', async (t) => {
  const [dev1, dev2] = await btrfsRaidOsImages('raid1', 2);
  const kernel = await withMultiDeviceMount([dev1, dev2], true, (mnt) => treeView(mnt));
  const kernelBytes = async (p: string) =>
    withMultiDeviceMount([dev1, dev2], true, (mnt) => readFileSync(path.join(mnt, p)));

  await t.test("blockmap --device: file records whose raw bytes on device 1 are the kernel's file bytes", async () => {
    const r = await strata(['blockmap', '--json', dev1, '--device', dev2]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /not given/);
    const recs = jsonLines<Rec>(r.stdout);
    const files = recs.filter((x) => x.kind === 'file' && x.path !== undefined);
    const paths = new Set(files.map((x) => x.path));
    for (const p of ['/files/size-1500000', '/files/size-6291579', '/sub/inside', '/files/size-200000'])
      assert.ok(paths.has(p), `${p} is in the block map`);
    const fd = openSync(dev1, 'r');
    try {
      for (const p of ['/files/size-1500000', '/files/size-6291579', '/sub/inside']) {
        const want = await kernelBytes(p);
        let covered = 0;
        for (const x of files.filter((f) => f.path === p)) {
          const n = Math.min(x.length, want.length - (x.fileOffset ?? 0));
          const buf = Buffer.alloc(n);
          readSync(fd, buf, 0, n, x.start);
          const at = x.fileOffset ?? 0;
          assert.equal(sha(buf), sha(want.subarray(at, at + n)), `${p} @${at}`);
          covered += n;
        }
        assert.equal(covered, want.length, `${p}: the records cover the file`);
      }
    } finally {
      closeSync(fd);
    }
    const sample = files.find((x) => x.path === '/files/size-6291579') as Rec;
    const w = await strata(['whatis', '--json', dev1, String(sample.start + 1), '--device', dev2]);
    assert.equal(w.code, 0, w.stderr);
    assert.ok(
      jsonLines<Rec>(w.stdout).some((o) => o.kind === 'file' && o.path === '/files/size-6291579'),
      w.stdout,
    );
    // without the other device: the file system is not read, and the warning says why
    const alone = await strata(['blockmap', '--json', dev1]);
    assert.equal(alone.code, 0, alone.stderr);
    assert.match(alone.stderr, /device 2\b.*not given/);
    assert.equal(jsonLines<Rec>(alone.stdout).filter((x) => x.kind === 'file').length, 0);
  });

  await t.test('inspect --device: the OS root on the two-device file system', async () => {
    const r = await strata(['inspect', '--json', dev1, '--device', dev2]);
    assert.equal(r.code, 0, r.stderr);
    const roots = jsonLines<{ distro: string; hostname: string; users: Array<{ name: string }> }>(r.stdout);
    assert.equal(roots.length, 1);
    assert.equal(roots[0].distro, 'fedora');
    assert.equal(roots[0].hostname, 'raid-host');
    assert.deepEqual(
      roots[0].users.map((u) => u.name),
      ['root', 'raider'],
    );
    const alone = await strata(['inspect', '--json', dev1]);
    assert.equal(alone.code, 1);
    assert.match(alone.stderr, /device 2\b.*not given/);
  });

  await t.test('fsinfo and parts --device; --device on ext4 and a foreign device are USAGE errors', async () => {
    const f = await strata(['fsinfo', '--json', dev2, '--device', dev1]);
    assert.equal(f.code, 0, f.stderr);
    const info = JSON.parse(f.stdout) as { kind: string; extra: { devices: number; devicesGiven: unknown[] } };
    assert.equal(info.kind, 'btrfs');
    assert.equal(info.extra.devices, 2);
    assert.equal(info.extra.devicesGiven.length, 2);
    const p = await strata(['parts', '--json', dev1, '--device', dev2]);
    assert.equal(p.code, 0, p.stderr);
    assert.equal((JSON.parse(p.stdout) as { volumes: Array<{ content: string }> }).volumes[0].content, 'btrfs');
    const [other] = await btrfsRaidImages('raid0', 2);
    const foreign = await strata(['fsinfo', dev1, '--device', other]);
    assert.equal(foreign.code, 1, foreign.stderr);
    assert.match(foreign.stderr, /not a device of the btrfs file system/);
  });

  await t.test('diff --device: the file system against itself is the same', async () => {
    const d = await strata(['diff', '--json', dev1, dev2, '--device', dev2, '--device-b', dev1]);
    assert.equal(d.code, 0, d.stderr);
    const out = JSON.parse(d.stdout) as { files: { summary: Record<string, number> } };
    assert.equal(out.files.summary.added + out.files.summary.removed + out.files.summary.changed, 0);
  });

  await t.test(
    'checkin --device: the version holds every file, its inspection, and device 1 for the kernel',
    async () => {
      const dir = scratch('btrfs-devices-raid1');
      const lib = path.join(dir, 'lib');
      try {
        const ci = await strata(['checkin', '--json', '--library', lib, '--name', 'r1', dev1, '--device', dev2]);
        assert.equal(ci.code, 0, ci.stderr);
        const res = JSON.parse(ci.stdout) as { warnings: string[]; volumes: Array<{ fs?: unknown }> };
        assert.deepEqual(
          res.warnings.filter((w) => /not given|block-wise/.test(w)),
          [],
        );
        assert.ok(res.volumes[0].fs, 'the btrfs volume is cut by file');
        // the stored inspection (made at check-in with the devices given)
        const ins = await strata(['inspect', '--json', '--library', lib, 'ref:r1']);
        assert.equal(ins.code, 0, ins.stderr);
        assert.equal(jsonLines<{ distro: string }>(ins.stdout)[0].distro, 'fedora');
        // every file of the version, extracted from the store (device 1) read with device 2, is the kernel's
        const ex = path.join(dir, 'extracted');
        const e = await strata(['extract', '--library', lib, 'ref:r1', '/', ex, '--device', dev2]);
        assert.equal(e.code, 0, e.stderr);
        assert.deepEqual(comparable(await treeView(ex)), comparable(kernel));
        // the stored disk is device 1: checked out, the kernel mounts it with device 2
        const out = path.join(dir, 'dev1-out.img');
        const co = await strata(['checkout', '--library', lib, 'r1', out]);
        assert.equal(co.code, 0, co.stderr);
        const again = await withMultiDeviceMount([out, dev2], true, (mnt) => treeView(mnt));
        assert.deepEqual(comparable(again), comparable(kernel));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

test('btrfs raid0 checkin --device: file data on device 2 is cut by file; device 1 checked out mounts with device 2', async () => {
  const [dev1, dev2] = await btrfsRaidImages('raid0', 2);
  const kernel = await withMultiDeviceMount([dev1, dev2], true, (mnt) => treeView(mnt));
  const dir = scratch('btrfs-devices-raid0');
  const lib = path.join(dir, 'lib');
  try {
    const ci = await strata(['checkin', '--json', '--library', lib, '--name', 'r0', dev1, '--device', dev2]);
    assert.equal(ci.code, 0, ci.stderr);
    // a 6 MiB file striped over both devices: read whole from the store
    const cat = await strata(['cat', '--library', lib, 'ref:r0', '/files/size-6291579']);
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(sha(cat.stdoutBytes), kernel.get('/files/size-6291579')?.sha256);
    // the stored disk is device 1: read as btrfs, it needs device 2 again (and says so)
    const ex = path.join(dir, 'extracted');
    const bare = await strata(['extract', '--library', lib, 'ref:r0', '/', ex]);
    assert.equal(bare.code, 1);
    assert.match(bare.stderr, /device 2\b.*not given/);
    const e = await strata(['extract', '--library', lib, 'ref:r0', '/', ex, '--device', dev2]);
    assert.equal(e.code, 0, e.stderr);
    assert.deepEqual(comparable(await treeView(ex)), comparable(kernel));
    const out = path.join(dir, 'dev1-out.img');
    const co = await strata(['checkout', '--library', lib, 'r0', out]);
    assert.equal(co.code, 0, co.stderr);
    const again = await withMultiDeviceMount([out, dev2], true, (mnt) => treeView(mnt));
    assert.deepEqual(comparable(again), comparable(kernel));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('nbd --device: only with --cache-policy introspective (whose block map reads through the devices)', async () => {
  const [dev1, dev2] = await btrfsRaidImages('raid0', 2);
  const r = await strata(['nbd', dev1, '--device', dev2, '-p', '0']);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /--device feeds the block map of --cache-policy introspective/);
});
