import { StrataError } from '../util/errors.js';

/**
 * The records of a Berkeley DB hash database as rpm < 4.16 keeps /var/lib/rpm/Packages
 * (key: the 4-byte header instance number, value: the header blob). Read like rpm's own
 * bdb_ro backend does not need to: by a scan of every hash page in file order, following
 * overflow-page chains for values larger than a page. Either byte order; page numbers,
 * item offsets and chain lengths are checked, chains are cycle-checked.
 */

const HASH_MAGIC = 0x061561;
const P_HASH_UNSORTED = 2;
const P_OVERFLOW = 7;
const P_HASH = 13;
const H_KEYDATA = 1;
const H_OFFPAGE = 3;
const PAGE_HEADER = 26;
const MAX_VALUE = 256 * 1024 * 1024;

export interface BdbRecord {
  key: Uint8Array;
  value: Uint8Array;
}

export function readBdbHash(bytes: Uint8Array, file: string, warn: (m: string) => void = () => {}): BdbRecord[] {
  const bad = (m: string, offset?: number) =>
    new StrataError('CORRUPT', m, { file, structure: 'Berkeley DB hash', offset });
  if (bytes.length < 512) throw bad(`${bytes.length} bytes is too short for a database`, 0);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let le: boolean;
  if (dv.getUint32(12, true) === HASH_MAGIC) le = true;
  else if (dv.getUint32(12, false) === HASH_MAGIC) le = false;
  else throw bad('no Berkeley DB hash magic (0x061561) in the meta page', 12);
  const u32 = (at: number) => dv.getUint32(at, le);
  const u16 = (at: number) => dv.getUint16(at, le);
  const pageSize = u32(20);
  if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) throw bad(`page size ${pageSize}`, 20);
  if (bytes[24] !== 0)
    throw new StrataError('UNSUPPORTED', 'encrypted database', {
      file,
      structure: 'Berkeley DB meta page',
      offset: 24,
    });
  const pages = Math.floor(bytes.length / pageSize);

  const overflow = (first: number, total: number, where: number): Uint8Array => {
    if (total > MAX_VALUE) throw bad(`overflow item of ${total} bytes`, where);
    const out = new Uint8Array(total);
    let at = 0;
    let pg = first;
    const seen = new Set<number>();
    while (at < total) {
      if (pg <= 0 || pg >= pages) throw bad(`overflow chain reaches page ${pg} outside the file`, where);
      if (seen.has(pg))
        throw new StrataError('LOOP', `overflow chain revisits page ${pg}`, {
          file,
          structure: 'Berkeley DB overflow chain',
          offset: pg * pageSize,
        });
      seen.add(pg);
      const base = pg * pageSize;
      if (bytes[base + 25] !== P_OVERFLOW) throw bad(`page ${pg} in an overflow chain is not an overflow page`, base);
      const len = u16(base + 22);
      if (PAGE_HEADER + len > pageSize || at + len > total) throw bad(`overflow page ${pg} holds ${len} bytes`, base);
      out.set(bytes.subarray(base + PAGE_HEADER, base + PAGE_HEADER + len), at);
      at += len;
      pg = u32(base + 16);
      if (len === 0 && at < total) throw bad(`empty overflow page ${pg}`, base);
    }
    return out;
  };

  const item = (base: number, i: number, n: number): Uint8Array | undefined => {
    const off = u16(base + PAGE_HEADER + 2 * i);
    const end = i === 0 ? pageSize : u16(base + PAGE_HEADER + 2 * (i - 1));
    if (off < PAGE_HEADER + 2 * n || off >= pageSize || end > pageSize || end <= off) {
      throw bad(`item ${i} at ${off}..${end} outside its page`, base);
    }
    const type = bytes[base + off];
    if (type === H_KEYDATA) return bytes.subarray(base + off + 1, base + end);
    if (type === H_OFFPAGE) {
      if (off + 12 > end) throw bad(`short off-page item ${i}`, base + off);
      return overflow(u32(base + off + 4), u32(base + off + 8), base + off);
    }
    return undefined; // duplicates are not used by rpm's Packages
  };

  const out: BdbRecord[] = [];
  for (let pg = 1; pg < pages; pg++) {
    const base = pg * pageSize;
    const type = bytes[base + 25];
    if (type !== P_HASH && type !== P_HASH_UNSORTED) continue;
    const n = u16(base + 20);
    if (PAGE_HEADER + 2 * n > pageSize) {
      warn(`${file}: hash page ${pg} claims ${n} items, skipped`);
      continue;
    }
    for (let i = 0; i + 1 < n; i += 2) {
      try {
        const key = item(base, i, n);
        const value = item(base, i + 1, n);
        if (key && value) out.push({ key, value });
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        warn(`${file}: ${e.message}, record skipped`);
      }
    }
  }
  return out;
}
