import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const pexec = promisify(execFile);

/** Repository root (tests run from dist/test/..., sources live in test/...). */
export const ROOT = (() => {
  let d = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(d, 'package.json'))) d = path.dirname(d);
  return d;
})();

/** Where generated fixtures are cached between runs (gitignored). */
export const FIXTURES = process.env.STRATA_FIXTURES ?? path.join(ROOT, '.cache', 'fixtures');
mkdirSync(FIXTURES, { recursive: true });

/** Run a tool and return stdout; throws with stderr on non-zero exit. */
export async function run(cmd: string, args: string[], opts: { input?: string; cwd?: string } = {}): Promise<string> {
  try {
    const r = await pexec(cmd, args, { maxBuffer: 1 << 30, cwd: opts.cwd, encoding: 'utf8' });
    return r.stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr || err.message}`);
  }
}

/**
 * Unmount `dir`, retrying while the kernel says it is busy (on a loaded machine a just-closed
 * file can hold a mount for a moment: CI saw "target is busy" from an ntfs-3g mount that the
 * test had finished with), then wait until no process named in `daemonOf` still runs for it
 * (a FUSE daemon such as ntfs-3g flushes the image after the kernel lets go of the mount).
 */
export async function unmount(dir: string, daemonOf?: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await run('umount', [dir]);
      break;
    } catch (e) {
      if (i >= 40 || !/busy/i.test((e as Error).message)) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  if (!daemonOf) return;
  for (let i = 0; i < 300; i++) {
    if (spawnSync('pgrep', ['-f', '--', `${daemonOf}.* ${dir}`], { stdio: 'ignore' }).status !== 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${daemonOf} still runs for ${dir} 30 s after its unmount`);
}

/** Same as run, but binary stdout. */
export async function runBuffer(cmd: string, args: string[]): Promise<Buffer> {
  const r = await pexec(cmd, args, { maxBuffer: 1 << 30, encoding: 'buffer' });
  return r.stdout;
}

/** True when a command exists on PATH (or at an absolute path). */
export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/**
 * A cached fixture: `make(tmpPath)` writes the file; the result is moved into place
 * atomically, keyed by `key` (include every parameter that changes the output, and bump
 * a version suffix when the recipe changes).
 */
export async function fixture(key: string, make: (out: string) => Promise<void>): Promise<string> {
  const safe = key.replace(/[^A-Za-z0-9._-]+/g, '_');
  const final = path.join(FIXTURES, safe);
  if (existsSync(final)) return final;
  const tmp = `${final}.tmp-${process.pid}-${Date.now()}`;
  try {
    await make(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  try {
    renameSync(tmp, final);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    // Another test process built the same fixture meanwhile (a directory cannot be renamed
    // over a non-empty one): theirs is complete, use it.
    if (!existsSync(final)) throw e;
  }
  return final;
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

const made: string[] = [];

/**
 * A fresh scratch directory under the fixture cache, removed by the caller when it is done
 * with it, and at the latest when the test process exits (what the callers left used to stay
 * for the rest of a suite run: 2.4 GB of direct-copy outputs alone). One with a mount still
 * under it is left as it is: removing through a mount would change what is mounted.
 */
export function scratch(name: string): string {
  const d = path.join(
    FIXTURES,
    'scratch',
    `${name}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
  );
  mkdirSync(d, { recursive: true });
  if (made.length === 0) process.on('exit', removeScratch);
  made.push(d);
  return d;
}

function removeScratch(): void {
  let mounts: string[] = [];
  try {
    mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '');
  } catch {
    return; // no mount table to check against: leave them
  }
  for (const d of made) {
    if (mounts.some((m) => m === d || m.startsWith(`${d}/`))) continue;
    try {
      rmSync(d, { recursive: true, force: true });
    } catch {
      // a busy or vanished directory: nothing more to do on the way out
    }
  }
}
