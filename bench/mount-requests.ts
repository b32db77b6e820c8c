/**
 * What a walk of `strata mount` costs the server, in figures that do not move with the
 * machine's load: the FUSE requests that reach the main thread (by opcode), the ones the
 * reader thread answers itself, and the server's CPU (user + system, this process: both
 * threads). An in-process read-only mount (FuseSession) of bench:mount's image, then, each
 * as a child process while this one serves: `find /`, `find /` again (the kernel's caches
 * warm) and `tar c /usr | wc -c`. Wall times are printed too, with the load average. One
 * JSON line per walk.
 *
 *   BENCH_IMAGE=/path/to/checkin-base-v1-1200m.ext4 node dist/bench/mount-requests.js
 */
import { exec } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmdirSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
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

async function main(): Promise<void> {
  const image = process.env.BENCH_IMAGE ?? benchBaseImage(DIR, log);
  mkdirSync(tmpdir(), { recursive: true });
  const mnt = mkdtempSync(path.join(tmpdir(), 'strata-bench-mreq-'));
  const { tree } = await openMountTree(image);
  const s = new FuseSession(tree, mnt);
  await s.mount();
  try {
    for (const [walk, script] of [
      ['find /', `find '${mnt}/' | wc -l`],
      ['find / again', `find '${mnt}/' | wc -l`],
      ['tar c /usr', `tar c -C '${mnt}' usr | wc -c`],
    ]) {
      s.counts.clear();
      const reader0 = s.readerAnswered;
      const cpu0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const out = await sh(script);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const cpu = process.cpuUsage(cpu0);
      const byOp = Object.fromEntries([...s.counts].map(([op, n]) => [NAMES.get(op) ?? String(op), n]));
      const toMain = [...s.counts.values()].reduce((a, b) => a + b, 0);
      console.log(
        JSON.stringify({
          walk,
          output: out,
          requestsToMainThread: toMain,
          answeredByReaderThread: s.readerAnswered - reader0,
          byOp,
          serverCpuMs: Math.round((cpu.user + cpu.system) / 1000),
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

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
