/**
 * The process's memory budget (`--memory SIZE`, default 256 MiB) and the guard that keeps it.
 *
 * Why a guard in the process rather than `--max-old-space-size`: V8's heap limit is fixed
 * when the isolate starts (setting the flag later changes nothing), so it would take a second
 * Node process for every command (~30-40 ms of start-up on the short ones), and a V8 heap
 * limit that is reached ends the process with a fatal error, not an error we can word. So
 * the caches size themselves from the budget (`memoryShare`), the long loops (walks,
 * extraction, the block map) call `checkMemory()` now and then, and the check, throttled to
 * a few times a second, looks at the heap and the buffers (what Strata's data and caches
 * take; Node's own ~40-50 MiB of code, stacks and allocator are outside the budget). When
 * they are above 80% of it, a full garbage collection runs first (V8 otherwise lets garbage
 * pile up to far more than the live data); if what is still alive is above the budget, a
 * StrataError LIMIT says so and names the flag. Peak RSS is therefore about the budget plus
 * Node's footprint plus V8's young generation; the CLI's default budget takes those off
 * first (budgetWithinRss), so that by default the whole process stays near 256 MiB.
 *
 * The young generation is the one part V8 sizes on its own: it doubles whenever objects
 * survive a scavenge, up to two 16 MiB semi-spaces, all resident. Its ceiling cannot be
 * changed after start-up, but its growth factor is read at each growth, so a small budget
 * (at most `SMALL_BUDGET`) turns growth off and the young generation stays at its starting
 * 2 MiB: 30 MiB less resident at the same CPU time (a 200,000-entry `ls -R -l` measured
 * 3.55 s user either way, 144 MiB against 162 MiB peak RSS at `--memory 64M`).
 */
import { createRequire } from 'node:module';
import { StrataError } from './errors.js';

/**
 * node:v8 and node:vm, loaded when first needed (a small budget, a collection): every
 * command sets its budget at start-up, and loading node:v8 then was ~2 ms of each short run.
 */
const builtin = createRequire(import.meta.url);
const v8 = () => builtin('node:v8') as typeof import('node:v8');
const vm = () => builtin('node:vm') as typeof import('node:vm');

export const DEFAULT_MEMORY = 256 * 1024 * 1024;
/** The least budget accepted. */
export const MIN_MEMORY = 32 * 1024 * 1024;

let budget = DEFAULT_MEMORY;
let enforced = false;
let lastCheck = 0;
/** Heap and buffers above which the next check collects (see checkMemory). */
let collectAbove = 0;
let gcFn: (() => void) | null | undefined;

/** "64M", "1G", "512k", "1048576" (bytes); K/M/G/T are powers of 1024, an optional "iB"/"B" after. */
export function parseMemorySize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(s);
  if (!m) throw new StrataError('USAGE', `--memory: not a size: ${JSON.stringify(s)} (e.g. 256M, 1G)`);
  const mul = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase()] as number;
  const n = Math.floor(Number(m[1]) * mul);
  if (n < MIN_MEMORY)
    throw new StrataError('USAGE', `--memory ${s} is below the least Strata can work in (${MIN_MEMORY >> 20}M)`);
  return n;
}

/**
 * Set the budget. `enforce` turns the guard on (the CLI does; a library embedding Strata
 * keeps its own process's policy and only gets the cache sizes).
 */
export function setMemoryBudget(
  bytes: number,
  enforce = true,
  opts: { keepYoungSmall?: boolean; youngUpTo?: number } = {},
): void {
  budget = bytes;
  enforced = enforce;
  youngCap = 0;
  if (enforce && (bytes <= SMALL_BUDGET || opts.keepYoungSmall)) keepYoungGenerationSmall();
  else if (enforce && opts.youngUpTo !== undefined) {
    youngCap = opts.youngUpTo;
    // looked at from a timer too: a command's first steps (opening a large version) may fill it before any checkMemory
    const t = setInterval(() => {
      if (youngCap > 0) capYoung(performance.now());
      if (youngCap === 0) clearInterval(t);
    }, 10);
    t.unref();
  }
}

/**
 * The young generation's size (V8's new space, both semi-spaces) at which a one-shot command
 * whose young generation may grow (the CLI's extract and blockmap) stops its growth: 8 MiB,
 * not V8's 32. Kept at its starting 2 MiB the young generation scavenged thousands of times
 * (~20% of those commands' CPU, program.ts), grown whole it was 30 MiB of the 256 MiB a
 * 1,000,000-entry version's extract and block map were over (issue 22, bench/README "verext").
 * At 8 MiB the 200,000-entry version's `blockmap --summary` peaked 14 MiB lower than at 32
 * with the same user CPU within noise (5.5 against 5.2 s, three runs each at load 9-10).
 * Looked at by checkMemory and by a 10 ms timer (unref'd, gone once growth is stopped): the
 * 1,000,000-entry version's block map had grown it to 32 MiB before its walk's first check.
 */
