import { type ByteSource, readExact } from '../io/byte-source.js';
import { SliceSource } from '../io/slice-source.js';
import { crc32 } from '../util/crc32.js';
import { StrataError } from '../util/errors.js';
import { type ConcatPart, ConcatSource, FailingSource } from './concat-source.js';
import { LvmFields, parseLvmText } from './lvm-text.js';
import { probeContent } from './probe.js';
import type { StackDriver, Volume } from './types.js';

/** LVM2's CRC: the reflected CRC-32 polynomial seeded with 0xf597a6cf, without final inversion. */
export const LVM_INITIAL_CRC = 0xf597a6cf;
export function lvmCrc(data: Uint8Array, state = LVM_INITIAL_CRC): number {
  return ~crc32(data, ~state >>> 0) >>> 0;
}

const SECTOR = 512;
const MDA_HEADER_SIZE = 512;
const MDA_MAGIC = ' LVM2 x[5A%r0N*>';
/** Metadata text we are willing to load from one metadata area. */
export const MAX_METADATA_TEXT = 16 * 1024 * 1024;
const MAX_AREAS = 16;
const MAX_LVS = 16384;
const MAX_SEGMENTS = 65536;

export interface DiskArea {
  offset: number;
  size: number;
}

/** The PV label and header found in one of the first four sectors. */
export interface PvLabel {
  /** Byte offset of the label sector. */
  labelOffset: number;
  /** PV UUID as stored (32 characters, no dashes). */
  uuid: string;
  deviceSize: number;
  dataAreas: DiskArea[];
  metadataAreas: DiskArea[];
}

const text = (b: Uint8Array, from: number, to: number) => String.fromCharCode(...b.subarray(from, to));
const u64 = (dv: DataView, at: number, where: { file: string; structure: string; offset: number }) => {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new StrataError('CORRUPT', `64-bit field at +${at} too large`, where);
  return Number(v);
};

/** Look for "LABELONE" in sectors 0..3. Returns undefined when there is none; CORRUPT when it is broken. */
export async function readPvLabel(src: ByteSource): Promise<PvLabel | undefined> {
  const n = Math.min(src.size, 4 * SECTOR);
  if (n < SECTOR) return undefined;
  const head = await readExact(src, 0, n - (n % SECTOR), 'LVM label area');
  for (let s = 0; (s + 1) * SECTOR <= head.length; s++) {
    const sec = head.subarray(s * SECTOR, (s + 1) * SECTOR);
    if (text(sec, 0, 8) !== 'LABELONE') continue;
    const where = { file: src.name, structure: 'LVM2 label', offset: s * SECTOR };
    const dv = new DataView(sec.buffer, sec.byteOffset, SECTOR);
    const sectorXl = dv.getBigUint64(8, true);
    if (sectorXl !== BigInt(s))
      throw new StrataError('CORRUPT', `label says sector ${sectorXl}, found in sector ${s}`, where);
    const stored = dv.getUint32(16, true);
    const actual = lvmCrc(sec.subarray(20, SECTOR));
    if (stored !== actual) {
      throw new StrataError(
        'CORRUPT',
        `label CRC mismatch (stored 0x${stored.toString(16)}, computed 0x${actual.toString(16)})`,
        where,
      );
    }
    const type = text(sec, 24, 32);
    if (type !== 'LVM2 001')
      throw new StrataError('UNSUPPORTED', `label type ${JSON.stringify(type)} is not "LVM2 001"`, where);
    const hdr = dv.getUint32(20, true);
    if (hdr < 32 || hdr + 32 + 8 + 16 > SECTOR)
      throw new StrataError('CORRUPT', `PV header offset ${hdr} out of bounds`, where);
    const pvWhere = { ...where, structure: 'LVM2 PV header', offset: s * SECTOR + hdr };
    const uuid = text(sec, hdr, hdr + 32);
    if (!/^[\x21-\x7e]{32}$/.test(uuid)) {
      throw new StrataError('CORRUPT', 'PV UUID is not printable', pvWhere);
    }
    const deviceSize = u64(dv, hdr + 32, pvWhere);
    let at = hdr + 40;
    const lists: DiskArea[][] = [[], []];
    for (const list of lists) {
      for (;;) {
        if (at + 16 > SECTOR) throw new StrataError('CORRUPT', 'area list runs past the label sector', pvWhere);
        const offset = u64(dv, at, pvWhere);
        const size = u64(dv, at + 8, pvWhere);
        at += 16;
        if (offset === 0) break;
        if (list.length >= MAX_AREAS) throw new StrataError('LIMIT', `more than ${MAX_AREAS} areas`, pvWhere);
        list.push({ offset, size });
      }
    }
    return { labelOffset: s * SECTOR, uuid, deviceSize, dataAreas: lists[0], metadataAreas: lists[1] };
  }
  return undefined;
}

