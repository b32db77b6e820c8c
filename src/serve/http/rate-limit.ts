import type { Access, RequestLogRow } from '../../catalog/access.js';

/**
 * Requests per key (a token id, or `ip:ADDRESS` without one) per clock minute, counted in
 * the catalog (table rate_windows) so every server process on one catalog shares the
 * count and a restart does not reset it.
 *
 * Each process counts locally and adds what it counted to the catalog every `syncMs`
 * (0: on every request): the catalog is not written on every request, at the price of an
 * overshoot bounded by what the other processes admitted since their last sync. A fixed
 * window admits up to twice the limit across a minute boundary. Losing the table (or a
 * process dying before it syncs) only forgets counts: the limit is a brake, not a quota.
 */
export class RateLimiter {
  private readonly windows = new Map<
    string,
    { minute: number; known: number; pending: number; loaded: boolean; touched: boolean }
  >();
  private timer: NodeJS.Timeout | undefined;
  private syncing: Promise<void> | undefined;
  private lastSweep = 0;

  constructor(
    private readonly access: Access,
    readonly perMinute: number,
    private readonly syncMs = 1000,
    private readonly now = () => Date.now(),
    private readonly onError: (e: unknown) => void = () => {},
  ) {}

  /**
   * A sync after `syncMs`, once. One that fails (the catalog restarting: a connection lost
   * during COMMIT is not retried, as it may have committed) is told to `onError` and tried
   * again later with the counts kept: a rejection here has no caller to go to, and unhandled
   * it ended the server process (a PostgreSQL restart under load, test/serve/scale-faults).
   */
  private schedule(): void {
    if (this.syncMs <= 0 || this.timer) return;
    this.timer = setTimeout(() => {
      this.sync().catch((e) => {
        this.onError(e);
        this.schedule();
      });
    }, this.syncMs).unref();
  }

  /** Count one request of `key`: false when the key is past its limit this minute (not counted then). */
  async take(key: string): Promise<boolean> {
    const minute = Math.floor(this.now() / 60_000);
    let w = this.windows.get(key);
    if (!w || w.minute !== minute) {
      w = { minute, known: 0, pending: 0, loaded: false, touched: false };
      this.windows.set(key, w);
    }
    if (!w.loaded || this.syncMs <= 0) {
      // the first request of a window here (or, syncing always, every one) learns what the
      // other processes counted
      w.loaded = true;
      w.known = await this.access.requestCount(key, minute);
    }
    w.touched = true;
    if (w.known + w.pending >= this.perMinute) {
      this.schedule();
      return false;
    }
    w.pending++;
    if (this.syncMs <= 0) await this.sync();
    else this.schedule();
    return true;
  }

  /** Add what this process counted to the catalog, and learn the totals. */
  async sync(): Promise<void> {
    while (this.syncing) await this.syncing;
    this.timer = undefined;
    this.syncing = (async () => {
      const minute = Math.floor(this.now() / 60_000);
      for (const [key, w] of this.windows) {
        if (w.pending > 0) {
          const n = w.pending;
          w.pending = 0;
          try {
            w.known = await this.access.addRequests(key, w.minute, n);
          } catch (e) {
            // counted again at the next sync (twice at worst, if the lost COMMIT had landed:
            // a brake a little early, never a request let through uncounted)
            w.pending += n;
            throw e;
          }
        } else if (w.touched) {
          // refused here meanwhile: learn whether the others' counts moved (they do not go down within a minute)
          w.known = await this.access.requestCount(key, w.minute);
        }
        w.touched = false;
        if (w.minute < minute) this.windows.delete(key);
      }
      if (minute !== this.lastSweep) {
        this.lastSweep = minute;
        await this.access.dropRateWindows(minute - 1);
      }
    })();
    try {
      await this.syncing;
    } finally {
      this.syncing = undefined;
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.sync().catch((e) => this.onError(e));
  }
}

/** Rows written together: after `delayMs` (0: at once), or 500 at a time; close() writes the rest. */
export class BatchedLog {
  private rows: RequestLogRow[] = [];
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly write: (rows: RequestLogRow[]) => Promise<void>,
    private readonly delayMs: number,
    private readonly onError: (e: unknown) => void,
  ) {}

  push(row: RequestLogRow): void {
    this.rows.push(row);
    if (this.delayMs <= 0 || this.rows.length >= 500) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.delayMs).unref();
  }

  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const rows = this.rows;
    this.rows = [];
    this.writing = this.writing.then(async () => {
      if (rows.length === 0) return;
      try {
        await this.write(rows);
      } catch (e) {
        this.onError(e);
      }
    });
    return this.writing;
  }

  close(): Promise<void> {
    return this.flush();
  }
}
