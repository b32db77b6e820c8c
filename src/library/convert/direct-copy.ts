import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { DirectPiece, DiskImage } from '../../formats/types.js';
import type { DirectTarget } from '../../formats/writers/index.js';
import { readIntoOrCopy } from '../../io/byte-source.js';
import { pageAlignedBuffer } from '../../util/aligned.js';
import { StrataError } from '../../util/errors.js';
import { CopyFailure, JobCopier } from './copy-job.js';
import {
  BYTES_DONE,
  BYTES_WRITTEN,
  CLAIMED,
  type CopyWorkerData,
  type CopyWorkerMessage,
  CTL_WORDS,
  END,
  MAX_SEGS,
  PUBLISHED,
  READY,
  SEG_INLINE,
  SEG_ZERO,
  SLEEPERS,
  SLOT_WORDS,
  STOP,
  WANT_CLAIMED,
  WANT_INLINE,
} from './direct-copy-protocol.js';

/**
 * The bulk copier behind `convert` for plain outputs (raw, uncompressed qcow2 without a
 * backing file). The main thread maps the disk (DiskImage.direct: which file range holds
 * each virtual range) and publishes jobs of JOB_BYTES; two worker threads read each job
 * with positional reads, skip zero granules and write the rest, all synchronously on their
 * own thread. Against the thread-pool pump (convert.ts) this saves two pool hand-offs per
 * MiB (each ~0.1 ms of a core on this kind of VM), keeps each job's bytes in the CPU cache
 * between the read and the write, and lets one worker read while the other writes (writes
 * to one file are serialized by the kernel's inode lock anyway). Ranges only the reader
 * can produce (compressed clusters, remote files) are read by the main thread through the
 * reader into shared slots and written by the workers like the rest.
 */

/** Virtual bytes per job: small enough that a job's bytes stay in a core's L2 cache (2 MiB here). */
const JOB_BYTES = 256 * 1024;
/** Jobs published ahead of the workers. */
const RING = 256;
/** Shared buffers for ranges the main thread reads through the image reader. */
const INLINE_SLOTS = 8;
/** Such reads in flight before the oldest is waited for. */
const MAX_PENDING = 4;
/** The disk is mapped this much at a time (a multiple of every job size). */
const WINDOW = 64 * 1024 * 1024;
/** Copy workers: one reads while the other writes; more only contend for the output's lock. */
const MAX_WORKERS = 2;

export interface DirectCopyOptions {
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
  /** Output path, for errors. */
  outName: string;
}

/** Atomics.waitAsync (in Node since 16; typed only from lib ES2024). */
type WaitAsync = (
  a: Int32Array,
  i: number,
  v: number,
  timeoutMs: number,
) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

interface Pending {
  words: Float64Array;
  ready?: Promise<void>;
  settled: boolean;
}

