import { type ByteSource, clampRead, clampStatus, type Extent, pushExtent, readIntoOrCopy } from './byte-source.js';

/**
 * What a filter reads through: bytes [0, size) of the filter are bytes
 * [offset, offset + size) of `source` (zeros where that runs past the source's end).
 */
export interface Unwrapped {
  source: ByteSource;
  offset: number;
}

/**
 * The base every `ByteSource` wrapper extends, in the spirit of nbdkit's filters: the public
 * calls check and clamp the request once (`read` and `readInto` as reads, against
 * LIMITS.maxReadBytes; `status` as status, which is not limited by the read limit: a map
 * asks for gigabytes at a time), then call the protected `*Range` hooks with a request that
 * lies inside the source. The hooks forward to `unwrap()`'s source by default, shifted by
 * its offset, with zeros (and `zero` status) past that source's end; a filter overrides
 * what it changes (a cache overrides the reads, a concatenation everything).
 *
 * `fd` is exposed only where offsets are preserved: a filter at offset 0 of its source,
 * lying wholly inside it, shows the source's descriptor (a slice at offset 0 of a file, a
 * cache of a file); a slice at a non-zero offset shows none, since a bulk copier reading
 * the descriptor at the slice's offsets would read the wrong bytes. Callers that can
 * shift offsets use {@link fileView}, which looks through every filter.
 *
 * `close` closes the inner source only where the filter owns it (a cache, which is made
 * for one source); a slice or a concatenation shares its sources with others (the
 * partitions of one disk) and leaves them open.
 */
export abstract class FilterSource implements ByteSource {
  /** A human name for errors. */
  abstract readonly name: string;
  abstract readonly size: number;

  /** The source this filter reads through and where its offset 0 lies there; undefined when several (concat). */
  abstract unwrap(): Unwrapped | undefined;

  get fd(): number | undefined {
    const u = this.unwrap();
    if (u === undefined) return undefined;
    return u.offset === 0 && this.size <= u.source.size ? u.source.fd : undefined;
  }

  /** Whether reads are fresh buffers (ByteSource.freshReads): not by default (a cache hands out views). */
  get freshReads(): boolean {
    return false;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    if (n === 0) return new Uint8Array(0);
    return this.readRange(offset, n);
  }

  async readInto(offset: number, out: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, out.length);
    if (n === 0) return 0;
    await this.readIntoRange(offset, n === out.length ? out : out.subarray(0, n));
    return n;
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    if (n === 0) return [];
    return this.statusRange(offset, n);
  }

  async close(): Promise<void> {}

  /** `n` (> 0) bytes at `offset`, inside [0, size). */
  protected async readRange(offset: number, n: number): Promise<Uint8Array> {
    const u = this.mustUnwrap();
    const at = u.offset + offset;
    const avail = Math.max(0, Math.min(n, u.source.size - at));
    const b = avail > 0 ? await u.source.read(at, avail) : new Uint8Array(0);
    if (b.length === n) return b;
    // The filter runs past its source's end (or the source came up short): zeros.
    const out = new Uint8Array(n);
    out.set(b.subarray(0, Math.min(b.length, n)));
    return out;
  }

  /** Fill all of `out` (inside [0, size)) with the bytes at `offset`. */
  protected async readIntoRange(offset: number, out: Uint8Array): Promise<void> {
    const u = this.unwrap();
    if (!u) {
      out.set(await this.readRange(offset, out.length));
      return;
    }
    const at = u.offset + offset;
    const avail = Math.max(0, Math.min(out.length, u.source.size - at));
    const got = avail > 0 ? await readIntoOrCopy(u.source, at, avail === out.length ? out : out.subarray(0, avail)) : 0;
    if (got < out.length) out.fill(0, got);
  }

  /** Status of [offset, offset+n), inside [0, size), covering it in order. */
  protected async statusRange(offset: number, n: number): Promise<Extent[]> {
    const u = this.mustUnwrap();
    const at = u.offset + offset;
    const avail = Math.max(0, Math.min(n, u.source.size - at));
    const out: Extent[] = [];
    if (avail > 0) {
      if (u.source.status) {
        for (const e of await u.source.status(at, avail)) pushExtent(out, e.offset - u.offset, e.length, e.kind);
      } else pushExtent(out, offset, avail, 'data');
    }
    pushExtent(out, offset + avail, n - avail, 'zero');
    return out;
  }

  private mustUnwrap(): Unwrapped {
    const u = this.unwrap();
    if (!u) throw new Error(`${this.name}: a filter over several sources must override its reads`);
    return u;
  }
}

/**
 * The local file under `src`, seen through every filter that preserves offsets up to a
 * shift: its descriptor, its name, and where offset 0 of `src` lies in it. Undefined when
 * a layer is not such a filter (a format, a concatenation of several parts) or a window
 * runs past its source's end (the file would read short there, the filter reads zeros).
 * Bulk copiers read the descriptor from a worker thread at `offset + x`.
 */
export function fileView(src: ByteSource): { fd: number; name: string; offset: number } | undefined {
  let cur = src;
  let off = 0;
  for (let depth = 0; depth < 64; depth++) {
    const u = cur.unwrap?.();
    if (!u) {
      const fd = cur.fd;
      return fd === undefined ? undefined : { fd, name: cur.name, offset: off };
    }
    if (u.offset + cur.size > u.source.size) return undefined;
    off += u.offset;
    cur = u.source;
  }
  return undefined;
}

/**
 * Where byte 0 of `src` lies in `base`, when `src` is `base` seen through filters that
 * preserve offsets up to a shift (partition slices, caches); null otherwise.
 */
export function offsetIn(src: ByteSource, base: ByteSource): number | null {
  let cur = src;
  let off = 0;
  for (let depth = 0; depth < 64; depth++) {
    if (cur === base) return off;
    const u = cur.unwrap?.();
    if (!u) return null;
    off += u.offset;
    cur = u.source;
  }
  return null;
}
