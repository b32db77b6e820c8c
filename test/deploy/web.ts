import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as net from 'node:net';
import * as path from 'node:path';

/** A free TCP port on 127.0.0.1 (bound, then let go). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export interface WebServer {
  url: string;
  port: number;
  /** lighttpd's access log: one line per request, "METHOD PATH STATUS BYTES RANGE" (lighttpd writes it in batches). */
  log(): string[];
  /** The access log with every request so far in it. */
  settledLog(): Promise<string[]>;
  stop(): Promise<void>;
  /** Start again on the same port (after stop). */
  start(): Promise<void>;
}

/**
 * lighttpd (a real web server with Range support, not ours) serving `root` on 127.0.0.1, with
 * an access log that counts what was fetched.
 */
export async function lighttpd(root: string, work: string): Promise<WebServer> {
  if (!existsSync('/usr/sbin/lighttpd')) throw new Error('lighttpd is not installed (apt-get install lighttpd)');
  const port = await freePort();
  const conf = path.join(work, `lighttpd-${port}.conf`);
  const logFile = path.join(work, `lighttpd-${port}.access.log`);
  writeFileSync(
    conf,
    [
      `server.document-root = "${root}"`,
      `server.bind = "127.0.0.1"`,
      `server.port = ${port}`,
      `server.errorlog = "${path.join(work, `lighttpd-${port}.error.log`)}"`,
      'server.modules = ( "mod_accesslog" )',
      `accesslog.filename = "${logFile}"`,
      'accesslog.format = "%m %U %>s %b %{Range}i"',
      'mimetype.assign = ( "" => "application/octet-stream" )',
      // served fresh: the store's files never change under a name, the index does
      'etag.use-inode = "disable"',
      // and lighttpd's stat cache keeps an open descriptor of a file for a second or so: an
      // index renamed over within that time was served from the old file
      'server.stat-cache-engine = "disable"',
      '',
    ].join('\n'),
  );
  execFileSync('/usr/sbin/lighttpd', ['-tt', '-f', conf]);
  let child: ChildProcess | undefined;
  const url = `http://127.0.0.1:${port}`;
  const up = async () => {
    for (let i = 0; i < 200; i++) {
      const ok = await new Promise<boolean>((resolve) => {
        const req = http.get(`${url}/`, (res) => {
          res.resume();
          resolve(true);
        });
        req.on('error', () => resolve(false));
      });
      if (ok) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`lighttpd did not come up on ${port}`);
  };
  const server: WebServer = {
    url,
    port,
    log: () =>
      existsSync(logFile)
        ? readFileSync(logFile, 'utf8')
            .split('\n')
            .filter((l) => l)
        : [],
    settledLog: async () => {
      // lighttpd buffers its access log; SIGHUP (cycle the logs) writes it out
      if (child && child.exitCode === null) {
        child.kill('SIGHUP');
        await new Promise((r) => setTimeout(r, 300));
      }
      return server.log();
    },
    start: async () => {
      if (child && child.exitCode === null) return;
      child = spawn('/usr/sbin/lighttpd', ['-D', '-f', conf], { stdio: 'ignore' });
      await up();
    },
    stop: async () => {
      const c = child;
      child = undefined;
      if (!c || c.exitCode !== null) return;
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await gone;
    },
  };
  await server.start();
  return server;
}

/**
 * An HTTP proxy in front of `upstream` that passes requests through and, while `flip`
 * says so for a request, flips a byte in every 4 KiB of the reply body (a bad transfer
 * nobody noticed on the way; every blob in the reply is damaged).
 */
export async function flippingProxy(
  upstream: string,
  flip: (pathname: string, n: number) => boolean,
): Promise<{ url: string; flipped: string[]; close(): Promise<void> }> {
  const flipped: string[] = [];
  let n = 0;
  const u = new URL(upstream);
  const server = http.createServer((req, res) => {
    const up = http.request(
      { host: u.hostname, port: u.port, path: req.url, method: req.method, headers: req.headers },
      (r) => {
        const parts: Buffer[] = [];
        r.on('data', (c: Buffer) => parts.push(c));
        r.on('end', () => {
          const body = Buffer.concat(parts);
          const p = (req.url ?? '').split('?')[0];
          if (body.length > 0 && flip(p, n++)) {
            for (let o = Math.min(2048, body.length >> 1); o < body.length; o += 4096) body[o] ^= 0x5a;
            flipped.push(`${p} ${req.headers.range ?? ''}`);
          }
          res.writeHead(r.statusCode ?? 502, r.headers);
          res.end(body);
        });
      },
    );
    up.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    flipped,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
