/**
 * Extraction of a file or tree out of a file system into a directory: the walk
 * (extract/walk.ts), the destination it writes through (extract/destination.ts: POSIX
 * creation, owner and mode policy, never outside DEST) and the file data copier
 * (extract/file-data.ts).
 */
export { type ExtractOptions, type ExtractResult, extractTree } from './extract/walk.js';
