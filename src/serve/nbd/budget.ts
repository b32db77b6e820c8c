/**
 * A count of bytes in flight with a limit, optionally inside a parent's (a connection's
 * inside the server's): callers wait (`whenBelow`, `whenRoom`) before taking more work.
 * A request that finds nothing in flight always goes through, so a request of the
 * maximum length is never stuck.
 */
export class Budget {
  used = 0;
  /** The most that was ever in flight. */
  peak = 0;
  private waiters: Array<() => void> = [];

  constructor(
    readonly limit: number,
    private readonly parent?: Budget,
  ) {}

  get full(): boolean {
    return this.used >= this.limit || (this.parent?.full ?? false);
  }

  add(n: number): void {
    this.used += n;
    if (this.used > this.peak) this.peak = this.used;
    this.parent?.add(n);
  }

  sub(n: number): void {
    this.used -= n;
    this.parent?.sub(n);
    if (this.waiters.length > 0) this.wake();
  }

  /** True when `n` more bytes fit here and in the parent (always, when nothing is in flight). */
  fits(n: number): boolean {
    return (this.used === 0 || this.used + n <= this.limit) && (this.parent?.fits(n) ?? true);
  }

  /** Resolves once neither this budget nor its parent is full. */
  async whenBelow(): Promise<void> {
    while (this.full) await this.waitOn(this.used >= this.limit ? this : this.parent!);
  }

  /** Resolves once `n` more bytes fit (see `fits`): bounds the total, not just each connection. */
  async whenRoom(n: number): Promise<void> {
    while (!this.fits(n)) {
      const here = this.used !== 0 && this.used + n > this.limit;
      await this.waitOn(here ? this : this.parent!);
    }
  }

  private waitOn(target: Budget): Promise<void> {
    return new Promise<void>((resolve) => target.waiters.push(resolve));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
