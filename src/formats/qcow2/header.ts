import { type ByteSource, readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_NAMES,
  EXT_HEADER_SIZE,
  EXTENDED_L2_ENTRY_SIZE,
  FEATURE_AUTOCLEAR,
  FEATURE_COMPATIBLE,
  FEATURE_INCOMPATIBLE,
  FEATURE_NAME_SIZE,
  HDR,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  L2_ENTRY_SIZE,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  TWO32,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
} from './layout.js';

export {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  QCOW2_MAGIC,
} from './layout.js';

export interface FeatureName {
  type: 'incompatible' | 'compatible' | 'autoclear';
  bit: number;
  name: string;
}

export interface Qcow2Header {
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  /** Feature bit masks; only the low 32 bits are kept as numbers, high ones are in `*High`. */
  incompatible: number;
  incompatibleHigh: number;
  compatible: number;
  compatibleHigh: number;
  autoclear: number;
  autoclearHigh: number;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  extendedL2: boolean;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw: boolean;
  featureNames: FeatureName[];
  /** Types of header extensions we skipped. */
  unknownExtensions: number[];
  hasBitmaps: boolean;
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** Read a big-endian u64 as a number; values past 2^53 come back inexact but huge (callers bound them). */
export function u64(dv: DataView, at: number): number {
  return dv.getUint32(at) * TWO32 + dv.getUint32(at + 4);
}

function bitsOf(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < 32; i++) if ((lo >>> i) & 1) out.push(i);
  for (let i = 0; i < 32; i++) if ((hi >>> i) & 1) out.push(32 + i);
  return out;
}

/**
 * Parse and validate the qcow2 header and its extensions. Everything is checked against
 * the file size and LIMITS before any table is loaded.
 */
