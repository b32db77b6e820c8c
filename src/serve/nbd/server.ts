import { rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { releaseBuffer } from '../../io/native.js';
import { BufferPool } from '../../util/buffer-pool.js';
import { StrataError } from '../../util/errors.js';
import { shareOf } from '../../util/memory.js';
import { Budget } from './budget.js';
import { Connection, type ConnectionHost } from './connection.js';
import type { NbdExport } from './export.js';
import * as P from './protocol.js';
import type { TraceWriter } from './trace.js';

export interface NbdServerOptions {
  exports: NbdExport[];
  /** Record every request here. */
  trace?: TraceWriter;
  /** Largest READ/WRITE a client may ask for (default 32 MiB). */
  maxRequest?: number;
  /** Bytes of requests and replies in flight per connection before we stop reading it (default 16 MiB). */
  connectionBudget?: number;
  /**
   * The same, over all connections (default memory.ts SHARES.nbdRequests, 1/16 of the memory budget, 8-64 MiB: ~10 MiB at a
   * service's default, forty 256 KiB reads; with 1/8, nbdcopy's four connections kept ~20 MiB
   * of replies in flight for no more speed: the reads are CPU-bound on one thread).
   */
  totalBudget?: number;
  /** Connections beyond this are closed at once (default 256). */
  maxConnections?: number;
  /** A client that has not finished the handshake after this many ms is dropped (default 30 s). */
  handshakeTimeout?: number;
  /** Where unexpected failures are reported (default: stderr). */
  onError?(e: unknown, where: string): void;
}

export type ListenOptions = { host?: string; port?: number } | { socket: string };

export interface NbdEndpoint {
  /** 'tcp' or 'unix'. */
  transport: 'tcp' | 'unix';
  host?: string;
  port?: number;
  socket?: string;
}

/**
 * An NBD server: several exports, several connections per export, TCP or a Unix socket.
 * Every export shares its source (and writer) among its connections, so what one client
 * writes and flushes the others read: multi-conn is safe and always advertised.
 */
export class NbdServer implements ConnectionHost {
  readonly budget: Budget;
  /** Reply buffers, kept up to what may be in flight (past it they would be garbage awaiting a collection). */
  readonly pool: BufferPool;
  readonly connectionBudget: number;
  readonly maxRequest: number;
  readonly handshakeTimeout: number;
  readonly trace?: TraceWriter;
  private readonly list: NbdExport[];
  private readonly byName = new Map<string, NbdExport>();
  private readonly conns = new Map<Connection, Socket>();
  private readonly maxConnections: number;
  private server: Server | undefined;
  private nextId = 1;
  private stopping = false;
  endpoint: NbdEndpoint | undefined;

  constructor(private readonly opts: NbdServerOptions) {
    if (opts.exports.length === 0) throw new StrataError('USAGE', 'an NBD server needs at least one export');
    this.list = opts.exports;
    for (const e of opts.exports) {
      if (this.byName.has(e.name)) throw new StrataError('USAGE', `two exports are named '${e.name}'`);
      if (Buffer.byteLength(e.name) > 4096) throw new StrataError('USAGE', 'export names are at most 4096 bytes');
      this.byName.set(e.name, e);
    }
    this.maxRequest = opts.maxRequest ?? 32 << 20;
    this.connectionBudget = opts.connectionBudget ?? 16 << 20;
    this.budget = new Budget(opts.totalBudget ?? shareOf('nbdRequests'));
    this.pool = new BufferPool(Number.POSITIVE_INFINITY, false, {
      classes: 'step',
      poolFrom: 65536,
      maxBytes: Math.min(shareOf('nbdReplies'), this.budget.limit),
      release: releaseBuffer,
    });
    this.maxConnections = opts.maxConnections ?? 256;
    this.handshakeTimeout = opts.handshakeTimeout ?? 30_000;
    this.trace = opts.trace;
  }

  /** Connections open now. */
  get connectionCount(): number {
    return this.conns.size;
  }

  get shuttingDown(): boolean {
    return this.stopping;
  }

  exports(): readonly NbdExport[] {
    return this.list;
  }

  /** The export of that name; with a single export, the empty name selects it too. */
  find(name: string): NbdExport | undefined {
    return this.byName.get(name) ?? (name === '' && this.list.length === 1 ? this.list[0] : undefined);
  }

  flagsOf(e: NbdExport): number {
    let f = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_SEND_DF | P.TF_CAN_MULTI_CONN | P.TF_SEND_CACHE;
    if (e.writer) f |= P.TF_SEND_FUA | P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES;
    else f |= P.TF_READ_ONLY;
    return f;
  }

  onError(e: unknown, where: string): void {
    if (this.opts.onError) this.opts.onError(e, where);
    else process.stderr.write(`strata nbd: ${where}: ${(e as Error)?.message ?? e}\n`);
  }

  /** Start listening; resolves with where (the port is the real one when 0 was asked). */
  async listen(where: ListenOptions): Promise<NbdEndpoint> {
    if (this.server) throw new StrataError('USAGE', 'server already listening');
    const server = createServer({ noDelay: true }, (s) => this.accept(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('socket' in where) server.listen(where.socket, () => resolve());
      else server.listen(where.port ?? 10809, where.host ?? '127.0.0.1', () => resolve());
    });
    server.on('error', (e) => this.onError(e, 'listener'));
    if ('socket' in where) this.endpoint = { transport: 'unix', socket: where.socket };
    else {
      const a = server.address();
      if (!a || typeof a === 'string') throw new StrataError('IO', 'no TCP address after listen');
      this.endpoint = { transport: 'tcp', host: a.address, port: a.port };
    }
    return this.endpoint;
  }

  /** The URI a client uses for an export (qemu and libnbd syntax). */
  uri(name: string): string {
    const ep = this.endpoint;
    if (!ep) throw new StrataError('USAGE', 'server is not listening');
    const path = encodeURIComponent(name);
    if (ep.transport === 'unix') return `nbd+unix:///${path}?socket=${ep.socket}`;
    const host = ep.host!.includes(':') ? `[${ep.host}]` : ep.host;
    return `nbd://${host}:${ep.port}/${path}`;
  }

  private accept(sock: Socket): void {
    if (this.stopping || this.conns.size >= this.maxConnections) {
      sock.destroy();
      return;
    }
    sock.setNoDelay?.(true);
    const conn = new Connection(this.nextId++, sock, this);
    this.conns.set(conn, sock);
    sock.on('error', () => {});
    conn.run().finally(() => this.conns.delete(conn));
  }

  /**
   * Clean shutdown: stop accepting, let every connection answer what it has in flight,
   * close them, then close the exports (an overlay flushes and marks itself clean).
   */
  async close(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const server = this.server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    await Promise.all([...this.conns.keys()].map((c) => c.shutdown()));
    await closed;
    if (this.endpoint?.transport === 'unix') rmSync(this.endpoint.socket!, { force: true });
    const errors: unknown[] = [];
    for (const e of this.list) {
      try {
        await e.close();
      } catch (err) {
        errors.push(err);
      }
    }
    await this.trace?.close();
    if (errors.length > 0) throw errors[0];
  }
}
