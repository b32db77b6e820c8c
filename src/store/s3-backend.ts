import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type * as S3 from '@aws-sdk/client-s3';
import { requireCached } from '../util/code-cache.js';
import { StrataError } from '../util/errors.js';
import { type Backend, type BackendEntry, type BackendStream, checkKey } from './backend.js';

/**
 * The store on S3-compatible object storage (`s3://bucket/prefix`), through the AWS SDK v3.
 * Endpoint, region and credentials come the usual way (AWS_ENDPOINT_URL, AWS_REGION,
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles ...); with an endpoint given,
 * requests are path-style (what S3-compatible servers expect).
 *
 * - `put` of more than MULTIPART_OVER bytes (a pack is ~16 MiB) is a multipart upload in
 *   PART_BYTES parts, aborted on failure; an object appears whole or not at all.
 * - `getRange` is a ranged GET.
 * - `putIfAbsent` is a conditional PUT (`If-None-Match: *`). Whether the server honours it
 *   is probed once at open (a second conditional PUT of a probe key must be refused with
 *   412; AWS S3 does, Swift 2.30's s3api does not), the first time a putIfAbsent needs it
 *   (not at open: a read-only command writes nothing); a server that ignores it gets
 *   HEAD-then-PUT, which is racy. The store needs no more: its only putIfAbsent is the
 *   `config` object (two racing writers write the same bytes), packs and index files are
 *   named by content or at random, and what keeps gc and check-ins apart is the repository
 *   lock protocol (lock.ts: lock objects under locks/, listed after being written).
 */
export const MULTIPART_OVER = 8 * 1024 * 1024;
export const PART_BYTES = 8 * 1024 * 1024;

type S3Module = typeof S3;
let s3mod: S3Module | undefined;
function loadS3(): S3Module {
  // the SDK warns on every start under Node < 22 about its releases after January 2027;
  // the release pinned in package.json supports Node 20, so the notice says nothing here
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  if (s3mod) return s3mod;
  // the CLI's build has the SDK bundled beside it (scripts/bundle.mjs): one file, compiled with V8's code cache
  const bundled = fileURLToPath(new URL('./aws-s3.cjs', import.meta.url));
  s3mod = (
    existsSync(bundled) ? requireCached(bundled) : createRequire(import.meta.url)('@aws-sdk/client-s3')
  ) as S3Module;
  return s3mod;
}

export function isS3Url(s: string): boolean {
  return /^s3:\/\//i.test(s);
}

interface S3Error {
  name?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
  message?: string;
  code?: string;
}

const status = (e: unknown) => (e as S3Error)?.$metadata?.httpStatusCode;
const errName = (e: unknown) => (e as S3Error)?.name ?? (e as S3Error)?.Code ?? '';

export class S3Backend implements Backend {
  /** Whether the server refuses a conditional PUT onto an existing key (probed at the first putIfAbsent). */
  conditionalWrites = false;
  private probed?: Promise<void>;
  /** `config`'s bytes from the GET that checked the bucket at open (undefined: absent), handed to the first get. */
  private opening?: { config: Uint8Array | undefined };
  /** The listing of index/ made at open, handed to the first list('index/') unless this backend wrote meanwhile. */
  private listing?: Promise<BackendEntry[]>;

  private made?: S3.S3Client;

  private constructor(
    readonly bucket: string,
    readonly prefix: string,
    readonly url: string,
    private readonly endpoint: string | undefined,
    private readonly region: string,
  ) {}

  /** The SDK's client, made (and the SDK loaded) on the first request. */
  private get client(): S3.S3Client {
    if (!this.made) {
      const s3 = loadS3();
      this.made = new s3.S3Client({
        region: this.region,
        ...(this.endpoint ? { endpoint: this.endpoint, forcePathStyle: true } : {}),
        // S3-compatible servers do not all know the newer checksum trailers: only when required
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
        maxAttempts: 8,
      });
    }
    return this.made;
  }

  get name(): string {
    return this.url;
  }

