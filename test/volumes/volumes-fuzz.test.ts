import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import { type ByteSource, clampRead } from '../../src/io/byte-source.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { StrataError } from '../../src/util/errors.js';
import { discoverVolumes } from '../../src/volumes/discover.js';
import { lvmCrc, parseVgMetadata } from '../../src/volumes/lvm.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { gptDisk, lvmDisk, lvmWrapDisk, mbrDisk, twoPvDisk } from '../helpers/volume-images.js';

/** Discover, then read the head and tail of every volume (LVs included): all must end cleanly. */
async function exercise(src: ByteSource, notes: string[]): Promise<void> {
  let r: Awaited<ReturnType<typeof discoverVolumes>>;
  try {
    r = await discoverVolumes(src);
  } catch (e) {
    if (e instanceof StrataError) notes.push(e.message);
    throw e;
  }
  notes.push(...r.warnings);
  for (const v of r.volumes) {
    for (const at of [0, Math.max(0, v.size - 4096)]) {
      try {
        await v.source.read(at, Math.min(4096, v.size));
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
      }
    }
  }
}

async function runCases(
  base: Uint8Array,
  regions: Array<[number, number]>,
  seeds: number[],
  label: string,
  fix?: (b: CowImage) => void,
): Promise<string[]> {
  const failures: string[] = [];
  const notes: string[] = [];
  for (const seed of seeds) {
    const rand = prng(seed);
    const m = mutateFast(base, regions, rand, `${label}#${seed}`);
    if (fix) fix(m);
    const f = await expectCleanOutcome(() => exercise(m, notes), 5000);
    if (f) failures.push(`${label} seed ${seed}: ${f}`);
  }
  // With checksums fixed up, mutations must get past the checksum checks into the parsers.
  if (fix && !notes.some((n) => !/CRC|checksum/.test(n))) {
    failures.push(`${label}: every case stopped at a checksum, the fix-up does not work`);
  }
  return failures;
}

/**
 * `mutate` from the shared fuzz helper, applied to a compact copy of just the regions (plus the
 * 8 bytes a field smash may spill past a region), then laid over the image copy-on-write:
 * same mutations and truncation, without copying 64 MiB per case.
 */
