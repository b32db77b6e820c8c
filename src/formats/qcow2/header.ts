import { type ByteSource, readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';

import { QCOW2_MAGIC } from '../probe.js';

export { QCOW2_MAGIC };

/** Incompatible feature bits we understand. */
export const INCOMPAT_DIRTY = 1;
export const INCOMPAT_CORRUPT = 2;
export const INCOMPAT_DATA_FILE = 4;
export const INCOMPAT_COMPRESSION = 8;
export const INCOMPAT_EXTL2 = 16;
const INCOMPAT_KNOWN = 0x1f;
/** Autoclear bits. */
export const AUTOCLEAR_BITMAPS = 1;
export const AUTOCLEAR_DATA_FILE_RAW = 2;

const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const EXT_BITMAPS = 0x23852875;
const EXT_CRYPTO = 0x0537be77;
const EXT_DATA_FILE = 0x44415441;

/** The largest L1 table qemu accepts (32 MiB); we use the same bound. */
const MAX_L1_BYTES = 32 * 1024 * 1024;

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
  return dv.getUint32(at) * 0x100000000 + dv.getUint32(at + 4);
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
  if (src.size < 72) {
    throw new StrataError(
      'TRUNCATED',
      `file of ${src.size} bytes is too short for a qcow2 header (72 bytes)`,
      where('qcow2 header', 0),
    );
  }
  const first = await readExact(src, 0, Math.min(src.size, 4096), 'qcow2 header');
  const dv = new DataView(first.buffer, first.byteOffset, first.byteLength);
  if (dv.getUint32(0) !== QCOW2_MAGIC) throw new StrataError('CORRUPT', 'bad qcow2 magic', where('qcow2 header', 0));
  const version = dv.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw new StrataError(
      'UNSUPPORTED',
      `qcow2 version ${version} is not supported (only 2 and 3)`,
      where('qcow2 header', 4),
    );
  }
  const clusterBits = dv.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) {
    throw new StrataError('CORRUPT', `cluster_bits ${clusterBits} outside 9..21`, where('qcow2 header', 20));
  }
  const clusterSize = 2 ** clusterBits;
  const cryptMethod = dv.getUint32(32);
  if (cryptMethod !== 0) {
    throw new StrataError(
      'UNSUPPORTED',
      `encrypted qcow2 not supported (crypt_method ${cryptMethod === 1 ? 'AES' : cryptMethod === 2 ? 'LUKS' : cryptMethod})`,
      where('qcow2 header', 32),
    );
  }
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(dv, 8),
    backingFileSize: dv.getUint32(16),
    clusterBits,
    clusterSize,
    size: u64(dv, 24),
    cryptMethod,
    l1Size: dv.getUint32(36),
    l1TableOffset: u64(dv, 40),
    refcountTableOffset: u64(dv, 48),
    refcountTableClusters: dv.getUint32(56),
    nbSnapshots: dv.getUint32(60),
    snapshotsOffset: u64(dv, 64),
    incompatible: 0,
    incompatibleHigh: 0,
    compatible: 0,
    compatibleHigh: 0,
    autoclear: 0,
    autoclearHigh: 0,
    refcountOrder: 4,
    headerLength: 72,
    compressionType: 0,
    extendedL2: false,
    dataFileRaw: false,
    featureNames: [],
    unknownExtensions: [],
    hasBitmaps: false,
  };
  if (version === 3) {
    if (src.size < 104) {
      throw new StrataError(
        'TRUNCATED',
        `file of ${src.size} bytes is too short for a qcow2 v3 header`,
        where('qcow2 header', 0),
      );
    }
    h.incompatibleHigh = dv.getUint32(72);
    h.incompatible = dv.getUint32(76);
    h.compatibleHigh = dv.getUint32(80);
    h.compatible = dv.getUint32(84);
    h.autoclearHigh = dv.getUint32(88);
    h.autoclear = dv.getUint32(92);
    h.refcountOrder = dv.getUint32(96);
    h.headerLength = dv.getUint32(100);
    if (
      h.headerLength < 104 ||
      h.headerLength > clusterSize ||
      h.headerLength > src.size ||
      h.headerLength > first.length
    ) {
      throw new StrataError(
        'CORRUPT',
        `header_length ${h.headerLength} outside 104..min(cluster size, file size)`,
        where('qcow2 header', 100),
      );
    }
    if (h.refcountOrder > 6) {
      throw new StrataError('CORRUPT', `refcount_order ${h.refcountOrder} above 6`, where('qcow2 header', 96));
    }
    if (h.headerLength > 104) h.compressionType = dv.getUint8(104);
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
  while (pos + 8 <= extEnd) {
    const type = ev.getUint32(pos);
    const len = ev.getUint32(pos + 4);
    if (type === EXT_END) break;
    if (len > extEnd - pos - 8) {
      throw new StrataError(
        'CORRUPT',
        `header extension ${hex(type)} of ${len} bytes runs past ${extEnd}`,
        where('qcow2 header extension', pos),
      );
    }
    const data = pos + 8;
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = text(data, len);
        break;
      case EXT_DATA_FILE:
        h.dataFile = text(data, len);
        break;
      case EXT_FEATURE_TABLE:
        for (let k = 0; k + 48 <= len; k += 48) {
          const t = extBytes[data + k];
          const type = t === 0 ? 'incompatible' : t === 1 ? 'compatible' : t === 2 ? 'autoclear' : undefined;
          if (type) h.featureNames.push({ type, bit: extBytes[data + k + 1], name: text(data + k + 2, 46) });
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
      where('qcow2 header incompatible_features', 72),
    );
  }
  h.extendedL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0;
  if (h.extendedL2 && clusterBits < 14) {
    throw new StrataError(
      'CORRUPT',
      `extended L2 entries need clusters of at least 16 KiB, not ${clusterSize}`,
      where('qcow2 header', 20),
    );
  }
  if ((h.incompatible & INCOMPAT_COMPRESSION) !== 0) {
    if (h.headerLength <= 104) {
      throw new StrataError(
        'CORRUPT',
        'compression type feature set but the header has no compression_type field',
        where('qcow2 header', 100),
      );
    }
  } else if (h.compressionType !== 0) {
    throw new StrataError(
      'CORRUPT',
      `compression_type ${h.compressionType} without the compression type feature bit`,
      where('qcow2 header', 104),
    );
  }
  if (h.compressionType > 1) {
    throw new StrataError('UNSUPPORTED', `unknown compression_type ${h.compressionType}`, where('qcow2 header', 104));
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
      where('qcow2 header size', 24),
    );
  }

  // Backing file name.
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > 1023) {
      throw new StrataError(
        'CORRUPT',
        `backing file name length ${h.backingFileSize} outside 1..1023`,
        where('qcow2 backing file name', 16),
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
  const l2Entries = clusterSize / (h.extendedL2 ? 16 : 8);
  const needL1 = Math.ceil(h.size / (clusterSize * l2Entries));
  if (h.l1Size < needL1) {
    throw new StrataError(
      'CORRUPT',
      `L1 table of ${h.l1Size} entries is too small for virtual size ${h.size} (needs ${needL1})`,
      where('qcow2 L1 table', 36),
    );
  }
  if (h.l1Size * 8 > Math.min(MAX_L1_BYTES, LIMITS.maxTableBytes)) {
    throw new StrataError(
      'LIMIT',
      `L1 table of ${h.l1Size} entries is larger than ${MAX_L1_BYTES} bytes`,
      where('qcow2 L1 table', 36),
    );
  }
  if (h.l1Size > 0) {
    if (h.l1TableOffset % clusterSize !== 0) {
      throw new StrataError(
        'CORRUPT',
        `L1 table offset ${h.l1TableOffset} is not cluster aligned`,
        where('qcow2 L1 table', 40),
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
