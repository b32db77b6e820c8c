import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmdirSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { homedir, tmpdir } from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import type { ChangeSet } from '../../library/index.js';
import { REF_PREFIX, StrataError } from '../../library/index.js';
import type { FuseSession, LocalChunkCache } from '../../serve/index.js';
import {
  addAddressOptions,
  addressFrom,
  noteTarget,
  openOptionsFrom,
  TARGET_HELP,
  targetOptionsFrom,
} from '../common.js';
import { printJson, warn, warnAll } from '../output.js';
import { remoteOf } from '../remote.js';
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
  const said = await new Promise<{ ready?: string; error?: string; upper?: string }>((resolve) => {
    child.on('message', (m: { ready?: string; error?: string; upper?: string }) => resolve(m));
    child.on('error', (e) => resolve({ error: e.message }));
    child.on('exit', (c) => resolve({ error: `the mount server exited (${c}) before mounting` }));
  });
  if (said.error !== undefined) throw new StrataError('IO', said.error);
  child.unref();
  if (child.connected) child.disconnect();
  const upper = said.upper;
  if (o.json) printJson({ mountpoint: said.ready, source: image, readOnly: !upper, upper, pid: child.pid });
  else process.stdout.write(`mounted ${image} at ${said.ready} (${how(upper)}; server pid ${child.pid})\n`);
}

/** The chunk cache of remote mounts when --chunk-cache names none: $XDG_CACHE_HOME/strata/chunks (~/.cache). */
function defaultChunkCache(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(homedir(), '.cache');
  return path.join(base, 'strata', 'chunks');
}

const how = (upper: string | undefined) => (upper ? `writable; upper layer ${upper}` : 'read-only');

/** Where a writable mount's upper folder is noted, by mount point (for `strata commit MOUNTPOINT`). */
/** node:crypto when needed (a read-only mount never does: it is not loaded at start-up). */
const crypto = () => createRequire(import.meta.url)('node:crypto') as typeof import('node:crypto');

async function registryFile(mountpoint: string): Promise<string> {
  const { createHash } = crypto();
  const id = createHash('sha256').update(path.resolve(mountpoint)).digest('hex').slice(0, 24);
  return path.join(tmpdir(), 'strata-mounts', `${id}.json`);
}

/** What a writable mount notes in its upper folder (meta.json). */
interface UpperMeta {
  source: string;
  mountpoint: string;
  pid: number;
  version?: { library: string; ref: string };
  /** A version of a library service (mount --remote): its URL and NAME@N (no token is kept). */
  remote?: { url: string; ref: string };
  /** The file system mounted (--part / --lv): the one a commit edits. */
  address?: { part?: string; lv?: string };
}

