import type { DiskImage } from '../../formats/types.js';
import {
  type ByteSource,
  clampStatus,
  type Extent,
  pushExtent,
  readIntoOrCopy,
  statusOf,
} from '../../io/byte-source.js';
import { FilterSource, type Unwrapped } from '../../io/filter-source.js';
import { StrataError } from '../../util/errors.js';

/**
 * What the NBD server serves: a ByteSource of the virtual disk whose `status()` says which
 * ranges are `data`, `zero` (reads as zeros) or `unallocated` (a hole: nothing below holds
 * it, so it reads as zeros too), plus an optional writer. An image file (with its backing
 * chain resolved), a cached remote source or a library version (chunks fetched on demand)
 * all plug in the same way: as a ByteSource with status().
 */
export interface NbdExport {
  /** The export name clients ask for ('' selects the default export). */
  readonly name: string;
  readonly description?: string;
  readonly source: ByteSource;
  /** Where writes go; absent for a read-only export (writes answered EPERM). */
  readonly writer?: ExportWriter;
  /** Warm the source for a range (NBD_CMD_CACHE); optional. */
  prefetch?(offset: number, length: number): Promise<void>;
  /** The live cache's counters (hit rates by class, prefetchers), when it has one. */
  cacheStats?(): unknown;
  close(): Promise<void>;
}

/** The write side of an export: a copy-on-write overlay, for instance. */
export interface ExportWriter {
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make [offset, offset+length) read as zeros; `mayTrim` lets whole clusters be released. */
  writeZeroes(offset: number, length: number, mayTrim: boolean): Promise<void>;
  /** Drop what the client no longer needs; the range may then read as zeros or as before. */
  trim(offset: number, length: number): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
}

/**
 * Any ByteSource as a read-only export: how a library version (a manifest's chunks read
 * on demand through the block cache) or any other source plugs in. Its `status()`, when
 * it has one, drives base:allocation and the holes in READ replies; `close` releases it.
 */
export function sourceExport(
  name: string,
  source: ByteSource,
  opts: { description?: string; close?: () => Promise<void> } = {},
): NbdExport {
  return {
    name,
    description: opts.description,
    source,
    close: opts.close ?? (async () => source.close?.()),
  };
}

/**
 * An opened image (and its backing chain) as one ByteSource whose status looks through
 * the chain: a range unallocated in a layer takes the status of the layer below, and only
 * what no layer holds stays `unallocated` (a hole).
 */
export function chainSource(img: DiskImage): ByteSource {
  return new ChainSource(img);
}

/** A filter over the opened image: reads pass through, status looks down the chain. */
class ChainSource extends FilterSource {
  readonly name: string;
  readonly size: number;
  constructor(private readonly img: DiskImage) {
    super();
    this.name = img.name;
    this.size = img.size;
  }
  unwrap(): Unwrapped {
    return { source: this.img, offset: 0 };
  }
  protected override statusRange(offset: number, n: number): Promise<Extent[]> {
    return chainStatus(this.img, offset, n, 0);
  }
}

async function chainStatus(img: DiskImage, offset: number, length: number, depth: number): Promise<Extent[]> {
  if (depth > 64) throw new StrataError('LOOP', 'backing chain deeper than 64', { file: img.name });
  const n = clampStatus(img, offset, length);
  const out: Extent[] = [];
  for (const e of await img.status(offset, n)) {
    const b = img.backing;
    if (e.kind !== 'unallocated' || !b) {
      pushExtent(out, e.offset, e.length, e.kind);
      continue;
    }
    const inB = Math.max(0, Math.min(e.length, b.size - e.offset));
    if (inB > 0) {
      for (const s of await chainStatus(b, e.offset, inB, depth + 1)) pushExtent(out, s.offset, s.length, s.kind);
    }
    pushExtent(out, e.offset + inB, e.length - inB, 'unallocated');
  }
  return out;
}

/** Status of any source, `data` where it has none. */
export function allocationOf(src: ByteSource, offset: number, length: number): Promise<Extent[]> {
  return statusOf(src, offset, length);
}

/** Read exactly out.length bytes (zeros past the end) through readInto where the source has it. */
export async function readFully(src: ByteSource, offset: number, out: Uint8Array): Promise<void> {
  const got = await readIntoOrCopy(src, offset, out);
  if (got < out.length) out.fill(0, Math.max(0, got));
}