export const YOUNG_GROWS_TO = 8 << 20;

/** Young-generation size at which checkMemory stops its growth (0: not watched). */
let youngCap = 0;
let lastYoungLook = 0;

/** Stop the young generation's growth once it has reached youngCap (looked at every 10 ms at most). */
function capYoung(now: number): void {
  if (now - lastYoungLook < 10) return;
  lastYoungLook = now;
  for (const s of v8().getHeapSpaceStatistics()) {
    if (s.space_name !== 'new_space') continue;
    if (s.space_size >= youngCap) {
      youngCap = 0;
      keepYoungGenerationSmall();
    }
    return;
  }
  youngCap = 0; // a runtime that does not tell: its own policy
}

/**
 * What the process may hold past the data budget when the budget is a whole-process figure
 * (budgetWithinRss): the code of the modules a command loads after start-up, V8's young
 * generation at its starting size, and the allocator's and V8's slack (freed memory not
 * yet handed back, heap pages not yet compacted). Set from `blockmap --summary` of the
 * 1,000,000-entry tree, the command whose data sits longest near its budget.
 */
export const RSS_ALLOWANCE = 48 * 1024 * 1024;

/**
 * The data budget (heap and buffers, what setMemoryBudget takes) that keeps a process's
 * peak RSS near `total`: `total` less what is resident now (Node and the modules loaded so
 * far, ~50 MiB for the CLI) less RSS_ALLOWANCE; at least MIN_MEMORY. The CLI's default
 * budget is this of DEFAULT_MEMORY, so "256 MiB" is what the process takes, not its data
 * alone; a budget given with --memory stays a data budget (Node's footprint on top).
 */
export function budgetWithinRss(total: number, residentNow = process.memoryUsage.rss()): number {
  return Math.max(MIN_MEMORY, Math.floor(total - residentNow - RSS_ALLOWANCE));
}

/** Budgets up to this keep V8's young generation at its starting size (see above). */
export const SMALL_BUDGET = 128 * 1024 * 1024;

let youngKeptSmall = false;
function keepYoungGenerationSmall(): void {
  if (youngKeptSmall) return;
  youngKeptSmall = true;
  try {
    v8().setFlagsFromString('--semi-space-growth-factor=1');
  } catch {
    // a runtime without the flag keeps its own policy; the budget's guard still holds
  }
}

export function memoryBudget(): number {
  return budget;
}

/** `fraction` of the budget, within [min, max] bytes: what one cache may hold. */
export function memoryShare(fraction: number, min: number, max: number): number {
  return Math.max(min, Math.min(max, Math.floor(budget * fraction)));
}

/**
 * The one division of the data budget among the caches and buffers of the store and the
 * servers, side by side so that what can be full at once sums within the budget with room
 * left for V8's heap (a service's 20-40 MiB used). Each was sized on its own before and a
 * server reading a whole version (`strata nbd` under nbdcopy: every one of these full at
 * once, plus 8 MiB of chunk lists) summed to ~0.88 of the budget in buffers alone: ~140 MiB
 * of ArrayBuffers at the peak beside a 40-60 MiB heap, ~250-270 MiB resident at the CLI's
 * default (bench/README "nbd within 256 MiB", nbdmem). At that default (~158 MiB of data):
 *
 *   frames 48 + readScratch 20 + storePool 15 + blockCache 10 + nbdRequests 10 + nbdReplies 10
 *   = 113 MiB, with the chunk lists ~121: three quarters of the budget, the heap the rest.
 *
 * [fraction of the budget, least bytes, most bytes].
 */
