/**
 * bench:large (issue 22) — Strata beside its peers on a large ext4 tree, time and peak RSS of
 * both sides, JSON lines on stdout.
 *
 * Set-up (cached): the tree of test/helpers/large-tree-pair.ts with LARGE_ENTRIES entries
 * (default 1,000,000: directories of 100 under 97 package directories, small files of 1-6,000
 * bytes, a few of 1.5 MB, duplicates, symlinks, hard links), `mkfs.ext4 -d` with 4 KiB blocks
 * into a sparse image in the fixture cache ($STRATA_FIXTURES, default .cache/fixtures), the
 * same image the tests use at 200,000 entries. The source tree is written to tmpfs
 * (/dev/shm) and removed after mkfs.
 *
 * Every process runs under GNU time (`/usr/bin/time -f %e %U %S %M`): wall seconds, CPU and
 * peak RSS, the same way for us and for the peer. Each case runs --runs N times (default 2),
 * alternating who goes first; the best wall time is kept, with that run's RSS.
 *
 * Cases (the CASES table; engineers add rows: check-in, diff and search are engineer
 * `store`'s):
 * - ls: `strata ls -R -l --json` vs `fls -r -p -l` (same metadata) and `fls -r -p` (names only);
 * - extract-tmpfs: `strata extract IMG / DIR` vs `debugfs -R "rdump / DIR"`, DIR on /dev/shm;
 * - extract-disk: the same onto BENCH_DIR (a disk), `sync` and a pause (--pause S, default 3)
 *   before each run so one run's writeback does not land on the next, and a `sync` right after
 *   it, timed apart (`syncMs`: the writeback the run left behind; `wallSyncMs` = wall + sync);
 * Every extraction's output is removed right after its run (and its sync), so a case needs the
 * room of one tree at a time.
 * - blockmap: `strata blockmap --summary` (no peer: TSK maps one block per process).
 *
 * Options: --runs N, --only CASE[,CASE] (case names), --memory SIZE (passed to every strata
 * run; default: the CLI's own default), --image FILE (another ext image, e.g. the tests'
 * 200,000-entry fixture; LARGE_* then only label the output).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { largeTreeImage } from '../test/helpers/large-tree-pair.js';
import { benchChildEnv, CLI, need, opt, ROOT } from './common.js';

const BENCH = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const ENTRIES = Number(process.env.LARGE_ENTRIES ?? 1_000_000);
const RUNS = Number(opt('--runs') ?? 2);
const ONLY = opt('--only')?.split(',');
const MEMORY = opt('--memory');
const PAUSE_MS = Number(opt('--pause') ?? 3) * 1000;

function log(msg: string): void {
  process.stderr.write(`bench:large: ${msg}\n`);
}

function line(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

/** The image, made once. */
async function setup(): Promise<string> {
  mkdirSync(BENCH, { recursive: true });
  const given = opt('--image');
  if (given) return path.resolve(given);
  need('mkfs.ext4', 'e2fsprogs');
  log(`the ${ENTRIES}-entry tree on ext4 (made once, into the fixture cache)`);
  const t0 = Date.now();
  const image = await largeTreeImage(ENTRIES);
  log(`ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return image;
}

export interface Measured {
  wallMs: number;
  userMs: number;
  sysMs: number;
  maxRssMiB: number;
}

/** One process under GNU time, stdout discarded. */
function run(cmd: string, argv: string[]): Promise<Measured> {
  const tf = path.join(BENCH, `time-${process.pid}.txt`);
  return new Promise((resolve, reject) => {
    const c = spawn('/usr/bin/time', ['-f', '%e %U %S %M', '-o', tf, cmd, ...argv], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    c.stderr.on('data', (b: Buffer) => {
      if (err.length < 4000) err += b;
    });
    c.on('error', reject);
    c.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${cmd} ${argv.join(' ')} exited ${code}: ${err}`));
      const [e, u, s, m] = readFileSync(tf, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
      rmSync(tf, { force: true });
      resolve({
        wallMs: Math.round(e * 1000),
        userMs: Math.round(u * 1000),
        sysMs: Math.round(s * 1000),
        maxRssMiB: Math.round((m / 1024) * 10) / 10,
      });
    });
  });
}

/** One side of a case: the command line, and what to do before and after each run. */
export interface Side {
  name: string;
  cmd: string;
  argv: string[];
  before?: () => Promise<void> | void;
  /** Runs after the measured process; a number returned is the ms of a wait that counts (a disk's sync). */
  after?: () => Promise<number | undefined> | number | undefined;
}

/** A row: Strata and (when there is one) the peer, run alternately. */
export interface Case {
  name: string;
  strata: Side;
  peer?: Side;
}

