import { u16, u32 } from './boot.js';

/**
 * The exFAT up-case table: UTF-16 unit -> its upper case, stored compressed (0xFFFF then a
 * count of units that map to themselves). Names are compared and hashed through it.
 */
export class UpcaseTable {
  private constructor(private readonly map: Uint16Array) {}

  /** The identity table (a volume whose table could not be read: ASCII case only). */
  static ascii(): UpcaseTable {
    const m = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) m[i] = i >= 0x61 && i <= 0x7a ? i - 32 : i;
    return new UpcaseTable(m);
  }

  static parse(b: Uint8Array): UpcaseTable {
    const m = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) m[i] = i;
    let c = 0;
    for (let at = 0; at + 2 <= b.length && c < 65536; at += 2) {
      const v = u16(b, at);
      if (v === 0xffff && at + 4 <= b.length) {
        at += 2;
        c += u16(b, at); // identity run
      } else m[c++] = v;
    }
    return new UpcaseTable(m);
  }

  upper(u: number): number {
    return this.map[u];
  }
}

/** The table checksum its directory entry records (same rotate-add as the boot checksum). */
export function upcaseChecksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < b.length; i++) sum = (((sum & 1) !== 0 ? 0x80000000 : 0) + (sum >>> 1) + b[i]) >>> 0;
  return sum;
}

/** The 16-bit hash of a name's up-cased UTF-16 units that the stream extension entry records. */
export function nameHash(name: string, up: UpcaseTable): number {
  let h = 0;
  for (let i = 0; i < name.length; i++) {
    const u = up.upper(name.charCodeAt(i));
    h = ((h & 1 ? 0x8000 : 0) + (h >>> 1) + (u & 0xff)) & 0xffff;
    h = ((h & 1 ? 0x8000 : 0) + (h >>> 1) + (u >>> 8)) & 0xffff;
  }
  return h;
}

export { u32 };
