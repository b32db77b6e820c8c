import { spawn, spawnSync } from 'node:child_process';
import {
  accessSync,
  constants,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { run } from './tools.js';

/**
 * Booting a real Linux under qemu-system-x86_64 for tests and benches: which accelerator,
 * the host's kernel and modules, a small initramfs of our own (busybox-static and the few
 * modules a virtio ext4 root needs), and a boot that returns the serial console.
 *
 * Why not the distribution's initrd with our init appended (e2e/nbd-boot.sh)? Debian's
 * initrd is one zstd frame of ~35 MB: the kernel looks for a following archive only at a
 * 4-byte aligned offset, so a cpio appended to an initrd whose length is not a multiple of 4
 * is skipped ("Initramfs unpacking failed: invalid magic at start of compressed archive")
 * and the boot panics without our init; and unpacking 35 MB under TCG costs seconds we do
 * not need. Ours is ~5 MB, uncompressed, and boots to the root in a few seconds.
 */

export interface Accel {
  accel: 'kvm' | 'tcg';
  why: string;
}

/**
 * KVM when /dev/kvm opens read-write and is hardware KVM; TCG otherwise. A /dev/kvm served by
 * kvm_pvm (pagetable-based virtualisation, found on cloud VMs without nested virtualisation)
 * runs only PVM-enabled guest kernels: a stock kernel hangs there right after its real-mode
 * setup with nothing on the console, so it counts as no KVM. STRATA_QEMU_ACCEL=kvm|tcg overrides.
 */
export function chooseAccel(): Accel {
  const forced = process.env.STRATA_QEMU_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return { accel: forced, why: 'STRATA_QEMU_ACCEL' };
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { accel: 'tcg', why: '/dev/kvm does not open read-write' };
  }
  if (existsSync('/sys/module/kvm_pvm') && !existsSync('/sys/module/kvm_intel') && !existsSync('/sys/module/kvm_amd'))
    return { accel: 'tcg', why: '/dev/kvm is kvm_pvm, which boots only PVM guest kernels' };
  return { accel: 'kvm', why: '/dev/kvm opens read-write' };
}

/** The newest kernel in /boot and its release (linux-image-amd64). */
export function hostKernel(): { kernel: string; release: string; modules: string } {
  const ks = existsSync('/boot') ? readdirSync('/boot').filter((f) => /^vmlinuz-/.test(f)) : [];
  if (ks.length === 0) throw new Error('no kernel in /boot: install linux-image-amd64 (.ci/run does)');
  const release = ks
    .map((f) => f.slice('vmlinuz-'.length))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
    .at(-1)!;
  const modules = `/lib/modules/${release}`;
  if (!existsSync(path.join(modules, 'modules.dep')))
    throw new Error(`no ${modules}/modules.dep for /boot/vmlinuz-${release}`);
  return { kernel: `/boot/vmlinuz-${release}`, release, modules };
}

/** Modules (names) with what they depend on, in load order, from modules.dep. */
export function moduleOrder(modulesDir: string, names: string[]): string[] {
  const dep = new Map<string, string[]>();
  for (const line of readFileSync(path.join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    dep.set(
      line.slice(0, i),
      line
        .slice(i + 1)
        .trim()
        .split(/\s+/)
        .filter(Boolean),
    );
  }
  const byName = new Map<string, string>();
  for (const k of dep.keys())
    byName.set(
      path
        .basename(k)
        .replace(/\.ko(\.[a-z]+)?$/, '')
        .replace(/-/g, '_'),
      k,
    );
  const out: string[] = [];
  const visit = (rel: string) => {
    if (out.includes(rel)) return;
    for (const d of dep.get(rel) ?? []) visit(d);
    out.push(rel);
  };
  for (const n of names) {
    const rel = byName.get(n.replace(/-/g, '_'));
    // built into this kernel (modules.builtin) needs no loading
    if (!rel) {
      const builtin = readFileSync(path.join(modulesDir, 'modules.builtin'), 'utf8');
      if (new RegExp(`/${n}\\.ko$`, 'm').test(builtin)) continue;
      throw new Error(`module ${n} is neither in ${modulesDir}/modules.dep nor built in`);
    }
    visit(rel);
  }
  return out;
}

/** True when the ELF file has no program interpreter (a static binary that runs alone in an initramfs). */
export function isStaticElf(file: string): boolean {
  const b = readFileSync(file);
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

/** /bin/busybox if it is static (busybox-static), else a clear error. */
export function staticBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (existsSync(p)) {
      if (!isStaticElf(p)) throw new Error(`${p} is dynamically linked: install busybox-static (.ci/run does)`);
      return p;
    }
  }
  throw new Error('no busybox: install busybox-static (.ci/run does)');
}

