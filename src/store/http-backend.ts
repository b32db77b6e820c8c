import { type HttpSourceOptions, httpGetAll, httpGetRange } from '../io/http-source.js';
import { isUrgent } from '../io/urgency.js';
import { StrataError } from '../util/errors.js';
import { type Backend, type BackendEntry, checkKey } from './backend.js';

export interface HttpBackendOptions extends HttpSourceOptions {
  /** Range requests in flight at once (default 4). */
  concurrency?: number;
  /** Neighbouring ranges of one object closer than this are fetched as one (default 64 KiB). */
  gap?: number;
  /** The longest coalesced request (default 16 MiB). */
  maxSpan?: number;
}

interface Want {
  key: string;
  offset: number;
  length: number;
  urgent: boolean;
  resolve(b: Uint8Array): void;
  reject(e: unknown): void;
}

/**
 * A store folder served by any web server that answers Range requests (nginx, lighttpd,
 * busybox httpd, an object store's public URL): read only. A plain web server cannot list
 * a folder, so the keys `list` answers come from the caller (the library's static index,
 * which names the store's index files).
 *
 * Reads asked for in the same turn of the event loop are coalesced: ranges of one object
 * that touch or nearly touch (within `gap`) go out as one request, and at most
 * `concurrency` requests are in flight, except urgent ones (io/urgency.ts: a guest's read
 * during a deploy), which go out at once. Timeouts and retries are src/io's (httpGetRange).
 * Nothing here checks content: the store checks every blob against its digest.
 */
export class HttpBackend implements Backend {
  readonly url: string;
  /** Bytes received in range replies, and how many range requests went out. */
  bytesFetched = 0;
  requests = 0;
  private queue: Want[] = [];
  private scheduled = false;
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly gap: number;
  private readonly maxSpan: number;
  private readonly concurrency: number;

  constructor(
    url: string,
    private readonly listing: BackendEntry[],
    private readonly opts: HttpBackendOptions = {},
  ) {
    this.url = url.replace(/\/+$/, '');
    this.gap = opts.gap ?? 64 << 10;
    this.maxSpan = opts.maxSpan ?? 16 << 20;
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
  }

  get name(): string {
    return this.url;
  }

  private urlOf(key: string): string {
    if (!checkKey(key)) throw new StrataError('USAGE', `bad store key ${JSON.stringify(key)}`, { file: this.url });
    return `${this.url}/${key}`;
  }

  private readOnly(key: string): never {
    throw new StrataError('UNSUPPORTED', `a store over HTTP is read only (cannot write ${key})`, { file: this.url });
  }

  async put(key: string): Promise<void> {
    this.readOnly(key);
  }

  async putIfAbsent(key: string): Promise<boolean> {
    this.readOnly(key);
  }

  async delete(key: string): Promise<void> {
    this.readOnly(key);
  }

  async get(key: string): Promise<Uint8Array> {
    return httpGetAll(this.urlOf(key), this.opts);
  }

  getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    this.urlOf(key);
    if (length <= 0) return Promise.resolve(new Uint8Array(0));
    return new Promise((resolve, reject) => {
      this.queue.push({ key, offset, length, urgent: isUrgent(), resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  async list(prefix: string): Promise<BackendEntry[]> {
    return this.listing.filter((e) => e.key.startsWith(prefix));
  }

  async close(): Promise<void> {}

  /** Group what was asked for into spans (per object, in offset order) and fetch each once. */
  private flush(): void {
    this.scheduled = false;
    const wants = this.queue;
    this.queue = [];
    wants.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.offset - b.offset));
    let span: Want[] = [];
    let start = 0;
    let end = 0;
    for (const w of wants) {
      const joins =
        span.length > 0 &&
        w.key === span[0].key &&
        w.offset <= end + this.gap &&
        Math.max(end, w.offset + w.length) - start <= this.maxSpan;
      if (!joins) {
        if (span.length > 0) this.fetchSpan(span, start, end);
        span = [];
        start = w.offset;
        end = w.offset;
      }
      span.push(w);
      end = Math.max(end, w.offset + w.length);
    }
    if (span.length > 0) this.fetchSpan(span, start, end);
  }

  private async fetchSpan(span: Want[], start: number, end: number): Promise<void> {
    // an urgent read (a guest waits for it) does not queue behind background requests
    if (!span.some((w) => w.urgent))
      while (this.running >= this.concurrency) await new Promise<void>((r) => this.waiting.push(r));
    this.running++;
    try {
      this.requests++;
      const got = await httpGetRange(this.urlOf(span[0].key), start, end - start, this.opts);
      this.bytesFetched += got.length;
      for (const w of span) {
        const a = Math.min(got.length, w.offset - start);
        w.resolve(got.subarray(a, Math.min(got.length, a + w.length)));
      }
    } catch (e) {
      for (const w of span) w.reject(e);
    } finally {
      this.running--;
      this.waiting.shift()?.();
    }
  }
}
