import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { FIXTURES } from './tools.js';

/**
 * What a test run killed before its cleanup (SIGKILL, a CI timeout) leaves under the fixture
 * cache's scratch directory, found by path: the directories `scratch(name)` made for one of
 * `names` (`<name>-<pid>-<time>-<random>`) whose process is gone, the kernel mounts under
 * them (lazily unmounted, deepest first) and the loop devices behind those mounts (detached:
 * `mount -o loop` sets autoclear, so the lazy unmount frees them; an explicit detach is for
 * one that lacks the flag). A directory of a process still running is left alone (another
 * run of the same test, here or in a parallel session sharing the cache). Returns what it
 * removed, for the test's log.
 */
export function sweepStaleScratch(names: readonly string[]): { dirs: string[]; mounts: string[]; loops: string[] } {
  const root = path.join(FIXTURES, 'scratch');
  const done = { dirs: [] as string[], mounts: [] as string[], loops: [] as string[] };
  let entries: string[];
  try {
    entries = readdirSync(root);
  } catch {
    return done;
  }
  const stale: string[] = [];
  for (const e of entries) {
    const m = /^(.*)-(\d+)-\d+-[a-z0-9]+$/.exec(e);
    if (!m || !names.includes(m[1]) || existsSync(`/proc/${m[2]}`)) continue;
    stale.push(path.join(root, e));
  }
  if (stale.length === 0) return done;
  const under = (p: string) => stale.some((d) => p === d || p.startsWith(`${d}/`));
  const mounts = mountTable()
    .filter((m) => under(m.target))
    .sort((a, b) => b.target.length - a.target.length);
  for (const m of mounts) {
    spawnSync('umount', ['-l', m.target], { stdio: 'ignore' });
    done.mounts.push(m.target);
    if (/^\/dev\/loop\d+$/.test(m.source)) {
      // already gone when autoclear freed it on the lazy unmount: the error is ignored
      spawnSync('losetup', ['-d', m.source], { stdio: 'ignore' });
      done.loops.push(m.source);
    }
  }
  for (const d of stale) {
    // a mount still there (one umount -l could not take) is left, not descended into
    if (mountTable().some((m) => under(m.target) && m.target.startsWith(`${d}/`))) continue;
    rmSync(d, { recursive: true, force: true });
    done.dirs.push(d);
  }
  return done;
}

/** The mounts this process sees: mount point and source (mountinfo's octal escapes undone). */
function mountTable(): Array<{ target: string; source: string }> {
  const unoctal = (s: string) =>
    s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
  const out: Array<{ target: string; source: string }> = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-');
    out.push({ target: unoctal(f[4]), source: unoctal(f[dash + 2] ?? '') });
  }
  return out;
}