/** The current metadata text of one metadata area, or undefined when the area holds none (orphan PV, ignored area). */
export async function readMetadataArea(src: ByteSource, mda: DiskArea): Promise<string | undefined> {
  const where = { file: src.name, structure: 'LVM2 metadata area header', offset: mda.offset };
  if (
    mda.size < MDA_HEADER_SIZE * 2 ||
    mda.offset + mda.size > src.size ||
    !Number.isSafeInteger(mda.offset + mda.size)
  ) {
    throw new StrataError(
      'CORRUPT',
      `metadata area ${mda.offset}+${mda.size} does not fit the device (${src.size})`,
      where,
    );
  }
  const h = await readExact(src, mda.offset, MDA_HEADER_SIZE, where.structure);
  const dv = new DataView(h.buffer, h.byteOffset, MDA_HEADER_SIZE);
  if (text(h, 4, 20) !== MDA_MAGIC) throw new StrataError('CORRUPT', 'bad metadata area magic', where);
  const stored = dv.getUint32(0, true);
  const actual = lvmCrc(h.subarray(4, MDA_HEADER_SIZE));
  if (stored !== actual) {
    throw new StrataError(
      'CORRUPT',
      `metadata area header CRC mismatch (stored 0x${stored.toString(16)}, computed 0x${actual.toString(16)})`,
      where,
    );
  }
  const version = dv.getUint32(20, true);
  if (version !== 1) throw new StrataError('UNSUPPORTED', `metadata area version ${version}`, where);
  const start = u64(dv, 24, where);
  const size = u64(dv, 32, where);
  if (start !== mda.offset)
    throw new StrataError('CORRUPT', `metadata area header says start ${start}, expected ${mda.offset}`, where);
  if (size !== mda.size)
    throw new StrataError('CORRUPT', `metadata area header says size ${size}, expected ${mda.size}`, where);
  // raw_locn[0]: the committed metadata.
  const off = u64(dv, 40, where);
  const len = u64(dv, 48, where);
  const checksum = dv.getUint32(56, true);
  const flags = dv.getUint32(60, true);
  if (flags & 1) return undefined; // RAW_LOCN_IGNORED
  if (off === 0 && len === 0) return undefined;
  if (off < MDA_HEADER_SIZE || off >= size || len > size - MDA_HEADER_SIZE || len === 0) {
    throw new StrataError('CORRUPT', `metadata text location ${off}+${len} outside the area of ${size} bytes`, where);
  }
  if (len > MAX_METADATA_TEXT)
    throw new StrataError('LIMIT', `metadata text of ${len} bytes exceeds ${MAX_METADATA_TEXT}`, where);
  // The text area is a circular buffer after the header: wrap to offset 512 when it runs off the end.
  const first = Math.min(len, size - off);
  const a = await readExact(src, mda.offset + off, first, 'LVM2 metadata text');
  let buf = a;
  let crc = lvmCrc(a);
  if (first < len) {
    const b = await readExact(src, mda.offset + MDA_HEADER_SIZE, len - first, 'LVM2 metadata text (wrapped)');
    crc = lvmCrc(b, crc);
    buf = new Uint8Array(len);
    buf.set(a);
    buf.set(b, first);
  }
  if (crc !== checksum) {
    throw new StrataError(
      'CORRUPT',
      `metadata text checksum mismatch (stored 0x${checksum.toString(16)}, computed 0x${crc.toString(16)})`,
      {
        ...where,
        structure: 'LVM2 metadata text',
        offset: mda.offset + off,
      },
    );
  }
  const nul = buf.indexOf(0);
  return new TextDecoder('utf-8').decode(nul >= 0 ? buf.subarray(0, nul) : buf);
}

export interface LvmPvMeta {
  /** Key in the metadata ("pv0"). */
  key: string;
  /** UUID without dashes (matches PvLabel.uuid). */
  uuid: string;
  /** The device path recorded when the metadata was written (a hint only). */
  deviceHint?: string;
  /** Byte offset of the first physical extent. */
  peStart: number;
  peCount: number;
  devSize?: number;
}

export interface LvmStripe {
  pv: string;
  pe: number;
}

