import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import fastifySwagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Access, ANONYMOUS, type Principal, type Visibility } from '../../catalog/access.js';
import type { VersionRow } from '../../catalog/catalog.js';
import { checkImageName, checkTag } from '../../catalog/catalog.js';
import { type BootProfile, checkProfile, loadProfile, nearestProfile, saveProfile } from '../../catalog/profiles.js';
import { planQcow2StreamOf, qcow2StreamBytes } from '../../formats/writers/qcow2-stream.js';
import type { IntrospectiveCache } from '../../io/introspective-cache.js';
import type { BlobCacheOptions } from '../../library/blob-cache.js';
import { applyChanges } from '../../library/edit/apply.js';
import { type Change, changeFromWire } from '../../library/edit/changes.js';
import { contentChunks } from '../../library/edit/content.js';
import { versionLog } from '../../library/edit/log.js';
import { rebaseJson, rebaseVersion, type Take } from '../../library/edit/rebase.js';
import { inspectAfterCheckin, versionInspection } from '../../library/inspection.js';
import type { Library } from '../../library/library.js';
import { layoutSummary } from '../../library/library-verbs.js';
import {
  decodeManifest,
  encodeManifest,
  FILES_KIND,
  type FilesManifest,
  LAYOUT_KIND,
  type LayoutManifest,
  type FileEntry as ManifestEntry,
} from '../../library/manifest.js';
import { recordVersionProfile } from '../../library/profile-record.js';
import { searchPage } from '../../library/search.js';
import { findStoredEntry, listStoredPage, versionStoredFiles } from '../../library/stored-listing.js';
import { tarOfStoredStreamed } from '../../library/tar-export.js';
import { diffVersions } from '../../library/version-diff.js';
import { versionStat } from '../../library/version-stat.js';
import { RepoLock } from '../../store/lock.js';
import { StrataError } from '../../util/errors.js';
import { type ExportCacheOptions, openExportCache } from '../nbd/cache.js';
import { registerAccountRoutes } from './accounts.js';
import { Metrics } from './metrics.js';
import { freshPiece, PIECE, PiecedBody, type PieceSource, type TakePiece } from './pieces.js';
import { notFound, noVersion, Policy } from './policy.js';
import { HttpProblem, PROBLEM_TYPE, toProblem } from './problem.js';
import { BatchedLog, RateLimiter } from './rate-limit.js';
import { ReachCache } from './reach-cache.js';
import {
  anyObject,
  arr,
  binary,
  bool,
  DIGEST,
  FileEntry,
  FileExtents,
  IMAGE_NAME,
  Image,
  int,
  Member,
  nullable,
  obj,
  PROJECT,
  page,
  pageQuery,
  problemResponses,
  str,
  TAG,
  Usage,
  Version,
  VersionKey,
  VISIBILITY,
} from './schemas.js';
import { defaultWebuiDir, registerWebui } from './webui.js';

/**
 * The library service: one process in front of a library (catalog + store), with users,
 * projects, tokens and per-image visibility (catalog/access.ts, ./policy.ts). Routes are
 * fastify's, validated by their JSON Schemas, which also make /openapi.json.
 */
export interface ServeOptions {
  /** Owner of images that have none (checked in locally): default project "default". */
  defaultProject?: string;
  defaultVisibility?: Visibility;
  /** fastify's logger: true for JSON lines on stdout, or pino options; default off. */
  logger?: boolean | Record<string, unknown>;
  /** Bytes of a JSON body (1 MiB), of a commit (256 MiB), of a chunk upload batch (64 MiB). */
  bodyLimit?: number;
  commitLimit?: number;
  uploadLimit?: number;
  /** Requests per token (or per address without one) per minute; 0 for none. Default 6000. */
  rateLimit?: number;
  /**
   * How often (ms) a process adds the requests it counted to the catalog's shared rate
   * windows (default 1000; 0: on every request). See rate-limit.ts.
   */
  rateSyncMs?: number;
  /** ms request log rows wait to be written in one transaction (default 250; 0: at once). */
  requestLogMs?: number;
  /** Decoded manifests kept in memory (default 16). */
  manifestCache?: number;
  /**
   * Bytes of serialized answers of metadata routes kept (default 32 MiB; 0: none), each
   * valid until the catalog changes (see AnswerCache). Needs a catalog that tells its
   * changes (SQLite); with PostgreSQL nothing is cached.
   */
  answerCache?: number;
  /**
   * Bytes of the manifests' reachable-blob sets kept (see ReachCache; default a quarter of
   * the memory budget, 8 MiB to 512 MiB).
   */
  reachCache?: number;
  /** ms a request may take (default 10 min: uploads and downloads are long). */
  requestTimeout?: number;
  /** Let writers import images from http(s) URLs the server fetches (default true). */
  importUrls?: boolean;
  /** The web UI's built files (default dist/webui when built), or false for none. */
  webui?: string | false;
  /**
   * A live cache (issue 27) in front of each version whose raw disk is read by range
   * (`GET .../disk` with `Range`, as qemu's curl driver reads): shared by the requests of
   * that version, its block map built from the version on first use; at most
   * `versions` (default 4) versions cached at once. Its counters, by class, are in /metrics.
   */
  diskCache?: ExportCacheOptions & { versions?: number };
  /**
   * A live cache of blobs (issue 27, library/blob-cache.ts) behind the file routes (ls,
   * stat, a file's content with Range, tar): manifests in a protected metadata segment,
   * files' chunks by recency and frequency, a file's next chunks prefetched in its own
   * order. One for the server; its counters, by class, are in /metrics.
   */
  blobCache?: BlobCacheOptions;
}

export interface RunningServer {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal;
    policy: Policy;
    started: bigint;
    /** The answer cache's key and the catalog's stamp when this request began (cacheable GETs). */
    answer?: { key: string; stamp: string; hit: boolean };
  }
  interface FastifyContextConfig {
    op?: string;
  }
}

/** A chunk upload batch: records of sha256 (32 bytes), length (u32 big-endian), bytes. */
export const RECORD_HEADER = 36;
const MAX_DIGESTS = 10_000;
const ONE_MIB = 1024 * 1024;
const gunzipAsync = promisify(gunzip);

const versionOf = (v: VersionRow) => ({ ref: `${v.image}@${v.number}`, ...v });

function parseVersionParam(s: string): { number?: number; tag?: string } {
  if (/^\d{1,15}$/.test(s)) return { number: Number(s) };
  return { tag: s };
}

/** A path inside an image: absolute or relative, no NUL, no `..` component (refused, not resolved). */
function checkImagePath(p: string): string {
  if (p.includes('\0')) throw new HttpProblem(400, 'path contains NUL', 'bad-path');
  if (p.split('/').includes('..')) throw new HttpProblem(400, `path must not contain '..': ${p}`, 'bad-path');
  return p;
}

/** `Range: bytes=A-B` against `size`: the [start, end) asked, or null for the whole. */
function parseRange(header: string | undefined, size: number): [number, number] | null {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null; // several ranges or odd units: the whole body
  let start: number;
  let end: number;
  if (m[1] === '') {
    const n = Number(m[2]);
    start = Math.max(0, size - n);
    end = size;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size : Math.min(size, Number(m[2]) + 1);
  }
  if (!(start < end) || start >= size) {
    throw Object.assign(new HttpProblem(416, `range ${header} is outside 0-${size}`), { size });
  }
  return [start, end];
}

/** Send [start, end) of something `size` long as a (partial) octet stream. */
function sendBytes(req: FastifyRequest, reply: FastifyReply, size: number, read: PieceSource, filename?: string) {
  let r: [number, number] | null;
  try {
    r = parseRange(req.headers.range, size);
  } catch (e) {
    reply.header('content-range', `bytes */${size}`);
    throw e;
  }
  const [start, end] = r ?? [0, size];
  reply.header('accept-ranges', 'bytes');
  reply.header('content-length', String(end - start));
  reply.type('application/octet-stream');
  if (filename)
    reply.header('content-disposition', `attachment; filename="${filename.replace(/[^A-Za-z0-9._-]/g, '_')}"`);
  if (r) {
    reply.code(206);
    reply.header('content-range', `bytes ${start}-${end - 1}/${size}`);
  }
  // HEAD: the length above stands (an empty string payload would make fastify say 0, and
  // qemu's curl driver takes a HEAD's length as the disk's size)
  if (req.method === 'HEAD') return reply.send(Readable.from([]));
  if (end === start) return reply.send('');
  if (!r && size <= SMALL_BODY) {
    // a small whole file in one buffer: one write, and the answer cache can keep it
    return (async () => {
      const parts: Uint8Array[] = [];
      for await (const b of read(start, end, freshPiece)) parts.push(b);
      return reply.send(parts.length === 1 && Buffer.isBuffer(parts[0]) ? parts[0] : Buffer.concat(parts));
    })();
  }
  // pieces reused once the socket has written them (pieces.ts): bounded, paced by the client
  return reply.send(new PiecedBody(read, start, end));
}

/** Files up to this size are read whole and sent as one buffer (cacheable). */
const SMALL_BODY = 64 * 1024;

/**
 * GET routes whose answer is a function of the catalog, the (content-addressed, immutable)
 * store and who asks, and nothing else: the answer cache (AnswerCache) may keep them.
 */
const CACHED_OPS = new Set([
  'images.list',
  'images.get',
  'versions.list',
  'versions.resolve',
  'versions.get',
  'versions.provenance',
  'versions.inspection',
  'versions.diff',
  'files.list',
  'files.stat',
  'files.read',
  'search',
]);

/** The answer of a cacheable route to an If-None-Match naming its ETag. */
const NOT_MODIFIED = { type: 'null', description: "not modified: If-None-Match named the answer's ETag" };

/** What an answer depends on of its caller (Policy reads these fields only). */
const principalKey = (p: Principal) => `${p.user}\u0000${p.project}\u0000${p.role}\u0000${p.scope}\u0000${p.admin}`;

interface CachedAnswer {
  stamp: string;
  body: Buffer;
  etag: string;
  headers: Record<string, string>;
}

/**
 * Serialized answers of the CACHED_OPS routes, by caller and URL, each valid while the
 * catalog's change stamp (Db.changeStamp: any commit, by this process or another) is the
 * one read before the answer was computed. At most `maxBytes` in all (least recently used
 * dropped first), 1 MiB an answer.
 */
class AnswerCache {
  private readonly map = new Map<string, CachedAnswer>();
  private bytes = 0;
  constructor(private readonly maxBytes: number) {}

  get(key: string, stamp: string): CachedAnswer | undefined {
    const a = this.map.get(key);
    if (!a) return undefined;
    this.map.delete(key);
    if (a.stamp !== stamp) {
      this.bytes -= a.body.length;
      return undefined;
    }
    this.map.set(key, a); // most recent last
    return a;
  }

  set(key: string, a: CachedAnswer): void {
    if (a.body.length > Math.min(ONE_MIB, this.maxBytes)) return;
    const old = this.map.get(key);
    if (old) {
      this.map.delete(key);
      this.bytes -= old.body.length;
    }
    this.map.set(key, a);
    this.bytes += a.body.length;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.maxBytes) break;
      this.map.delete(k);
      this.bytes -= v.body.length;
    }
  }
}

