import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import {
  formatJsonl,
  generateLog,
  generateRequests,
  type ImageRequest,
  openRequestLog,
  parseRequestLog,
  RequestRuns,
  readRequestLog,
} from '../../src/analytics/index.js';
import { StrataError } from '../../src/util/errors.js';
import { prng } from '../helpers/fuzz.js';
import { tempDir } from '../library/images.js';

/**
 * Reading a JSONL request log: the file is read in pieces and the plain records are read
 * straight from their bytes (request-log.ts), so what a reader gets is checked against a
 * test-side model that does it the obvious way (the whole text, split on '\n', JSON.parse,
 * Date.parse, Number) on the same bytes: generated logs larger than one piece, lines across
 * piece boundaries, a line longer than a piece, every spelling a field may have, and lines
 * mutated at random bytes, where the model decides whether the line is a record or an error
 * and our reader must agree (the same records, or a StrataError naming the model's line).
 */

const REQUIRED = ['at', 'user', 'project', 'image', 'op', 'bytes'];
const none = (v: unknown) => v === undefined || v === null || v === '';

/** The model: one line's record, or the reason it is none. */
function modelRecord(text: string): ImageRequest | string {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return 'not an object';
  const f = o as Record<string, unknown>;
  for (const k of REQUIRED) if (none(f[k])) return `no ${k}`;
  let at: number;
  if (typeof f.at === 'number') at = f.at;
  else if (/^\d+$/.test(String(f.at))) at = Number(f.at);
  else at = Date.parse(String(f.at));
  if (!Number.isFinite(at)) return 'bad time';
  const bytes = Number(f.bytes);
  if (!Number.isSafeInteger(bytes) || bytes < 0) return 'bad bytes';
  const r: ImageRequest = {
    at,
    user: String(f.user),
    project: String(f.project),
    image: String(f.image),
    version: null,
    op: String(f.op),
    bytes,
  };
  if (!none(f.version)) {
    const v = Number(f.version);
    if (!Number.isSafeInteger(v) || v < 0) return 'bad version';
    r.version = v;
  }
  if (!none(f.owner)) r.owner = String(f.owner);
  if (!none(f.public)) r.public = f.public === true || f.public === 'true';
  if (!none(f.base)) r.base = String(f.base);
  if (!none(f.changed)) {
    const c = Number(f.changed);
    if (!(c >= 0 && c <= 1)) return 'bad changed';
    r.changed = c;
  }
  return r;
}

/** The model over a whole JSONL log's bytes: the records sorted by time, or the first bad line's number. */
function model(bytes: Buffer): ImageRequest[] | { line: number } {
  const lines = bytes.toString('utf8').split('\n');
  const out: ImageRequest[] = [];
  for (let i = 0; i < lines.length; i++) {
    const s = lines[i].replace(/\r$/, '');
    if (/^[ \t\r]*$/.test(s)) continue;
    const r = modelRecord(s);
    if (typeof r === 'string') return { line: i + 1 };
    out.push(r);
  }
  return out.sort((a, b) => a.at - b.at);
}

/** Our reader on a file, as records or the line its error names. */
function ours(file: string): ImageRequest[] | { line: number; error: StrataError } {
  try {
    return readRequestLog(file);
  } catch (e) {
    assert.ok(e instanceof StrataError, `not a StrataError: ${(e as Error).stack}`);
    const m = /line (\d+)/.exec(e.message);
    assert.ok(m, e.message);
    assert.ok(e.message.includes(file), e.message);
    return { line: Number(m[1]), error: e };
  }
}

const dir = tempDir('request-log');
let n = 0;
const put = (bytes: Buffer | string) => {
  const f = path.join(dir, `log-${n++}.jsonl`);
  writeFileSync(f, bytes);
  return f;
};

