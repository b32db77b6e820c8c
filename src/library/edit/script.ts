import path from 'node:path';
import { StrataError } from '../../util/errors.js';
import { type Change, parseSeconds } from './changes.js';

/**
 * `strata edit REF --script FILE`: one operation per line, in the words of the verbs.
 *
 *   put PATH FILE [-p] [--mode MODE] [--uid UID] [--gid GID] [--mtime SECONDS[.NANOS]]   (-p: make missing parents)
 *   rm PATH [-r]
 *   mkdir PATH [-p] [--mode MODE] [--uid UID] [--gid GID]
 *   ln -s TARGET PATH        (symbolic link at PATH)
 *   ln TARGET PATH           (hard link at PATH to the existing TARGET)
 *   mv PATH TO
 *   chmod MODE PATH          (MODE octal: 644, 0755, 4755)
 *   chown UID[:GID] PATH     (numeric; ':GID' alone changes the group)
 *   touch PATH SECONDS[.NANOS]   (sets the mtime of an existing PATH; nanoseconds kept on ext4 with 256-byte inodes)
 *   setxattr PATH NAME VALUE / rmxattr PATH NAME
 *
 * Words are split at blanks; "double" or 'single' quotes keep blanks, and inside double
 * quotes \" \\ \n \t are escapes. '#' starts a comment outside quotes. A relative FILE is
 * read from the script's folder. Errors name the line and column.
 */

interface Word {
  text: string;
  col: number;
}

const fail = (where: string, line: number, col: number, why: string): never => {
  throw new StrataError('USAGE', `${where}:${line}:${col}: ${why}`);
};

function splitWords(src: string, where: string, line: number): Word[] {
  const words: Word[] = [];
  let i = 0;
  while (i < src.length) {
    while (i < src.length && (src[i] === ' ' || src[i] === '\t')) i++;
    if (i >= src.length || src[i] === '#') break;
    const col = i + 1;
    let text = '';
    while (i < src.length && src[i] !== ' ' && src[i] !== '\t') {
      const ch = src[i];
      if (ch === '"' || ch === "'") {
        const open = i;
        i++;
        while (i < src.length && src[i] !== ch) {
          if (ch === '"' && src[i] === '\\') {
            const e = src[i + 1];
            const map: Record<string, string> = { '"': '"', '\\': '\\', n: '\n', t: '\t' };
            if (e === undefined || !(e in map)) fail(where, line, i + 1, `unknown escape \\${e ?? ''} in quotes`);
            text += map[e];
            i += 2;
          } else text += src[i++];
        }
        if (i >= src.length) fail(where, line, open + 1, `unterminated ${ch === '"' ? 'double' : 'single'} quote`);
        i++;
      } else {
        text += ch;
        i++;
      }
    }
    words.push({ text, col });
  }
  return words;
}

export function parseMode(s: string): number | undefined {
  if (!/^[0-7]{1,5}$/.test(s)) return undefined;
  const m = Number.parseInt(s, 8);
  return m <= 0o7777 ? m : undefined;
}

const parseId = (s: string): number | undefined =>
  /^\d{1,10}$/.test(s) && Number(s) <= 0xffffffff ? Number(s) : undefined;

/** "UID", "UID:GID" or ":GID" (numeric). */
export function parseOwner(s: string): { uid?: number; gid?: number } | undefined {
  const m = /^(\d*)(?::(\d*))?$/.exec(s);
  if (!m || (m[1] === '' && (m[2] ?? '') === '')) return undefined;
  const out: { uid?: number; gid?: number } = {};
  if (m[1] !== '') {
    out.uid = parseId(m[1]);
    if (out.uid === undefined) return undefined;
  }
  if (m[2] !== undefined && m[2] !== '') {
    out.gid = parseId(m[2]);
    if (out.gid === undefined) return undefined;
  }
  return out;
}

export interface ScriptOptions {
  /** The script's name for messages (default '<script>'). */
  file?: string;
  /** Folder relative FILEs are read from (default: the script's folder, else the working folder). */
  baseDir?: string;
}

