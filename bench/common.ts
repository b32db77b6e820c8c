/**
 * What every benchmark needs once: the repository root, the CLI, running a tool, and the
 * debootstrapped Debian tree several benches measure.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (benches run from dist/bench, sources live in bench/). */
export const ROOT = (() => {
  let d = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(d, 'package.json'))) d = path.dirname(d);
  return d;
})();
export const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'bin.js');

/** `--name VALUE` from the command line. */
export function opt(name: string): string | undefined {
  const args = process.argv.slice(2);
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** Run a tool and return its stdout; throws with its stderr on a non-zero exit. */
export function sh(cmd: string, argv: string[], opts: { cwd?: string; input?: string } = {}): string {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 1 << 30, cwd: opts.cwd, input: opts.input });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

export function need(cmd: string, pkg: string): void {
  if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0)
    throw new Error(`${cmd} not found: apt-get install ${pkg}`);
}

/** The Debian mirror apt uses here (deb822 URIs: or one-line deb entries), else deb.debian.org. */
export function aptMirror(): string {
  const files = ['/etc/apt/sources.list'];
  const d = '/etc/apt/sources.list.d';
  if (existsSync(d)) for (const f of readdirSync(d)) files.push(path.join(d, f));
  for (const f of files) {
    if (!existsSync(f)) continue;
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(/^\s*URIs:\s*(\S+)/gm)) if (/\/debian\/?$/.test(m[1])) return m[1];
    for (const m of text.matchAll(/^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/gm)) {
      if (/\/debian\/?$/.test(m[1])) return m[1];
    }
  }
  return 'http://deb.debian.org/debian';
}

/** `BENCH/rootfs`: `debootstrap --variant=minbase bookworm`, made once and kept. */
export function benchRootfs(bench: string, log: (m: string) => void): string {
  const dir = path.join(bench, 'rootfs');
  if (!existsSync(dir)) {
    need('debootstrap', 'debootstrap');
    mkdirSync(bench, { recursive: true });
    const tmp = `${dir}.tmp`;
    rmSync(tmp, { recursive: true, force: true });
    const mirror = aptMirror();
    log(`debootstrap --variant=minbase bookworm from ${mirror} (once)`);
    sh('debootstrap', ['--variant=minbase', 'bookworm', tmp, mirror]);
    renameSync(tmp, dir);
  }
  return dir;
}
