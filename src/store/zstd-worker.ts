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

parentPort?.on('message', (job: Job) => {
  try {
    const plain = new Uint8Array(job.buf, job.offset, job.length);
    const out = Buffer.allocUnsafeSlow(compressBound(job.length));
    const n = compressInto(out, plain, job.level, job.windowLog);
    const enc = out.buffer.slice(0, Math.min(n, out.length));
    parentPort?.postMessage({ id: job.id, enc, n }, [enc]);
  } catch (e) {
    parentPort?.postMessage({ id: job.id, error: (e as Error).message ?? String(e) });
  }
});
