import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

/**
 * A small pool of worker threads that inflate VMDK grains (see inflate-worker.ts) from a
 * shared input buffer into a shared output buffer. Bulk readers (convert) hand in output
 * buffers backed by a SharedArrayBuffer; inflating there lets the main thread read, check
 * and write while other cores decompress. Workers start on first use, hold the process
 * open only while they have work, and a pool that cannot start reports itself unavailable
 * (callers then inflate on the main thread).
 */
export interface InflateFailure {
  /** Index of the grain (in the order given) that failed. */
  job: number;
  message: string;
}

interface Slot {
  worker: Worker;
  pending: Map<number, (f: InflateFailure | undefined) => void>;
}

export class InflatePool {
  private readonly slots: Slot[] = [];
  private readonly freeInputs: SharedArrayBuffer[] = [];
  private nextId = 1;
  private busy = 0;
  broken = false;

  constructor(private readonly size: number) {}

  /** A shared input buffer of at least `n` bytes (reused; hand it back with `release`). */
  input(n: number): Uint8Array {
    let best = -1;
    for (let i = 0; i < this.freeInputs.length; i++) {
      const b = this.freeInputs[i];
      if (b.byteLength >= n && (best < 0 || b.byteLength < this.freeInputs[best].byteLength)) best = i;
    }
    const sab =
      best >= 0 ? this.freeInputs.splice(best, 1)[0] : new SharedArrayBuffer(Math.ceil(n / (1 << 20)) * (1 << 20));
    return new Uint8Array(sab, 0, n);
  }

  release(b: Uint8Array): void {
    if (this.freeInputs.length < 16) this.freeInputs.push(b.buffer as SharedArrayBuffer);
  }

  /** Inflate `jobs` (5 numbers per grain, see inflate-worker.ts); resolves with the first failure, if any. */
  run(
    input: SharedArrayBuffer,
    out: SharedArrayBuffer,
    grainBytes: number,
    jobs: Float64Array,
  ): Promise<InflateFailure | undefined> {
    const slot = this.pick();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, resolve);
      if (this.busy++ === 0) for (const s of this.slots) s.worker.ref();
      try {
        slot.worker.postMessage({ id, input, out, grainBytes, jobs });
      } catch (e) {
        slot.pending.delete(id);
        this.done();
        reject(e);
      }
    });
  }

  private done(): void {
    if (--this.busy === 0) for (const s of this.slots) s.worker.unref();
  }

  private pick(): Slot {
    let best: Slot | undefined;
    for (const s of this.slots) if (!best || s.pending.size < best.pending.size) best = s;
    if (best && (best.pending.size === 0 || this.slots.length >= this.size)) return best;
    const worker = new Worker(new URL('./inflate-worker.js', import.meta.url));
    const slot: Slot = { worker, pending: new Map() };
    worker.on('message', (m: { id: number; error?: InflateFailure }) => {
      const r = slot.pending.get(m.id);
      if (!r) return;
      slot.pending.delete(m.id);
      this.done();
      r(m.error);
    });
    const fail = (e: unknown) => {
      this.broken = true;
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      for (const [id, r] of slot.pending) {
        slot.pending.delete(id);
        this.done();
        r({ job: -1, message: `inflate worker failed: ${(e as Error)?.message ?? e}` });
      }
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (slot.pending.size > 0) fail(new Error(`exited with code ${code}`));
    });
    if (this.busy === 0) worker.unref();
    this.slots.push(slot);
    return slot;
  }
}

let shared: InflatePool | undefined;

/** The process-wide pool, or undefined when worker threads cannot be used. */
export function inflatePool(): InflatePool | undefined {
  if (shared?.broken) return undefined;
  if (!shared) shared = new InflatePool(Math.max(1, Math.min(4, availableParallelism())));
  return shared;
}