  /**
   * Connect to `s3://bucket/prefix` and check the bucket answers with these credentials
   * (wrong keys, a missing bucket or an unreachable endpoint: one clear error here).
   */
  static async open(url: string, opts: { endpoint?: string; region?: string } = {}): Promise<S3Backend> {
    const b = S3Backend.deferred(url, opts);
    const s3 = loadS3();
    // the index listing Store.open asks for next, beside the config GET (one round trip less
    // before a cold checkout's first pack); handed to the first list('index/')
    b.listing = b.list('index/');
    b.listing.catch(() => {});
    // one request checks endpoint, credentials and bucket, and reads the store's config (Store.open's first
    // get): NoSuchKey is a bucket without a store yet; NoSuchBucket, a refused key, no answer: a clear error
    try {
      const r = await b.client.send(new s3.GetObjectCommand({ Bucket: b.bucket, Key: b.full('config') }));
      b.opening = {
        config: await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray(),
      };
    } catch (e) {
      if (errName(e) === 'NoSuchKey') b.opening = { config: undefined };
      else {
        b.client.destroy();
        throw b.startupError(e, b.endpoint);
      }
    }
    return b;
  }

  /**
   * `s3://bucket/prefix` with no request yet: the SDK is loaded and the connection made by the
   * first request, and a wrong key or a missing bucket is that request's error (not one at
   * start-up). For a read that the cache may answer whole (CachedBackend's remembered
   * listing): a warm checkout then never loads the SDK.
   */
  static deferred(url: string, opts: { endpoint?: string; region?: string } = {}): S3Backend {
    const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/i.exec(url);
    if (!m) throw new StrataError('USAGE', `bad store URL ${JSON.stringify(url)} (s3://bucket/prefix)`);
    const prefix = (m[2] ?? '').replace(/\/+$/, '');
    if (prefix && !checkKey(prefix.toLowerCase()))
      throw new StrataError('USAGE', `bad prefix in store URL ${JSON.stringify(url)} (a-z, 0-9, . _ - /)`);
    const endpoint = opts.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
    const region = opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
    return new S3Backend(m[1], prefix, `s3://${m[1]}${prefix ? `/${prefix}` : ''}`, endpoint, region);
  }

  /** Whether a request was made (the SDK loaded). */
  get connected(): boolean {
    return this.made !== undefined;
  }

  private startupError(e: unknown, endpoint?: string): StrataError {
    const n = errName(e);
    const at = endpoint ? `S3 endpoint ${endpoint}` : 'AWS S3 (no AWS_ENDPOINT_URL)';
    const where = { file: this.url, structure: at };
    const key = process.env.AWS_ACCESS_KEY_ID;
    const who = key
      ? `access key ${key} from AWS_ACCESS_KEY_ID`
      : process.env.AWS_PROFILE
        ? `profile ${process.env.AWS_PROFILE}`
        : 'the default credential chain';
    if (n === 'NoSuchBucket' || status(e) === 404)
      return new StrataError(
        'NOT_FOUND',
        `no such bucket: ${this.bucket} (the server answered 404); create it (e.g. aws s3 mb s3://${this.bucket}${
          endpoint ? ` --endpoint-url ${endpoint}` : ''
        }) or name an existing bucket in --store / STRATA_STORE`,
        where,
        { cause: e },
      );
    if (n === 'CredentialsProviderError')
      return new StrataError(
        'DENIED',
        `no S3 credentials for bucket ${this.bucket}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)`,
        where,
        { cause: e },
      );
    if (
      n === 'InvalidAccessKeyId' ||
      n === 'SignatureDoesNotMatch' ||
      n === 'AccessDenied' ||
      status(e) === 403 ||
      status(e) === 401
    )
      return new StrataError(
        'DENIED',
        `the S3 server refused the credentials (${n || status(e)}) for bucket ${this.bucket}, ${who}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) and that this key may list the bucket`,
        where,
        { cause: e },
      );
    return new StrataError(
      'IO',
      `cannot reach the S3 store for bucket ${this.bucket}: ${(e as Error).message || n}; check the endpoint (AWS_ENDPOINT_URL, AWS_REGION) and that the server is up`,
      where,
      { cause: e },
    );
  }

  /** Two conditional PUTs of one fresh key: the second must be refused for putIfAbsent to trust them. */
  private async probeConditional(): Promise<void> {
    const key = `locks/probe-${process.pid}-${Date.now().toString(36)}`;
    try {
      const first = await this.conditionalPut(key, Buffer.from('probe'));
      const second = await this.conditionalPut(key, Buffer.from('probe'));
      this.conditionalWrites = first && !second;
    } finally {
      await this.delete(key).catch(() => {});
    }
  }

  private full(key: string): string {
    if (!checkKey(key)) throw new StrataError('USAGE', `bad store key ${JSON.stringify(key)}`, { file: this.url });
    return this.prefix ? `${this.prefix}/${key}` : key;
  }

