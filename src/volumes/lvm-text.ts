import { StrataError } from '../util/errors.js';

/** A value of LVM's text configuration format. */
export type LvmValue = string | number | LvmValue[] | LvmSection;

/** A section `name { key = value ... }`; keys keep their order of appearance. */
export interface LvmSection {
  kind: 'section';
  entries: Map<string, LvmValue>;
}

export const MAX_LVM_TEXT = 64 * 1024 * 1024;
const MAX_DEPTH = 32;
const MAX_ARRAY = 1 << 20;

export const isSection = (v: LvmValue | undefined): v is LvmSection =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && v.kind === 'section';

/**
 * Parse LVM2 text metadata / config (the format written by `vgcfgbackup` and kept in the
 * metadata area): `key = value`, `name { ... }` nested sections, double-quoted strings with
 * backslash escapes, integers (and decimals), `[ ... ]` arrays, `#` comments. Bounded:
 * nesting depth, array length and text size are capped; any syntax error is CORRUPT with
 * the byte offset in the text.
 */
export function parseLvmText(
  text: string,
  where: { file?: string; structure?: string; offset?: number } = {},
): LvmSection {
  if (text.length > MAX_LVM_TEXT) {
    throw new StrataError('LIMIT', `metadata text of ${text.length} bytes exceeds ${MAX_LVM_TEXT}`, where);
  }
  let pos = 0;
  const n = text.length;
  const fail = (msg: string): never => {
    const line = text.slice(0, pos).split('\n').length;
    throw new StrataError('CORRUPT', `${msg} at text offset ${pos} (line ${line})`, where);
  };
  const skip = () => {
    while (pos < n) {
      const c = text.charCodeAt(pos);
      if (c === 0x23 /* # */) {
        const nl = text.indexOf('\n', pos);
        pos = nl < 0 ? n : nl + 1;
      } else if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) pos++;
      else break;
    }
  };
  const ident = (): string => {
    const start = pos;
    while (pos < n && /[A-Za-z0-9_.+\-/]/.test(text[pos])) pos++;
    if (pos === start) fail(`expected a name, found ${JSON.stringify(text[pos] ?? 'end of text')}`);
    return text.slice(start, pos);
  };
  const str = (): string => {
    pos++; // opening quote
    let out = '';
    let runStart = pos;
    while (true) {
      if (pos >= n) fail('unterminated string');
      const c = text[pos];
      if (c === '"') {
        out += text.slice(runStart, pos);
        pos++;
        return out;
      }
      if (c === '\\') {
        out += text.slice(runStart, pos);
        if (pos + 1 >= n) fail('unterminated string');
        out += text[pos + 1];
        pos += 2;
        runStart = pos;
      } else pos++;
    }
  };
  const num = (): number => {
    const m = /^-?[0-9]+(\.[0-9]+)?/.exec(text.slice(pos, pos + 40));
    if (!m) return fail(`expected a value, found ${JSON.stringify(text[pos] ?? 'end of text')}`);
    pos += m[0].length;
    const v = Number(m[0]);
    if (!Number.isFinite(v)) fail('number out of range');
    return v;
  };
  const scalar = (): string | number => (text[pos] === '"' ? str() : num());
  const value = (): LvmValue => {
    skip();
    if (text[pos] !== '[') return scalar();
    pos++;
    const arr: LvmValue[] = [];
    skip();
    if (text[pos] === ']') {
      pos++;
      return arr;
    }
    while (true) {
      skip();
      if (arr.length >= MAX_ARRAY) throw new StrataError('LIMIT', `array longer than ${MAX_ARRAY}`, where);
      arr.push(scalar());
      skip();
      if (text[pos] === ',') {
        pos++;
        continue;
      }
      if (text[pos] === ']') {
        pos++;
        return arr;
      }
      fail(`expected ',' or ']' in array`);
    }
  };
  const body = (depth: number, closing: boolean): LvmSection => {
    if (depth > MAX_DEPTH) throw new StrataError('LIMIT', `sections nested deeper than ${MAX_DEPTH}`, where);
    const entries = new Map<string, LvmValue>();
    while (true) {
      skip();
      if (pos >= n || text.charCodeAt(pos) === 0) {
        if (closing) fail('missing "}"');
        return { kind: 'section', entries };
      }
      if (text[pos] === '}') {
        if (!closing) fail('unexpected "}"');
        pos++;
        return { kind: 'section', entries };
      }
      const key = ident();
      skip();
      if (text[pos] === '{') {
        pos++;
        entries.set(key, body(depth + 1, true));
      } else if (text[pos] === '=') {
        pos++;
        entries.set(key, value());
      } else fail(`expected '=' or '{' after ${JSON.stringify(key)}`);
    }
  };
  return body(0, false);
}

/** Typed accessors that turn a missing or mistyped field into CORRUPT naming it. */
export class LvmFields {
  constructor(
    readonly section: LvmSection,
    readonly path: string,
    readonly where: { file?: string; structure?: string; offset?: number },
  ) {}
  private bad(key: string, want: string): never {
    throw new StrataError('CORRUPT', `${this.path}/${key}: expected ${want}`, this.where);
  }
  has(key: string): boolean {
    return this.section.entries.has(key);
  }
  str(key: string): string {
    const v = this.section.entries.get(key);
    return typeof v === 'string' ? v : this.bad(key, 'a string');
  }
  optStr(key: string): string | undefined {
    const v = this.section.entries.get(key);
    return typeof v === 'string' ? v : undefined;
  }
  int(key: string): number {
    const v = this.section.entries.get(key);
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : this.bad(key, 'a non-negative integer');
  }
  optInt(key: string): number | undefined {
    return this.has(key) ? this.int(key) : undefined;
  }
  list(key: string): LvmValue[] {
    const v = this.section.entries.get(key);
    return Array.isArray(v) ? v : this.bad(key, 'an array');
  }
  strings(key: string): string[] {
    const v = this.section.entries.get(key);
    if (v === undefined) return [];
    if (!Array.isArray(v)) return this.bad(key, 'an array of strings');
    return v.filter((x): x is string => typeof x === 'string');
  }
  sub(key: string): LvmFields {
    const v = this.section.entries.get(key);
    return isSection(v) ? new LvmFields(v, `${this.path}/${key}`, this.where) : this.bad(key, 'a section');
  }
  optSub(key: string): LvmFields | undefined {
    const v = this.section.entries.get(key);
    return isSection(v) ? new LvmFields(v, `${this.path}/${key}`, this.where) : undefined;
  }
  /** Child sections in order. */
  sections(): Array<[string, LvmFields]> {
    const out: Array<[string, LvmFields]> = [];
    for (const [k, v] of this.section.entries)
      if (isSection(v)) out.push([k, new LvmFields(v, `${this.path}/${k}`, this.where)]);
    return out;
  }
}
