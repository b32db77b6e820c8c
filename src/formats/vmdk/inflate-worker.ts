/**
 * Worker of the inflate pool (inflate-pool.ts): inflates deflated grains from a shared input
 * buffer straight into a shared output buffer, so stream-optimized VMDK reads use more than
 * the main thread. Message: {id, input, out, grainBytes, jobs}, where `jobs` holds five
 * numbers per grain: payload start and length in `input`, where its bytes go in `out`, the
 * offset inside the grain and the byte count. A short grain's tail is zero-filled (the
 * output buffer is a reused one). Reply: {id} or {id, error: {job, message}}.
 */
import { parentPort } from 'node:worker_threads';
import { inflateSync } from 'node:zlib';

interface Job {
  id: number;
  input: SharedArrayBuffer;
  out: SharedArrayBuffer;
  grainBytes: number;
  jobs: Float64Array;
}

const port = parentPort;
if (port) {
  port.on('message', (m: Job) => {
    const input = new Uint8Array(m.input);
    const out = new Uint8Array(m.out);
    const j = m.jobs;
    const opts = { maxOutputLength: m.grainBytes, chunkSize: Math.max(64, m.grainBytes) };
    for (let k = 0; k < j.length; k += 5) {
      let grain: Uint8Array;
      try {
        grain = inflateSync(input.subarray(j[k], j[k] + j[k + 1]), opts);
      } catch (e) {
        port.postMessage({ id: m.id, error: { job: k / 5, message: (e as Error)?.message ?? String(e) } });
        return;
      }
      const at = j[k + 2];
      const inGrain = j[k + 3];
      const n = j[k + 4];
      const avail = Math.max(0, Math.min(n, grain.length - inGrain));
      out.set(grain.subarray(inGrain, inGrain + avail), at);
      if (avail < n) out.fill(0, at + avail, at + n);
    }
    port.postMessage({ id: m.id });
  });
}
