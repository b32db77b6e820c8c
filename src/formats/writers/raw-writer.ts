import type { FileHandle } from 'node:fs/promises';
import { firstNonZeroBlock } from '../../util/zero.js';
import { type DirectTarget, type ImageWriter, type WriterResult, writeAll } from './writer.js';

/** Zero runs shorter than this inside a data buffer are written rather than skipped. */
const RAW_GRANULE = 4096;
/**
 * A non-zero run is written this much per pwrite. A buffered write holds the file's inode
 * lock for its whole length, the kernel's dirty-page throttling included, so two 4 MiB
 * writes in flight mostly wait for each other (strace: 26 ms per pwrite of ~3.3 MB, where
 * qemu-img's 64 KiB writes took 0.17 ms). vmdk streamOptimized -> raw through the pump,
 * 1 GiB mixed disk, 4 interleaved rounds at load 28, wall median (min): whole runs 5.98 s
 * (4.97), 1 MiB pieces 2.98 (2.72), 256 KiB 2.05 (1.53), 128 KiB 1.98 (1.38); qemu-img
 * 3.15 (1.62).
 */
const WRITE_PIECE = 256 * 1024;

/**
 * A sparse raw writer: the file is the disk. Zero blocks (4 KiB granules) are not
 * written; the file is sized with ftruncate, so they stay holes.
 */
export class RawWriter implements ImageWriter {
  readonly format = 'raw';
  readonly granularity = RAW_GRANULE;
  private bytesWritten = 0;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    readonly virtualSize: number,
  ) {}

  /** `fh` must be a fresh, empty file opened for writing. */
  static async create(fh: FileHandle, path: string, virtualSize: number): Promise<RawWriter> {
    await fh.truncate(virtualSize);
    return new RawWriter(fh, path, virtualSize);
  }

  async writeData(offset: number, data: Uint8Array): Promise<void> {
    const n = Math.min(data.length, this.virtualSize - offset);
    let pos = 0;
    while (pos < n) {
      // Skip a zero run, then write the following non-zero run in one call.
      const start = firstNonZeroBlock(data, pos, n, RAW_GRANULE, false);
      if (start >= n) break;
      const end = firstNonZeroBlock(data, start, n, RAW_GRANULE, true);
      await this.issue(data.subarray(start, end), offset + start);
      pos = end;
    }
  }

  zero(_offset: number, _length: number): void {
    // A fresh file reads as zeros wherever nothing was written.
  }

  private async issue(buf: Uint8Array, at: number): Promise<void> {
    this.bytesWritten += buf.length;
    for (let o = 0; o < buf.length; o += WRITE_PIECE) {
      await writeAll(this.fh, buf.subarray(o, Math.min(buf.length, o + WRITE_PIECE)), at + o, this.path, 'raw data');
    }
  }

  directTarget(): DirectTarget {
    return {
      fd: this.fh.fd,
      layout: 'raw',
      granularity: RAW_GRANULE,
      head: 0,
      adopt: () => {},
      done: (_head, bytes) => {
        this.bytesWritten += bytes;
      },
    };
  }

  async finish(): Promise<WriterResult> {
    return { bytesWritten: this.bytesWritten };
  }
}
