import { createHash } from 'node:crypto';
import { type FileHandle, open } from 'node:fs/promises';
import type { Agent as HttpAgent, IncomingMessage } from 'node:http';
import * as http from 'node:http';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import { brotliDecompress, gunzip, gzip, inflate } from 'node:zlib';
import type { TokenRow } from '../../catalog/access.js';
import type { VersionRow } from '../../catalog/catalog.js';
import { type BootProfile, checkProfile } from '../../catalog/profiles.js';
import type { DiskImage } from '../../formats/types.js';
import { parseLibraryBacking, versionDiskImage } from '../../library/backing.js';
import { type CutOptions, cutImage } from '../../library/checkin.js';
import { type Change, changeToWire, type WireChange } from '../../library/edit/changes.js';
import type { LogStep } from '../../library/edit/log.js';
import type { RebaseJson, Take } from '../../library/edit/rebase.js';
import type { StatExtent } from '../../library/listing.js';
import type { FileEntry, FilesManifest } from '../../library/manifest.js';
import type { SearchHit, SearchQuery } from '../../library/search.js';
import { openDeviceTargets } from '../../library/target.js';
import type { VersionDiff } from '../../library/version-diff.js';
import { layoutSource, type RangedSource } from '../../library/version-source.js';
import type { PutResult } from '../../store/store.js';
import { type ErrorCode, StrataError } from '../../util/errors.js';
import type { Problem } from './problem.js';

/**
 * The typed client of the library service (what `--remote URL` uses): every call is one
 * HTTP request; a problem answer becomes a StrataError carrying its detail (404 ->
 * NOT_FOUND, 400 -> USAGE, 401/403 -> DENIED, 413/429 -> LIMIT, 409/422 -> CORRUPT).
 */
export interface RemoteImage {
  name: string;
  description: string | null;
  created: string;
  project: string;
  visibility: 'private' | 'shared' | 'public';
  versions: number;
  latest: number | null;
  tags: string[];
}
export type RemoteVersion = VersionRow & { ref: string };
/** What POST /v1/images/{name}/edits answers: the new version and what the edit did. */
export type RemoteEditResult = RemoteVersion & {
  parent: string;
  changes: number;
  contentBytes: number;
  fsKind: string;
  volume: string;
  warnings: string[];
};
export interface Page<T> {
  items: T[];
  total: number;
  limit: number;
  offset: number;
}
export type RemoteFileEntry = Omit<FileEntry, 'chunks' | 'xattrs'> & { xattrs: string[] };
export interface RemoteFileExtents {
  path: string;
  volume: string;
  volumeDiskOffset: number | null;
  crtime: string | null;
  allocatedBytes?: number;
  flags?: number;
  extents: StatExtent[];
}
export interface MemberRow {
  image: string;
  project: string;
  status: 'pending' | 'accepted' | 'rejected';
  created: string;
  updated: string;
}
export interface Usage {
  name: string;
  versions: number;
  logicalBytes: number;
  usedBytes: number;
  storedBytes: number;
  dedupRatio: number;
}

const STATUS_CODE: Record<number, ErrorCode> = {
  400: 'USAGE',
  401: 'DENIED',
  403: 'DENIED',
  404: 'NOT_FOUND',
  409: 'CORRUPT',
  413: 'LIMIT',
  416: 'USAGE',
  422: 'CORRUPT',
  429: 'LIMIT',
};

/** A problem answer, as an error that keeps the problem document. */
export class RemoteError extends StrataError {
  constructor(
    readonly status: number,
    readonly problem: Problem | undefined,
    url: string,
  ) {
    super(STATUS_CODE[status] ?? 'IO', problem?.detail ?? `HTTP ${status}`, { file: url });
  }
}

const enc = encodeURIComponent;
const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);
const inflateAsync = promisify(inflate);
const brotliAsync = promisify(brotliDecompress);

/** What one request of the client carries. */
export interface RequestOptions {
  query?: Record<string, unknown>;
  json?: unknown;
  body?: Uint8Array;
  headers?: Record<string, string>;
}

/** Keep-alive agents, one per protocol, made on first use (node:https and its TLS only for https URLs). */
const agents: { http?: HttpAgent; https?: HttpAgent } = {};

