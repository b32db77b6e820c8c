import type { IncomingMessage } from 'node:http';
import * as http from 'node:http';
import * as https from 'node:https';
import { StrataError } from '../util/errors.js';
import { type ByteSource, clampRead } from './byte-source.js';

export interface HttpSourceOptions {
  headers?: Record<string, string>;
  /**
   * Milliseconds to wait for a connection (name lookup, TCP and TLS handshakes). Default:
   * $STRATA_HTTP_CONNECT_TIMEOUT seconds, else 10 s.
   */
  connectTimeoutMs?: number;
  /**
   * Milliseconds a connected request may go without a byte from the server (an idle
   * timeout, not a deadline: a large range that keeps flowing never times out). Default:
   * $STRATA_HTTP_TIMEOUT seconds, else 15 s.
   */
  idleTimeoutMs?: number;
  /**
   * Attempts per request on transient failures: 5xx, 429, reset or refused connections, a
   * reply cut short (default 3). Timeouts are not retried: the server had its full time,
   * and retrying would multiply the wait a user sees.
   */
  retries?: number;
  /** Wait before the first retry; each further retry waits twice as long (default 250 ms). */
  retryDelayMs?: number;
  /** @deprecated the old single timeout: taken as `idleTimeoutMs`. */
  timeoutMs?: number;
}

/** Timeouts and retries with every default filled in. */
interface Settings {
  headers: Record<string, string>;
  connectMs: number;
  idleMs: number;
  attempts: number;
  delayMs: number;
}

const MAX_REDIRECTS = 5;

/** Seconds from the environment as milliseconds, when set to a positive number. */
function envMs(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v.trim() === '') return undefined;
  const s = Number(v);
  if (!Number.isFinite(s) || s <= 0) {
    throw new StrataError('USAGE', `${name} must be a positive number of seconds, got '${v}'`);
  }
  return s * 1000;
}

function settings(opts: HttpSourceOptions): Settings {
  return {
    headers: opts.headers ?? {},
    connectMs: opts.connectTimeoutMs ?? envMs('STRATA_HTTP_CONNECT_TIMEOUT') ?? 10_000,
    idleMs: opts.idleTimeoutMs ?? opts.timeoutMs ?? envMs('STRATA_HTTP_TIMEOUT') ?? 15_000,
    attempts: Math.max(1, opts.retries ?? 3),
    delayMs: Math.max(0, opts.retryDelayMs ?? 250),
  };
}

/**
 * An image on a web server or object store, read with HTTP Range requests so nothing is
 * downloaded that is not asked for. Wrap in CachedSource for small scattered reads.
 *
 * Every request has a connect timeout and an idle timeout, transient failures are retried
 * with exponential backoff (reads are idempotent), and each failure says its cause once:
 * connection refused, no such host, a certificate the system does not trust, no answer
 * in N s, or the HTTP status.
 */
export class HttpSource implements ByteSource {
  private constructor(
    readonly url: string,
    readonly size: number,
    private readonly cfg: Settings,
  ) {}

  get name(): string {
    return this.url;
  }

  static async open(url: string, opts: HttpSourceOptions = {}): Promise<HttpSource> {
    const cfg = settings(opts);
    const res = await request(url, { ...cfg.headers, range: 'bytes=0-0' }, cfg, 'size probe', async (r) => {
      const cr = r.headers['content-range'];
      if (r.statusCode === 206 && cr) {
        const m = /\/(\d+)\s*$/.exec(cr);
        if (m) return Number(m[1]);
      } else if (r.statusCode === 200) {
        throw new StrataError('UNSUPPORTED', 'server ignores Range requests; download the image first', {
          file: url,
        });
      }
      throw new StrataError('IO', `no usable Content-Range in reply (status ${r.statusCode})`, { file: url });
    });
    if (!Number.isSafeInteger(res)) {
      throw new StrataError('IO', `no usable Content-Range in reply (size ${res})`, { file: url });
    }
    return new HttpSource(url, res, cfg);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    if (n === 0) return new Uint8Array(0);
    const what = `range ${offset}+${n}`;
    return request(
      this.url,
      { ...this.cfg.headers, range: `bytes=${offset}-${offset + n - 1}` },
      this.cfg,
      what,
      (r) => {
        if (r.statusCode !== 206) {
          throw new StrataError('IO', `expected 206 Partial Content, got ${r.statusCode}`, { file: this.url, offset });
        }
        return body(r, n, this.url, offset);
      },
    );
  }
}

