/**
 * A count of bytes in flight with a soft limit: callers wait (`whenBelow`) before taking
 * more work while `used` is at or above `limit`. One request may overshoot the limit by
 * its own size, so a request of the maximum length always goes through.
 */
export class Budget {
  used = 0;
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
    this.parent?.add(n);
  }

  sub(n: number): void {
    this.used -= n;
    this.parent?.sub(n);
    if (this.waiters.length > 0 && this.used < this.limit) this.wake();
  }

  /** Resolves once neither this budget nor its parent is full. */
  async whenBelow(): Promise<void> {
    while (this.full) {
      const target: Budget = this.used >= this.limit ? this : this.parent!;
      await new Promise<void>((resolve) => target.waiters.push(resolve));
    }
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