/** Copy the whole virtual disk of `src` into `target`; returns the bytes read from the source. */
export async function directCopy(src: DiskImage, target: DirectTarget, opts: DirectCopyOptions): Promise<number> {
  const direct = src.direct?.bind(src);
  if (!direct) throw new StrataError('USAGE', 'this image cannot be copied directly', { file: src.name });
  const J = Math.max(JOB_BYTES, target.granularity);
  const total = src.size;
  const ctl = new Int32Array(new SharedArrayBuffer(CTL_WORDS * 4));
  const jobs = new Float64Array(new SharedArrayBuffer(RING * SLOT_WORDS * 8));
  const inline = pageAlignedBuffer(INLINE_SLOTS * J, true);
  const inlineBusy = new Int32Array(new SharedArrayBuffer(INLINE_SLOTS * 4));
  const progress = new BigInt64Array(new SharedArrayBuffer(16));
  const head = new Float64Array(new SharedArrayBuffer(8));
  head[0] = target.head;
  const data: CopyWorkerData = {
    ctl: ctl.buffer as SharedArrayBuffer,
    jobs: jobs.buffer as SharedArrayBuffer,
    ringSize: RING,
    inline: inline.buffer as SharedArrayBuffer,
    inlineBusy: inlineBusy.buffer as SharedArrayBuffer,
    progress: progress.buffer as SharedArrayBuffer,
    head: head.buffer as SharedArrayBuffer,
    jobBytes: J,
    layout: target.layout,
    granularity: target.granularity,
    outFd: target.fd,
  };

  const fdNames = new Map<number, string>();
  let failure: Error | undefined;
  const fail = (e: Error) => {
    failure ??= e;
    Atomics.store(ctl, STOP, 1);
    Atomics.notify(ctl, PUBLISHED);
  };
  const failureAt = (m: { message: string; side: 'read' | 'write'; fd: number; offset: number }) => {
    const where =
      m.side === 'write'
        ? {
            file: opts.outName,
            structure: target.layout === 'raw' ? 'raw data' : 'qcow2 data cluster',
            offset: m.offset,
          }
        : { file: fdNames.get(m.fd) ?? src.name, structure: 'image data', offset: m.offset };
    return new StrataError(m.message.startsWith('short read') ? 'TRUNCATED' : 'IO', m.message, where);
  };
  const onMessage = (m: CopyWorkerMessage) => {
    if (m.type === 'adopt') {
      let f = 0;
      for (let i = 0; i < m.triples.length; i += 3) {
        const count = m.triples[i + 2];
        target.adopt(m.triples[i], m.triples[i + 1], m.flags.subarray(f, f + count), count);
        f += count;
      }
    } else if (m.type === 'error') fail(failureAt(m));
  };
  // Until a worker has started (~30 ms), the main thread copies too.
  const mainCopier = new JobCopier(data, (v, h, f, c) => target.adopt(v, h, f, c));
  const helpWhileStarting = (): boolean => {
    if (Atomics.load(ctl, READY) !== 0) return false;
    try {
      return mainCopier.step();
    } catch (e) {
      mainCopier.stopAll();
      throw e instanceof CopyFailure ? failureAt(e) : e;
    }
  };
  const nWorkers = Math.max(1, Math.min(MAX_WORKERS, availableParallelism()));
  const exits: Promise<void>[] = [];
  let alive = nWorkers;
  let ended = false;
  for (let i = 0; i < nWorkers; i++) {
    const w = new Worker(new URL('./copy-worker.js', import.meta.url), { workerData: data });
    w.on('message', onMessage);
    exits.push(
      new Promise<void>((resolve) => {
        w.on('error', (e) => fail(new StrataError('IO', `copy worker failed: ${e.message}`, { file: src.name })));
        w.on('exit', () => {
          // A worker leaves early only on STOP; if none is left, nobody would claim the rest.
          if (--alive === 0 && !ended) fail(new StrataError('IO', 'copy workers ended early', { file: src.name }));
          resolve();
        });
      }),
    );
  }

  let published = 0;
  let zeroDone = 0;
  let bytesRead = 0;
  let inlineNext = 0;
  const fifo: Pending[] = [];
  const report = () => opts.onProgress?.(zeroDone + Number(Atomics.load(progress, BYTES_DONE)), total);
  const check = () => {
    if (failure) throw failure;
    if (opts.signal?.aborted) throw new StrataError('USAGE', 'conversion interrupted', { file: src.name });
  };
  const waitWhile = async (arr: Int32Array, i: number, value: number) => {
    const r = waitAsync(arr, i, value, 100);
    if (r.async) await r.value;
    check();
  };
  const publishHead = async () => {
    const e = fifo.shift()!;
    if (e.ready) await e.ready;
    if (published - Atomics.load(ctl, CLAIMED) >= RING) {
      // Full: sleep until the workers have taken half the ring (one wake-up per RING/2 jobs).
      Atomics.store(ctl, WANT_CLAIMED, published - RING / 2);
      for (;;) {
        const c = Atomics.load(ctl, CLAIMED);
        if (c >= published - RING / 2) break;
        if (helpWhileStarting()) continue;
        report();
        await waitWhile(ctl, CLAIMED, c);
      }
      Atomics.store(ctl, WANT_CLAIMED, 0);
    }
    jobs.set(e.words, (published % RING) * SLOT_WORDS);
    Atomics.store(ctl, PUBLISHED, ++published);
    if (Atomics.load(ctl, SLEEPERS) > 0) Atomics.notify(ctl, PUBLISHED);
    if (published % 64 === 0) report();
    helpWhileStarting();
  };
  /** A free inline slot: its last job must be published before we can wait for a worker to free it. */
  const acquireInline = async (): Promise<number> => {
    const k = inlineNext;
    inlineNext = (k + 1) % INLINE_SLOTS;
    if (Atomics.load(inlineBusy, k) !== 0) while (fifo.length > 0) await publishHead();
    Atomics.store(ctl, WANT_INLINE, k + 1);
    while (Atomics.load(inlineBusy, k) !== 0) await waitWhile(inlineBusy, k, 1);
    Atomics.store(ctl, WANT_INLINE, 0);
    Atomics.store(inlineBusy, k, 1);
    return k;
  };

  try {
    const segs: DirectPiece[] = [];
    for (let w = 0; w < total; w += WINDOW) {
      check();
      const wl = Math.min(WINDOW, total - w);
      const pieces = await direct(w, wl);
      let pi = 0;
      for (let a = w; a < w + wl; a += J) {
        const jl = Math.min(J, w + wl - a);
        const end = a + jl;
        // The pieces' parts inside [a, end).
        segs.length = 0;
        let zero = true;
        let other = false;
        for (let i = pi; i < pieces.length && pieces[i].offset < end; i++) {
          const p = pieces[i];
          const s = Math.max(a, p.offset);
          const e = Math.min(end, p.offset + p.length);
          if (e <= s) continue;
          if (p.kind === 'file') {
            segs.push({ ...p, offset: s, length: e - s, host: p.host + (s - p.offset) });
            fdNames.set(p.fd, p.file);
            zero = false;
          } else {
            segs.push({ kind: p.kind, offset: s, length: e - s });
            if (p.kind === 'other') {
              other = true;
              zero = false;
            }
          }
        }
        while (pi < pieces.length && pieces[pi].offset + pieces[pi].length <= end) pi++;
        if (zero) {
          zeroDone += jl;
          continue;
        }
        const words = new Float64Array(SLOT_WORDS);
        words[0] = a;
        words[1] = jl;
        const entry: Pending = { words, settled: true };
        if (other || segs.length > MAX_SEGS) {
          const k = await acquireInline();
          const view = inline.subarray(k * J, k * J + jl);
          words.set([1, SEG_INLINE, k, jl], 2);
          entry.settled = false;
          entry.ready = readInto(src, a, view).then(() => {
            entry.settled = true;
            bytesRead += jl;
          });
          entry.ready.catch(() => {});
        } else {
          words[2] = segs.length;
          segs.forEach((s, i) => {
            const fd = s.kind === 'file' ? s.fd : SEG_ZERO;
            words.set([fd, s.kind === 'file' ? s.host : 0, s.length], 3 + i * 3);
            if (s.kind === 'file') bytesRead += s.length;
          });
        }
        fifo.push(entry);
        while (fifo.length > 0 && (fifo[0].settled || fifo.length > MAX_PENDING)) await publishHead();
      }
      report();
    }
    while (fifo.length > 0) await publishHead();
    while (helpWhileStarting()) {}
    ended = true;
    Atomics.store(ctl, END, 1);
    Atomics.notify(ctl, PUBLISHED);
    await Promise.all(exits);
    check();
  } catch (e) {
    fail(e as Error);
    await Promise.all(exits);
    throw e;
  }
  target.done(head[0], Number(Atomics.load(progress, BYTES_WRITTEN)));
  report();
  return bytesRead;
}

async function readInto(src: DiskImage, offset: number, out: Uint8Array): Promise<void> {
  const got = await readIntoOrCopy(src, offset, out);
  if (got !== out.length) {
    throw new StrataError('TRUNCATED', `short read: wanted ${out.length} bytes, got ${got}`, {
      file: src.name,
      structure: 'virtual disk',
      offset,
    });
  }
}
