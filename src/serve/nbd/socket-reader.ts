import type { Socket } from 'node:net';

/** The peer closed the connection (or it failed) while we waited for bytes. */
export class ConnectionClosed extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'ConnectionClosed';
  }
}

/**
 * Exact-length reads from a socket, with backpressure: the socket is paused while more
 * than `highWater` bytes wait unread (a client that pipelines faster than we serve stops
 * being read, so what it sends stays in the kernel's buffers, not in ours).
 */
export class SocketReader {
  private chunks: Buffer[] = [];
  private avail = 0;
  private want = 0;
  private waiter: { resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private closed: Error | undefined;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    private readonly highWater = 1 << 20,
  ) {
    socket.on('data', (c: Buffer) => this.onData(c));
    const end = () => this.fail(new ConnectionClosed());
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', (e) => this.fail(new ConnectionClosed(e.message)));
  }

  /** Bytes received and not yet read. */
  get buffered(): number {
    return this.avail;
  }

  private onData(c: Buffer): void {
    this.chunks.push(c);
    this.avail += c.length;
    const w = this.waiter;
    if (w && this.avail >= this.want) {
      this.waiter = undefined;
      w.resolve(this.take(this.want));
    }
    if (this.avail > Math.max(this.highWater, this.want) && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private fail(e: Error): void {
    if (this.closed) return;
    this.closed = e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(e);
  }

  /** Exactly `n` bytes; rejects with ConnectionClosed when the peer goes away first. */
  read(n: number): Promise<Buffer> {
    if (this.avail >= n) return Promise.resolve(this.take(n));
    if (this.closed) return Promise.reject(this.closed);
    if (this.waiter) return Promise.reject(new Error('SocketReader: one read at a time'));
    this.want = n;
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  private take(n: number): Buffer {
    this.avail -= n;
    const first = this.chunks[0];
    let out: Buffer;
    if (n === 0) out = Buffer.alloc(0);
    else if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let pos = 0;
      while (pos < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - pos);
        c.copy(out, pos, 0, k);
        pos += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    if (this.paused && this.avail <= this.highWater >>> 1) {
      this.paused = false;
      this.socket.resume();
    }
    return out;
  }
}
