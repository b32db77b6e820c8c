import { Worker } from 'node:worker_threads';

/**
 * zstd on a second thread, so a check-in reads, hashes and cuts the next chunks while the
 * previous frame compresses (zstd is ~40% of a check-in's CPU; this VM has two cores).
 * Inputs must live in a SharedArrayBuffer and stay untouched until the promise settles.
 * `start()` returns undefined where no worker can run; callers then compress inline.
 */
export interface Offloaded {
  /** The zstd frame, or undefined when it would not be smaller than the input. */
  enc?: Uint8Array;
}

export class ZstdOffload {
  private worker?: Worker;
  private next = 1;
  private readonly waiting = new Map<number, { resolve: (r: Offloaded) => void; reject: (e: Error) => void }>();
  private failed?: Error;

  static start(): ZstdOffload | undefined {
    const z = new ZstdOffload();
    try {
      z.worker = new Worker(new URL('./zstd-worker.js', import.meta.url));
    } catch {
      return undefined;
    }
    z.worker.unref(); // an idle compression thread never keeps the process alive
    z.worker.on('message', (m: { id: number; enc?: ArrayBuffer; n?: number; error?: string }) => {
      const w = z.waiting.get(m.id);
      if (!w) return;
      z.waiting.delete(m.id);
      if (z.waiting.size === 0) z.worker?.unref();
      if (m.error !== undefined) w.reject(new Error(`zstd: ${m.error}`));
      else w.resolve({ enc: m.enc && m.n !== undefined ? new Uint8Array(m.enc) : undefined });
    });
    z.worker.on('error', (e) => z.fail(e));
    z.worker.on('exit', (code) => z.fail(new Error(`zstd thread exited (${code})`)));
    return z;
  }

  /** Compress `plain` (a view of a SharedArrayBuffer) at `level`, optionally with a wider window. */
  compress(plain: Uint8Array, level: number, windowLog?: number): Promise<Offloaded> {
    if (this.failed || !this.worker) return Promise.reject(this.failed ?? new Error('zstd thread not running'));
    const id = this.next++;
    const worker = this.worker;
    return new Promise<Offloaded>((resolve, reject) => {
      this.waiting.set(id, {
        resolve: (r) => resolve(r.enc && r.enc.length < plain.length ? r : {}),
        reject,
      });
      worker.ref(); // work in flight keeps the process alive until it is answered
      worker.postMessage({
        id,
        buf: plain.buffer as SharedArrayBuffer,
        offset: plain.byteOffset,
        length: plain.length,
        level,
        windowLog,
      });
    });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    this.fail(new Error('zstd thread closed'));
    await w?.terminate();
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }
}