/** Modules a virtio disk with an ext4 root (in a GPT partition; GPT parsing is built in) needs. */
export const VIRTIO_EXT4 = ['virtio_pci', 'virtio_blk', 'crc32c_generic', 'ext4'];

/**
 * An initramfs (newc cpio, made by GNU cpio) holding static busybox, the modules named and
 * their dependencies (decompressed), and `init` as /init. The init script sees the modules
 * as /lib/NAME.ko and their load order in /lib/order.
 */
export function makeInitramfs(out: string, work: string, init: string, modules: string[]): void {
  const { modules: dir } = hostKernel();
  const root = path.join(work, 'initramfs');
  mkdirSync(path.join(root, 'bin'), { recursive: true });
  mkdirSync(path.join(root, 'lib'), { recursive: true });
  copyFileSync(staticBusybox(), path.join(root, 'bin', 'busybox'));
  const order: string[] = [];
  for (const rel of moduleOrder(dir, modules)) {
    const src = path.join(dir, rel);
    const name = path.basename(rel).replace(/\.ko(\.[a-z]+)?$/, '');
    const dst = path.join(root, 'lib', `${name}.ko`);
    if (rel.endsWith('.ko')) copyFileSync(src, dst);
    else {
      const tool = rel.endsWith('.xz') ? 'xz' : rel.endsWith('.zst') ? 'zstd' : rel.endsWith('.gz') ? 'gzip' : '';
      if (!tool) throw new Error(`cannot decompress module ${src}`);
      const r = spawnSync(tool, ['-dc', src], { maxBuffer: 1 << 28 });
      if (r.status !== 0) throw new Error(`${tool} -dc ${src} failed: ${r.stderr}`);
      writeFileSync(dst, r.stdout);
    }
    order.push(name);
  }
  writeFileSync(path.join(root, 'lib', 'order'), `${order.join('\n')}\n`);
  writeFileSync(path.join(root, 'init'), init, { mode: 0o755 });
  const list = spawnSync('find', ['.'], { cwd: root, encoding: 'utf8' });
  const r = spawnSync('cpio', ['-o', '-H', 'newc', '--quiet'], {
    cwd: root,
    input: list.stdout,
    maxBuffer: 1 << 28,
  });
  if (r.status !== 0) throw new Error(`cpio failed (${r.status}): ${r.stderr ?? r.error}`);
  writeFileSync(out, r.stdout);
}

/**
 * The /init that loads the modules, mounts ROOTDEV (ext4, read-only, journal not replayed, so
 * the root's bytes stay the version's) and switch_roots into it, running /sbin/init there.
 */
export function rootInit(rootDev: string): string {
  return [
    '#!/bin/busybox sh',
    'B=/bin/busybox',
    '$B mkdir -p /proc /sys /dev /newroot',
    '$B mount -t devtmpfs dev /dev',
    'for m in $($B cat /lib/order); do $B insmod /lib/$m.ko || echo "STRATA-INSMOD-FAILED $m"; done',
    `i=0; while [ ! -b ${rootDev} ] && [ $i -lt 600 ]; do $B sleep 0.1; i=$((i+1)); done`,
    `$B mount -t ext4 -o ro,noload ${rootDev} /newroot || { echo "STRATA-MOUNT-FAILED"; $B poweroff -f; }`,
    '$B mount -t devtmpfs dev /newroot/dev',
    'exec $B switch_root /newroot /sbin/init',
    '',
  ].join('\n');
}

