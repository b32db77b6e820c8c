import { StrataError } from '../../util/errors.js';

/** The name prefixes selected by an ext xattr entry's name index. */
const PREFIX: Record<number, string> = {
  1: 'user.',
  2: 'system.posix_acl_access',
  3: 'system.posix_acl_default',
  4: 'trusted.',
  6: 'security.',
  7: 'system.',
  8: 'system.richacl',
};

export interface XattrEntry {
  name: string;
  /** Value bytes when stored in place (inode body or xattr block). */
  value?: Uint8Array;
  /** Inode holding the value (ea_inode feature). */
  valueInum?: number;
  valueSize: number;
}

const td = new TextDecoder('utf-8');

/**
 * Parse the entries of an xattr region: `buf[start..end)` holds entries (4-byte aligned,
 * ended by four zero bytes); values sit at `valueBase + e_value_offs` and must lie inside
 * `[valueBase, end)`. Bounded by the region size; any inconsistency is CORRUPT.
 */
export function parseXattrEntries(
  buf: Uint8Array,
  start: number,
  end: number,
  valueBase: number,
  where: { file: string; structure: string; offset: number },
): XattrEntry[] {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: XattrEntry[] = [];
  let pos = start;
  while (pos + 4 <= end) {
    if (v.getUint32(pos, true) === 0) break;
    if (pos + 16 > end) {
      throw new StrataError('CORRUPT', 'xattr entry runs past its region', { ...where, offset: where.offset + pos });
    }
    const nameLen = buf[pos];
    const index = buf[pos + 1];
    const valueOffs = v.getUint16(pos + 2, true);
    const valueInum = v.getUint32(pos + 4, true);
    const valueSize = v.getUint32(pos + 8, true);
    if (pos + 16 + nameLen > end) {
      throw new StrataError('CORRUPT', 'xattr name runs past its region', { ...where, offset: where.offset + pos });
    }
    const suffix = td.decode(buf.subarray(pos + 16, pos + 16 + nameLen));
    const prefix = PREFIX[index] ?? `unknown-index-${index}.`;
    const name = prefix + suffix;
    if (valueInum !== 0) {
      out.push({ name, valueInum, valueSize });
    } else {
      const vs = valueBase + valueOffs;
      if (vs < valueBase || vs + valueSize > end) {
        throw new StrataError('CORRUPT', `xattr ${name} value (${valueOffs}+${valueSize}) lies outside its region`, {
          ...where,
          offset: where.offset + pos,
        });
      }
      out.push({ name, value: new Uint8Array(buf.subarray(vs, vs + valueSize)), valueSize });
    }
    pos += (16 + nameLen + 3) & ~3;
  }
  return out;
}
