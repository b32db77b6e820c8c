import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage, openImageSource } from '../../src/formats/open.js';
import type { DiskImage } from '../../src/formats/types.js';
import { MemorySource } from '../../src/io/memory-source.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { expectCleanOutcome, mutate, prng } from '../helpers/fuzz.js';
import { fixture, run, scratch, sha256 } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const V = 'v1';
const CASES_PER_IMAGE = 75;

/** Read the whole disk (up to 64 MiB of it: the head and the tail when bigger) and its status. */
async function exercise(img: DiskImage): Promise<string> {
  const step = 4 * MiB;
  const ranges: Array<[number, number]> =
    img.size <= 64 * MiB
      ? [[0, img.size]]
      : [
          [0, 32 * MiB],
          [img.size - 32 * MiB, img.size],
        ];
  const parts: string[] = [];
  for (const [from, to] of ranges) {
    for (let off = from; off < to; off += step) {
      const b = await img.read(off, Math.min(step, to - off));
      parts.push(sha256(b));
    }
  }
  for (let off = 0; off < img.size; off += 1 << 30) await img.status(off, Math.min(1 << 30, img.size - off));
  // readInto (convert's path) must fail as cleanly as read.
  if (img.readInto) await img.readInto(Math.max(0, img.size - 3 * MiB), new Uint8Array(3 * MiB + 7));
  return sha256(Buffer.from(parts.join()));
}

async function patternRaw(size: number, seed: number): Promise<string> {
  return fixture(`qcow2f-pattern-${size}-${seed}-${V}.raw`, async (out) => writePatternDisk(out, size, seed));
}

interface Subject {
  name: string;
  dir: string;
  file: string;
}

/** Small real images covering each structure the reader parses. */
async function subjects(): Promise<Subject[]> {
  const raw = await patternRaw(2 * MiB + 4096, 77);
  const mk = async (name: string, args: (out: string) => string[][]): Promise<Subject> => {
    const dir = await fixture(`qcow2f-${name}-${V}`, async (out) => {
      mkdirSync(out);
      for (const a of args(out)) await run(a[0], a.slice(1), { cwd: out });
    });
    return { name, dir, file: path.join(dir, 'img.qcow2') };
  };
  return [
    await mk('v2', () => [
      ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=0.10,cluster_size=4096', raw, 'img.qcow2'],
    ]),
    await mk('v3', () => [
      ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1,cluster_size=4096', raw, 'img.qcow2'],
      ['qemu-io', '-c', 'write -z 64k 16k', 'img.qcow2'],
    ]),
    await mk('zlib', () => [
      ['qemu-img', 'convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, 'img.qcow2'],
    ]),
    await mk('zstd', () => [
      [
        'qemu-img',
        'convert',
        '-c',
        '-f',
        'raw',
        '-O',
        'qcow2',
        '-o',
        'cluster_size=4096,compression_type=zstd',
        raw,
        'img.qcow2',
      ],
    ]),
    await mk('extl2', () => [
      ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=16384,extended_l2=on', raw, 'img.qcow2'],
      ['qemu-io', '-c', 'write -P 9 1k 1k', '-c', 'write -z 40k 2k', '-c', 'write -P 8 100k 3k', 'img.qcow2'],
    ]),
    await mk('backing', () => [
      ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, 'base.qcow2'],
      ['qemu-img', 'create', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2'],
      ['qemu-io', '-c', 'write -P 3 8k 8k', '-c', 'write -z 1M 64k', '-c', 'write -P 4 2M 4k', 'img.qcow2'],
    ]),
    await mk('datafile', () => [
      [
        'qemu-img',
        'create',
        '-f',
        'qcow2',
        '-o',
        'cluster_size=4096,data_file=data.bin,data_file_raw=on',
        'img.qcow2',
        '2M',
      ],
      ['qemu-io', '-c', 'write -P 5 0 8k', '-c', 'write -z 64k 16k', '-c', 'write -P 6 1M 12k', 'img.qcow2'],
    ]),
  ];
}

/**
 * The regions worth mutating, found from the qcow2 spec's field positions: the header,
 * its extensions and backing name (first 1 KiB), the L1 table, and the used start of every L2 table.
 */
function regions(b: Buffer): Array<[number, number]> {
  const out: Array<[number, number]> = [
    [0, 112],
    [72, 1024],
  ];
  const l1Size = b.readUInt32BE(36);
  const l1Off = Number(b.readBigUInt64BE(40));
  out.push([l1Off, l1Off + l1Size * 8]);
  for (let i = 0; i < l1Size; i++) {
    const l2 = Number(b.readBigUInt64BE(l1Off + i * 8) & 0x00fffffffffffe00n);
    if (l2 > 0 && l2 < b.length) out.push([l2, Math.min(b.length, l2 + 2048)]);
  }
  return out;
}

test('qcow2 fuzz: mutated real images open and read cleanly or fail with StrataError', async (t) => {
  const subs = await subjects();
  const failures: string[] = [];
  let opened = 0;
  let total = 0;
  for (const [si, s] of subs.entries()) {
    const orig = readFileSync(s.file);
    // The unmutated image reads the same as qemu sees it.
    const good = await openImage(s.file);
    try {
      const h = createHash('sha256');
      for (let off = 0; off < good.size; off += 4 * MiB)
        h.update(await good.read(off, Math.min(4 * MiB, good.size - off)));
      const ref = path.join(scratch('qcow2-fuzz-ref'), 'ref.raw');
      await run('qemu-img', ['convert', '-O', 'raw', s.file, ref], { cwd: s.dir });
      assert.equal(h.digest('hex'), sha256(readFileSync(ref)), `${s.name}: unmutated image differs from qemu`);
      rmSync(path.dirname(ref), { recursive: true, force: true });
    } finally {
      await closeChain(good);
    }
    const regs = regions(orig);
    assert.ok(regs.length >= 4, `${s.name}: found L1 and L2 tables to mutate`);
    const work = scratch(`qcow2-fuzz-${s.name}`);
    for (let c = 0; c < CASES_PER_IMAGE; c++) {
      const seed = 1000 * (si + 1) + c;
      const bytes = mutate(orig, regs, prng(seed));
      total++;
      let attempt: () => Promise<unknown>;
      if (s.name === 'backing' || s.name === 'datafile') {
        // Needs its backing or data file next to it: write the mutant into the fixture's folder.
        const f = path.join(s.dir, `mut-${process.pid}.qcow2`);
        writeFileSync(f, bytes);
        attempt = async () => {
          const img = await openImage(f);
          try {
            await exercise(img);
            opened++;
          } finally {
            await closeChain(img);
          }
        };
      } else {
        const src = new MemorySource(bytes, path.join(work, `${s.name}-${seed}.qcow2`));
        attempt = async () => {
          const img = await openImageSource(src, { format: 'qcow2' });
          try {
            await exercise(img);
            opened++;
          } finally {
            await closeChain(img);
          }
        };
      }
      const problem = await expectCleanOutcome(attempt, 5000);
      if (problem) failures.push(`${s.name} seed ${seed}: ${problem}`);
    }
  }
  for (const s of subs) rmSync(path.join(s.dir, `mut-${process.pid}.qcow2`), { force: true });
  t.diagnostic(`${opened} of ${total} mutants opened and read; the rest failed with StrataError`);
  assert.ok(total >= 400, `ran ${total} cases`);
  assert.deepEqual(failures, [], failures.join('\n'));
  // The mutations must leave a fair share of images readable, or the fuzz only tests the header checks.
  assert.ok(opened > total / 10, `only ${opened} of ${total} mutants opened and read`);
});
