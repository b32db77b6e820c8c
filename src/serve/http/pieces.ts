import { Readable } from 'node:stream';

/**
 * A large answer (a whole disk, a qcow2 of it, a file's content) streamed in pieces that are
 * reused: a piece goes back to the pool once the socket has written it, not to the collector.
 * A 6.7 GB disk is 1,600 pieces of 4 MiB; as fresh buffers each they waited for a collection
 * (40-60 MiB of dead pieces at the peak of a whole-disk GET at 1,000,000 files) and, mapped
 * on their own, cost ~5 s of system time zero-filling new pages (bench/README, dlpool).
 *
 * Bounds: an answer holds at most PER_BODY pieces at once (being filled, queued on the
 * socket, being written); the next waits for one to be written, so a client that stops
 * reading stops its answer at that many pieces (backpressure, not growth). Between answers
 * the pool keeps at most KEEP pieces, and none once no answer is streaming.
 */
export const PIECE = 4 << 20;
/** Pieces one answer holds at most (one filled while one or two are on the socket). */
export const PER_BODY = 3;
/** Free pieces the pool keeps while answers stream. */
const KEEP = 4;
/** Pieces smaller than this are plain buffers (small files, a Range of a few hundred KiB). */
const POOL_FROM = 1 << 20;

/** Hands out the buffer a piece of `n` bytes is read into (resolves once the answer may hold another). */
export type TakePiece = (n: number) => Promise<Buffer>;

/** A producer of an answer's bytes in [start, end): each yielded view is the whole of one taken piece, or a buffer of its own. */
export type PieceSource = (start: number, end: number, take: TakePiece) => AsyncGenerator<Uint8Array>;

/** A fresh buffer per piece (what a caller that keeps the bytes, or reads them whole, uses). */
export const freshPiece: TakePiece = async (n) => Buffer.allocUnsafe(n);

class PiecePool {
  private free: Buffer[] = [];
  /** Answers streaming now, and those waiting for one of their pieces to be written. */
  active = 0;
  waiting = 0;
  /** Pieces allocated so far, and pieces taken again from the free list. */
  readonly stats = { made: 0, reused: 0 };

  /** A piece (PIECE bytes; the caller uses the first n <= PIECE). */
  take(): Buffer {
    let b = this.free.pop();
    if (b) this.stats.reused++;
    else {
      b = Buffer.allocUnsafe(PIECE);
      this.stats.made++;
    }
    return b;
  }

  /** A piece back: kept when the socket wrote it, while answers stream, up to KEEP. */
  give(b: Buffer, written: boolean): void {
    if (written && this.active > 0 && this.free.length < KEEP) this.free.push(b);
  }

  /** Free pieces kept now. */
  get kept(): number {
    return this.free.length;
  }

  /** No answer streams any more: nothing is kept between answers. */
  idle(): void {
    if (this.active === 0) this.free = [];
  }
}

/** The process's piece pool (its counters for tests and the metrics). */
export const piecePool = new PiecePool();

/**
 * One streamed answer: a Readable whose pipe() (how fastify sends a stream) writes each piece
 * with a callback and takes the piece back when the callback comes. Read any other way
 * (`read()`, async iteration) its pieces are fresh buffers, never reused.
 */
export class PiecedBody extends Readable {
  /** Pieces this answer holds, by their memory. */
  private readonly lent = new Map<ArrayBufferLike, Buffer>();
  private wake?: () => void;
  private piped = false;
  private pulling?: AsyncGenerator<Uint8Array>;
  private counted = false;
  private reading = false;

  constructor(
    private readonly source: PieceSource,
    private readonly start: number,
    private readonly end: number,
  ) {
    super();
  }

  /** Pieces this answer holds now (tests: a stalled client's answer stays at PER_BODY). */
  get held(): number {
    return this.lent.size;
  }

  private readonly takePiece: TakePiece = async (n) => {
    if (!this.piped || n < POOL_FROM || n > PIECE) return Buffer.allocUnsafe(n);
    while (this.lent.size >= PER_BODY) {
      if (this.destroyed) throw new Error('the answer was closed');
      piecePool.waiting++;
      try {
        await new Promise<void>((r) => {
          this.wake = r;
        });
      } finally {
        piecePool.waiting--;
      }
    }
    if (this.destroyed) throw new Error('the answer was closed');
    const b = piecePool.take();
    this.lent.set(b.buffer, b);
    return b.subarray(0, n);
  };

  /** The socket has written (or failed to write) a view of a piece: the piece goes back. */
  private written(key: ArrayBufferLike, err: Error | null | undefined): void {
    const b = this.lent.get(key);
    if (!b) return;
    this.lent.delete(key);
    piecePool.give(b, !err);
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  override pipe<T extends NodeJS.WritableStream>(dest: T, opts?: { end?: boolean }): T {
    if (this.piped || this.pulling) throw new Error('a pieced answer is sent once');
    this.piped = true;
    piecePool.active++;
    this.counted = true;
    dest.emit('pipe', this);
    void this.pump(dest, opts?.end !== false);
    return dest;
  }

  private async pump(dest: NodeJS.WritableStream, end: boolean): Promise<void> {
    try {
      for await (const v of this.source(this.start, this.end, this.takePiece)) {
        if (this.destroyed) {
          this.written(v.buffer, new Error('the answer was closed'));
          return;
        }
        if (v.length === 0) {
          this.written(v.buffer, null);
          continue;
        }
        const key = v.buffer;
        dest.write(v, (err?: Error | null) => this.written(key, err));
      }
      if (this.destroyed) return;
      if (end) this.once('end', () => dest.end());
      // ended as a Readable: fastify (and pipe's listeners) see the source finish
      this.push(null);
      this.resume();
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  override _read(): void {
    if (this.piped || this.reading) return;
    this.pulling ??= this.source(this.start, this.end, this.takePiece);
    this.reading = true;
    // read other than by pipe: each piece a fresh buffer (take), pushed as the reader asks
    this.pulling.next().then(
      (r) => {
        this.reading = false;
        this.push(r.done ? null : r.value);
      },
      (e: Error) => this.destroy(e),
    );
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
    if (!this.piped) void this.pulling?.return(undefined);
    if (this.counted) {
      this.counted = false;
      piecePool.active--;
      piecePool.idle();
    }
    cb(err);
  }
}
