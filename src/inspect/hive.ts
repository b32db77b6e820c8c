import { StrataError } from '../util/errors.js';

/**
 * A reader for Windows registry hive files (regf): the base block, hive bins and cells, nk
 * (key), vk (value), lf/lh/li/ri (subkey lists) and db (big data) records. Read-only, over
 * the hive's bytes in memory. Every cell offset and length is checked against the hive;
 * subkey-list recursion is bounded and cycle-checked; a bad structure throws CORRUPT naming
 * the hive, the structure and its file offset.
 */

const BASE = 4096;
const MAX_SUBKEYS = 1 << 20;
const MAX_VALUES = 1 << 20;
const MAX_VALUE_BYTES = 64 * 1024 * 1024;
const MAX_LIST_DEPTH = 8;

export const REG = { SZ: 1, EXPAND_SZ: 2, BINARY: 3, DWORD: 4, DWORD_BE: 5, LINK: 6, MULTI_SZ: 7, QWORD: 11 } as const;

export interface HiveKey {
  /** Cell offset (relative to the first hive bin). */
  offset: number;
  name: string;
}

export interface HiveValue {
  name: string;
  type: number;
  data: Uint8Array;
}

const latin1 = new TextDecoder('latin1');
const utf16 = new TextDecoder('utf-16le');

export class Hive {
  private readonly dv: DataView;
  readonly minorVersion: number;

  private constructor(
    private readonly b: Uint8Array,
    readonly name: string,
    private readonly rootOffset: number,
  ) {
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    this.minorVersion = this.dv.getUint32(0x18, true);
  }

  /** Check the base block and open the hive. */
  static open(bytes: Uint8Array, name: string): Hive {
    if (bytes.length < BASE + 32) {
      throw new StrataError('TRUNCATED', `${bytes.length} bytes is too short for a registry hive`, {
        file: name,
        structure: 'regf base block',
        offset: 0,
      });
    }
    if (bytes[0] !== 0x72 || bytes[1] !== 0x65 || bytes[2] !== 0x67 || bytes[3] !== 0x66) {
      throw new StrataError('CORRUPT', 'no "regf" signature', { file: name, structure: 'regf base block', offset: 0 });
    }
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const root = dv.getUint32(0x24, true);
    const h = new Hive(bytes, name, root);
    h.root(); // the root key must be a key
    return h;
  }

  private bad(message: string, structure: string, cell?: number): StrataError {
    return new StrataError('CORRUPT', message, {
      file: this.name,
      structure,
      offset: cell === undefined ? undefined : BASE + cell,
    });
  }

  /** The data of the allocated cell at `off`: [start, end) in the file. */
  private cell(off: number, what: string): [number, number] {
    const abs = BASE + off;
    if (!Number.isInteger(off) || off < 0 || abs + 4 > this.b.length) {
      throw this.bad(`cell offset ${off} outside the hive`, what, off);
    }
    const size = this.dv.getInt32(abs, true);
    const len = Math.abs(size);
    if (len < 8 || abs + len > this.b.length) throw this.bad(`cell size ${size} does not fit`, what, off);
    return [abs + 4, abs + len];
  }

  private sig(at: number): string {
    return String.fromCharCode(this.b[at], this.b[at + 1]);
  }

  private key(off: number, what: string): HiveKey {
    const [s, e] = this.cell(off, what);
    if (e - s < 0x4c || this.sig(s) !== 'nk') throw this.bad('not a key (nk) record', what, off);
    const flags = this.dv.getUint16(s + 2, true);
    const len = this.dv.getUint16(s + 0x48, true);
    if (s + 0x4c + len > e) throw this.bad(`key name of ${len} bytes runs past its cell`, what, off);
    const raw = this.b.subarray(s + 0x4c, s + 0x4c + len);
    return { offset: off, name: flags & 0x20 ? latin1.decode(raw) : utf16.decode(raw) };
  }

  root(): HiveKey {
    return this.key(this.rootOffset, 'root key');
  }

  /** The subkeys of `k`, in list order. */
  subkeys(k: HiveKey): HiveKey[] {
    const [s] = this.cell(k.offset, `key ${k.name}`);
    const count = this.dv.getUint32(s + 0x14, true);
    if (count === 0) return [];
    if (count > MAX_SUBKEYS) throw this.bad(`${count} subkeys`, `key ${k.name}`, k.offset);
    const list = this.dv.getUint32(s + 0x1c, true);
    const out: number[] = [];
    this.collect(list, out, new Set(), 0, k.name);
    return out.map((o) => this.key(o, `subkey of ${k.name}`));
  }

  private collect(list: number, out: number[], seen: Set<number>, depth: number, owner: string): void {
    const what = `subkey list of ${owner}`;
    if (seen.has(list))
      throw new StrataError('LOOP', 'subkey list refers to itself', {
        file: this.name,
        structure: what,
        offset: BASE + list,
      });
    if (depth > MAX_LIST_DEPTH) throw this.bad('subkey lists nested too deep', what, list);
    seen.add(list);
    const [s, e] = this.cell(list, what);
    const sig = this.sig(s);
    const n = this.dv.getUint16(s + 2, true);
    const step = sig === 'lf' || sig === 'lh' ? 8 : sig === 'li' || sig === 'ri' ? 4 : 0;
    if (step === 0) throw this.bad(`unknown subkey list type "${sig}"`, what, list);
    if (s + 4 + n * step > e) throw this.bad(`${n} entries run past the list cell`, what, list);
    for (let i = 0; i < n; i++) {
      const o = this.dv.getUint32(s + 4 + i * step, true);
      if (sig === 'ri') this.collect(o, out, seen, depth + 1, owner);
      else {
        if (out.length >= MAX_SUBKEYS) throw this.bad('too many subkeys', what, list);
        out.push(o);
      }
    }
  }

