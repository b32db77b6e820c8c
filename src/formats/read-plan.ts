import { type ByteSource, readExact } from '../io/byte-source.js';
import { fileView } from '../io/filter-source.js';

export { clampStatus } from '../io/byte-source.js';

import { StrataError } from '../util/errors.js';
import { directBelow, pushDirect, readBelow } from './layer.js';
import type { DirectPiece, DiskImage } from './types.js';

/**
 * A read plan shared by the block-mapped readers (vhd, vhdx, vdi): the pieces of one virtual read, each
 * served from the container file, from the layer below (backing image or zeros), or as
 * zeros. Adjacent pieces whose sources are contiguous are merged as they are added, so
 * a run of blocks stored back to back in the file becomes one large host read.
 */
const FILE = 0;
const BELOW = 1;
const ZERO = 2;
/** Largest host gap between two pieces that one spanning read may cover. */
const MAX_GAP = 64 * 1024;

interface Piece {
  kind: number;
  /** Host offset (FILE) or virtual offset (BELOW); unused for ZERO. */
  src: number;
  /** Offset inside the output buffer. */
  at: number;
  len: number;
  structure: string;
}

export class ReadPlan {
  private readonly pieces: Piece[] = [];

  private add(kind: number, src: number, at: number, len: number, structure: string): void {
    if (len <= 0) return;
    const last = this.pieces[this.pieces.length - 1];
    if (last && last.kind === kind && last.at + last.len === at && (kind === ZERO || last.src + last.len === src)) {
      last.len += len;
      return;
    }
    this.pieces.push({ kind, src, at, len, structure });
  }

  file(host: number, at: number, len: number, structure: string): void {
    this.add(FILE, host, at, len, structure);
  }
  below(virt: number, at: number, len: number): void {
    this.add(BELOW, virt, at, len, '');
  }
  zero(at: number, len: number): void {
    this.add(ZERO, 0, at, len, '');
  }

  /**
   * Execute the plan for a read of `n` bytes; host ranges are checked against the file
   * size first. A plan that is one host range hands back the file's own buffer: fresh
   * large buffers cost as much as the read itself, so we never allocate two.
   */
  async exec(file: ByteSource, backing: ByteSource | undefined, n: number): Promise<Uint8Array> {
    const only = this.pieces.length === 1 ? this.pieces[0] : undefined;
    if (only && only.kind === FILE && only.len === n) return this.readFile(file, only);
    if (only && only.kind === ZERO) return new Uint8Array(n);
    const spanned = await this.readSpan(file, n);
    if (spanned) return spanned;
    if (only && only.kind === BELOW && backing && only.src + n <= backing.size) {
      const b = await backing.read(only.src, n);
      if (b.length === n) return b;
    }
    // Every byte of [0, n) is covered by exactly one piece, so no zero-fill is needed.
    const out = Buffer.allocUnsafe(n);
    await this.into(file, backing, out);
    return out;
  }

  /**
   * All pieces from the file, in host order with only small gaps between them (a VHD
   * block's sector bitmap sits between two blocks' data): read the whole host span at
   * once and close the gaps in place, so the read costs one buffer, like a raw file.
   */
  private async readSpan(file: ByteSource, n: number): Promise<Uint8Array | undefined> {
    const ps = this.pieces;
    if (ps.length < 2) return undefined;
    let gaps = 0;
    for (let i = 0; i < ps.length; i++) {
      const p = ps[i];
      if (p.kind !== FILE) return undefined;
      if (i > 0) {
        const q = ps[i - 1];
        const gap = p.src - (q.src + q.len);
        if (gap < 0 || gap > MAX_GAP) return undefined;
        gaps += gap;
      }
    }
    if (gaps > n / 8) return undefined;
    const first = ps[0];
    const last = ps[ps.length - 1];
    const span: Piece = {
      kind: FILE,
      src: first.src,
      at: 0,
      len: last.src + last.len - first.src,
      structure: first.structure,
    };
    const b = await this.readFile(file, span);
    // A plain file (or a slice of one) hands out a fresh buffer we may rearrange; other
    // sources (memory, caches) may hand out views of bytes they keep: copied out instead.
    if (!file.freshReads) {
      const out = Buffer.allocUnsafe(n);
      for (const p of ps) out.set(b.subarray(p.src - first.src, p.src - first.src + p.len), p.at);
      return out;
    }
    // Pieces move only towards the start (their output offset never exceeds their span
    // offset), so copying them in order never overwrites one not yet moved.
    for (const p of ps) {
      const from = p.src - first.src;
      if (from !== p.at) b.copyWithin(p.at, from, from + p.len);
    }
    return b.subarray(0, n);
  }

