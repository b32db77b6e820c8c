import type { ByteSource } from '../io/byte-source.js';
import { SliceSource } from '../io/slice-source.js';
import { StrataError } from '../util/errors.js';
import { hasGptSignature, parseGpt } from './gpt.js';
import { type FoundPv, type LvmVg, layoutLv, readPvLabel, readPvMetadata } from './lvm.js';
import { hexType, mbrTypeName, parseMbr } from './mbr.js';
import { looksLikeMbr, probeContent } from './probe.js';
import type { PartitionTable, Volume } from './types.js';

export interface DiscoverOptions {
  /** Logical sector size. Default: 512, or 4096 when a GPT is found only at 4096. */
  sectorSize?: number;
}

/** The result of discovery: the outer scheme ('gpt' | 'mbr' | 'whole' | 'none'), every volume, and warnings. */
export interface DiscoverResult extends PartitionTable {
  /** Logical sector size used for the table. */
  sectorSize: number;
  /** GPT disk GUID or MBR disk signature ("0x1234abcd"). */
  diskId?: string;
}

const FS_NOT_TABLE = (c: string | undefined) => c !== undefined && c !== 'mbr' && c !== 'gpt';

/**
 * Find every volume on a disk:
 * - GPT (behind a protective MBR, at 512- or 4096-byte sectors; the backup header is used
 *   with a warning when the primary is damaged; both damaged -> CORRUPT, no MBR fallback
 *   when the MBR is protective),
 * - else a file system, swap, LUKS or LVM PV spanning the whole disk -> one volume id '',
 * - else an MBR (primaries "1".."4" by slot, logicals "5".. in EBR chain order; the extended
 *   container listed with flag 'extended' and no content),
 * - else nothing (scheme 'none', no volumes, a warning).
 * Every volume is probed for content. Partitions that run past the disk end are clamped to
 * it with a warning (flag 'truncated'); overlaps are warned about. Every LVM2 PV found
 * (whole disk or partition) contributes its VG's logical volumes, id "VG/LV", parent = the
 * PV's volume id. LVM problems are warnings (the partitions are still listed); an LV that
 * cannot be read (unsupported segment type, missing PV) is listed and throws when read.
 */
export async function discoverVolumes(disk: ByteSource, opts: DiscoverOptions = {}): Promise<DiscoverResult> {
  const warnings: string[] = [];
  if (opts.sectorSize !== undefined && ![512, 1024, 2048, 4096].includes(opts.sectorSize)) {
    throw new StrataError('USAGE', `sector size ${opts.sectorSize} is not 512, 1024, 2048 or 4096`, {
      file: disk.name,
    });
  }
  if (disk.size < 512) {
    throw new StrataError('TRUNCATED', `disk of ${disk.size} bytes is too small for any partition table`, {
      file: disk.name,
    });
  }
  const sector0 = await disk.read(0, 512);
  const mbrLike = looksLikeMbr(sector0);
  let protective = false;
  if (mbrLike) {
    for (let i = 0; i < 4; i++) if (sector0[446 + i * 16 + 4] === 0xee) protective = true;
  }

  // 1. GPT.
  let ss = opts.sectorSize;
  if (ss === undefined) {
    if (await hasGptSignature(disk, 512)) ss = 512;
    else if (await hasGptSignature(disk, 4096)) ss = 4096;
    else if (protective) ss = (await backupGptSectorSize(disk)) ?? 512;
  }
  const sectorSize = ss ?? 512;
  const gptSig = await hasGptSignature(disk, sectorSize);
  if (gptSig && !protective && mbrLike) {
    // Like Linux: a valid MBR without a 0xEE entry wins over a GPT signature (a stale GPT
    // left behind by re-partitioning), with a warning.
    warnings.push('a GPT header exists but the MBR has no protective (0xEE) entry; using the MBR');
  } else if (protective || gptSig) {
    if (!protective) warnings.push('GPT found without a protective MBR');
    const gpt = await parseGpt(disk, sectorSize);
    warnings.push(...gpt.warnings);
    if (mbrLike) {
      const others = countNonProtective(sector0);
      if (others > 0) warnings.push(`hybrid MBR: ${others} MBR entries besides the protective one are ignored`);
    }
    const volumes: Volume[] = gpt.partitions.map((p) => {
      const flags = [...p.attributeFlags];
      return makeVolume(disk, warnings, {
        id: p.id,
        scheme: 'gpt',
        type: p.typeName,
        typeCode: p.typeGuid,
        start: p.start,
        size: p.size,
        name: p.name,
        uuid: p.uniqueGuid,
        flags,
        details: { firstLba: p.firstLba, lastLba: p.lastLba, attributes: p.attributes, index: p.index },
      });
    });
    return finish(disk, { scheme: 'gpt', sectorSize, diskId: gpt.diskGuid, volumes, warnings });
  }

  // 2. A file system (or PV, swap, LUKS) on the whole disk.
  const content = await probeContent(disk);
  if (FS_NOT_TABLE(content)) {
    const whole: Volume = {
      id: '',
      scheme: 'whole',
      type: 'whole disk',
      start: 0,
      size: disk.size,
      source: disk,
      content,
    };
    return finish(disk, { scheme: 'whole', sectorSize, volumes: [whole], warnings }, true);
  }

  // 3. MBR.
  if (mbrLike) {
    const mbr = await parseMbr(disk, sectorSize);
    warnings.push(...mbr.warnings);
    const volumes = mbr.partitions.map((p) => {
      const flags: string[] = [];
      if (p.bootable) flags.push('bootable');
      if (p.kind === 'extended') flags.push('extended');
      if (p.kind === 'logical') flags.push('logical');
      if (p.kind === 'primary') flags.push('primary');
      return makeVolume(disk, warnings, {
        id: p.id,
        scheme: 'mbr',
        type: p.kind === 'extended' ? 'extended' : mbrTypeName(p.typeByte),
        typeCode: hexType(p.typeByte),
        start: p.start,
        size: p.size,
        flags,
        details: { startSector: p.startSector, sectors: p.sectors, entryOffset: p.entryOffset },
      });
    });
    return finish(disk, { scheme: 'mbr', sectorSize, diskId: mbr.diskId, volumes, warnings });
  }

  warnings.push('no partition table, volume manager or file system recognized');
  return { scheme: 'none', sectorSize, volumes: [], warnings };
}

