import { readFileSync, writeFileSync } from 'node:fs';
import {
  batEntries,
  bitmapEntry,
  chunkRatio,
  GUID,
  guidBytes,
  guidString,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_PARTIALLY_PRESENT,
  PAYLOAD_BLOCK_ZERO,
  payloadEntry,
  SB_BLOCK_PRESENT,
} from '../../src/formats/vhdx/layout.js';
import { crc32c } from '../../src/util/crc32c.js';

/*
 * A writer of small VHDX files following [MS-VHDX], for tests only: qemu-img cannot write
 * differencing VHDX. It writes the file identifier, both headers, both region tables, a
 * metadata region (file parameters, virtual disk size, page 83 data, sector sizes and,
 * for a child, the parent locator), the BAT and the payload and sector bitmap blocks.
 *
 * Layout: log at 1 MiB (1 MiB, empty), metadata at 2 MiB (1 MiB), BAT at 3 MiB, blocks after.
 */

const MiB = 1024 * 1024;
const KiB = 1024;

export interface VhdxWriteOptions {
  virtualSize: number;
  /** Payload block size (power of two, 1..256 MiB); default 1 MiB. */
  blockSize?: number;
  /** Sector-aligned bytes stored at virtual offsets. */
  writes: Array<{ offset: number; data: Uint8Array }>;
  /** Blocks recorded as PAYLOAD_BLOCK_ZERO (read as zeros, never from the parent). */
  zeroBlocks?: number[];
  /** Make a differencing disk: the parent's file (for its DataWriteGuid) and the locator entries. */
  parent?: {
    file: string;
    relativePath?: string;
    absoluteWin32Path?: string;
    /** Replace the parent_linkage GUID (to test the mismatch warning). */
    linkage?: string;
  };
  /** A non-zero log GUID in the current header: the log is "not empty". */
  logGuid?: string;
  /**
   * Log entries to write (needs `logGuid`), made from the final layout: each entry is a
   * list of operations, a 4 KiB `page` to write at `fileOffset` or `zeroLength` zero bytes.
   * The data the log describes is NOT applied to the file: a reader must replay it.
   */
  log?: (layout: VhdxLayout) => Array<Array<{ fileOffset: number; page?: Uint8Array; zeroLength?: number }>>;
}

/** Where the writer put things (host offsets). */
export interface VhdxLayout {
  fileSize: number;
  batOffset: number;
  /** The BAT as written (a copy). */
  bat: Uint8Array;
  /** Host offset of each stored payload block. */
  payloadAt: Map<number, number>;
}

/** Log entries at 1 MiB: header, descriptors, data sectors; sequence numbers from 10. */
function writeLog(
  out: Uint8Array,
  logGuid: string,
  entries: Array<Array<{ fileOffset: number; page?: Uint8Array; zeroLength?: number }>>,
): void {
  let at = MiB;
  entries.forEach((ops, i) => {
    const seq = 10n + BigInt(i);
    const dataOps = ops.filter((o) => o.page);
    const descBytes = Math.ceil((64 + ops.length * 32) / 4096) * 4096;
    const length = descBytes + dataOps.length * 4096;
    if (at + length > 2 * MiB) throw new Error('log entries do not fit in the 1 MiB log');
    const e = out.subarray(at, at + length);
    const dv = new DataView(e.buffer, e.byteOffset, e.byteLength);
    e.set(ascii('loge'), 0);
    dv.setUint32(8, length, true);
    dv.setUint32(12, 0, true); // tail: the first entry, at the start of the log
    dv.setBigUint64(16, seq, true);
    dv.setUint32(24, ops.length, true);
    e.set(guidBytes(logGuid), 32);
    dv.setBigUint64(48, BigInt(out.length), true); // flushed file offset
    dv.setBigUint64(56, BigInt(out.length), true); // last file offset
    let dataAt = descBytes;
    ops.forEach((op, k) => {
      const d = 64 + k * 32;
      dv.setBigUint64(d + 16, BigInt(op.fileOffset), true);
      dv.setBigUint64(d + 24, seq, true);
      if (op.page) {
        e.set(ascii('desc'), d);
        e.set(op.page.subarray(4092, 4096), d + 4); // trailing bytes
        e.set(op.page.subarray(0, 8), d + 8); // leading bytes
        e.set(ascii('data'), dataAt);
        dv.setUint32(dataAt + 4, Number(seq >> 32n), true);
        e.set(op.page.subarray(8, 4092), dataAt + 8);
        dv.setUint32(dataAt + 4092, Number(seq & 0xffffffffn), true);
        dataAt += 4096;
      } else {
        e.set(ascii('zero'), d);
        dv.setBigUint64(d + 8, BigInt(op.zeroLength ?? 0), true);
      }
    });
    fixCrc(e);
    at += length;
  });
}