/** One request over node:http(s); the whole answer (decoded when a proxy compressed it). */
async function send(
  method: string,
  u: URL,
  headers: Record<string, string>,
  body: Uint8Array | undefined,
): Promise<{ status: number; location?: string; body: Buffer }> {
  const tls = u.protocol === 'https:';
  // node:https (and its TLS) loaded for https URLs only; require: the CLI's bundle has no import()
  const mod = tls ? (createRequire(import.meta.url)('node:https') as typeof import('node:https')) : http;
  const agent = tls
    ? (agents.https ??= new (mod as typeof import('node:https')).Agent({ keepAlive: true }))
    : (agents.http ??= new http.Agent({ keepAlive: true }));
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = mod.request(
      u,
      { method, agent, headers: { ...headers, ...(body ? { 'content-length': String(body.length) } : {}) } },
      resolve,
    );
    req.on('error', reject);
    req.end(body);
  });
  const parts: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    res.on('data', (b: Buffer) => parts.push(b));
    res.on('end', resolve);
    res.on('error', reject);
    res.on('aborted', () => reject(new Error('the answer was cut off')));
  });
  let out = parts.length === 1 ? parts[0] : Buffer.concat(parts);
  const ce = String(res.headers['content-encoding'] ?? '').toLowerCase();
  if (ce === 'gzip' || ce === 'x-gzip') out = await gunzipAsync(out);
  else if (ce === 'deflate') out = await inflateAsync(out);
  else if (ce === 'br') out = await brotliAsync(out);
  const location = res.headers.location;
  return { status: res.statusCode ?? 0, ...(location ? { location } : {}), body: out };
}

export class RemoteLibrary {
  /** Bytes of request bodies sent (uploads and commits), for the check-in's report. */
  bytesSent = 0;

  constructor(
    readonly url: string,
    readonly token?: string,
  ) {
    this.url = url.replace(/\/+$/, '');
  }

  /** From --remote, else STRATA_REMOTE; the token from STRATA_TOKEN. */
  static fromEnv(remote?: string): RemoteLibrary | undefined {
    const url = remote ?? process.env.STRATA_REMOTE;
    if (!url) return undefined;
    if (!/^https?:\/\//i.test(url)) throw new StrataError('USAGE', `--remote wants an http(s) URL, not ${url}`);
    return new RemoteLibrary(url, process.env.STRATA_TOKEN || undefined);
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.token ? { authorization: `Bearer ${this.token}`, ...extra } : extra;
  }

  /** The URL, headers and body (gzip-compressed when that shrinks it) of one request. */
  private async prepare(
    path: string,
    opts: RequestOptions,
  ): Promise<{ u: URL; headers: Record<string, string>; body: Uint8Array | undefined }> {
    const u = new URL(this.url + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    let body: Uint8Array | undefined;
    const headers = this.headers(opts.headers);
    if (opts.json !== undefined) {
      body = Buffer.from(JSON.stringify(opts.json));
      headers['content-type'] = 'application/json';
    } else if (opts.body) {
      body = opts.body;
      headers['content-type'] = 'application/octet-stream';
    }
    if (body && body.length >= 1024) {
      // manifests (hex digests, paths) and most file data shrink: send gzip when it does
      const z = await gzipAsync(body, { level: 6 });
      if (z.length < body.length * 0.95) {
        body = z;
        headers['content-encoding'] = 'gzip';
      }
    }
    if (body) this.bytesSent += body.length;
    return { u, headers, body };
  }

  /** A problem answer as the error it stands for. */
  private static problemError(status: number, text: string | undefined, u: URL): RemoteError {
    let p: Problem | undefined;
    try {
      p = text === undefined ? undefined : (JSON.parse(text) as Problem);
    } catch {
      p = undefined;
    }
    return new RemoteError(status, p, u.pathname);
  }

  /**
   * One request; the raw Response (Node's fetch) when it succeeded: what the streamed
   * answers (a file's bytes, the disk) use. Everything else goes through `call`
   * (node:http), which leaves fetch's undici unloaded: ~40 ms of a remote command.
   */
  async fetch(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const { u, headers, body } = await this.prepare(path, opts);
    let res: Response;
    try {
      res = await fetch(u, { method, headers, body });
    } catch (e) {
      throw new StrataError('IO', `cannot reach the library service: ${(e as Error).message}`, { file: this.url });
    }
    if (!res.ok) throw RemoteLibrary.problemError(res.status, await res.text().catch(() => undefined), u);
    return res;
  }

  /**
   * One request over node:http(s) with a keep-alive agent, its answer read whole: status
   * and body when it succeeded (2xx), else the RemoteError of its problem. Redirects are
   * followed as fetch follows them (at most 20; 303, and 301/302 of a POST, become a GET).
   */
  async call(method: string, path: string, opts: RequestOptions = {}): Promise<{ status: number; body: Buffer }> {
    let { u, headers, body } = await this.prepare(path, opts);
    for (let hops = 0; ; hops++) {
      let res: { status: number; location?: string; body: Buffer };
      try {
        res = await send(method, u, headers, body);
      } catch (e) {
        throw new StrataError('IO', `cannot reach the library service: ${(e as Error).message}`, { file: this.url });
      }
      if (res.location && [301, 302, 303, 307, 308].includes(res.status) && hops < 20) {
        const next = new URL(res.location, u);
        if (res.status === 303 || ((res.status === 301 || res.status === 302) && method === 'POST')) {
          if (method !== 'HEAD') method = 'GET';
          body = undefined;
          headers = Object.fromEntries(
            Object.entries(headers).filter(([k]) => k !== 'content-type' && k !== 'content-encoding'),
          );
        }
        // fetch drops the credentials when a redirect leaves the origin
        if (next.origin !== u.origin)
          headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k !== 'authorization'));
        u = next;
        continue;
      }
      if (res.status < 200 || res.status > 299)
        throw RemoteLibrary.problemError(res.status, res.body.toString('utf8'), u);
      return res;
    }
  }

