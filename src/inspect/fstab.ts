import type { Volume } from '../volumes/types.js';

export interface FstabEntry {
  device: string;
  point: string;
  fstype: string;
  options: string;
}

const decodeOctal = (s: string) =>
  s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));

/** /etc/fstab lines (fs_spec fs_file fs_vfstype fs_mntops ...), with \040-style escapes decoded. */
export function parseFstab(text: string, warn: (m: string) => void = () => {}): FstabEntry[] {
  const out: FstabEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && out.length < 10_000; i++) {
    const l = lines[i].trim();
    if (l === '' || l.startsWith('#')) continue;
    const f = l.split(/\s+/);
    if (f.length < 2) {
      warn(`/etc/fstab line ${i + 1}: fewer than two fields, skipped`);
      continue;
    }
    out.push({ device: decodeOctal(f[0]), point: decodeOctal(f[1]), fstype: f[2] ?? '', options: f[3] ?? '' });
  }
  return out;
}

/** What the matcher knows of each volume holding a file system. */
export interface VolumeFacts {
  volume: Volume;
  fsUuid?: string;
  fsLabel?: string;
}

const norm = (s: string | undefined) => (s ?? '').toLowerCase().replace(/^"|"$/g, '');

/**
 * The volume an fstab device names: UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/disk/by-*,
 * /dev/VG/LV and /dev/mapper/VG-LV, or a partition of the first disk (/dev/sda2, /dev/vda2,
 * /dev/hda2, /dev/xvda2, /dev/nvme0n1p2, /dev/mmcblk0p2) by its number.
 */
export function matchDevice(device: string, vols: VolumeFacts[]): Volume | undefined {
  let spec = device;
  const byId = /^\/dev\/disk\/by-(uuid|label|partuuid|partlabel)\/(.+)$/.exec(spec);
  if (byId) spec = `${byId[1].toUpperCase()}=${byId[2]}`;
  const kv = /^(UUID|LABEL|PARTUUID|PARTLABEL)=(.*)$/i.exec(spec);
  if (kv) {
    const key = kv[1].toUpperCase();
    const want = norm(kv[2]);
    const hit = vols.find((v) => {
      if (key === 'UUID') return norm(v.fsUuid) === want;
      if (key === 'LABEL') return v.fsLabel !== undefined && v.fsLabel === kv[2].replace(/^"|"$/g, '');
      if (key === 'PARTUUID') return v.volume.scheme === 'gpt' && norm(v.volume.uuid) === want;
      return v.volume.scheme === 'gpt' && v.volume.name === kv[2];
    });
    return hit?.volume;
  }
  const lvm = /^\/dev\/mapper\/((?:[^-]|--)+)-((?:[^-]|--)+)$/.exec(spec);
  if (lvm) {
    const id = `${lvm[1].replace(/--/g, '-')}/${lvm[2].replace(/--/g, '-')}`;
    return vols.find((v) => v.volume.scheme === 'lvm' && v.volume.id === id)?.volume;
  }
  const vglv = /^\/dev\/([^/]+)\/([^/]+)$/.exec(spec);
  if (vglv) {
    const hit = vols.find((v) => v.volume.scheme === 'lvm' && v.volume.id === `${vglv[1]}/${vglv[2]}`);
    if (hit) return hit.volume;
  }
  const part = /^\/dev\/(?:(?:[shvx]|xv)da|nvme0n1p|mmcblk0p)(\d+)$/.exec(spec);
  if (part) return vols.find((v) => v.volume.scheme !== 'lvm' && v.volume.id === part[1])?.volume;
  if (/^\/dev\/(?:[shv]|xv)da$/.test(spec)) return vols.find((v) => v.volume.id === '')?.volume;
  return undefined;
}
