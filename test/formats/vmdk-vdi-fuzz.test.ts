import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage, openImageSource } from '../../src/formats/open.js';
import type { DiskImage } from '../../src/formats/types.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { fixture, run, scratch } from '../helpers/tools.js';

/**
 * Mutated real images (made by qemu-img from a pattern disk): every case must open and read
 * the whole virtual disk, or fail with a StrataError, within 5 s. Mutations aim at the
 * structures a reader trusts: sparse headers, embedded and text descriptors, grain
 * directories and tables, stream markers and footers, vdi headers and block maps.
 */

const MiB = 1024 * 1024;
const SIZE = 2 * MiB + 5 * 512;
/** Mutations may claim huge disks: read at most this much of the start (and the last MiB). */
const READ_CAP = 32 * MiB;

type Region = [number, number];

async function sourceRaw(): Promise<string> {
  return fixture(`fuzz-vmdk-vdi-src-${SIZE}-s3.raw`, async (out) => writePatternDisk(out, SIZE, 3));
}

/** A directory fixture with `name` made by `qemu-img convert` from the source raw. */
async function made(name: string, format: string, opts: string[]): Promise<string> {
  const raw = await sourceRaw();
  const dir = await fixture(`fuzz-${name}-v1`, async (out) => {
    mkdirSync(out);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', format, ...opts, raw, name], { cwd: out });
  });
  return path.join(dir, name);
}

/** Regions of a sparse extent worth mutating, found from its own header (spec layout). */
function sparseRegions(b: Buffer): Region[] {
  const regions: Region[] = [[0, 512]];
  const sec = (at: number) => Number(b.readBigUInt64LE(at));
  const descOff = sec(28);
  const descSize = sec(36);
  if (descOff > 0) regions.push([descOff * 512, descOff * 512 + Math.min(descSize * 512, 1024)]);
  const gtes = b.readUInt32LE(44);
  for (const at of [48, 56]) {
    const gd = sec(at);
    if (gd > 0 && gd * 512 < b.length) {
      regions.push([gd * 512, gd * 512 + 64]);
      const gt = b.readUInt32LE(gd * 512);
      if (gt > 0 && gt * 512 < b.length) regions.push([gt * 512, gt * 512 + gtes * 4]);
    }
  }
  const overhead = sec(64);
  if (overhead > 0 && overhead * 512 + 600 < b.length) regions.push([overhead * 512, overhead * 512 + 600]);
  return regions;
}

function vdiRegions(b: Buffer): Region[] {
  const bmap = b.readUInt32LE(0x154);
  const blocks = b.readUInt32LE(0x180);
  return [
    [0x40, 0x1d8],
    [0x154, 0x188],
    [bmap, bmap + blocks * 4],
  ];
}

/** The VMware layout of a stream-optimized file: GD_AT_END in the header, footer at the end. */
function gdAtEnd(b: Buffer): Buffer {
  const header = Buffer.from(b.subarray(0, 512));
  const first = Buffer.from(header);
  first.writeBigUInt64LE(0xffffffffffffffffn, 56);
  const marker = Buffer.alloc(512);
  marker.writeUInt32LE(3, 12);
  return Buffer.concat([first, b.subarray(512), marker, header, Buffer.alloc(512)]);
}

async function readAll(img: DiskImage): Promise<void> {
  const end = Math.min(img.size, READ_CAP);
  for (let off = 0; off < end; off += 4 * MiB) await img.read(off, Math.min(4 * MiB, end - off));
  if (img.size > READ_CAP) await img.read(img.size - MiB, MiB);
  if (img.readInto) await img.readInto(Math.max(0, img.size - 3 * MiB), new Uint8Array(3 * MiB + 7));
  // Shared memory (as convert's pool uses): compressed grains inflate in worker threads.
  if (img.readInto) await img.readInto(0, new Uint8Array(new SharedArrayBuffer(Math.min(img.size, 4 * MiB) + 7)));
  await img.status(0, Math.min(img.size, 2 * READ_CAP));
}

interface Tally {
  ok: number;
  refused: number;
  failures: string[];
}

async function runCase(tally: Tally, label: string, attempt: () => Promise<DiskImage>): Promise<void> {
  const failure = await expectCleanOutcome(async () => {
    let img: DiskImage | undefined;
    try {
      img = await attempt();
      await readAll(img);
      tally.ok++;
    } catch (e) {
      if (e instanceof StrataError) tally.refused++;
      throw e;
    } finally {
      if (img) await closeChain(img).catch(() => {});
    }
  }, 5000);
  if (failure) tally.failures.push(`${label}: ${failure}`);
}

