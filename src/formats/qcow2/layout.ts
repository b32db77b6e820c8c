/**
 * On-disk constants of qcow2 (qemu's docs/interop/qcow2.txt), shared by the reader
 * (header.ts, image.ts), the writer (writers/qcow2-writer.ts) and the overlay
 * (writers/qcow2-overlay*.ts). Every integer is big-endian.
 */
import { QCOW2_MAGIC } from '../probe.js';

export { QCOW2_MAGIC };

export const TWO32 = 2 ** 32;

/** Byte offsets of the header fields. Version 2 headers end at 72; version 3 at header_length. */
export enum HDR {
  magic = 0, // u32
  version = 4, // u32
  backingFileOffset = 8, // u64
  backingFileSize = 16, // u32
  clusterBits = 20, // u32
  size = 24, // u64, virtual size in bytes
  cryptMethod = 32, // u32
  l1Size = 36, // u32, entries
  l1TableOffset = 40, // u64
  refcountTableOffset = 48, // u64
  refcountTableClusters = 56, // u32
  nbSnapshots = 60, // u32
  snapshotsOffset = 64, // u64
  // version 3
  incompatibleFeatures = 72, // u64
  compatibleFeatures = 80, // u64
  autoclearFeatures = 88, // u64
  refcountOrder = 96, // u32
  headerLength = 100, // u32
  compressionType = 104, // u8 (when header_length > 104)
}

export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 104;
/** A version 3 header with compression_type, padded to 8 bytes: what qemu writes, and so do we. */
export const V3_HEADER_LENGTH_WITH_COMPRESSION = 112;

/** Incompatible feature bits. */
export const INCOMPAT_DIRTY = 1;
export const INCOMPAT_CORRUPT = 2;
export const INCOMPAT_DATA_FILE = 4;
export const INCOMPAT_COMPRESSION = 8;
export const INCOMPAT_EXTL2 = 16;
/** All incompatible bits defined so far. */
export const INCOMPAT_KNOWN = 0x1f;
/** Compatible feature bits. */
export const COMPAT_LAZY_REFCOUNTS = 1;
/** Autoclear bits. */
export const AUTOCLEAR_BITMAPS = 1;
export const AUTOCLEAR_DATA_FILE_RAW = 2;

/** compression_type values. */
export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;

/** Header extensions: type u32, length u32, then the data padded to a multiple of 8. */
export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_NAMES = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;
export const EXT_HEADER_SIZE = 8;

/** Feature name table entries: type u8 (FEATURE_*), bit u8, name (46 bytes, NUL padded). */
export const FEATURE_NAME_SIZE = 48;
export const FEATURE_INCOMPATIBLE = 0;
export const FEATURE_COMPATIBLE = 1;
export const FEATURE_AUTOCLEAR = 2;

/** Longest backing file name qemu accepts. */
export const MAX_BACKING_NAME = 1023;

/** Cluster sizes qemu supports: 512 B (bits 9) to 2 MiB (bits 21). */
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** The largest L1 table qemu accepts (32 MiB); reader and writers use the same bound. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
/** refcount_order of version 2 images, and what we write: 16-bit refcounts. */
export const DEFAULT_REFCOUNT_ORDER = 4;

/**
 * L1, L2 and refcount table entries are 64 bits (extended L2 entries add a 64-bit subcluster
 * bitmap). Flags below are bits of the high 32-bit word, except OFLAG_ZERO.
 */
export const L2_ENTRY_SIZE = 8;
export const EXTENDED_L2_ENTRY_SIZE = 16;
/** Bit 63: refcount exactly one (the cluster may be written in place). */
export const OFLAG_COPIED = 0x80000000;
/** Bit 62: a compressed cluster. */
export const OFLAG_COMPRESSED = 0x40000000;
/** Bit 0 of a standard L2 entry: the cluster reads as zeros. */
export const OFLAG_ZERO = 1;
/** Host offset bits 9-55 of a standard entry: the mask of the high word, and of the low word. */
export const OFFSET_MASK_HI = 0x00ffffff;
export const OFFSET_MASK_LO = 0xfffffe00;
/** The 30 bits of a compressed entry below the two flags (offset, then sectors - 1). */
export const COMPRESSED_FIELD_MASK_HI = 0x3fffffff;

/**
 * Bits of a compressed cluster descriptor that hold the host offset:
 * x = 62 - (cluster_bits - 8); the (sectors - 1) count sits in bits x..61.
 */
export function compressedOffsetBits(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

/** A feature name table extension: (type, bit, name) entries of 48 bytes each. */
export function encodeFeatureNames(names: ReadonlyArray<[number, number, string]>): Uint8Array {
  const out = new Uint8Array(names.length * FEATURE_NAME_SIZE);
  const enc = new TextEncoder();
  names.forEach(([type, bit, name], i) => {
    out[i * FEATURE_NAME_SIZE] = type;
    out[i * FEATURE_NAME_SIZE + 1] = bit;
    out.set(enc.encode(name), i * FEATURE_NAME_SIZE + 2);
  });
  return out;
}
