import type { ByteSource, Extent } from '../../io/byte-source.js';
import { clampRead, clampStatus } from '../../io/byte-source.js';
import { fileView } from '../../io/filter-source.js';
import type { DirectPiece, DiskImage, FormatDriver, OpenContext } from '../types.js';

/** A raw image: the file is the disk. Detection falls back to it. */
export class RawImage implements DiskImage {
  readonly format = 'raw';
  readonly warnings: string[] = [];
  readonly size: number;
  readonly fileSize: number;
  readonly name: string;
  constructor(private readonly src: ByteSource) {
    this.size = src.size;
    this.fileSize = src.size;
    this.name = src.name;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.src.read(offset, length);
  }
  async readInto(offset: number, out: Uint8Array): Promise<number> {
    if (this.src.readInto) return this.src.readInto(offset, out);
    const b = await this.src.read(offset, out.length);
    out.set(b);
    return b.length;
  }
  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    if (this.src.status) return this.src.status(offset, n);
    return n > 0 ? [{ offset, length: n, kind: 'data' }] : [];
  }
  /** The file itself, byte for byte: fileView and offsetIn see through to it (extract's native writer reads its descriptor). */
  unwrap(): { source: ByteSource; offset: number } {
    return { source: this.src, offset: 0 };
  }
  async direct(offset: number, length: number): Promise<DirectPiece[]> {
    const n = clampRead(this, offset, length);
    if (n === 0) return [];
    const f = fileView(this.src);
    if (!f) return [{ kind: 'other', offset, length: n }];
    // holes of a sparse file are zero pieces: the copier skips them without reading
    const out: DirectPiece[] = [];
    for (const e of await this.status(offset, n)) {
      if (e.kind === 'data') {
        out.push({
          kind: 'file',
          offset: e.offset,
          length: e.length,
          fd: f.fd,
          file: f.name,
          host: f.offset + e.offset,
        });
      } else out.push({ kind: 'zero', offset: e.offset, length: e.length });
    }
    return out;
  }
  async close(): Promise<void> {
    await this.src.close?.();
  }
}

export const rawDriver: FormatDriver = {
  name: 'raw',
  probe: () => true,
  open: async (ctx: OpenContext) => new RawImage(ctx.source),
};
