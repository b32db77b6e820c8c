import type { FileType, NameListing } from './types.js';

/** NameListing's type codes: the values of ext's and XFS's directory-entry file_type. */
export const TYPE_OF_CODE: readonly FileType[] = [
  'unknown',
  'file',
  'dir',
  'char',
  'block',
  'fifo',
  'socket',
  'symlink',
];
const CODE_OF_TYPE = new Map(TYPE_OF_CODE.map((t, i) => [t, i]));
export const DIR_CODE = 2;
export const UNKNOWN_CODE = 0;
/** The code of a type (0, unknown, for a type without one). */
export const codeOfType = (t: FileType): number => CODE_OF_TYPE.get(t) ?? UNKNOWN_CODE;

const td = new TextDecoder('utf-8');
const te = new TextEncoder();

/** Room for the listings' arrays is carved from ArrayBuffers of this size (a bigger listing gets its own). */
const ARENA = 64 * 1024;
let arena = new ArrayBuffer(0);
let arenaUsed = 0;
/** Offset of `bytes` of fresh room (8-byte aligned) in the returned ArrayBuffer. */
function carve(bytes: number): [ArrayBuffer, number] {
  const n = (bytes + 7) & ~7;
  if (n > ARENA) return [new ArrayBuffer(n), 0];
  if (arenaUsed + n > arena.byteLength) {
    arena = new ArrayBuffer(ARENA);
    arenaUsed = 0;
  }
  const at = arenaUsed;
  arenaUsed += n;
  return [arena, at];
}

let shared: NameListingBuilder | undefined;

/**
 * A NameListing of the entries `fill` adds, synchronously, to a builder shared by every
 * listing (its growing buffers are kept); the result is copied into exact-size arrays carved
 * from 64 KiB ArrayBuffers. A names-only walk of a million entries in 10,000 directories so
 * makes no string or object per entry and ~450 ArrayBuffers, not four per directory: each
 * costs an allocation outside the heap and its tracking by the collector.
 */
export function buildNameListing(fill: (b: NameListingBuilder) => void): NameListing {
  const b = shared ?? new NameListingBuilder();
  shared = undefined; // a fill that builds another listing inside gets its own builder
  try {
    fill(b);
    return b.finish();
  } finally {
    b.reset();
    shared = b;
  }
}

/**
 * Collects a directory's entries: names copied back to back into one growing buffer, inode
 * numbers and types into arrays (see buildNameListing).
 */
export class NameListingBuilder {
  private names = new Uint8Array(4096);
  private used = 0;
  private starts = new Uint32Array(129);
  private inos = new Float64Array(128);
  private types = new Uint8Array(128);
  private count = 0;

  /**
   * Entry of type code `type` named by the UTF-8 bytes src[start, start + len), decoded as
   * `new TextDecoder('utf-8')` decodes them (invalid sequences become U+FFFD, a leading BOM
   * is dropped): copied as they are when plain ASCII, else as the decoded name's encoding.
   */
  addUtf8(ino: number, type: number, src: Uint8Array, start: number, len: number): void {
    const end = start + len;
    for (let k = start; k < end; k++) {
      if (src[k] >= 0x80) {
        this.addName(ino, type, td.decode(src.subarray(start, end)));
        return;
      }
    }
    this.room(len);
    const names = this.names;
    let at = this.used;
    for (let k = start; k < end; k++) names[at++] = src[k];
    this.push(ino, type, at);
  }

  /** Entry named `name` (stored as its UTF-8 encoding, a lone surrogate as U+FFFD), of type code `type`. */
  addName(ino: number, type: number, name: string): void {
    this.room(name.length * 3);
    const { written } = te.encodeInto(name, this.names.subarray(this.used));
    this.push(ino, type, this.used + written);
  }

  /** The entries added, copied out (inode numbers, starts, names, types in one carved piece). */
  finish(): NameListing {
    const n = this.count;
    const startsAt = n * 8;
    const namesAt = startsAt + ((n + 1) * 4 + 7 - (((n + 1) * 4 + 7) % 8));
    const typesAt = namesAt + this.used;
    const [buf, at] = carve(typesAt + n);
    const inos = new Float64Array(buf, at, n);
    inos.set(this.inos.subarray(0, n));
    const starts = new Uint32Array(buf, at + startsAt, n + 1);
    starts.set(this.starts.subarray(0, n + 1));
    const names = new Uint8Array(buf, at + namesAt, this.used);
    names.set(this.names.subarray(0, this.used));
    const types = new Uint8Array(buf, at + typesAt, n);
    types.set(this.types.subarray(0, n));
    return { count: n, names, starts, inos, types };
  }

  /** Empty again; buffers grown past 1 MiB by a huge directory are let go. */
  reset(): void {
    this.count = 0;
    this.used = 0;
    if (this.names.length > 1 << 20) this.names = new Uint8Array(4096);
    if (this.inos.length > 1 << 16) {
      this.starts = new Uint32Array(129);
      this.inos = new Float64Array(128);
      this.types = new Uint8Array(128);
    }
  }

  private room(bytes: number): void {
    if (this.used + bytes <= this.names.length) return;
    const grown = new Uint8Array(Math.max(this.names.length * 2, this.used + bytes));
    grown.set(this.names.subarray(0, this.used));
    this.names = grown;
  }

  private push(ino: number, type: number, end: number): void {
    const i = this.count;
    if (i === this.inos.length) {
      const inos = new Float64Array(i * 2);
      inos.set(this.inos);
      this.inos = inos;
      const types = new Uint8Array(i * 2);
      types.set(this.types);
      this.types = types;
      const starts = new Uint32Array(i * 2 + 1);
      starts.set(this.starts);
      this.starts = starts;
    }
    this.inos[i] = ino;
    this.types[i] = type;
    this.used = end;
    this.starts[i + 1] = end;
    this.count = i + 1;
  }
}
