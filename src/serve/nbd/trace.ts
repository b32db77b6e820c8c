import { createWriteStream, type WriteStream } from 'node:fs';

/** One served request, as `--trace FILE` writes it (one JSON object per line). */
export interface TraceRecord {
  /** Arrival time, milliseconds since the Unix epoch. */
  time: number;
  export: string;
  conn: number;
  op: string;
  offset: number;
  length: number;
  /** Milliseconds from arrival to reply. */
  latency: number;
  /** NBD error number when the request failed. */
  error?: number;
  /** With a live cache (issue 27): the class and kind of the request's first byte, by the block map. */
  class?: string;
  kind?: string;
  /** Its first owner, as `strata trace resolve --json` lists it. */
  owner?: unknown;
  /** How the cache served it: every block there and used before, brought by a prefetch, or fetched. */
  cache?: 'hit' | 'prefetched' | 'miss';
}

/**
 * Appends request records as JSON lines. Memory is bounded: when the file cannot keep
 * up and more than `maxBuffered` bytes wait, records are dropped and counted (the count
 * is written as a final record on close) rather than slowing the server down.
 */
export class TraceWriter {
  private readonly out: WriteStream;
  dropped = 0;
  written = 0;

  constructor(
    readonly path: string,
    private readonly maxBuffered = 16 << 20,
  ) {
    this.out = createWriteStream(path, { flags: 'a' });
    this.out.on('error', () => {}); // reported on close
  }

  record(r: TraceRecord): void {
    if (this.out.writableLength > this.maxBuffered) {
      this.dropped++;
      return;
    }
    this.written++;
    this.out.write(`${JSON.stringify(r)}\n`);
  }

  async close(): Promise<void> {
    if (this.dropped > 0)
      this.out.write(`${JSON.stringify({ time: Date.now(), op: 'dropped', count: this.dropped })}\n`);
    await new Promise<void>((resolve, reject) => {
      this.out.once('error', reject);
      this.out.end(() => resolve());
    });
  }
}