export interface LvmSegment {
  startExtent: number;
  extentCount: number;
  /** As in the metadata: 'striped', 'mirror', 'raid1', 'thin', 'snapshot', ... */
  type: string;
  stripeCount?: number;
  stripes: LvmStripe[];
}

export interface LvmLv {
  name: string;
  id: string;
  status: string[];
  visible: boolean;
  segments: LvmSegment[];
  extentCount: number;
  /** 'linear' when every segment is striped with one stripe, else the first other type (lvs naming). */
  segType: string;
}

export interface LvmVg {
  name: string;
  id: string;
  seqno: number;
  /** Extent size in bytes. */
  extentSize: number;
  pvs: LvmPvMeta[];
  lvs: LvmLv[];
}

const undash = (s: string) => s.replace(/-/g, '');

/** Interpret parsed metadata text as a VG. */
export function parseVgMetadata(
  textIn: string,
  where: { file?: string; structure?: string; offset?: number } = {},
): LvmVg {
  const w = { ...where, structure: where.structure ?? 'LVM2 metadata text' };
  const root = new LvmFields(parseLvmText(textIn, w), '', w);
  const vgs = root.sections().filter(([, s]) => s.has('physical_volumes') || s.has('extent_size'));
  if (vgs.length !== 1) throw new StrataError('CORRUPT', `expected one volume group section, found ${vgs.length}`, w);
  const [vgName, vg] = vgs[0];
  const extentSectors = vg.int('extent_size');
  if (extentSectors === 0 || extentSectors * SECTOR > 2 ** 40) {
    throw new StrataError('CORRUPT', `extent size of ${extentSectors} sectors is out of range`, w);
  }
  const extentSize = extentSectors * SECTOR;
  const pvs: LvmPvMeta[] = [];
  for (const [key, pv] of vg.sub('physical_volumes').sections()) {
    const peStart = pv.int('pe_start') * SECTOR;
    pvs.push({
      key,
      uuid: undash(pv.str('id')),
      deviceHint: pv.optStr('device'),
      peStart,
      peCount: pv.int('pe_count'),
      devSize: pv.optInt('dev_size') === undefined ? undefined : pv.int('dev_size') * SECTOR,
    });
  }
  const lvs: LvmLv[] = [];
  let totalSegments = 0;
  const lvSection = vg.optSub('logical_volumes');
  for (const [name, lv] of lvSection ? lvSection.sections() : []) {
    if (lvs.length >= MAX_LVS) throw new StrataError('LIMIT', `more than ${MAX_LVS} logical volumes`, w);
    const status = lv.strings('status');
    const segCount = lv.int('segment_count');
    if (segCount > MAX_SEGMENTS || totalSegments + segCount > MAX_SEGMENTS) {
      throw new StrataError('LIMIT', `LV ${name}: more than ${MAX_SEGMENTS} segments`, w);
    }
    totalSegments += segCount;
    const segments: LvmSegment[] = [];
    for (let i = 1; i <= segCount; i++) {
      const seg = lv.sub(`segment${i}`);
      const type = seg.str('type');
      const stripes: LvmStripe[] = [];
      const stripeCount = seg.optInt('stripe_count');
      if (seg.has('stripes')) {
        const arr = seg.list('stripes');
        for (let k = 0; k + 1 < arr.length; k += 2) {
          const pv = arr[k];
          const pe = arr[k + 1];
          if (typeof pv !== 'string' || typeof pe !== 'number' || !Number.isSafeInteger(pe) || pe < 0) {
            throw new StrataError('CORRUPT', `LV ${name} segment${i}: bad stripes list`, w);
          }
          stripes.push({ pv, pe });
        }
      }
      segments.push({
        startExtent: seg.int('start_extent'),
        extentCount: seg.int('extent_count'),
        type,
        stripeCount,
        stripes,
      });
    }
    segments.sort((a, b) => a.startExtent - b.startExtent);
    let extentCount = 0;
    for (const s of segments) {
      if (s.startExtent !== extentCount) {
        throw new StrataError(
          'CORRUPT',
          `LV ${name}: segment at extent ${s.startExtent} does not follow extent ${extentCount}`,
          w,
        );
      }
      extentCount += s.extentCount;
    }
    const isLinear = (s: LvmSegment) => (s.type === 'striped' || s.type === 'linear') && (s.stripeCount ?? 1) === 1;
    const other = segments.find((s) => !isLinear(s));
    const segType = other ? (other.type === 'striped' ? 'striped' : other.type) : 'linear';
    lvs.push({
      name,
      id: lv.optStr('id') ?? '',
      status,
      visible: status.includes('VISIBLE'),
      segments,
      extentCount,
      segType,
    });
  }
  return { name: vgName, id: vg.optStr('id') ?? '', seqno: vg.optInt('seqno') ?? 0, extentSize, pvs, lvs };
}