  /** A subkey by name (case-insensitive, as Windows compares). */
  child(k: HiveKey, name: string): HiveKey | undefined {
    const want = name.toLowerCase();
    return this.subkeys(k).find((c) => c.name.toLowerCase() === want);
  }

  /** A key by backslash-separated path from the root ("Microsoft\\Windows NT\\CurrentVersion"). */
  path(p: string): HiveKey | undefined {
    let k: HiveKey | undefined = this.root();
    for (const part of p.split('\\').filter(Boolean)) {
      k = this.child(k, part);
      if (!k) return undefined;
    }
    return k;
  }

  values(k: HiveKey): HiveValue[] {
    const [s] = this.cell(k.offset, `key ${k.name}`);
    const count = this.dv.getUint32(s + 0x24, true);
    if (count === 0) return [];
    if (count > MAX_VALUES) throw this.bad(`${count} values`, `key ${k.name}`, k.offset);
    const listOff = this.dv.getUint32(s + 0x28, true);
    const [ls, le] = this.cell(listOff, `value list of ${k.name}`);
    if (ls + count * 4 > le)
      throw this.bad(`${count} values run past the list cell`, `value list of ${k.name}`, listOff);
    const out: HiveValue[] = [];
    for (let i = 0; i < count; i++) out.push(this.value(this.dv.getUint32(ls + i * 4, true), k.name));
    return out;
  }

  private value(off: number, owner: string): HiveValue {
    const what = `value of ${owner}`;
    const [s, e] = this.cell(off, what);
    if (e - s < 0x14 || this.sig(s) !== 'vk') throw this.bad('not a value (vk) record', what, off);
    const nameLen = this.dv.getUint16(s + 2, true);
    const rawSize = this.dv.getUint32(s + 4, true);
    const dataOff = this.dv.getUint32(s + 8, true);
    const type = this.dv.getUint32(s + 0xc, true);
    const flags = this.dv.getUint16(s + 0x10, true);
    if (s + 0x14 + nameLen > e) throw this.bad('value name runs past its cell', what, off);
    const raw = this.b.subarray(s + 0x14, s + 0x14 + nameLen);
    const name = flags & 1 ? latin1.decode(raw) : utf16.decode(raw);
    const inline = (rawSize & 0x80000000) !== 0;
    const size = rawSize & 0x7fffffff;
    let data: Uint8Array;
    if (inline) {
      if (size > 4) throw this.bad(`inline value of ${size} bytes`, `value ${name}`, off);
      data = this.b.slice(s + 8, s + 8 + size);
    } else if (size > MAX_VALUE_BYTES) {
      throw this.bad(`value of ${size} bytes`, `value ${name}`, off);
    } else {
      data = this.data(dataOff, size, `value ${name} of ${owner}`);
    }
    return { name, type, data };
  }

  /** Value bytes: one cell, or a big-data (db) record's segments (hive 1.4+, over 16344 bytes). */
  private data(off: number, size: number, what: string): Uint8Array {
    const [s, e] = this.cell(off, what);
    if (size > 16344 && this.minorVersion >= 4 && this.sig(s) === 'db') {
      const n = this.dv.getUint16(s + 2, true);
      const [ls, le] = this.cell(this.dv.getUint32(s + 4, true), `${what} segment list`);
      if (ls + n * 4 > le) throw this.bad(`${n} segments run past the list cell`, what, off);
      const out = new Uint8Array(size);
      let at = 0;
      for (let i = 0; i < n && at < size; i++) {
        const [ss, se] = this.cell(this.dv.getUint32(ls + i * 4, true), `${what} segment ${i}`);
        const take = Math.min(16344, se - ss, size - at);
        out.set(this.b.subarray(ss, ss + take), at);
        at += take;
      }
      if (at < size) throw this.bad(`big data holds ${at} of ${size} bytes`, what, off);
      return out;
    }
    if (s + size > e) throw this.bad(`${size} bytes run past the data cell`, what, off);
    return this.b.slice(s, s + size);
  }

  /** A value of a key by name (case-insensitive; '' is the default value). */
  get(k: HiveKey, name: string): HiveValue | undefined {
    const want = name.toLowerCase();
    return this.values(k).find((v) => v.name.toLowerCase() === want);
  }
}

/** REG_SZ / REG_EXPAND_SZ as text (up to the first NUL), REG_DWORD / REG_QWORD as decimal text. */
export function valueText(v: HiveValue | undefined): string | undefined {
  if (!v) return undefined;
  if (v.type === REG.SZ || v.type === REG.EXPAND_SZ) {
    const even = v.data.subarray(0, v.data.length & ~1);
    const t = utf16.decode(even);
    const nul = t.indexOf('\u0000');
    return nul >= 0 ? t.slice(0, nul) : t;
  }
  if (v.type === REG.DWORD && v.data.length >= 4) {
    return String(new DataView(v.data.buffer, v.data.byteOffset, 4).getUint32(0, true));
  }
  if (v.type === REG.QWORD && v.data.length >= 8) {
    return String(new DataView(v.data.buffer, v.data.byteOffset, 8).getBigUint64(0, true));
  }
  return undefined;
}

export function valueNumber(v: HiveValue | undefined): number | undefined {
  if (!v || (v.type !== REG.DWORD && v.type !== REG.QWORD) || v.data.length < 4) return undefined;
  return new DataView(v.data.buffer, v.data.byteOffset, 4).getUint32(0, true);
}
