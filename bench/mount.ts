/**
 * `strata mount` against the kernel's own read-only loop mount of the same ext4 image (the
 * Debian tree of the other benches): time until the mount answers, `find /` over the whole
 * tree, and `tar c /usr | wc -c`. Each run mounts afresh (Strata's block cache and the
 * kernel's FUSE caches start empty; the image file's pages may sit in the page cache for
 * both sides, which is not dropped on a shared machine). Best of BENCH_RUNS (default 3).
 * Prints one JSON line per metric {metric, strataMs, kernelMs, ratio = strata / kernel}.
 *
 *   npm run bench:mount
 *   BENCH_IMAGE=/path/to/root.ext4 BENCH_RUNS=5 npm run bench:mount
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmdirSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { benchBaseImage, benchChildEnv, CLI, ROOT } from './common.js';

const DIR = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const log = (m: string) => process.stderr.write(`bench:mount: ${m}\n`);

function timed(script: string): { ms: number; out: string } {
  const t = process.hrtime.bigint();
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', script], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`${script} failed (${r.status}): ${r.stderr}`);
  return { ms, out: r.stdout.trim() };
}

interface Side {
  ready: number;
  find: number;
  tar: number;
  entries: string;
  tarBytes: string;
}

/** Mount with `start` (resolves when ready), measure, unmount with `stop`. */
async function measure(mnt: string, start: () => Promise<void>, stop: () => Promise<void>): Promise<Side> {
  const t = process.hrtime.bigint();
  await start();
  // ready = the root answers
  timed(`stat ${mnt}/ > /dev/null`);
  const ready = Number(process.hrtime.bigint() - t) / 1e6;
  try {
    const find = timed(`find ${mnt}/ | wc -l`);
    const tar = timed(`tar c -C ${mnt} usr | wc -c`);
    return { ready, find: find.ms, tar: tar.ms, entries: find.out, tarBytes: tar.out };
  } finally {
    await stop();
  }
}

function strataSide(image: string, mnt: string): Promise<Side> {
  let child: ReturnType<typeof spawn> | undefined;
  let exited: Promise<void> = Promise.resolve();
  return measure(
    mnt,
    () =>
      new Promise((resolve, reject) => {
        child = spawn(process.execPath, [CLI, 'mount', image, mnt], { stdio: ['ignore', 'pipe', 'inherit'] });
        exited = new Promise((r) => child?.on('close', () => r()));
        let out = '';
        child.stdout?.on('data', (d) => {
          out += d;
          if (out.includes('mounted ')) resolve();
        });
        child.on('close', (c) => reject(new Error(`strata mount exited ${c}`)));
      }),
    async () => {
      child?.kill('SIGTERM');
      await exited;
    },
  );
}

function kernelSide(image: string, mnt: string): Promise<Side> {
  return measure(
    mnt,
    async () => {
      timed(`mount -o ro,loop,noload '${image}' ${mnt}`);
    },
    async () => {
      timed(`umount ${mnt}`);
    },
  );
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  const image = process.env.BENCH_IMAGE ?? benchBaseImage(DIR, log);
  mkdirSync(tmpdir(), { recursive: true });
  const mnt = mkdtempSync(path.join(tmpdir(), 'strata-bench-mount-'));
  const best: Record<'strata' | 'kernel', Side | undefined> = { strata: undefined, kernel: undefined };
  const keep = (k: 'strata' | 'kernel', s: Side) => {
    const b = best[k];
    best[k] = b
      ? { ...b, ready: Math.min(b.ready, s.ready), find: Math.min(b.find, s.find), tar: Math.min(b.tar, s.tar) }
      : s;
  };
  try {
    for (let i = 0; i < RUNS; i++) {
      // alternate who goes first
      const order: Array<'strata' | 'kernel'> = i % 2 === 0 ? ['strata', 'kernel'] : ['kernel', 'strata'];
      for (const k of order) keep(k, await (k === 'strata' ? strataSide(image, mnt) : kernelSide(image, mnt)));
    }
  } finally {
    rmdirSync(mnt);
  }
  const s = best.strata as Side;
  const k = best.kernel as Side;
  if (s.entries !== k.entries || s.tarBytes !== k.tarBytes) {
    throw new Error(`the two mounts differ: find ${s.entries} vs ${k.entries}, tar ${s.tarBytes} vs ${k.tarBytes}`);
  }
  const load1 = loadavg()[0];
  for (const [metric, a, b] of [
    ['mount-ready', s.ready, k.ready],
    ['find /', s.find, k.find],
    ['tar c /usr | wc -c', s.tar, k.tar],
  ] as Array<[string, number, number]>) {
    process.stdout.write(
      `${JSON.stringify({ metric, strataMs: Math.round(a), kernelMs: Math.round(b), ratio: Number((a / b).toFixed(2)), image: path.basename(image), entries: Number(s.entries), tarBytes: Number(s.tarBytes), runs: RUNS, load1, ...env })}\n`,
    );
  }
}

main().catch((e) => {
  process.stderr.write(`bench:mount: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