/** A PV we found on the disk: its label and the source holding it. */
export interface FoundPv {
  label: PvLabel;
  source: ByteSource;
  /** Volume id of the partition (or '' for the whole disk) that holds it. */
  volumeId: string;
}

export interface LvLayout {
  /** The LV's bytes, or a FailingSource whose reads throw the reason. */
  source: ByteSource;
  size: number;
  /** Why it cannot be read, if it cannot. */
  error?: StrataError;
  /** PV holding the first extent, when known. */
  firstPv?: FoundPv;
  /** Byte offset of the first extent within that PV. */
  firstOffset: number;
}

/**
 * Map an LV onto the PVs: each linear segment is a slice of its PV starting at
 * pe_start + pe * extent_size; the slices are concatenated. Other segment types and missing
 * PVs give a FailingSource (UNSUPPORTED / NOT_FOUND) so listing still works.
 */
export function layoutLv(vg: LvmVg, lv: LvmLv, found: Map<string, FoundPv>, diskName: string): LvLayout {
  const name = `${diskName}[lv ${vg.name}/${lv.name}]`;
  const size = lv.extentCount * vg.extentSize;
  const where = { file: diskName, structure: `LVM2 LV ${vg.name}/${lv.name}` };
  const fail = (error: StrataError, firstPv?: FoundPv, firstOffset = 0): LvLayout => ({
    source: new FailingSource(name, Number.isSafeInteger(size) ? size : 0, () => error),
    size: Number.isSafeInteger(size) ? size : 0,
    error,
    firstPv,
    firstOffset,
  });
  if (!Number.isSafeInteger(size)) return fail(new StrataError('CORRUPT', 'LV size overflows', where));
  const pvByKey = new Map(vg.pvs.map((p) => [p.key, p]));
  const first = lv.segments[0]?.stripes[0];
  const firstMeta = first ? pvByKey.get(first.pv) : undefined;
  const firstPv = firstMeta ? found.get(firstMeta.uuid) : undefined;
  const firstOffset = firstMeta && first ? firstMeta.peStart + first.pe * vg.extentSize : 0;
  if (lv.segType !== 'linear') {
    return fail(
      new StrataError(
        'UNSUPPORTED',
        `segment type '${lv.segType}' is not supported (only linear LVs can be read)`,
        where,
      ),
      firstPv,
      firstOffset,
    );
  }
  const runs: Array<{ pv: ByteSource; start: number; length: number }> = [];
  for (const seg of lv.segments) {
    const stripe = seg.stripes[0];
    if (!stripe) return fail(new StrataError('CORRUPT', `segment at extent ${seg.startExtent} has no stripes`, where));
    const meta = pvByKey.get(stripe.pv);
    if (!meta) return fail(new StrataError('CORRUPT', `segment refers to unknown PV '${stripe.pv}'`, where));
    const pv = found.get(meta.uuid);
    if (!pv) {
      const was = meta.deviceHint ? `, was ${meta.deviceHint}` : '';
      return fail(
        new StrataError('NOT_FOUND', `PV ${stripe.pv} (uuid ${meta.uuid}${was}) is missing`, where),
        firstPv,
        firstOffset,
      );
    }
    if (stripe.pe + seg.extentCount > meta.peCount) {
      const msg = `segment extents ${stripe.pe}+${seg.extentCount} exceed the PV's ${meta.peCount} extents`;
      return fail(new StrataError('CORRUPT', msg, where), firstPv, firstOffset);
    }
    const start = meta.peStart + stripe.pe * vg.extentSize;
    const length = seg.extentCount * vg.extentSize;
    if (!Number.isSafeInteger(start + length) || start + length > pv.source.size) {
      const msg = `segment ${start}+${length} lies past the end of PV ${stripe.pv} (${pv.source.size} bytes)`;
      return fail(new StrataError('CORRUPT', msg, where), firstPv, firstOffset);
    }
    const prev = runs[runs.length - 1];
    if (prev && prev.pv === pv.source && prev.start + prev.length === start) prev.length += length;
    else runs.push({ pv: pv.source, start, length });
  }
  const source =
    runs.length === 1
      ? new SliceSource(runs[0].pv, runs[0].start, runs[0].length, name)
      : new ConcatSource(
          runs.map((r): ConcatPart => ({ source: new SliceSource(r.pv, r.start, r.length), length: r.length })),
          name,
        );
  return { source, size, firstPv, firstOffset };
}