/** The DataWriteGuid of the current header of a VHDX file (highest valid sequence number). */
export function vhdxDataWriteGuid(file: string): string {
  const b = readFileSync(file);
  let best: { seq: bigint; guid: string } | undefined;
  for (const at of [64 * KiB, 128 * KiB]) {
    const h = new Uint8Array(b.subarray(at, at + 4 * KiB));
    const dv = new DataView(h.buffer);
    if (Buffer.from(h.subarray(0, 4)).toString('latin1') !== 'head') continue;
    const sum = dv.getUint32(4, true);
    dv.setUint32(4, 0, true);
    if (crc32c(h) !== sum) continue;
    const seq = dv.getBigUint64(8, true);
    if (!best || seq > best.seq) best = { seq, guid: guidString(h.subarray(32, 48)) };
  }
  if (!best) throw new Error(`${file}: no valid VHDX header`);
  return best.guid;
}

/** Store the CRC-32C of `b` (checksum field at offset 4 taken as zero) into that field. */
export function fixCrc(b: Uint8Array): void {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  dv.setUint32(4, 0, true);
  dv.setUint32(4, crc32c(b), true);
}

const utf16 = (s: string) => Buffer.from(s, 'utf16le');
const ascii = (s: string) => Buffer.from(s, 'latin1');

