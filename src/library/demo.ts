import { createHash } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { closeChain } from '../formats/layer.js';
import { openImage, openImageSource } from '../formats/open.js';
import type { DiskImage } from '../formats/types.js';
import { MemorySource } from '../io/memory-source.js';
import { xorshift32 } from '../util/prng.js';
import { convertImage } from './convert/convert.js';
import { type ImageInfo, imageInfo, mapImage } from './image-info.js';

export interface DemoStep {
  name: string;
  file: string;
  info: ImageInfo;
  mapRanges: number;
  dataBytes: number;
  sha256: string;
  matchesSource: boolean;
  convertMs: number;
}

export interface DemoResult {
  dir: string;
  virtualSize: number;
  sourceSha256: string;
  steps: DemoStep[];
}

/**
 * A disk with the shapes real images have: random data, long zero runs, repeated text,
 * and data in the very last sector. Deterministic, so every run shows the same thing.
 */
export function demoDisk(size: number, seed = 7): Uint8Array {
  const disk = new Uint8Array(size);
  const rand = xorshift32(seed);
  const text = new TextEncoder().encode('Strata reads disk images as structured data. ');
  let pos = 0;
  while (pos < size) {
    const len = Math.min(size - pos, (1 + (rand() % 64)) * 4096);
    const kind = rand() % 3;
    if (kind === 0) {
      const h = createHash('sha256');
      for (let o = 0; o < len; o += 32) {
        const d = h.copy().update(`${pos}:${o}`).digest();
        disk.set(d.subarray(0, Math.min(32, len - o)), pos + o);
      }
    } else if (kind === 1) {
      for (let o = 0; o < len; o += text.length) disk.set(text.subarray(0, Math.min(text.length, len - o)), pos + o);
    }
    pos += len;
  }
  disk.set(new TextEncoder().encode('LAST-SECTOR'), size - 512);
  return disk;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function readAll(img: DiskImage): Promise<Uint8Array> {
  const out = new Uint8Array(img.size);
  for (let o = 0; o < img.size; o += 4 << 20) out.set(await img.read(o, Math.min(4 << 20, img.size - o)), o);
  return out;
}

/**
 * The foundation's main job: make a disk, write it with Strata's own writers as raw and
 * qcow2 (plain, zlib, zstd, and a child over a backing file), then open each by content
 * and show what `info` and `map` see and that every one reads back byte for byte.
 */
export async function runDemo(dir: string, size = 32 << 20): Promise<DemoResult> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const disk = demoDisk(size);
  const child = disk.slice();
  for (const at of [0, 5 << 20, size - (1 << 20)]) child.fill(0xc5, at, at + 65536);
  child.fill(0, 9 << 20, 10 << 20);
  const steps: DemoStep[] = [];

  const record = async (name: string, file: string, expect: Uint8Array, ms: number) => {
    const img = await openImage(file);
    try {
      const info = await imageInfo(img, path.relative(process.cwd(), file) || file);
      let ranges = 0;
      let data = 0;
      for await (const r of mapImage(img)) {
        ranges++;
        if (r.data) data += r.length;
      }
      const h = sha(await readAll(img));
      steps.push({
        name,
        file,
        info,
        mapRanges: ranges,
        dataBytes: data,
        sha256: h,
        matchesSource: h === sha(expect),
        convertMs: ms,
      });
    } finally {
      await closeChain(img);
    }
  };

  const timed = async (fn: () => Promise<unknown>) => {
    const t = performance.now();
    await fn();
    return Math.round(performance.now() - t);
  };

  const src = await openImageSource(new MemorySource(disk, 'demo disk'));
  const raw = path.join(dir, 'disk.raw');
  await record('raw (sparse)', raw, disk, await timed(() => convertImage(src, raw, { format: 'raw' })));
  const rawImg = await openImage(raw);
  try {
    for (const [name, file, compression] of [
      ['qcow2', 'disk.qcow2', undefined],
      ['qcow2 + zlib', 'disk-zlib.qcow2', 'zlib'],
      ['qcow2 + zstd', 'disk-zstd.qcow2', 'zstd'],
    ] as const) {
      const out = path.join(dir, file);
      await record(name, out, disk, await timed(() => convertImage(rawImg, out, { format: 'qcow2', compression })));
    }
  } finally {
    await rawImg.close();
  }
  const base = await openImage(path.join(dir, 'disk.qcow2'));
  try {
    const mod = await openImageSource(new MemorySource(child, 'modified disk'));
    const out = path.join(dir, 'child.qcow2');
    const ms = await timed(() =>
      convertImage(mod, out, { format: 'qcow2', backing: { path: 'disk.qcow2', format: 'qcow2', image: base } }),
    );
    await record('qcow2 child over disk.qcow2', out, child, ms);
  } finally {
    await base.close();
  }
  return { dir, virtualSize: size, sourceSha256: sha(disk), steps };
}