  async json<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.call(method, path, opts);
    if (res.status === 204) return undefined as T;
    return JSON.parse(res.body.toString('utf8')) as T;
  }

  /** Every item of a paged list. */
  private async all<T>(path: string, query: Record<string, unknown> = {}): Promise<T[]> {
    const out: T[] = [];
    for (let offset = 0; ; ) {
      const p = await this.json<Page<T>>('GET', path, { query: { ...query, limit: 1000, offset } });
      out.push(...p.items);
      offset += p.items.length;
      if (p.items.length === 0 || offset >= p.total) return out;
    }
  }

  whoami() {
    return this.json<{
      user: string | null;
      project: string | null;
      role: string | null;
      scope: string;
      admin: boolean;
    }>('GET', '/v1/whoami');
  }

  /** A version made on the server from an image it fetches (`url`) or, for server admins, a file it holds (`path`). */
  importImage(
    name: string,
    body: {
      url?: string;
      path?: string;
      parents?: string[];
      tags?: string[];
      description?: string;
      visibility?: string;
    },
  ) {
    return this.json<RemoteVersion & { warnings: string[] }>('POST', `/v1/images/${enc(name)}/import`, { json: body });
  }

  // accounts
  users() {
    return this.json<{
      items: Array<{ name: string; admin: boolean; projects: Array<{ project: string; role: string }> }>;
    }>('GET', '/v1/users');
  }
  addUser(name: string, opts: { admin?: boolean } = {}) {
    return this.json<{ name: string; admin: boolean; projects: Array<{ project: string; role: string }> }>(
      'POST',
      '/v1/users',
      { json: { name, ...opts } },
    );
  }
  addProject(name: string) {
    return this.json<{ name: string }>('POST', '/v1/projects', { json: { name } });
  }
  setRole(project: string, user: string, role: 'admin' | 'member' | 'reader') {
    return this.json<{ name: string; admin: boolean; projects: Array<{ project: string; role: string }> }>(
      'PUT',
      `/v1/projects/${enc(project)}/users/${enc(user)}`,
      { json: { role } },
    );
  }
  async tokens(user?: string): Promise<TokenRow[]> {
    return (await this.json<{ items: TokenRow[] }>('GET', '/v1/tokens', { query: { user } })).items;
  }
  /** A new token; the secret is in `token`, shown once. */
  createToken(opts: { user?: string; project?: string | null; scope?: 'read' | 'write'; expires?: string } = {}) {
    return this.json<TokenRow & { token: string }>('POST', '/v1/tokens', { json: opts });
  }
  revokeToken(id: string) {
    return this.json<void>('DELETE', `/v1/tokens/${enc(id)}`);
  }

  // images
  images(q: { project?: string; visibility?: string; prefix?: string } = {}): Promise<RemoteImage[]> {
    return this.all<RemoteImage>('/v1/images', q);
  }
  image(name: string) {
    return this.json<RemoteImage>('GET', `/v1/images/${enc(name)}`);
  }
  createImage(name: string, opts: { description?: string; visibility?: string } = {}) {
    return this.json<RemoteImage>('POST', '/v1/images', { json: { name, ...opts } });
  }
  updateImage(name: string, patch: { description?: string | null; visibility?: string }) {
    return this.json<RemoteImage>('PATCH', `/v1/images/${enc(name)}`, { json: patch });
  }
  deleteImage(name: string) {
    return this.json<void>('DELETE', `/v1/images/${enc(name)}`);
  }

  // versions
  versions(name: string): Promise<RemoteVersion[]> {
    return this.all<RemoteVersion>(`/v1/images/${enc(name)}/versions`);
  }
  /** NAME, NAME@N or NAME:TAG. */
  resolve(ref: string) {
    return this.json<RemoteVersion>('GET', '/v1/resolve', { query: { ref } });
  }
  private async vpath(ref: string): Promise<{ v: RemoteVersion; path: string }> {
    const v = await this.resolve(ref);
    return { v, path: `/v1/images/${enc(v.image)}/versions/${v.number}` };
  }
  async describe(ref: string): Promise<RemoteVersion & { layout: Record<string, unknown> }> {
    const { path } = await this.vpath(ref);
    return this.json('GET', path);
  }
  async deleteVersion(ref: string) {
    const { v, path } = await this.vpath(ref);
    await this.json<void>('DELETE', path);
    return v;
  }
  async provenance(ref: string) {
    const { path } = await this.vpath(ref);
    return this.json<{
      ref: string;
      parents: Array<{ image: string; number: number }>;
      children: Array<{ image: string; number: number }>;
    }>('GET', `${path}/provenance`);
  }
  /**
   * Apply a change set to REF on the service (POST /v1/images/{name}/edits): a new version of
   * REF's image. 'file' contents are read here: small ones (up to `inlineBytes` each and in
   * all, default 64 KiB and 1 MiB) travel as bytes in the edit; the others are cut into
   * pieces of `pieceBytes` (default 4 MiB), the service is asked which it lacks and those are
   * uploaded (POST /v1/chunks, batches of 8 MiB, as a remote check-in's), and the edit names
   * them by digest: its body stays small whatever the files' sizes (the service bounds it),
   * and no file is held in memory whole.
   */
  async edit(
    ref: string,
    changes: Change[],
    opts: {
      message?: string;
      tags?: string[];
      part?: string;
      lv?: string;
      parents?: string[];
      inlineBytes?: { each: number; total: number };
      pieceBytes?: number;
    } = {},
  ): Promise<RemoteEditResult & { chunksSent: number; chunkBytesSent: number }> {
    const { inlineBytes = { each: 64 << 10, total: 1 << 20 }, pieceBytes = 4 << 20, ...body } = opts;
    const v = await this.resolve(ref);
    const wire: WireChange[] = [];
    let inlined = 0;
    let sink: RemoteSink | undefined;
    for (const c of changes) {
      if (c.op === 'put' && c.content.kind === 'file') {
        const file = c.content.path;
        const cannot = (e: unknown) =>
          new StrataError('NOT_FOUND', `put ${c.path}: cannot read ${file}: ${(e as Error).message}`, { file });
        let fh: FileHandle;
        try {
          fh = await open(file, 'r');
        } catch (e) {
          throw cannot(e);
        }
        try {
          const size = (await fh.stat()).size;
          if (size <= inlineBytes.each && inlined + size <= inlineBytes.total) {
            const data = await fh.readFile().catch((e) => Promise.reject(cannot(e)));
            inlined += data.length;
            wire.push(changeToWire(c, data));
            continue;
          }
          sink ??= new RemoteSink(this);
          const chunks: string[] = [];
          let n = 0;
          const buf = Buffer.allocUnsafe(pieceBytes);
          for (;;) {
            let got = 0;
            while (got < pieceBytes) {
              const r = await fh.read(buf, got, pieceBytes - got, null).catch((e) => Promise.reject(cannot(e)));
              if (r.bytesRead === 0) break;
              got += r.bytesRead;
            }
            if (got === 0) break;
            chunks.push((await sink.put('data', buf.subarray(0, got))).digest); // the sink copies what it keeps
            n += got;
            if (got < pieceBytes) break;
          }
          wire.push(changeToWire({ ...c, content: { kind: 'chunks', chunks, size: n } }));
        } finally {
          await fh.close();
        }
      } else if (c.op === 'put' && c.content.kind === 'version') {
        throw new StrataError('USAGE', `put ${c.path}: a version's file cannot be sent to a service as bytes here`);
      } else wire.push(changeToWire(c));
    }
    if (sink) await sink.finish();
    const r = await this.json<RemoteEditResult>('POST', `/v1/images/${enc(v.image)}/edits`, {
      json: { from: `${v.image}@${v.number}`, changes: wire, ...body },
    });
    return { ...r, chunksSent: sink?.chunksSent ?? 0, chunkBytesSent: sink?.bytesSent ?? 0 };
  }
  /**
   * `strata rebase REF --from A0 --to A1` on the service (POST /v1/images/{name}/rebases):
   * the plan, and unless conflicts stop it or it is a dry run, the new version (`version`).
   */
  async rebase(
    ref: string,
    from: string,
    to: string,
    opts: {
      prefer?: 'ours' | 'theirs';
      take?: Take[];
      part?: string;
      message?: string;
      tags?: string[];
      dryRun?: boolean;
    } = {},
  ): Promise<RebaseJson & { version?: RemoteEditResult }> {
    const v = await this.resolve(ref);
    return this.json('POST', `/v1/images/${enc(v.image)}/rebases`, {
      json: { ref: `${v.image}@${v.number}`, from, to, ...opts },
    });
  }
  /** `strata log REF` on the service: the provenance chain the caller may read, newest first. */
  async log(ref: string, opts: { limit?: number; part?: string } = {}): Promise<LogStep[]> {
    const { path } = await this.vpath(ref);
    return this.json('GET', `${path}/log`, {
      query: {
        ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
        ...(opts.part !== undefined ? { part: opts.part } : {}),
      },
    });
  }
  tag(name: string, tag: string, version: number) {
    return this.json<{ image: string; tag: string; number: number }>(
      'PUT',
      `/v1/images/${enc(name)}/tags/${enc(tag)}`,
      {
        json: { version },
      },
    );
  }
  untag(name: string, tag: string) {
    return this.json<void>('DELETE', `/v1/images/${enc(name)}/tags/${enc(tag)}`);
  }

  // members
  async members(name: string): Promise<MemberRow[]> {
    return (await this.json<{ items: MemberRow[] }>('GET', `/v1/images/${enc(name)}/members`)).items;
  }
  addMember(name: string, project: string) {
    return this.json<MemberRow>('POST', `/v1/images/${enc(name)}/members`, { json: { project } });
  }
  answerMember(name: string, project: string, status: 'accepted' | 'rejected' | 'pending') {
    return this.json<MemberRow>('PUT', `/v1/images/${enc(name)}/members/${enc(project)}`, { json: { status } });
  }
  removeMember(name: string, project: string) {
    return this.json<void>('DELETE', `/v1/images/${enc(name)}/members/${enc(project)}`);
  }

  // files, straight from the manifests
  async ls(ref: string, path = '/', opts: { recursive?: boolean; part?: string } = {}): Promise<RemoteFileEntry[]> {
    const p = await this.vpath(ref);
    return this.all<RemoteFileEntry>(`${p.path}/files`, { path, recursive: opts.recursive, part: opts.part });
  }
  async stat(ref: string, path: string, opts: { part?: string; follow?: boolean } = {}): Promise<RemoteFileEntry> {
    const p = await this.vpath(ref);
    return this.json('GET', `${p.path}/files/stat`, { query: { path, part: opts.part, follow: opts.follow } });
  }
  /** Where a file's bytes sit on the version's disk (read from its file system, not the manifest). */
  async extents(ref: string, path: string, opts: { part?: string; follow?: boolean } = {}): Promise<RemoteFileExtents> {
    const p = await this.vpath(ref);
    return this.json('GET', `${p.path}/files/extents`, { query: { path, part: opts.part, follow: opts.follow } });
  }
  /** A file's bytes (or [start, end) of them) as the response body stream. */
  async cat(ref: string, path: string, opts: { part?: string; range?: [number, number] } = {}): Promise<Response> {
    const p = await this.vpath(ref);
    return this.fetch('GET', `${p.path}/files/content`, {
      query: { path, part: opts.part },
      headers: opts.range ? { range: `bytes=${opts.range[0]}-${opts.range[1] - 1}` } : {},
    });
  }
  /** The raw virtual disk (or a range of it). */
  async download(ref: string, range?: [number, number]): Promise<{ v: RemoteVersion; res: Response }> {
    const p = await this.vpath(ref);
    const res = await this.fetch('GET', `${p.path}/disk`, {
      headers: range ? { range: `bytes=${range[0]}-${range[1] - 1}` } : {},
    });
    return { v: p.v, res };
  }
  async inspection(ref: string) {
    const p = await this.vpath(ref);
    return this.json<Record<string, unknown>>('GET', `${p.path}/inspection`);
  }
  /**
   * The boot profile a deploy of REF uses (the version's own, else the nearest earlier one of
   * its image, else a readable parent's), checked; undefined when there is none. `exact`:
   * only the version's own.
   */
  async profile(ref: string, opts: { exact?: boolean } = {}): Promise<BootProfile | undefined> {
    const p = await this.vpath(ref);
    let got: unknown;
    try {
      got = await this.json('GET', `${p.path}/profile`, { query: { exact: opts.exact || undefined } });
    } catch (e) {
      if (e instanceof RemoteError && e.status === 404 && e.problem?.type?.endsWith('/no-profile')) return undefined;
      throw e;
    }
    return checkProfile(got, `${this.url}${p.path}/profile`);
  }
  /** Store a profile with the version it was recorded on (replacing its own). */
  async putProfile(profile: BootProfile): Promise<{ image: string; number: number; entries: number; bytes: number }> {
    return this.json('PUT', `/v1/images/${enc(profile.image)}/versions/${profile.number}/profile`, { json: profile });
  }
  /** Send a trace of a boot of REF (`strata nbd/deploy --trace`); the service records and stores its profile. */
  async recordProfile(ref: string, trace: Uint8Array, name: string): Promise<BootProfile> {
    const p = await this.vpath(ref);
    return checkProfile(
      await this.json('POST', `${p.path}/profile`, { body: trace, query: { trace: name } }),
      `${this.url}${p.path}/profile`,
    );
  }
  diff(a: string, b: string, opts: { part?: string; packages?: boolean; blocks?: boolean } = {}) {
    return this.json<VersionDiff>('GET', '/v1/diff', { query: { a, b, ...opts } });
  }
  search(q: SearchQuery): Promise<SearchHit[]> {
    return this.all<SearchHit>('/v1/search', q as Record<string, unknown>);
  }
  storage(project?: string) {
    return this.json<{ images: Usage[]; projects: Usage[]; total: Usage }>('GET', '/v1/storage', {
      query: { project },
    });
  }

  // chunks
  async missing(digests: string[]): Promise<string[]> {
    return (await this.json<{ missing: string[] }>('POST', '/v1/chunks/missing', { json: { digests } })).missing;
  }
  /** Upload chunks (plain bytes; the server checks each digest). */
  uploadChunks(chunks: Array<{ digest: string; data: Uint8Array }>) {
    return this.json<{ received: number; added: number; bytes: number }>('POST', '/v1/chunks', {
      body: encodeChunkRecords(chunks),
    });
  }
  /** A chunk (or manifest) the caller may read, checked against its digest. */
  async chunk(digest: string): Promise<Uint8Array> {
    const b = (await this.call('GET', `/v1/chunks/${digest}`)).body;
    const got = createHash('sha256').update(b).digest('hex');
    if (got !== digest) {
      throw new StrataError('CORRUPT', `chunk ${digest} from the library service hashes to ${got}`, {
        file: this.url,
      });
    }
    return b;
  }

  /**
   * A version as a ByteSource read on demand: its layout manifest, then the chunks each
   * read needs, fetched from the service (each checked against its digest; the last
   * `cacheChunks` kept). What `strata nbd REF --remote URL` serves.
   */
  async versionSource(
    ref: string,
    opts: { cacheChunks?: number } = {},
  ): Promise<{ v: RemoteVersion; source: RangedSource }> {
    const v = await this.resolve(ref);
    const cache = new Map<string, Promise<Uint8Array>>();
    const max = opts.cacheChunks ?? 32;
    const reader = {
      withBlob: async <T>(digest: string, use: (plain: Uint8Array) => T): Promise<T> => {
        let p = cache.get(digest);
        if (p) cache.delete(digest);
        else p = this.chunk(digest);
        cache.set(digest, p);
        p.catch(() => cache.delete(digest));
        while (cache.size > max) cache.delete(cache.keys().next().value as string);
        return use(await p);
      },
    };
    // a layout in parts is fetched a part at a time, as the reads need them
    const source = layoutSource(
      reader,
      await this.chunk(v.manifest),
      `manifest ${v.manifest}`,
      `${this.url}#${v.image}@${v.number}`,
      (d) => this.chunk(d),
    );
    return { v, source };
  }
  commit(
    name: string,
    body: {
      layout: unknown;
      files?: unknown[];
      parents?: string[];
      tags?: string[];
      description?: string;
      visibility?: string;
    },
  ) {
    return this.json<RemoteVersion & { warnings: string[] }>('POST', `/v1/images/${enc(name)}/versions`, {
      json: body,
    });
  }
}

