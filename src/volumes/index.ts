/**
 * The volumes layer: partition tables (GPT, MBR), the whole disk, and LVM logical volumes,
 * found by the volume drivers and each given as a ByteSource; content named by magic.
 * @module
 */
export { type ConcatPart, ConcatSource } from './concat-source.js';
export { cutVolume, type PartitionSpec } from './cut.js';
export {
  type DiscoverOptions,
  type DiscoverResult,
  discoverVolumes,
  VOLUME_DRIVERS,
  wholeDiskDriver,
} from './discover.js';
export { type GptHeader, type GptPartition, type GptTable, gptDriver, gptTypeName, parseGpt } from './gpt.js';
export {
  type DiskArea,
  type LvmLv,
  type LvmPvMeta,
  type LvmSegment,
  type LvmStripe,
  type LvmVg,
  lvmDriver,
  type PvLabel,
  parseVgMetadata,
  readPvLabel,
} from './lvm.js';
export { type MbrPartition, type MbrTable, mbrDriver, mbrTypeName, parseMbr } from './mbr.js';
export { looksLikeMbr, probeBytes, probeContent } from './probe.js';
export { findVolume, type VolumeAddress } from './select.js';
export type {
  DiskContext,
  PartitionTable,
  StackDriver,
  TableDriver,
  TableRead,
  Volume,
  VolumeDriver,
} from './types.js';
