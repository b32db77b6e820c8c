import { StrataError } from '../util/errors.js';
import type { Volume } from './types.js';

/** How the CLI names a volume: `--part 2`, `--lv vg0/root`, or neither (the whole disk / the only volume). */
export interface VolumeAddress {
  part?: string;
  lv?: string;
}

const show = (v: Volume) => (v.id === '' ? '(whole disk)' : v.id);

function listIds(volumes: Volume[]): string {
  if (volumes.length === 0) return 'none';
  return volumes.map((v) => `${show(v)}${v.content ? ` [${v.content}]` : v.type ? ` [${v.type}]` : ''}`).join(', ');
}

/**
 * Select one volume exactly by id. `part` matches partitions (and the whole-disk volume
 * with ''), `lv` matches "VG/LV" ids of logical volumes. With neither, the whole-disk volume
 * (id '') is returned when there is one, or the only volume when there is exactly one.
 * Anything else throws USAGE listing the ids that exist.
 */
export function findVolume(volumes: Volume[], address: VolumeAddress): Volume {
  if (address.part !== undefined && address.lv !== undefined) {
    throw new StrataError('USAGE', 'give either a partition or a logical volume, not both');
  }
  if (address.lv !== undefined) {
    const want = address.lv.replace(/^\/+|\/+$/g, '');
    const lvs = volumes.filter((v) => v.scheme === 'lvm');
    const hit = lvs.find((v) => v.id === want);
    if (hit) return hit;
    throw new StrataError(
      'USAGE',
      `no logical volume '${address.lv}' (available: ${lvs.length ? lvs.map(show).join(', ') : 'none'})`,
    );
  }
  if (address.part !== undefined) {
    const want = address.part.trim();
    const parts = volumes.filter((v) => v.scheme !== 'lvm');
    const hit = parts.find((v) => v.id === want);
    if (hit) return hit;
    throw new StrataError('USAGE', `no partition '${address.part}' (available: ${listIds(parts)})`);
  }
  const whole = volumes.find((v) => v.id === '');
  if (whole) return whole;
  if (volumes.length === 1) return volumes[0];
  throw new StrataError(
    'USAGE',
    `the disk holds ${volumes.length} volumes; choose one with --part or --lv (available: ${listIds(volumes)})`,
  );
}