const strata = (args: string[]): Side => ({
  name: 'strata',
  cmd: process.execPath,
  argv: [CLI, ...args, ...(MEMORY ? ['--memory', MEMORY] : [])],
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A fresh extraction target (created: debugfs rdump wants it to exist; strata extract takes an
 * existing empty directory). On a disk: sync and a pause before, so the last run's writeback is
 * done; after the run a sync, timed (what the run left for writeback). The output is removed
 * after the run in both cases.
 */
function target(dir: string, disk: boolean): Pick<Side, 'before' | 'after'> {
  return {
    before: async () => {
      rmSync(dir, { recursive: true, force: true });
      if (disk) {
        await run('sync', []);
        await sleep(PAUSE_MS);
      }
      mkdirSync(dir);
    },
    after: async () => {
      const t0 = performance.now();
      if (disk) await run('sync', []);
      const syncMs = performance.now() - t0;
      rmSync(dir, { recursive: true, force: true });
      return disk ? Math.round(syncMs) : undefined;
    },
  };
}

/** The cases of issue 22; add rows here (check-in, diff, search come from engineer `store`). */
export function largeCases(image: string): Case[] {
  const shm = '/dev/shm';
  const tmpOut = path.join(shm, `strata-large-${process.pid}`);
  const diskOut = path.join(BENCH, `large-out-${process.pid}`);
  const cases: Case[] = [
    {
      name: 'ls -R -l --json vs fls -r -p -l',
      strata: strata(['ls', '-R', '-l', '--json', image, '/']),
      peer: { name: 'fls -r -p -l', cmd: 'fls', argv: ['-r', '-p', '-l', image] },
    },
    {
      name: 'ls -R vs fls -r -p',
      strata: strata(['ls', '-R', image, '/']),
      peer: { name: 'fls -r -p', cmd: 'fls', argv: ['-r', '-p', image] },
    },
    ...([false, true] as const).map(
      (disk): Case => ({
        name: disk ? 'extract / (disk)' : 'extract / (tmpfs)',
        strata: {
          ...strata(['extract', image, '/', `${disk ? diskOut : tmpOut}-s`]),
          ...target(`${disk ? diskOut : tmpOut}-s`, disk),
        },
        peer: {
          name: 'debugfs rdump',
          cmd: 'debugfs',
          argv: ['-R', `rdump / ${disk ? diskOut : tmpOut}-d`, image],
          ...target(`${disk ? diskOut : tmpOut}-d`, disk),
        },
      }),
    ),
    { name: 'blockmap --summary', strata: strata(['blockmap', '--summary', image]) },
  ];
  return cases;
}

type Result = Measured & { syncMs?: number; wallSyncMs?: number };

async function measure(side: Side): Promise<Result> {
  await side.before?.();
  const m = await run(side.cmd, side.argv);
  const syncMs = await side.after?.();
  return syncMs === undefined ? m : { ...m, syncMs, wallSyncMs: Math.round(m.wallMs + syncMs) };
}

const best = (xs: Result[]) => xs.reduce((a, b) => ((b.wallSyncMs ?? b.wallMs) < (a.wallSyncMs ?? a.wallMs) ? b : a));

async function main(): Promise<void> {
  const env = benchChildEnv();
  need('/usr/bin/time', 'time');
  need('fls', 'sleuthkit');
  need('debugfs', 'e2fsprogs');
  const image = await setup();
  const st = statSync(image);
  line({
    bench: 'large',
    entries: opt('--image') ? null : ENTRIES,
    image,
    imageBytes: st.size,
    imageRealBytes: st.blocks * 512,
    runs: RUNS,
    memory: MEMORY ?? 'default',
    ...env,
  });
  for (const c of largeCases(image)) {
    if (ONLY && !ONLY.some((o) => c.name.startsWith(o))) continue;
    const ours: Result[] = [];
    const theirs: Result[] = [];
    const load1 = Math.round(loadavg()[0] * 100) / 100;
    for (let i = 0; i < RUNS; i++) {
      if (c.peer && i % 2 === 1) theirs.push(await measure(c.peer));
      ours.push(await measure(c.strata));
      if (c.peer && i % 2 === 0) theirs.push(await measure(c.peer));
    }
    const s = best(ours);
    const p = theirs.length > 0 ? best(theirs) : undefined;
    line({
      case: c.name,
      strata: s,
      peer: p ? { name: c.peer?.name, ...p } : null,
      ratio: p ? Math.round((s.wallMs / p.wallMs) * 1000) / 1000 : null,
      ...(s.wallSyncMs !== undefined && p?.wallSyncMs !== undefined
        ? { ratioWithSync: Math.round((s.wallSyncMs / p.wallSyncMs) * 1000) / 1000 }
        : {}),
      load1,
      load1After: Math.round(loadavg()[0] * 100) / 100,
    });
  }
  for (const d of [`/dev/shm/strata-large-${process.pid}`, path.join(BENCH, `large-out-${process.pid}`)]) {
    for (const sfx of ['-s', '-d']) rmSync(`${d}${sfx}`, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`bench:large: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
