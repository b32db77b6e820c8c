import { readFileSync } from 'node:fs';
import type { Db } from '../catalog/db.js';
import { StrataError } from '../util/errors.js';

/**
 * The request-log model the analytics read: one normalised record per image request,
 * whatever wrote it (a library service's request_log table, a log file from the generator
 * or from another site's exporter).
 *
 * Log file formats (one request per line, in any order; records are sorted by time on read):
 * - JSONL: one JSON object per line with the fields of {@link ImageRequest} (`at` as an ISO
 *   time or milliseconds since the epoch). Blank lines are skipped.
 * - An NBD trace (`strata nbd --trace`, `strata deploy --trace`): each session becomes one
 *   request (see {@link TraceOptions}).
 * - The host request log `strata deploy` appends (DIR/requests.jsonl of its chunk cache, or
 *   `--request-log FILE`) is JSONL of this very format, op `deploy`.
 * - CSV: a header line naming the columns (the same names; any order; `version`, `owner`,
 *   `public`, `base`, `changed` may be missing or empty), then one row per request; no
 *   quoting (names in Strata never hold commas).
 *
 * Fields: `at` when the request was answered; `user` who asked; `project` the
 * organisation the request came from (the token's project); `image` and `version` what was
 * asked for; `op` the service operation; `bytes` the size of what was delivered (the
 * version's bytes for a deploy or download); `owner` the project that owns the image
 * (decides facility vs user images); `public` whether the image is public; `base` the
 * `image@version` it derives from and `changed` the share of its blocks that differ from
 * that base (chunk-level simulation and dedup estimates use both when present).
 */
export interface ImageRequest {
  /** Milliseconds since the epoch. */
  at: number;
  user: string;
  project: string;
  image: string;
  version: number | null;
  op: string;
  bytes: number;
  owner?: string;
  public?: boolean;
  base?: string;
  changed?: number;
}

export interface LogFilter {
  /** Keep requests at or after this time (ms). */
  since?: number;
  /** Keep requests before this time (ms). */
  until?: number;
  /** Keep only these operations (default: every request naming an image). */
  ops?: readonly string[];
}

/** `2026-01-02`, `2026-01-02T03:04:05Z` or milliseconds -> milliseconds since the epoch. */
export function parseTime(s: string, what = 'time'): number {
  const t = /^\d{1,15}$/.test(s) ? Number(s) : Date.parse(s);
  if (!Number.isFinite(t)) throw new StrataError('USAGE', `bad ${what} ${JSON.stringify(s)} (an ISO date or time)`);
  return t;
}

export function applyFilter(rs: ImageRequest[], f: LogFilter = {}): ImageRequest[] {
  const ops = f.ops ? new Set(f.ops) : undefined;
  return rs.filter(
    (r) =>
      (f.since === undefined || r.at >= f.since) &&
      (f.until === undefined || r.at < f.until) &&
      (ops === undefined || ops.has(r.op)),
  );
}

function sortByTime(rs: ImageRequest[]): ImageRequest[] {
  // stable: requests of the same millisecond keep the log's order
  return rs.sort((a, b) => a.at - b.at);
}

const REQUIRED = ['at', 'user', 'project', 'image', 'op', 'bytes'] as const;

function bad(file: string, line: number, offset: number, why: string): StrataError {
  return new StrataError('CORRUPT', `request log line ${line}: ${why}`, { file, offset });
}

/** One record from loosely typed fields; throws naming the file, line and byte offset. */
function record(o: Record<string, unknown>, file: string, line: number, offset: number): ImageRequest {
  for (const k of REQUIRED) {
    if (o[k] === undefined || o[k] === null || o[k] === '') throw bad(file, line, offset, `no ${k}`);
  }
  const atRaw = o.at;
  const at =
    typeof atRaw === 'number' ? atRaw : /^\d+$/.test(String(atRaw)) ? Number(atRaw) : Date.parse(String(atRaw));
  if (!Number.isFinite(at)) throw bad(file, line, offset, `bad time ${JSON.stringify(atRaw)}`);
  const bytes = Number(o.bytes);
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw bad(file, line, offset, `bad bytes ${JSON.stringify(o.bytes)}`);
  const r: ImageRequest = {
    at,
    user: String(o.user),
    project: String(o.project),
    image: String(o.image),
    version: null,
    op: String(o.op),
    bytes,
  };
  if (o.version !== undefined && o.version !== null && o.version !== '') {
    const v = Number(o.version);
    if (!Number.isSafeInteger(v) || v < 0) throw bad(file, line, offset, `bad version ${JSON.stringify(o.version)}`);
    r.version = v;
  }
  if (o.owner !== undefined && o.owner !== null && o.owner !== '') r.owner = String(o.owner);
  if (o.public !== undefined && o.public !== null && o.public !== '')
    r.public = o.public === true || o.public === 'true';
  if (o.base !== undefined && o.base !== null && o.base !== '') r.base = String(o.base);
  if (o.changed !== undefined && o.changed !== null && o.changed !== '') {
    const c = Number(o.changed);
    if (!(c >= 0 && c <= 1)) throw bad(file, line, offset, `bad changed share ${JSON.stringify(o.changed)}`);
    r.changed = c;
  }
  return r;
}