/** The store's index was reloaded (renumbered) while a storage count held marks on it. */
class IndexReloaded extends Error {}
type UsageTally = { name: string; versions: number; logicalBytes: number; usedBytes: number; storedBytes: number };

export async function buildServer(lib: Library, opts: ServeOptions = {}): Promise<FastifyInstance> {
  const access = await Access.open(lib.catalog.db);
  lib.cacheManifests(opts.manifestCache ?? 16);
  const defaults = { project: opts.defaultProject ?? 'default', visibility: opts.defaultVisibility ?? 'private' };
  if (!(await access.projectExists(defaults.project))) await access.addProject(defaults.project);
  const metrics = new Metrics();
  const diskCaches = new DiskCaches(lib, opts.diskCache);
  const blobCache = opts.blobCache ? lib.useBlobCache(opts.blobCache) : undefined;
  const perMinute = opts.rateLimit ?? 6000;
  const limiter =
    perMinute > 0
      ? new RateLimiter(access, perMinute, opts.rateSyncMs ?? 1000, undefined, (e) =>
          app.log.error({ err: e }, 'rate limit counts'),
        )
      : undefined;
  const reach = new ReachCache(lib, opts.reachCache);
  const answerBytes = opts.answerCache ?? 32 * ONE_MIB;
  const answers = answerBytes > 0 && lib.catalog.db.changeStamp ? new AnswerCache(answerBytes) : undefined;
  /** Commits and uploads one at a time (the store's writer is one). */
  let writeChain: Promise<unknown> = Promise.resolve();
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = writeChain.then(fn, fn);
    writeChain = p.catch(() => {});
    return p;
  };

  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: opts.bodyLimit ?? ONE_MIB,
    requestTimeout: opts.requestTimeout ?? 10 * 60_000,
    connectionTimeout: opts.requestTimeout ?? 10 * 60_000,
    keepAliveTimeout: 5_000,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  });
  if (limiter) app.addHook('onClose', () => limiter.close());
  app.addHook('onClose', () => diskCaches.close());
  if (blobCache) app.addHook('onClose', () => blobCache.close());
  /**
   * The request log, written in batches: one row per request committed on its own cost
   * 6.4 ms here (SQLite synchronous=FULL: an fsync each), on the event loop, which capped
   * the server near 150 requests/s; 200 rows in one transaction cost 26 us each. Rows wait
   * at most `requestLogMs` (a SIGKILL loses at most that much of the log); close() flushes.
   */
  const requestLog = new BatchedLog(
    (rows) => access.logRequests(rows),
    opts.requestLogMs ?? 250,
    (e) => app.log.error({ err: e }, 'request log'),
  );
  app.addHook('onClose', () => requestLog.close());
  app.decorateRequest('principal', null as unknown as Principal);
  app.decorateRequest('policy', null as unknown as Policy);
  app.decorateRequest('started', 0n);
  app.addContentTypeParser(
    'application/octet-stream',
    { parseAs: 'buffer', bodyLimit: opts.uploadLimit ?? 64 * ONE_MIB },
    (_req, body, done) => done(null, body),
  );

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Strata library service',
        version: '1',
        description:
          'Images, versions, files, inspections, diffs and search of a shared Strata library. Errors are RFC 9457 problem details. An image the caller may not read is answered like one that does not exist (404).',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }, {}],
    },
  });

  app.setErrorHandler((err, req, reply) => {
    const p = toProblem(err, req.url);
    if (p.status >= 500) req.log.error({ err }, 'request failed');
    if (p.status === 429) reply.header('retry-after', '60');
    reply.code(p.status).type(PROBLEM_TYPE).send(p);
  });
  app.setNotFoundHandler((req, reply) => {
    reply
      .code(404)
      .type(PROBLEM_TYPE)
      .send(toProblem(new HttpProblem(404, `no route ${req.method} ${req.url.split('?')[0]}`), req.url));
  });

  app.addHook('onRequest', async (req, reply) => {
    req.started = process.hrtime.bigint();
    const h = req.headers.authorization;
    let p: Principal = ANONYMOUS;
    if (h !== undefined) {
      const m = /^Bearer\s+(\S+)$/i.exec(h);
      const got = m ? await access.authenticate(m[1]) : undefined;
      if (!got) throw new HttpProblem(401, 'the bearer token is unknown, expired or revoked', 'bad-token');
      p = got;
    }
    req.principal = p;
    req.policy = new Policy(p, access, defaults);
    if (limiter && !(await limiter.take(p.tokenId ?? `ip:${req.ip}`))) {
      throw new HttpProblem(429, `more than ${perMinute} requests a minute`);
    }
    // an answer computed since the catalog last changed is sent again as it was
    if (answers && req.method === 'GET' && req.headers.range === undefined) {
      const op = req.routeOptions.config?.op;
      const stamp = op && CACHED_OPS.has(op) ? lib.catalog.db.changeStamp?.() : undefined;
      if (stamp !== undefined) {
        const key = `${principalKey(p)}\n${req.url}`;
        const hit = answers.get(key, stamp);
        req.answer = { key, stamp, hit: hit !== undefined };
        if (hit) {
          reply.header('etag', hit.etag);
          if (req.headers['if-none-match'] === hit.etag) return reply.code(304).send();
          return reply.code(200).headers(hit.headers).send(hit.body);
        }
      }
    }
  });
  // Request bodies may come gzip-compressed (the client compresses manifests and chunk
  // batches). The compressed body is read whole first (so the answer never races a client
  // still sending), then inflated with the route's limit as the ceiling: a small bomb stops
  // at the limit with a 413, not after filling memory.
  app.addHook('preParsing', async (req, _reply, payload) => {
    const ce = req.headers['content-encoding'];
    if (ce === undefined || ce === 'identity') return payload;
    if (ce !== 'gzip') throw new HttpProblem(415, `content-encoding ${ce} (gzip or identity)`);
    const octets = (req.headers['content-type'] ?? '').startsWith('application/octet-stream');
    const limit = octets
      ? (opts.uploadLimit ?? 64 * ONE_MIB)
      : (req.routeOptions.bodyLimit ?? opts.bodyLimit ?? ONE_MIB);
    const parts: Buffer[] = [];
    let encoded = 0;
    for await (const c of payload as AsyncIterable<Buffer>) {
      encoded += c.length;
      if (encoded > limit) throw new HttpProblem(413, `body past ${limit} bytes`);
      parts.push(c);
    }
    let plain: Buffer;
    try {
      plain = await gunzipAsync(Buffer.concat(parts), { maxOutputLength: limit });
    } catch (e) {
      if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') {
        throw new HttpProblem(413, `body inflates past ${limit} bytes`);
      }
      throw new HttpProblem(400, `body is not gzip: ${(e as Error).message}`, 'bad-encoding');
    }
    const out = Readable.from([plain]);
    (out as unknown as { receivedEncodedLength: number }).receivedEncodedLength = encoded;
    return out;
  });
  app.addHook('onSend', async (req, reply, payload) => {
    const a = req.answer;
    if (
      answers &&
      a &&
      !a.hit &&
      reply.statusCode === 200 &&
      (typeof payload === 'string' || Buffer.isBuffer(payload)) &&
      lib.catalog.db.changeStamp?.() === a.stamp // nothing changed while it was computed
    ) {
      const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
      const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
      const headers: Record<string, string> = {};
      for (const h of ['content-type', 'content-disposition', 'accept-ranges']) {
        const v = reply.getHeader(h);
        if (v !== undefined) headers[h] = String(v);
      }
      answers.set(a.key, { stamp: a.stamp, body, etag, headers });
      reply.header('etag', etag);
      payload = body;
    }
    if (!reply.hasHeader('content-length') && (typeof payload === 'string' || Buffer.isBuffer(payload))) {
      reply.header('content-length', String(Buffer.byteLength(payload as string)));
    }
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    const micros = Number((process.hrtime.bigint() - req.started) / 1000n);
    const route = req.routeOptions.url ?? 'unmatched';
    const bytesIn = Number(req.headers['content-length'] ?? 0);
    const bytesOut = Number(reply.getHeader('content-length') ?? 0);
    metrics.observe(req.method, route, reply.statusCode, micros / 1e6, bytesIn, bytesOut);
    const op = req.routeOptions.config?.op;
    if (!op) return;
    const params = (req.params ?? {}) as Record<string, string>;
    const version = params.version !== undefined && /^\d+$/.test(params.version) ? Number(params.version) : null;
    requestLog.push({
      at: new Date().toISOString(),
      user: req.principal?.user ?? null,
      project: req.principal?.project ?? null,
      token: req.principal?.tokenId ?? null,
      method: req.method,
      route,
      op,
      image: params.name ?? null,
      version,
      status: reply.statusCode,
      bytesIn,
      bytesOut,
      micros,
    });
  });
  app.addHook('onRoute', (route) => {
    if (route.schema?.hide) return;
    const op = (route.config as { op?: string } | undefined)?.op;
    const cached = op && CACHED_OPS.has(op) ? { 304: NOT_MODIFIED } : {};
    route.schema = {
      ...route.schema,
      response: { ...problemResponses, ...cached, ...(route.schema?.response as object) },
    };
  });

  // ---- helpers over the catalog

  const imageView = async (policy: Policy, name: string) => {
    const row = await lib.catalog.image(name);
    if (!row) throw notFound(name);
    const g = await policy.ownerOf(name);
    return { ...row, project: g.project, visibility: g.visibility };
  };

  /** A readable version by image and `:version` (number or tag). */
  const versionIn = async (policy: Policy, name: string, version: string): Promise<VersionRow> => {
    await policy.readable(lib, name);
    const { number, tag } = parseVersionParam(version);
    let n = number;
    if (tag !== undefined) {
      const t = await lib.catalog.db.get<{ number: number }>('SELECT number FROM tags WHERE image = ? AND tag = ?', [
        name,
        tag,
      ]);
      n = t ? Number(t.number) : undefined;
    }
    const v = n === undefined ? undefined : await lib.catalog.version(name, n);
    if (v?.state !== 'active') throw noVersion(`${name}/${version}`);
    return v;
  };

  /**
   * NAME, NAME@N or NAME:TAG, readable; or a whole layout manifest digest (64 hex digits:
   * what an overlay made by `strata nbd REF --remote URL --overlay` names as its backing),
   * the first readable version holding it. No digest prefixes: they would search manifests
   * the caller may not read. A digest only unreadable versions hold is a 404 like one none does.
   */
  const resolveRef = async (policy: Policy, ref: string): Promise<VersionRow> => {
    if (/^[0-9a-f]{64}$/.test(ref)) {
      const rows = await lib.catalog.db.all<{ image: string; number: number }>(
        "SELECT image, number FROM versions WHERE manifest = ? AND state = 'active' ORDER BY image, number",
        [ref],
      );
      for (const r of rows) {
        if (!(await policy.canRead(r.image))) continue;
        const v = await lib.catalog.version(r.image, Number(r.number));
        if (v?.state === 'active') return v;
      }
      throw noVersion(ref);
    }
    const at = ref.lastIndexOf('@');
    const colon = ref.lastIndexOf(':');
    let name = ref;
    let version: string | undefined;
    if (at > 0) [name, version] = [ref.slice(0, at), ref.slice(at + 1)];
    else if (colon > 0) [name, version] = [ref.slice(0, colon), ref.slice(colon + 1)];
    if (version === undefined) {
      const img = await lib.catalog.image(name);
      if (!img || img.latest === null || !(await policy.canRead(name))) throw noVersion(ref);
      version = String(img.latest);
    } else if (at > 0 && !/^\d+$/.test(version)) throw noVersion(ref);
    else if (colon > 0 && /^\d+$/.test(version)) {
      // a numeric tag
      const t = await lib.catalog.db.get<{ number: number }>('SELECT number FROM tags WHERE image = ? AND tag = ?', [
        name,
        version,
      ]);
      if (!t) throw noVersion(ref);
      version = String(t.number);
    }
    try {
      return await versionIn(policy, name, version);
    } catch (e) {
      if (e instanceof HttpProblem && e.status === 404) throw noVersion(ref);
      throw e;
    }
  };

  /** Blobs the caller holds: those its project uploaded, and those of versions it may read. */
  const heldFilter = async (policy: Policy, digests: string[]): Promise<Set<string>> => {
    const out = new Set<string>();
    if (policy.p.admin) {
      for (const d of digests) if (lib.store.has(d)) out.add(d);
      return out;
    }
    const want = new Set(digests.filter((d) => lib.store.has(d)));
    if (want.size === 0) return out;
    if (policy.p.project) for (const d of await access.heldBy(policy.p.project, [...want])) out.add(d);
    await policy.loadAll();
    for (const v of await lib.catalog.activeVersions()) {
      if (out.size === want.size) break;
      if (!(await policy.canRead(v.image))) continue;
      await reach.each(v.manifest, (d) => {
        if (want.has(d)) out.add(d);
      });
    }
    return out;
  };

  /** The version's file manifest, streamed (a part at a time: a million-file manifest held was ~830 MiB). */
  const parseFilesQuery = async (policy: Policy, p: { name: string; version: string }, part?: string) => {
    const v = await versionIn(policy, p.name, p.version);
    return { v, sf: await versionStoredFiles(lib, v, part) };
  };

  const lsEntry = (e: ManifestEntry) => {
    const { chunks, xattrs, ...rest } = e;
    return { ...rest, xattrs: xattrs ? Object.keys(xattrs) : [] };
  };

  /** Bytes [start, end) of a file, up to a piece at a time, each piece filled from the chunks it spans. */
  async function* fileBytes(files: FilesManifest, e: ManifestEntry, start: number, end: number, take: TakePiece) {
    const C = files.fileChunkSize;
    const chunks = e.chunks ?? [];
    for (let o = start; o < end; ) {
      const out = await take(Math.min(PIECE, end - o));
      const pieceEnd = o + out.length;
      for (let i = Math.floor(o / C); i * C < pieceEnd; i++) {
        const off = i * C;
        const s = Math.max(o, off);
        const t = Math.min(pieceEnd, off + C, e.size);
        const d = chunks[i];
        if (d === undefined) throw new StrataError('CORRUPT', `file manifest lacks chunk ${i} of ${e.path}`);
        if (d === null) out.fill(0, s - o, t - o);
        else
          await lib.withFileChunk(e, i, (c) => {
            if (c.length < t - off)
              throw new StrataError('CORRUPT', `chunk ${i} of ${e.path} holds ${c.length} bytes, not ${t - off}`, {
                structure: `blob ${d}`,
              });
            out.set(c.subarray(s - off, t - off), s - o);
          });
      }
      yield out;
      o = pieceEnd;
    }
  }

  const nameParam = obj({ name: str({ pattern: IMAGE_NAME }) });
  const versionParams = obj({ name: str({ pattern: IMAGE_NAME }), version: str({ pattern: TAG }) });

  // ---- operations

  app.get('/healthz', { schema: { response: { 200: obj({ status: str(), images: int() }) } } }, async () => ({
    status: 'ok',
    images: (await lib.catalog.imageNames()).length,
  }));

  app.get(
    '/metrics',
    {
      schema: {
        response: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: str() } } } },
      },
    },
    async (_req, reply) => {
      let blobs = 0;
      let storedBytes = 0;
      for (const d of lib.store.entries().keys()) {
        blobs++;
        storedBytes += lib.store.storedSize(d);
      }
      let catalogBytes = 0;
      try {
        catalogBytes = statSync(path.join(lib.dir, 'catalog.db')).size;
      } catch {
        // not a file-backed catalog
      }
      reply.type('text/plain; version=0.0.4');
      return metrics.render(
        {
          strata_store_blobs: blobs,
          strata_store_bytes: storedBytes,
          strata_catalog_bytes: catalogBytes,
          strata_images: (await lib.catalog.imageNames()).length,
        },
        [...diskCaches.metricLines(), ...(blobCache?.metricLines() ?? []), ...reach.metricLines()],
      );
    },
  );

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  const webuiDir = opts.webui === undefined ? defaultWebuiDir() : opts.webui;
  if (webuiDir) registerWebui(app, webuiDir);

  app.get(
    '/v1/whoami',
    {
      schema: {
        response: {
          200: obj({
            user: nullable(str()),
            project: nullable(str()),
            role: nullable(str()),
            scope: str(),
            admin: bool(),
          }),
        },
      },
    },
    async (req) => {
      const { tokenId, ...p } = req.principal;
      return p;
    },
  );

  registerAccountRoutes(app, access);

  // ---- images

  app.get(
    '/v1/images',
    {
      config: { op: 'images.list' },
      schema: {
        querystring: obj(
          { ...pageQuery, project: str({ pattern: PROJECT }), visibility: VISIBILITY, prefix: str({ maxLength: 128 }) },
          [],
        ),
        response: { 200: page(Image) },
      },
    },
    async (req) => {
      const q = req.query as { limit: number; offset: number; project?: string; visibility?: string; prefix?: string };
      // the catalog filters by name, access, project and visibility and pages (it used to
      // read every image's name and owner row for each request); only the page is read in full
      const page = await req.policy.readableImages(q);
      const owner = new Map(page.items.map((a) => [a.image, a]));
      const items = [];
      for (const row of await lib.catalog.imagesNamed([...owner.keys()])) {
        const g = owner.get(row.name) as { project: string; visibility: Visibility };
        items.push({ ...row, project: g.project, visibility: g.visibility });
      }
      return { items, total: page.total, limit: q.limit, offset: q.offset };
    },
  );

  app.post(
    '/v1/images',
    {
      config: { op: 'images.create' },
      schema: {
        body: obj(
          { name: str({ pattern: IMAGE_NAME }), description: str({ maxLength: 4096 }), visibility: VISIBILITY },
          ['name'],
        ),
        response: { 201: Image },
      },
    },
    async (req, reply) => {
      const b = req.body as { name: string; description?: string; visibility?: Visibility };
      const project = ownProject(req.policy, b.name);
      const existing = await lib.catalog.image(b.name);
      if (existing) {
        if (await req.policy.canRead(b.name)) throw new HttpProblem(409, `image ${b.name} exists`);
        throw new HttpProblem(409, `image ${b.name} exists`); // only reachable by a server admin's own names
      }
      await lib.catalog.createImage(b.name, b.description);
      await access.setImageAccess(b.name, project, b.visibility ?? 'private');
      reply.code(201);
      return imageView(new Policy(req.principal, access, defaults), b.name);
    },
  );

  /**
   * The project a new image named `name` goes to: the caller's, and the name must start
   * with it ("PROJECT/..."), so names never collide across projects (a collision would
   * tell one project what another holds). A server admin may name anything.
   */
  function ownProject(policy: Policy, name: string): string {
    checkImageName(name);
    const p = policy.p;
    if (p.admin && p.scope === 'write') return p.project ?? defaults.project;
    if (!policy.canWriteProject(p.project)) {
      throw new HttpProblem(
        p.user === null ? 401 : 403,
        'creating an image needs a write token of a project admin or member',
      );
    }
    if (!name.startsWith(`${p.project}/`)) {
      throw new HttpProblem(400, `images of project ${p.project} are named ${p.project}/...`, 'bad-name');
    }
    return p.project as string;
  }

  app.get(
    '/v1/images/:name',
    { config: { op: 'images.get' }, schema: { params: nameParam, response: { 200: Image } } },
    async (req) => {
      const { name } = req.params as { name: string };
      await req.policy.readable(lib, name);
      return imageView(req.policy, name);
    },
  );

  app.patch(
    '/v1/images/:name',
    {
      config: { op: 'images.update' },
      schema: {
        params: nameParam,
        body: obj({ description: nullable(str({ maxLength: 4096 })), visibility: VISIBILITY }, []),
        response: { 200: Image },
      },
    },
    async (req) => {
      const { name } = req.params as { name: string };
      const b = req.body as { description?: string | null; visibility?: Visibility };
      if (b.visibility !== undefined) {
        const g = await req.policy.manageable(lib, name);
        await access.setImageAccess(name, g.project, b.visibility);
      }
      if (b.description !== undefined) {
        await req.policy.writable(lib, name);
        await lib.catalog.setDescription(name, b.description);
      }
      if (b.visibility === undefined && b.description === undefined) await req.policy.readable(lib, name);
      return imageView(new Policy(req.principal, access, defaults), name);
    },
  );

  app.delete(
    '/v1/images/:name',
    {
      config: { op: 'images.delete' },
      schema: { params: nameParam, response: { 204: { type: 'null', description: 'deleted' } } },
    },
    async (req, reply) => {
      const { name } = req.params as { name: string };
      await req.policy.manageable(lib, name);
      await lib.catalog.deleteImage(name);
      await access.dropImage(name);
      reply.code(204);
      return null;
    },
  );

  // ---- versions

  app.get(
    '/v1/images/:name/versions',
    {
      config: { op: 'versions.list' },
      schema: {
        params: nameParam,
        querystring: obj({ ...pageQuery, tag: str({ pattern: TAG }) }, []),
        response: { 200: page(Version) },
      },
    },
    async (req) => {
      const { name } = req.params as { name: string };
      const q = req.query as { limit: number; offset: number; tag?: string };
      await req.policy.readable(lib, name);
      let rows = await lib.catalog.versions(name);
      if (q.tag !== undefined) rows = rows.filter((v) => v.tags.includes(q.tag as string));
      return {
        items: rows.slice(q.offset, q.offset + q.limit).map(versionOf),
        total: rows.length,
        limit: q.limit,
        offset: q.offset,
      };
    },
  );

  app.get(
    '/v1/resolve',
    {
      config: { op: 'versions.resolve' },
      schema: { querystring: obj({ ref: str({ maxLength: 300 }) }), response: { 200: Version } },
    },
    async (req) => versionOf(await resolveRef(req.policy, (req.query as { ref: string }).ref)),
  );

  app.get(
    '/v1/images/:name/versions/:version',
    {
      config: { op: 'versions.get' },
      schema: {
        params: versionParams,
        response: {
          200: obj({
            ...(Version.properties as object),
            layout: anyObject('layout summary: volumes, chunks, ranges'),
          } as never),
        },
      },
    },
    async (req) => {
      const p = req.params as { name: string; version: string };
      const v = await versionIn(req.policy, p.name, p.version);
      return { ...versionOf(v), layout: await layoutSummary(lib, v.manifest) };
    },
  );

  app.delete(
    '/v1/images/:name/versions/:version',
    {
      config: { op: 'versions.delete' },
      schema: { params: versionParams, response: { 204: { type: 'null', description: 'deleted' } } },
    },
    async (req, reply) => {
      const p = req.params as { name: string; version: string };
      const v = await versionIn(req.policy, p.name, p.version);
      await req.policy.writable(lib, p.name);
      await lib.catalog.deleteVersion(v.image, v.number);
      reply.code(204);
      return null;
    },
  );

  app.get(
    '/v1/images/:name/versions/:version/provenance',
    {
      config: { op: 'versions.provenance' },
      schema: {
        params: versionParams,
        response: { 200: obj({ ref: str(), parents: arr(VersionKey), children: arr(VersionKey) }) },
      },
    },
    async (req) => {
      const p = req.params as { name: string; version: string };
      const v = await versionIn(req.policy, p.name, p.version);
      const visible = async (xs: Array<{ image: string; number: number }>) => {
        const out = [];
        for (const x of xs) if (await req.policy.canRead(x.image)) out.push(x);
        return out;
      };
      return {
        ref: `${v.image}@${v.number}`,
        parents: await visible(v.parents),
        children: await visible(await lib.catalog.children(v.image, v.number)),
      };
    },
  );

  // ---- boot working-set profiles (issue 16 item 4): what `deploy --remote` prefetches first

  const profileSummary = (p: BootProfile) => ({
    image: p.image,
    number: p.number,
    recorded: p.recorded,
    trace: p.trace,
    entries: p.entries.length,
    bytes: p.entries.reduce((n, e) => n + e.length, 0),
  });
  const ProfileDoc = anyObject(
    'a boot profile (strata.profile v1): ranges a boot read, in first-access order, by file',
  );

  app.get(
    '/v1/images/:name/versions/:version/profile',
    {
      config: { op: 'profiles.get' },
      schema: {
        params: versionParams,
        querystring: obj({ exact: bool() }, []),
        response: { 200: ProfileDoc },
      },
    },
    async (req) => {
      const p = req.params as { name: string; version: string };
      const { exact } = req.query as { exact?: boolean };
      const v = await versionIn(req.policy, p.name, p.version);
      // the version's own, else the nearest earlier of its image, else a parent's the caller may read
      const got = exact
        ? await loadProfile(lib.catalog.db, v.image, v.number, lib.dir)
        : await nearestProfile(lib.catalog.db, v, { where: lib.dir, mayUse: (image) => req.policy.canRead(image) });
      if (!got) {
        throw new HttpProblem(
          404,
          `no boot profile recorded for ${v.image}@${v.number}${exact ? '' : ' or a version before it'}`,
          'no-profile',
        );
      }
      return got;
    },
  );

  /** A profile for version `v`: checked, and about this very disk (same manifest, same size). */
  const acceptProfile = (v: VersionRow, body: unknown): BootProfile => {
    const p = checkProfile(body, `${v.image}@${v.number} profile`);
    if (p.manifest !== v.manifest || p.diskSize !== v.virtualSize) {
      throw new HttpProblem(
        422,
        `the profile was recorded on manifest ${String(p.manifest).slice(0, 16)}… (${p.diskSize} bytes), not on ${v.image}@${v.number} (${v.manifest.slice(0, 16)}…, ${v.virtualSize} bytes)`,
        'profile-mismatch',
      );
    }
    return { ...p, image: v.image, number: v.number };
  };

  app.put(
    '/v1/images/:name/versions/:version/profile',
    {
      config: { op: 'profiles.put' },
      bodyLimit: opts.uploadLimit ?? 64 * ONE_MIB,
      schema: {
        params: versionParams,
        body: ProfileDoc,
        response: {
          200: obj({ image: str(), number: int(), recorded: str(), trace: str(), entries: int(), bytes: int() }),
        },
      },
    },
    async (req) => {
      const p = req.params as { name: string; version: string };
      const v = await versionIn(req.policy, p.name, p.version);
      await req.policy.writable(lib, p.name);
      const profile = acceptProfile(v, req.body);
      await saveProfile(lib.catalog.db, profile);
      return profileSummary(profile);
    },
  );

  app.post(
    '/v1/images/:name/versions/:version/profile',
    {
      config: { op: 'profiles.record' },
      schema: {
        params: versionParams,
        querystring: obj(
          { trace: str({ maxLength: 256, description: 'the trace file name, kept in the profile' }) },
          [],
        ),
        // documented, not validated by ajv (a Buffer is no JSON string): the recorder reads it line by line
        body: {
          content: {
            'application/octet-stream': {
              schema: { description: 'a trace: JSON lines of strata nbd/deploy --trace, or CSV offset,length' },
            },
          },
        },
        response: { 201: ProfileDoc },
      },
    },
    async (req, reply) => {
      const p = req.params as { name: string; version: string };
      const { trace } = req.query as { trace?: string };
      const v = await versionIn(req.policy, p.name, p.version);
      await req.policy.writable(lib, p.name);
      const body = req.body as Buffer;
      if (!Buffer.isBuffer(body)) throw new HttpProblem(415, 'a trace comes as application/octet-stream');
      const profile = await recordVersionProfile(lib, v, [body], trace ?? 'trace');
      reply.code(201);
      return profile;
    },
  );

  // check-in by upload: the manifests, once every chunk they name is held
  app.post(
    '/v1/images/:name/versions',
    {
      config: { op: 'versions.commit' },
      bodyLimit: opts.commitLimit ?? 256 * ONE_MIB,
      schema: {
        params: nameParam,
        body: obj(
          {
            layout: anyObject('the layout manifest (strata.layout v1)'),
            files: arr(anyObject('a file manifest (strata.files v1)'), { maxItems: 256 }),
            parents: arr(str({ maxLength: 300 }), { maxItems: 64 }),
            tags: arr(str({ pattern: TAG }), { maxItems: 64 }),
            description: str({ maxLength: 4096 }),
            visibility: VISIBILITY,
          },
          ['layout'],
        ),
        response: { 201: obj({ ...(Version.properties as object), warnings: arr(str()) } as never) },
      },
    },
    async (req, reply) => {
      const { name } = req.params as { name: string };
      const b = req.body as {
        layout: LayoutManifest;
        files?: FilesManifest[];
        parents?: string[];
        tags?: string[];
        description?: string;
        visibility?: Visibility;
      };
      const policy = req.policy;
      const existing = await lib.catalog.image(name);
      let project: string;
      if (existing && (await policy.canRead(name))) project = (await policy.writable(lib, name)).project;
      else project = ownProject(policy, name);
      for (const t of b.tags ?? []) checkTag(t);
      // the manifests: decoded and checked as the store's reader would
      const layoutBytes = encodeManifest(b.layout);
      const layout = decodeManifest<LayoutManifest>(layoutBytes, LAYOUT_KIND, 'uploaded layout manifest');
      const files = new Map<string, Uint8Array>();
      for (const f of b.files ?? []) {
        const enc = encodeManifest(f);
        const fm = decodeManifest<FilesManifest>(enc, FILES_KIND, 'uploaded file manifest');
        if (!Array.isArray(fm.entries)) throw new HttpProblem(422, 'a file manifest has no entries');
        files.set(createHash('sha256').update(enc).digest('hex'), enc);
      }
      const chunkSet = new Set(layout.chunks);
      for (const [d, enc] of files) {
        const fm = JSON.parse(Buffer.from(enc).toString('utf8')) as FilesManifest;
        for (const e of fm.entries) {
          for (const c of e.chunks ?? []) {
            if (c !== null && !chunkSet.has(c)) {
              throw new HttpProblem(422, `file manifest ${d} names chunk ${c} the layout does not`, 'bad-manifest');
            }
          }
        }
      }
      const need = new Set<string>(layout.chunks);
      for (const v of layout.volumes) if (v.fs && !files.has(v.fs.files)) need.add(v.fs.files);
      for (const d of need)
        if (!/^[0-9a-f]{64}$/.test(d)) throw new HttpProblem(422, `bad digest ${d}`, 'bad-manifest');
      const parents: Array<{ image: string; number: number }> = [];
      for (const ref of b.parents ?? []) {
        const v = await resolveRef(policy, ref);
        parents.push({ image: v.image, number: v.number });
      }
      if (!b.parents && existing) {
        const prev = (await lib.catalog.versions(name)).pop();
        if (prev) parents.push({ image: prev.image, number: prev.number });
      }
      const row = await exclusive(async () => {
        const lock = await RepoLock.acquire(lib.store.backend, 'shared', `serve commit ${name}`, 60_000);
        try {
          // what other servers stored, and what a gc that just finished left (servers share the store)
          await lib.store.refresh(true);
          const held = await heldFilter(policy, [...need]);
          const missing = [...need].filter((d) => !held.has(d));
          if (missing.length > 0) {
            throw new HttpProblem(
              409,
              `${missing.length} blobs the manifest names are not held by project ${policy.p.project ?? '-'} (first: ${missing[0]}); upload them first`,
              'missing-chunks',
            );
          }
          for (let i = 0; i < layout.chunks.length; i++) {
            const e = lib.store.entry(layout.chunks[i]);
            if (e && e.plainLength !== layout.chunkLengths[i]) {
              throw new HttpProblem(
                422,
                `chunk ${layout.chunks[i]} holds ${e.plainLength} bytes, not ${layout.chunkLengths[i]}`,
                'bad-manifest',
              );
            }
          }
          const added: string[] = [];
          for (const [d, enc] of files) if ((await lib.store.put('tree', enc, d)).added) added.push(d);
          const m = await lib.store.put('tree', layoutBytes);
          if (m.added) added.push(m.digest);
          await lib.store.flush();
          // new bytes: what no other active version needed (each distinct manifest once: many
          // versions share one, e.g. an image tagged or copied); what is held is this version's
          // blobs, not every other version's
          const mine = new Set([...layout.chunks, ...files.keys()]);
          const alone = new Set([...mine, m.digest]);
          for (const manifest of new Set((await lib.catalog.activeVersions()).map((v) => v.manifest))) {
            if (alone.size === 0) break;
            await reach.each(manifest, (d) => alone.delete(d));
          }
          let storedBytes = lib.store.storedSize(m.digest);
          let newBytes = 0;
          for (const d of mine) storedBytes += lib.store.storedSize(d);
          for (const d of alone) newBytes += lib.store.storedSize(d);
          let usedBytes = 0;
          for (const n of layout.ranges.length) usedBytes += n;
          const r = await lib.catalog.addVersion({
            image: name,
            description: b.description,
            manifest: m.digest,
            createdBy: policy.p.user ?? 'anonymous',
            sourceName: layout.sourceName,
            sourceFormat: layout.sourceFormat,
            virtualSize: layout.virtualSize,
            usedBytes,
            storedBytes,
            newBytes,
            exact: layout.exact,
            parents,
            tags: b.tags ?? [],
          });
          if (!existing) await access.setImageAccess(name, project, b.visibility ?? 'private');
          if (policy.p.project) await access.holdBlobs(policy.p.project, added);
          return r;
        } finally {
          await lock.release();
        }
      });
      const warnings: string[] = [];
      await inspectAfterCheckin(lib, row, warnings);
      reply.code(201);
      return { ...versionOf(row), warnings };
    },
  );

  app.post(
    '/v1/images/:name/import',
    {
      config: { op: 'versions.import' },
      schema: {
        params: nameParam,
        body: obj(
          {
            path: str({ maxLength: 4096, description: 'a file on the server (server admins only)' }),
            url: str({ maxLength: 4096, pattern: '^https?://', description: 'an image the server fetches' }),
            parents: arr(str({ maxLength: 300 }), { maxItems: 64 }),
            tags: arr(str({ pattern: TAG }), { maxItems: 64 }),
            description: str({ maxLength: 4096 }),
            visibility: VISIBILITY,
          },
          [],
        ),
        response: { 201: obj({ ...(Version.properties as object), warnings: arr(str()) } as never) },
      },
    },
    async (req, reply) => {
      const { name } = req.params as { name: string };
      const b = req.body as {
        path?: string;
        url?: string;
        parents?: string[];
        tags?: string[];
        description?: string;
        visibility?: Visibility;
      };
      const policy = req.policy;
      if ((b.path === undefined) === (b.url === undefined)) {
        throw new HttpProblem(400, 'an import names a path or a url (one of them)', 'bad-import');
      }
      if (b.path !== undefined && (!req.principal.admin || req.principal.scope !== 'write')) {
        throw new HttpProblem(
          req.principal.user ? 403 : 401,
          "importing a file on the server needs a server admin's write token (others import a url)",
        );
      }
      if (b.url !== undefined && opts.importUrls === false) {
        throw new HttpProblem(403, 'this server does not fetch images from URLs (--no-import-urls)');
      }
      for (const t of b.tags ?? []) checkTag(t);
      const existing = await lib.catalog.image(name);
      let project: string;
      if (existing && (await policy.canRead(name))) project = (await policy.writable(lib, name)).project;
      else project = ownProject(policy, name);
      if (existing && !(await policy.canRead(name))) throw new HttpProblem(409, `image ${name} exists`);
      // parents the caller may read, named by the same references as a commit's
      const parents: string[] = [];
      for (const ref of b.parents ?? []) {
        const v = await resolveRef(policy, ref);
        parents.push(`${v.image}@${v.number}`);
      }
      const { checkin } = await import('../../library/checkin.js');
      const r = await exclusive(() =>
        checkin(lib, (b.url ?? b.path) as string, {
          name,
          tags: b.tags ?? [],
          parents: b.parents ? parents : undefined,
          description: b.description,
          createdBy: req.principal.user ?? undefined,
          // a fetched image may not name a library version as its backing file (it could be one the caller may not read)
          libraryBacking: b.path !== undefined,
        }),
      );
      if (!existing) await access.setImageAccess(name, project, b.visibility ?? 'private');
      const row = (await lib.catalog.version(r.image, r.number)) as VersionRow;
      const warnings = [...r.warnings];
      await inspectAfterCheckin(lib, row, warnings);
      reply.code(201);
      return { ...versionOf(row), warnings };
    },
  );

  // ---- edits (issue 24): a change set or a rebase applied to a version, written as a new version

  /** The version an edit starts from: `from` (a readable ref), else the image's latest. */
  const editSource = async (policy: Policy, name: string, from?: string) => {
    const v = await resolveRef(policy, from ?? name);
    await policy.writable(lib, name);
    if (v.image !== name)
      throw new HttpProblem(400, `an edit of ${name} starts from a version of ${name}, not ${from}`, 'bad-edit');
    return v;
  };
  const editProblem = (e: unknown): never => {
    if (e instanceof StrataError && (e.code === 'USAGE' || e.code === 'NOT_FOUND' || e.code === 'UNSUPPORTED'))
      throw new HttpProblem(422, e.message, 'bad-edit');
    if (e instanceof StrataError && e.code === 'LIMIT') throw new HttpProblem(422, e.message, 'no-space');
    throw e;
  };
  const EditResult = obj({
    ...(Version.properties as object),
    parent: str(),
    changes: int(),
    contentBytes: int(),
    fsKind: str(),
    volume: str(),
    warnings: arr(str()),
  } as never);

  app.post(
    '/v1/images/:name/edits',
    {
      config: { op: 'versions.edit' },
      bodyLimit: opts.commitLimit ?? 256 * ONE_MIB,
      schema: {
        params: nameParam,
        body: obj(
          {
            from: str({ maxLength: 300, description: 'the version edited (default: the latest)' }),
            changes: arr(
              anyObject(
                'one operation (put with base64 bytes or the digests of chunks uploaded first, rm, mkdir, symlink, link, rename, setattr, xattr)',
              ),
              {
                minItems: 1,
                maxItems: 100_000,
              },
            ),
            message: str({ maxLength: 4096 }),
            tags: arr(str({ pattern: TAG }), { maxItems: 64 }),
            part: str({ maxLength: 64 }),
            lv: str({ maxLength: 256 }),
            parents: arr(str({ maxLength: 300 }), {
              maxItems: 64,
              description:
                'further parents of the new version (besides from): e.g. an earlier commit these changes include',
            }),
          },
          ['changes'],
        ),
        response: { 201: EditResult },
      },
    },
    async (req, reply) => {
      const { name } = req.params as { name: string };
      const b = req.body as {
        from?: string;
        changes: unknown[];
        message?: string;
        tags?: string[];
        part?: string;
        lv?: string;
        parents?: string[];
      };
      const v = await editSource(req.policy, name, b.from);
      for (const t of b.tags ?? []) checkTag(t);
      // further parents the caller may read, named as a commit's
      const alsoParents: string[] = [];
      for (const ref of b.parents ?? []) {
        const p = await resolveRef(req.policy, ref);
        const pr = `${p.image}@${p.number}`;
        if (pr !== `${v.image}@${v.number}` && !alsoParents.includes(pr)) alsoParents.push(pr);
      }
      let changes: Change[];
      try {
        changes = b.changes.map((c, i) => changeFromWire(c, i));
      } catch (e) {
        return editProblem(e);
      }
      // files sent as chunks (uploaded first): every chunk held by the caller, the sizes adding up
      const named = new Set<string>();
      for (const c of changes)
        if (c.op === 'put' && c.content.kind === 'chunks') for (const d of c.content.chunks) named.add(d);
      if (named.size > 0) {
        await lib.store.refresh(true);
        const held = await heldFilter(req.policy, [...named]);
        const missing = [...named].filter((d) => !held.has(d));
        if (missing.length > 0) {
          throw new HttpProblem(
            409,
            `${missing.length} chunks the edit names are not held by project ${req.policy.p.project ?? '-'} (first: ${missing[0]}); upload them first`,
            'missing-chunks',
          );
        }
        for (const c of changes) {
          if (c.op !== 'put' || c.content.kind !== 'chunks') continue;
          let n = 0;
          for (const d of c.content.chunks) n += lib.store.entry(d)?.plainLength ?? 0;
          if (n !== c.content.size)
            throw new HttpProblem(422, `put ${c.path}: its chunks hold ${n} bytes, not ${c.content.size}`, 'bad-edit');
        }
      }
      const r = await exclusive(async () => {
        // the writer reads files and bytes: chunked contents become local files first, one at a time
        const work = named.size > 0 ? await mkdtemp(path.join(tmpdir(), 'strata-edit-')) : undefined;
        try {
          const local = work ? await chunkedToFiles(lib, changes, work) : changes;
          return await applyChanges(
            lib,
            `${v.image}@${v.number}`,
            { changes: local, message: b.message },
            {
              address: { part: b.part, lv: b.lv },
              alsoParents: alsoParents.length > 0 ? alsoParents : undefined,
              tags: b.tags ?? [],
              createdBy: req.principal.user ?? undefined,
              inspect: false,
            },
          ).catch(editProblem);
        } finally {
          if (work) await rm(work, { recursive: true, force: true });
        }
      });
      const row = (await lib.catalog.version(r.image, r.number)) as VersionRow;
      const warnings = [...r.warnings];
      await inspectAfterCheckin(lib, row, warnings);
      reply.code(201);
      return {
        ...versionOf(row),
        parent: r.parent,
        changes: r.changes,
        contentBytes: r.contentBytes,
        fsKind: r.fsKind,
        volume: r.volume,
        warnings,
      };
    },
  );

  app.post(
    '/v1/images/:name/rebases',
    {
      config: { op: 'versions.rebase' },
      schema: {
        params: nameParam,
        body: obj(
          {
            ref: str({ maxLength: 300, description: 'the derived version (REF; default: the latest of the image)' }),
            from: str({ maxLength: 300, description: 'A0, the base REF was made from (readable)' }),
            to: str({ maxLength: 300, description: 'A1, the updated base (readable)' }),
            prefer: { type: 'string', enum: ['ours', 'theirs'], description: 'whose side every other conflict takes' },
            take: arr(
              obj({
                side: { type: 'string', enum: ['ours', 'theirs'] },
                path: str({ maxLength: 4096, description: 'a path (a directory decides under it) or package:NAME' }),
              }),
              { maxItems: 100_000 },
            ),
            part: str({ maxLength: 64 }),
            message: str({ maxLength: 4096 }),
            tags: arr(str({ pattern: TAG }), { maxItems: 64 }),
            dryRun: bool(),
          },
          ['from', 'to'],
        ),
        response: {
          ...Object.fromEntries(
            [200, 201].map((code) => [
              code,
              obj(
                {
                  ref: str(),
                  from: str(),
                  to: str(),
                  message: str(),
                  dryRun: bool(),
                  summary: anyObject('paths A1 changed, taken, already so, kept, conflicts, unresolved'),
                  conflicts: arr(anyObject('a path (or package) both sides changed differently, and its decision')),
                  merged: arr(anyObject('a file merged from both sides (dpkg status, logs)')),
                  changes: arr(anyObject('one operation of the change set applied to REF')),
                  version: { ...EditResult, description: 'the new version (201 only)' },
                },
                ['ref', 'from', 'to', 'message', 'dryRun', 'summary', 'conflicts', 'merged', 'changes'],
              ),
            ]),
          ),
        },
        description:
          'carry diff(A0, A1) into REF: 201 with the new version (parents REF and A1); 200 when nothing was written (a dry run, unresolved conflicts listed, or nothing to change)',
      },
    },
    async (req, reply) => {
      const { name } = req.params as { name: string };
      const b = req.body as {
        ref?: string;
        from: string;
        to: string;
        prefer?: 'ours' | 'theirs';
        take?: Take[];
        part?: string;
        message?: string;
        tags?: string[];
        dryRun?: boolean;
      };
      const v = await editSource(req.policy, name, b.ref);
      const a0 = await resolveRef(req.policy, b.from);
      const a1 = await resolveRef(req.policy, b.to);
      for (const t of b.tags ?? []) checkTag(t);
      let made: (Awaited<ReturnType<typeof applyChanges>> & { tags?: string[] }) | undefined;
      const r = await rebaseVersion(
        lib,
        `${v.image}@${v.number}`,
        `${a0.image}@${a0.number}`,
        `${a1.image}@${a1.number}`,
        {
          ...(b.part !== undefined ? { part: b.part } : {}),
          ...(b.prefer ? { prefer: b.prefer } : {}),
          ...(b.take?.length ? { take: b.take } : {}),
          ...(b.message !== undefined ? { message: b.message } : {}),
          dryRun: Boolean(b.dryRun),
          apply: async (l, ref, changes, o) => {
            made = await exclusive(() =>
              applyChanges(l, ref, changes, {
                alsoParents: o.alsoParents,
                message: o.message,
                ...(o.address ? { address: o.address } : {}),
                tags: b.tags ?? [],
                createdBy: req.principal.user ?? undefined,
                inspect: false,
              }),
            );
            return made;
          },
        },
      ).catch(editProblem);
      if (!made) return rebaseJson(r, undefined);
      const row = (await lib.catalog.version(made.image, made.number)) as VersionRow;
      const warnings = [...made.warnings];
      await inspectAfterCheckin(lib, row, warnings);
      reply.code(201);
      return rebaseJson(r, {
        ...versionOf(row),
        parent: made.parent,
        changes: made.changes,
        contentBytes: made.contentBytes,
        fsKind: made.fsKind,
        volume: made.volume,
        warnings,
      });
    },
  );

  app.get(
    '/v1/images/:name/versions/:version/log',
    {
      config: { op: 'versions.log' },
      schema: {
        params: versionParams,
        querystring: obj({ limit: int({ minimum: 1, maximum: 10_000 }), part: str({ maxLength: 64 }) }, []),
        response: {
          200: arr(
            obj(
              {
                ref: str(),
                created: str(),
                createdBy: nullable(str()),
                message: nullable(str()),
                source: nullable(str()),
                parents: arr(str()),
                tags: arr(str()),
                state: str(),
                changes: { anyOf: [anyObject('the file diff summary against the first parent'), { type: 'null' }] },
                warnings: arr(str()),
              },
              ['ref', 'created', 'parents', 'tags', 'state', 'changes', 'warnings'],
            ),
          ),
        },
        description:
          "a version's provenance chain, newest first, with what each step changed against its first parent; parents the caller may not read are left out and end the chain",
      },
    },
    async (req) => {
      const p = req.params as { name: string; version: string };
      const q = req.query as { limit?: number; part?: string };
      const v = await versionIn(req.policy, p.name, p.version);
      return versionLog(lib, `${v.image}@${v.number}`, {
        limit: q.limit ?? 100,
        ...(q.part !== undefined ? { part: q.part } : {}),
        canRead: (image) => req.policy.canRead(image),
      });
    },
  );

  // ---- tags

  app.put(
    '/v1/images/:name/tags/:tag',
    {
      config: { op: 'tags.set' },
      schema: {
        params: obj({ name: str({ pattern: IMAGE_NAME }), tag: str({ pattern: TAG }) }),
        body: obj({ version: int({ minimum: 1 }) }),
        response: { 200: obj({ image: str(), tag: str(), number: int() }) },
      },
    },
    async (req) => {
      const p = req.params as { name: string; tag: string };
      const v = await versionIn(req.policy, p.name, String((req.body as { version: number }).version));
      await req.policy.writable(lib, p.name);
      await lib.catalog.setTag(v.image, p.tag, v.number);
      return { image: v.image, tag: p.tag, number: v.number };
    },
  );

  app.delete(
    '/v1/images/:name/tags/:tag',
    {
      config: { op: 'tags.delete' },
      schema: {
        params: obj({ name: str({ pattern: IMAGE_NAME }), tag: str({ pattern: TAG }) }),
        response: { 204: { type: 'null', description: 'deleted' } },
      },
    },
    async (req, reply) => {
      const p = req.params as { name: string; tag: string };
      await req.policy.writable(lib, p.name);
      if (!(await lib.catalog.deleteTag(p.name, p.tag))) throw new HttpProblem(404, `no tag ${p.tag} on ${p.name}`);
      reply.code(204);
      return null;
    },
  );

  // ---- members (sharing with other projects, who accept)

  app.get(
    '/v1/images/:name/members',
    { config: { op: 'members.list' }, schema: { params: nameParam, response: { 200: obj({ items: arr(Member) }) } } },
    async (req) => {
      const { name } = req.params as { name: string };
      const g = await req.policy.readable(lib, name);
      if (!req.principal.admin && req.principal.project !== g.project) {
        throw new HttpProblem(403, `only project ${g.project} sees who ${name} is shared with`);
      }
      return { items: await access.members(name) };
    },
  );

  app.post(
    '/v1/images/:name/members',
    {
      config: { op: 'members.add' },
      schema: { params: nameParam, body: obj({ project: str({ pattern: PROJECT }) }), response: { 201: Member } },
    },
    async (req, reply) => {
      const { name } = req.params as { name: string };
      const { project } = req.body as { project: string };
      const g = await req.policy.manageable(lib, name);
      if (project === g.project) throw new HttpProblem(400, `${name} already belongs to ${project}`);
      if (!(await access.projectExists(project))) throw new HttpProblem(404, `no project ${project}`);
      reply.code(201);
      return access.addMember(name, project);
    },
  );

  app.put(
    '/v1/images/:name/members/:project',
    {
      config: { op: 'members.answer' },
      schema: {
        params: obj({ name: str({ pattern: IMAGE_NAME }), project: str({ pattern: PROJECT }) }),
        body: obj({ status: str({ enum: ['accepted', 'rejected', 'pending'] }) }),
        response: { 200: Member },
      },
    },
    async (req) => {
      const p = req.params as { name: string; project: string };
      const { status } = req.body as { status: 'accepted' | 'rejected' | 'pending' };
      const row = (await lib.catalog.image(p.name)) ? await access.member(p.name, p.project) : undefined;
      const me = req.principal;
      const mine = me.project === p.project || me.admin;
      // the invited project answers; to anybody else the invitation does not exist
      if (!row || !mine) {
        if (await req.policy.canRead(p.name)) throw new HttpProblem(404, `${p.name} is not shared with ${p.project}`);
        throw notFound(p.name);
      }
      if (!req.policy.canWriteProject(p.project) && !me.admin) {
        throw new HttpProblem(403, `answering needs a write token of a project ${p.project} admin or member`);
      }
      await access.setMemberStatus(p.name, p.project, status);
      return (await access.member(p.name, p.project)) as never;
    },
  );

  app.delete(
    '/v1/images/:name/members/:project',
    {
      config: { op: 'members.remove' },
      schema: {
        params: obj({ name: str({ pattern: IMAGE_NAME }), project: str({ pattern: PROJECT }) }),
        response: { 204: { type: 'null', description: 'removed' } },
      },
    },
    async (req, reply) => {
      const p = req.params as { name: string; project: string };
      await req.policy.manageable(lib, p.name);
      if (!(await access.removeMember(p.name, p.project)))
        throw new HttpProblem(404, `${p.name} is not shared with ${p.project}`);
      reply.code(204);
      return null;
    },
  );

  app.get(
    '/v1/shared',
    {
      config: { op: 'members.invitations' },
      schema: {
        querystring: obj({ status: str({ enum: ['pending', 'accepted', 'rejected'] }) }, []),
        response: { 200: obj({ items: arr(Member) }) },
      },
    },
    async (req) => {
      const me = req.principal.project;
      if (!me) return { items: [] };
      const q = req.query as { status?: string };
      const rows = await lib.catalog.db.all<{ image: string }>(
        'SELECT image FROM image_members WHERE project = ? ORDER BY image',
        [me],
      );
      const items = [];
      for (const r of rows) {
        if (!(await lib.catalog.image(r.image))) continue;
        const m = await access.member(r.image, me);
        if (m && (q.status === undefined || m.status === q.status)) items.push(m);
      }
      return { items };
    },
  );

  // ---- files, straight from the manifests

  app.get(
    '/v1/images/:name/versions/:version/files',
    {
      config: { op: 'files.list' },
      schema: {
        params: versionParams,
        querystring: obj(
          {
            ...pageQuery,
            path: str({ maxLength: 4096, default: '/' }),
            recursive: bool(),
            part: str({ maxLength: 64 }),
          },
          [],
        ),
        response: { 200: page(FileEntry) },
      },
    },
    async (req) => {
      const q = req.query as { path: string; recursive?: boolean; part?: string; limit: number; offset: number };
      const { sf } = await parseFilesQuery(req.policy, req.params as never, q.part);
      const page = await listStoredPage(sf, checkImagePath(q.path), q.recursive ?? false, q.offset, q.limit);
      return { items: page.items.map(lsEntry), total: page.total, limit: q.limit, offset: q.offset };
    },
  );

  app.get(
    '/v1/images/:name/versions/:version/files/stat',
    {
      config: { op: 'files.stat' },
      schema: {
        params: versionParams,
        querystring: obj({ path: str({ maxLength: 4096 }), part: str({ maxLength: 64 }), follow: bool() }, ['path']),
        response: { 200: FileEntry },
      },
    },
    async (req) => {
      const q = req.query as { path: string; part?: string; follow?: boolean };
      const { sf } = await parseFilesQuery(req.policy, req.params as never, q.part);
      return lsEntry(await findStoredEntry(sf, checkImagePath(q.path), q.follow ?? false));
    },
  );

  app.get(
    '/v1/images/:name/versions/:version/files/extents',
    {
      config: { op: 'files.extents' },
      schema: {
        description:
          "Where a file's bytes sit on the version's disk, its birth time and flags: read from the file system on the disk the store rebuilds (the file manifest does not keep them)",
        params: versionParams,
        querystring: obj({ path: str({ maxLength: 4096 }), part: str({ maxLength: 64 }), follow: bool() }, ['path']),
        response: { 200: FileExtents },
      },
    },
    async (req) => {
      const q = req.query as { path: string; part?: string; follow?: boolean };
      const v = await versionIn(
        req.policy,
        (req.params as { name: string }).name,
        (req.params as { version: string }).version,
      );
      const p = checkImagePath(q.path);
      const r = await versionStat(lib, v, p, { part: q.part, follow: q.follow ?? false });
      const out: Record<string, unknown> = {
        path: p,
        volume: r.volume,
        volumeDiskOffset: r.volumeDiskOffset,
        crtime: r.crtime,
        extents: r.extents,
      };
      if (r.allocatedBytes !== undefined) out.allocatedBytes = r.allocatedBytes;
      if (r.flags !== undefined) out.flags = r.flags;
      return out;
    },
  );

  app.get(
    '/v1/images/:name/versions/:version/files/content',
    {
      config: { op: 'files.read' },
      schema: {
        params: versionParams,
        querystring: obj({ path: str({ maxLength: 4096 }), part: str({ maxLength: 64 }) }, ['path']),
        response: { 200: binary('the file'), 206: binary('a range of the file') },
      },
    },
    async (req, reply) => {
      const q = req.query as { path: string; part?: string };
      const { sf } = await parseFilesQuery(req.policy, req.params as never, q.part);
      const files = sf.files;
      const e = await findStoredEntry(sf, checkImagePath(q.path), true);
      if (e.type !== 'file') throw new HttpProblem(400, `not a regular file: ${q.path}`, 'not-a-file');
      return sendBytes(
        req,
        reply,
        e.size,
        (s, t, take) => fileBytes(files, e, s, t, take),
        path.posix.basename(e.path),
      );
    },
  );

  app.get(
    '/v1/images/:name/versions/:version/files/tar',
    {
      config: { op: 'files.tar' },
      schema: {
        params: versionParams,
        querystring: obj({ path: str({ maxLength: 4096, default: '/' }), part: str({ maxLength: 64 }) }, []),
        response: { 200: binary('a pax tar of the folder (or file) and everything under it', 'application/x-tar') },
      },
    },
    async (req, reply) => {
      const q = req.query as { path: string; part?: string };
      const { v, sf } = await parseFilesQuery(req.policy, req.params as never, q.part);
      const e = await findStoredEntry(sf, checkImagePath(q.path), false);
      const base = e.path === '/' ? `${v.image}-${v.number}` : path.posix.basename(e.path);
      reply.type('application/x-tar');
      reply.header('content-disposition', `attachment; filename="${base.replace(/[^A-Za-z0-9._-]/g, '_')}.tar"`);
      return reply.send(Readable.from(tarOfStoredStreamed(sf, e), { objectMode: false }));
    },
  );

  // ---- download, inspection, diff, search, storage

  app.get(
    '/v1/images/:name/versions/:version/disk',
    {
      config: { op: 'versions.download' },
      schema: {
        params: versionParams,
        querystring: obj({ format: str({ enum: ['raw', 'qcow2'], default: 'raw' }) }, []),
        response: {
          200: binary('the virtual disk: raw, or qcow2 (laid out up front, so streamed with a known length)'),
          206: binary('a range of it'),
        },
      },
    },
    async (req, reply) => {
      const p = req.params as { name: string; version: string };
      const { format } = req.query as { format: 'raw' | 'qcow2' };
      const v = await versionIn(req.policy, p.name, p.version);
      const range = req.headers.range;
      if (format === 'raw' && range && diskCaches.enabled) {
        // a range of the raw disk through the version's live cache (shared by its requests)
        const cache = await diskCaches.get(v.manifest, `${v.image}@${v.number}`);
        async function* cached(start: number, end: number, take: TakePiece) {
          for (let o = start; o < end; o += PIECE) {
            const buf = await take(Math.min(PIECE, end - o));
            await cache.readInto(o, buf);
            yield buf;
          }
        }
        return sendBytes(req, reply, cache.size, cached, `${v.image.replace(/\//g, '_')}-${v.number}.raw`);
      }
      const ref = `${v.image}@${v.number}`;
      const src = await lib.versionSource(v.manifest, ref);
      const base = `${v.image.replace(/\//g, '_')}-${v.number}`;
      // a whole-disk download takes what the version's live cache already holds (no fetch, no
      // counters, no recency: one sequential pass would only flush it) and reads the rest
      const warm = diskCaches.enabled ? diskCaches.peek(v.manifest) : undefined;
      const readAt = async (off: number, out: Uint8Array): Promise<void> => {
        if (!warm) {
          await src.readInto(off, out);
          return;
        }
        const bs = warm.blockSize;
        const end = off + out.length;
        let hit = 0;
        let missAt = -1;
        for (let pos = off; pos < end; ) {
          const e = Math.min(end, (Math.floor(pos / bs) + 1) * bs);
          if (warm.peekInto(pos, out.subarray(pos - off, e - off))) {
            if (missAt >= 0) await src.readInto(missAt, out.subarray(missAt - off, pos - off));
            missAt = -1;
            hit += e - pos;
          } else if (missAt < 0) missAt = pos;
          pos = e;
        }
        if (missAt >= 0) await src.readInto(missAt, out.subarray(missAt - off));
        diskCaches.noteDownload(ref, hit, out.length - hit);
      };
      if (format === 'qcow2') {
        const plan = await planQcow2StreamOf(src.size, src.dataSpans());
        const readDisk = async (off: number, out: Uint8Array) => {
          const n = Math.max(0, Math.min(out.length, src.size - off));
          if (n > 0) await readAt(off, out.subarray(0, n));
          // the last 512-byte sector past a disk of odd size: zeros (a reused piece holds old bytes)
          if (n < out.length) out.fill(0, n);
        };
        async function* q(start: number, end: number, take: TakePiece) {
          try {
            yield* qcow2StreamBytes(plan, readDisk, start, end, PIECE, take);
          } finally {
            await src.close();
          }
        }
        return sendBytes(req, reply, plan.size, q, `${base}.qcow2`);
      }
      async function* read(start: number, end: number, take: TakePiece) {
        try {
          for (let o = start; o < end; o += PIECE) {
            const buf = await take(Math.min(PIECE, end - o));
            await readAt(o, buf);
            yield buf;
          }
        } finally {
          await src.close();
        }
      }
      return sendBytes(req, reply, src.size, read, `${base}.raw`);
    },
  );

  app.get(
    '/v1/images/:name/versions/:version/inspection',
    {
      config: { op: 'versions.inspection' },
      schema: {
        params: versionParams,
        response: {
          200: obj({
            ref: str(),
            inspected: str(),
            strataVersion: str(),
            warnings: arr(str()),
            roots: arr(anyObject('an OS found')),
          }),
        },
      },
    },
    async (req) => {
      const p = req.params as { name: string; version: string };
      const v = await versionIn(req.policy, p.name, p.version);
      return versionInspection(lib, `${v.image}@${v.number}`);
    },
  );

  app.get(
    '/v1/diff',
    {
      config: { op: 'versions.diff' },
      schema: {
        querystring: obj(
          {
            a: str({ maxLength: 300 }),
            b: str({ maxLength: 300 }),
            part: str({ maxLength: 64 }),
            packages: bool(),
            blocks: bool(),
          },
          ['a', 'b'],
        ),
        response: {
          200: obj(
            {
              a: str(),
              b: str(),
              files: anyObject('file tree differences'),
              packages: { anyOf: [anyObject('package differences'), { type: 'null' }] },
              blocks: anyObject('block differences'),
              warnings: arr(str()),
            },
            ['a', 'b', 'files', 'warnings'],
          ),
        },
      },
    },
    async (req) => {
      const q = req.query as { a: string; b: string; part?: string; packages?: boolean; blocks?: boolean };
      const va = await resolveRef(req.policy, q.a);
      const vb = await resolveRef(req.policy, q.b);
      return diffVersions(lib, `${va.image}@${va.number}`, `${vb.image}@${vb.number}`, {
        part: q.part,
        packages: q.packages,
        blocks: q.blocks,
      });
    },
  );

  app.get(
    '/v1/search',
    {
      config: { op: 'search' },
      schema: {
        querystring: obj(
          {
            ...pageQuery,
            path: str({ maxLength: 4096 }),
            digest: str({ pattern: DIGEST }),
            package: str({ maxLength: 300 }),
            os: str({ maxLength: 300 }),
            user: str({ maxLength: 300 }),
          },
          [],
        ),
        response: { 200: page(anyObject('a version and what matched in it')) },
      },
    },
    async (req) => {
      const q = req.query as {
        limit: number;
        offset: number;
        path?: string;
        digest?: string;
        package?: string;
        os?: string;
        user?: string;
      };
      // access is a condition of the catalog's queries (it used to read every image's owner
      // row, then ask of each matching image), and only the page's hits are finished
      const { hits, total } = await searchPage(
        lib,
        { path: q.path, digest: q.digest, package: q.package, os: q.os, user: q.user },
        { only: req.policy.readableSql('v.image'), page: { offset: q.offset, limit: q.limit } },
      );
      return { items: hits, total, limit: q.limit, offset: q.offset };
    },
  );

  app.get(
    '/v1/storage',
    {
      config: { op: 'storage' },
      schema: {
        querystring: obj({ project: str({ pattern: PROJECT }) }, []),
        response: { 200: obj({ images: arr(Usage), projects: arr(Usage), total: Usage }) },
      },
    },
    async (req) => {
      const q = req.query as { project?: string };
      // Blobs are counted once an image, a project and in all, as bits on the store index's
      // entries (BlobMarks: a bit a blob, where a Set of digests was ~120 bytes a blob, three
      // times over); the images are taken a project at a time so that only one project's and
      // one image's marks are held beside the total's. A reload of the index renumbers its
      // entries (a gc ran): the count starts again.
      await req.policy.loadAll();
      const images: Array<{ name: string; project: string }> = [];
      for (const img of await lib.catalog.images()) {
        if (!(await req.policy.canRead(img.name))) continue;
        const g = await req.policy.ownerOf(img.name);
        if (q.project !== undefined && g.project !== q.project) continue;
        images.push({ name: img.name, project: g.project });
      }
      const projects = [...new Set(images.map((i) => i.project))];
      for (let attempt = 0; ; attempt++) {
        try {
          return await storageOf(images, projects);
        } catch (e) {
          if (attempt < 3 && e instanceof IndexReloaded) continue;
          throw e;
        }
      }
    },
  );

  const storageOf = async (images: Array<{ name: string; project: string }>, projects: string[]) => {
    const first = lib.store.marks();
    const index = first.map;
    const generation = index.generation;
    const tally = (name: string, marks = lib.store.marks()) => {
      if (index.generation !== generation) throw new IndexReloaded();
      return { name, marks, versions: 0, logicalBytes: 0, usedBytes: 0, storedBytes: 0 };
    };
    const out = (x: UsageTally) => ({
      name: x.name,
      versions: x.versions,
      logicalBytes: x.logicalBytes,
      usedBytes: x.usedBytes,
      storedBytes: x.storedBytes,
      dedupRatio: x.storedBytes > 0 ? x.usedBytes / x.storedBytes : 1,
    });
    const total = tally('total', first);
    const perImage = new Map(images.map((i) => [i.name, out(tally(i.name, first))]));
    const perProject: ReturnType<typeof out>[] = [];
    for (const project of projects) {
      const pp = tally(project);
      for (const img of images) {
        if (img.project !== project) continue;
        const a = tally(img.name);
        for (const v of await lib.catalog.versions(img.name)) {
          for (const acc of [a, pp, total]) {
            acc.versions++;
            acc.logicalBytes += v.virtualSize;
            acc.usedBytes += v.usedBytes;
          }
          // the version's blobs are marked as they come (a set too large for the reach cache
          // is never built: memory stays flat in the number of blobs)
          await reach.each(v.manifest, (d) => {
            if (index.generation !== generation) throw new IndexReloaded();
            for (const acc of [a, pp, total]) {
              // a blob the index does not hold (missing; verify says so) counts 0, as storedSize does
              if (!acc.marks.has(d) && acc.marks.mark(d)) acc.storedBytes += lib.store.storedSize(d);
            }
          });
          if (index.generation !== generation) throw new IndexReloaded();
        }
        perImage.set(img.name, out(a));
      }
      perProject.push(out(pp));
    }
    return { images: [...perImage.values()], projects: perProject, total: out(total) };
  };

  // ---- chunks: scoped to what the caller holds

  app.post(
    '/v1/chunks/missing',
    {
      config: { op: 'chunks.missing' },
      schema: {
        body: obj({ digests: arr(str({ pattern: DIGEST }), { maxItems: MAX_DIGESTS }) }),
        response: { 200: obj({ missing: arr(str()) }) },
      },
    },
    async (req) => {
      const { digests } = req.body as { digests: string[] };
      if (!req.policy.canWriteProject(req.principal.project)) {
        throw new HttpProblem(req.principal.user ? 403 : 401, 'asking for missing chunks needs a write token');
      }
      lib.store.warmWriter(); // an upload follows: its compression thread starts meanwhile
      const held = await heldFilter(req.policy, digests);
      // what the session will name in its commit is in use again: gc's grace restarts for it
      if (req.principal.project && held.size > 0) await access.holdBlobs(req.principal.project, [...held]);
      return { missing: [...new Set(digests)].filter((d) => !held.has(d)) };
    },
  );

  app.post(
    '/v1/chunks',
    {
      config: { op: 'chunks.upload' },
      schema: {
        // documented, not validated by ajv (a Buffer is no JSON string): the handler checks every record
        body: {
          content: {
            'application/octet-stream': {
              schema: { description: 'records: sha256 (32 bytes), length (u32 big-endian), the bytes' },
            },
          },
        },
        response: { 200: obj({ received: int(), added: int(), bytes: int() }) },
      },
    },
    async (req) => {
      if (!req.policy.canWriteProject(req.principal.project)) {
        throw new HttpProblem(req.principal.user ? 403 : 401, 'uploading chunks needs a write token');
      }
      const body = req.body as Buffer;
      if (!Buffer.isBuffer(body)) throw new HttpProblem(415, 'chunks come as application/octet-stream');
      // every record checked before anything is stored
      const recs: Array<{ digest: string; data: Buffer }> = [];
      for (let o = 0; o < body.length; ) {
        if (o + RECORD_HEADER > body.length)
          throw new HttpProblem(400, `truncated record header at byte ${o}`, 'bad-upload');
        const digest = body.subarray(o, o + 32).toString('hex');
        const n = body.readUInt32BE(o + 32);
        if (o + RECORD_HEADER + n > body.length)
          throw new HttpProblem(400, `record at byte ${o} runs past the body`, 'bad-upload');
        if (n > 64 * ONE_MIB) throw new HttpProblem(413, `chunk of ${n} bytes`);
        const data = body.subarray(o + RECORD_HEADER, o + RECORD_HEADER + n);
        const got = createHash('sha256').update(data).digest('hex');
        if (got !== digest)
          throw new HttpProblem(422, `record at byte ${o}: bytes hash to ${got}, not ${digest}`, 'wrong-digest');
        recs.push({ digest, data });
        o += RECORD_HEADER + n;
      }
      let added = 0;
      await exclusive(async () => {
        // under the shared lock, as a check-in: gc (exclusive) runs before or after, and sees
        // these chunks in held_blobs, which keeps them through its grace period
        const lock = await RepoLock.acquire(lib.store.backend, 'shared', 'serve upload', 60_000);
        try {
          await lib.store.refresh(true); // what a gc that just finished left
          for (const r of recs) if ((await lib.store.put('data', r.data, r.digest)).added) added++;
          await lib.store.flush();
          if (req.principal.project)
            await access.holdBlobs(
              req.principal.project,
              recs.map((r) => r.digest),
            );
        } finally {
          await lock.release();
        }
      });
      return { received: recs.length, added, bytes: body.length };
    },
  );

  app.get(
    '/v1/chunks/:digest',
    {
      config: { op: 'chunks.read' },
      schema: { params: obj({ digest: str({ pattern: DIGEST }) }), response: { 200: binary('the chunk, plain') } },
    },
    async (req, reply) => {
      const { digest } = req.params as { digest: string };
      if (!(await heldFilter(req.policy, [digest])).has(digest)) throw new HttpProblem(404, `no such chunk: ${digest}`);
      // store.get's bytes are a fresh copy already (a layout part, a chunk): sent as they are
      const b = await lib.store.get(digest);
      reply.type('application/octet-stream');
      return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.length);
    },
  );

  return app;
}

