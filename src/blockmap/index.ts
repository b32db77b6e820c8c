/**
 * The block-map layer: which file, metadata structure, volume or gap owns each byte of a
 * disk; saved and loaded in a compact binary form; block I/O traces resolved against it.
 * @module
 */
export { BlockMap, type KindSummary, type MapVolume, type Owner, ownerOf } from './block-map.js';
export { type BuildOptions, buildBlockMap, type StreamedMap, streamBlockMap } from './build.js';
export { loadBlockMap, saveBlockMap } from './codec.js';
export { classOf, KINDS, type Kind, type KindClass } from './kinds.js';
export { MapFile, type MapRecords } from './map-file.js';
export { blockMapOfImage } from './of-image.js';
export type { MapColumns, RecordSink } from './resolve.js';
export { BlockMapWriter } from './save-stream.js';
export {
  parseTraceLine,
  type ResolvedAccess,
  readTrace,
  readTraceBatches,
  type TraceAccess,
  TraceBatch,
  TraceResolver,
  type TraceSummary,
  type TraceTotals,
} from './trace.js';
export type { FileRow } from './trace-files.js';
