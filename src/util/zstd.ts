import { createRequire } from 'node:module';
import type * as Zlib from 'node:zlib';
import { lazyZlib } from './lazy-zlib.js';

/**
 * zstd frames in and out. Node >= 22.15 ships zstd in node:zlib; on Node 20 we use
 * zstd-napi (a maintained binding to the reference library, built from source).
 */
type Z = typeof Zlib & {
  zstdCompressSync?: (b: Uint8Array, o?: unknown) => Buffer;
  zstdDecompressSync?: (b: Uint8Array, o?: unknown) => Buffer;
};
const z = () => lazyZlib() as Z;

interface Napi {
  compress(b: Uint8Array, params?: { compressionLevel?: number }): Buffer;
  decompress(b: Uint8Array): Buffer;
}
let napi: Napi | undefined;
function loadNapi(): Napi {
  if (!napi) napi = createRequire(import.meta.url)('zstd-napi') as Napi;
  return napi;
}

export function zstdCompress(data: Uint8Array, level = 3): Uint8Array {
  const zl = z();
  if (zl.zstdCompressSync) {
    return zl.zstdCompressSync(data, {
      params: { [(zl.constants as Record<string, number>).ZSTD_c_compressionLevel]: level },
    });
  }
  return loadNapi().compress(data, { compressionLevel: level });
}

/**
 * Decompress one or more zstd frames. `maxOutput` bounds the result so a hostile frame
 * cannot allocate without limit.
 */
export function zstdDecompress(data: Uint8Array, maxOutput: number): Uint8Array {
  const zl = z();
  if (zl.zstdDecompressSync) return zl.zstdDecompressSync(data, { maxOutputLength: maxOutput });
  const out = loadNapi().decompress(data);
  if (out.length > maxOutput) throw new RangeError(`zstd output exceeds ${maxOutput} bytes`);
  return out;
}
