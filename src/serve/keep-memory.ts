import { getHeapSpaceStatistics } from 'node:v8';
import { mmapLargeAllocations, trimHeap } from '../io/native.js';
import { collectNow, memoryBudget, stopYoungGrowth } from '../util/memory.js';

/**
 * What a long-running service (`strata nbd`, `serve`, `mount`, ...) leaves resident besides
 * its caches, kept in bounds. Its caches size themselves from the memory budget, but three
 * things grow on their own over a long read (measured serving the 1,000,000-entry version's
 * whole disk, bench/README "servers at 1,000,000 files"):
 * - V8's young generation doubles up to two 16 MiB semi-spaces: here it stops at
 *   YOUNG_MAX (keeping it at its starting size cost ~15% more CPU, more scavenges);
 * - glibc keeps what freed buffers leave in its main heap (native/heap.c: the mmap threshold
 *   rises to the largest buffer freed, 8 MiB decoded frames): 40-60 MiB over the buffers
 *   alive, handed back by a malloc_trim every TRIM_MS;
 * - buffers dropped to the collector (a whole-disk download's 4 MiB pieces) wait for a
 *   collection the heap alone would not ask for: one runs when heap and buffers pass
 *   COLLECT_AT of the budget, and again only once a tenth of the budget more has piled up;
 * - the V8 heap's own garbage: V8 lets the old generation grow to a few times what is alive
 *   before it collects (a version served to nbdcopy: 10-25 MiB alive, 45-73 MiB committed),
 *   and with the buffers' shares now summing within the budget (util/memory.ts SHARES) the
 *   first rule rarely fires. The heap has the rest of the budget, HEAP_SHARE of it: a full
 *   collection runs when the heap's used bytes pass that (again only once that much more
 *   has piled up over what a collection left: with half, a 2,000,000-entry version's larger
 *   live heap was collected too often).
 */
const TICK_MS = 250;
const TRIM_MS = 1000;
const YOUNG_MAX = 4 << 20;
const COLLECT_AT = 0.8;
const HEAP_SHARE = 0.25;

let timer: ReturnType<typeof setInterval> | undefined;

/** What the keeper has done (for tests and the metrics). */
export const keptStats = { collections: 0, trims: 0, youngStopped: false };

/** Start pacing this process's memory (once; the timer does not keep the process alive). */
export function keepServiceMemory(): void {
  if (timer) return;
  // freed large buffers (download pieces, frames, replies) go straight back to the system
  // instead of leaving holes in glibc's main heap between trims (as a check-in does)
  mmapLargeAllocations(1 << 20);
  let collectAbove = 0;
  let heapAbove = 0;
  let sinceTrim = 0;
  timer = setInterval(() => {
    if (!keptStats.youngStopped) {
      const young = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
      if (young && young.space_size >= YOUNG_MAX) {
        keptStats.youngStopped = true;
        stopYoungGrowth();
      }
    }
    const u = process.memoryUsage();
    const budget = memoryBudget();
    const heapRoom = budget * HEAP_SHARE;
    if (
      (u.heapUsed + u.external > Math.max(budget * COLLECT_AT, collectAbove) ||
        u.heapUsed > Math.max(heapRoom, heapAbove)) &&
      collectNow()
    ) {
      keptStats.collections++;
      const v = process.memoryUsage();
      collectAbove = v.heapUsed + v.external + budget * 0.1;
      heapAbove = v.heapUsed + heapRoom;
    }
    sinceTrim += TICK_MS;
    if (sinceTrim >= TRIM_MS) {
      sinceTrim = 0;
      if (trimHeap()) keptStats.trims++;
    }
  }, TICK_MS);
  timer.unref();
}

/** Stop the keeper (tests). */
export function stopKeepingServiceMemory(): void {
  if (timer) clearInterval(timer);
  timer = undefined;
}