/** Listen on HOST:PORT (port 0: any free one); close() finishes in-flight requests first. */
export async function startServer(
  lib: Library,
  listen = '127.0.0.1:8080',
  opts: ServeOptions = {},
): Promise<RunningServer> {
  const app = await buildServer(lib, opts);
  const i = listen.lastIndexOf(':');
  const host = i >= 0 ? listen.slice(0, i).replace(/^\[|\]$/g, '') || '127.0.0.1' : '127.0.0.1';
  const port = Number(i >= 0 ? listen.slice(i + 1) : listen);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new StrataError('USAGE', `bad --listen ${listen} (HOST:PORT)`);
  await app.listen({ host, port });
  const addr = app.server.address();
  const actual = typeof addr === 'object' && addr ? addr.port : port;
  const shown = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return { app, url: `http://${shown}:${actual}`, close: () => app.close() };
}

/** The service's live disk caches, one per version read by range, at most `versions` at once (least recent closed). */
class DiskCaches {
  readonly enabled: boolean;
  private readonly open = new Map<string, Promise<{ cache: IntrospectiveCache; ref: string }>>();
  private readonly max: number;
  constructor(
    private readonly lib: Library,
    private readonly opts?: ExportCacheOptions & { versions?: number },
  ) {
    this.enabled = opts !== undefined;
    this.max = Math.max(1, opts?.versions ?? 4);
  }

