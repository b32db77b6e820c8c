/**
 * Strata: virtual-machine disk images as structured data. The package root is the library's
 * public surface (src/library/index.ts); each layer below has its own entry point
 * (`strata/io`, `strata/formats`, `strata/volumes`, `strata/fs`, `strata/blockmap`,
 * `strata/inspect`, `strata/store`, `strata/catalog`, `strata/serve`). See ARCHITECTURE.md.
 * @module
 */
export * from './library/index.js';
