/**
 * The formats layer: virtual-disk containers (raw, qcow2, VHD, VHDX, VMDK, VDI) read as one
 * ByteSource each (a DiskImage), backing chains resolved, and the raw and qcow2 writers.
 * The drivers are in FORMAT_DRIVERS; each but raw loads its module on first use.
 * @module
 */
export { chain, closeChain, resolvedStatus } from './layer.js';
export {
  DRIVERS as FORMAT_DRIVERS,
  detectFormat,
  driverByName,
  openByteSource,
  openImage,
  openImageSource,
} from './open.js';
export { RawImage, rawDriver } from './raw/index.js';
export type { BackingRef, DirectPiece, DiskImage, FormatDriver, OpenContext, OpenOptions } from './types.js';
export {
  type DirectTarget,
  type ImageWriter,
  planQcow2Stream,
  type Qcow2StreamPlan,
  Qcow2Writer,
  type Qcow2WriterOptions,
  qcow2StreamBytes,
  RawWriter,
  type WriterResult,
} from './writers/index.js';