function mutateFast(base: Uint8Array, regions: Array<[number, number]>, rand: () => number, name: string): CowImage {
  const padded = regions
    .map(([s, e]): [number, number] => [Math.min(s, base.length), Math.min(base.length, e + 8)])
    .sort((a, b) => a[0] - b[0]);
  const spans: Array<[number, number]> = [];
  for (const [s, e] of padded) {
    const last = spans[spans.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else spans.push([s, e]);
  }
  const at: number[] = [];
  let n = 0;
  for (const [s, e] of spans) {
    at.push(n);
    n += e - s;
  }
  const compact = new Uint8Array(n);
  spans.forEach(([s, e], i) => {
    compact.set(base.subarray(s, e), at[i]);
  });
  const toCompact = (x: number) => {
    const i = spans.findIndex(([s, e]) => x >= s && x <= e);
    return at[i] + (x - spans[i][0]);
  };
  const cRegions = regions.map(([s, e]): [number, number] => {
    const cs = toCompact(Math.min(s, base.length));
    return [cs, cs + Math.max(0, Math.min(e, base.length) - Math.min(s, base.length))];
  });
  const m = mutate(compact, cRegions, rand);
  const img = new CowImage(base, name);
  spans.forEach(([s, e], i) => {
    const from = at[i];
    if (from >= m.length) {
      img.size = Math.min(img.size, s);
      return;
    }
    const got = m.subarray(from, Math.min(from + (e - s), m.length));
    img.window(s, got.length).set(got);
    if (got.length < e - s) img.size = Math.min(img.size, s + got.length);
  });
  return img;
}

/**
 * The base image with copy-on-write patches: `window` hands out live, writable bytes of any
 * range (copied from the base on first use), reads see the patches, `size` may shrink.
 */
class CowImage implements ByteSource {
  private chunks: Array<{ start: number; bytes: Uint8Array }> = [];
  size: number;
  constructor(
    private readonly base: Uint8Array,
    readonly name: string,
  ) {
    this.size = base.length;
  }
  window(offset: number, length: number): Uint8Array {
    const o = Math.max(0, Math.min(offset, this.base.length));
    const end = Math.max(o, Math.min(offset + length, this.base.length));
    const inside = this.chunks.find((c) => c.start <= o && end <= c.start + c.bytes.length);
    if (inside) return inside.bytes.subarray(o - inside.start, end - inside.start);
    const touching = this.chunks.filter((c) => c.start <= end && o <= c.start + c.bytes.length);
    const s = Math.min(o, ...touching.map((c) => c.start));
    const e = Math.max(end, ...touching.map((c) => c.start + c.bytes.length));
    const bytes = this.base.slice(s, e);
    for (const c of touching) bytes.set(c.bytes, c.start - s);
    this.chunks = this.chunks.filter((c) => !touching.includes(c));
    this.chunks.push({ start: s, bytes });
    return bytes.subarray(o - s, end - s);
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    const out = this.base.slice(offset, offset + n);
    for (const c of this.chunks) {
      const a = Math.max(offset, c.start);
      const b = Math.min(offset + n, c.start + c.bytes.length);
      if (a < b) out.set(c.bytes.subarray(a - c.start, b - c.start), a - offset);
    }
    return out;
  }
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

const dvOf = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Recompute the primary GPT CRCs (entries, then header) so mutations reach the entry parser. */
function fixGptCrcs(img: CowImage): void {
  if (img.size < 1024 + 16384) return;
  const h = img.window(512, 512);
  const dv = dvOf(h);
  const hs = dv.getUint32(12, true);
  const lba = Number(dv.getBigUint64(72, true));
  const bytes = dv.getUint32(80, true) * dv.getUint32(84, true);
  if (lba * 512 + bytes <= img.size && bytes <= 1 << 20) {
    dv.setUint32(88, crc32(img.window(lba * 512, bytes)) >>> 0, true);
  }
  if (hs >= 92 && hs <= 512) {
    dv.setUint32(16, 0, true);
    dv.setUint32(16, crc32(h.subarray(0, hs)) >>> 0, true);
  }
}

/** Recompute an LVM label CRC, metadata-area header CRC and text checksum (non-wrapping text) at `pv`. */
function fixLvmCrcs(img: CowImage, pv: number): void {
  if (img.size < pv + 8192) return;
  const label = img.window(pv + 512, 512);
  dvOf(label).setUint32(16, lvmCrc(label.subarray(20)), true);
  const mda = img.window(pv + 4096, 512);
  const dv = dvOf(mda);
  const off = Number(dv.getBigUint64(40, true));
  const len = Number(dv.getBigUint64(48, true));
  const size = Number(dv.getBigUint64(32, true));
  if (off + len <= size && pv + 4096 + off + len <= img.size && len < 1 << 20) {
    dv.setUint32(56, lvmCrc(img.window(pv + 4096 + off, len)), true);
  }
  dv.setUint32(0, lvmCrc(mda.subarray(4)), true);
}

/** Where the committed metadata text of the PV at `pv` lies (from its area header). */
function textRegion(b: Uint8Array, pv: number): [number, number] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const mda = pv + 4096;
  const off = Number(dv.getBigUint64(mda + 40, true));
  const len = Number(dv.getBigUint64(mda + 48, true));
  return [mda + off, mda + off + len];
}

test('fuzz: mutated GPT headers, entries, protective MBR and nested LVM end cleanly', async () => {
  const { disk, oracle } = await gptDisk();
  const base = new Uint8Array(readFileSync(disk));
  const p4 = Object.values(oracle.devices)[0].offset;
  const end = base.length;
  const regions: Array<[number, number]> = [
    [0, 512],
    [512, 604],
    [1024, 1024 + 5 * 128],
    [end - 512, end - 420],
    [end - 512 - 16384, end - 512 - 16384 + 640],
  ];
  const failures = [
    ...(await runCases(base, regions, range(1, 60), 'gpt')),
    ...(await runCases(
      base,
      [
        [512, 604],
        [1024, 1024 + 5 * 128],
      ],
      range(1001, 60),
      'gpt-crc-fixed',
      fixGptCrcs,
    )),
    ...(await runCases(
      base,
      [
        [p4 + 512, p4 + 1024],
        [p4 + 4096, p4 + 4096 + 64],
      ],
      range(2001, 30),
      'gpt-lvm',
    )),
    ...(await runCases(base, [textRegion(base, p4)], range(3001, 40), 'gpt-lvm-text', (b) => fixLvmCrcs(b, p4))),
  ];
  assert.deepEqual(failures, []);
});

test('fuzz: mutated MBR and EBR chain end cleanly', async () => {
  const { disk } = await mbrDisk();
  const base = new Uint8Array(readFileSync(disk));
  const dv = new DataView(base.buffer);
  // EBR sectors, found by following the chain by hand.
  const ext = dv.getUint32(446 + 3 * 16 + 8, true);
  const ebrs: Array<[number, number]> = [];
  for (let lba = ext, i = 0; i < 8; i++) {
    ebrs.push([lba * 512 + 446, lba * 512 + 512]);
    const link = dv.getUint32(lba * 512 + 446 + 16 + 8, true);
    if (link === 0) break;
    lba = ext + link;
  }
  const failures = [
    ...(await runCases(base, [[446, 512]], range(1, 60), 'mbr')),
    ...(await runCases(base, ebrs, range(101, 60), 'ebr')),
  ];
  assert.deepEqual(failures, []);
});

test('fuzz: mutated LVM labels, metadata area headers and metadata text end cleanly', async () => {
  const whole = new Uint8Array(readFileSync((await lvmDisk()).disk));
  const wrap = new Uint8Array(readFileSync((await lvmWrapDisk()).disk));
  const two = await twoPvDisk();
  const twoBytes = new Uint8Array(readFileSync(two.disk));
  const pvs = Object.values(two.oracle.devices).map((d) => d.offset);
  const failures = [
    ...(await runCases(
      whole,
      [
        [512, 1024],
        [4096, 4096 + 64],
      ],
      range(1, 40),
      'lvm-label',
    )),
    ...(await runCases(whole, [textRegion(whole, 0)], range(101, 60), 'lvm-text', (b) => fixLvmCrcs(b, 0))),
    ...(await runCases(wrap, [[4096, 4096 + 64], textRegion(wrap, 0)], range(201, 20), 'lvm-wrap')),
    ...(await runCases(
      twoBytes,
      pvs.map((o): [number, number] => textRegion(twoBytes, o)),
      range(301, 30),
      'lvm-2pv-text',
      (b) => {
        for (const o of pvs) fixLvmCrcs(b, o);
      },
    )),
  ];
  assert.deepEqual(failures, []);
});

test('fuzz: the VG interpreter on mutated metadata text throws only StrataError', async () => {
  const whole = new Uint8Array(readFileSync((await lvmDisk()).disk));
  const [s, e] = textRegion(whole, 0);
  const text = whole.slice(s, e);
  const failures: string[] = [];
  for (const seed of range(5001, 200)) {
    const m = mutate(text, [[0, text.length]], prng(seed));
    const f = await expectCleanOutcome(async () => parseVgMetadata(new TextDecoder().decode(m)), 5000);
    if (f) failures.push(`seed ${seed}: ${f}`);
  }
  assert.deepEqual(failures, []);
});

test('crafted extremes: 16384 overlapping GPT entries, 200 chained EBRs, an oversized entry array', async () => {
  // A protective MBR, a GPT header at LBA 1 and 16384 used, overlapping 128-byte entries.
  const size = 4 * 1024 * 1024;
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  b[510] = 0x55;
  b[511] = 0xaa;
  b[446 + 4] = 0xee;
  dv.setUint32(446 + 8, 1, true);
  dv.setUint32(446 + 12, size / 512 - 1, true);
  const count = 16384;
  const linuxFs = [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4];
  for (let i = 0; i < count; i++) {
    const e = 1024 + i * 128;
    b.set(linuxFs, e);
    dv.setUint32(e + 16, i + 1, true);
    dv.setBigUint64(e + 32, 40n + BigInt(i % 7), true);
    dv.setBigUint64(e + 40, 4000n, true);
  }
  const h = 512;
  b.set(Buffer.from('EFI PART'), h);
  dv.setUint32(h + 8, 0x10000, true);
  dv.setUint32(h + 12, 92, true);
  dv.setBigUint64(h + 24, 1n, true);
  dv.setBigUint64(h + 32, BigInt(size / 512 - 1), true);
  dv.setBigUint64(h + 40, 34n + BigInt((count * 128) / 512), true);
  dv.setBigUint64(h + 48, BigInt(size / 512 - 34), true);
  dv.setBigUint64(h + 72, 2n, true);
  dv.setUint32(h + 80, count, true);
  dv.setUint32(h + 84, 128, true);
  const sign = () => {
    dv.setUint32(h + 88, crc32(b.subarray(1024, 1024 + count * 128)) >>> 0, true);
    dv.setUint32(h + 16, 0, true);
    dv.setUint32(h + 16, crc32(b.subarray(h, h + 92)) >>> 0, true);
  };
  sign();
  let outcome: unknown;
  const f = await expectCleanOutcome(async () => {
    outcome = await discoverVolumes(new MemorySource(b, 'many-entries'));
  }, 5000);
  assert.equal(f, null);
  const r = outcome as Awaited<ReturnType<typeof discoverVolumes>>;
  assert.equal(r.volumes.length, count);
  assert.ok(r.warnings.some((w) => /more overlapping partition pairs/.test(w)));
  assert.ok(r.warnings.length < 100, `warnings stay bounded (${r.warnings.length})`);

  // One entry more than the cap: the header is refused (and there is no backup).
  dv.setUint32(h + 80, count + 1, true);
  sign();
  await assert.rejects(
    discoverVolumes(new MemorySource(b, 'too-many')),
    (e: unknown) => e instanceof StrataError && e.code === 'CORRUPT' && /exceed the limit/.test(e.message),
  );

  // 200 logical partitions chained by EBRs: at most 128 are listed, with a warning.
  const m = new Uint8Array(size);
  const mv = new DataView(m.buffer);
  m[510] = 0x55;
  m[511] = 0xaa;
  m[446 + 4] = 0x05;
  mv.setUint32(446 + 8, 2048, true);
  mv.setUint32(446 + 12, size / 512 - 2048, true);
  for (let i = 0; i < 200; i++) {
    const ebr = (2048 + i * 16) * 512;
    m[ebr + 510] = 0x55;
    m[ebr + 511] = 0xaa;
    m[ebr + 446 + 4] = 0x83;
    mv.setUint32(ebr + 446 + 8, 1, true);
    mv.setUint32(ebr + 446 + 12, 15, true);
    if (i < 199) {
      m[ebr + 446 + 16 + 4] = 0x05;
      mv.setUint32(ebr + 446 + 16 + 8, (i + 1) * 16, true);
      mv.setUint32(ebr + 446 + 16 + 12, 16, true);
    }
  }
  const r2 = await discoverVolumes(new MemorySource(m, 'many-logicals'));
  assert.equal(r2.volumes.filter((v) => v.flags?.includes('logical')).length, 128);
  assert.ok(
    r2.warnings.some((w) => /more than 128 logical partitions/.test(w)),
    JSON.stringify(r2.warnings),
  );
});
