import { StrataError } from '../util/errors.js';

/**
 * A workload model language for image-service benchmarks, in the spirit of Filebench's WML
 * (Tarasov, seed 000): a workload is described, not hard-coded. One statement a line; `#`
 * starts a comment; attribute lists are `key=value` pairs separated by commas; `$NAME` in a
 * value is a variable set by `set $NAME = VALUE` (or on the command line).
 *
 *   set $seconds = 10
 *   define images name=day, generate=2000, seed=1, versions=debian@1;debian@2;alpine@1
 *   define images name=ci, log=requests.jsonl
 *   define images name=two, list=debian@1;debian@2
 *   define process name=students, instances=2
 *   {
 *     thread name=shell, instances=4, rate=20
 *     {
 *       flowop ls name=look, images=day, path=/etc
 *       flowop cat name=read, images=day, path=/etc/os-release
 *       flowop think name=pause, ms=50
 *     }
 *   }
 *   run $seconds
 *
 * Image sets (`define images`): `list=` versions chosen uniformly; `log=FILE` versions chosen
 * as often as a request log asks for them (any log the analytics read); `generate=N,
 * seed=S, versions=LIST`: a log from the trace generator (the Emulab study's shape), its
 * images ranked by requests and mapped in rank order onto LIST, each weighted by its
 * requests (the generator's popularity on the server's real versions).
 *
 * A process runs `instances` copies; each copy runs every thread `instances` times; a
 * thread runs its flowops in order, again and again, until the run ends (`run SECONDS`, or
 * `run iterations=N`: each thread N passes), at most `rate` passes a second when given.
 *
 * Flowops: `checkout` (the whole disk), `deploy` (every chunk of the version, as a deploy
 * moves them), `boot` (the reads of a recorded boot profile, `profile=FILE`, in order,
 * made over NBD by a real client, `client=nbdsh` (libnbd, the default) or `client=qemu-io`),
 * `ls` (`path`, `recursive`), `cat` (`path`), `search` (`path`, `package`, `os`, `user`,
 * `digest`), `diff` (two versions of `images`, or `a=` and `b=`), `checkin` (`file=IMAGE`,
 * `image=NAME`), `think` (`ms`).
 */
export const FLOWOPS = ['checkin', 'checkout', 'deploy', 'boot', 'ls', 'cat', 'search', 'diff', 'think'] as const;
export type FlowopKind = (typeof FLOWOPS)[number];
/** The NBD clients a `boot` flowop reads with. */
export const BOOT_CLIENTS = ['nbdsh', 'qemu-io'] as const;
export type BootClient = (typeof BOOT_CLIENTS)[number];

export interface Flowop {
  kind: FlowopKind;
  name: string;
  attrs: Record<string, string>;
  line: number;
  /** Column of its `images=` (for errors about the set). */
  imagesCol?: number;
}
export interface ThreadDef {
  name: string;
  instances: number;
  /** Passes a second (unbounded when undefined). */
  rate?: number;
  flowops: Flowop[];
  line: number;
}
export interface ProcessDef {
  name: string;
  instances: number;
  threads: ThreadDef[];
  line: number;
}
export interface ImageSetDef {
  name: string;
  attrs: Record<string, string>;
  line: number;
}
export interface Workload {
  file: string;
  images: ImageSetDef[];
  processes: ProcessDef[];
  /** `run SECONDS` */
  seconds?: number;
  /** `run iterations=N` */
  iterations?: number;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_.-]*$/;

/** Where a parse error is: FILE:LINE:COLUMN (1-based). */
function err(file: string, line: number, col: number, why: string): StrataError {
  return new StrataError('CORRUPT', `${file}:${line}:${col}: ${why}`, { structure: 'workload' });
}

interface Line {
  n: number;
  /** The statement without its comment, and the column (1-based) of its first character. */
  text: string;
  col: number;
}

/** `key=value, key=value` from `s` (starting at column `col`); values may hold `;` lists. */
function attrsOf(file: string, ln: number, s: string, col: number): Record<string, string> {
  const out: Record<string, string> = {};
  if (s.trim() === '') return out;
  let at = 0;
  for (const part of s.split(',')) {
    const lead = part.length - part.trimStart().length;
    const c = col + at + lead;
    const p = part.trim();
    const eq = p.indexOf('=');
    if (p === '') throw err(file, ln, c, 'empty attribute (two commas?)');
    if (eq <= 0) throw err(file, ln, c, `expected key=value, not ${JSON.stringify(p)}`);
    const k = p.slice(0, eq).trim();
    if (!NAME.test(k)) throw err(file, ln, c, `bad attribute name ${JSON.stringify(k)}`);
    if (k in out) throw err(file, ln, c, `attribute ${k} given twice`);
    out[k] = p.slice(eq + 1).trim();
    at += part.length + 1;
  }
  return out;
}

function posInt(file: string, ln: number, col: number, v: string | undefined, what: string, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1)
    throw err(file, ln, col, `${what} must be a whole number of at least 1, not ${JSON.stringify(v)}`);
  return n;
}

