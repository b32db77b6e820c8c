import { StrataError } from '../util/errors.js';
import { type ByteSource, clampRead } from './byte-source.js';

export interface HttpSourceOptions {
  headers?: Record<string, string>;
  /** Per-request timeout in milliseconds (default 30 s). */
  timeoutMs?: number;
  /** Attempts per range request on network errors and 5xx (default 3). */
  retries?: number;
}

/**
 * An image on a web server or object store, read with HTTP Range requests so nothing is
 * downloaded that is not asked for. Wrap in CachedSource for small scattered reads.
 */
export class HttpSource implements ByteSource {
  private constructor(
    readonly url: string,
    readonly size: number,
    private readonly opts: HttpSourceOptions,
  ) {}

  get name(): string {
    return this.url;
  }

  static async open(url: string, opts: HttpSourceOptions = {}): Promise<HttpSource> {
    const res = await request(url, { ...opts.headers, range: 'bytes=0-0' }, opts, 'HEAD-probe');
    let size: number | undefined;
    const cr = res.headers.get('content-range');
    if (res.status === 206 && cr) {
      const m = /\/(\d+)\s*$/.exec(cr);
      if (m) size = Number(m[1]);
    } else if (res.status === 200) {
      throw new StrataError('UNSUPPORTED', 'server ignores Range requests; download the image first', {
        file: url,
      });
    }
    await res.body?.cancel();
    if (size === undefined || !Number.isSafeInteger(size)) {
      throw new StrataError('IO', `no usable Content-Range in reply (status ${res.status})`, { file: url });
    }
    return new HttpSource(url, size, opts);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    if (n === 0) return new Uint8Array(0);
    const res = await request(
      this.url,
      { ...this.opts.headers, range: `bytes=${offset}-${offset + n - 1}` },
      this.opts,
      `range ${offset}+${n}`,
    );
    if (res.status !== 206) {
      await res.body?.cancel();
      throw new StrataError('IO', `expected 206 Partial Content, got ${res.status}`, { file: this.url, offset });
    }
    const buf = new Uint8Array(await res.arrayBuffer());
    if (buf.length !== n) {
      throw new StrataError('IO', `range reply has ${buf.length} bytes, wanted ${n}`, { file: this.url, offset });
    }
    return buf;
  }
}

async function request(
  url: string,
  headers: Record<string, string>,
  opts: HttpSourceOptions,
  what: string,
): Promise<Response> {
  const attempts = Math.max(1, opts.retries ?? 3);
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      const res = await fetch(url, { headers, signal: AbortSignal.timeout(opts.timeoutMs ?? 30_000) });
      if (res.status >= 500 && i + 1 < attempts) {
        await res.body?.cancel();
        last = new Error(`HTTP ${res.status}`);
        continue;
      }
      if (res.status === 404) throw new StrataError('NOT_FOUND', 'HTTP 404', { file: url });
      if (res.status >= 400) throw new StrataError('IO', `HTTP ${res.status} for ${what}`, { file: url });
      return res;
    } catch (e) {
      if (e instanceof StrataError) throw e;
      last = e;
    }
  }
  throw new StrataError('IO', `request failed: ${(last as Error)?.message ?? last}`, { file: url });
}
