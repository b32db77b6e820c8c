import { type ChildProcess, spawn } from 'node:child_process';
import { createServer, request, type Server } from 'node:http';
import * as path from 'node:path';
import { CLI } from './cli.js';

/**
 * Several `strata serve` processes on one catalog and store (PostgreSQL + S3 in the scale-out
 * tests), behind a round-robin balancer that sends each request to the next live server: a
 * check-in's chunk uploads and its commit land on different processes. A server can be
 * killed (SIGKILL) and started again on a new port; the balancer skips it while it is down.
 */
export interface ServeProcess {
  child: ChildProcess;
  url: string;
  lib: string;
}

export class Cluster {
  readonly servers: Array<ServeProcess | undefined> = [];
  /** Requests each server took through the balancer. */
  readonly hits: number[];
  /** Servers that exited without being told to (with the end of their stderr). */
  readonly crashes: string[] = [];
  private balancer?: Server;
  private next = 0;
  url = '';

  constructor(
    private readonly dir: string,
    private readonly places: string[],
    private readonly env: Record<string, string>,
    readonly size: number,
    private readonly extraArgs: string[] = [],
  ) {
    this.hits = new Array(size).fill(0);
  }

  async start(): Promise<void> {
    for (let k = 0; k < this.size; k++) this.servers[k] = await this.startServe(k);
    this.balancer = createServer((req, res) => {
      const live = this.servers.map((s, k) => (s ? k : -1)).filter((k) => k >= 0);
      if (live.length === 0) {
        res.writeHead(502);
        res.end();
        return;
      }
      const k = live[this.next++ % live.length];
      this.hits[k]++;
      const up = new URL((this.servers[k] as ServeProcess).url);
      const fwd = request(
        { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      fwd.on('error', () => {
        if (!res.headersSent) res.writeHead(502);
        res.destroy();
      });
      req.pipe(fwd);
    });
    await new Promise<void>((r) => this.balancer?.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.balancer.address() as { port: number }).port}`;
  }

  server(k: number): ServeProcess {
    const s = this.servers[k];
    if (!s) throw new Error(`server ${k} is down`);
    return s;
  }

  startServe(k: number): Promise<ServeProcess> {
    const lib = path.join(this.dir, `lib${k}`);
    const child = spawn(
      process.execPath,
      [
        CLI,
        'serve',
        '--listen',
        '127.0.0.1:0',
        '--library',
        lib,
        ...this.places,
        '--default-project',
        'ops',
        '--quiet',
        ...this.extraArgs,
      ],
      { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    return new Promise((resolve, reject) => {
      let err = '';
      child.stderr?.on('data', (b: Buffer) => {
        err += b.toString();
        const m = / at (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
        if (m) resolve({ child, url: m[1], lib });
      });
      child.on('exit', (code, sig) => {
        if (this.servers[k]?.child === child)
          this.crashes.push(`server ${k} exited ${code ?? sig}: ${err.slice(-2000)}`);
        reject(new Error(`server ${k} exited ${code ?? sig}: ${err}`));
      });
    });
  }

  /** SIGKILL server k (the balancer stops sending to it at once). */
  kill(k: number): void {
    const s = this.servers[k];
    this.servers[k] = undefined;
    s?.child.kill('SIGKILL');
  }

  async restart(k: number): Promise<void> {
    this.servers[k] = await this.startServe(k);
  }

  async close(): Promise<void> {
    const all = this.servers.splice(0);
    for (const s of all) s?.child.kill('SIGTERM');
    await new Promise((r) => this.balancer?.close(r));
  }
}
