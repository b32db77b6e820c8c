import { type ByteSource, type Extent, pushExtent, readIntoOrCopy } from '../io/byte-source.js';
import { FilterSource, type Unwrapped } from '../io/filter-source.js';
import { StrataError } from '../util/errors.js';

/** One piece of a concatenation: `length` bytes read from `source` starting at its offset 0. */
export interface ConcatPart {
  source: ByteSource;
  length: number;
}

/**
 * Several sources back to back (an LVM logical volume made of segments on one or more PVs).
 * Reads that cross a part boundary are split; a part that is shorter than its declared
 * length reads as zeros past its end (like SliceSource). A filter over several sources:
 * it overrides every forward, unwraps only when it has one part, and leaves its parts open.
 */
export class ConcatSource extends FilterSource {
  readonly size: number;
  private readonly starts: number[] = [];

  constructor(
    private readonly parts: readonly ConcatPart[],
    readonly name: string,
  ) {
    super();
    let pos = 0;
    for (const p of parts) {
      if (!Number.isSafeInteger(p.length) || p.length < 0) {
        throw new StrataError('USAGE', `bad concat part length ${p.length}`, { file: name });
      }
      this.starts.push(pos);
      pos += p.length;
      if (!Number.isSafeInteger(pos)) throw new StrataError('LIMIT', 'concatenation too large', { file: name });
    }
    this.size = pos;
  }

  unwrap(): Unwrapped | undefined {
    return this.parts.length === 1 ? { source: this.parts[0].source, offset: 0 } : undefined;
  }

  /** Index of the part holding byte `offset` (binary search). */
  private partAt(offset: number): number {
    let lo = 0;
    let hi = this.parts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private async *pieces(offset: number, n: number): AsyncGenerator<[number, number, number]> {
    // yields [part index, offset within part, length]
    let pos = offset;
    let i = this.partAt(offset);
    while (pos < offset + n && i < this.parts.length) {
      const within = pos - this.starts[i];
      const len = Math.min(this.parts[i].length - within, offset + n - pos);
      if (len > 0) yield [i, within, len];
      pos += Math.max(0, len);
      i++;
    }
  }

  protected override async readRange(offset: number, n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    const jobs: Promise<void>[] = [];
    for await (const [i, within, len] of this.pieces(offset, n)) {
      const at = this.starts[i] + within - offset;
      jobs.push(
        this.parts[i].source.read(within, len).then((b) => {
          out.set(b.subarray(0, Math.min(b.length, len)), at);
        }),
      );
    }
    await Promise.all(jobs);
    return out;
  }

  protected override async readIntoRange(offset: number, out: Uint8Array): Promise<void> {
    const jobs: Promise<void>[] = [];
    for await (const [i, within, len] of this.pieces(offset, out.length)) {
      const at = this.starts[i] + within - offset;
      const src = this.parts[i].source;
      const view = out.subarray(at, at + len);
      const avail = Math.max(0, Math.min(len, src.size - within));
      jobs.push(
        (avail > 0 ? readIntoOrCopy(src, within, view.subarray(0, avail)) : Promise.resolve(0)).then((got) => {
          if (got < len) view.fill(0, got);
        }),
      );
    }
    await Promise.all(jobs);
  }

  protected override async statusRange(offset: number, n: number): Promise<Extent[]> {
    const out: Extent[] = [];
    for await (const [i, within, len] of this.pieces(offset, n)) {
      const src = this.parts[i].source;
      const base = this.starts[i];
      if (!src.status) {
        pushExtent(out, base + within, len, 'data');
        continue;
      }
      const avail = Math.max(0, Math.min(len, src.size - within));
      for (const e of avail > 0 ? await src.status(within, avail) : [])
        pushExtent(out, base + e.offset, e.length, e.kind);
      if (avail < len) pushExtent(out, base + within + avail, len - avail, 'zero');
    }
    return out;
  }
}

/**
 * A source that exists (it has a size and a name) but cannot be read: a logical volume
 * of an unsupported segment type, or one whose PV is missing. Every read throws the error.
 */
export class FailingSource implements ByteSource {
  constructor(
    readonly name: string,
    readonly size: number,
    private readonly error: () => StrataError,
  ) {}
  async read(_offset: number, _length: number): Promise<Uint8Array> {
    throw this.error();
  }
}