/** The upload body: per chunk its sha256 (32 bytes), length (u32 big-endian) and bytes. */
export function encodeChunkRecords(chunks: Array<{ digest: string; data: Uint8Array }>): Uint8Array {
  let n = 0;
  for (const c of chunks) n += 36 + c.data.length;
  const out = Buffer.allocUnsafe(n);
  let o = 0;
  for (const c of chunks) {
    Buffer.from(c.digest, 'hex').copy(out, o);
    out.writeUInt32BE(c.data.length, o + 32);
    out.set(c.data, o + 36);
    o += 36 + c.data.length;
  }
  return out;
}

/**
 * A check-in's sink that stands for a remote library: chunks gather into batches; per
 * batch the server says which it lacks (of those this project may see) and only those
 * are sent. File manifests are kept for the commit.
 */
export class RemoteSink {
  private batch: Array<{ digest: string; data: Uint8Array }> = [];
  private batchBytes = 0;
  private readonly seen = new Set<string>();
  private chain: Promise<void> = Promise.resolve();
  private failed: unknown;
  readonly trees = new Map<string, Uint8Array>();
  chunksOffered = 0;
  chunksSent = 0;
  bytesOffered = 0;
  bytesSent = 0;
  batches = 0;

  constructor(
    private readonly remote: RemoteLibrary,
    private readonly maxBatch = 8 * 1024 * 1024,
  ) {}