export async function parseHeader(src: ByteSource): Promise<Qcow2Header> {
  const file = src.name;
  const where = (structure: string, offset?: number) => ({ file, structure, offset });
  if (src.size < V2_HEADER_LENGTH) {
    throw new StrataError(
      'TRUNCATED',
      `file of ${src.size} bytes is too short for a qcow2 header (72 bytes)`,
      where('qcow2 header', 0),
    );
  }
  const first = await readExact(src, 0, Math.min(src.size, 4096), 'qcow2 header');
  const dv = new DataView(first.buffer, first.byteOffset, first.byteLength);
  if (dv.getUint32(HDR.magic) !== QCOW2_MAGIC)
    throw new StrataError('CORRUPT', 'bad qcow2 magic', where('qcow2 header', HDR.magic));
  const version = dv.getUint32(HDR.version);
  if (version !== 2 && version !== 3) {
    throw new StrataError(
      'UNSUPPORTED',
      `qcow2 version ${version} is not supported (only 2 and 3)`,
      where('qcow2 header', HDR.version),
    );
  }
  const clusterBits = dv.getUint32(HDR.clusterBits);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new StrataError(
      'CORRUPT',
      `cluster_bits ${clusterBits} outside 9..21`,
      where('qcow2 header', HDR.clusterBits),
    );
  }
  const clusterSize = 2 ** clusterBits;
  const cryptMethod = dv.getUint32(HDR.cryptMethod);
  if (cryptMethod !== 0) {
    throw new StrataError(
      'UNSUPPORTED',
      `encrypted qcow2 not supported (crypt_method ${cryptMethod === 1 ? 'AES' : cryptMethod === 2 ? 'LUKS' : cryptMethod})`,
      where('qcow2 header', HDR.cryptMethod),
    );
  }
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(dv, HDR.backingFileOffset),
    backingFileSize: dv.getUint32(HDR.backingFileSize),
    clusterBits,
    clusterSize,
    size: u64(dv, HDR.size),
    cryptMethod,
    l1Size: dv.getUint32(HDR.l1Size),
    l1TableOffset: u64(dv, HDR.l1TableOffset),
    refcountTableOffset: u64(dv, HDR.refcountTableOffset),
    refcountTableClusters: dv.getUint32(HDR.refcountTableClusters),
    nbSnapshots: dv.getUint32(HDR.nbSnapshots),
    snapshotsOffset: u64(dv, HDR.snapshotsOffset),
    incompatible: 0,
    incompatibleHigh: 0,
    compatible: 0,
    compatibleHigh: 0,
    autoclear: 0,
    autoclearHigh: 0,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    extendedL2: false,
    dataFileRaw: false,
    featureNames: [],
    unknownExtensions: [],
    hasBitmaps: false,
  };
  if (version === 3) {
    if (src.size < V3_HEADER_LENGTH) {
      throw new StrataError(
        'TRUNCATED',
        `file of ${src.size} bytes is too short for a qcow2 v3 header`,
        where('qcow2 header', 0),
      );
    }
    h.incompatibleHigh = dv.getUint32(HDR.incompatibleFeatures);
    h.incompatible = dv.getUint32(HDR.incompatibleFeatures + 4);
    h.compatibleHigh = dv.getUint32(HDR.compatibleFeatures);
    h.compatible = dv.getUint32(HDR.compatibleFeatures + 4);
    h.autoclearHigh = dv.getUint32(HDR.autoclearFeatures);
    h.autoclear = dv.getUint32(HDR.autoclearFeatures + 4);
    h.refcountOrder = dv.getUint32(HDR.refcountOrder);
    h.headerLength = dv.getUint32(HDR.headerLength);
    if (
      h.headerLength < V3_HEADER_LENGTH ||
      h.headerLength > clusterSize ||
      h.headerLength > src.size ||
      h.headerLength > first.length
    ) {
      throw new StrataError(
        'CORRUPT',
        `header_length ${h.headerLength} outside 104..min(cluster size, file size)`,
        where('qcow2 header', HDR.headerLength),
      );
    }
    if (h.refcountOrder > 6) {
      throw new StrataError(
        'CORRUPT',
        `refcount_order ${h.refcountOrder} above 6`,
        where('qcow2 header', HDR.refcountOrder),
      );
    }
    if (h.headerLength > HDR.compressionType) h.compressionType = dv.getUint8(HDR.compressionType);
  }

  // Header extensions: from the end of the header up to the backing file name (or the first cluster's end).
  const extEnd = Math.min(
    h.backingFileOffset > 0 && h.backingFileOffset < clusterSize ? h.backingFileOffset : clusterSize,
    src.size,
  );
  const extBytes = extEnd > first.length ? await readExact(src, 0, extEnd, 'qcow2 header extensions') : first;
  const ev = new DataView(extBytes.buffer, extBytes.byteOffset, extBytes.byteLength);
  let pos = h.headerLength;
  const decoder = new TextDecoder('utf-8', { fatal: false });
  const text = (at: number, len: number) => decoder.decode(extBytes.subarray(at, at + len)).replace(/\0+$/, '');
  let cryptoExt = false;
  // Every extension takes at least 8 bytes, so this loop is bounded by extEnd / 8.
  while (pos + EXT_HEADER_SIZE <= extEnd) {
    const type = ev.getUint32(pos);
    const len = ev.getUint32(pos + 4);
    if (type === EXT_END) break;
    if (len > extEnd - pos - EXT_HEADER_SIZE) {
      throw new StrataError(
        'CORRUPT',
        `header extension ${hex(type)} of ${len} bytes runs past ${extEnd}`,
        where('qcow2 header extension', pos),
      );
    }
    const data = pos + EXT_HEADER_SIZE;
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = text(data, len);
        break;
      case EXT_DATA_FILE:
        h.dataFile = text(data, len);
        break;
      case EXT_FEATURE_NAMES:
        for (let k = 0; k + FEATURE_NAME_SIZE <= len; k += FEATURE_NAME_SIZE) {
          const t = extBytes[data + k];
          const type =
            t === FEATURE_INCOMPATIBLE
              ? 'incompatible'
              : t === FEATURE_COMPATIBLE
                ? 'compatible'
                : t === FEATURE_AUTOCLEAR
                  ? 'autoclear'
                  : undefined;
          if (type)
            h.featureNames.push({ type, bit: extBytes[data + k + 1], name: text(data + k + 2, FEATURE_NAME_SIZE - 2) });
        }
        break;
      case EXT_BITMAPS:
        h.hasBitmaps = true;
        break;
      case EXT_CRYPTO:
        cryptoExt = true;
        break;
      default:
        h.unknownExtensions.push(type);
    }
    pos = data + Math.ceil(len / 8) * 8;
  }
  if (cryptoExt) {
    throw new StrataError(
      'UNSUPPORTED',
      'encrypted qcow2 not supported (full disk encryption header present)',
      where('qcow2 header extension'),
    );
  }

  const unknown = bitsOf(h.incompatible & ~INCOMPAT_KNOWN, h.incompatibleHigh);
  if (unknown.length > 0) {
    const named = unknown.map((b) => {
      const n = h.featureNames.find((f) => f.type === 'incompatible' && f.bit === b);
      return n ? `${b} (${n.name})` : `${b}`;
    });
    throw new StrataError(
      'UNSUPPORTED',
      `unknown incompatible feature bits: ${named.join(', ')}`,
      where('qcow2 header incompatible_features', HDR.incompatibleFeatures),
    );
  }
  h.extendedL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0;
  if (h.extendedL2 && clusterBits < 14) {
    throw new StrataError(
      'CORRUPT',
      `extended L2 entries need clusters of at least 16 KiB, not ${clusterSize}`,
      where('qcow2 header', HDR.clusterBits),
    );
  }
  if ((h.incompatible & INCOMPAT_COMPRESSION) !== 0) {
    if (h.headerLength <= HDR.compressionType) {
      throw new StrataError(
        'CORRUPT',
        'compression type feature set but the header has no compression_type field',
        where('qcow2 header', HDR.headerLength),
      );
    }
  } else if (h.compressionType !== 0) {
    throw new StrataError(
      'CORRUPT',
      `compression_type ${h.compressionType} without the compression type feature bit`,
      where('qcow2 header', HDR.compressionType),
    );
  }
  if (h.compressionType > 1) {
    throw new StrataError(
      'UNSUPPORTED',
      `unknown compression_type ${h.compressionType}`,
      where('qcow2 header', HDR.compressionType),
    );
  }
  if ((h.incompatible & INCOMPAT_DATA_FILE) !== 0) {
    if (!h.dataFile) {
      throw new StrataError(
        'CORRUPT',
        'external data file feature set but the header names no data file',
        where('qcow2 header extension'),
      );
    }
    h.dataFileRaw = (h.autoclear & AUTOCLEAR_DATA_FILE_RAW) !== 0;
  } else if (h.dataFile !== undefined) {
    // qemu ignores the name without the feature bit; so do we.
    h.dataFile = undefined;
  }

  if (h.size > LIMITS.maxVirtualSize || !Number.isSafeInteger(h.size)) {
    throw new StrataError(
      'LIMIT',
      `virtual size ${h.size} exceeds the ${LIMITS.maxVirtualSize}-byte limit`,
      where('qcow2 header size', HDR.size),
    );
  }

  // Backing file name.
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > MAX_BACKING_NAME) {
      throw new StrataError(
        'CORRUPT',
        `backing file name length ${h.backingFileSize} outside 1..1023`,
        where('qcow2 backing file name', HDR.backingFileSize),
      );
    }
    if (h.backingFileOffset + h.backingFileSize > Math.min(src.size, clusterSize)) {
      throw new StrataError(
        'CORRUPT',
        `backing file name (${h.backingFileSize} bytes) lies outside the first cluster or the file`,
        where('qcow2 backing file name', h.backingFileOffset),
      );
    }
    const b = await readExact(src, h.backingFileOffset, h.backingFileSize, 'qcow2 backing file name');
    h.backingFile = decoder.decode(b);
  }

  // L1 table: large enough for the virtual size, not absurdly large, aligned and inside the file.
  const l2Entries = clusterSize / (h.extendedL2 ? EXTENDED_L2_ENTRY_SIZE : L2_ENTRY_SIZE);
  const needL1 = Math.ceil(h.size / (clusterSize * l2Entries));
  if (h.l1Size < needL1) {
    throw new StrataError(
      'CORRUPT',
      `L1 table of ${h.l1Size} entries is too small for virtual size ${h.size} (needs ${needL1})`,
      where('qcow2 L1 table', HDR.l1Size),
    );
  }
  if (h.l1Size * 8 > Math.min(MAX_L1_BYTES, LIMITS.maxTableBytes)) {
    throw new StrataError(
      'LIMIT',
      `L1 table of ${h.l1Size} entries is larger than ${MAX_L1_BYTES} bytes`,
      where('qcow2 L1 table', HDR.l1Size),
    );
  }
  if (h.l1Size > 0) {
    if (h.l1TableOffset % clusterSize !== 0) {
      throw new StrataError(
        'CORRUPT',
        `L1 table offset ${h.l1TableOffset} is not cluster aligned`,
        where('qcow2 L1 table', HDR.l1TableOffset),
      );
    }
    if (h.l1TableOffset === 0 || h.l1TableOffset + h.l1Size * 8 > src.size) {
      throw new StrataError(
        'CORRUPT',
        `L1 table (${h.l1Size} entries at ${h.l1TableOffset}) lies outside the file (size ${src.size})`,
        where('qcow2 L1 table', h.l1TableOffset),
      );
    }
  }
  return h;
}

/** Names of the feature bits set in a header, for details(). */
export function featureList(h: Qcow2Header): { incompatible: string[]; compatible: string[]; autoclear: string[] } {
  const known: Record<string, Record<number, string>> = {
    incompatible: { 0: 'dirty', 1: 'corrupt', 2: 'external data file', 3: 'compression type', 4: 'extended L2' },
    compatible: { 0: 'lazy refcounts' },
    autoclear: { 0: 'bitmaps', 1: 'raw external data' },
  };
  const name = (type: FeatureName['type'], bit: number) =>
    h.featureNames.find((f) => f.type === type && f.bit === bit)?.name ?? known[type][bit] ?? `bit ${bit}`;
  return {
    incompatible: bitsOf(h.incompatible, h.incompatibleHigh).map((b) => name('incompatible', b)),
    compatible: bitsOf(h.compatible, h.compatibleHigh).map((b) => name('compatible', b)),
    autoclear: bitsOf(h.autoclear, h.autoclearHigh).map((b) => name('autoclear', b)),
  };
}
