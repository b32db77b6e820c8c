import { createRequire } from 'node:module';
import { zstdCompress, zstdDecompress } from '../util/zstd.js';

/**
 * zstd straight into caller-owned buffers (the store's pack arena, pooled scratch): fresh
 * megabyte-sized buffers per chunk cost a page fault per 4 KiB on first touch, which was
 * a third of check-in and checkout time. Uses zstd-napi's context API (ZSTD_compressCCtx /
 * ZSTD_decompressDCtx); falls back to src/util/zstd.ts plus a copy when the binding is absent.
 */
interface CCtx {
  compress(dst: Uint8Array, src: Uint8Array, level: number): number;
  compress2(dst: Uint8Array, src: Uint8Array): number;
  setParameter(param: number, value: number): void;
}
interface Binding {
  CCtx: new () => CCtx;
  CParameter: { compressionLevel: number; windowLog: number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  compressBound(n: number): number;
}

let binding: Binding | null | undefined;
let cctx: CCtx | undefined;
/** Contexts set up for a level and window ("level:windowLog"). */
const tuned = new Map<string, CCtx>();
let dctx: InstanceType<Binding['DCtx']> | undefined;

function load(): Binding | null {
  if (binding === undefined) {
    try {
      binding = createRequire(import.meta.url)('zstd-napi/binding') as Binding;
      cctx = new binding.CCtx();
      dctx = new binding.DCtx();
    } catch {
      binding = null;
    }
  }
  return binding;
}

/** Worst-case compressed size of `n` bytes (zstd's ZSTD_COMPRESSBOUND). */
export function compressBound(n: number): number {
  const b = load();
  if (b) return b.compressBound(n);
  return n + (n >>> 8) + (n < 128 << 10 ? ((128 << 10) - n) >>> 11 : 0) + 64;
}

/**
 * Compress `src` into `dst` (at least compressBound(src.length) long); returns the frame
 * length. `windowLog` (optional) widens zstd's match window beyond what the level picks
 * (level 3-6 use 2 MiB for inputs this size): an 8 MiB frame then finds matches anywhere
 * in itself. Decoders accept windows up to 2^27 by default.
 */
export function compressInto(dst: Uint8Array, src: Uint8Array, level: number, windowLog?: number): number {
  const b = load();
  if (b && windowLog !== undefined) {
    const key = `${level}:${windowLog}`;
    let c = tuned.get(key);
    if (!c) {
      c = new b.CCtx();
      c.setParameter(b.CParameter.compressionLevel, level);
      c.setParameter(b.CParameter.windowLog, windowLog);
      tuned.set(key, c);
    }
    return c.compress2(dst, src);
  }
  if (b && cctx) return cctx.compress(dst, src, level);
  const f = zstdCompress(src, level);
  dst.set(f);
  return f.length;
}

/** Decompress one frame into `dst`; returns the plain length (throws on a bad frame or a short `dst`). */
export function decompressInto(dst: Uint8Array, src: Uint8Array): number {
  if (load() && dctx) return dctx.decompress(dst, src);
  const p = zstdDecompress(src, dst.length);
  dst.set(p);
  return p.length;
}

/** The pool moved to util (one for the store, check-in and NBD); re-exported for the store's modules. */
export { BufferPool } from '../util/buffer-pool.js';
