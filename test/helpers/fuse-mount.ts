import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import * as path from 'node:path';
import { CLI } from './cli.js';
import { FIXTURES, run } from './tools.js';

/** A `strata mount` running as its own process (the tests walk the mount synchronously). */
export interface StrataMount {
  mnt: string;
  child: ChildProcess;
  stderr(): string;
  /** Signal the server (SIGTERM by default) and wait for it: its exit code (or the signal). */
  stop(signal?: NodeJS.Signals): Promise<number | string>;
  /** Resolves with the exit code when the server ends by itself. */
  exited: Promise<number | string>;
}

export function isMounted(mnt: string): boolean {
  const unesc = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o) => String.fromCharCode(Number.parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => unesc(l.split(' ')[4] ?? '') === mnt);
}

/** A fresh, unique, empty mount point. */
export function mountPoint(name: string): string {
  const d = path.join(
    FIXTURES,
    'scratch',
    `mnt-${name}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 7)}`,
  );
  mkdirSync(d, { recursive: true });
  return d;
}

/** `strata mount ARGS... MNT`, resolved once it says it is mounted (rejects with its stderr if it exits). */
export function strataMount(args: string[], name = 'm'): Promise<StrataMount> {
  const mnt = mountPoint(name);
  const child = spawn(process.execPath, [CLI, 'mount', ...args, mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr?.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<number | string>((resolve) => {
    child.on('close', (code, sig) => resolve(code ?? sig ?? -1));
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`strata mount did not get ready in 120 s: ${err}`));
    }, 120_000);
    child.stdout?.on('data', (d) => {
      out += d;
      if (/^mounted /m.test(out)) {
        clearTimeout(timer);
        resolve({
          mnt,
          child,
          stderr: () => err,
          exited,
          stop: async (signal = 'SIGTERM') => {
            child.kill(signal);
            const code = await exited;
            if (isMounted(mnt)) await run('umount', ['-l', mnt]).catch(() => {});
            // never recursive: a mount still there must not be emptied
            if (!isMounted(mnt)) rmdirSync(mnt);
            return code;
          },
        });
      }
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`strata mount exited (${code}) before it was ready: ${err}`));
    });
  });
}