export function writeVhdx(file: string, o: VhdxWriteOptions): VhdxLayout {
  const bs = o.blockSize ?? MiB;
  const ls = 512;
  const ratio = chunkRatio(ls, bs);
  const hasParent = !!o.parent;
  const count = batEntries(o.virtualSize, bs, ratio, hasParent);
  const spb = bs / ls;

  // Gather written sectors per block.
  const blocks = new Map<number, { data: Uint8Array; bits: Uint8Array; n: number }>();
  for (const w of o.writes) {
    if (w.offset % ls !== 0 || w.data.length % ls !== 0) throw new Error('writes must be sector-aligned');
    for (let p = 0; p < w.data.length; p += ls) {
      const v = w.offset + p;
      const blk = Math.floor(v / bs);
      let t = blocks.get(blk);
      if (!t) {
        t = { data: new Uint8Array(bs), bits: new Uint8Array(spb / 8), n: 0 };
        blocks.set(blk, t);
      }
      const s = (v - blk * bs) / ls;
      if (!(t.bits[s >> 3] & (1 << (s & 7)))) t.n++;
      t.bits[s >> 3] |= 1 << (s & 7); // bit 0 of byte 0 is the first sector
      t.data.set(w.data.subarray(p, p + ls), v - blk * bs);
    }
  }

  const batAt = 3 * MiB;
  const batLen = Math.max(MiB, Math.ceil((count * 8) / MiB) * MiB);
  let next = batAt + batLen;
  const bat = new DataView(new ArrayBuffer(count * 8));
  const setEntry = (idx: number, state: number, host: number) => {
    const mb = host / MiB;
    bat.setUint32(idx * 8, ((mb % 4096) << 20) | state, true);
    bat.setUint32(idx * 8 + 4, Math.floor(mb / 4096), true);
  };
  const payloadAt = new Map<number, number>();
  const bitmapChunks = new Map<number, number>();
  const payloadBlocks = Math.ceil(o.virtualSize / bs);
  const lastBlockBytes = o.virtualSize - (payloadBlocks - 1) * bs;
  for (const blk of [...blocks.keys()].sort((a, b) => a - b)) {
    const t = blocks.get(blk) as { n: number };
    const sectorsHere = (blk === payloadBlocks - 1 ? lastBlockBytes : bs) / ls;
    const full = !hasParent || t.n === sectorsHere;
    payloadAt.set(blk, next);
    setEntry(payloadEntry(blk, ratio), full ? PAYLOAD_BLOCK_FULLY_PRESENT : PAYLOAD_BLOCK_PARTIALLY_PRESENT, next);
    next += bs;
    if (!full) {
      const k = Math.floor(blk / ratio);
      if (!bitmapChunks.has(k)) {
        bitmapChunks.set(k, next);
        setEntry(bitmapEntry(k, ratio), SB_BLOCK_PRESENT, next);
        next += MiB;
      }
    }
  }
  for (const blk of o.zeroBlocks ?? []) setEntry(payloadEntry(blk, ratio), PAYLOAD_BLOCK_ZERO, 0);

  const out = new Uint8Array(next);
  // File type identifier.
  out.set(ascii('vhdxfile'), 0);
  out.set(utf16('strata test writer'), 8);
  // Headers: sequence 1 and 2; header 2 is current.
  for (const [at, seq] of [
    [64 * KiB, 1n],
    [128 * KiB, 2n],
  ] as const) {
    const h = out.subarray(at, at + 4 * KiB);
    const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
    h.set(ascii('head'), 0);
    dv.setBigUint64(8, seq, true);
    h.set(guidBytes('11111111-2222-3333-4444-555555555555'), 16); // FileWriteGuid
    h.set(guidBytes('66666666-7777-8888-9999-aaaaaaaaaaaa'), 32); // DataWriteGuid
    h.set(guidBytes(o.logGuid ?? '00000000-0000-0000-0000-000000000000'), 48);
    dv.setUint16(64, 0, true); // log version
    dv.setUint16(66, 1, true); // version
    dv.setUint32(68, MiB, true); // log length
    dv.setBigUint64(72, BigInt(MiB), true); // log offset
    fixCrc(h);
  }
  // Region tables (two identical copies).
  for (const at of [192 * KiB, 256 * KiB]) {
    const r = out.subarray(at, at + 64 * KiB);
    const dv = new DataView(r.buffer, r.byteOffset, r.byteLength);
    r.set(ascii('regi'), 0);
    dv.setUint32(8, 2, true);
    r.set(guidBytes(GUID.bat), 16);
    dv.setBigUint64(32, BigInt(batAt), true);
    dv.setUint32(40, batLen, true);
    dv.setUint32(44, 1, true);
    r.set(guidBytes(GUID.metadata), 48);
    dv.setBigUint64(64, BigInt(2 * MiB), true);
    dv.setUint32(72, MiB, true);
    dv.setUint32(76, 1, true);
    fixCrc(r);
  }
  // Metadata region.
  const md = out.subarray(2 * MiB, 3 * MiB);
  const mdv = new DataView(md.buffer, md.byteOffset, md.byteLength);
  const items: Array<{ guid: string; flags: number; data: Uint8Array }> = [];
  const u32 = (v: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    return b;
  };
  const fp = new Uint8Array(8);
  new DataView(fp.buffer).setUint32(0, bs, true);
  new DataView(fp.buffer).setUint32(4, hasParent ? 2 : 0, true);
  items.push({ guid: GUID.fileParameters, flags: 4, data: fp });
  const vs = new Uint8Array(8);
  new DataView(vs.buffer).setBigUint64(0, BigInt(o.virtualSize), true);
  items.push({ guid: GUID.virtualDiskSize, flags: 6, data: vs });
  items.push({ guid: GUID.page83, flags: 6, data: guidBytes('0badc0de-0000-4000-8000-000000000001') });
  items.push({ guid: GUID.logicalSectorSize, flags: 6, data: u32(ls) });
  items.push({ guid: GUID.physicalSectorSize, flags: 6, data: u32(512) });
  if (o.parent) {
    const linkage = o.parent.linkage ?? vhdxDataWriteGuid(o.parent.file);
    const kv: Array<[string, string]> = [['parent_linkage', `{${linkage}}`]];
    if (o.parent.relativePath) kv.push(['relative_path', o.parent.relativePath]);
    if (o.parent.absoluteWin32Path) kv.push(['absolute_win32_path', o.parent.absoluteWin32Path]);
    const strings: Buffer[] = [];
    let at = 20 + kv.length * 12;
    const head = new Uint8Array(at);
    const hdv = new DataView(head.buffer);
    head.set(guidBytes(GUID.vhdxParentLocatorType), 0);
    hdv.setUint16(18, kv.length, true);
    kv.forEach(([k, v], i) => {
      const kb = utf16(k);
      const vb = utf16(v);
      hdv.setUint32(20 + i * 12, at, true);
      hdv.setUint32(24 + i * 12, at + kb.length, true);
      hdv.setUint16(28 + i * 12, kb.length, true);
      hdv.setUint16(30 + i * 12, vb.length, true);
      strings.push(kb, vb);
      at += kb.length + vb.length;
    });
    items.push({ guid: GUID.parentLocator, flags: 4, data: Buffer.concat([head, ...strings]) });
  }
  md.set(ascii('metadata'), 0);
  mdv.setUint16(10, items.length, true);
  let itemAt = 64 * KiB;
  items.forEach((it, i) => {
    const e = 32 + i * 32;
    md.set(guidBytes(it.guid), e);
    mdv.setUint32(e + 16, itemAt, true);
    mdv.setUint32(e + 20, it.data.length, true);
    mdv.setUint32(e + 24, it.flags, true);
    md.set(it.data, itemAt);
    itemAt += Math.ceil(it.data.length / 8) * 8;
  });
  // BAT, payload blocks and sector bitmaps.
  out.set(new Uint8Array(bat.buffer), batAt);
  for (const [blk, t] of blocks) {
    const host = payloadAt.get(blk) as number;
    out.set(t.data, host);
    const k = Math.floor(blk / ratio);
    const sb = bitmapChunks.get(k);
    if (sb !== undefined) out.set(t.bits, sb + (blk % ratio) * (spb / 8));
  }
  const layout: VhdxLayout = {
    fileSize: out.length,
    batOffset: batAt,
    bat: new Uint8Array(bat.buffer.slice(0)),
    payloadAt,
  };
  if (o.log) {
    if (!o.logGuid) throw new Error('a log needs a logGuid');
    writeLog(out, o.logGuid, o.log(layout));
  }
  writeFileSync(file, out);
  return layout;
}
