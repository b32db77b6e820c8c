import type { ByteSource, Extent } from '../io/byte-source.js';
import type { HttpSourceOptions } from '../io/http-source.js';

/** A reference to a backing file exactly as the image records it. */
export interface BackingRef {
  /** The path (or URL) as written in the image header/descriptor. */
  path: string;
  /** The backing format if the image records it (qcow2 backing format extension, ...). */
  format?: string;
}

/**
 * Where the bytes of a virtual range live, for bulk copies that read the container file
 * directly instead of through the reader:
 * - `file`: `length` bytes at `host` in the local file with descriptor `fd` (named `file`);
 * - `zero`: reads as zeros;
 * - `other`: only the reader can produce these bytes (compressed, remote, or a layer that
 *   cannot say).
 * Pieces cover the asked range in order, without gaps.
 */
export type DirectPiece =
  | { kind: 'file'; offset: number; length: number; fd: number; file: string; host: number }
  | { kind: 'zero' | 'other'; offset: number; length: number };

/**
 * An opened image container: a ByteSource of the virtual disk, plus what the container
 * says about itself. `read` already resolves the backing chain; `status` reports this
 * layer only ('unallocated' ranges are served by `backing`, or read as zeros without one).
 */
export interface DiskImage extends ByteSource {
  /** 'raw' | 'qcow2' | 'vmdk' | 'vhd' | 'vhdx' | 'vdi' */
  readonly format: string;
  /** e.g. 'v3', 'monolithicSparse', 'streamOptimized', 'dynamic', 'fixed', 'differencing', 'static'. */
  readonly subformat?: string;
  /** Bytes of the container file(s) on the host. */
  readonly fileSize: number;
  /** Allocation granularity (qcow2 cluster, vmdk grain, vhd/vhdx/vdi block), if any. */
  readonly clusterSize?: number;
  readonly backingRef?: BackingRef;
  /** The opened backing image, when it was opened (not with `noBacking`). */
  readonly backing?: DiskImage;
  /** Non-fatal problems found while opening (dirty log, unknown header extension, ...). */
  readonly warnings: string[];
  status(offset: number, length: number): Promise<Extent[]>;
  /**
   * Optional: where [offset, offset+length) lives (see DirectPiece), through the backing
   * chain. Same checks as `read`: a range the reader would refuse is refused here too.
   */
  direct?(offset: number, length: number): Promise<DirectPiece[]>;
  /** Format-specific facts for `info --json` (version, features, compression type, ...). */
  details?(): Record<string, unknown>;
  close(): Promise<void>;
}

export interface OpenOptions {
  /** Skip detection and open as this format. */
  format?: string;
  /** Directories (besides the image's own folder) that backing and extent files may come from. */
  allowRoots?: string[];
  /** Allow backing/extent paths anywhere (the explicit "I trust this image" switch). */
  allowAnyPath?: boolean;
  /** Do not open backing files: unallocated ranges read as zeros. */
  noBacking?: boolean;
  /** Headers for HTTP sources. */
  httpHeaders?: Record<string, string>;
  /** Timeouts and retries of HTTP sources (defaults: see HttpSourceOptions). */
  http?: Pick<HttpSourceOptions, 'connectTimeoutMs' | 'idleTimeoutMs' | 'retries' | 'retryDelayMs'>;
  /**
   * Opens backing references that are not files (e.g. a library version named by a qcow2
   * overlay); returns undefined to fall back to the file lookup. Layers above supply it.
   */
  resolveBacking?: (ref: BackingRef, from: string) => Promise<DiskImage | undefined>;
}

/** What a format driver gets to open one container file. */
export interface OpenContext {
  /** The container file. */
  readonly source: ByteSource;
  /** Local path or URL of the container, used to resolve relative references. */
  readonly location: string;
  readonly options: OpenOptions;
  /** Open the backing image named by this image (resolved, confined, loop-checked). */
  openBacking(ref: BackingRef): Promise<DiskImage>;
  /** Open a companion file (vmdk extent, qcow2 external data file) as plain bytes. */
  openCompanion(ref: string, structure: string): Promise<ByteSource>;
  /** Warnings gathered while opening; a driver hands this array to its image as `warnings`. */
  readonly warnings: string[];
  warn(message: string): void;
}

export interface FormatDriver {
  readonly name: string;
  /**
   * Content detection: `head` is the first up-to-64-KiB of the file, `tail` its last
   * up-to-512 bytes (VHD keeps its footer there), `size` the file size.
   */
  probe(head: Uint8Array, tail: Uint8Array, size: number): boolean;
  open(ctx: OpenContext): Promise<DiskImage>;
}
