import { createRequire } from 'node:module';
import type * as Zlib from 'node:zlib';

let z: typeof Zlib | undefined;

/**
 * node:zlib, loaded on first use: most runs never inflate or deflate, and loading the
 * module costs a few milliseconds of every short command's start-up.
 */
export function lazyZlib(): typeof Zlib {
  if (!z) z = createRequire(import.meta.url)('node:zlib') as typeof Zlib;
  return z;
}