/**
 * `length` bytes at `offset` of the object at `url` (one Range request, with the timeouts and
 * retries above; no size probe). Short only where the object ends (the 206 reply says how
 * much it holds). For callers that know what they ask for (a store's pack ranges).
 */
export async function httpGetRange(
  url: string,
  offset: number,
  length: number,
  opts: HttpSourceOptions = {},
): Promise<Uint8Array> {
  const cfg = settings(opts);
  if (length <= 0) return new Uint8Array(0);
  return request(
    url,
    { ...cfg.headers, range: `bytes=${offset}-${offset + length - 1}` },
    cfg,
    `range ${offset}+${length}`,
    (r) => {
      if (r.statusCode === 206) {
        const m = /bytes\s+(\d+)-(\d+)\//.exec(String(r.headers['content-range'] ?? ''));
        if (!m || Number(m[1]) !== offset) {
          throw new StrataError('IO', `range reply starts elsewhere (${r.headers['content-range']})`, {
            file: url,
            offset,
          });
        }
        return body(r, Number(m[2]) - offset + 1, url, offset);
      }
      if (r.statusCode === 200) {
        throw new StrataError('UNSUPPORTED', 'server ignores Range requests (serve the store with one that does)', {
          file: url,
        });
      }
      throw new StrataError('IO', `expected 206 Partial Content, got ${r.statusCode}`, { file: url, offset });
    },
  );
}

/** The whole object at `url` (a small one: an index, a manifest), at most `limit` bytes. */
export async function httpGetAll(url: string, opts: HttpSourceOptions = {}, limit = 256 << 20): Promise<Uint8Array> {
  const cfg = settings(opts);
  return request(url, cfg.headers, cfg, 'GET', (r) => {
    if (r.statusCode !== 200) throw new StrataError('IO', `expected 200 OK, got ${r.statusCode}`, { file: url });
    const n = Number(r.headers['content-length']);
    if (Number.isSafeInteger(n) && n >= 0) {
      if (n > limit) throw new StrataError('IO', `object of ${n} bytes is over ${limit}`, { file: url });
      return body(r, n, url, 0);
    }
    return new Promise<Uint8Array>((resolve, reject) => {
      const parts: Buffer[] = [];
      let got = 0;
      r.on('data', (c: Buffer) => {
        got += c.length;
        if (got > limit) {
          r.destroy();
          reject(new StrataError('IO', `object is over ${limit} bytes`, { file: url }));
        } else parts.push(c);
      });
      r.on('end', () => resolve(Buffer.concat(parts)));
      r.on('error', (e) => reject(new Transient(`reply broke off: ${e.message}`)));
    });
  });
}

/** A failure worth another attempt (the server or the path to it may recover). */
class Transient extends Error {}

/**
 * One request with redirects, timeouts and retries; `take` turns the response into the
 * result (it must consume or destroy the body) and may throw a StrataError to stop.
 */
async function request<T>(
  url: string,
  headers: Record<string, string>,
  cfg: Settings,
  what: string,
  take: (r: IncomingMessage) => Promise<T>,
): Promise<T> {
  let last: Transient | undefined;
  for (let i = 0; i < cfg.attempts; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, cfg.delayMs * 2 ** (i - 1)));
    try {
      return await attempt(url, headers, cfg, what, take, 0);
    } catch (e) {
      if (!(e instanceof Transient)) throw e;
      last = e;
    }
  }
  const tries = cfg.attempts > 1 ? ` (${cfg.attempts} attempts)` : '';
  throw new StrataError('IO', `${last?.message ?? 'request failed'}${tries}`, { file: url });
}

async function attempt<T>(
  url: string,
  headers: Record<string, string>,
  cfg: Settings,
  what: string,
  take: (r: IncomingMessage) => Promise<T>,
  hops: number,
): Promise<T> {
  const u = new URL(url);
  const res = await send(u, headers, cfg, url);
  const status = res.statusCode ?? 0;
  if (status >= 300 && status < 400 && res.headers.location) {
    res.destroy();
    if (hops >= MAX_REDIRECTS) throw new StrataError('IO', `more than ${MAX_REDIRECTS} redirects`, { file: url });
    return attempt(new URL(res.headers.location, u).href, headers, cfg, what, take, hops + 1);
  }
  if (status >= 500 || status === 429) {
    res.destroy();
    throw new Transient(`HTTP ${status} for ${what}`);
  }
  if (status === 404) {
    res.destroy();
    throw new StrataError('NOT_FOUND', 'HTTP 404', { file: url });
  }
  if (status >= 400) {
    res.destroy();
    throw new StrataError('IO', `HTTP ${status} for ${what}`, { file: url });
  }
  try {
    return await take(res);
  } finally {
    res.destroy();
  }
}

