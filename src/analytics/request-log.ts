import { closeSync, openSync, readSync } from 'node:fs';
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

/**
 * A request log, line by line, from bytes: JSONL records, CSV rows or NBD trace records
 * (told apart by the first line that is not blank: `{` is JSON, with `conn` and `export` a
 * trace). Lines come as byte ranges of a buffer (a whole text, or a file read in pieces) so
 * a million-line log is never one string; a JSONL record in the shape the generator and the
 * services write (a flat object of strings, numbers, booleans and null, no escapes) is read
 * straight from its bytes ({@link fastRecord}), anything else through JSON.parse.
 */
class LogParser {
  private readonly gap: number;
  private trace: boolean | undefined;
  private readonly open = new Map<string, Session>();
  private readonly closed: Session[] = [];
  private header: string[] | undefined;
  private csv: boolean | undefined;
  private line = 0;
  private readonly strings = new Interner();

  /** `out`: takes each record in the log's order (a trace's sessions at finish). */
  constructor(
    private readonly file: string,
    opts: TraceOptions,
    private readonly out: (r: ImageRequest) => void,
  ) {
    this.gap = opts.sessionGapMs ?? 30 * 60_000;
  }

  /** The line buf[start, end) (no '\n'), at byte `offset` of the file. */
  take(buf: Buffer, start: number, end: number, offset: number): void {
    this.line++;
    if (end > start && buf[end - 1] === 13) end--; // \r\n
    let first = start;
    while (first < end && isSpace(buf[first])) first++;
    if (first === end) return;
    if (this.csv === undefined) this.csv = buf[first] !== 123; // '{'
    if (this.csv) {
      this.csvLine(buf.toString('utf8', start, end), offset);
      return;
    }
    if (this.trace === false && buf[first] === 123) {
      const r = fastRecord(buf, first, end, this.strings);
      if (r) {
        this.out(r);
        return;
      }
    }
    let o: unknown;
    try {
      o = JSON.parse(buf.toString('utf8', start, end));
    } catch (e) {
      throw bad(this.file, this.line, offset, `not JSON (${(e as Error).message})`);
    }
    if (typeof o !== 'object' || o === null || Array.isArray(o))
      throw bad(this.file, this.line, offset, 'not a JSON object');
    const rec = o as Record<string, unknown>;
    this.trace ??= isTraceRecord(rec);
    if (this.trace) this.traceLine(rec, offset);
    else this.out(record(rec, this.file, this.line, offset));
  }

  private traceLine(rec: Record<string, unknown>, at: number): void {
    if (rec.op === 'dropped') return; // the writer's count of what it could not keep up with
    const time = Number(rec.time);
    const conn = rec.conn;
    const length = Number(rec.length);
    if (
      !Number.isFinite(time) ||
      (typeof conn !== 'number' && typeof conn !== 'string') ||
      typeof rec.export !== 'string'
    )
      throw bad(this.file, this.line, at, 'not an NBD trace record (time, conn, export)');
    if (!Number.isSafeInteger(length) || length < 0)
      throw bad(this.file, this.line, at, `bad length ${JSON.stringify(rec.length)}`);
    const key = `${conn}\u0000${rec.export}`;
    let sess = this.open.get(key);
    if (sess && time - sess.last > this.gap) {
      this.closed.push(sess);
      sess = undefined;
    }
    if (!sess) {
      sess = { key, first: time, last: time, bytes: 0, exp: rec.export };
      this.open.set(key, sess);
    }
    sess.first = Math.min(sess.first, time);
    sess.last = Math.max(sess.last, time);
    if (rec.op === 'read' && rec.error === undefined) sess.bytes += length;
  }

  private csvLine(s: string, at: number): void {
    if (!this.header) {
      this.header = s.split(',').map((x) => x.trim());
      for (const k of REQUIRED)
        if (!this.header.includes(k)) throw bad(this.file, this.line, at, `CSV header has no ${k} column`);
      return;
    }
    const cells = s.split(',');
    if (cells.length !== this.header.length)
      throw bad(this.file, this.line, at, `${cells.length} cells, the header names ${this.header.length}`);
    const o: Record<string, unknown> = {};
    for (let i = 0; i < this.header.length; i++) o[this.header[i]] = cells[i];
    this.out(record(o, this.file, this.line, at));
  }

  /** The end of the log: a trace's sessions go out (the order they were opened or closed in). */
  finish(): void {
    if (this.trace) for (const r of traceRequests([...this.closed, ...this.open.values()])) this.out(r);
  }
}

const isSpace = (c: number) => c === 32 || c === 9 || c === 13 || c === 10;

/** The first index at or after i, before e, that is not JSON white space. */
function skip(b: Buffer, i: number, e: number): number {
  while (i < e && isSpace(b[i])) i++;
  return i;
}