export const SHARES = {
  /**
   * The store's decoded shared frames (blob-reader.ts). Not less at the default: with four
   * 8 MiB frames (32 MiB) nbdcopy's four connections, each in its own stretch of the disk,
   * thrashed them (~3x the CPU); with five the same CPU as six.
   */
  frames: [1 / 3, 16 << 20, 48 << 20],
  /** The store's read scratch in flight (an encoded frame and what it decodes to). */
  readScratch: [1 / 8, 16 << 20, 64 << 20],
  /**
   * Spare read buffers the store keeps for reuse (encoded frames, solo blobs' scratch; an
   * evicted frame's buffer is kept by the frames' share itself): ~15 MiB at the default (was
   * 1/8, two 8 MiB frames idle beside six cached). At 1/16 its buffers were freed and faulted in
   * anew: at 2,000,000 entries ~15% more server CPU (6 s more system time).
   */
  storePool: [3 / 32, 8 << 20, 64 << 20],
  /**
   * A library version's NBD block cache: the small reads (a guest's); a copy's reads of 256 KiB
   * and more pass it, and the decoded frames behind it hold the small files anyway (was 1/8).
   */
  blockCache: [1 / 16, 8 << 20, 64 << 20],
  /**
   * A FUSE mount's block cache of file reads (serve/fuse/cache.ts; `mount --cache-size` overrides):
   * was a fixed 64 MiB whatever the budget. The kernel keeps what it read in its page cache (the
   * mount's files keep their cache), so this holds the read-ahead in flight and a file re-read
   * soon, not every file read: 10 MiB at the CLI's default, 8 MiB at `--memory 64M`. A mount
   * serves no store and no NBD, so it sums with the file system reader's own shares only.
   */
  fuseBlocks: [1 / 16, 8 << 20, 64 << 20],
  /** NBD requests and their replies in flight over all connections. */
  nbdRequests: [1 / 16, 8 << 20, 64 << 20],
  /** Spare NBD reply buffers kept (up to what may be in flight). */
  nbdReplies: [1 / 16, 8 << 20, 16 << 20],
} as const satisfies Record<string, readonly [number, number, number]>;

/** What one of SHARES may hold under the present budget. */
export function shareOf(name: keyof typeof SHARES): number {
  const [fraction, min, max] = SHARES[name];
  return memoryShare(fraction, min, max);
}

function formatMiB(n: number): string {
  return `${Math.round(n / (1 << 20))} MiB`;
}

/** A full collection, when the runtime lets us ask for one. */
function collect(): boolean {
  if (gcFn === undefined) {
    gcFn = null;
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g === 'function') gcFn = g;
    else {
      try {
        // the documented way to reach V8's gc() after start-up: allow it, then take it from a new context
        v8().setFlagsFromString('--expose-gc');
        gcFn = vm().runInNewContext('gc') as () => void;
      } catch {
        gcFn = null;
      }
    }
  }
  if (!gcFn) return false;
  gcFn();
  return true;
}

/**
 * A full collection now, where the guard is on (a CLI command; an embedding process keeps its
 * own policy): after a burst of work whose buffers V8 does not count (SharedArrayBuffers), so
 * that they are not left resident until a collection the heap alone would ask for.
 */
export function collectGarbage(): void {
  if (enforced) collect();
}

/**
 * Throw a StrataError LIMIT when the process cannot stay within the budget. Cheap: at most
 * one look at the heap per 200 ms; `what` names the work for the message.
 */
export function checkMemory(what: string): void {
  if (!enforced) return;
  const now = performance.now();
  if (youngCap > 0) capYoung(now);
  if (now - lastCheck < 200) return;
  lastCheck = now;
  let u = process.memoryUsage();
  if (u.heapUsed + u.external <= Math.max(budget * 0.8, collectAbove)) return;
  collect();
  u = process.memoryUsage();
  const live = u.heapUsed + u.external;
  // the next full collection only once a tenth of the budget more has piled up: with live
  // data near the budget, collecting at every check (a full GC of ~the budget every 200 ms)
  // made a 1,000,000-entry block map run for more than 15 minutes
  collectAbove = live + budget * 0.1;
  if (live > budget) {
    throw new StrataError(
      'LIMIT',
      `limit of ${formatMiB(budget)} exceeded while ${what} (${formatMiB(live)} of heap and buffers in use, ${formatMiB(u.rss)} resident); raise it with --memory`,
      { structure: MEMORY_STRUCTURE },
    );
  }
}

/**
 * A full collection now (where the runtime lets us ask for one), enforced or not: for a
 * service's own pacing (serve/keep-memory.ts). False when none could be asked for.
 */
export function collectNow(): boolean {
  return collect();
}

/** Stop V8's young generation from growing past its present size (see keepYoungGenerationSmall). */
export function stopYoungGrowth(): void {
  keepYoungGenerationSmall();
}

const MEMORY_STRUCTURE = 'memory budget';

/**
 * Is this the guard's error? Code that turns a StrataError about one volume or file into a
 * warning and goes on must rethrow this one: the whole command is over its budget.
 */
export function isMemoryLimit(e: unknown): boolean {
  return e instanceof StrataError && e.code === 'LIMIT' && e.structure === MEMORY_STRUCTURE;
}

/** For tests: the guard's state back to the defaults. */
export function resetMemoryBudget(): void {
  budget = DEFAULT_MEMORY;
  enforced = false;
  youngCap = 0;
  lastCheck = 0;
  collectAbove = 0;
}
