import { corrupt, type ErrorWhere } from '../../util/errors.js';
import { uuidString } from './superblock.js';

/** struct btrfs_root_item, the fields we use. */
export interface RootItem {
  rootDirid: number;
  bytenr: number;
  level: number;
  flags: number;
  refs: number;
  lastSnapshot: number;
  generation: number;
  uuid?: string;
  parentUuid?: string;
  otransid?: number;
}

export function parseRootItem(b: Uint8Array, where: ErrorWhere): RootItem {
  if (b.length < 239) throw corrupt(`root item of ${b.length} bytes`, where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const r: RootItem = {
    generation: Number(dv.getBigUint64(160, true)),
    rootDirid: Number(dv.getBigUint64(168, true)),
    bytenr: Number(dv.getBigUint64(176, true)),
    lastSnapshot: Number(dv.getBigUint64(200, true)),
    flags: Number(dv.getBigUint64(208, true)),
    refs: dv.getUint32(216, true),
    level: b[238],
  };
  if (b.length >= 279) {
    const zero = (u: Uint8Array) => u.every((x) => x === 0);
    const u = b.subarray(247, 263);
    const pu = b.subarray(263, 279);
    if (!zero(u)) r.uuid = uuidString(u);
    if (!zero(pu)) r.parentUuid = uuidString(pu);
  }
  if (b.length >= 439) r.otransid = Number(dv.getBigUint64(311, true));
  return r;
}

/** struct btrfs_root_ref (ROOT_REF / ROOT_BACKREF): where a subvolume hangs in its parent. */
export interface RootRef {
  dirid: number;
  sequence: number;
  name: Uint8Array;
}

export function parseRootRef(b: Uint8Array, where: ErrorWhere): RootRef {
  if (b.length < 18) throw corrupt('root ref cut short', where);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = dv.getUint16(16, true);
  if (18 + n > b.length) throw corrupt('root ref name overruns the item', where);
  return {
    dirid: Number(dv.getBigUint64(0, true)),
    sequence: Number(dv.getBigUint64(8, true)),
    name: b.subarray(18, 18 + n),
  };
}