/**
 * An NBD server's `--trace` (strata nbd, strata deploy): one JSON line per NBD request
 * `{time, export, conn, op, offset, length, ...}`. A session, the reads one connection made of
 * one export, is one image request: `at` its first request, `image`/`version` from the
 * export name (`NAME@N` a version, `NAME:TAG` or a file name an image with no version
 * number), `bytes` what its reads delivered, `op` `nbd`, user and project `nbd` (a trace
 * does not say who connected). Connection numbers restart with the server, so a connection
 * silent for more than `sessionGapMs` (default 30 min) that speaks again is a new session.
 */
export interface TraceOptions {
  sessionGapMs?: number;
}

/** `NAME@N` -> {NAME, N}; anything else -> {itself, null}; the empty name (deploy's default) -> `(unnamed export)`. */
export function exportVersion(name: string): { image: string; version: number | null } {
  const m = /^(.+)@(\d+)$/.exec(name);
  if (m) return { image: m[1], version: Number(m[2]) };
  const t = /^([^:/]+):[^:/]+$/.exec(name);
  if (t) return { image: t[1], version: null };
  return { image: name === '' ? '(unnamed export)' : name, version: null };
}

function isTraceRecord(o: Record<string, unknown>): boolean {
  return 'conn' in o && 'export' in o && 'time' in o && 'offset' in o;
}

interface Session {
  key: string;
  first: number;
  last: number;
  bytes: number;
  exp: string;
}

function traceRequests(sessions: Session[]): ImageRequest[] {
  const out: ImageRequest[] = [];
  for (const s of sessions) {
    const { image, version } = exportVersion(s.exp);
    out.push({ at: s.first, user: 'nbd', project: 'nbd', image, version, op: 'nbd', bytes: s.bytes });
  }
  return out;
}

/** Parse a JSONL or CSV request log, or an NBD trace (told apart by the first line: `{` is JSON, with `conn` and `export` a trace). */
export function parseRequestLog(text: string, file = 'request log', opts: TraceOptions = {}): ImageRequest[] {
  const out: ImageRequest[] = [];
  const gap = opts.sessionGapMs ?? 30 * 60_000;
  let trace: boolean | undefined;
  const open = new Map<string, Session>();
  const closed: Session[] = [];
  let offset = 0;
  let line = 0;
  let header: string[] | undefined;
  let csv: boolean | undefined;
  while (offset < text.length) {
    let end = text.indexOf('\n', offset);
    if (end < 0) end = text.length;
    line++;
    const s = text.slice(offset, end).replace(/\r$/, '');
    const at = offset;
    offset = end + 1;
    if (s.trim() === '') continue;
    if (csv === undefined) csv = !s.trimStart().startsWith('{');
    if (!csv) {
      let o: unknown;
      try {
        o = JSON.parse(s);
      } catch (e) {
        throw bad(file, line, at, `not JSON (${(e as Error).message})`);
      }
      if (typeof o !== 'object' || o === null || Array.isArray(o)) throw bad(file, line, at, 'not a JSON object');
      const rec = o as Record<string, unknown>;
      trace ??= isTraceRecord(rec);
      if (!trace) {
        out.push(record(rec, file, line, at));
        continue;
      }
      if (rec.op === 'dropped') continue; // the writer's count of what it could not keep up with
      const time = Number(rec.time);
      const conn = rec.conn;
      const length = Number(rec.length);
      if (
        !Number.isFinite(time) ||
        (typeof conn !== 'number' && typeof conn !== 'string') ||
        typeof rec.export !== 'string'
      )
        throw bad(file, line, at, 'not an NBD trace record (time, conn, export)');
      if (!Number.isSafeInteger(length) || length < 0)
        throw bad(file, line, at, `bad length ${JSON.stringify(rec.length)}`);
      const key = `${conn}\u0000${rec.export}`;
      let sess = open.get(key);
      if (sess && time - sess.last > gap) {
        closed.push(sess);
        sess = undefined;
      }
      if (!sess) {
        sess = { key, first: time, last: time, bytes: 0, exp: rec.export };
        open.set(key, sess);
      }
      sess.first = Math.min(sess.first, time);
      sess.last = Math.max(sess.last, time);
      if (rec.op === 'read' && rec.error === undefined) sess.bytes += length;
    } else if (!header) {
      header = s.split(',').map((x) => x.trim());
      for (const k of REQUIRED) if (!header.includes(k)) throw bad(file, line, at, `CSV header has no ${k} column`);
    } else {
      const cells = s.split(',');
      if (cells.length !== header.length)
        throw bad(file, line, at, `${cells.length} cells, the header names ${header.length}`);
      const o: Record<string, unknown> = {};
      for (let i = 0; i < header.length; i++) o[header[i]] = cells[i];
      out.push(record(o, file, line, at));
    }
  }
  if (trace) return sortByTime(traceRequests([...closed, ...open.values()]));
  return sortByTime(out);
}

