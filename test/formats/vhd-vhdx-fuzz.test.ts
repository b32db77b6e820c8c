import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage, openImageSource } from '../../src/formats/open.js';
import type { DiskImage } from '../../src/formats/types.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { fixture, run, scratch } from '../helpers/tools.js';
import { fixChecksum, writeVhdDiff } from '../helpers/vhd-writer.js';
import { fixCrc, writeVhdx } from '../helpers/vhdx-writer.js';

/*
 * Mutated real images (made by qemu-img, and differencing children made by our
 * spec-following writers) must open and read either cleanly or with a StrataError, each
 * within 5 s. Half of the cases re-seal the checksums (VHD sums, VHDX CRC-32C) after
 * mutating, so the parsers behind the checksum checks are reached too.
 */

const MiB = 1024 * 1024;
const KiB = 1024;

async function patternRaw(size: number, seed: number): Promise<string> {
  return fixture(`fuzz-vhd-pattern-${size}-${seed}-v2.raw`, async (out) => {
    writePatternDisk(out, size, seed);
    const fd = openSync(out, 'r+');
    try {
      writeSync(fd, Buffer.alloc(MiB), 0, MiB, MiB); // one block never written
    } finally {
      closeSync(fd);
    }
  });
}

async function qemuImage(raw: string, fmt: string, opts: string[], key: string): Promise<Buffer> {
  const f = await fixture(`fuzz-${key}-v1.${fmt}`, async (out) => {
    const args = ['convert', '-f', 'raw', '-O', fmt];
    for (const o of opts) args.push('-o', o);
    await run('qemu-img', [...args, raw, out]);
  });
  return readFileSync(f);
}

/**
 * Read the whole virtual disk when it is small; for a disk a mutation made huge, read its
 * first and last 4 MiB and a few ranges between, and walk its whole status (both bounded
 * by the BAT, which must fit in the small file).
 */
async function exercise(img: DiskImage): Promise<void> {
  const step = 4 * MiB;
  if (img.size <= 64 * MiB) {
    for (let off = 0; off < img.size; off += step) await img.read(off, Math.min(step, img.size - off));
  } else {
    for (const off of [0, Math.floor(img.size / 3), Math.floor(img.size / 2), img.size - step]) {
      await img.read(off, step);
    }
  }
  // readInto (convert's path) must fail as cleanly as read.
  if (img.readInto) await img.readInto(Math.max(0, img.size - 3 * MiB), new Uint8Array(3 * MiB + 7));
  const gib = 2 ** 30;
  let n = 0;
  for (let off = 0; off < img.size && n < 4096; off += gib, n++) await img.status(off, Math.min(gib, img.size - off));
  img.details?.();
}

async function fromMemory(bytes: Uint8Array, name: string, format: string): Promise<void> {
  const img = await openImageSource(new MemorySource(bytes, name), { format, noBacking: true });
  try {
    await exercise(img);
  } finally {
    await img.close();
  }
}

async function fromFile(file: string): Promise<void> {
  const img = await openImage(file);
  try {
    await exercise(img);
  } finally {
    await closeChain(img);
  }
}

/** Re-seal VHD checksums: footers at 0 and at the end, and the dynamic header at 512. */
function resealVhd(b: Uint8Array): void {
  if (b.length >= 512) fixChecksum(b.subarray(b.length - 512), 64);
  if (b.length >= 1536 && b[0] === 0x63) {
    fixChecksum(b.subarray(0, 512), 64);
    fixChecksum(b.subarray(512, 1536), 36);
  }
}

/** Re-seal VHDX CRC-32C of both headers and both region tables. */
function resealVhdx(b: Uint8Array): void {
  for (const [at, len] of [
    [64 * KiB, 4 * KiB],
    [128 * KiB, 4 * KiB],
    [192 * KiB, 64 * KiB],
    [256 * KiB, 64 * KiB],
  ]) {
    if (b.length >= at + len) fixCrc(b.subarray(at, at + len));
  }
}

/** Re-seal the CRC-32C of every plausible log entry in the 1 MiB log at 1 MiB. */
function resealLog(b: Uint8Array): void {
  for (let at = MiB; at + 64 <= Math.min(b.length, 2 * MiB); at += 4096) {
    if (b[at] !== 0x6c || b[at + 1] !== 0x6f || b[at + 2] !== 0x67 || b[at + 3] !== 0x65) continue; // "loge"
    const len = new DataView(b.buffer, b.byteOffset + at, 12).getUint32(8, true);
    if (len >= 4096 && len % 4096 === 0 && at + len <= Math.min(b.length, 2 * MiB)) fixCrc(b.subarray(at, at + len));
  }
}

