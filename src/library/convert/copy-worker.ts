/**
 * A copy worker of the bulk copy (direct-copy.ts): one JobCopier on its own thread. qcow2
 * placements go back to the main thread in batches.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { CopyFailure, JobCopier } from './copy-job.js';
import { type CopyWorkerData, type CopyWorkerMessage, READY } from './direct-copy-protocol.js';

const ADOPT_BATCH = 64;
let triples: number[] = [];
let flagParts: Uint8Array[] = [];

function post(m: CopyWorkerMessage): void {
  parentPort?.postMessage(m);
}

function flushAdopt(): void {
  if (triples.length === 0) return;
  const all = new Uint8Array(flagParts.reduce((s, f) => s + f.length, 0));
  let at = 0;
  for (const f of flagParts) {
    all.set(f, at);
    at += f.length;
  }
  post({ type: 'adopt', triples: Float64Array.from(triples), flags: all });
  triples = [];
  flagParts = [];
}

const data = workerData as CopyWorkerData;
const copier = new JobCopier(data, (virt, host, flags, count) => {
  triples.push(virt, host, count);
  flagParts.push(flags.slice(0, count));
  if (triples.length >= ADOPT_BATCH * 3) flushAdopt();
});
try {
  Atomics.add(new Int32Array(data.ctl), READY, 1);
  copier.run();
  flushAdopt();
  post({ type: 'done' });
} catch (e) {
  copier.stopAll();
  const f = e instanceof CopyFailure ? e : undefined;
  post({
    type: 'error',
    message: (e as Error)?.message ?? String(e),
    code: f?.code,
    side: f?.side ?? 'read',
    fd: f?.fd ?? -1,
    offset: f?.offset ?? -1,
  });
}