/** The column of `key=` in a line (else `dflt`). */
function colOf(l: Line, key: string, dflt: number): number {
  const m = new RegExp(`(^|[\\s,])${key}\\s*=`).exec(l.text);
  return m ? l.col + m.index + m[1].length : dflt;
}

/** Parse a workload; `vars` (without `$`) are set before the file's own `set` lines. */
export function parseWml(text: string, file = 'workload.wml', vars: Record<string, string> = {}): Workload {
  const v = new Map(Object.entries(vars));
  const lines: Line[] = [];
  text.split('\n').forEach((raw, i) => {
    const hash = raw.indexOf('#');
    const s = (hash >= 0 ? raw.slice(0, hash) : raw).replace(/\r$/, '');
    const lead = s.length - s.trimStart().length;
    if (s.trim() !== '') lines.push({ n: i + 1, text: s.trim(), col: lead + 1 });
  });
  const w: Workload = { file, images: [], processes: [] };
  let i = 0;
  const subst = (l: Line): string =>
    l.text.replace(/\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, name: string, off: number) => {
      const val = v.get(name);
      if (val === undefined) throw err(file, l.n, l.col + off, `variable $${name} is not set`);
      return val;
    });
  /** `{` on this line's end or the next line. */
  const openBrace = (l: Line, rest: string): string => {
    if (rest.trimEnd().endsWith('{')) return rest.trimEnd().slice(0, -1);
    const nx = lines[i];
    if (nx?.text !== '{')
      throw err(
        file,
        nx?.n ?? l.n,
        nx?.col ?? l.col + l.text.length,
        `expected '{' after ${l.text.split(/\s/)[1] ?? 'it'}`,
      );
    i++;
    return rest;
  };
  const head = (l: Line, words: number): { rest: string; restCol: number } => {
    // the column where the attributes start, after `words` words
    let at = 0;
    const t = l.text;
    for (let k = 0; k < words; k++) {
      while (at < t.length && /\s/.test(t[at])) at++;
      while (at < t.length && !/\s/.test(t[at])) at++;
    }
    while (at < t.length && /\s/.test(t[at])) at++;
    return { rest: subst({ ...l, text: t.slice(at), col: l.col + at }), restCol: l.col + at };
  };
  const closeBrace = (what: string, opened: Line) => {
    const l = lines[i];
    if (!l) throw err(file, opened.n, opened.col, `${what} has no closing '}'`);
    if (l.text !== '}') throw err(file, l.n, l.col, `expected '}' closing the ${what} of line ${opened.n}`);
    i++;
  };
  const names = new Set<string>();
  while (i < lines.length) {
    const l = lines[i++];
    const word = l.text.split(/\s+/)[0];
    if (word === 'set') {
      const m = /^set\s+\$([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(l.text);
      if (!m) throw err(file, l.n, l.col, 'expected set $NAME = VALUE');
      // a value given on the command line wins
      if (!(m[1] in vars)) v.set(m[1], subst({ ...l, text: m[2], col: l.col + l.text.length - m[2].length }));
      continue;
    }
    if (word === 'run') {
      const { rest, restCol } = head(l, 1);
      const r = rest.trim();
      if (/^iterations\s*=/.test(r)) w.iterations = posInt(file, l.n, restCol, r.split('=')[1].trim(), 'iterations', 1);
      else {
        const s = Number(r);
        if (r === '' || !Number.isFinite(s) || s <= 0)
          throw err(file, l.n, restCol, `run takes SECONDS or iterations=N, not ${JSON.stringify(r)}`);
        w.seconds = s;
      }
      continue;
    }
    if (word !== 'define') throw err(file, l.n, l.col, `unknown statement ${JSON.stringify(word)} (set, define, run)`);
    const what = l.text.split(/\s+/)[1];
    if (what === 'images') {
      const { rest, restCol } = head(l, 2);
      const a = attrsOf(file, l.n, rest, restCol);
      if (!a.name || !NAME.test(a.name)) throw err(file, l.n, restCol, 'an image set needs name=NAME');
      const kinds = ['list', 'log', 'generate'].filter((k) => k in a);
      if (kinds.length !== 1) throw err(file, l.n, restCol, 'an image set takes one of list=, log=, generate=');
      if (a.generate !== undefined) {
        posInt(file, l.n, restCol, a.generate, 'generate', 1);
        if (!a.versions)
          throw err(file, l.n, restCol, 'generate= needs versions=LIST (the versions its images map onto)');
      }
      if (w.images.some((x) => x.name === a.name)) throw err(file, l.n, restCol, `image set ${a.name} defined twice`);
      w.images.push({ name: a.name, attrs: a, line: l.n });
      continue;
    }
    if (what !== 'process')
      throw err(file, l.n, l.col, `define images or define process, not ${JSON.stringify(what ?? '')}`);
    const ph = head(l, 2);
    const pa = attrsOf(file, l.n, openBrace(l, ph.rest), ph.restCol);
    if (!pa.name || !NAME.test(pa.name)) throw err(file, l.n, ph.restCol, 'a process needs name=NAME');
    if (names.has(pa.name)) throw err(file, l.n, ph.restCol, `process ${pa.name} defined twice`);
    names.add(pa.name);
    const p: ProcessDef = {
      name: pa.name,
      instances: posInt(file, l.n, ph.restCol, pa.instances, 'instances', 1),
      threads: [],
      line: l.n,
    };
    while (i < lines.length && lines[i].text !== '}') {
      const t = lines[i++];
      if (t.text.split(/\s+/)[0] !== 'thread') throw err(file, t.n, t.col, `expected a thread in process ${p.name}`);
      const th = head(t, 1);
      const ta = attrsOf(file, t.n, openBrace(t, th.rest), th.restCol);
      if (!ta.name || !NAME.test(ta.name)) throw err(file, t.n, th.restCol, 'a thread needs name=NAME');
      let rate: number | undefined;
      if (ta.rate !== undefined) {
        rate = Number(ta.rate);
        if (!Number.isFinite(rate) || rate <= 0)
          throw err(
            file,
            t.n,
            colOf(t, 'rate', th.restCol),
            `rate must be a number above 0, not ${JSON.stringify(ta.rate)}`,
          );
      }
      const thread: ThreadDef = {
        name: ta.name,
        instances: posInt(file, t.n, th.restCol, ta.instances, 'instances', 1),
        rate,
        flowops: [],
        line: t.n,
      };
      while (i < lines.length && lines[i].text !== '}') {
        const f = lines[i++];
        const fw = f.text.split(/\s+/);
        if (fw[0] !== 'flowop') throw err(file, f.n, f.col, `expected a flowop in thread ${thread.name}`);
        const kind = fw[1] as FlowopKind;
        if (!FLOWOPS.includes(kind)) {
          const col = f.col + f.text.indexOf(fw[1] ?? '', 6);
          throw err(file, f.n, col, `unknown flowop ${JSON.stringify(fw[1] ?? '')} (${FLOWOPS.join(', ')})`);
        }
        const fh = head(f, 2);
        const fa = attrsOf(file, f.n, fh.rest, fh.restCol);
        const need = (k: string) => {
          if (fa[k] === undefined) throw err(file, f.n, fh.restCol, `flowop ${kind} needs ${k}=`);
        };
        if (kind === 'think') {
          need('ms');
          if (!(Number(fa.ms) >= 0))
            throw err(file, f.n, fh.restCol, `ms must be a number, not ${JSON.stringify(fa.ms)}`);
        } else if (kind === 'checkin') {
          need('file');
          need('image');
        } else if (kind === 'search') {
          if (!['path', 'package', 'os', 'user', 'digest'].some((k) => k in fa))
            throw err(file, f.n, fh.restCol, 'flowop search needs one of path=, package=, os=, user=, digest=');
        } else if (kind === 'diff') {
          if (!('images' in fa) && !('a' in fa && 'b' in fa))
            throw err(file, f.n, fh.restCol, 'flowop diff needs images= or a= and b=');
        } else {
          need('images');
          if (kind === 'cat') need('path');
          if (kind === 'boot') {
            need('profile');
            if (fa.client !== undefined && !BOOT_CLIENTS.includes(fa.client as BootClient))
              throw err(
                file,
                f.n,
                fh.restCol,
                `client must be ${BOOT_CLIENTS.join(' or ')}, not ${JSON.stringify(fa.client)}`,
              );
          }
        }
        const ic = f.text.indexOf('images=');
        thread.flowops.push({
          kind,
          name: fa.name ?? kind,
          attrs: fa,
          line: f.n,
          imagesCol: ic >= 0 ? f.col + ic : undefined,
        });
      }
      closeBrace(`thread ${thread.name}`, t);
      if (thread.flowops.length === 0) throw err(file, t.n, t.col, `thread ${thread.name} has no flowop`);
      p.threads.push(thread);
    }
    closeBrace(`process ${p.name}`, l);
    if (p.threads.length === 0) throw err(file, l.n, l.col, `process ${p.name} has no thread`);
    w.processes.push(p);
  }
  if (w.processes.length === 0) throw err(file, 1, 1, 'the workload defines no process');
  if (w.seconds === undefined && w.iterations === undefined)
    throw err(file, lines.at(-1)?.n ?? 1, 1, 'no run statement (run SECONDS or run iterations=N)');
  // every image set a flowop names exists
  for (const p of w.processes)
    for (const t of p.threads)
      for (const f of t.flowops)
        if (f.attrs.images !== undefined && !w.images.some((x) => x.name === f.attrs.images))
          throw err(
            file,
            f.line,
            f.imagesCol ?? 1,
            `flowop ${f.name}: no image set ${JSON.stringify(f.attrs.images)} (define images name=...)`,
          );
  return w;
}