  async put(type: 'data' | 'tree', plain: Uint8Array, digest?: string): Promise<PutResult> {
    const d = digest ?? createHash('sha256').update(plain).digest('hex');
    if (type === 'tree') {
      this.trees.set(d, Buffer.from(plain));
      return { digest: d, added: false };
    }
    if (this.failed) throw this.failed;
    if (this.seen.has(d)) return { digest: d, added: false };
    this.seen.add(d);
    this.chunksOffered++;
    this.bytesOffered += plain.length;
    this.batch.push({ digest: d, data: Buffer.from(plain) }); // the cutter reuses its buffer
    this.batchBytes += plain.length;
    if (this.batchBytes >= this.maxBatch) await this.send();
    return { digest: d, added: false };
  }

  /** Hand the current batch over; at most one batch in flight while the next fills. */
  private async send(): Promise<void> {
    const batch = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    const prev = this.chain;
    this.chain = (async () => {
      await prev;
      if (this.failed || batch.length === 0) return;
      try {
        const missing = new Set(await this.remote.missing(batch.map((c) => c.digest)));
        const todo = batch.filter((c) => missing.has(c.digest));
        if (todo.length > 0) await this.remote.uploadChunks(todo);
        this.batches++;
        this.chunksSent += todo.length;
        for (const c of todo) this.bytesSent += c.data.length;
      } catch (e) {
        this.failed = e;
      }
    })();
    await prev;
    if (this.failed) throw this.failed;
  }

