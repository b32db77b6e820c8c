import { readFileSync, writeFileSync } from 'node:fs';

/*
 * A writer of VHD differencing disks, following Microsoft's "Virtual Hard Disk Image
 * Format Specification" (qemu-img cannot create them). Used only by tests: it builds a
 * child whose chosen sectors override a parent made by qemu-img.
 *
 * Layout written: footer copy (0), dynamic disk header (512), BAT (1536), parent locator
 * data, blocks (sector bitmap + data), footer.
 */

const SECTOR = 512;

export interface VhdLocator {
  /** Platform code: 'W2ru' (relative, UTF-16LE), 'W2ku' (absolute, UTF-16LE), 'MacX' (file URL, UTF-8). */
  code: 'W2ru' | 'W2ku' | 'MacX';
  path: string;
}

export interface VhdDiffOptions {
  /** The parent VHD (its footer gives size, geometry, unique id). */
  parentFile: string;
  /** Locators written in this order (readers should prefer the relative one). */
  locators: VhdLocator[];
  /** Sector-aligned overrides: bytes the child stores at virtual `offset`. */
  writes: Array<{ offset: number; data: Uint8Array }>;
  blockSize?: number;
  /** Replace the parent unique id written in the header (to test the mismatch warning). */
  parentUniqueId?: Uint8Array;
  /** Parent name stored in the header (UTF-16BE), default the first locator's path. */
  parentName?: string;
}

/** VHD checksum: ones' complement of the sum of all bytes except the checksum field. */
export function vhdSum(b: Uint8Array, skip: number): number {
  let s = 0;
  for (let i = 0; i < b.length; i++) if (i < skip || i >= skip + 4) s += b[i];
  return ~s >>> 0;
}

/** Recompute and store the checksum of a footer (field at 64) or dynamic header (field at 36). */
export function fixChecksum(b: Uint8Array, at: number): void {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, vhdSum(b, at));
}

function setU64(dv: DataView, at: number, v: number | bigint): void {
  dv.setBigUint64(at, BigInt(v));
}

