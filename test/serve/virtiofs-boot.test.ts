import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CLI, strata } from '../helpers/cli.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { isMounted, mountPoint } from '../helpers/fuse-mount.js';
import {
  bootQemu,
  busyboxRoot,
  chooseAccel,
  gptExt4Disk,
  hostKernel,
  makeInitramfs,
  staticBusybox,
} from '../helpers/qemu.js';
import { fixture, have, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

/**
 * Issue 18's guest: qemu-system-x86_64 (TCG here: /dev/kvm is kvm_pvm) boots the host's
 * kernel with a small initramfs of ours (busybox-static, virtio_pci and virtiofs) whose init
 * mounts the virtio-fs tag and switch_roots into it: the guest's whole root is a library
 * version served by `strata virtiofs` (qemu's virtiofsd on a Strata FUSE mount of the
 * version's file manifest). The version is a GPT disk (sgdisk) whose ext4 (mkfs.ext4 -d)
 * holds busybox, the root's /sbin/init and a 300 KB marker.
 *
 * Read-only: the root's init prints the marker's sha256 (busybox in the guest, checked
 * against the bytes the test wrote) and the root's line of /proc/mounts (virtiofs, ro).
 * Writable (`--rw`): the init writes a file holding a nonce from the kernel command line,
 * appends to a file, deletes one, renames one, makes a folder and a symlink, syncs and
 * powers off; `strata commit UPPER` makes that a version, whose disk, checked out, e2fsck
 * -fn finds clean and the kernel's own loop mount shows as the guest left it.
 */

const DISK = 64 << 20;
const MARKER = 300_000;
const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

for (const tool of ['qemu-system-x86_64', 'sgdisk', 'mkfs.ext4', 'e2fsck', 'cpio', 'mount', 'umount']) {
  test(`tool ${tool} is installed`, () => assert.ok(have(tool), `${tool} is missing`));
}
test(`${VIRTIOFSD} is installed (qemu-system-common)`, () =>
  assert.ok(existsSync(VIRTIOFSD), `${VIRTIOFSD} is missing`));

/** The root's own init: what it saw on stdout (the serial console), then, when writable, its edits. */
const ROOT_INIT = [
  '#!/bin/busybox sh',
  'B=/bin/busybox',
  '$B mount -t proc proc /proc',
  'echo "STRATA-ROOTFS $($B grep "^[^ ]* / " /proc/mounts | $B head -1)"',
  'echo "STRATA-HASH $($B sha256sum /etc/marker | $B cut -d" " -f1)"',
  'echo "STRATA-LINK $($B readlink /etc/alias)"',
  'N=$($B sed -n "s/.*strata.nonce=\\([0-9a-f]*\\).*/\\1/p" /proc/cmdline)',
  'if [ -n "$N" ]; then',
  '  echo "$N" > /etc/guest-note',
  '  echo "appended by the guest" >> /etc/motd',
  '  $B rm /etc/doomed',
  '  $B mv /etc/old-name /etc/new-name',
  '  $B mkdir -p /var/log/guest',
  '  $B ln -s ../../etc/guest-note /var/log/guest/note',
  '  $B sync',
  '  echo "STRATA-WROTE $?"',
  'fi',
  'echo STRATA-DONE',
  '$B poweroff -f',
  '',
].join('\n');

/** The initramfs's init: load virtio_pci and virtiofs, mount the tag (ro or rw), switch_root into it. */
function vfsInit(tag: string, rw: boolean): string {
  return [
    '#!/bin/busybox sh',
    'B=/bin/busybox',
    '$B mkdir -p /proc /sys /dev /newroot',
    '$B mount -t devtmpfs dev /dev',
    'for m in $($B cat /lib/order); do $B insmod /lib/$m.ko || echo "STRATA-INSMOD-FAILED $m"; done',
    `i=0; until $B mount -t virtiofs -o ${rw ? 'rw' : 'ro'} ${tag} /newroot; do`,
    '  i=$((i+1)); [ $i -gt 100 ] && { echo STRATA-MOUNT-FAILED; $B poweroff -f; }; $B sleep 0.1',
    'done',
    'exec $B switch_root /newroot /sbin/init',
    '',
  ].join('\n');
}

async function rootDisk(): Promise<string> {
  const bb = staticBusybox();
  return fixture(`virtiofs-boot-root-bb${statSync(bb).size}-v1.raw`, async (out) => {
    const tree = `${out}.tree`;
    await busyboxRoot(tree, ROOT_INIT);
    writeFileSync(path.join(tree, 'etc', 'marker'), bytesOf('virtiofs-marker', MARKER));
    writeFileSync(path.join(tree, 'etc', 'motd'), 'hello from the version\n');
    writeFileSync(path.join(tree, 'etc', 'doomed'), 'to be deleted\n');
    writeFileSync(path.join(tree, 'etc', 'old-name'), 'to be renamed\n');
    await run('ln', ['-s', 'marker', path.join(tree, 'etc', 'alias')]);
    await gptExt4Disk(out, tree, DISK);
    await run('rm', ['-rf', tree]);
  });
}

interface Served {
  child: ChildProcess;
  info: { qemu: string[]; upper?: string; readOnly: boolean; mountpoint: string };
  exited: Promise<number | string>;
  stderr(): string;
}

/** `strata virtiofs ... --json`, resolved once it printed the qemu arguments (virtiofsd is then listening). */
function serve(args: string[]): Promise<Served> {
  const child = spawn(process.execPath, [CLI, 'virtiofs', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr?.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<number | string>((r) => child.on('close', (c, s) => r(c ?? s ?? -1)));
  return new Promise((resolve, reject) => {
    child.stdout?.on('data', (d) => {
      out += d;
      if (out.endsWith('\n')) resolve({ child, info: JSON.parse(out), exited, stderr: () => err });
    });
    exited.then((c) => reject(new Error(`strata virtiofs exited (${c}) before serving: ${err}`)));
  });
}

/** virtiofsd listens once its socket is there. */
async function socketUp(sock: string): Promise<void> {
  for (let i = 0; i < 300 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(existsSync(sock), `virtiofsd made no socket at ${sock}`);
}

async function bootOn(dir: string, served: Served, sock: string, rw: boolean, append = '') {
  const accel = chooseAccel();
  const { kernel } = hostKernel();
  const initrd = path.join(dir, `initrd-${rw ? 'rw' : 'ro'}.cpio`);
  makeInitramfs(initrd, path.join(dir, rw ? 'irw' : 'iro'), vfsInit('strata', rw), ['virtio_pci', 'virtiofs']);
  await socketUp(sock);
  const boot = await bootQemu(
    [
      ...served.info.qemu,
      '-kernel',
      kernel,
      '-initrd',
      initrd,
      '-append',
      `console=ttyS0 rdinit=/init quiet panic=-1 no_timer_check ${append}`.trim(),
    ],
    { accel, timeoutMs: accel.accel === 'kvm' ? 120_000 : 600_000, marker: 'STRATA-DONE' },
  );
  const tail = `(${accel.accel}: ${accel.why}; ${boot.seconds.toFixed(1)} s)\n${boot.console.slice(-3000)}\nserver: ${served.stderr()}`;
  assert.ok(!boot.timedOut, `qemu was killed after its time: ${tail}`);
  assert.doesNotMatch(boot.console, /STRATA-(INSMOD|MOUNT)-FAILED/, `the initramfs mounted the virtio-fs root ${tail}`);
  assert.match(boot.console, /STRATA-DONE/, `the root's init ran to its end ${tail}`);
  const want = createHash('sha256').update(bytesOf('virtiofs-marker', MARKER)).digest('hex');
  assert.equal(/STRATA-HASH ([0-9a-f]{64})/.exec(boot.console)?.[1], want, `the guest read the marker ${tail}`);
  assert.match(boot.console, /STRATA-LINK marker/, `the guest read the symlink ${tail}`);
  const fs = /STRATA-ROOTFS (\S+) \/ (\S+) (\S+)/.exec(boot.console);
  assert.equal(fs?.[1], 'strata', `the root is the virtio-fs tag ${tail}`);
  assert.equal(fs?.[2], 'virtiofs', `the root's file system type ${tail}`);
  assert.equal(fs?.[3].split(',')[0], rw ? 'rw' : 'ro', `the root's mount options ${tail}`);
  process.stdout.write(
    `# virtio-fs boot (${rw ? 'rw' : 'ro'}; ${accel.accel}: ${accel.why}): marker at ${boot.markerSeconds?.toFixed(1)} s, qemu ${boot.seconds.toFixed(1)} s\n`,
  );
  return { boot, tail };
}

/** The server ends by itself once virtiofsd does (with qemu); else it is told to. */
async function ended(served: Served): Promise<number | string> {
  const t = setTimeout(() => served.child.kill('SIGTERM'), 30_000);
  const code = await served.exited;
  clearTimeout(t);
  return code;
}

test('a guest boots with its root on virtio-fs: a read-only Strata mount of a library version', async () => {
  const dir = tempDir('virtiofs-ro');
  const lib = path.join(dir, 'lib');
  const ci = await strata(['checkin', '--library', lib, '--name', 'vfsroot', await rootDisk()]);
  assert.equal(ci.code, 0, ci.stderr);
  const sock = path.join(dir, 'vfs.sock');
  const served = await serve(['--library', lib, 'vfsroot@1', '--socket', sock, '--memory', '256M']);
  try {
    assert.equal(served.info.readOnly, true);
    await bootOn(dir, served, sock, false);
    assert.equal(await ended(served), 0, `strata virtiofs ends cleanly with the guest: ${served.stderr()}`);
    assert.ok(!isMounted(served.info.mountpoint), 'and leaves no mount behind');
  } finally {
    served.child.kill('SIGKILL');
  }
});

test("a guest boots with its root on a writable virtio-fs overlay; strata commit makes the guest's edits a version", async () => {
  const dir = tempDir('virtiofs-rw');
  const lib = path.join(dir, 'lib');
  const ci = await strata(['checkin', '--library', lib, '--name', 'vfsroot', await rootDisk()]);
  assert.equal(ci.code, 0, ci.stderr);
  const sock = path.join(dir, 'vfs.sock');
  const upper = path.join(dir, 'upper');
  const nonce = randomBytes(16).toString('hex');
  const served = await serve([
    '--library',
    lib,
    'vfsroot@1',
    '--socket',
    sock,
    '--memory',
    '256M',
    '--rw',
    '--upper',
    upper,
  ]);
  try {
    assert.equal(served.info.readOnly, false);
    assert.equal(served.info.upper, upper);
    const { boot, tail } = await bootOn(dir, served, sock, true, `strata.nonce=${nonce}`);
    assert.match(boot.console, /STRATA-WROTE 0/, `the guest's edits went through ${tail}`);
    assert.equal(await ended(served), 0, `strata virtiofs ends cleanly with the guest: ${served.stderr()}`);
  } finally {
    served.child.kill('SIGKILL');
  }
  const c = await strata(['commit', upper, '-m', 'edited by a guest', '--json']);
  assert.equal(c.code, 0, c.stderr);
  const made = JSON.parse(c.stdout) as { ref: string; parent: string };
  assert.equal(made.parent, 'vfsroot@1');
  assert.equal(made.ref, 'vfsroot@2');

  // the oracles: e2fsck on the new version's file system, the kernel's loop mount of it
  const disk = path.join(dir, 'edited.raw');
  const co = await strata(['checkout', '--library', lib, made.ref, disk]);
  assert.equal(co.code, 0, co.stderr);
  const part = path.join(dir, 'edited.part');
  await run('dd', [`if=${disk}`, `of=${part}`, 'bs=1M', 'skip=1', 'conv=sparse', 'status=none']);
  const fsck = spawn('e2fsck', ['-fn', part], { stdio: ['ignore', 'pipe', 'pipe'] });
  let fsckOut = '';
  fsck.stdout.on('data', (d) => {
    fsckOut += d;
  });
  fsck.stderr.on('data', (d) => {
    fsckOut += d;
  });
  assert.equal(await new Promise((r) => fsck.on('close', r)), 0, `e2fsck -fn: ${fsckOut}`);
  const k = mountPoint('virtiofs-edited');
  await run('mount', ['-o', 'ro,loop,noload', part, k]);
  try {
    const read = (p: string) => readFileSync(path.join(k, p), 'utf8');
    assert.equal(read('etc/guest-note'), `${nonce}\n`);
    assert.equal(read('etc/motd'), 'hello from the version\nappended by the guest\n');
    assert.equal(existsSync(path.join(k, 'etc/doomed')), false, 'the deleted file is gone');
    assert.equal(existsSync(path.join(k, 'etc/old-name')), false, 'the renamed file left its old name');
    assert.equal(read('etc/new-name'), 'to be renamed\n');
    assert.equal(
      (await run('readlink', [path.join(k, 'var/log/guest/note')])).trim(),
      '../../etc/guest-note',
      'the new symlink',
    );
    const marker = readFileSync(path.join(k, 'etc/marker'));
    assert.ok(marker.equals(bytesOf('virtiofs-marker', MARKER)), 'the untouched marker is the version’s');
  } finally {
    await run('umount', [k]).catch(() => run('umount', ['-l', k]));
    rmSync(k, { recursive: true, force: true });
  }
});
