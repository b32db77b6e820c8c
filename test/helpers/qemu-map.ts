import * as path from 'node:path';
import type { DiskImage } from '../../src/formats/types.js';
import { mapImage } from '../../src/library/image-info.js';
import { run } from './tools.js';

/** One merged range of a disk, in the shape `mapImage` (src/library/image-info.ts) yields. */
export interface MapRange {
  start: number;
  length: number;
  /** Some layer of the chain stores bytes here. */
  data: boolean;
  /** Reads as zeros without stored data (always `!data` after merging). */
  zero: boolean;
}

/** One entry of `qemu-img map --output=json`, as qemu prints it. */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  filename?: string;
}

export interface QemuMapOptions {
  /** Image format for `-f` (skips qemu's own probing; needed for raw images). */
  format?: string;
  /** Extra arguments placed before the file name (e.g. ['--image-opts']). */
  extraArgs?: string[];
  /** Working directory for qemu-img (qemu opens relative data-file names from the cwd). */
  cwd?: string;
}

/** Run `qemu-img map --output=json` and return its entries unchanged. */
export async function qemuMapRaw(file: string, opts: QemuMapOptions = {}): Promise<QemuMapEntry[]> {
  const args = ['map', '--output=json', '-U'];
  if (opts.format) args.push('-f', opts.format);
  // With a cwd, a relative name would be taken from there: resolve it from ours first.
  const target = opts.cwd && !/^[a-z]+:/i.test(file) ? path.resolve(file) : file;
  args.push(...(opts.extraArgs ?? []), target);
  const out = await run('qemu-img', args, { cwd: opts.cwd });
  const parsed = JSON.parse(out) as QemuMapEntry[];
  if (!Array.isArray(parsed))
    throw new Error(`qemu-img map printed something that is not a list: ${out.slice(0, 200)}`);
  return parsed;
}

/**
 * Merge ranges by whether they hold data, the way `mapImage` does: adjacent ranges with
 * the same `data` flag become one, and `zero` is set to `!data`. Throws when the ranges leave gaps or overlap, so a broken oracle cannot pass silently.
 */
export function mergeMap(entries: Iterable<{ start: number; length: number; data: boolean }>): MapRange[] {
  const out: MapRange[] = [];
  let expect: number | undefined;
  for (const e of entries) {
    if (e.length <= 0) continue;
    if (expect !== undefined && e.start !== expect) {
      throw new Error(`map ranges are not contiguous: expected start ${expect}, got ${e.start}`);
    }
    expect = e.start + e.length;
    const last = out[out.length - 1];
    if (last && last.data === e.data && last.start + last.length === e.start) last.length += e.length;
    else out.push({ start: e.start, length: e.length, data: e.data, zero: !e.data });
  }
  return out;
}

/**
 * `qemu-img map --output=json`, merged with `mergeMap`: the oracle for a disk's data/zero
 * layout. qemu reports `data:true, zero:true` where a format's data cluster or flat extent
 * lies over a hole of the host file (preallocation=metadata, sparse flat extents): those
 * bytes read as zeros and hold nothing, and Strata reports them as zero (it sees the host
 * file's holes with SEEK_HOLE), so they count as not data here.
 */
export async function qemuMap(file: string, opts: QemuMapOptions = {}): Promise<MapRange[]> {
  return mergeMap((await qemuMapRaw(file, opts)).map((e) => ({ ...e, data: e.data && !e.zero })));
}

/** Strata's own merged map of an opened image (through its whole backing chain). */
export async function strataMap(img: DiskImage): Promise<MapRange[]> {
  const all: MapRange[] = [];
  for await (const r of mapImage(img)) all.push({ ...r });
  return mergeMap(all);
}

/** Total bytes of the disk the map marks as data (handy for "is this map trivially empty?" checks). */
export function dataBytes(map: MapRange[]): number {
  let n = 0;
  for (const r of map) if (r.data) n += r.length;
  return n;
}

/** One merged range of what a single layer holds, like `DiskImage.status` reports it. */
export interface LayerRange {
  start: number;
  length: number;
  kind: 'data' | 'zero' | 'unallocated';
}

function mergeLayer(entries: Iterable<LayerRange>): LayerRange[] {
  const out: LayerRange[] = [];
  let expect: number | undefined;
  for (const e of entries) {
    if (e.length <= 0) continue;
    if (expect !== undefined && e.start !== expect) {
      throw new Error(`layer ranges are not contiguous: expected start ${expect}, got ${e.start}`);
    }
    expect = e.start + e.length;
    const last = out[out.length - 1];
    if (last && last.kind === e.kind) last.length += e.length;
    else out.push({ start: e.start, length: e.length, kind: e.kind });
  }
  return out;
}

/**
 * What the top layer itself holds, from `qemu-img map --output=json`: ranges qemu reports
 * `present` at depth 0 are `data` (or `zero` when they hold no data); everything else is
 * `unallocated` at this layer. Needs a qemu that prints `present` (>= 6.0).
 */
export async function qemuLayerMap(file: string, opts: QemuMapOptions = {}): Promise<LayerRange[]> {
  const raw = await qemuMapRaw(file, opts);
  if (raw.length > 0 && raw[0].present === undefined)
    throw new Error('qemu-img map does not report "present"; need qemu >= 6.0');
  return mergeLayer(
    raw.map((e) => ({
      start: e.start,
      length: e.length,
      kind: e.depth === 0 && e.present ? (e.data && !e.zero ? 'data' : 'zero') : 'unallocated',
    })),
  );
}

/** Strata's own status of one layer, merged the same way. */
export async function strataLayerMap(img: DiskImage): Promise<LayerRange[]> {
  const all: LayerRange[] = [];
  const step = 1 << 30;
  for (let off = 0; off < img.size; off += step) {
    for (const e of await img.status(off, Math.min(step, img.size - off))) {
      all.push({ start: e.offset, length: e.length, kind: e.kind });
    }
  }
  return mergeLayer(all);
}

/**
 * `qemu-img map --output=json` of an image with the holes of its host files cut out: qemu
 * looks into a qcow2's host file only when the image looks preallocated, so a data cluster
 * whose host range was punched out (qemu-img convert writes zero blocks inside a cluster as
 * holes) stays `data` in its map, while the bytes there read as zeros and Strata, which asks
 * the file (SEEK_HOLE), calls them zero. Both maps come from qemu-img: the image's (each
 * range with its layer `depth` and host `offset`) and each layer file's own as raw. Entries
 * are returned unmerged, in qemu's shape.
 */
export async function qemuMapHostHoles(file: string): Promise<QemuMapEntry[]> {
  const chain = JSON.parse(await run('qemu-img', ['info', '--output=json', '--backing-chain', '-U', file])) as Array<{
    filename: string;
  }>;
  const dir = path.dirname(path.resolve(file));
  const hostMaps = await Promise.all(chain.map((c) => qemuMapRaw(path.resolve(dir, c.filename), { format: 'raw' })));
  const out: QemuMapEntry[] = [];
  for (const e of await qemuMapRaw(file)) {
    if (!e.data || e.offset === undefined || !hostMaps[e.depth]) {
      out.push(e);
      continue;
    }
    for (const h of hostMaps[e.depth]) {
      const s = Math.max(e.offset, h.start);
      const t = Math.min(e.offset + e.length, h.start + h.length);
      if (t <= s) continue;
      const hole = !h.data;
      out.push({ ...e, start: e.start + (s - e.offset), length: t - s, offset: s, data: !hole, zero: hole || e.zero });
    }
  }
  return out;
}