  private fail(e: unknown, key: string, what: string): never {
    const n = errName(e);
    const file = `${this.url}/${key}`;
    if (n === 'NoSuchKey' || n === 'NotFound' || status(e) === 404)
      throw new StrataError('NOT_FOUND', `no such object (${what})`, { file }, { cause: e });
    if (status(e) === 403)
      throw new StrataError('DENIED', `the S3 server refused ${what} (${n})`, { file }, { cause: e });
    throw new StrataError('IO', `S3 ${what} failed: ${(e as Error).message || n}`, { file }, { cause: e });
  }

  async put(key: string, data: Uint8Array | Uint8Array[]): Promise<void> {
    this.listing = undefined; // (a write after the open: the listing made then may not be handed over)
    const parts = Array.isArray(data) ? data : [data];
    const total = parts.reduce((n, p) => n + p.length, 0);
    const body = parts.length === 1 ? parts[0] : Buffer.concat(parts, total);
    if (total > MULTIPART_OVER) return this.multipart(key, body);
    const s3 = loadS3();
    try {
      await this.client.send(
        new s3.PutObjectCommand({ Bucket: this.bucket, Key: this.full(key), Body: body, ContentLength: total }),
      );
    } catch (e) {
      this.fail(e, key, 'PUT');
    }
  }

