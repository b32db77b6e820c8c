/** CRC-32C (Castagnoli), used by ext4 metadata_csum, btrfs and VHDX. Slice-by-8 tables. */
const POLY = 0x82f63b78;
const T = new Uint32Array(8 * 256);
for (let i = 0; i < 256; i++) {
  let c = i;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[i] = c >>> 0;
}
for (let i = 0; i < 256; i++) {
  for (let s = 1; s < 8; s++) T[s * 256 + i] = (T[(s - 1) * 256 + i] >>> 8) ^ T[T[(s - 1) * 256 + i] & 0xff];
}

/**
 * Raw CRC-32C update without pre/post inversion: `crc32cRaw(~0, data)` then `~` gives the
 * standard value. ext4 chains raw updates, so both forms are exposed.
 */
export function crc32cRaw(crc: number, data: Uint8Array): number {
  return crc32cRange(crc, data, 0, data.length);
}

/** crc32cRaw over `data[from, to)`, without a subarray (per-inode checksums call this often). */
export function crc32cRange(crc: number, data: Uint8Array, from: number, to: number): number {
  let c = crc >>> 0;
  let i = from;
  for (; i + 8 <= to; i += 8) {
    const a = c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
    c =
      T[7 * 256 + (a & 0xff)] ^
      T[6 * 256 + ((a >>> 8) & 0xff)] ^
      T[5 * 256 + ((a >>> 16) & 0xff)] ^
      T[4 * 256 + (a >>> 24)] ^
      T[3 * 256 + data[i + 4]] ^
      T[2 * 256 + data[i + 5]] ^
      T[256 + data[i + 6]] ^
      T[data[i + 7]];
  }
  for (; i < to; i++) c = T[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/** crc32cRaw of the 4 little-endian bytes of `n` (no array). */
export function crc32cU32(crc: number, n: number): number {
  let c = crc >>> 0;
  c = T[(c ^ n) & 0xff] ^ (c >>> 8);
  c = T[(c ^ (n >>> 8)) & 0xff] ^ (c >>> 8);
  c = T[(c ^ (n >>> 16)) & 0xff] ^ (c >>> 8);
  c = T[(c ^ (n >>> 24)) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/** Standard CRC-32C of `data` (init ~0, final xor ~0). */
export function crc32c(data: Uint8Array, seed = 0): number {
  return ~crc32cRaw(~seed >>> 0, data) >>> 0;
}