describe('request log reading', () => {
  test('a generated log larger than one 8 MiB piece: the same records as the model, lines across pieces', () => {
    // ~190 bytes a line: 60,000 lines are ~11 MB, so lines cross the first piece's end
    const text = `${generateLog({ requests: 60_000, seed: 7 }).map(formatJsonl).join('\n')}\n`;
    const bytes = Buffer.from(text);
    assert.ok(bytes.length > 8 << 20, String(bytes.length));
    const want = model(bytes);
    assert.ok(Array.isArray(want) && want.length === 60_000);
    assert.deepEqual(readRequestLog(put(bytes)), want);
    // no final newline, CRLF line ends, blank lines of spaces and tabs between
    const crlf = text.trimEnd().split('\n').join('\r\n \t\r\n');
    assert.deepEqual(readRequestLog(put(crlf)), want);
    // from a string, as parseRequestLog takes it
    assert.deepEqual(parseRequestLog(crlf, 'x.jsonl'), want);
  });

  test('every spelling of a field: what JSON.parse, Date.parse and Number make of it', () => {
    const lines = [
      '{"at":"2026-03-01T10:00:00.000Z","user":"u1","project":"p1","image":"debian","version":3,"op":"versions.download","bytes":1024}',
      // times: leap day, last day of a 30-day month, the day after (Date.parse rolls it over), hour 24, other ISO forms, ms
      '{"at":"2024-02-29T23:59:59.999Z","user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":"2026-04-30T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":"2026-02-30T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":"2026-01-01T24:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":"2026-01-02","user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":"2026-01-02T03:04:05+02:00","user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":1767225600123,"user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":"1767225600124","user":"u","project":"p","image":"i","op":"o","bytes":0}',
      '{"at":1767225600125.5,"user":"u","project":"p","image":"i","op":"o","bytes":0}',
      // numbers: exponent, fraction that is an integer, as strings, -0, 16+ digits
      '{"at":1e12,"user":"u","project":"p","image":"i","op":"o","bytes":1.5e3,"version":"7"}',
      '{"at":2e12,"user":"u","project":"p","image":"i","op":"o","bytes":"42","version":-0}',
      '{"at":3e12,"user":"u","project":"p","image":"i","op":"o","bytes":9007199254740991,"version":null}',
      '{"at":4e12,"user":"u","project":"p","image":"i","op":"o","bytes":12,"version":"","changed":0.25}',
      // strings: escapes, non-ASCII, numbers where strings are expected, empty optional fields
      '{"at":5e12,"user":"\\u00e9lodie","project":"p\\"q","image":"caf\u00e9","op":"o","bytes":1}',
      '{"at":6e12,"user":5,"project":true,"image":"i","op":"o","bytes":1,"owner":"","base":"","public":"true"}',
      '{"at":7e12,"user":"u","project":"p","image":"i","op":"o","bytes":1,"owner":"facility","public":false,"base":"b@1","changed":1}',
      '{ "at" : 8e12 , "user" : "u" , "project" : "p" , "image" : "i" , "op" : "o" , "bytes" : 2 , "public" : true }',
      // unknown fields of any kind, duplicated keys (the last wins)
      '{"at":9e12,"user":"u","project":"p","image":"i","op":"o","bytes":3,"extra":{"a":[1,2]},"n":null,"t":true,"user":"v"}',
      '{"at":"2026-01-01T00:00:00.000Z","at":10e12,"user":"u","project":"p","image":"i","op":"o","bytes":4,"owner":null}',
    ];
    const bytes = Buffer.from(lines.join('\n'));
    const want = model(bytes);
    assert.ok(Array.isArray(want) && want.length === lines.length, JSON.stringify(want));
    assert.deepEqual(readRequestLog(put(bytes)), want);
    // the ones that are errors, each alone after a good first line, at line 2
    for (const badLine of [
      '{"at":"2026-01-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":-1}',
      '{"at":"2026-13-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":1}',
      '{"at":"2026-01-32T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":1}',
      '{"at":"2026-01-01T00:00:00.000Z","user":"","project":"p","image":"i","op":"o","bytes":1}',
      '{"at":"2026-01-01T00:00:00.000Z","project":"p","image":"i","op":"o","bytes":1}',
      '{"at":"2026-01-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":01}',
      '{"at":"2026-01-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":1.}',
      '{"at":"2026-01-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":1,"changed":2}',
      '{"at":"2026-01-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":1,"version":1.5}',
      '{"at":"2026-01-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":1,}',
      '{"at":"2026-01-01T00:00:00.000Z","user":"u","project":"p","image":"i","op":"o","bytes":1} x',
      '{"at":"2026-01-01T00:00:00.000Z","user":"u\tv","project":"p","image":"i","op":"o","bytes":1}',
      '[1]',
    ]) {
      const b = Buffer.from(`${lines[0]}\n${badLine}\n`);
      assert.deepEqual(model(b), { line: 2 }, badLine);
      const got = ours(put(b));
      assert.ok(!Array.isArray(got) && got.line === 2, `${badLine}: ${JSON.stringify(got)}`);
    }
  });

  test('a line longer than a piece is read whole; one over 16 MiB is an error naming its offset', () => {
    const first = formatJsonl(generateLog({ requests: 1, seed: 1 })[0]);
    const long = `{"at":1,"user":"u","project":"p","image":"i","op":"o","bytes":5,"note":"${'x'.repeat(9 << 20)}"}`;
    const b = Buffer.from(`${first}\n${long}\n${first}\n`);
    assert.deepEqual(readRequestLog(put(b)), model(b));
    const huge = `{"at":1,"user":"u","project":"p","image":"i","op":"o","bytes":5,"note":"${'x'.repeat(17 << 20)}"}`;
    const f = put(`${first}\n${huge}\n`);
    assert.throws(
      () => readRequestLog(f),
      (e: unknown) =>
        e instanceof StrataError &&
        /longer than 16 MiB/.test(e.message) &&
        e.message.includes(f) &&
        /offset/.test(e.message),
    );
  });

  test('mutated lines: the same records as the model, or an error at the line the model rejects', () => {
    const recs = generateLog({ requests: 400, seed: 3 }).map(formatJsonl);
    const rand = prng(25);
    let agreedRecords = 0;
    let agreedErrors = 0;
    for (let c = 0; c < 600; c++) {
      const lines = [...recs.slice(0, 40)];
      // mutate one to three lines after the first (the first decides JSONL vs CSV)
      const k = 1 + (rand() % 3);
      for (let j = 0; j < k; j++) {
        const li = 1 + (rand() % (lines.length - 1));
        const b = Buffer.from(lines[li]);
        const at = rand() % b.length;
        switch (rand() % 6) {
          case 0:
            b[at] ^= 1 << (rand() % 8);
            break;
          case 1:
            b[at] = [0x22, 0x5c, 0x2c, 0x7d, 0x20, 0x2d, 0x30, 0x2e, 0x65, 0xc3][rand() % 10];
            break;
          case 2:
            b[at] = 0x30 + (rand() % 10);
            break;
          default:
            break;
        }
        let s = b.toString('latin1');
        if (rand() % 6 === 5) s = s.slice(0, at); // truncated
        if (rand() % 7 === 6) s = `${s.slice(0, at)} ${s.slice(at)}`;
        lines[li] = s.replace(/\n/g, ' ');
      }
      const bytes = Buffer.from(lines.join('\n'), 'latin1');
      const want = model(bytes);
      const got = ours(put(bytes));
      if (Array.isArray(want)) {
        assert.deepEqual(got, want, `case ${c}`);
        agreedRecords++;
      } else {
        assert.ok(
          !Array.isArray(got),
          `case ${c}: the model rejects line ${want.line}, ours read it: ${JSON.stringify(lines[want.line - 1])}`,
        );
        assert.equal(got.line, want.line, `case ${c}: ${got.error.message}`);
        agreedErrors++;
      }
    }
    // both outcomes were exercised
    assert.ok(agreedRecords > 50 && agreedErrors > 50, `${agreedRecords} ${agreedErrors}`);
  });

  test('openRequestLog: several files of shuffled lines with many ties, through small runs: the model of their concatenation, filtered, stable by time; walked twice', () => {
    const rand = prng(91);
    const recs = generateLog({ requests: 20_000, seed: 5, days: 20 }).map((r, i) => {
      // whole hours: ~40 requests a tie
      const x: ImageRequest = { ...r, at: Math.floor(r.at / 3600e3) * 3600e3 };
      if (i % 7 === 0) {
        x.version = null;
        delete x.owner;
      }
      if (i % 11 === 0) x.public = false;
      if (i % 13 === 0) x.op = 'versions.get';
      return x;
    });
    for (let i = recs.length - 1; i > 0; i--) {
      const j = rand() % (i + 1);
      [recs[i], recs[j]] = [recs[j], recs[i]];
    }
    const texts = [recs.slice(0, 7000), recs.slice(7000, 7001), recs.slice(7001)].map(
      (xs) => `${xs.map(formatJsonl).join('\n')}\n`,
    );
    const files = texts.map((t) => put(t));
    const all = model(Buffer.from(texts.join('')));
    assert.ok(Array.isArray(all) && all.length === 20_000);
    const since = all[3000].at;
    const until = all[17_000].at;
    const cases = [
      { filter: {}, want: all },
      {
        filter: { since, until, ops: ['versions.download'] },
        want: all.filter((r) => r.at >= since && r.at < until && r.op === 'versions.download'),
      },
    ];
    for (const { filter, want } of cases)
      for (const bufferBytes of [64 * 100, 64 * 1000, 64 << 20]) {
        const runs = openRequestLog(files, filter, { bufferBytes });
        try {
          assert.equal(runs.total, want.length);
          assert.deepEqual([...runs], want, `${JSON.stringify(filter)} ${bufferBytes}`);
          assert.deepEqual([...runs], want, 'a second walk');
        } finally {
          runs.close();
        }
      }
  });

  test('RequestRuns orders the generator as generateLog does (a stable sort by time)', () => {
    const o = { requests: 30_000, seed: 11, days: 3 };
    const runs = new RequestRuns({ bufferBytes: 64 * 777 });
    try {
      for (const r of generateRequests(o)) runs.add(r);
      assert.deepEqual([...runs], generateLog(o));
    } finally {
      runs.close();
    }
  });
});