/** A writable mount's server: `strata commit` asks (SIGUSR2) for the state as of now. */
function answerCommits(m: { upper?: string; save?: (nonce?: string) => void }): void {
  const { upper, save } = m;
  if (!save || !upper) return;
  process.on('SIGUSR2', () => {
    try {
      save(readFileSync(path.join(upper, 'commit-request'), 'utf8').trim());
    } catch (e) {
      warn(`saving the upper layer state: ${(e as Error).message}`);
    }
  });
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

async function mountTarget(
  image: string,
  mountpoint: string,
  o: Record<string, unknown>,
): Promise<{ session: FuseSession; upper?: string; save?: (nonce?: string) => void }> {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(mountpoint);
  } catch {
    throw new StrataError('NOT_FOUND', 'mount point does not exist', { file: mountpoint });
  }
  if (!st.isDirectory()) throw new StrataError('USAGE', 'mount point is not a directory', { file: mountpoint });
  const remote = await remoteOf(o, [image]);
  let isVersion = true;
  if (!remote) {
    const { classifyTarget } = await import('../../library/index.js');
    const target = classifyTarget(image, targetOptionsFrom(o));
    noteTarget(target);
    isVersion = target.kind === 'ref';
  } else if (o.library !== undefined) throw new StrataError('USAGE', '--remote and --library: choose one');
  const cacheBytes = o.cacheSize === undefined ? undefined : parseSize(String(o.cacheSize), 'cache size');
  const maxBytes = o.maxSize === undefined ? undefined : parseSize(String(o.maxSize), 'upper layer size');
  if (!o.rw && (o.upper !== undefined || maxBytes !== undefined)) {
    throw new StrataError('USAGE', '--upper and --max-size are for a writable mount (--rw)');
  }
  const { openMountTree, openRemoteMountTree, FuseSession, OverlayTree } = await import('../../serve/index.js');
  if (!o.rw && !isVersion) {
    // a read-only image: opened and served on the reader thread (each request read, answered
    // and written there, no hop to this thread); its opening errors and warnings come back here
    const session = new FuseSession(
      { image, options: { address: addressFrom(o), open: openOptionsFrom(o), target: targetOptionsFrom(o) } },
      mountpoint,
      { cacheBytes, onWarning: warn },
    );
    await session.mount();
    return { session };
  }
  let opened: Awaited<ReturnType<typeof openMountTree>>;
  let remoteVersion: UpperMeta['remote'];
  if (remote) {
    // a version of a library service: its manifests and chunks through the local chunk cache
    let cache: LocalChunkCache | undefined;
    if (o.chunkCache !== false) {
      const { ChunkCache } = await import('../../deploy/index.js');
      const dir = typeof o.chunkCache === 'string' ? o.chunkCache : defaultChunkCache();
      const max = o.chunkCacheSize === undefined ? undefined : parseSize(String(o.chunkCacheSize), 'chunk cache size');
      cache = await ChunkCache.open(dir, max);
    }
    const r = await openRemoteMountTree(remote, image.startsWith(REF_PREFIX) ? image.slice(REF_PREFIX.length) : image, {
      part: (o.part ?? o.lv) as string | undefined,
      cache,
      onWarning: warn,
    });
    opened = { tree: r.tree, warnings: [], kind: 'version' };
    remoteVersion = { url: remote.url, ref: `${r.version.image}@${r.version.number}` };
  } else {
    opened = await openMountTree(image, {
      address: addressFrom(o),
      open: openOptionsFrom(o),
      target: targetOptionsFrom(o),
    });
  }
  warnAll(opened.warnings);
  let tree = opened.tree;
  let upper: string | undefined;
  let overlay: InstanceType<typeof OverlayTree> | undefined;
  if (o.rw) {
    try {
      upper = path.resolve(o.upper === undefined ? mkdtempSync(path.join(tmpdir(), 'strata-upper-')) : String(o.upper));
      mkdirSync(upper, { recursive: true, mode: 0o700 });
      if (existsSync(path.join(upper, 'state.json'))) {
        throw new StrataError(
          'USAGE',
          "the upper folder already holds a mount's changes (commit them, or give a new --upper)",
          { file: upper },
        );
      }
      let timer: NodeJS.Timeout | undefined;
      overlay = new OverlayTree(opened.tree, upper, {
        maxBytes,
        // the state file follows the changes (a killed server loses at most the last moment)
        onChange: () => {
          if (timer) return;
          timer = setTimeout(() => {
            timer = undefined;
            try {
              overlay?.save();
            } catch (e) {
              warn(`saving the upper layer state: ${(e as Error).message}`);
            }
          }, 500);
          timer.unref();
        },
      });
      tree = overlay;
      const meta: UpperMeta = {
        source: image,
        mountpoint: path.resolve(mountpoint),
        pid: process.pid,
        version: opened.version,
        remote: remoteVersion,
        address:
          o.part !== undefined || o.lv !== undefined
            ? { part: o.part as string | undefined, lv: o.lv as string | undefined }
            : undefined,
      };
      writeFileSync(path.join(upper, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
      const reg = await registryFile(mountpoint);
      mkdirSync(path.dirname(reg), { recursive: true });
      writeFileSync(reg, JSON.stringify({ upper, mountpoint: meta.mountpoint }));
    } catch (e) {
      await opened.tree.close().catch(() => {});
      throw e;
    }
  }
  const session = new FuseSession(tree, mountpoint, { cacheBytes, onWarning: warn });
  try {
    await session.mount();
  } catch (e) {
    await tree.close().catch(() => {});
    throw e;
  }
  return { session, upper, save: overlay ? (n) => overlay?.save(n) : undefined };
}

/** The upper folder of `dir`: itself (it holds meta.json), or the one a writable mount at `dir` noted. */
async function upperOf(dir: string): Promise<string> {
  if (existsSync(path.join(dir, 'meta.json')) && existsSync(path.join(dir, 'data'))) return path.resolve(dir);
  let real = path.resolve(dir);
  try {
    real = realpathSync(dir);
  } catch {
    // a mount point of a killed server: not resolvable, its name is
  }
  for (const p of [real, path.resolve(dir)]) {
    try {
      const r = JSON.parse(readFileSync(await registryFile(p), 'utf8')) as { upper: string };
      if (existsSync(path.join(r.upper, 'meta.json'))) return r.upper;
    } catch {
      // not noted under this name
    }
  }
  throw new StrataError('NOT_FOUND', 'not the mount point or upper folder of a writable mount (mount --rw)', {
    file: dir,
  });
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/**
 * The state of an upper layer, as of now: a live server is asked (SIGUSR2, a nonce in
 * commit-request) to save it and the answer is awaited; a stopped one saved it when it ended.
 */
async function currentState(upper: string): Promise<{ state: unknown; live: boolean }> {
  const meta = JSON.parse(readFileSync(path.join(upper, 'meta.json'), 'utf8')) as UpperMeta;
  const stateFile = path.join(upper, 'state.json');
  const read = () => {
    try {
      return JSON.parse(readFileSync(stateFile, 'utf8')) as { nonce?: string };
    } catch {
      return undefined;
    }
  };
  if (alive(meta.pid) && meta.pid !== process.pid) {
    const { randomBytes } = crypto();
    const nonce = randomBytes(12).toString('hex');
    writeFileSync(path.join(upper, 'commit-request'), nonce);
    process.kill(meta.pid, 'SIGUSR2');
    const start = Date.now();
    let asked = start;
    let told = false;
    for (;;) {
      const s = read();
      if (s?.nonce === nonce) return { state: s, live: true };
      if (!alive(meta.pid)) break;
      const now = Date.now();
      // a live server that is slow to answer (its writes throttled by a busy disk) is waited
      // for, with a word on stderr; one that never answers is given up on after 5 minutes
      if (now - start > 300_000)
        throw new StrataError('IO', `the mount server (pid ${meta.pid}) did not save its state in 5 minutes`, {
          file: upper,
        });
      if (!told && now - start > 10_000) {
        told = true;
        warn(`waiting for the mount server (pid ${meta.pid}) to save its state`);
      }
      // asked again every 5 s: a save is idempotent (same nonce), and a request must not hang on
      // one signal that a busy or just-started server did not act on
      if (now - asked > 5000) {
        asked = now;
        process.kill(meta.pid, 'SIGUSR2');
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const s = read();
  if (!s)
    throw new StrataError('NOT_FOUND', 'the upper layer holds no state.json (no change was saved)', { file: upper });
  return { state: s, live: false };
}

/** What a commit of an upper folder notes there (committed.json), so that committing it again unchanged is a no-op. */
interface Committed {
  /** changeSetDigest of what was committed. */
  digest: string;
  ref: string;
  parent: string;
}

/**
 * `strata commit` of an upper folder: its change set as a new version of the mounted one
 * (or of --parent). The upper folder is not reset by a commit (a live mount goes on showing
 * the edits), so the change set of a later commit holds the earlier one's changes too: when
 * it is the same as the last one committed from this folder, nothing is made (and it says
 * so); when more changed, the new version is the whole change set over the same parent, with
 * the last commit as a further parent.
 */
async function commitUpper(upper: string, o: Record<string, unknown>): Promise<void> {
  const { changeSetDigest, checkUpperState, upperToChangeSet } = await import('../../serve/index.js');
  const { state, live } = await currentState(upper);
  const checked = checkUpperState(state, path.join(upper, 'state.json'));
  const set = upperToChangeSet(checked, upper, o.message as string | undefined);
  const meta = JSON.parse(readFileSync(path.join(upper, 'meta.json'), 'utf8')) as UpperMeta;
  if (o.dryRun) {
    if (o.json) {
      printJson({
        upper,
        live,
        source: meta.source,
        version: meta.version,
        remote: meta.remote,
        message: set.message,
        changes: set.changes.map((c) =>
          c.op === 'xattr' ? { ...c, value: c.value === null ? null : Buffer.from(c.value).toString('base64') } : c,
        ),
      });
    } else {
      process.stdout.write(`${set.changes.length} changes in ${upper} (${live ? 'mounted' : 'not mounted'}):\n`);
      for (const c of set.changes) {
        const rest = c.op === 'rename' ? ` -> ${c.to}` : c.op === 'symlink' || c.op === 'link' ? ` -> ${c.target}` : '';
        process.stdout.write(`  ${c.op} ${c.path}${rest}\n`);
      }
    }
    return;
  }
  if (o.remote !== undefined && o.library !== undefined)
    throw new StrataError('USAGE', '--remote and --library: choose one');
  const remoteUrl = (o.remote as string | undefined) ?? (o.library === undefined ? meta.remote?.url : undefined);
  let target: CommitTarget;
  if (remoteUrl !== undefined) {
    const ref =
      (o.parent as string | undefined) ??
      (meta.remote && meta.remote.url === remoteUrl.replace(/\/+$/, '') ? meta.remote.ref : undefined);
    if (ref === undefined) {
      throw new StrataError(
        'USAGE',
        `name the version of ${remoteUrl} the changes apply to (--parent REF): ${meta.source} was not mounted from it`,
        { file: upper },
      );
    }
    target = await remoteTarget(remoteUrl, ref, meta, o);
  } else {
    let base = meta.version;
    if (o.parent !== undefined) {
      const library = (o.library as string | undefined) ?? meta.version?.library;
      if (!library) {
        throw new StrataError(
          'USAGE',
          `--parent needs --library or --remote (the mount was of ${meta.remote ? 'a remote version' : 'an image file'})`,
        );
      }
      base = { library: path.resolve(library), ref: String(o.parent) };
    } else if (o.library !== undefined) throw new StrataError('USAGE', '--library goes with --parent');
    if (!base) {
      throw new StrataError(
        'USAGE',
        `${meta.source} is an image file, not a library version: name the version the changes apply to (--parent REF --library DIR, or --remote URL), or --dry-run`,
        { file: upper },
      );
    }
    target = await localTarget(base, meta, o);
  }
  try {
    if (set.changes.length === 0) {
      if (o.json) printJson({ upper, live, changes: 0, unchanged: true, ref: null });
      else process.stdout.write(`nothing to commit: the mount at ${meta.mountpoint} has no changes\n`);
      return;
    }
    const digest = await changeSetDigest(set);
    const doneFile = path.join(upper, 'committed.json');
    let last: Committed | undefined;
    try {
      const x = JSON.parse(readFileSync(doneFile, 'utf8')) as Committed;
      if (typeof x?.digest === 'string' && typeof x.ref === 'string' && typeof x.parent === 'string') last = x;
    } catch {
      // never committed from this folder
    }
    const { parentRef, image } = target;
    if (last && last.digest === digest && last.parent === parentRef && last.ref.startsWith(`${image}@`)) {
      if (o.json) printJson({ upper, live, changes: 0, unchanged: true, ref: last.ref, parent: last.parent });
      else {
        process.stdout.write(
          `nothing changed since ${last.ref} was committed from ${upper}: no new version (${set.changes.length} changes over ${last.parent}, all in ${last.ref})\n`,
        );
      }
      return;
    }
    // the last commit of this folder holds part of these changes: it is this version's parent too
    const made = await target.apply(set, last && last.parent === parentRef ? [last.ref] : undefined);
    const note: Committed = { digest, ref: made.ref, parent: made.parent };
    writeFileSync(`${doneFile}.tmp`, `${JSON.stringify(note, null, 2)}\n`);
    renameSync(`${doneFile}.tmp`, doneFile);
    if (o.json) printJson({ upper, live, ...(target.remote ? { remote: target.remote } : {}), ...made });
    else {
      process.stdout.write(
        `committed ${made.changes} changes of ${made.parent} as ${made.ref}${target.remote ? ` on ${target.remote}` : ''}${live ? ` (the mount still shows the edits over ${made.parent})` : ''}\n`,
      );
    }
  } finally {
    await target.close();
  }
}

/** Where a commit goes: a version of a local library, or of a library service. */
interface CommitTarget {
  /** NAME@N of the version the changes apply to, and the image the new version belongs to. */
  parentRef: string;
  image: string;
  /** The service's URL when remote. */
  remote?: string;
  apply(
    set: ChangeSet,
    alsoParents: string[] | undefined,
  ): Promise<{ ref: string; parent: string; changes: number } & Record<string, unknown>>;
  close(): Promise<void>;
}

async function localTarget(
  base: { library: string; ref: string },
  meta: UpperMeta,
  o: Record<string, unknown>,
): Promise<CommitTarget> {
  const { applyChanges, Library } = await import('../../library/index.js');
  const library = await Library.open(base.library);
  try {
    const parent = await library.catalog.resolve(base.ref);
    const parentRef = `${parent.image}@${parent.number}`;
    return {
      parentRef,
      image: (o.name as string | undefined) ?? parent.image,
      apply: async (set, alsoParents) => {
        const made = await applyChanges(library, parentRef, set, {
          name: o.name as string | undefined,
          workDir: o.workDir as string | undefined,
          address: meta.address,
          alsoParents,
        });
        return { ...made };
      },
      close: () => library.close(),
    };
  } catch (e) {
    await library.close();
    throw e;
  }
}

/**
 * A library service (token from $STRATA_TOKEN): the change set goes as one edit (POST
 * /v1/images/NAME/edits, the new files' bytes in it), which the service applies and checks
 * in as a version of the same image, if the token may write that image.
 */
async function remoteTarget(
  url: string,
  ref: string,
  meta: UpperMeta,
  o: Record<string, unknown>,
): Promise<CommitTarget> {
  if (o.workDir !== undefined)
    throw new StrataError('USAGE', '--work-dir is for a local library (the service writes the disk)');
  const { RemoteLibrary } = await import('../../serve/index.js');
  const remote = RemoteLibrary.fromEnv(url) as InstanceType<typeof RemoteLibrary>;
  const parent = await remote.resolve(ref);
  const parentRef = `${parent.image}@${parent.number}`;
  if (o.name !== undefined && o.name !== parent.image) {
    throw new StrataError(
      'USAGE',
      `a library service makes an edit of ${parentRef} a version of ${parent.image}: --name ${o.name} cannot be sent`,
    );
  }
  return {
    parentRef,
    image: parent.image,
    remote: remote.url,
    apply: async (set, alsoParents) => {
      const r = await remote.edit(parentRef, set.changes, {
        message: set.message,
        part: meta.address?.part,
        lv: meta.address?.lv,
        parents: alsoParents,
      });
      return { ...r, ref: `${r.image}@${r.number}` };
    },
    close: async () => {},
  };
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
      .option(
        '--cache-size <size>',
        'block cache for file reads (default: a sixteenth of the memory budget, 8M to 64M)',
      )
      .option(
        '--rw',
        'writable: changes go to an upper folder (the version is never changed); strata commit makes them a version',
      )
      .option(
        '--upper <dir>',
        'with --rw: the upper folder (default: a fresh private folder under the temporary directory)',
      )
      .option('--max-size <size>', 'with --rw: the most bytes the upper folder may hold (ENOSPC past it)')
      .option(
        '--remote <url>',
        'TARGET is a version of a library service, read through its API (default: $STRATA_REMOTE; token from $STRATA_TOKEN)',
      )
      .option(
        '--chunk-cache <dir>',
        'with --remote: chunks kept between mounts (default: $XDG_CACHE_HOME/strata/chunks; the format of deploy --cache)',
      )
      .option('--no-chunk-cache', 'with --remote: keep no chunks on disk')
      .option('--chunk-cache-size <size>', 'with --remote: bound of the chunk cache (default 10G)')
      .option('--background', 'return once mounted, serving on in a detached process (its warnings are not shown)')
      .option('--json', 'print {mountpoint, source} as JSON once mounted'),
  ).action(async (image: string, mountpoint: string, o: Record<string, unknown>) => {
    if (o.background && process.env[CHILD_ENV] !== '1') return background(image, o);
    let m: Awaited<ReturnType<typeof mountTarget>>;
    try {
      m = await mountTarget(image, mountpoint, o);
    } catch (e) {
      process.send?.({ error: (e as Error).message });
      throw e;
    }
    const { session, upper } = m;
    answerCommits(m);
    if (process.send) {
      process.send({ ready: session.mountpoint, upper });
      process.disconnect?.();
    } else if (o.json) printJson({ mountpoint: session.mountpoint, source: image, readOnly: !upper, upper });
    else process.stdout.write(`mounted ${image} at ${session.mountpoint} (${how(upper)})\n`);
    await served(session);
    await session.unmount();
  });

  program
    .command('commit')
    .description(
      'turn the changes of a writable mount (mount --rw) into a new version: on its mount point while mounted, or on its upper folder after',
    )
    .argument('<dir>', 'the mount point of a writable mount, or its upper folder')
    .option('-m, --message <text>', "what the new version's description says")
    .option('--dry-run', 'print the change set, make no version')
    .option('--name <image>', "the image the new version belongs to (default: the parent's)")
    .option('--work-dir <dir>', 'where the temporary disk is written (default: the temporary directory)')
    .option(
      '--parent <ref>',
      'the version the changes apply to (default: the mounted one; needed for a mounted image file)',
    )
    .option('--library <dir>', "with --parent: the library holding it (default: the mounted version's)")
    .option(
      '--remote <url>',
      "a library service the version is made on (default: the mounted version's, for mount --remote; token from $STRATA_TOKEN)",
    )
    .option('--json', 'print JSON')
    .action(async (dir: string, o: Record<string, unknown>) => {
      await commitUpper(await upperOf(dir), o);
    });

  program
    .command('umount')
    .description('unmount a Strata mount (its server then exits)')
    .argument('<mountpoint>', 'where it is mounted')
    .option('-l, --lazy', 'detach now even when busy (umount -l)')
    .option('--commit', 'first commit the changes of a writable mount (as strata commit MOUNTPOINT), then unmount')
    .option('-m, --message <text>', "with --commit: what the new version's description says")
    .option('--name <image>', "with --commit: the image the new version belongs to (default: the parent's)")
    .option('--work-dir <dir>', 'with --commit: where the temporary disk is written')
    .option('--json', 'with --commit: print the commit as JSON')
    .action(async (mountpoint: string, o: Record<string, unknown>) => {
      if (o.commit) await commitUpper(await upperOf(mountpoint), o);
      else if (o.message !== undefined || o.name !== undefined || o.json) {
        throw new StrataError('USAGE', '--message, --name and --json go with --commit');
      }
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
      .option(
        '--cache-size <size>',
        'block cache for file reads (default: a sixteenth of the memory budget, 8M to 64M)',
      )
      .option(
        '--rw',
        "writable: the guest's changes go to an upper folder (as mount --rw); strata commit UPPER makes them a version",
      )
      .option(
        '--upper <dir>',
        'with --rw: the upper folder (default: a fresh private folder under the temporary directory)',
      )
      .option('--max-size <size>', 'with --rw: the most bytes the upper folder may hold (ENOSPC past it)')
      .option('--json', 'print the qemu arguments as JSON'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const own = o.mountpoint === undefined;
    const mnt = own ? mkdtempSync(path.join(tmpdir(), 'strata-virtiofs-')) : String(o.mountpoint);
    let session: FuseSession | undefined;
    try {
      const m = await mountTarget(image, mnt, o);
      session = m.session;
      const upper = m.upper;
      answerCommits(m);
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
      if (o.json) printJson({ socket, tag: o.tag, mountpoint: session.mountpoint, readOnly: !upper, upper, qemu });
      else {
        process.stdout.write(`virtiofsd on ${socket} serves ${image} (${how(upper)}) as tag ${o.tag}\n`);
        process.stdout.write(`qemu arguments: ${qemu.join(' ')}\n`);
        process.stdout.write(`guest root on it: rootfstype=virtiofs root=${o.tag}${upper ? ' rw' : ''}\n`);
        if (upper) process.stdout.write(`once the guest is done: strata commit ${upper}\n`);
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
