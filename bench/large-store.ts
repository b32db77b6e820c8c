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
 * /dev/shm/strata-bench-large-store), --only LIST (of checkin, diff, search; default all),
 * --library DIR (a library already holding big@1 and big@2 of these images, e.g. kept from
 * an earlier check-in: diff and search run on it, no check-in; it is not removed).
 * Every process under /usr/bin/time: wall, user and system CPU seconds, peak RSS.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { largeTreeImage } from '../test/helpers/large-tree-pair.js';
import { CLI, need, opt } from './common.js';

interface Run {
  seconds: number;
  /** user + system CPU seconds */
  cpu: number;
  maxRssMiB: number;
}

function timed(cmd: string, args: string[]): Run & { stdout: string } {
  const r = spawnSync('/usr/bin/time', ['-f', 'TIME %e %U %S %M', cmd, ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 30,
  });
  const m = /TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)\s*$/.exec(r.stderr);
  if (!m) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  if (r.status !== 0 && !(cmd === process.execPath && args.includes('diff') && r.status === 1)) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  }
  return {
    seconds: Number(m[1]),
    cpu: Number((Number(m[2]) + Number(m[3])).toFixed(2)),
    maxRssMiB: Math.round(Number(m[4]) / 1024),
    stdout: r.stdout,
  };
}

const pick = (r: Run): Run => ({ seconds: r.seconds, cpu: r.cpu, maxRssMiB: r.maxRssMiB });

/** The rows of `only`; a library given (`kept`) is used as it is (big@1, big@2 in it), else made and removed. */
function strataRuns(cli: string, lib: string, base: string, changed: string, only: Set<string>, kept: boolean) {
  if (!kept) rmSync(lib, { recursive: true, force: true });
  const s = (...a: string[]) => pick(timed(process.execPath, [cli, ...a, '--library', lib]));
  const out: Partial<Record<'checkin' | 'checkinChanged' | 'diff' | 'search', Run>> = {};
  if (!kept) {
    out.checkin = s('checkin', base, '--name', 'big', '--json');
    out.checkinChanged = s('checkin', changed, '--name', 'big', '--json');
  }
  if (only.has('diff')) out.diff = s('diff', 'big@1', 'big@2', '--json');
  if (only.has('search')) out.search = s('search', '--path', '/pkg1*/d1*/lib-1*.so', '--json');
  if (!kept) rmSync(lib, { recursive: true, force: true });
  if (!only.has('checkin')) {
    delete out.checkin;
    delete out.checkinChanged;
  }
  return out;
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
  const only = new Set((opt('--only') ?? 'checkin,diff,search').split(',').map((x) => x.trim()));
  for (const o of only)
    if (!['checkin', 'diff', 'search'].includes(o)) throw new Error(`--only: ${o} is not checkin, diff or search`);
  const given = opt('--library');
  if (given && only.has('checkin')) throw new Error('--library is for diff and search only (--only diff,search)');
  const base = await largeTreeImage(entries);
  const changed = await largeTreeImage(entries, true);
  const ours = strataRuns(CLI, given ?? path.join(out, 'ours'), base, changed, only, given !== undefined);
  const baselineDir = opt('--baseline');
  const baseline = baselineDir
    ? strataRuns(
        path.join(baselineDir, 'dist', 'cli', 'strata.cjs'),
        given ?? path.join(out, 'baseline'),
        base,
        changed,
        only,
        given !== undefined,
      )
    : undefined;
  // peers
  const peers: Partial<Record<'casyncMake' | 'rsync' | 'find', Run>> = {};
  if (only.has('checkin')) {
    const store = path.join(out, 'casync.castr');
    rmSync(store, { recursive: true, force: true });
    peers.casyncMake = pick(timed('casync', ['make', '--store', store, path.join(out, 'big.caibx'), base]));
    rmSync(store, { recursive: true, force: true });
  }
  if (only.has('diff') || only.has('search')) {
    const ma = path.join(out, 'mnt-a');
    const mb = path.join(out, 'mnt-b');
    mkdirSync(ma, { recursive: true });
    mkdirSync(mb, { recursive: true });
    spawnSync('mount', ['-o', 'ro,loop,noload', base, ma]);
    spawnSync('mount', ['-o', 'ro,loop,noload', changed, mb]);
    try {
      if (only.has('diff'))
        peers.rsync = pick(timed('rsync', ['-rlcn', '--delete', '--itemize-changes', `${mb}/`, `${ma}/`]));
      if (only.has('search')) peers.find = pick(timed('find', [ma, '-path', `${ma}/pkg1*/d1*/lib-1*.so`]));
    } finally {
      spawnSync('umount', [ma]);
      spawnSync('umount', [mb]);
    }
  }
  const ratio = (a: Run | undefined, b: Run | undefined) =>
    a && b
      ? {
          time: Number((a.seconds / b.seconds).toFixed(2)),
          cpu: Number((a.cpu / b.cpu).toFixed(2)),
          rss: Number((a.maxRssMiB / b.maxRssMiB).toFixed(2)),
        }
      : undefined;
  process.stdout.write(
    `${JSON.stringify(
      {
        entries,
        loadAverage: loadavg().map((x) => Number(x.toFixed(1))),
        ours,
        baseline: baseline ?? null,
        peers,
        ratios: {
          checkinVsCasync: ratio(ours.checkin, peers.casyncMake),
          diffVsRsync: ratio(ours.diff, peers.rsync),
          searchVsFind: ratio(ours.search, peers.find),
          ...(baseline
            ? {
                checkinVsBaseline: ratio(ours.checkin, baseline.checkin),
                diffVsBaseline: ratio(ours.diff, baseline.diff),
                searchVsBaseline: ratio(ours.search, baseline.search),
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
