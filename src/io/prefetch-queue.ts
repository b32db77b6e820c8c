/**
 * The background half of the live caches (issue 27; io/introspective-cache.ts for a disk's
 * blocks, library/blob-cache.ts for a library's blobs): prefetch jobs queued in order and run
 * `concurrency` at a time, never awaited by a request, and a way to wait until none is left.
 *
 * `start(job)` begins the job's fetch (the job is off the queue by then), or returns nothing
 * when nothing of it is left to fetch; `failed(job)` counts a fetch that failed (a prefetch's
 * error is its own, no request's); `settled(job)` follows every job, started or not (the
 * cache releases its bytes from the prefetcher's in-flight bound).
 */
export class PrefetchQueue<J> {
  /** Jobs waiting to start, first first (a cache may take one out to merge it into a demand read). */
  readonly jobs: J[] = [];
  /** Once closed (stop), nothing more starts. */
  closed = false;
  private active = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly concurrency: number,
    private readonly start: (job: J) => Promise<unknown> | undefined,
    private readonly failed: (job: J) => void,
    private readonly settled: (job: J) => void,
  ) {}

  /** Start queued jobs while fewer than `concurrency` run; wake idle() waiters when none is left. */
  pump(): void {
    while (this.active < this.concurrency && this.jobs.length > 0 && !this.closed) {
      const job = this.jobs.shift()!;
      const p = this.start(job);
      if (!p) {
        this.settled(job);
        continue;
      }
      this.active++;
      p.catch(() => this.failed(job)).finally(() => {
        this.active--;
        this.settled(job);
        this.pump();
      });
    }
    if (this.active === 0 && (this.jobs.length === 0 || this.closed)) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const r of w) r();
    }
  }

  /** Resolves when no job is queued or running. */
  idle(): Promise<void> {
    if (this.active === 0 && this.jobs.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Drop the queued jobs, start none more, and wait for the running ones. */
  stop(): Promise<void> {
    this.closed = true;
    this.jobs.length = 0;
    return this.idle();
  }
}