export interface BootResult {
  console: string;
  code: number | null;
  timedOut: boolean;
  seconds: number;
  /** Seconds from qemu's start to the first console line holding the marker. */
  markerSeconds?: number;
}

/**
 * qemu-system-x86_64 with the serial console on a pipe: `-nodefaults -display none -monitor none
 * -serial stdio`, stdin /dev/null. (No -nographic: it multiplexes the monitor onto stdio.)
 * Kills qemu after `timeoutMs`; resolves with the console either way.
 */
export function bootQemu(
  args: string[],
  opts: {
    accel: Accel;
    timeoutMs: number;
    marker?: string;
    /** Kill qemu (SIGKILL) once the marker shows (benches time the boot, not the shutdown). */
    stopAtMarker?: boolean;
    /** Options of the TCG accelerator (e.g. `thread=multi`); ignored under KVM. */
    tcgProps?: string;
    onLine?(line: string): void;
  },
): Promise<BootResult> {
  const t0 = Date.now();
  const q = spawn(
    'qemu-system-x86_64',
    [
      '-accel',
      opts.accel.accel === 'tcg' && opts.tcgProps ? `tcg,${opts.tcgProps}` : opts.accel.accel,
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-monitor',
      'none',
      '-serial',
      'stdio',
      '-no-reboot',
      ...args,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let text = '';
  let pending = '';
  let markerSeconds: number | undefined;
  const onData = (c: Buffer) => {
    text += c.toString('latin1');
    pending += c.toString('latin1');
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl).replace(/\r$/, '');
      pending = pending.slice(nl + 1);
      if (opts.marker && markerSeconds === undefined && line.includes(opts.marker)) {
        markerSeconds = (Date.now() - t0) / 1000;
        if (opts.stopAtMarker) q.kill('SIGKILL');
      }
      opts.onLine?.(line);
    }
  };
  q.stdout.on('data', onData);
  q.stderr.on('data', onData);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    q.kill('SIGKILL');
  }, opts.timeoutMs);
  return new Promise((resolve, reject) => {
    q.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`qemu-system-x86_64 did not start: ${e.message}`));
    });
    q.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ console: text, code, timedOut, seconds: (Date.now() - t0) / 1000, markerSeconds });
    });
  });
}

/**
 * A guest's root tree: static busybox as /bin/busybox, `init` as /sbin/init, and the empty
 * /etc, /proc and /dev its init needs.
 */
export async function busyboxRoot(tree: string, init: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'etc', 'proc', 'dev']) mkdirSync(path.join(tree, d), { recursive: true });
  await run('cp', [staticBusybox(), path.join(tree, 'bin', 'busybox')]);
  writeFileSync(path.join(tree, 'sbin', 'init'), init, { mode: 0o755 });
}

/**
 * A guest's disk of `bytes`: GPT (sgdisk), one Linux partition from 1 MiB (LBA 2048) to the
 * end, its ext4 made by mkfs.ext4 -d from `tree` right into the partition.
 */
export async function gptExt4Disk(out: string, tree: string, bytes: number): Promise<void> {
  await run('truncate', ['-s', String(bytes), out]);
  await run('sgdisk', ['-o', '-n', '1:2048:0', '-t', '1:8300', out]);
  const last = Number(/Last sector: (\d+)/.exec(await run('sgdisk', ['-i', '1', out]))?.[1]);
  const kib = Math.floor(((last - 2048 + 1) * 512) / 4096) * 4;
  await run('mkfs.ext4', ['-q', '-F', '-E', `offset=${2048 * 512}`, '-d', tree, out, `${kib}k`]);
}