/** Send a GET and wait for the response head, with the connect and idle timeouts. */
function send(u: URL, headers: Record<string, string>, cfg: Settings, url: string): Promise<IncomingMessage> {
  const host = u.port ? `${u.hostname}:${u.port}` : u.hostname;
  return new Promise((resolve, reject) => {
    const mod = u.protocol === 'https:' ? https : u.protocol === 'http:' ? http : undefined;
    if (!mod) {
      reject(new StrataError('USAGE', `not an http(s) URL`, { file: url }));
      return;
    }
    let connectTimer: NodeJS.Timeout | undefined;
    let failed: Error | undefined;
    let response: IncomingMessage | undefined;
    // a timeout while the body flows fails the body (its 'error' carries our message)
    const fail = (e: Error) => {
      if (failed) return;
      failed = e;
      if (response) response.destroy(e);
      else req.destroy(e);
    };
    const req = mod.request(u, { method: 'GET', headers }, (res) => {
      clearTimeout(connectTimer);
      response = res;
      resolve(res);
    });
    req.on('socket', (s) => {
      if (!s.connecting) return; // a kept-alive connection
      connectTimer = setTimeout(
        () =>
          fail(
            new StrataError('IO', `no connection to ${host} in ${seconds(cfg.connectMs)} (connect timeout)`, {
              file: url,
            }),
          ),
        cfg.connectMs,
      );
      s.once(u.protocol === 'https:' ? 'secureConnect' : 'connect', () => clearTimeout(connectTimer));
    });
    req.setTimeout(cfg.idleMs, () =>
      fail(new StrataError('IO', `no answer from ${host} in ${seconds(cfg.idleMs)} (idle timeout)`, { file: url })),
    );
    req.on('error', (e) => {
      clearTimeout(connectTimer);
      reject(failed ?? classify(e as NodeJS.ErrnoException, u, host, url));
    });
    req.end();
  });
}

/**
 * Read exactly `n` body bytes into one buffer. The socket's idle timeout (set on the
 * request) keeps running while the body flows.
 */
function body(res: IncomingMessage, n: number, url: string, offset: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    res.on('data', (c: Buffer) => {
      if (got + c.length > n) {
        res.destroy();
        reject(new StrataError('IO', `range reply is longer than the ${n} bytes asked for`, { file: url, offset }));
        return;
      }
      c.copy(out, got);
      got += c.length;
    });
    res.on('end', () => {
      if (got === n) resolve(out);
      else reject(new Transient(`range reply ended after ${got} of ${n} bytes`));
    });
    res.on('error', (e) => reject(e instanceof StrataError ? e : new Transient(`reply broke off: ${e.message}`)));
    res.on('aborted', () => reject(new Transient(`reply broke off after ${got} of ${n} bytes`)));
  });
}

const CERT_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
]);

/** One clear message per cause; transient ones are retried. */
function classify(e: NodeJS.ErrnoException, u: URL, host: string, url: string): Error {
  const code = e.code ?? '';
  if (e instanceof StrataError || e instanceof Transient) return e;
  if (code === 'ENOTFOUND') return new StrataError('IO', `no such host: ${u.hostname}`, { file: url });
  if (code === 'EAI_AGAIN') return new Transient(`cannot resolve ${u.hostname}: the name server did not answer`);
  if (code === 'ECONNREFUSED') return new Transient(`connection refused by ${host}`);
  if (code === 'ECONNRESET' || code === 'EPIPE') return new Transient(`connection reset by ${host}`);
  if (code === 'ETIMEDOUT') return new Transient(`no connection to ${host} (timed out)`);
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return new Transient(`${host} is unreachable (${code})`);
  if (CERT_CODES.has(code) || code.startsWith('ERR_TLS_') || /certificate/i.test(e.message)) {
    return new StrataError(
      'IO',
      `certificate error from ${host}: ${e.message} (${code}); a private CA can be trusted with NODE_EXTRA_CA_CERTS`,
      { file: url },
    );
  }
  if (code.startsWith('ERR_SSL_') || /SSL|TLS/.test(e.message)) {
    return new StrataError('IO', `TLS handshake with ${host} failed: ${e.message}`, { file: url });
  }
  return new Transient(`request to ${host} failed: ${e.message}${code ? ` (${code})` : ''}`);
}

function seconds(ms: number): string {
  const s = ms / 1000;
  return `${Number.isInteger(s) ? s : s.toFixed(1)} s`;
}
