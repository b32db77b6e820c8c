import { corrupt, type ErrorWhere } from '../../util/errors.js';

export const FE_INLINE = 0;
export const FE_REG = 1;
export const FE_PREALLOC = 2;
export const COMPRESSION = ['none', 'zlib', 'lzo', 'zstd'];

/** struct btrfs_file_extent_item, decoded. */
export interface FileExtentItem {
  generation: number;
  ramBytes: number;
  compression: number;
  encryption: number;
  otherEncoding: number;
  type: number;
  /** Inline: the stored bytes. */
  inline?: Uint8Array;
  diskBytenr: number;
  diskNumBytes: number;
  offset: number;
  numBytes: number;
}

export function parseFileExtent(b: Uint8Array, where: ErrorWhere): FileExtentItem {
  if (b.length < 21) throw corrupt('file extent item cut short', where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const ramBytes = dv.getBigUint64(8, true);
  if (ramBytes > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`ram_bytes ${ramBytes} too large`, where);
  const fe: FileExtentItem = {
    generation: Number(dv.getBigUint64(0, true)),
    ramBytes: Number(ramBytes),
    compression: b[16],
    encryption: b[17],
    otherEncoding: dv.getUint16(18, true),
    type: b[20],
    diskBytenr: 0,
    diskNumBytes: 0,
    offset: 0,
    numBytes: 0,
  };
  if (fe.type === FE_INLINE) {
    fe.inline = b.subarray(21);
    fe.numBytes = fe.ramBytes;
    return fe;
  }
  if (fe.type !== FE_REG && fe.type !== FE_PREALLOC) throw corrupt(`file extent type ${fe.type}`, where);
  if (b.length < 53) throw corrupt('file extent item cut short', where);
  const n = (at: number) => {
    const v = dv.getBigUint64(at, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`file extent field ${v} too large`, where);
    return Number(v);
  };
  fe.diskBytenr = n(21);
  fe.diskNumBytes = n(29);
  fe.offset = n(37);
  fe.numBytes = n(45);
  return fe;
}