export function writeVhdDiff(file: string, o: VhdDiffOptions): void {
  const parent = readFileSync(o.parentFile);
  const pf = parent.subarray(parent.length - SECTOR);
  if (pf.subarray(0, 8).toString('latin1') !== 'conectix') throw new Error('parent has no VHD footer at its end');
  const pdv = new DataView(pf.buffer, pf.byteOffset, SECTOR);
  const size = Number(pdv.getBigUint64(48));
  const bs = o.blockSize ?? 2 * 1024 * 1024;
  const spb = bs / SECTOR;
  const bitmapBytes = Math.ceil(spb / 8 / SECTOR) * SECTOR;
  const blocks = Math.ceil(size / bs);

  // Which sectors each touched block stores.
  const touched = new Map<number, { bitmap: Uint8Array; data: Uint8Array }>();
  for (const w of o.writes) {
    if (w.offset % SECTOR !== 0 || w.data.length % SECTOR !== 0) throw new Error('writes must be sector-aligned');
    for (let p = 0; p < w.data.length; p += SECTOR) {
      const v = w.offset + p;
      const blk = Math.floor(v / bs);
      let t = touched.get(blk);
      if (!t) {
        t = { bitmap: new Uint8Array(bitmapBytes), data: new Uint8Array(bs) };
        touched.set(blk, t);
      }
      const s = (v - blk * bs) / SECTOR;
      t.bitmap[s >> 3] |= 0x80 >> (s & 7); // bit 7 of byte 0 is the block's first sector
      t.data.set(w.data.subarray(p, p + SECTOR), v - blk * bs);
    }
  }

  const batAt = 1536;
  const batBytes = Math.ceil((blocks * 4) / SECTOR) * SECTOR;
  const locData = o.locators.map((l) =>
    l.code === 'MacX' ? Buffer.from(l.path, 'utf8') : Buffer.from(l.path, 'utf16le'),
  );
  let at = batAt + batBytes;
  const locAt: number[] = [];
  for (const d of locData) {
    locAt.push(at);
    at += Math.ceil(d.length / SECTOR) * SECTOR;
  }
  const order = [...touched.keys()].sort((a, b) => a - b);
  const blockAt = new Map<number, number>();
  for (const blk of order) {
    blockAt.set(blk, at);
    at += bitmapBytes + bs;
  }
  const total = at + SECTOR;
  const out = new Uint8Array(total);
  const odv = new DataView(out.buffer);

  // Footer.
  const footer = new Uint8Array(SECTOR);
  const fdv = new DataView(footer.buffer);
  footer.set(Buffer.from('conectix', 'latin1'), 0);
  fdv.setUint32(8, 2); // features: reserved bit always set
  fdv.setUint32(12, 0x00010000);
  setU64(fdv, 16, 512);
  fdv.setUint32(24, 0x2a000000);
  footer.set(Buffer.from('strt', 'latin1'), 28);
  fdv.setUint32(32, 0x00010000);
  footer.set(Buffer.from('Wi2k', 'latin1'), 36);
  setU64(fdv, 40, size);
  setU64(fdv, 48, size);
  footer.set(pf.subarray(56, 60), 56); // geometry of the parent
  fdv.setUint32(60, 4); // differencing
  for (let i = 0; i < 16; i++) footer[68 + i] = (i * 37 + 11) & 0xff; // unique id
  fixChecksum(footer, 64);
  out.set(footer, 0);
  out.set(footer, total - SECTOR);

  // Dynamic disk header.
  const h = out.subarray(512, 1536);
  const hdv = new DataView(h.buffer, h.byteOffset, 1024);
  h.set(Buffer.from('cxsparse', 'latin1'), 0);
  setU64(hdv, 8, 0xffffffffffffffffn);
  setU64(hdv, 16, batAt);
  hdv.setUint32(24, 0x00010000);
  hdv.setUint32(28, blocks);
  hdv.setUint32(32, bs);
  h.set(o.parentUniqueId ?? pf.subarray(68, 84), 40);
  hdv.setUint32(56, pdv.getUint32(24)); // parent timestamp
  const name = Buffer.from(o.parentName ?? o.locators[0]?.path ?? '', 'utf16le').swap16();
  h.set(name.subarray(0, 510), 64);
  o.locators.forEach((l, i) => {
    const e = 576 + i * 24;
    h.set(Buffer.from(l.code, 'latin1'), e);
    hdv.setUint32(e + 4, Math.ceil(locData[i].length / SECTOR)); // data space, in sectors
    hdv.setUint32(e + 8, locData[i].length);
    setU64(hdv, e + 16, locAt[i]);
    out.set(locData[i], locAt[i]);
  });
  fixChecksum(h, 36);

  // BAT and blocks.
  for (let i = 0; i < batBytes / 4; i++) odv.setUint32(batAt + i * 4, 0xffffffff);
  for (const [blk, t] of touched) {
    const p = blockAt.get(blk) as number;
    odv.setUint32(batAt + blk * 4, p / SECTOR);
    out.set(t.bitmap, p);
    out.set(t.data, p + bitmapBytes);
  }
  writeFileSync(file, out);
}

/** Patch a VHD in place: edit the footer(s) and/or dynamic header and fix their checksums. */
export function patchVhd(
  file: string,
  edit: { footer?: (dv: DataView) => void; header?: (dv: DataView) => void },
): void {
  const b = readFileSync(file);
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  const footers = [b.length - SECTOR];
  if (b.subarray(0, 8).toString('latin1') === 'conectix') footers.push(0);
  for (const f of footers) {
    if (edit.footer) edit.footer(new DataView(b.buffer, b.byteOffset + f, SECTOR));
    fixChecksum(b.subarray(f, f + SECTOR), 64);
  }
  if (edit.header) {
    const at = Number(dv.getBigUint64(b.length - SECTOR + 16));
    edit.header(new DataView(b.buffer, b.byteOffset + at, 1024));
    fixChecksum(b.subarray(at, at + 1024), 36);
  }
  writeFileSync(file, b);
}