/** Read a PV's newest metadata (highest seqno over its metadata areas). Undefined for an orphan PV. */
export async function readPvMetadata(src: ByteSource, label: PvLabel, warnings: string[]): Promise<LvmVg | undefined> {
  let best: LvmVg | undefined;
  let lastError: unknown;
  for (const mda of label.metadataAreas) {
    try {
      const t = await readMetadataArea(src, mda);
      if (t === undefined) continue;
      const vg = parseVgMetadata(t, { file: src.name, offset: mda.offset });
      if (!best || vg.seqno > best.seqno) best = vg;
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      lastError = e;
      warnings.push(e.message);
    }
  }
  if (!best && lastError) throw lastError;
  return best;
}

/**
 * LVM2 as a volume driver: every PV found (whole disk or partition) contributes its VG's
 * logical volumes, id "VG/LV", parent = the PV's volume id. Problems are warnings (the PVs
 * are still listed); an LV that cannot be read (unsupported segment type, missing PV) is
 * listed and throws when read.
 */
export const lvmDriver: StackDriver = {
  level: 'stack',
  kind: 'lvm',
  probe: (v) => v.content === 'LVM2_member',
  open: (members, { disk, warnings }) => logicalVolumes(disk, members, warnings),
};

async function logicalVolumes(disk: ByteSource, members: Volume[], warnings: string[]): Promise<Volume[]> {
  const volumes: Volume[] = [];
  const groups = new Map<string, { vg: LvmVg; pvs: Map<string, FoundPv> }>();
  for (const v of members) {
    try {
      const label = await readPvLabel(v.source);
      if (!label) continue;
      const vg = await readPvMetadata(v.source, label, warnings);
      if (!vg) {
        warnings.push(`LVM2 PV on ${v.id === '' ? 'the whole disk' : `partition ${v.id}`} belongs to no volume group`);
        continue;
      }
      const key = vg.id || vg.name;
      let g = groups.get(key);
      if (!g) groups.set(key, (g = { vg, pvs: new Map() }));
      else if (vg.seqno > g.vg.seqno) g.vg = vg;
      g.pvs.set(label.uuid, { label, source: v.source, volumeId: v.id });
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      warnings.push(`LVM2 PV on ${v.id === '' ? 'the whole disk' : `partition ${v.id}`}: ${e.message}`);
    }
  }
  for (const { vg, pvs } of groups.values()) {
    const missing = vg.pvs.filter((p) => !pvs.has(p.uuid));
    if (missing.length > 0) {
      warnings.push(
        `volume group ${vg.name}: ${missing.length} of ${vg.pvs.length} PVs missing (${missing.map((p) => p.deviceHint ?? p.key).join(', ')}); LVs on them cannot be read`,
      );
    }
    const anyPv = pvs.values().next().value as FoundPv;
    for (const lv of vg.lvs) {
      const lay = layoutLv(vg, lv, pvs, disk.name);
      const flags: string[] = [];
      if (!lv.visible) flags.push('hidden');
      if (lay.error?.code === 'UNSUPPORTED') flags.push('unsupported');
      else if (lay.error?.code === 'NOT_FOUND') flags.push('missing-pv');
      else if (lay.error) flags.push('corrupt');
      const vol: Volume = {
        id: `${vg.name}/${lv.name}`,
        scheme: 'lvm',
        type: `LVM ${lv.segType}`,
        typeCode: lv.segType,
        start: lay.firstOffset,
        size: lay.size,
        name: lv.name,
        uuid: lv.id,
        flags,
        source: lay.source,
        parent: (lay.firstPv ?? anyPv).volumeId,
        details: {
          vg: vg.name,
          vgUuid: vg.id,
          extentSize: vg.extentSize,
          segments: lv.segments.map((s) => ({ ...s, stripes: s.stripes.map((x) => ({ ...x })) })),
          error: lay.error?.message,
        },
      };
      if (!lay.error && lay.size > 0) {
        try {
          vol.content = await probeContent(lay.source);
        } catch (e) {
          if (!(e instanceof StrataError)) throw e;
          warnings.push(`LV ${vol.id}: ${e.message}`);
        }
      }
      volumes.push(vol);
    }
  }
  return volumes;
}
