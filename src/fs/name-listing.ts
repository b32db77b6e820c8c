import type { FileType, NameListing } from './types.js';

const td = new TextDecoder('utf-8');
const te = new TextEncoder();

/**
 * Collects a directory's entries as a NameListing: names copied back to back into one
 * growing buffer, inode numbers and types into arrays. A names-only walk of a million
 * entries then makes no string or object per entry.
 */
export class NameListingBuilder {
  private names = new Uint8Array(4096);
  private used = 0;
  private starts = new Uint32Array(129);
  private inos = new Float64Array(128);
  private readonly types: FileType[] = [];
  private count = 0;

  /**
   * Entry named by the UTF-8 bytes src[start, start + len), decoded as
   * `new TextDecoder('utf-8')` decodes them (invalid sequences become U+FFFD, a leading BOM
   * is dropped): copied as they are when plain ASCII, else as the decoded name's encoding.
   */
  addUtf8(ino: number, type: FileType, src: Uint8Array, start: number, len: number): void {
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

  /** Entry named `name` (stored as its UTF-8 encoding, a lone surrogate as U+FFFD). */
  addName(ino: number, type: FileType, name: string): void {
    this.room(name.length * 3);
    const { written } = te.encodeInto(name, this.names.subarray(this.used));
    this.push(ino, type, this.used + written);
  }

  finish(): NameListing {
    const n = this.count;
    return {
      count: n,
      names: this.names.subarray(0, this.used),
      starts: this.starts.subarray(0, n + 1),
      inos: this.inos.subarray(0, n),
      types: this.types,
    };
  }

  private room(bytes: number): void {
    if (this.used + bytes <= this.names.length) return;
    const grown = new Uint8Array(Math.max(this.names.length * 2, this.used + bytes));
    grown.set(this.names.subarray(0, this.used));
    this.names = grown;
  }

  private push(ino: number, type: FileType, end: number): void {
    const i = this.count;
    if (i === this.inos.length) {
      const inos = new Float64Array(i * 2);
      inos.set(this.inos);
      this.inos = inos;
      const starts = new Uint32Array(i * 2 + 1);
      starts.set(this.starts);
      this.starts = starts;
    }
    this.inos[i] = ino;
    this.types.push(type);
    this.used = end;
    this.starts[i + 1] = end;
    this.count = i + 1;
  }
}
