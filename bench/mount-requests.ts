/**
 * What a walk of `strata mount` costs the server, in figures that move less with the
 * machine's load: the FUSE requests the server answers (by opcode), the listing ends answered
 * straight from the shared table, and the server's CPU (user + system, this process: every
 * thread, V8's compiler threads included). An in-process read-only mount of bench:mount's
 * image, served two ways in turn: `reader thread` (FuseSession given the image: opened and
 * served on the thread that reads /dev/fuse, what `strata mount IMAGE` does) and `main
 * thread` (FuseSession given a tree: requests read on a worker thread and answered on this
 * one, what writable and library-version mounts do). Each mount is fresh; then, each as a
 * child process while this one serves: `find /`, `find /` again (the kernel's caches warm)
 * and `tar c /usr | wc -c`. Also the CPU of the busiest thread during the walk (the serving
 * thread, or the main thread in `main thread` mode). Wall times are printed too, with the load average. One JSON line
 * per walk; BENCH_RUNS (default 1) pairs of mounts.
 *
 *   BENCH_IMAGE=/path/to/checkin-base-v1-1200m.ext4 BENCH_RUNS=3 node dist/bench/mount-requests.js
 */
import { exec, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FuseSession, openMountTree } from '../src/serve/fuse/index.js';
import { Op } from '../src/serve/fuse/protocol.js';
import { benchBaseImage, ROOT } from './common.js';

const DIR = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const log = (m: string) => process.stderr.write(`bench:mount-requests: ${m}\n`);
const NAMES = new Map<number, string>(Object.entries(Op).map(([k, v]) => [v, k]));

function sh(script: string): Promise<string> {
  return new Promise((resolve, reject) =>
    exec(script, { shell: '/bin/bash', maxBuffer: 1 << 26 }, (e, out) => (e ? reject(e) : resolve(out.trim()))),
  );
}

/** CPU ns of each thread of this process (/proc/self/task/TID/schedstat). */
function threadCpu(): Map<string, number> {
  const m = new Map<string, number>();
  for (const t of readdirSync('/proc/self/task')) {
    try {
      m.set(t, Number(readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ')[0]));
    } catch {
      // the thread ended
    }
  }
  return m;
}

/** One fresh mount in `mode` and the three walks over it; one JSON line per walk. */
async function walks(image: string, mode: Mode): Promise<void> {
  mkdirSync(tmpdir(), { recursive: true });
  const mnt = mkdtempSync(path.join(tmpdir(), 'strata-bench-mreq-'));
  const s = new FuseSession(mode === 'reader thread' ? { image } : (await openMountTree(image)).tree, mnt);
  await s.mount();
  try {
    for (const [walk, script] of [
      ['find /', `find '${mnt}/' | wc -l`],
      ['find / again', `find '${mnt}/' | wc -l`],
      ['tar c /usr', `tar c -C '${mnt}' usr | wc -c`],
    ]) {
      const counts0 = s.counts;
      const reader0 = s.readerAnswered;
      const cpu0 = process.cpuUsage();
      const threads0 = threadCpu();
      const t0 = process.hrtime.bigint();
      const out = await sh(script);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const cpu = process.cpuUsage(cpu0);
      // the busiest thread: the serving thread (reader thread mode) or this one (main thread mode)
      let busiest = 0;
      for (const [t, ns] of threadCpu()) busiest = Math.max(busiest, ns - (threads0.get(t) ?? 0));
      const byOp: Record<string, number> = {};
      let toServer = 0;
      for (const [op, n] of s.counts) {
        const d = n - (counts0.get(op) ?? 0);
        if (d > 0) byOp[NAMES.get(op) ?? String(op)] = d;
        toServer += d;
      }
      console.log(
        JSON.stringify({
          mode,
          walk,
          output: out,
          requestsAnswered: toServer,
          listingEndsAnswered: s.readerAnswered - reader0,
          byOp,
          serverCpuMs: Math.round((cpu.user + cpu.system) / 1000),
          busiestThreadCpuMs: Math.round(busiest / 1e6),
          wallMs: Math.round(ms),
          load: loadavg()[0].toFixed(1),
        }),
      );
    }
  } finally {
    await s.unmount();
    rmdirSync(mnt);
  }
}

type Mode = 'reader thread' | 'main thread';

/** Each mount in a fresh process (V8 compiles our code afresh, as for `strata mount`), the two modes in turn. */
async function main(): Promise<void> {
  const mode = process.env.BENCH_MODE as Mode | undefined;
  const image = process.env.BENCH_IMAGE ?? benchBaseImage(DIR, log);
  if (mode) return walks(image, mode);
  const runs = Number(process.env.BENCH_RUNS ?? 1);
  for (let i = 0; i < runs; i++) {
    for (const m of ['reader thread', 'main thread'] as const) {
      const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url)], {
        stdio: 'inherit',
        env: { ...process.env, BENCH_MODE: m, BENCH_IMAGE: image },
      });
      if (r.status !== 0) throw new Error(`the ${m} run failed (${r.status ?? r.signal})`);
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
