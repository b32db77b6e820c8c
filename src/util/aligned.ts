/**
 * Page-aligned buffers for bulk I/O.
 *
 * The kernel copies between the page cache and user memory with `rep movsb`, which on the
 * AMD cores here runs ~10-15% slower when the user buffer is not 64-byte aligned. Node's
 * large Buffers come from malloc, which hands out mmap'd chunks 16 bytes past a page
 * boundary, and JavaScript cannot ask for an address. WebAssembly memories are mapped by V8
 * itself at page boundaries, so a buffer over one starts on a page (measured, 800 MB
 * page cache -> tmpfs with two copy threads: 387 ms against 434 ms median of 5).
 *
 * Each memory reserves its own (virtual) address range, so these are for a few long-lived
 * buffers (copy workers, read pools), not for every read.
 */
const WASM_PAGE = 64 * 1024;

/** The one WebAssembly API used here (lib ES2023 has no WebAssembly types). */
declare const WebAssembly: {
  Memory: new (d: {
    initial: number;
    maximum: number;
    shared?: boolean;
  }) => { buffer: ArrayBuffer | SharedArrayBuffer };
};

/** A buffer of `bytes` starting on a page boundary (rounded up to 64 KiB inside). */
export function pageAlignedBuffer(bytes: number, shared = false): Buffer {
  const pages = Math.max(1, Math.ceil(bytes / WASM_PAGE));
  const mem = shared
    ? new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true })
    : new WebAssembly.Memory({ initial: pages, maximum: pages });
  return Buffer.from(mem.buffer, 0, bytes);
}
