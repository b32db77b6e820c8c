import type { MountNode, MountTree } from './tree.js';

/**
 * Reads of a mounted tree through a block cache: file bytes in blocks of `tree.readBlock`,
 * least recently used dropped past `maxBytes`. Concurrent readers of one block share one
 * load; a failed load is not kept (the next read tries again). Sequential readers get
 * read-ahead: each read that continues where the last one of its handle ended widens a
 * window (up to `maxAhead` bytes) of following blocks loaded in the background.
 */
export class BlockCache {
  private readonly map = new Map<string, { p: Promise<Uint8Array>; cost: number }>();
  private total = 0;
  hits = 0;
  misses = 0;
  readonly block: number;

  constructor(
    private readonly tree: MountTree,
    private readonly maxBytes = 64 << 20,
    private maxAhead = 8 << 20,
  ) {
    this.block = tree.readBlock;
    // read ahead no more than a quarter of the cache: what is loaded ahead is not evicted before it is read
    this.maxAhead = Math.max(this.block, Math.min(maxAhead, Math.floor(maxBytes / 4)));
  }

  private load(node: MountNode, i: number): Promise<Uint8Array> {
    const k = `${node.key}:${i}`;
    const hit = this.map.get(k);
    if (hit) {
      this.hits++;
      this.map.delete(k);
      this.map.set(k, hit);
      return hit.p;
    }
    this.misses++;
    const p = this.tree.read(node, i * this.block, this.block);
    // what the block holds (a small file's one block is its size, not a whole block): the
    // bound is on the bytes kept, and a cache of small files holds as many as fit
    const entry = { p, cost: Math.max(64, Math.min(this.block, node.attr.size - i * this.block)) };
    this.map.set(k, entry);
    this.total += entry.cost;
    p.catch(() => {
      if (this.map.get(k) === entry) {
        this.map.delete(k);
        this.total -= entry.cost;
      }
    });
    while (this.total > this.maxBytes && this.map.size > 1) {
      const [old, v] = this.map.entries().next().value as [string, { cost: number }];
      this.map.delete(old);
      this.total -= v.cost;
    }
    return p;
  }

  /**
   * Bytes [offset, offset+length) of a file, clipped to its size; `ra` is the handle's read-ahead
   * state. A read of more than one block is copied into `into` when it fits (the caller's reply
   * buffer, reused: it must be done with the last one), else into a new buffer.
   */
  async read(node: MountNode, offset: number, length: number, ra?: ReadAhead, into?: Uint8Array): Promise<Uint8Array> {
    const size = node.attr.size;
    const end = Math.min(size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    const B = this.block;
    const first = Math.floor(offset / B);
    const last = Math.floor((end - 1) / B);
    if (ra) this.ahead(node, offset, end, last, ra);
    if (first === last) {
      const b = await this.load(node, first);
      const from = offset - first * B;
      return b.subarray(from, Math.min(b.length, from + (end - offset)));
    }
    const parts: Promise<Uint8Array>[] = [];
    for (let i = first; i <= last; i++) parts.push(this.load(node, i));
    const got = await Promise.all(parts);
    const out = into && into.length >= end - offset ? into.subarray(0, end - offset) : new Uint8Array(end - offset);
    for (let i = first; i <= last; i++) {
      const b = got[i - first];
      const from = Math.max(offset, i * B);
      const to = Math.min(end, i * B + b.length);
      if (to > from) out.set(b.subarray(from - i * B, to - i * B), from - offset);
    }
    return out;
  }

  private ahead(node: MountNode, offset: number, end: number, last: number, ra: ReadAhead): void {
    if (offset === ra.next) ra.window = Math.min(this.maxAhead, Math.max(2 * this.block, ra.window * 2));
    else ra.window = 0;
    ra.next = end;
    if (ra.window === 0) return;
    const B = this.block;
    const stop = Math.min(Math.ceil(node.attr.size / B) - 1, last + Math.ceil(ra.window / B));
    for (let i = Math.max(last + 1, ra.issued + 1); i <= stop; i++) {
      this.load(node, i).catch(() => {}); // an error is met again by the read that needs it
      ra.issued = i;
    }
  }

  clear(): void {
    this.map.clear();
    this.total = 0;
  }
}

/** Per-handle read-ahead state. */
export interface ReadAhead {
  /** Where the next sequential read would start. */
  next: number;
  /** Bytes to keep loaded ahead of it. */
  window: number;
  /** Last block index read ahead. */
  issued: number;
}

export function newReadAhead(): ReadAhead {
  return { next: 0, window: 0, issued: -1 };
}
