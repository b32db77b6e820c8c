import { Worker } from 'node:worker_threads';
import { type NativeZstd, nativeZstd } from '../io/native.js';

/**
 * zstd on other threads, so a check-in reads, hashes and cuts the next chunks while the
 * previous frame compresses (zstd is ~40% of a check-in's CPU; this VM has two cores).
 * Inputs stay untouched until the promise settles. Two ways: the addon's zstd on libuv's
 * pool (NativeZstdThreads: no second V8 isolate), else worker isolates (ZstdOffload; inputs
 * then live in SharedArrayBuffers). `startZstdThreads()` returns undefined where neither can
 * run; callers then compress inline.
 */
export interface Offloaded {
  /** The zstd frame, or undefined when it would not be smaller than the input. */
  enc?: Uint8Array;
}

/** What the store's write side compresses its frames with, off its own thread. */
export interface ZstdThreads {
  /** Inputs must be views of a SharedArrayBuffer (another isolate reads them). */
  readonly shared: boolean;
  /** Compress `plain` at `level`, optionally with a wider window. */
  compress(plain: Uint8Array, level: number, windowLog?: number): Promise<Offloaded>;
  /** Stop: frames in flight are rejected (worker) or finish (native); nothing is kept. */
  close(): Promise<void>;
}

/**
 * `threads` compression threads: the addon's (native/zstd.c) where it is built, unless
 * STRATA_NO_NATIVE_ZSTD=1 (or STRATA_NO_NATIVE=1); else worker isolates; undefined when none.
 * Both make the same frames (the same zstd, zstd-napi's; test/store/zstd-threads.test.ts).
 */
export function startZstdThreads(threads = ZSTD_THREADS): ZstdThreads | undefined {
  const n = nativeZstd();
  if (n) return new NativeZstdThreads(n, threads);
  return ZstdOffload.start(threads);
}

/**
 * The addon's zstd on libuv's pool, at most `threads` frames at once (more would take more
 * of the pool's 4 threads from file reads, and a zstd context each, ~10-20 MiB at level 7):
 * issue 22, the worker isolate it replaces was ~30 MiB of a 1,000,000-file check-in's peak.
 * Inputs may be any buffers (nothing crosses an isolate); each answer is a fresh ArrayBuffer
 * of the frame's length.
 */
export class NativeZstdThreads implements ZstdThreads {
  readonly shared = false;
  private running = 0;
  /** Jobs waiting for a slot, oldest first (a finishing job hands its slot to the next). */
  private readonly queue: Array<() => void> = [];
  private closed = false;

  constructor(
    private readonly z: NativeZstd,
    private readonly threads: number,
  ) {}

  async compress(plain: Uint8Array, level: number, windowLog?: number): Promise<Offloaded> {
    if (this.closed) throw new Error('zstd thread closed');
    if (this.running < this.threads) this.running++;
    else await new Promise<void>((r) => this.queue.push(r));
    try {
      const ab = await this.z.compress(plain, level, windowLog ?? 0);
      return ab ? { enc: new Uint8Array(ab) } : {};
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.running--;
    }
  }

  /** Frees the zstd contexts kept for reuse (those of frames still in flight once they finish). */
  async close(): Promise<void> {
    this.closed = true;
    this.z.release();
  }
}

/**
 * zstd threads a store starts: on a dense image the one thread was the check-in's critical
 * path (busy ~80% of the wall time while the main thread idled ~20%: bench/README.md, "where a
 * dense image's check-in goes"), so frames go to whichever of two has the least work queued.
 * The packer starts one only under a memory budget below 512 MiB (the CLI's default among them:
 * the second thread is ~35 MiB of resident memory).
 */
export const ZSTD_THREADS = 2;

interface Waiting {
  resolve: (r: Offloaded) => void;
  reject: (e: Error) => void;
  /** The plain bytes it queued on its thread. */
  bytes: number;
}

interface Thread {
  worker: Worker;
  /** Plain bytes handed to it and not yet answered. */
  queued: number;
  /** Jobs in flight (a thread with none is unref'd: it never keeps the process alive). */
  jobs: number;
}

export class ZstdOffload implements ZstdThreads {
  readonly shared = true;
  private threads: Thread[] = [];
  private next = 1;
  private readonly waiting = new Map<number, Waiting>();
  private failed?: Error;

  static start(threads = ZSTD_THREADS): ZstdOffload | undefined {
    const z = new ZstdOffload();
    try {
      for (let i = 0; i < threads; i++) {
        const t: Thread = { worker: new Worker(new URL('./zstd-worker.js', import.meta.url)), queued: 0, jobs: 0 };
        z.threads.push(t);
        z.listen(t);
      }
    } catch {
      for (const t of z.threads) void t.worker.terminate();
      return undefined;
    }
    return z;
  }

  private listen(t: Thread): void {
    t.worker.unref(); // an idle compression thread never keeps the process alive
    t.worker.on('message', (m: { id: number; enc?: ArrayBuffer; n?: number; error?: string }) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      t.queued -= w.bytes;
      if (--t.jobs === 0) t.worker.unref();
      if (m.error !== undefined) w.reject(new Error(`zstd: ${m.error}`));
      else w.resolve({ enc: m.enc && m.n !== undefined ? new Uint8Array(m.enc) : undefined });
    });
    t.worker.on('error', (e) => this.fail(e));
    t.worker.on('exit', (code) => this.fail(new Error(`zstd thread exited (${code})`)));
  }

  /** Compress `plain` (a view of a SharedArrayBuffer) at `level`, optionally with a wider window. */
  compress(plain: Uint8Array, level: number, windowLog?: number): Promise<Offloaded> {
    if (this.failed || this.threads.length === 0) {
      return Promise.reject(this.failed ?? new Error('zstd thread not running'));
    }
    const id = this.next++;
    let t = this.threads[0];
    for (const u of this.threads) if (u.queued < t.queued) t = u;
    return new Promise<Offloaded>((resolve, reject) => {
      this.waiting.set(id, {
        resolve: (r) => resolve(r.enc && r.enc.length < plain.length ? r : {}),
        reject,
        bytes: plain.length,
      });
      t.queued += plain.length;
      if (t.jobs++ === 0) t.worker.ref(); // work in flight keeps the process alive until it is answered
      t.worker.postMessage({
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
    const threads = this.threads;
    this.threads = [];
    this.fail(new Error('zstd thread closed'));
    await Promise.all(threads.map((t) => t.worker.terminate()));
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }
}
