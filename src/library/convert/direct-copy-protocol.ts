/**
 * Shared-memory layout between the bulk copier (direct-copy.ts, main thread) and its copy
 * workers (copy-worker.ts). Kept apart so the worker loads nothing else.
 *
 * The main thread publishes jobs into a ring, in virtual order; workers claim them in that
 * order (compare-and-swap on CLAIMED), read each job's bytes, and write what is not zero.
 * For a qcow2 output, clusters must be laid out in virtual order, so each worker takes its
 * host clusters only when TURN reaches its job's index (after reading, before writing):
 * the layout is the same as a single writer's, whatever the timing.
 */

/** Int32 slots of the control array. */
export const PUBLISHED = 0;
export const CLAIMED = 1;
export const TURN = 2;
/** Set to 1 to make every worker stop (error or abort). */
export const STOP = 3;
/** Set to 1 when no more jobs will be published. */
export const END = 4;
/**
 * Wake-ups cost ~0.1 ms of a core on this kind of VM, so nobody is woken for nothing: the
 * main thread, when it waits for room in the ring, stores in WANT_CLAIMED the claim count
 * that gives it room; when it waits for inline slot k, it stores k + 1 in WANT_INLINE; a
 * worker about to sleep on PUBLISHED counts itself in SLEEPERS.
 */
export const WANT_CLAIMED = 5;
export const WANT_INLINE = 6;
export const SLEEPERS = 7;
/** Workers count themselves here when they start copying; until one has, the main thread copies. */
export const READY = 8;
export const CTL_WORDS = 12;

/** Segments one job may have; a window with more is read by the main thread instead. */
export const MAX_SEGS = 8;
/** Float64 words per job slot: virt, length, segment count, then (fd, host, length) per segment. */
export const SLOT_WORDS = 3 + 3 * MAX_SEGS;
/** Segment "fd" values that are not descriptors. */
export const SEG_ZERO = -1;
/** The bytes are in inline slot `host` (read by the main thread through the image reader). */
export const SEG_INLINE = -2;

/** BigInt64 slots of the progress array. */
export const BYTES_DONE = 0;
export const BYTES_WRITTEN = 1;

export interface CopyWorkerData {
  ctl: SharedArrayBuffer;
  jobs: SharedArrayBuffer;
  ringSize: number;
  inline: SharedArrayBuffer;
  inlineBusy: SharedArrayBuffer;
  progress: SharedArrayBuffer;
  /** qcow2: Float64 next free host offset, touched only by the worker holding the turn. */
  head: SharedArrayBuffer;
  jobBytes: number;
  layout: 'raw' | 'qcow2';
  granularity: number;
  outFd: number;
}

/** What a worker posts: qcow2 placements (virt, host, count triples plus flag bytes), or its end. */
export type CopyWorkerMessage =
  | { type: 'adopt'; triples: Float64Array; flags: Uint8Array }
  | { type: 'done' }
  | { type: 'error'; message: string; code?: string; side: 'read' | 'write'; fd: number; offset: number };