  private async multipart(key: string, body: Uint8Array): Promise<void> {
    const s3 = loadS3();
    const Key = this.full(key);
    let uploadId: string | undefined;
    try {
      const c = await this.client.send(new s3.CreateMultipartUploadCommand({ Bucket: this.bucket, Key }));
      uploadId = c.UploadId as string;
      const done: Array<{ ETag: string; PartNumber: number }> = [];
      // two parts in flight: enough to keep one connection busy while the next is signed
      const n = Math.ceil(body.length / PART_BYTES);
      let next = 0;
      const worker = async () => {
        while (next < n) {
          const i = next++;
          const part = body.subarray(i * PART_BYTES, Math.min(body.length, (i + 1) * PART_BYTES));
          const r = await this.client.send(
            new s3.UploadPartCommand({
              Bucket: this.bucket,
              Key,
              UploadId: uploadId,
              PartNumber: i + 1,
              Body: part,
              ContentLength: part.length,
            }),
          );
          done.push({ ETag: r.ETag as string, PartNumber: i + 1 });
        }
      };
      await Promise.all([worker(), worker()]);
      done.sort((a, b) => a.PartNumber - b.PartNumber);
      await this.client.send(
        new s3.CompleteMultipartUploadCommand({
          Bucket: this.bucket,
          Key,
          UploadId: uploadId,
          MultipartUpload: { Parts: done },
        }),
      );
    } catch (e) {
      if (uploadId) {
        await this.client
          .send(new s3.AbortMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId: uploadId }))
          .catch(() => {});
      }
      this.fail(e, key, 'multipart upload');
    }
  }

  private async conditionalPut(key: string, data: Uint8Array): Promise<boolean> {
    const s3 = loadS3();
    try {
      await this.client.send(
        new s3.PutObjectCommand({ Bucket: this.bucket, Key: this.full(key), Body: data, IfNoneMatch: '*' }),
      );
      return true;
    } catch (e) {
      if (status(e) === 412 || errName(e) === 'PreconditionFailed') return false;
      this.fail(e, key, 'conditional PUT');
    }
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    this.listing = undefined;
    if (key === 'config') this.opening = undefined;
    this.probed ??= this.probeConditional().catch(() => {});
    await this.probed;
    if (this.conditionalWrites) return this.conditionalPut(key, data);
    if (await this.exists(key)) return false;
    await this.put(key, data);
    return true;
  }

  private async exists(key: string): Promise<boolean> {
    const s3 = loadS3();
    try {
      await this.client.send(new s3.HeadObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
      return true;
    } catch (e) {
      if (status(e) === 404) return false;
      this.fail(e, key, 'HEAD');
    }
  }

  async get(key: string): Promise<Uint8Array> {
    const o = this.opening;
    if (o && key === 'config') {
      this.opening = undefined;
      if (o.config) return o.config;
      throw new StrataError('NOT_FOUND', 'no such object (GET)', { file: `${this.url}/${key}` });
    }
    const s3 = loadS3();
    try {
      const r = await this.client.send(new s3.GetObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
      return await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray();
    } catch (e) {
      this.fail(e, key, 'GET');
    }
  }

  /** One GET of the whole object, its body handed over as it arrives (the cache's cold path). */
  async getStream(key: string): Promise<BackendStream> {
    const s3 = loadS3();
    let r: S3.GetObjectCommandOutput;
    try {
      r = await this.client.send(new s3.GetObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
    } catch (e) {
      this.fail(e, key, 'GET');
    }
    const body = r.Body as unknown as AsyncIterable<Uint8Array> & { destroy?(): void };
    const size = Number(r.ContentLength);
    if (!Number.isSafeInteger(size) || size < 0) {
      body.destroy?.();
      throw new StrataError('IO', `S3 GET answered without a length (${r.ContentLength})`, {
        file: `${this.url}/${key}`,
      });
    }
    const url = this.url;
    return {
      size,
      body: (async function* () {
        try {
          for await (const c of body) yield c;
        } catch (e) {
          throw new StrataError(
            'IO',
            `S3 GET failed while reading: ${(e as Error).message}`,
            { file: `${url}/${key}` },
            { cause: e },
          );
        }
      })(),
      cancel: () => body.destroy?.(),
    };
  }

  async getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    if (length === 0) return new Uint8Array(0);
    return this.ranged(key, offset, length, new Uint8Array(0), async (r) => {
      const got = await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray();
      // a server ignoring Range sends the whole object (200): cut the range out of it
      if (status(r) === 200 && got.length > length) return got.subarray(offset, offset + length);
      return got;
    });
  }

  /** A ranged GET whose body is copied straight into `out` as it arrives (no whole-body buffer in between). */
  async getRangeInto(key: string, offset: number, out: Uint8Array): Promise<number> {
    if (out.length === 0) return 0;
    return this.ranged(key, offset, out.length, 0, async (r) => {
      // a server ignoring Range sends the whole object (200): skip to the range
      let skip = status(r) === 200 ? offset : 0;
      let n = 0;
      for await (const c0 of r.Body as unknown as AsyncIterable<Uint8Array>) {
        let c = c0;
        if (skip > 0) {
          if (c.length <= skip) {
            skip -= c.length;
            continue;
          }
          c = c.subarray(skip);
          skip = 0;
        }
        const take = Math.min(c.length, out.length - n);
        out.set(take < c.length ? c.subarray(0, take) : c, n);
        n += take;
        if (n === out.length) break;
      }
      return n;
    });
  }

  /**
   * GET bytes [offset, offset+length) of an object and hand the response to `take` (reading
   * its body is part of the request: a failure there is the GET's). A range past the end
   * (416, InvalidRange) is `empty`; any other failure, the backend's error.
   */
  private async ranged<T>(
    key: string,
    offset: number,
    length: number,
    empty: T,
    take: (r: S3.GetObjectCommandOutput) => Promise<T>,
  ): Promise<T> {
    const s3 = loadS3();
    try {
      const r = await this.client.send(
        new s3.GetObjectCommand({
          Bucket: this.bucket,
          Key: this.full(key),
          Range: `bytes=${offset}-${offset + length - 1}`,
        }),
      );
      return await take(r);
    } catch (e) {
      if (status(e) === 416 || errName(e) === 'InvalidRange') return empty;
      this.fail(e, key, 'ranged GET');
    }
  }

  async list(prefix: string): Promise<BackendEntry[]> {
    const made = this.listing;
    if (made && prefix === 'index/') {
      this.listing = undefined;
      return made;
    }
    const s3 = loadS3();
    const out: BackendEntry[] = [];
    const base = this.prefix ? `${this.prefix}/` : '';
    let token: string | undefined;
    do {
      let r: S3.ListObjectsV2CommandOutput;
      try {
        r = await this.client.send(
          new s3.ListObjectsV2Command({ Bucket: this.bucket, Prefix: base + prefix, ContinuationToken: token }),
        );
      } catch (e) {
        this.fail(e, prefix, 'LIST');
      }
      for (const o of r.Contents ?? []) {
        const key = (o.Key ?? '').slice(base.length);
        if (!checkKey(key)) continue;
        out.push({ key, size: Number(o.Size ?? 0), mtimeMs: o.LastModified ? o.LastModified.getTime() : 0 });
      }
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async delete(key: string): Promise<void> {
    this.listing = undefined;
    const s3 = loadS3();
    try {
      await this.client.send(new s3.DeleteObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
    } catch (e) {
      if (status(e) === 404) return;
      this.fail(e, key, 'DELETE');
    }
  }

  async close(): Promise<void> {
    this.made?.destroy();
  }
}