  private async readFile(file: ByteSource, p: Piece): Promise<Uint8Array> {
    checkHostRange(file, p);
    const b = await file.read(p.src, p.len);
    if (b.length !== p.len) {
      throw new StrataError('TRUNCATED', `short read: wanted ${p.len} bytes, got ${b.length}`, {
        file: file.name,
        structure: p.structure,
        offset: p.src,
      });
    }
    return b;
  }

  /**
   * The plan as pieces for bulk copies (see DiskImage.direct); `virt` is the virtual offset
   * of the plan's first byte. Host ranges past the end of the file fail as reads do.
   */
  async direct(file: ByteSource, backing: DiskImage | undefined, virt: number): Promise<DirectPiece[]> {
    const out: DirectPiece[] = [];
    const f = fileView(file);
    for (const p of this.pieces) {
      const offset = virt + p.at;
      if (p.kind === FILE) {
        checkHostRange(file, p);
        if (!f) pushDirect(out, { kind: 'other', offset, length: p.len });
        else pushDirect(out, { kind: 'file', offset, length: p.len, fd: f.fd, file: f.name, host: f.offset + p.src });
      } else if (p.kind === BELOW) await directBelow(backing, p.src, p.len, out);
      else pushDirect(out, { kind: 'zero', offset, length: p.len });
    }
    return out;
  }

  /**
   * Execute the plan into a caller's (reused, not zeroed) buffer: host ranges are read
   * straight into it through `readInto` when the file has one, so no fresh buffer is made.
   */
  async into(file: ByteSource, backing: ByteSource | undefined, out: Uint8Array): Promise<void> {
    for (const p of this.pieces) {
      if (p.kind === FILE) await readHost(file, p.src, p.len, out, p.at, p.structure);
      else if (p.kind === BELOW) await readBelow(backing, p.src, p.len, out, p.at);
      else out.fill(0, p.at, p.at + p.len);
    }
  }
}

function checkHostRange(file: ByteSource, p: Piece): void {
  if (p.src < 0 || p.src + p.len > file.size) {
    throw new StrataError('TRUNCATED', `${p.len} bytes at host offset ${p.src} lie past the end of the file`, {
      file: file.name,
      structure: p.structure,
      offset: p.src,
    });
  }
}

/** A small LRU of per-block sector bitmaps, bounded by total bytes. */
export class BitmapCache {
  private readonly map = new Map<number, Uint8Array>();
  private bytes = 0;
  constructor(private readonly capacity = 16 << 20) {}

  get(key: number): Uint8Array | undefined {
    const v = this.map.get(key);
    if (v) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  set(key: number, value: Uint8Array): void {
    const old = this.map.get(key);
    if (old) {
      this.bytes -= old.length;
      this.map.delete(key);
    }
    this.map.set(key, value);
    this.bytes += value.length;
    while (this.bytes > this.capacity && this.map.size > 1) {
      const k = this.map.keys().next().value as number;
      this.bytes -= (this.map.get(k) as Uint8Array).length;
      this.map.delete(k);
    }
  }
}

/**
 * Split sectors [first, first+count) of a bitmap into runs of equal bit value and call
 * `emit(startSector, runLength, set)` for each. `msbFirst` selects the bit order (VHD
 * numbers bits from the most significant, VHDX from the least). Whole 0x00/0xff bytes
 * are skipped a byte at a time.
 */
export function bitmapRuns(
  bm: Uint8Array,
  first: number,
  count: number,
  msbFirst: boolean,
  emit: (start: number, len: number, set: boolean) => void,
): void {
  const end = first + count;
  const bit = (s: number) => {
    const b = bm[s >>> 3] ?? 0;
    return ((msbFirst ? b >>> (7 - (s & 7)) : b >>> (s & 7)) & 1) === 1;
  };
  let s = first;
  while (s < end) {
    const v = bit(s);
    const start = s;
    s++;
    while (s < end) {
      if ((s & 7) === 0 && s + 8 <= end) {
        const byte = bm[s >>> 3] ?? 0;
        if (byte === (v ? 0xff : 0)) {
          s += 8;
          continue;
        }
      }
      if (bit(s) !== v) break;
      s++;
    }
    emit(start, s - start, v);
  }
}

/**
 * Read host bytes [offset, offset+len) of `src` straight into out[at, at+len): through
 * `readInto` when the source has it (no fresh buffer), else one read and a copy. Ranges
 * past the end of the source fail as TRUNCATED/CORRUPT naming `structure`.
 */
export async function readHost(
  src: ByteSource,
  offset: number,
  len: number,
  out: Uint8Array,
  at: number,
  structure: string,
): Promise<void> {
  if (!src.readInto || offset < 0 || offset + len > src.size) {
    out.set(await readExact(src, offset, len, structure), at);
    return;
  }
  const got = await src.readInto(offset, out.subarray(at, at + len));
  if (got !== len) {
    throw new StrataError('TRUNCATED', `short read: wanted ${len} bytes, got ${got}`, {
      file: src.name,
      structure,
      offset,
    });
  }
}
