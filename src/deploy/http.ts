import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { StrataError } from '../util/errors.js';

/** What the HTTP view reads: a deploy (reads of ranges not yet local are fetched first). */
export interface RangeView {
  readonly size: number;
  read(offset: number, out: Uint8Array): Promise<number>;
}

export interface DeployHttpOptions {
  host?: string;
  port?: number;
  /** The path the disk is served at (default /disk.raw; / serves it too). */
  path?: string;
  /** Bytes read from the view per step of a response (default 1 MiB). */
  step?: number;
}

/** `[HOST:]PORT` as --http takes it. */
export function parseHostPort(s: string, defaultHost = '127.0.0.1'): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]:|([^:]+):)?(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) throw new StrataError('USAGE', `--http wants [HOST:]PORT, not '${s}'`);
  return { host: m[1] ?? m[2] ?? defaultHost, port };
}

/**
 * `Range: bytes=...` against `size`: [start, end) for one satisfiable range; null where the
 * whole body is sent (no header, several ranges, another unit: RFC 9110 lets a server ignore
 * Range); 'unsatisfiable' for a range past the end (416).
 */
export function parseByteRange(header: string | undefined, size: number): [number, number] | null | 'unsatisfiable' {
  if (!header) return null;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m || (m[1] === '' && m[2] === '')) return null;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0 || size === 0) return 'unsatisfiable';
    return [Math.max(0, size - n), size];
  }
  const start = Number(m[1]);
  if (start >= size) return 'unsatisfiable';
  const end = m[2] === '' ? size : Math.min(size, Number(m[2]) + 1);
  if (end <= start) return null; // last < first: invalid, ignored
  return [start, end];
}

/**
 * The deploy's view over HTTP range requests (GET/HEAD, 206 with Content-Range,
 * Accept-Ranges: bytes, Content-Length), so firmware that boots with iPXE `sanboot http://...`
 * or qemu's curl block driver reads the same disk the NBD export serves: a range not yet
 * local is fetched first, then answered. Read-only: writes go through NBD.
 */
export class DeployHttpServer {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private active = 0;
  readonly path: string;

  constructor(
    private readonly view: RangeView,
    private readonly opts: DeployHttpOptions = {},
  ) {
    this.path = opts.path ?? '/disk.raw';
  }

  /** Open connections (a client mid-read is not cut off by --exit-when-complete). */
  get connectionCount(): number {
    return this.active;
  }

  async listen(): Promise<{ host: string; port: number; url: string }> {
    const server = createServer((req, res) => {
      this.active++;
      res.on('close', () => this.active--);
      this.handle(req, res).catch((e) => {
        if (!res.headersSent) {
          res.writeHead(e instanceof StrataError && e.code === 'USAGE' ? 400 : 502, {
            'content-type': 'text/plain; charset=utf-8',
          });
          res.end(`${(e as Error).message}\n`);
        } else res.destroy(e as Error);
      });
    });
    server.keepAliveTimeout = 5_000;
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port ?? 0, this.opts.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const a = server.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return { host: a.address, port: a.port, url: `http://${host}:${a.port}${this.path}` };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = (req.url ?? '/').split('?')[0];
    if (url !== this.path && url !== '/') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`not found: the disk is at ${this.path}\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' });
      res.end('read-only: GET and HEAD with Range\n');
      return;
    }
    const size = this.view.size;
    const r = parseByteRange(req.headers.range, size);
    const common = { 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
    if (r === 'unsatisfiable') {
      res.writeHead(416, { ...common, 'content-range': `bytes */${size}`, 'content-length': '0' });
      res.end();
      return;
    }
    const [start, end] = r ?? [0, size];
    const headers: Record<string, string> = { ...common, 'content-length': String(end - start) };
    if (r) headers['content-range'] = `bytes ${start}-${end - 1}/${size}`;
    if (req.method === 'HEAD') {
      res.writeHead(r ? 206 : 200, headers);
      res.end();
      return;
    }
    // the first step is read before the headers go out, so a failing fetch is an error status, not a cut body
    const step = this.opts.step ?? 1 << 20;
    let pos = start;
    let buf = Buffer.allocUnsafe(Math.min(step, end - start));
    await this.view.read(pos, buf);
    res.writeHead(r ? 206 : 200, headers);
    for (;;) {
      pos += buf.length;
      const more = pos < end;
      if (!res.write(buf) && more) await new Promise<void>((resolve) => res.once('drain', resolve));
      if (!more || res.destroyed) break;
      buf = Buffer.allocUnsafe(Math.min(step, end - pos));
      await this.view.read(pos, buf);
    }
    res.end();
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    for (const sock of this.sockets) sock.destroy();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}
