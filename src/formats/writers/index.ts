/** The image writers: raw and qcow2, behind the ImageWriter shape of ./writer.ts. */
export { firstNonZeroBlock, isZeroRange } from '../../util/zero.js';
export {
  planQcow2Stream,
  type Qcow2StreamPlan,
  qcow2MetadataCluster,
  qcow2StreamBytes,
} from './qcow2-stream.js';
export { Qcow2Writer, type Qcow2WriterOptions } from './qcow2-writer.js';
export { RawWriter } from './raw-writer.js';
export { type DirectTarget, type ImageWriter, type WriterResult, writeAll } from './writer.js';
