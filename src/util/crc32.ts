import { lazyZlib } from './lazy-zlib.js';

/** CRC-32 (IEEE, as in zlib/GPT). Uses node:zlib's native crc32 where present (Node >= 20.15). */
type Crc = (d: Uint8Array, v?: number) => number;
let native: Crc | null | undefined;

const TABLE = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  let c = i;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  TABLE[i] = c >>> 0;
}

export function crc32(data: Uint8Array, seed = 0): number {
  if (native === undefined) native = (lazyZlib() as unknown as { crc32?: Crc }).crc32 ?? null;
  if (native) return native(data, seed) >>> 0;
  let c = ~seed >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}
