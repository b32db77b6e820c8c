/**
 * Strata: virtual-machine disk images as structured data. The package root is the library's
 * public surface (src/library/index.ts); each layer below has its own entry point
 * (`@strata-disk/cli/io`, `@strata-disk/cli/formats`, `@strata-disk/cli/volumes`,
 * `@strata-disk/cli/fs`, `@strata-disk/cli/blockmap`, `@strata-disk/cli/inspect`,
 * `@strata-disk/cli/store`, `@strata-disk/cli/catalog`, `@strata-disk/cli/serve`). See ARCHITECTURE.md.
 * @module
 */
export * from './library/index.js';