/**
 * Strings that repeat (users, projects, images, operations, owners) as one string each: a
 * million records name a few thousand of them, so the log holds a few thousand strings, not
 * five million. An open-addressing table keyed by the bytes' FNV-1a hash; a slot is compared
 * byte by byte (ASCII only; other strings are not interned). Bounded: once full it stops
 * adding and every further new string is simply made.
 */
class Interner {
  private readonly size = 1 << 16;
  private readonly hashes = new Int32Array(this.size);
  private readonly values: Array<string | undefined> = new Array(this.size);
  private count = 0;

  get(buf: Buffer, start: number, end: number): string {
    let h = 0x811c9dc5 | 0;
    for (let i = start; i < end; i++) h = Math.imul(h ^ buf[i], 0x01000193);
    const mask = this.size - 1;
    for (let slot = h & mask, probes = 0; probes < 64; slot = (slot + 1) & mask, probes++) {
      const v = this.values[slot];
      if (v === undefined) {
        const s = buf.toString('latin1', start, end);
        if (this.count < this.size >> 1) {
          this.values[slot] = s;
          this.hashes[slot] = h;
          this.count++;
        }
        return s;
      }
      if (this.hashes[slot] === h && v.length === end - start) {
        let same = true;
        for (let i = 0; i < v.length; i++)
          if (v.charCodeAt(i) !== buf[start + i]) {
            same = false;
            break;
          }
        if (same) return v;
      }
    }
    return buf.toString('latin1', start, end);
  }
}

enum Key {
  Other,
  At,
  User,
  Project,
  Image,
  Version,
  Op,
  Bytes,
  Owner,
  Public,
  Base,
  Changed,
}

/** Whether buf holds the ASCII word w at s. */
function same(b: Buffer, s: number, w: string): boolean {
  for (let i = 0; i < w.length; i++) if (b[s + i] !== w.charCodeAt(i)) return false;
  return true;
}

/** Which field the key buf[s, e) names (no string made). */
function keyOf(b: Buffer, s: number, e: number): Key {
  const c = b[s];
  switch (e - s) {
    case 2:
      if (c === 97 && b[s + 1] === 116) return Key.At; // at
      if (c === 111 && b[s + 1] === 112) return Key.Op; // op
      return Key.Other;
    case 4:
      if (c === 117 && same(b, s, 'user')) return Key.User;
      if (c === 98 && same(b, s, 'base')) return Key.Base;
      return Key.Other;
    case 5:
      if (c === 105 && same(b, s, 'image')) return Key.Image;
      if (c === 98 && same(b, s, 'bytes')) return Key.Bytes;
      if (c === 111 && same(b, s, 'owner')) return Key.Owner;
      return Key.Other;
    case 6:
      return c === 112 && same(b, s, 'public') ? Key.Public : Key.Other;
    case 7:
      if (c === 112 && same(b, s, 'project')) return Key.Project;
      if (c === 118 && same(b, s, 'version')) return Key.Version;
      if (c === 99 && same(b, s, 'changed')) return Key.Changed;
      return Key.Other;
    default:
      return Key.Other;
  }
}

const DIGIT = (c: number) => c >= 48 && c <= 57;

/**
 * The end of the JSON number that starts at buf[s] (before e): -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?,
 * or -1 when what is there is not one.
 */
function numberEnd(b: Buffer, s: number, e: number): number {
  let i = s;
  if (b[i] === 45) i++;
  if (i >= e || !DIGIT(b[i])) return -1;
  if (b[i] === 48) i++;
  else while (i < e && DIGIT(b[i])) i++;
  if (i < e && b[i] === 46) {
    i++;
    if (i >= e || !DIGIT(b[i])) return -1;
    while (i < e && DIGIT(b[i])) i++;
  }
  if (i < e && (b[i] === 101 || b[i] === 69)) {
    i++;
    if (i < e && (b[i] === 43 || b[i] === 45)) i++;
    if (i >= e || !DIGIT(b[i])) return -1;
    while (i < e && DIGIT(b[i])) i++;
  }
  return i;
}

/** Two or more digits at buf[s, s+n) as a number; -1 when one is not a digit. */
function digits(b: Buffer, s: number, n: number): number {
  let v = 0;
  for (let i = s; i < s + n; i++) {
    const c = b[i];
    if (c < 48 || c > 57) return -1;
    v = v * 10 + (c - 48);
  }
  return v;
}

/** The days of month m (1-12) of year y. */
function monthDays(y: number, m: number): number {
  if (m !== 2) return m === 4 || m === 6 || m === 9 || m === 11 ? 30 : 31;
  return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28;
}