async function memoryCases(
  tally: Tally,
  name: string,
  bytes: Buffer,
  regions: Region[],
  count: number,
  seed0: number,
  format: string,
): Promise<void> {
  for (let i = 0; i < count; i++) {
    const seed = seed0 + i;
    const m = mutate(bytes, regions, prng(seed));
    // Half by content detection (the probe sees mutated magic too), half forced.
    const opts = i % 2 === 0 ? {} : { format };
    await runCase(tally, `${name} seed ${seed}`, () => openImageSource(new MemorySource(m, `${name}#${seed}`), opts));
  }
}

test('vmdk and vdi fuzz: >= 300 mutated real images read cleanly or fail with StrataError', async (t) => {
  const tally: Tally = { ok: 0, refused: 0, failures: [] };
  let cases = 0;

  const sparse = readFileSync(await made('sparse.vmdk', 'vmdk', ['-o', 'subformat=monolithicSparse']));
  await memoryCases(tally, 'monolithicSparse', sparse, sparseRegions(sparse), 70, 1000, 'vmdk');
  cases += 70;

  const stream = readFileSync(await made('stream.vmdk', 'vmdk', ['-o', 'subformat=streamOptimized']));
  await memoryCases(tally, 'streamOptimized', stream, sparseRegions(stream), 60, 2000, 'vmdk');
  cases += 60;

  const footer = gdAtEnd(stream);
  await memoryCases(
    tally,
    'streamOptimized GD_AT_END',
    footer,
    [
      [0, 512],
      [footer.length - 1536, footer.length],
    ],
    30,
    3000,
    'vmdk',
  );
  cases += 30;

  const dyn = readFileSync(await made('dynamic.vdi', 'vdi', []));
  await memoryCases(tally, 'vdi dynamic', dyn, vdiRegions(dyn), 50, 4000, 'vdi');
  cases += 50;

  const stat = readFileSync(await made('static.vdi', 'vdi', ['-o', 'static=on']));
  await memoryCases(tally, 'vdi static', stat, vdiRegions(stat), 30, 5000, 'vdi');
  cases += 30;

  // Text descriptors with their extent files beside them: mutate the descriptor (and, for
  // the split sparse disk, the sparse extent file) and open from disk.
  for (const [sub, seed0, n] of [
    ['monolithicFlat', 6000, 30],
    ['twoGbMaxExtentSparse', 7000, 30],
  ] as const) {
    const desc = await made(`${sub}.vmdk`, 'vmdk', ['-o', `subformat=${sub}`]);
    const srcDir = path.dirname(desc);
    const text = readFileSync(desc);
    const extentNames = [...text.toString('latin1').matchAll(/"([^"]+\.vmdk)"/g)].map((m) => m[1]);
    assert.ok(extentNames.length > 0, `${sub} names its extents`);
    const dir = scratch(`fuzz-${sub}`);
    for (const e of extentNames) copyFileSync(path.join(srcDir, e), path.join(dir, e));
    for (let i = 0; i < n; i++) {
      const seed = seed0 + i;
      const f = path.join(dir, `case-${seed}.vmdk`);
      writeFileSync(f, mutate(text, [[0, text.length]], prng(seed)));
      await runCase(tally, `${sub} descriptor seed ${seed}`, () => openImage(f, i % 2 === 0 ? {} : { format: 'vmdk' }));
    }
    cases += n;
    if (sub === 'twoGbMaxExtentSparse') {
      const extent = readFileSync(path.join(srcDir, extentNames[0]));
      const regions = sparseRegions(extent);
      const caseDir = scratch('fuzz-split-extent');
      copyFileSync(desc, path.join(caseDir, 'disk.vmdk'));
      for (let i = 0; i < 40; i++) {
        const seed = 8000 + i;
        writeFileSync(path.join(caseDir, extentNames[0]), mutate(extent, regions, prng(seed)));
        await runCase(tally, `${sub} extent seed ${seed}`, () => openImage(path.join(caseDir, 'disk.vmdk')));
      }
      cases += 40;
    }
  }

  t.diagnostic(`${cases} cases: ${tally.ok} read, ${tally.refused} refused with StrataError`);
  assert.ok(cases >= 300);
  assert.deepEqual(tally.failures.slice(0, 10), [], `${tally.failures.length} unclean outcomes`);
  // The mutations must bite: some images still read, some are refused.
  assert.ok(tally.ok > 0 && tally.refused > 0, `ok ${tally.ok}, refused ${tally.refused}`);
});
