/**
 * bench:large-store (issue 22) — check-in, diff and search of a large generated tree
 * (test/helpers/large-tree-pair.ts: --entries N, default 200,000, on ext4 by `mkfs.ext4 -d`;
 * the second version has 1% of its files edited, removed or added), each with wall time
 * and peak RSS (/usr/bin/time -f %M), beside:
 * - the same commands of another Strata build (--baseline DIR holding dist/cli/strata.cjs,
 *   e.g. main's build copied to /tmp), when given;
 * - peers: `casync make` of the raw image (check-in), `rsync -rlcn --delete` of the two
 *   kernel-mounted trees (diff), `find -path` over the mounted tree (search --path).
 * JSON on stdout. Options: --entries N, --baseline DIR, --out DIR (libraries; default
 * /dev/shm/strata-bench-large-store).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { largeTreeImage } from '../test/helpers/large-tree-pair.js';
import { CLI, need, opt } from './common.js';

interface Run {
  seconds: number;
  maxRssMiB: number;
}

function timed(cmd: string, args: string[]): Run & { stdout: string } {
  const r = spawnSync('/usr/bin/time', ['-f', 'TIME %e %M', cmd, ...args], { encoding: 'utf8', maxBuffer: 1 << 30 });
  const m = /TIME ([\d.]+) (\d+)\s*$/.exec(r.stderr);
  if (!m) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  if (r.status !== 0 && !(cmd === process.execPath && args.includes('diff') && r.status === 1)) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  }
  return { seconds: Number(m[1]), maxRssMiB: Math.round(Number(m[2]) / 1024), stdout: r.stdout };
}

function strataRuns(cli: string, lib: string, base: string, changed: string) {
  rmSync(lib, { recursive: true, force: true });
  const s = (...a: string[]) => timed(process.execPath, [cli, ...a, '--library', lib]);
  const c1 = s('checkin', base, '--name', 'big', '--json');
  const c2 = s('checkin', changed, '--name', 'big', '--json');
  const d = s('diff', 'big@1', 'big@2', '--json');
  const q = s('search', '--path', '/pkg1*/d1*/lib-1*.so', '--json');
  rmSync(lib, { recursive: true, force: true });
  const pick = (r: Run) => ({ seconds: r.seconds, maxRssMiB: r.maxRssMiB });
  return { checkin: pick(c1), checkinChanged: pick(c2), diff: pick(d), search: pick(q) };
}

async function main(): Promise<void> {
  for (const [c, p] of [
    ['casync', 'casync'],
    ['rsync', 'rsync'],
    ['mkfs.ext4', 'e2fsprogs'],
  ])
    need(c, p);
  const entries = Number(opt('--entries') ?? 200_000);
  const out = opt('--out') ?? '/dev/shm/strata-bench-large-store';
  mkdirSync(out, { recursive: true });
  const base = await largeTreeImage(entries);
  const changed = await largeTreeImage(entries, true);
  const ours = strataRuns(CLI, path.join(out, 'ours'), base, changed);
  const baselineDir = opt('--baseline');
  const baseline = baselineDir
    ? strataRuns(path.join(baselineDir, 'dist', 'cli', 'strata.cjs'), path.join(out, 'baseline'), base, changed)
    : undefined;
  // peers
  const store = path.join(out, 'casync.castr');
  rmSync(store, { recursive: true, force: true });
  const casync = timed('casync', ['make', '--store', store, path.join(out, 'big.caibx'), base]);
  rmSync(store, { recursive: true, force: true });
  const ma = path.join(out, 'mnt-a');
  const mb = path.join(out, 'mnt-b');
  mkdirSync(ma, { recursive: true });
  mkdirSync(mb, { recursive: true });
  spawnSync('mount', ['-o', 'ro,loop,noload', base, ma]);
  spawnSync('mount', ['-o', 'ro,loop,noload', changed, mb]);
  let rsync: Run;
  let find: Run;
  try {
    rsync = timed('rsync', ['-rlcn', '--delete', '--itemize-changes', `${mb}/`, `${ma}/`]);
    find = timed('find', [ma, '-path', `${ma}/pkg1*/d1*/lib-1*.so`]);
  } finally {
    spawnSync('umount', [ma]);
    spawnSync('umount', [mb]);
  }
  const ratio = (a: Run, b: Run) => ({
    time: Number((a.seconds / b.seconds).toFixed(2)),
    rss: Number((a.maxRssMiB / b.maxRssMiB).toFixed(2)),
  });
  const pick = (r: Run) => ({ seconds: r.seconds, maxRssMiB: r.maxRssMiB });
  process.stdout.write(
    `${JSON.stringify(
      {
        entries,
        ours,
        baseline: baseline ?? null,
        peers: { casyncMake: pick(casync), rsync: pick(rsync), find: pick(find) },
        ratios: {
          checkinVsCasync: ratio(ours.checkin, casync),
          diffVsRsync: ratio(ours.diff, rsync),
          searchVsFind: ratio(ours.search, find),
          ...(baseline
            ? {
                checkinVsBaseline: ratio(ours.checkin, baseline.checkin),
                diffVsBaseline: ratio(ours.diff, baseline.diff),
              }
            : {}),
        },
      },
      null,
      2,
    )}\n`,
  );
}

await main();
