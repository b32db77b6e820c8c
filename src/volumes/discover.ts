import type { ByteSource } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import { gptDriver, gptSectorSize } from './gpt.js';
import { lvmDriver } from './lvm.js';
import { mbrDriver } from './mbr.js';
import { looksLikeMbr, probeContent } from './probe.js';
import type { DiskContext, PartitionTable, StackDriver, TableDriver, Volume, VolumeDriver } from './types.js';

export interface DiscoverOptions {
  /** Logical sector size. Default: 512, or 4096 when a GPT is found only at 4096. */
  sectorSize?: number;
  /** The volume drivers to use, in order. Default: VOLUME_DRIVERS. */
  drivers?: readonly VolumeDriver[];
}

/** The result of discovery: the outer scheme ('gpt' | 'mbr' | 'whole' | 'none'), every volume, and warnings. */
export interface DiscoverResult extends PartitionTable {
  /** Logical sector size used for the table. */
  sectorSize: number;
  /** GPT disk GUID or MBR disk signature ("0x1234abcd"). */
  diskId?: string;
}

const FS_NOT_TABLE = (c: string | undefined) => c !== undefined && c !== 'mbr' && c !== 'gpt';

/** A file system, swap, LUKS or LVM PV spanning the whole disk: one volume, id "". */
export const wholeDiskDriver: TableDriver = {
  level: 'table',
  kind: 'whole',
  probe: async (ctx) => FS_NOT_TABLE(await ctx.content()),
  async open(ctx) {
    const { disk } = ctx;
    const content = await ctx.content();
    return {
      volumes: [{ id: '', scheme: 'whole', type: 'whole disk', start: 0, size: disk.size, source: disk, content }],
    };
  },
};

/**
 * The volume drivers, in the order discovery tries them: the table drivers on the disk (the
 * first whose probe says yes wins: GPT, then a file system on the whole disk, then MBR), then
 * each stack driver over the volumes found. A new scheme (a BSD disklabel, LUKS detection)
 * is one more entry here.
 */
export const VOLUME_DRIVERS: readonly VolumeDriver[] = [gptDriver, wholeDiskDriver, mbrDriver, lvmDriver];

/**
 * Find every volume on a disk, with the drivers of VOLUME_DRIVERS (or `opts.drivers`):
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
  const sectorSize = opts.sectorSize ?? (await gptSectorSize(disk, protective)) ?? 512;
  let content: Promise<string | undefined> | undefined;
  const ctx: DiskContext = {
    disk,
    sector0,
    mbrLike,
    protective,
    sectorSize,
    warnings,
    content: () => (content ??= probeContent(disk)),
  };

  const drivers = opts.drivers ?? VOLUME_DRIVERS;
  const tables = drivers.filter((d): d is TableDriver => d.level === 'table');
  for (const driver of tables) {
    if (!(await driver.probe(ctx))) continue;
    const read = await driver.open(ctx);
    const id = 'diskId' in read ? { diskId: read.diskId } : {};
    return finish(disk, drivers, { scheme: driver.kind, sectorSize, ...id, volumes: read.volumes, warnings });
  }
  warnings.push('no partition table, volume manager or file system recognized');
  return { scheme: 'none', sectorSize, volumes: [], warnings };
}

/** Overlap warnings, each volume's content (unless its driver knew it), then the stack drivers. */
async function finish(
  disk: ByteSource,
  drivers: readonly VolumeDriver[],
  result: DiscoverResult,
): Promise<DiscoverResult> {
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
  for (const v of volumes) {
    if (v.content !== undefined || v.flags?.includes('extended') || v.size === 0) continue;
    v.content = await probeContent(v.source);
  }
  for (const driver of drivers) {
    if (driver.level !== 'stack') continue;
    const members = volumes.filter((v) => (driver as StackDriver).probe(v));
    if (members.length > 0) volumes.push(...(await driver.open(members, { disk, warnings })));
  }
  return result;
}