export function readRequestLog(file: string, filter: LogFilter = {}, opts: TraceOptions = {}): ImageRequest[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new StrataError('NOT_FOUND', `cannot read the request log: ${(e as Error).message}`, { file });
  }
  return applyFilter(parseRequestLog(text, file, opts), filter);
}

/** Records as JSONL (the generator's output and what parseRequestLog reads back). */
export function formatJsonl(r: ImageRequest): string {
  const o: Record<string, unknown> = {
    at: new Date(r.at).toISOString(),
    user: r.user,
    project: r.project,
    image: r.image,
    version: r.version,
    op: r.op,
    bytes: r.bytes,
  };
  if (r.owner !== undefined) o.owner = r.owner;
  if (r.public !== undefined) o.public = r.public;
  if (r.base !== undefined) o.base = r.base;
  if (r.changed !== undefined) o.changed = r.changed;
  return JSON.stringify(o);
}

/**
 * The request log of a library service's catalog (table request_log, written by `strata
 * serve`), SQLite or PostgreSQL alike: every answered (status < 400) request that names an
 * image. The owner project and visibility come from image_access; a request's bytes are the
 * version's used bytes when the version is known to the catalog (what a deploy of it
 * moves), else the bytes the response carried. Anonymous requests count as user
 * `anonymous` of project `anonymous`.
 */
export async function readCatalogLog(db: Db, filter: LogFilter = {}): Promise<ImageRequest[]> {
  const where = ['image IS NOT NULL', 'status < 400'];
  const params: Array<string | number> = [];
  if (filter.since !== undefined) {
    where.push('at >= ?');
    params.push(new Date(filter.since).toISOString());
  }
  if (filter.until !== undefined) {
    where.push('at < ?');
    params.push(new Date(filter.until).toISOString());
  }
  const hasLog = await db
    .get('SELECT 1 AS one FROM request_log WHERE 1 = 0')
    .then(() => true)
    .catch(() => false);
  if (!hasLog) {
    throw new StrataError('NOT_FOUND', "the library's catalog has no request log (strata serve writes one)", {
      file: 'request_log',
    });
  }
  const rows = await db.all<{
    at: string;
    username: string | null;
    project: string | null;
    op: string;
    image: string;
    version: number | string | null;
    bytes_out: number | string;
  }>(
    `SELECT at, username, project, op, image, version, bytes_out FROM request_log WHERE ${where.join(' AND ')} ORDER BY at`,
    params,
  );
  const owners = new Map<string, { project: string; visibility: string }>();
  for (const a of await db.all<{ image: string; project: string; visibility: string }>(
    'SELECT image, project, visibility FROM image_access',
  ))
    owners.set(a.image, a);
  const sizes = new Map<string, { used: number; parent: string | null }>();
  for (const v of await db
    .all<{ image: string; number: number | string; used_bytes: number | string }>(
      'SELECT image, number, used_bytes FROM versions',
    )
    .catch(() => []))
    sizes.set(`${v.image}@${Number(v.number)}`, { used: Number(v.used_bytes), parent: null });
  const out: ImageRequest[] = [];
  for (const r of rows) {
    const version = r.version === null ? null : Number(r.version);
    const size = version === null ? undefined : sizes.get(`${r.image}@${version}`);
    const rec: ImageRequest = {
      at: Date.parse(r.at),
      user: r.username ?? 'anonymous',
      project: r.project ?? 'anonymous',
      image: r.image,
      version,
      op: r.op,
      bytes: size ? size.used : Number(r.bytes_out),
    };
    const own = owners.get(r.image);
    if (own) {
      rec.owner = own.project;
      rec.public = own.visibility === 'public';
    }
    out.push(rec);
  }
  return applyFilter(sortByTime(out), { ops: filter.ops });
}
