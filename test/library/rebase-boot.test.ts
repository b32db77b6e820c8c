import assert from 'node:assert/strict';
import { statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import {
  bootQemu,
  busyboxRoot,
  chooseAccel,
  gptExt4Disk,
  hostKernel,
  makeInitramfs,
  rootInit,
  staticBusybox,
  VIRTIO_EXT4,
} from '../helpers/qemu.js';
import { fixture, run } from '../helpers/tools.js';
import { tempDir } from './images.js';

/**
 * Issue 24's boot check: a rebased bootable image still boots. A0 is a GPT disk (sgdisk)
 * whose ext4 root (mkfs.ext4 -d) holds static busybox and an init that prints three files
 * and a marker. A1 = A0 with /etc/version changed and /etc/base-update added (`strata put`);
 * B1 = A0 checked in as another image with /etc/local-note added; B2 = `strata rebase B1
 * --from A0 --to A1`. B2's checkout is the only disk of a qemu guest (the host's kernel, our
 * small initramfs mounting /dev/vda1): it must reach the marker and print A1's files and
 * B1's own, as the guest's kernel reads them.
 */
const ROOT_INIT = [
  '#!/bin/busybox sh',
  'B=/bin/busybox',
  '$B mount -t proc proc /proc',
  'echo "STRATA-VERSION $($B cat /etc/version)"',
  'echo "STRATA-BASE $($B cat /etc/base-update 2>&1)"',
  'echo "STRATA-NOTE $($B cat /etc/local-note 2>&1)"',
  'echo STRATA-BOOTED',
  '$B poweroff -f',
  '',
].join('\n');

async function baseDisk(): Promise<string> {
  const bb = staticBusybox();
  return fixture(`rebase-boot-a0-bb${statSync(bb).size}-v1.raw`, async (out) => {
    const tree = `${out}.tree`;
    await busyboxRoot(tree, ROOT_INIT);
    writeFileSync(path.join(tree, 'etc', 'version'), 'base-1\n');
    await gptExt4Disk(out, tree, 64 << 20);
    await run('rm', ['-rf', tree]);
  });
}

test('a rebased bootable image boots (qemu) and its guest reads the base update and its own change', async () => {
  const accel = chooseAccel();
  const { kernel } = hostKernel();
  const dir = tempDir('rebase-boot');
  const env = { STRATA_LIBRARY: path.join(dir, 'lib') };
  const ok = async (args: string[]) => {
    const r = await strata(args, { env });
    assert.equal(r.code, 0, `strata ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const a0 = await baseDisk();
  const file = (name: string, text: string) => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  await ok(['init']);
  await ok(['checkin', a0, '--name', 'base']);
  await ok(['put', 'base@1', '/etc/version', file('version', 'base-2\n')]);
  await ok(['put', 'base@2', '/etc/base-update', file('base-update', 'from A1\n')]);
  await ok(['checkin', a0, '--name', 'app']);
  await ok(['put', 'app@1', '/etc/local-note', file('local-note', 'app only\n')]);
  await ok(['rebase', 'app@2', '--from', 'base@1', '--to', 'base@3']);
  const disk = path.join(dir, 'app3.raw');
  await ok(['checkout', 'app@3', disk]);
  // the file system is clean as e2fsck sees it, before any guest touches it
  await run('e2fsck', ['-fn', `${disk}?offset=${2048 * 512}`]);

  const initrd = path.join(dir, 'initrd.cpio');
  makeInitramfs(initrd, dir, rootInit('/dev/vda1'), VIRTIO_EXT4);
  const boot = await bootQemu(
    [
      '-m',
      '256',
      '-kernel',
      kernel,
      '-initrd',
      initrd,
      '-append',
      'console=ttyS0 rdinit=/init quiet panic=-1 no_timer_check',
      '-drive',
      `file=${disk},format=raw,if=virtio,readonly=on`,
    ],
    { accel, timeoutMs: accel.accel === 'kvm' ? 120_000 : 400_000, marker: 'STRATA-BOOTED' },
  );
  const tail = `(${accel.accel}: ${accel.why}; ${boot.seconds.toFixed(1)} s)\n${boot.console.slice(-3000)}`;
  assert.ok(!boot.timedOut, `qemu was killed after its time: ${tail}`);
  assert.doesNotMatch(boot.console, /STRATA-(INSMOD|MOUNT)-FAILED/, `the initramfs mounted the root ${tail}`);
  assert.match(boot.console, /STRATA-VERSION base-2\r?\n/, `A1's /etc/version ${tail}`);
  assert.match(boot.console, /STRATA-BASE from A1\r?\n/, `A1's new file ${tail}`);
  assert.match(boot.console, /STRATA-NOTE app only\r?\n/, `B1's own file ${tail}`);
  assert.match(boot.console, /STRATA-BOOTED/, `the marker ${tail}`);
  process.stdout.write(
    `# rebased image booted (${accel.accel}: ${accel.why}): marker at ${boot.markerSeconds?.toFixed(1)} s\n`,
  );
});