/** With a protective MBR but no primary GPT header, find which sector size the backup header uses. */
async function backupGptSectorSize(disk: ByteSource): Promise<number | undefined> {
  for (const ss of [512, 4096]) {
    const last = Math.floor(disk.size / ss) - 1;
    if (last < 1) continue;
    const b = await disk.read(last * ss, 8);
    if (b.length === 8 && String.fromCharCode(...b) === 'EFI PART') return ss;
  }
  return undefined;
}

function countNonProtective(sector0: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < 4; i++) {
    const t = sector0[446 + i * 16 + 4];
    if (t !== 0 && t !== 0xee) n++;
  }
  return n;
}

interface VolumeSpec extends Omit<Volume, 'source'> {}

/** Slice a partition out of the disk, clamping it to the disk end with a warning. */
function makeVolume(disk: ByteSource, warnings: string[], spec: VolumeSpec): Volume {
  const flags = spec.flags ?? [];
  let size = spec.size;
  if (spec.start >= disk.size) {
    warnings.push(
      `partition ${spec.id} starts at byte ${spec.start}, past the disk end (${disk.size}); it is empty here`,
    );
    flags.push('truncated');
    size = 0;
  } else if (spec.start + spec.size > disk.size) {
    warnings.push(
      `partition ${spec.id} (${spec.start}+${spec.size}) runs past the disk end (${disk.size}); clamped to ${disk.size - spec.start} bytes`,
    );
    flags.push('truncated');
    size = disk.size - spec.start;
  }
  const start = Math.min(spec.start, disk.size);
  const source = new SliceSource(disk, start, size, `${disk.name}[part ${spec.id}]`);
  return { ...spec, start, size, flags, source };
}

async function finish(disk: ByteSource, result: DiscoverResult, alreadyProbed = false): Promise<DiscoverResult> {
  const { volumes, warnings } = result;
  // Overlaps among partitions: primaries/GPT entries (with the extended container) among
  // themselves, and logicals among themselves (they live inside the container). Sort and
  // sweep, so hostile tables with thousands of entries stay O(n log n).
  let overlaps = 0;
  const sweep = (group: Volume[]) => {
    let reach: Volume | undefined;
    for (const v of group.sort((a, b) => a.start - b.start)) {
      if (reach && v.start < reach.start + reach.size && ++overlaps <= 32) {
        warnings.push(`partitions ${reach.id} and ${v.id} overlap`);
      }
      if (!reach || v.start + v.size > reach.start + reach.size) reach = v;
    }
  };
  const sized = volumes.filter((v) => v.size > 0 && v.id !== '');
  sweep(sized.filter((v) => !v.flags?.includes('logical')));
  sweep(sized.filter((v) => v.flags?.includes('logical')));
  if (overlaps > 32) warnings.push(`${overlaps - 32} more overlapping partition pairs`);
  if (!alreadyProbed) {
    for (const v of volumes) {
      if (v.flags?.includes('extended') || v.size === 0) continue;
      v.content = await probeContent(v.source);
    }
  }
  await addLogicalVolumes(disk, volumes, warnings);
  return result;
}

async function addLogicalVolumes(disk: ByteSource, volumes: Volume[], warnings: string[]): Promise<void> {
  const groups = new Map<string, { vg: LvmVg; pvs: Map<string, FoundPv> }>();
  for (const v of volumes) {
    if (v.content !== 'LVM2_member') continue;
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
}
