import { chain, resolvedStatus } from '../formats/layer.js';
import type { DiskImage } from '../formats/types.js';
import type { Extent } from '../io/byte-source.js';
import { discoverVolumes } from '../volumes/discover.js';

export interface ImageInfo {
  path: string;
  format: string;
  subformat?: string;
  virtualSize: number;
  fileSize: number;
  clusterSize?: number;
  /** Each backing link below this image, top first. */
  backing: Array<{ path: string; format: string; recordedPath?: string }>;
  /** Bytes this layer stores data for. */
  allocatedBytes: number;
  /** Bytes this layer marks as zero. */
  zeroBytes: number;
  warnings: string[];
  details?: Record<string, unknown>;
}

const STEP = 1 << 30;

/** Walk a layer's own status in bounded steps (a 64 PiB disk must not build one huge array). */
export async function* layerStatus(img: DiskImage): AsyncGenerator<Extent> {
  for (let off = 0; off < img.size; off += STEP) {
    yield* await img.status(off, Math.min(STEP, img.size - off));
  }
}

/** The disk's ranges through the whole chain, as `qemu-img map` reports them (merged). */
export async function* mapImage(
  img: DiskImage,
): AsyncGenerator<{ start: number; length: number; data: boolean; zero: boolean }> {
  let pending: { start: number; length: number; data: boolean; zero: boolean } | undefined;
  for (let off = 0; off < img.size; off += STEP) {
    for (const e of await resolvedStatus(img, off, Math.min(STEP, img.size - off))) {
      const data = e.kind === 'data';
      if (pending && pending.data === data && pending.start + pending.length === e.offset) {
        pending.length += e.length;
        continue;
      }
      if (pending) yield pending;
      pending = { start: e.offset, length: e.length, data, zero: !data };
    }
  }
  if (pending) yield pending;
}

export async function imageInfo(img: DiskImage, path: string): Promise<ImageInfo> {
  let allocated = 0;
  let zero = 0;
  for await (const e of layerStatus(img)) {
    if (e.kind === 'data') allocated += e.length;
    else if (e.kind === 'zero') zero += e.length;
  }
  const backing = [...chain(img)].slice(1).map((l) => ({ path: l.name, format: l.format }));
  const info: ImageInfo = {
    path,
    format: img.format,
    subformat: img.subformat,
    virtualSize: img.size,
    fileSize: img.fileSize,
    clusterSize: img.clusterSize,
    backing,
    allocatedBytes: allocated,
    zeroBytes: zero,
    warnings: [...chain(img)].flatMap((l) => l.warnings.map((w) => (l === img ? w : `${l.name}: ${w}`))),
  };
  if (img.backingRef && !img.backing)
    info.backing = [
      { path: img.backingRef.path, format: img.backingRef.format ?? 'unknown', recordedPath: img.backingRef.path },
    ];
  const d = img.details?.();
  if (d) info.details = d;
  return info;
}

/** What the virtual disk holds, in one line, and whether anything was recognised at all. */
export interface ContentSummary {
  recognised: boolean;
  /** 'gpt' | 'mbr' | 'whole' | 'none' */
  scheme: string;
  /** e.g. "gpt: 2 partitions (vfat, ext4)", "ext4 on the whole disk". */
  summary: string;
}

/**
 * Look for a partition table, volume manager or file system on the disk (discoverVolumes).
 * Raw is every image's fallback format, so `info` of any file succeeds; this says whether
 * the bytes meant anything to Strata.
 */
export async function recognised(img: DiskImage): Promise<ContentSummary> {
  const found = img.size >= 512 ? await discoverVolumes(img) : { scheme: 'none', volumes: [] };
  if (found.scheme === 'none' || found.volumes.length === 0) {
    return {
      recognised: false,
      scheme: found.scheme,
      summary: `no partition table or file system recognised${img.format === 'raw' ? ' (read as raw bytes)' : ''}`,
    };
  }
  if (found.scheme === 'whole') {
    return { recognised: true, scheme: 'whole', summary: `${found.volumes[0].content ?? 'unknown'} on the whole disk` };
  }
  const parts = found.volumes.filter((v) => !v.flags?.includes('extended'));
  const kinds = parts.map((v) => v.content ?? 'unknown');
  return {
    recognised: true,
    scheme: found.scheme,
    summary: `${found.scheme}: ${parts.length} volume${parts.length === 1 ? '' : 's'} (${kinds.join(', ')})`,
  };
}