interface Target {
  name: string;
  cases: number;
  bytes: Uint8Array;
  regions: Array<[number, number]>;
  reseal: (b: Uint8Array) => void;
  run: (b: Uint8Array, i: number) => Promise<void>;
}

test('fuzz: mutated vhd and vhdx images open and read cleanly or fail with StrataError', async () => {
  const raw = await patternRaw(4 * MiB, 7);
  const dir = scratch('fuzz-vhd');

  const vhdDyn = await qemuImage(raw, 'vpc', ['subformat=dynamic'], 'vhd-dyn-4m');
  const vhdFixed = await qemuImage(raw, 'vpc', ['subformat=fixed'], 'vhd-fixed-4m');
  const vhdxDyn = await qemuImage(raw, 'vhdx', ['subformat=dynamic', 'block_size=1M'], 'vhdx-dyn-4m');

  // Differencing children over a parent in the scratch folder.
  const vhdParent = path.join(dir, 'parent.vhd');
  writeFileSync(vhdParent, vhdDyn);
  const vhdChild = path.join(dir, 'child-src.vhd');
  writeVhdDiff(vhdChild, {
    parentFile: vhdParent,
    locators: [
      { code: 'W2ru', path: '.\\parent.vhd' },
      { code: 'W2ku', path: 'C:\\x\\parent.vhd' },
    ],
    writes: [
      { offset: 512 * 3, data: new Uint8Array(2048).fill(7) },
      { offset: 2 * MiB, data: new Uint8Array(8192).fill(9) },
    ],
  });
  const vhdxParent = path.join(dir, 'parent.vhdx');
  writeFileSync(vhdxParent, vhdxDyn);
  const vhdxChild = path.join(dir, 'child-src.vhdx');
  writeVhdx(vhdxChild, {
    virtualSize: 4 * MiB,
    writes: [
      { offset: 512 * 3, data: new Uint8Array(2048).fill(7) },
      { offset: 2 * MiB, data: new Uint8Array(MiB).fill(9) },
    ],
    zeroBlocks: [3],
    parent: { file: vhdxParent, relativePath: '.\\parent.vhdx' },
  });
  // A VHDX with a dirty log of two entries (replayed in memory by the reader).
  const vhdxLog = path.join(dir, 'log-src.vhdx');
  writeVhdx(vhdxLog, {
    virtualSize: 4 * MiB,
    writes: [
      { offset: 0, data: new Uint8Array(MiB).fill(3) },
      { offset: MiB, data: new Uint8Array(MiB).fill(4) },
    ],
    logGuid: 'deadbeef-0000-4000-8000-00000000f00d',
    log: (l) => {
      const b1 = l.payloadAt.get(1) as number;
      const batPage = new Uint8Array(4096);
      batPage.set(l.bat.subarray(0, Math.min(4096, l.bat.length)));
      batPage.fill(0, 0, 8);
      return [
        [{ fileOffset: b1 + 8192, page: new Uint8Array(4096).fill(5) }],
        [
          { fileOffset: l.batOffset, page: batPage },
          { fileOffset: b1 + 65536, zeroLength: 8192 },
        ],
      ];
    },
  });
  // Sanity: the unmutated images open and read.
  for (const f of [vhdChild, vhdxChild, vhdxLog]) await fromFile(f);
  await fromMemory(vhdDyn, 'vhd-dyn', 'vhd');
  await fromMemory(vhdFixed, 'vhd-fixed', 'vhd');
  await fromMemory(vhdxDyn, 'vhdx-dyn', 'vhdx');

  const vhdDynBatBytes = 1536 + 4 * 4; // footer copy, header, BAT (qemu puts it at 1536)
  const vhdxMeta = 3 * MiB; // qemu's layout: BAT region at 2 MiB, metadata at 3 MiB
  const childVhd = readFileSync(vhdChild);
  const childVhdx = readFileSync(vhdxChild);
  const logVhdx = readFileSync(vhdxLog);
  const inDir = (ext: string) => async (b: Uint8Array, i: number) => {
    const f = path.join(dir, `case-${i}.${ext}`);
    writeFileSync(f, b);
    try {
      await fromFile(f);
    } finally {
      rmSync(f, { force: true });
    }
  };
  const targets: Target[] = [
    {
      name: 'vhd dynamic',
      cases: 90,
      bytes: vhdDyn,
      regions: [
        [0, 512],
        [512, 1536],
        [1536, vhdDynBatBytes],
        [vhdDyn.length - 512, vhdDyn.length],
      ],
      reseal: resealVhd,
      run: (b, i) => fromMemory(b, `vhd-dyn-case-${i}`, 'vhd'),
    },
    {
      name: 'vhd fixed',
      cases: 30,
      bytes: vhdFixed,
      regions: [[vhdFixed.length - 512, vhdFixed.length]],
      reseal: resealVhd,
      run: (b, i) => fromMemory(b, `vhd-fixed-case-${i}`, 'vhd'),
    },
    {
      name: 'vhd differencing',
      cases: 60,
      bytes: childVhd,
      regions: [
        [512, 1536],
        [1536, 4096],
        [childVhd.length - 512, childVhd.length],
      ],
      reseal: resealVhd,
      run: inDir('vhd'),
    },
    {
      name: 'vhdx dynamic',
      cases: 100,
      bytes: vhdxDyn,
      regions: [
        [0, 16],
        [64 * KiB, 64 * KiB + 96],
        [128 * KiB, 128 * KiB + 96],
        [192 * KiB, 192 * KiB + 96],
        [256 * KiB, 256 * KiB + 96],
        [2 * MiB, 2 * MiB + 64],
        [vhdxMeta, vhdxMeta + 224],
        [vhdxMeta + 64 * KiB, vhdxMeta + 64 * KiB + 64],
      ],
      reseal: resealVhdx,
      run: (b, i) => fromMemory(b, `vhdx-dyn-case-${i}`, 'vhdx'),
    },
    {
      name: 'vhdx differencing',
      cases: 60,
      bytes: childVhdx,
      regions: [
        [64 * KiB, 64 * KiB + 96],
        [128 * KiB, 128 * KiB + 96],
        [192 * KiB, 192 * KiB + 96],
        [2 * MiB, 2 * MiB + 224],
        [2 * MiB + 64 * KiB, 2 * MiB + 64 * KiB + 256],
        [3 * MiB, 3 * MiB + 64],
        [3 * MiB + 4097 * 8 - 8, 3 * MiB + 4097 * 8],
      ],
      reseal: resealVhdx,
      run: inDir('vhdx'),
    },
    {
      name: 'vhdx dirty log',
      cases: 40,
      bytes: logVhdx,
      regions: [
        [128 * KiB + 48, 128 * KiB + 80],
        [MiB, MiB + 128],
        [MiB + 4096, MiB + 4096 + 64],
        [MiB + 8192, MiB + 8192 + 128],
        [MiB + 12288, MiB + 12288 + 64],
      ],
      reseal: (b) => {
        resealVhdx(b);
        resealLog(b);
      },
      run: (b, i) => fromMemory(b, `vhdx-log-case-${i}`, 'vhdx'),
    },
  ];

  let total = 0;
  const failures: string[] = [];
  const readable: Record<string, number> = {};
  for (const t of targets) {
    for (let i = 0; i < t.cases; i++) {
      const seed = 1000 * (targets.indexOf(t) + 1) + i;
      const rand = prng(seed);
      const b = mutate(t.bytes, t.regions, rand);
      if (i % 2 === 1) t.reseal(b);
      const why = await expectCleanOutcome(async () => {
        await t.run(b, seed);
        readable[t.name] = (readable[t.name] ?? 0) + 1;
      }, 5000);
      if (why) failures.push(`${t.name} seed ${seed}: ${why}`);
      total++;
    }
  }
  assert.ok(total >= 300, `ran ${total} cases`);
  assert.deepEqual(failures, []);
  // Both outcomes occur for every target: the mutations reach past the first check.
  for (const t of targets) {
    const ok = readable[t.name] ?? 0;
    assert.ok(ok > 0 && ok < t.cases, `${t.name}: ${ok} of ${t.cases} cases read cleanly`);
  }
  console.log(JSON.stringify(readable));
  // Mutations worked on copies: the source image is unchanged.
  assert.ok(readFileSync(vhdChild).equals(childVhd));
});