export function parseEditScript(text: string, opts: ScriptOptions = {}): Change[] {
  const where = opts.file ?? '<script>';
  const base = opts.baseDir ?? (opts.file ? path.dirname(path.resolve(opts.file)) : process.cwd());
  const changes: Change[] = [];
  const lines = text.split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const line = n + 1;
    const words = splitWords(lines[n], where, line);
    if (words.length === 0) continue;
    const [verb, ...rest] = words;
    const end = lines[n].length + 1;
    // flags (--name VALUE, -x) anywhere after the verb; the rest are positional
    const flags = new Map<string, Word | true>();
    const args: Word[] = [];
    const takesValue = new Set(['--mode', '--uid', '--gid', '--mtime']);
    const allowed: Record<string, string[]> = {
      put: ['-p', '--mode', '--uid', '--gid', '--mtime'],
      mkdir: ['-p', '--mode', '--uid', '--gid'],
      rm: ['-r'],
      ln: ['-s'],
    };
    for (let i = 0; i < rest.length; i++) {
      const w = rest[i];
      if (w.text.startsWith('-') && w.text.length > 1 && !/^-\d/.test(w.text)) {
        if (!(allowed[verb.text] ?? []).includes(w.text))
          fail(where, line, w.col, `unknown option ${w.text} for ${verb.text}`);
        if (takesValue.has(w.text)) {
          const v = rest[++i];
          if (!v) fail(where, line, end, `${w.text} needs a value`);
          flags.set(w.text, v);
        } else flags.set(w.text, true);
      } else args.push(w);
    }
    const need = (k: number, usage: string) => {
      if (args.length < k) fail(where, line, end, `${verb.text} needs ${usage}`);
      if (args.length > k) fail(where, line, args[k].col, `${verb.text} takes ${usage}; unexpected '${args[k].text}'`);
    };
    const num = (flag: string, parse: (s: string) => number | undefined, what: string) => {
      const w = flags.get(flag);
      if (w === undefined || w === true) return undefined;
      const v = parse(w.text);
      if (v === undefined) fail(where, line, w.col, `${flag} ${JSON.stringify(w.text)} is not ${what}`);
      return v;
    };
    const pathArg = (w: Word) => {
      if (!w.text.startsWith('/')) fail(where, line, w.col, `path '${w.text}' is not absolute`);
      return w.text;
    };
    const attrs = () => {
      const a: { mode?: number; uid?: number; gid?: number; mtime?: number; mtimeNsec?: number } = {};
      const mode = num('--mode', parseMode, 'an octal mode');
      const uid = num('--uid', parseId, 'a numeric uid');
      const gid = num('--gid', parseId, 'a numeric gid');
      const mtime = num('--mtime', (s) => parseSeconds(s)?.seconds, 'seconds (up to 9 decimals)');
      if (mode !== undefined) a.mode = mode;
      if (uid !== undefined) a.uid = uid;
      if (gid !== undefined) a.gid = gid;
      if (mtime !== undefined) {
        a.mtime = mtime;
        a.mtimeNsec = (parseSeconds((flags.get('--mtime') as Word).text) as { nsec: number }).nsec;
      }
      return a;
    };
    switch (verb.text) {
      case 'put':
        need(2, 'PATH FILE');
        changes.push({
          op: 'put',
          path: pathArg(args[0]),
          content: { kind: 'file', path: path.resolve(base, args[1].text) },
          ...(flags.has('-p') ? { parents: true } : {}),
          ...attrs(),
        });
        break;
      case 'rm':
        need(1, 'PATH');
        changes.push({ op: 'rm', path: pathArg(args[0]), recursive: flags.has('-r') });
        break;
      case 'mkdir':
        need(1, 'PATH');
        changes.push({ op: 'mkdir', path: pathArg(args[0]), parents: flags.has('-p'), ...attrs() });
        break;
      case 'ln':
        need(2, 'TARGET PATH');
        if (flags.has('-s')) changes.push({ op: 'symlink', path: pathArg(args[1]), target: args[0].text });
        else changes.push({ op: 'link', path: pathArg(args[1]), target: pathArg(args[0]) });
        break;
      case 'mv':
        need(2, 'PATH TO');
        changes.push({ op: 'rename', path: pathArg(args[0]), to: pathArg(args[1]) });
        break;
      case 'chmod': {
        need(2, 'MODE PATH');
        const mode = parseMode(args[0].text);
        if (mode === undefined) fail(where, line, args[0].col, `'${args[0].text}' is not an octal mode (0..7777)`);
        changes.push({ op: 'setattr', path: pathArg(args[1]), mode });
        break;
      }
      case 'chown': {
        need(2, 'UID[:GID] PATH');
        const o = parseOwner(args[0].text);
        if (!o) fail(where, line, args[0].col, `'${args[0].text}' is not UID, UID:GID or :GID (numeric)`);
        changes.push({ op: 'setattr', path: pathArg(args[1]), ...o });
        break;
      }
      case 'touch': {
        need(2, 'PATH SECONDS');
        const t = parseSeconds(args[1].text);
        if (!t) fail(where, line, args[1].col, `'${args[1].text}' is not seconds (up to 9 decimals)`);
        const { seconds, nsec } = t as { seconds: number; nsec: number };
        changes.push({ op: 'setattr', path: pathArg(args[0]), mtime: seconds, mtimeNsec: nsec });
        break;
      }
      case 'setxattr':
        need(3, 'PATH NAME VALUE');
        changes.push({
          op: 'xattr',
          path: pathArg(args[0]),
          name: args[1].text,
          value: new TextEncoder().encode(args[2].text),
        });
        break;
      case 'rmxattr':
        need(2, 'PATH NAME');
        changes.push({ op: 'xattr', path: pathArg(args[0]), name: args[1].text, value: null });
        break;
      default:
        fail(
          where,
          line,
          verb.col,
          `unknown operation '${verb.text}' (put, rm, mkdir, ln, mv, chmod, chown, touch, setxattr, rmxattr)`,
        );
    }
  }
  return changes;
}
