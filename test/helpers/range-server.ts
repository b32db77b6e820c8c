import { createReadStream, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A small HTTP server that serves files from disk with single Range requests (RFC 7233
 * `bytes=a-b`), streaming from the file so a sparse multi-GiB file costs nothing to serve
 * (python3 -m http.server ignores Range). `failFirst` answers the first N requests with
 * 503, for retry tests; every request is counted with the bytes it was sent.
 */
export interface RangeServer {
  url: (name: string) => string;
  requests: number;
  bytesSent: number;
  /** Answer the next N requests with HTTP 503. */
  failNext: number;
  close(): Promise<void>;
}

export async function startRangeServer(files: Record<string, string>): Promise<RangeServer> {
  const state = { requests: 0, bytesSent: 0, failNext: 0 };
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    state.requests++;
    if (state.failNext > 0) {
      state.failNext--;
      res.writeHead(503, { 'content-length': 0 });
      res.end();
      return;
    }
    const file = files[decodeURIComponent((req.url ?? '/').slice(1))];
    if (!file) {
      res.writeHead(404, { 'content-length': 0 });
      res.end();
      return;
    }
    const size = statSync(file).size;
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (!m) {
      res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' });
      if (req.method === 'HEAD') return res.end();
      state.bytesSent += size;
      createReadStream(file).pipe(res);
      return;
    }
    const s = Number(m[1]);
    const e = Math.min(m[2] === '' ? size - 1 : Number(m[2]), size - 1);
    if (s >= size || e < s) {
      res.writeHead(416, { 'content-range': `bytes */${size}`, 'content-length': 0 });
      res.end();
      return;
    }
    res.writeHead(206, { 'content-range': `bytes ${s}-${e}/${size}`, 'content-length': e - s + 1 });
    if (req.method === 'HEAD') return res.end();
    state.bytesSent += e - s + 1;
    createReadStream(file, { start: s, end: e }).pipe(res);
  };
  const server: Server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: (name) => `http://127.0.0.1:${port}/${encodeURIComponent(name)}`,
    get requests() {
      return state.requests;
    },
    get bytesSent() {
      return state.bytesSent;
    },
    get failNext() {
      return state.failNext;
    },
    set failNext(n: number) {
      state.failNext = n;
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