  async finish(): Promise<void> {
    await this.send();
    await this.chain;
    if (this.failed) throw this.failed;
  }
}

export interface RemoteCheckinOptions extends CutOptions {
  name: string;
  parents?: string[];
  tags?: string[];
  description?: string;
  visibility?: string;
  /** Bytes of chunks per missing-query and upload (default 8 MiB). */
  batchBytes?: number;
  /** The other devices of a btrfs over several (`--device FILE`), as for a local check-in. */
  devices?: string[];
}

export interface RemoteCheckinResult {
  ref: string;
  image: string;
  number: number;
  manifest: string;
  virtualSize: number;
  usedBytes: number;
  chunks: number;
  /** Chunks and plain bytes sent (the rest the server already held for this project). */
  chunksSent: number;
  chunkBytesSent: number;
  /** Every request body byte sent: chunk records, missing-queries, the commit. */
  requestBytes: number;
  warnings: string[];
}

/**
 * Check an image into a remote library: cut locally exactly as a local check-in does,
 * ask the server which chunks it lacks, upload those, then commit the manifests (the
 * server makes the version only when it holds every chunk they name).
 */
export async function remoteCheckin(
  remote: RemoteLibrary,
  image: string,
  opts: RemoteCheckinOptions,
): Promise<RemoteCheckinResult> {
  const [{ openImage }, { closeChain }] = await Promise.all([
    import('../../formats/open.js'),
    import('../../formats/layer.js'),
  ]);
  // an overlay made by `strata nbd REF --remote URL --overlay` backs onto a version of the
  // service (strata-library:<manifest digest>, library/backing.ts): read through its chunks
  let bootedFrom: RemoteVersion | undefined;
  const img = await openImage(image, {
    ...opts.openOptions,
    resolveBacking: async (ref, from) => {
      const digest = parseLibraryBacking(ref.path, from);
      if (digest === undefined) return opts.openOptions?.resolveBacking?.(ref, from);
      let got: Awaited<ReturnType<RemoteLibrary['versionSource']>>;
      try {
        got = await remote.versionSource(digest);
      } catch (e) {
        throw new StrataError(
          'NOT_FOUND',
          `backing version (manifest ${digest}) is not readable at ${remote.url}: ${(e as Error).message}`,
          { file: from, structure: 'backing file name' },
          { cause: e },
        );
      }
      bootedFrom = got.v;
      return versionDiskImage(got.source);
    },
  });
  // no --parent: the version the overlay was booted from (the server's default is the latest of NAME)
  const parents = opts.parents ?? (bootedFrom ? [`${bootedFrom.image}@${bootedFrom.number}`] : undefined);
  const before = remote.bytesSent;
  let deviceImages: DiskImage[] = [];
  try {
    const fsOptions: CutOptions['fsOptions'] = {};
    if (opts.devices && opts.devices.length > 0) {
      const d = await openDeviceTargets(opts.devices, opts.openOptions);
      deviceImages = d.images;
      fsOptions.devices = d.devices;
    }
    const sink = new RemoteSink(remote, opts.batchBytes);
    // the server's commit takes whole (version 1) file manifests
    const cut = await cutImage(img, image, sink, { ...opts, inlineFileManifests: true, fsOptions });
    await sink.finish();
    const files: FilesManifest[] = [];
    for (const v of cut.layout.volumes) {
      const t = v.fs ? sink.trees.get(v.fs.files) : undefined;
      if (t) files.push(JSON.parse(Buffer.from(t).toString('utf8')) as FilesManifest);
    }
    const row = await remote.commit(opts.name, {
      layout: cut.layout,
      files,
      parents,
      tags: opts.tags,
      description: opts.description,
      visibility: opts.visibility,
    });
    return {
      ref: row.ref,
      image: row.image,
      number: row.number,
      manifest: row.manifest,
      virtualSize: row.virtualSize,
      usedBytes: row.usedBytes,
      chunks: cut.chunks,
      chunksSent: sink.chunksSent,
      chunkBytesSent: sink.bytesSent,
      requestBytes: remote.bytesSent - before,
      warnings: [...cut.warnings, ...row.warnings],
    };
  } finally {
    for (const d of deviceImages) await closeChain(d).catch(() => {});
    await closeChain(img);
  }
}