  /** Bytes of whole-disk downloads by version: taken from a live cache, read from the store. */
  private readonly downloads = new Map<string, { cache: number; source: number }>();

  /**
   * The live cache of a version when one is open (never opens one: a whole-disk download is
   * one sequential pass, which would only flush it), for a reader that takes what it holds.
   */
  peek(manifest: string): IntrospectiveCache | undefined {
    const p = this.open.get(manifest);
    return p ? settled.get(p)?.cache : undefined;
  }

  noteDownload(ref: string, fromCache: number, fromSource: number): void {
    const d = this.downloads.get(ref) ?? { cache: 0, source: 0 };
    d.cache += fromCache;
    d.source += fromSource;
    this.downloads.set(ref, d);
  }

  async get(manifest: string, ref: string): Promise<IntrospectiveCache> {
    let p = this.open.get(manifest);
    if (p) {
      this.open.delete(manifest);
      this.open.set(manifest, p);
    } else {
      p = (async () => {
        const src = await this.lib.versionSource(manifest, ref);
        try {
          // the block map comes from the version itself (read straight, not through the cache)
          return { cache: await openExportCache(src, this.opts!), ref };
        } catch (e) {
          await src.close();
          throw e;
        }
      })();
      this.open.set(manifest, p);
      const opened = p;
      p.then(
        (o) => settled.set(opened, o),
        () => this.open.delete(manifest),
      );
      while (this.open.size > this.max) {
        const [k, old] = this.open.entries().next().value as [string, Promise<{ cache: IntrospectiveCache }>];
        this.open.delete(k);
        old.then((o) => o.cache.close()).catch(() => {});
      }
    }
    return (await p).cache;
  }

