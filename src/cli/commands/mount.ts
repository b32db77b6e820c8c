import { spawn } from 'node:child_process';
import { mkdtempSync, rmdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { StrataError } from '../../library/index.js';
import type { FuseSession } from '../../serve/index.js';
import { addAddressOptions, noteTarget, openOptionsFrom, TARGET_HELP, targetOptionsFrom } from '../common.js';
import { printJson, warn, warnAll } from '../output.js';
import { parseSize } from './convert.js';

const CHILD_ENV = 'STRATA_MOUNT_SERVER';

/**
 * `mount --background`: the same command again as a detached process (no stdio, an IPC
 * channel to say it is mounted or why not), and return once it is.
 */
async function background(image: string, o: Record<string, unknown>): Promise<void> {
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    env: { ...process.env, [CHILD_ENV]: '1' },
  });
  const said = await new Promise<{ ready?: string; error?: string }>((resolve) => {
    child.on('message', (m: { ready?: string; error?: string }) => resolve(m));
    child.on('error', (e) => resolve({ error: e.message }));
    child.on('exit', (c) => resolve({ error: `the mount server exited (${c}) before mounting` }));
  });
  if (said.error !== undefined) throw new StrataError('IO', said.error);
  child.unref();
  if (child.connected) child.disconnect();
  if (o.json) printJson({ mountpoint: said.ready, source: image, readOnly: true, pid: child.pid });
  else process.stdout.write(`mounted ${image} at ${said.ready} (read-only; server pid ${child.pid})\n`);
}

/** Until SIGINT/SIGTERM or the kernel ends the mount (someone ran umount): which one. */
function served(session: FuseSession): Promise<string> {
  return new Promise((resolve) => {
    const stop = (sig: string) => () => resolve(sig);
    process.once('SIGINT', stop('SIGINT'));
    process.once('SIGTERM', stop('SIGTERM'));
    session.ended.then(resolve);
  });
}

async function mountTarget(image: string, mountpoint: string, o: Record<string, unknown>): Promise<FuseSession> {
  if (o.rw) throw new StrataError('UNSUPPORTED', '--rw (a copy-up overlay) is not implemented yet: mount read-only');
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(mountpoint);
  } catch {
    throw new StrataError('NOT_FOUND', 'mount point does not exist', { file: mountpoint });
  }
  if (!st.isDirectory()) throw new StrataError('USAGE', 'mount point is not a directory', { file: mountpoint });
  const { classifyTarget } = await import('../../library/index.js');
  noteTarget(classifyTarget(image, targetOptionsFrom(o)));
  const cacheBytes = o.cacheSize === undefined ? undefined : parseSize(String(o.cacheSize), 'cache size');
  const { openMountTree, FuseSession } = await import('../../serve/index.js');
  const { tree, warnings } = await openMountTree(image, {
    address: { part: o.part as string | undefined, lv: o.lv as string | undefined },
    open: openOptionsFrom(o),
    target: targetOptionsFrom(o),
  });
  warnAll(warnings);
  const session = new FuseSession(tree, mountpoint, { cacheBytes, onWarning: warn });
  try {
    await session.mount();
  } catch (e) {
    await tree.close().catch(() => {});
    throw e;
  }
  return session;
}

/**
 * `mount TARGET MOUNTPOINT`: a FUSE mount (the kernel protocol spoken by Strata itself over
 * /dev/fuse, as root) of an image's file system or a library version's file manifest,
 * read-only, served until SIGINT/SIGTERM or `strata umount`. `umount MOUNTPOINT` ends one.
 * `virtiofs TARGET --socket PATH` mounts TARGET and starts qemu's virtiofsd on it.
 */