/** Checkout from a library service: the raw disk streamed, written sparse (raw) or as qcow2. */
export async function remoteCheckout(
  remote: RemoteLibrary,
  ref: string,
  out: string,
  opts: { format?: 'raw' | 'qcow2'; sync?: boolean } = {},
) {
  const format = opts.format ?? 'raw';
  const sync = !!opts.sync;
  if (format !== 'raw' && format !== 'qcow2') {
    throw new StrataError('USAGE', `unknown output format '${format}' (known: raw, qcow2)`, { file: out });
  }
  const [{ openAtomicOutput }, { RawWriter, Qcow2Writer }] = await Promise.all([
    import('../../formats/writers/atomic-output.js'),
    import('../../formats/writers/index.js'),
  ]);
  const { v, res } = await remote.download(ref);
  const size = v.virtualSize;
  const dest = await openAtomicOutput(out);
  try {
    const writer =
      format === 'raw'
        ? await RawWriter.create(dest.fh, out, size)
        : await Qcow2Writer.create(dest.fh, out, { virtualSize: size });
    const W = 4 * 1024 * 1024;
    const buf = Buffer.alloc(W);
    let fill = 0;
    let at = 0;
    let got = 0;
    const emit = async () => {
      if (fill > 0) await writer.writeData(at, buf.subarray(0, fill));
      at += fill;
      fill = 0;
    };
    for await (const b of res.body as unknown as AsyncIterable<Uint8Array>) {
      got += b.length;
      for (let o = 0; o < b.length; ) {
        const n = Math.min(W - fill, b.length - o);
        buf.set(b.subarray(o, o + n), fill);
        fill += n;
        o += n;
        if (fill === W) await emit();
      }
    }
    await emit();
    if (got !== size)
      throw new StrataError('TRUNCATED', `the service sent ${got} of ${size} bytes`, { file: remote.url });
    const { bytesWritten } = await writer.finish();
    await dest.commit(sync);
    return { ref: v.ref, output: out, format, virtualSize: size, dataBytes: v.usedBytes, bytesWritten };
  } catch (e) {
    await dest.abort();
    throw e;
  }
}