  /** Prometheus lines: requests by version, class and outcome; source reads and bytes; prefetched bytes by prefetcher. */
  metricLines(): string[] {
    if (!this.enabled) return [];
    const out = [
      '# HELP strata_disk_cache_requests_total Range reads of a version disk through the live cache, by class and outcome.',
      '# TYPE strata_disk_cache_requests_total counter',
    ];
    const src: string[] = [];
    const pf: string[] = [];
    for (const p of this.open.values()) {
      const o = settled.get(p);
      if (!o) continue;
      const s = o.cache.snapshot();
      const v = `version="${o.ref.replace(/["\\\n]/g, '_')}"`;
      for (const [c, k] of Object.entries(s.byClass)) {
        if (!k.requests) continue;
        for (const [outcome, n] of [
          ['hit', k.hits],
          ['prefetched', k.prefetched],
          ['miss', k.misses],
        ] as const)
          out.push(`strata_disk_cache_requests_total{${v},class="${c}",outcome="${outcome}"} ${n}`);
      }
      src.push(`strata_disk_cache_source_reads_total{${v}} ${s.source.reads}`);
      src.push(`strata_disk_cache_source_bytes_total{${v}} ${s.source.bytes}`);
      for (const [name, x] of Object.entries(s.prefetchers))
        pf.push(`strata_disk_cache_prefetch_bytes_total{${v},prefetcher="${name}"} ${x.fetchedBytes}`);
    }
    out.push('# TYPE strata_disk_cache_source_reads_total counter', ...src.filter((l) => l.includes('reads')));
    out.push('# TYPE strata_disk_cache_source_bytes_total counter', ...src.filter((l) => l.includes('bytes')));
    out.push('# TYPE strata_disk_cache_prefetch_bytes_total counter', ...pf);
    out.push(
      '# HELP strata_disk_cache_download_bytes_total Bytes of whole-disk downloads taken from a live cache or read from the store.',
      '# TYPE strata_disk_cache_download_bytes_total counter',
    );
    for (const [ref, d] of this.downloads) {
      const v = `version="${ref.replace(/["\\\n]/g, '_')}"`;
      out.push(`strata_disk_cache_download_bytes_total{${v},from="cache"} ${d.cache}`);
      out.push(`strata_disk_cache_download_bytes_total{${v},from="store"} ${d.source}`);
    }
    return out;
  }

  async close(): Promise<void> {
    const all = [...this.open.values()];
    this.open.clear();
    for (const p of all) await p.then((o) => o.cache.close()).catch(() => {});
  }
}

/** Caches whose opening finished (metrics read only those, without waiting). */
const settled = new WeakMap<Promise<unknown>, { cache: IntrospectiveCache; ref: string }>();

/** A change set whose chunked contents (blobs of the store) are written to files in `work` (the writer reads files). */
async function chunkedToFiles(lib: Library, changes: Change[], work: string): Promise<Change[]> {
  const out = changes.slice();
  for (let i = 0; i < out.length; i++) {
    const c = out[i];
    if (c.op !== 'put' || c.content.kind !== 'chunks') continue;
    const local = path.join(work, `content-${i}`);
    const fh = await open(local, 'w');
    try {
      for await (const b of contentChunks(lib, c.content)) await fh.write(b);
    } finally {
      await fh.close();
    }
    out[i] = { ...c, content: { kind: 'file', path: local } };
  }
  return out;
}