export function registerMountCommands(program: Command): void {
  addAddressOptions(
    program
      .command('mount')
      .description('mount an image file system or a library version read-only with FUSE (as root), until unmounted')
      .argument('<target>', TARGET_HELP)
      .argument('<mountpoint>', 'an existing directory')
      .option('--cache-size <size>', 'block cache for file reads (default 64M)')
      .option('--rw', 'writable copy-up overlay (not implemented yet)')
      .option('--background', 'return once mounted, serving on in a detached process (its warnings are not shown)')
      .option('--json', 'print {mountpoint, source} as JSON once mounted'),
  ).action(async (image: string, mountpoint: string, o: Record<string, unknown>) => {
    if (o.background && process.env[CHILD_ENV] !== '1') return background(image, o);
    let session: FuseSession;
    try {
      session = await mountTarget(image, mountpoint, o);
    } catch (e) {
      process.send?.({ error: (e as Error).message });
      throw e;
    }
    if (process.send) {
      process.send({ ready: session.mountpoint });
      process.disconnect?.();
    } else if (o.json) printJson({ mountpoint: session.mountpoint, source: image, readOnly: true });
    else process.stdout.write(`mounted ${image} at ${session.mountpoint} (read-only)\n`);
    await served(session);
    await session.unmount();
  });

  program
    .command('umount')
    .description('unmount a Strata mount (its server then exits)')
    .argument('<mountpoint>', 'where it is mounted')
    .option('-l, --lazy', 'detach now even when busy (umount -l)')
    .action(async (mountpoint: string, o: Record<string, unknown>) => {
      const args = o.lazy ? ['-l', mountpoint] : [mountpoint];
      const r = await new Promise<{ status: number; stderr: string }>((resolve) => {
        const p = spawn('umount', args, { stdio: ['ignore', 'ignore', 'pipe'] });
        let err = '';
        p.stderr.on('data', (d) => {
          err += d;
        });
        p.on('error', (e) => resolve({ status: 127, stderr: e.message }));
        p.on('close', (s) => resolve({ status: s ?? 1, stderr: err.trim() }));
      });
      if (r.status !== 0) throw new StrataError('IO', `cannot unmount ${mountpoint}: ${r.stderr}`);
    });

  addAddressOptions(
    program
      .command('virtiofs')
      .description("serve an image or library version to a guest over virtio-fs (qemu's virtiofsd on a Strata mount)")
      .argument('<target>', TARGET_HELP)
      .requiredOption('--socket <path>', 'vhost-user socket for qemu')
      .option('--tag <tag>', 'the mount tag the guest uses', 'strata')
      .option('--mountpoint <dir>', 'where the Strata mount goes (default: a fresh temporary folder)')
      .option('--virtiofsd <path>', 'virtiofsd program', '/usr/lib/qemu/virtiofsd')
      .option('--memory <size>', 'guest memory size, for the printed qemu arguments', '1G')
      .option('--cache-size <size>', 'block cache for file reads (default 64M)')
      .option('--json', 'print the qemu arguments as JSON'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const own = o.mountpoint === undefined;
    const mnt = own ? mkdtempSync(path.join(tmpdir(), 'strata-virtiofs-')) : String(o.mountpoint);
    let session: FuseSession | undefined;
    try {
      session = await mountTarget(image, mnt, o);
      const socket = path.resolve(String(o.socket));
      const daemon = spawn(
        String(o.virtiofsd),
        [`--socket-path=${socket}`, '-o', `source=${session.mountpoint}`, '-o', 'cache=always', '-o', 'xattr'],
        { stdio: ['ignore', 'inherit', 'inherit'] },
      );
      const exited = new Promise<string>((resolve) => {
        daemon.on('error', (e) => resolve(`virtiofsd: ${e.message}`));
        daemon.on('exit', (c, s) => resolve(`virtiofsd exited (${s ?? c})`));
      });
      const qemu = [
        '-chardev',
        `socket,id=strata-fs,path=${socket}`,
        '-device',
        `vhost-user-fs-pci,queue-size=1024,chardev=strata-fs,tag=${o.tag}`,
        '-object',
        `memory-backend-memfd,id=strata-mem,size=${o.memory},share=on`,
        '-numa',
        'node,memdev=strata-mem',
        '-m',
        String(o.memory),
      ];
      if (o.json) printJson({ socket, tag: o.tag, mountpoint: session.mountpoint, qemu });
      else {
        process.stdout.write(`virtiofsd on ${socket} serves ${image} (read-only) as tag ${o.tag}\n`);
        process.stdout.write(`qemu arguments: ${qemu.join(' ')}\n`);
        process.stdout.write(`guest root on it: rootfstype=virtiofs root=${o.tag}\n`);
      }
      const why = await Promise.race([served(session), exited]);
      if (!why.startsWith('virtiofsd')) daemon.kill('SIGTERM');
      await exited;
    } finally {
      await session?.unmount().catch(() => {});
      if (own) {
        try {
          rmdirSync(mnt);
        } catch {
          // still busy: left for the system's tmp cleaning
        }
      }
    }
  });
}
