import { parentPort } from 'node:worker_threads';
import { compressBound, compressInto } from './zstd-into.js';

/**
 * The store's compression thread: frames arrive as views of shared memory (nothing copied
 * on the way in), leave as transferred buffers. Answers `n >= length` when zstd does not
 * shrink the input (the store then keeps it plain).
 */
interface Job {
  id: number;
  buf: SharedArrayBuffer;
  offset: number;
  length: number;
  level: number;
  windowLog?: number;
}

/**
 * One scratch buffer for every job (grown to the largest bound seen): a fresh 8 MiB output per
 * frame is garbage this small isolate collects late, and measured ~190 MiB of a 200,000-file
 * check-in's peak RSS. The answer is a copy of the bytes used, transferred.
 */
let scratch: Buffer<ArrayBuffer> | undefined;

parentPort?.on('message', (job: Job) => {
  try {
    const plain = new Uint8Array(job.buf, job.offset, job.length);
    const bound = compressBound(job.length);
    if (!scratch || scratch.length < bound) scratch = Buffer.allocUnsafeSlow(bound);
    const out = scratch;
    const n = compressInto(out, plain, job.level, job.windowLog);
    const enc = out.buffer.slice(out.byteOffset, out.byteOffset + Math.min(n, out.length));
    parentPort?.postMessage({ id: job.id, enc, n }, [enc]);
  } catch (e) {
    parentPort?.postMessage({ id: job.id, error: (e as Error).message ?? String(e) });
  }
});