/** Days from 1970-01-01 to y-m-d (proleptic Gregorian; Hinnant's days_from_civil). */
function daysFromCivil(y: number, m: number, d: number): number {
  y -= m <= 2 ? 1 : 0;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

/**
 * `YYYY-MM-DDTHH:MM:SS.sssZ` (what toISOString writes) at buf[s, e) as milliseconds; NaN for
 * any other spelling or a field out of the calendar's ranges (Date.parse decides those).
 */
function isoMs(b: Buffer, s: number, e: number): number {
  if (e - s !== 24 || b[s + 4] !== 45 || b[s + 7] !== 45 || b[s + 10] !== 84 || b[s + 13] !== 58) return Number.NaN;
  if (b[s + 16] !== 58 || b[s + 19] !== 46 || b[s + 23] !== 90) return Number.NaN;
  const y = digits(b, s, 4);
  const mo = digits(b, s + 5, 2);
  const d = digits(b, s + 8, 2);
  const h = digits(b, s + 11, 2);
  const mi = digits(b, s + 14, 2);
  const sec = digits(b, s + 17, 2);
  const ms = digits(b, s + 20, 3);
  if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > monthDays(y, mo) || h < 0 || h > 23 || mi < 0 || mi > 59)
    return Number.NaN;
  if (sec < 0 || sec > 59 || ms < 0) return Number.NaN;
  return ((daysFromCivil(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms;
}

/**
 * A JSONL request record read from its bytes buf[s, e) (the caller saw '{' at s), or undefined when the
 * line is not the plain shape (an escape, a nested value, a field of an unexpected type, a
 * missing or bad required field, bad JSON): the caller then parses it with JSON.parse, which
 * reads what this does not and names what is wrong. What it returns equals what that path
 * makes of the same line.
 */
function fastRecord(b: Buffer, s: number, e: number, strings: Interner): ImageRequest | undefined {
  let at = Number.NaN;
  let user: string | undefined;
  let project: string | undefined;
  let image: string | undefined;
  let version: number | null = null;
  let op: string | undefined;
  let bytes = -1;
  let owner: string | undefined;
  let pub: boolean | undefined;
  let base: string | undefined;
  let changed: number | undefined;
  // (no closures over i: a captured variable that changes lives in a heap context, every i++ a store)
  let i = skip(b, s + 1, e);
  if (i >= e || b[i] === 125) return undefined; // {}: no fields
  for (;;) {
    i = skip(b, i, e);
    if (i >= e || b[i] !== 34) return undefined;
    const ks = i + 1;
    let ke = ks;
    while (ke < e && b[ke] !== 34 && b[ke] !== 92) ke++;
    if (ke >= e || b[ke] !== 34) return undefined;
    const key = keyOf(b, ks, ke);
    i = skip(b, ke + 1, e);
    if (i >= e || b[i] !== 58) return undefined;
    i = skip(b, i + 1, e);
    if (i >= e) return undefined;
    const c = b[i];
    if (c === 34) {
      // a string without escapes (one with an escape goes the JSON.parse way)
      const vs = i + 1;
      let ve = vs;
      let ascii = true;
      while (ve < e) {
        const x = b[ve];
        if (x === 34 || x === 92 || x < 32) break;
        if (x >= 128) ascii = false;
        ve++;
      }
      if (ve >= e || b[ve] !== 34) return undefined;
      i = ve + 1;
      if (key === Key.At) {
        at = ascii ? isoMs(b, vs, ve) : Number.NaN;
        if (Number.isNaN(at)) return undefined;
      } else if (key !== Key.Other) {
        // (an empty string is no value: the JSON.parse path decides what that means)
        if (ve === vs) return undefined;
        const str = ascii ? strings.get(b, vs, ve) : b.toString('utf8', vs, ve);
        switch (key) {
          case Key.User:
            user = str;
            break;
          case Key.Project:
            project = str;
            break;
          case Key.Image:
            image = str;
            break;
          case Key.Op:
            op = str;
            break;
          case Key.Owner:
            owner = str;
            break;
          case Key.Base:
            base = str;
            break;
          default:
            return undefined; // a number field written as a string
        }
      }
    } else if (c === 45 || DIGIT(c)) {
      const vs = i;
      const ve = numberEnd(b, i, e);
      if (ve < 0) return undefined;
      let v = 0;
      if (ve - vs <= 15 && c !== 45) {
        for (let k = vs; k < ve; k++) {
          const x = b[k];
          if (x < 48 || x > 57) {
            v = Number(b.toString('latin1', vs, ve));
            break;
          }
          v = v * 10 + (x - 48);
        }
      } else v = Number(b.toString('latin1', vs, ve));
      i = ve;
      if (!Number.isFinite(v)) return undefined;
      switch (key) {
        case Key.Other:
          break;
        case Key.At:
          at = v;
          break;
        case Key.Version:
          if (!Number.isSafeInteger(v) || v < 0) return undefined;
          version = v;
          break;
        case Key.Bytes:
          if (!Number.isSafeInteger(v) || v < 0) return undefined;
          bytes = v;
          break;
        case Key.Changed:
          if (!(v >= 0 && v <= 1)) return undefined;
          changed = v;
          break;
        default:
          return undefined;
      }
    } else if (c === 116 || c === 102 || c === 110) {
      // true, false, null
      const word = c === 116 ? 'true' : c === 102 ? 'false' : 'null';
      if (i + word.length > e || !same(b, i, word)) return undefined;
      i += word.length;
      if (c === 110) {
        if (key === Key.Version) version = null;
        else if (
          key !== Key.Other &&
          key !== Key.Owner &&
          key !== Key.Public &&
          key !== Key.Base &&
          key !== Key.Changed
        )
          return undefined;
        else if (key === Key.Owner) owner = undefined;
        else if (key === Key.Public) pub = undefined;
        else if (key === Key.Base) base = undefined;
        else if (key === Key.Changed) changed = undefined;
      } else if (key === Key.Public) pub = c === 116;
      else if (key !== Key.Other) return undefined;
    } else return undefined;
    i = skip(b, i, e);
    if (i >= e) return undefined;
    if (b[i] === 44) {
      i++;
      continue;
    }
    if (b[i] !== 125) return undefined;
    if (skip(b, i + 1, e) !== e) return undefined;
    break;
  }
  if (Number.isNaN(at) || user === undefined || project === undefined || image === undefined || op === undefined)
    return undefined;
  if (bytes < 0) return undefined;
  const r: ImageRequest = { at, user, project, image, version, op, bytes };
  if (owner !== undefined) r.owner = owner;
  if (pub !== undefined) r.public = pub;
  if (base !== undefined) r.base = base;
  if (changed !== undefined) r.changed = changed;
  return r;
}

/** The longest line read (a bound on what one line may cost). */
const MAX_LINE = 16 << 20;

/** Parse a JSONL or CSV request log, or an NBD trace (told apart by the first line: `{` is JSON, with `conn` and `export` a trace). */
export function parseRequestLog(
  text: string | Uint8Array,
  file = 'request log',
  opts: TraceOptions = {},
): ImageRequest[] {
  const buf =
    typeof text === 'string' ? Buffer.from(text, 'utf8') : Buffer.from(text.buffer, text.byteOffset, text.byteLength);
  const out: ImageRequest[] = [];
  const p = new LogParser(file, opts, (r) => out.push(r));
  let offset = 0;
  while (offset < buf.length) {
    let end = buf.indexOf(10, offset);
    if (end < 0) end = buf.length;
    p.take(buf, offset, end, offset);
    offset = end + 1;
  }
  p.finish();
  return sortByTime(out);
}

/**
 * Read a request log file (see {@link parseRequestLog}) in 8 MiB pieces: the file is never
 * one string, and a line longer than 16 MiB is an error, not an allocation.
 */
export function readRequestLog(file: string, filter: LogFilter = {}, opts: TraceOptions = {}): ImageRequest[] {
  const rs: ImageRequest[] = [];
  scanRequestLog(file, (r) => rs.push(r), opts);
  sortByTime(rs);
  return filter.since === undefined && filter.until === undefined && filter.ops === undefined
    ? rs
    : applyFilter(rs, filter);
}

/** Every record of a log file to `out`, in the file's order (a trace's sessions at its end). */
export function scanRequestLog(file: string, out: (r: ImageRequest) => void, opts: TraceOptions): void {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    throw new StrataError('NOT_FOUND', `cannot read the request log: ${(e as Error).message}`, { file });
  }
  const p = new LogParser(file, opts, out);
  try {
    let buf = Buffer.allocUnsafe(8 << 20);
    let have = 0; // valid bytes in buf
    let base = 0; // file offset of buf[0]
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf, have, buf.length - have, null);
      } catch (e) {
        throw new StrataError('IO', `cannot read the request log: ${(e as Error).message}`, {
          file,
          offset: base + have,
        });
      }
      if (n === 0) {
        if (have > 0) p.take(buf, 0, have, base);
        break;
      }
      have += n;
      let pos = 0;
      for (;;) {
        const nl = buf.indexOf(10, pos);
        if (nl < 0 || nl >= have) break;
        p.take(buf, pos, nl, base + pos);
        pos = nl + 1;
      }
      if (pos === 0 && have === buf.length) {
        if (buf.length >= MAX_LINE)
          throw new StrataError('CORRUPT', `request log: a line longer than ${MAX_LINE >> 20} MiB`, {
            file,
            offset: base,
          });
        const bigger = Buffer.allocUnsafe(buf.length * 2);
        buf.copy(bigger, 0, 0, have);
        buf = bigger;
        continue;
      }
      buf.copy(buf, 0, pos, have);
      have -= pos;
      base += pos;
    }
  } finally {
    closeSync(fd);
  }
  p.finish();
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
