import type { ByteSource } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import type { DiscoverResult } from '../volumes/discover.js';
import { parseGpt } from '../volumes/gpt.js';
import { type LvmVg, readPvLabel, readPvMetadata } from '../volumes/lvm.js';
import type { Volume } from '../volumes/types.js';
import type { DiskRun } from './claims.js';

/** A partition-table or volume-manager structure on the disk. */
export interface TableStructure {
  offset: number;
  length: number;
  kind: 'partition-table' | 'lvm-metadata';
  detail: string;
  /** The volume holding it (an LVM PV), when it is inside one. */
  volumeId?: string;
}

export interface VolumeLayout {
  structures: TableStructure[];
  /** Where each volume's bytes lie on the disk, by volume id (absent: unknown, e.g. a non-linear LV). */
  runs: Map<string, DiskRun[]>;
}

const SIG_EFI = 'EFI PART';

/**
 * Where the partition-table structures are (MBR, EBRs, GPT headers and entry arrays of
 * both copies, LVM2 labels and metadata areas) and where every volume lies on the disk,
 * from the volumes layer's own parsers. LVs map through their linear segments onto their
 * PVs and from there onto the disk.
 */
export async function volumeLayout(disk: ByteSource, found: DiscoverResult, warnings: string[]): Promise<VolumeLayout> {
  const structures: TableStructure[] = [];
  const runs = new Map<string, DiskRun[]>();
  const ss = found.sectorSize;
  for (const v of found.volumes) {
    if (v.scheme !== 'lvm') runs.set(v.id, [{ volumeOffset: 0, diskOffset: v.start, length: v.size }]);
  }
  if (found.scheme === 'gpt') await gptStructures(disk, ss, structures, warnings);
  else if (found.scheme === 'mbr') {
    const sectors = new Set<number>([0]);
    for (const v of found.volumes) {
      const at = v.details?.entryOffset;
      if (typeof at === 'number') sectors.add(Math.floor(at / ss) * ss);
    }
    for (const s of [...sectors].sort((a, b) => a - b)) {
      structures.push({
        offset: s,
        length: ss,
        kind: 'partition-table',
        detail: s === 0 ? 'MBR' : 'EBR',
      });
    }
  }
  await lvmLayout(found.volumes, runs, structures, warnings);
  return { structures, runs };
}

async function gptStructures(disk: ByteSource, ss: number, out: TableStructure[], warnings: string[]): Promise<void> {
  out.push({ offset: 0, length: ss, kind: 'partition-table', detail: 'protective MBR' });
  let gpt: Awaited<ReturnType<typeof parseGpt>>;
  try {
    gpt = await parseGpt(disk, ss);
  } catch (e) {
    if (!(e instanceof StrataError)) throw e;
    warnings.push(`GPT structures: ${e.message}`);
    return;
  }
  const h = gpt.header;
  const arrayLen = Math.ceil((h.entryCount * h.entrySize) / ss) * ss;
  const mine = gpt.usedBackup ? 'backup' : 'primary';
  const other = gpt.usedBackup ? 'primary' : 'backup';
  out.push({ offset: h.lba * ss, length: ss, kind: 'partition-table', detail: `GPT ${mine} header` });
  out.push({ offset: h.entriesLba * ss, length: arrayLen, kind: 'partition-table', detail: `GPT ${mine} entries` });
  // the other copy: its header says where its entries are when it is readable
  const alt = h.alternateLba;
  if (alt >= 1 && (alt + 1) * ss <= disk.size) {
    out.push({ offset: alt * ss, length: ss, kind: 'partition-table', detail: `GPT ${other} header` });
    const sec = await disk.read(alt * ss, ss);
    let entriesLba = gpt.usedBackup ? 2 : alt - arrayLen / ss;
    if (sec.length === ss && String.fromCharCode(...sec.subarray(0, 8)) === SIG_EFI) {
      const lba = new DataView(sec.buffer, sec.byteOffset, sec.byteLength).getBigUint64(72, true);
      if (lba >= 1n && lba * BigInt(ss) + BigInt(arrayLen) <= BigInt(disk.size)) entriesLba = Number(lba);
    }
    if (entriesLba >= 1) {
      out.push({ offset: entriesLba * ss, length: arrayLen, kind: 'partition-table', detail: `GPT ${other} entries` });
    }
  }
}

async function lvmLayout(
  volumes: readonly Volume[],
  runs: Map<string, DiskRun[]>,
  out: TableStructure[],
  warnings: string[],
): Promise<void> {
  // PV uuid -> the PV volume's id; VG name -> newest metadata
  const pvVolume = new Map<string, string>();
  const vgs = new Map<string, LvmVg>();
  for (const v of volumes) {
    if (v.content !== 'LVM2_member') continue;
    const pvRuns = runs.get(v.id);
    if (!pvRuns) continue;
    try {
      const label = await readPvLabel(v.source);
      if (!label) continue;
      const put = (offset: number, length: number, detail: string) => {
        for (const r of pvRuns) {
          const s = Math.max(offset, r.volumeOffset);
          const e = Math.min(offset + length, r.volumeOffset + r.length);
          if (e > s)
            out.push({
              offset: r.diskOffset + s - r.volumeOffset,
              length: e - s,
              kind: 'lvm-metadata',
              detail,
              volumeId: v.id,
            });
        }
      };
      put(label.labelOffset, 512, 'PV label');
      for (const [k, m] of label.metadataAreas.entries()) put(m.offset, m.size, `metadata area ${k + 1}`);
      pvVolume.set(label.uuid, v.id);
      const vg = await readPvMetadata(v.source, label, []);
      if (vg) {
        const had = vgs.get(vg.name);
        if (!had || vg.seqno > had.seqno) vgs.set(vg.name, vg);
      }
    } catch (e) {
      if (!(e instanceof StrataError)) throw e;
      warnings.push(`LVM structures on volume ${v.id || '(whole disk)'}: ${e.message}`);
    }
  }
  for (const vg of vgs.values()) {
    const metaByKey = new Map(vg.pvs.map((p) => [p.key, p]));
    for (const lv of vg.lvs) {
      const lvRuns: DiskRun[] = [];
      let ok = true;
      for (const seg of lv.segments) {
        const stripe = seg.stripes[0];
        const meta = stripe ? metaByKey.get(stripe.pv) : undefined;
        const pvId = meta ? pvVolume.get(meta.uuid) : undefined;
        const pvRuns = pvId !== undefined ? runs.get(pvId) : undefined;
        if (seg.stripes.length !== 1 || !stripe || !meta || !pvRuns) {
          ok = false;
          break;
        }
        const pvOff = meta.peStart + stripe.pe * vg.extentSize;
        const len = seg.extentCount * vg.extentSize;
        const lvOff = seg.startExtent * vg.extentSize;
        for (const r of pvRuns) {
          const s = Math.max(pvOff, r.volumeOffset);
          const e = Math.min(pvOff + len, r.volumeOffset + r.length);
          if (e > s)
            lvRuns.push({
              volumeOffset: lvOff + (s - pvOff),
              diskOffset: r.diskOffset + (s - r.volumeOffset),
              length: e - s,
            });
        }
      }
      if (!ok) continue;
      lvRuns.sort((a, b) => a.volumeOffset - b.volumeOffset);
      runs.set(`${vg.name}/${lv.name}`, lvRuns);
    }
  }
}
