import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { bytesOf } from '../helpers/ext-tree.js';
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
import { tempDir } from '../library/images.js';
import { sameAs, startDeploy } from './helpers.js';

/**
 * One real boot from a deploy (issue 16): qemu-system-x86_64 boots the host's kernel with a
 * small initramfs of ours (busybox-static, virtio and ext4 modules); its only disk is the
 * deploy's NBD export of a library version: a GPT disk (sgdisk) whose ext4 root (mkfs.ext4
 * -d) holds busybox, an init script and a 2 MiB payload. The initramfs mounts that root
 * read-only over the export while the background copy runs (capped, so the boot's reads are
 * fetched ahead of it), switch_roots into it, and the root's init hashes the payload, writes
 * a marker sector into the GPT gap with dd and prints STRATA-BOOTED on the serial console.
 * After the deploy completes, TARGET is qemu-img compare'd with the checked-in image with the
 * same sector written by dd on the host.
 */
const PAYLOAD = 2 << 20;
const DISK = 64 << 20;
const MARK_SECTOR = 1000; // in the gap between the GPT entries (LBA 2..33) and the partition (LBA 2048)
const MARK = 'strata-was-here';

const ROOT_INIT = [
  '#!/bin/busybox sh',
  'B=/bin/busybox',
  '$B mount -t proc proc /proc',
  'echo "STRATA-ROOT $($B cat /etc/strata-id)"',
  'echo "STRATA-HASH $($B sha256sum /payload.bin | $B cut -d" " -f1)"',
  `$B printf '${MARK}' | $B dd of=/dev/vda bs=512 seek=${MARK_SECTOR} conv=notrunc,fsync 2>/dev/null; echo "STRATA-DD $?"`,
  'echo STRATA-BOOTED',
  '$B poweroff -f',
  '',
].join('\n');

/** The guest's disk: GPT (sgdisk), one Linux partition from 1 MiB, ext4 made by mkfs.ext4 -d right into it. */
async function rootDisk(): Promise<string> {
  const bb = staticBusybox();
  return fixture(`deploy-boot-root-bb${statSync(bb).size}-v2.raw`, async (out) => {
    const tree = `${out}.tree`;
    await busyboxRoot(tree, ROOT_INIT);
    writeFileSync(path.join(tree, 'etc', 'strata-id'), 'deploy-boot-root\n');
    writeFileSync(path.join(tree, 'payload.bin'), bytesOf('deploy-boot-payload', PAYLOAD));
    await gptExt4Disk(out, tree, DISK);
    await run('rm', ['-rf', tree]);
  });
}

test('qemu boots from a deploy export to a marker on its serial console', async () => {
  const accel = chooseAccel();
  const { kernel } = hostKernel();
  const dir = tempDir('deploy-boot');
  const disk = await rootDisk();

  const libDir = path.join(dir, 'lib');
  const lib = await Library.open(libDir);
  try {
    assert.equal((await checkin(lib, disk, { name: 'boot' })).ref, 'boot@1');
  } finally {
    await lib.close();
  }
  const initrd = path.join(dir, 'initrd.cpio');
  makeInitramfs(initrd, dir, rootInit('/dev/vda1'), VIRTIO_EXT4);

  const target = path.join(dir, 'target.raw');
  // the background copy is capped hard (a machine's boot may take half a minute under TCG), so the
  // boot's reads run ahead of it and are fetched first; once the guest is done, the deploy is
  // killed (-9) and resumed uncapped to finish
  const d = await startDeploy(['boot@1', '--library', libDir, '--to', target, '--bandwidth', '32K']);
  const lines: string[] = [];
  const t0 = Date.now();
  let boot: Awaited<ReturnType<typeof bootQemu>>;
  let guestFetches = 0;
  try {
    boot = await bootQemu(
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
        `file=${d.uri},format=raw,if=virtio,cache=none`,
      ],
      {
        accel,
        timeoutMs: accel.accel === 'kvm' ? 120_000 : 400_000,
        marker: 'STRATA-BOOTED',
        onLine: (line) => {
          const p = d.events.filter((e) => e.event === 'progress').at(-1);
          lines.push(
            `${((Date.now() - t0) / 1000).toFixed(1)}s local=${p?.localBytes} guestFetches=${p?.guestFetches}: ${line}`,
          );
        },
      },
    );
    const tail = `(${accel.accel}: ${accel.why}; ${boot.seconds.toFixed(1)} s)\n${boot.console.slice(-3000)}`;
    assert.ok(!boot.timedOut, `qemu was killed after its time: ${tail}`);
    assert.doesNotMatch(boot.console, /STRATA-(INSMOD|MOUNT)-FAILED/, `the initramfs mounted the root ${tail}`);
    assert.match(boot.console, /STRATA-ROOT deploy-boot-root/, `the root's init ran ${tail}`);
    const want = createHash('sha256').update(bytesOf('deploy-boot-payload', PAYLOAD)).digest('hex');
    assert.equal(/STRATA-HASH ([0-9a-f]{64})/.exec(boot.console)?.[1], want, `the guest read the payload ${tail}`);
    assert.match(boot.console, /STRATA-DD 0/, `the guest's write went through ${tail}`);
    assert.match(boot.console, /STRATA-BOOTED/, `the marker ${tail}`);
    // the next progress event (once a second) counts every read the export fetched ahead of the copier
    const seen = d.events.length;
    while (!d.events.slice(seen).some((e) => e.event === 'progress')) await new Promise((r) => setTimeout(r, 100));
    const last = d.events.filter((e) => e.event === 'progress').at(-1)!;
    guestFetches = Number(last.guestFetches);
    assert.ok(!d.events.some((e) => e.event === 'complete'), 'the boot ran while the copy was under way');
    assert.ok(
      guestFetches > 0,
      `the boot read ranges ahead of the background copy; console, with the copy's progress:\n${lines.join('\n')}`,
    );
    process.stdout.write(
      `# boot from a deploy (${accel.accel}: ${accel.why}): marker at ${boot.markerSeconds?.toFixed(1)} s, qemu ${boot.seconds.toFixed(1)} s, ${guestFetches} guest fetches, ${last.localBytes} of ${last.neededBytes} bytes local\n`,
    );
  } finally {
    d.child.kill('SIGKILL');
    await d.exited;
  }
  // the guest flushed its write (dd conv=fsync: NBD flush), so kill -9 lost nothing: resume uncapped
  const r = await startDeploy(['boot@1', '--library', libDir, '--to', target, '--resume', '--exit-when-complete']);
  try {
    const done = await r.event('complete');
    assert.ok(Number(done.fetchedBytes) > 0, 'the resumed deploy fetched the rest');
    assert.equal(await r.exited, 0, `the resumed deploy exits 0 when complete: ${r.stderr()}`);
  } finally {
    r.child.kill('SIGKILL');
  }
  // the oracle: the checked-in image with the guest's sector written by dd on the host
  const expected = path.join(dir, 'expected.raw');
  await run('cp', ['--sparse=always', disk, expected]);
  const mark = path.join(dir, 'mark');
  writeFileSync(mark, MARK);
  await run('dd', [`if=${mark}`, `of=${expected}`, 'bs=512', `seek=${MARK_SECTOR}`, 'conv=notrunc', 'status=none']);
  assert.equal(await sameAs(expected, target), true, 'qemu-img compare: TARGET is the version plus the guest write');
  assert.equal(await sameAs(disk, target), false, 'and the guest write is there (TARGET is not the bare version)');
});
