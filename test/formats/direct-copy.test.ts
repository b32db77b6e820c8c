/**
 * The bulk copiers (src/library/convert/direct-copy.ts: copy workers reading the container files
 * themselves; native-copy.ts: native/copy.c on libuv's pool, for raw outputs) against the single-threaded pump and against qemu-img: for every container
 * with a direct map, both outputs are byte-identical files, qemu-img compares them equal
 * to the source and `qemu-img check` finds the qcow2 ones clean. Ranges only the reader
 * can produce (compressed clusters, a vmdk backing file, sector-granular differencing
 * blocks) take the main thread's path inside the same copy; errors name the file.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage } from '../../src/formats/open.js';
import type { DiskImage } from '../../src/formats/types.js';
import { nativeCopyRange } from '../../src/io/native.js';
import { type ConvertOptions, convertImage } from '../../src/library/convert/convert.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { qemuCheck, qemuCompare } from '../helpers/qemu-oracles.js';
import { fixture, run, scratch, unmount } from '../helpers/tools.js';
import { writeVhdDiff } from '../helpers/vhd-writer.js';

const MiB = 1024 * 1024;
/** Several 64 MiB map windows would make the suite slow; this spans many jobs and a partial last one. */
const SIZE = 40 * MiB + 3 * 4096 + 512;

const patternRaw = () => fixture(`direct-pattern-${SIZE}-s11-v1.raw`, async (out) => writePatternDisk(out, SIZE, 11));

/** The pattern disk in another container, made by qemu-img. */
const viaQemu = (name: string, args: string[]) =>
  fixture(`direct-${name}-${SIZE}-s11-v1`, async (out) => {
    await run('qemu-img', ['convert', '-f', 'raw', ...args, await patternRaw(), out]);
  });

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

async function convertWith(input: string, out: string, opts: ConvertOptions): Promise<number> {
  const img = await openImage(input, { allowAnyPath: true });
  try {
    await convertImage(img, out, opts);
    return img.size;
  } finally {
    await closeChain(img);
  }
}

/**
 * Direct and pumped conversions of `input` to both outputs: identical files, equal to the
 * source (or to `reference`, a raw file, where qemu cannot read the source).
 */
async function checkBoth(
  name: string,
  input: string,
  expectOther: boolean,
  clusterSize?: number,
  reference = input,
): Promise<{ maxPieces: number }> {
  const img = await openImage(input, { allowAnyPath: true });
  let maxPieces = 0;
  try {
    assert.ok(img.direct, `${img.format} has a direct map`);
    let other = false;
    // Per 256 KiB (the copier's job size): how many pieces a job has, and whether any is 'other'.
    for (let o = 0; o < img.size; o += 256 * 1024) {
      const pieces = await img.direct(o, Math.min(256 * 1024, img.size - o));
      maxPieces = Math.max(maxPieces, pieces.length);
      if (pieces.some((p) => p.kind === 'other')) other = true;
    }
    assert.equal(other, expectOther, `${name}: ranges only the reader can produce`);
  } finally {
    await closeChain(img);
  }
  const dir = scratch(`direct-${name}`);
  for (const format of ['raw', 'qcow2'] as const) {
    const d = path.join(dir, `direct.${format}`);
    const p = path.join(dir, `pump.${format}`);
    const extra = format === 'qcow2' && clusterSize ? { clusterSize } : {};
    await convertWith(input, d, { format, directCopy: 'always', ...extra });
    await convertWith(input, p, { format, directCopy: 'never', ...extra });
    assert.equal(sha(d), sha(p), `${name} -> ${format}: the bulk copier and the pump write the same file`);
    // 'always' took the native copier (raw: native/copy.c) or the pool copier (qcow2); the workers too.
    const w = path.join(dir, `workers.${format}`);
    await convertWith(input, w, { format, directCopy: 'workers', ...extra });
    assert.equal(sha(w), sha(p), `${name} -> ${format}: the worker copier writes the same file`);
    await qemuCompare(reference, undefined, d, format);
    if (format === 'qcow2') await qemuCheck(d);
    // checked: the three copies' disk back before the next format's
    for (const f of [d, p, w]) rmSync(f);
  }
  rmSync(dir, { recursive: true });
  return { maxPieces };
}

test('raw, qcow2, vhdx, vhd and vdi sources: direct copies equal pumped ones and the source', async () => {
  await checkBoth('raw', await patternRaw(), false);
  await checkBoth('qcow2', await viaQemu('qcow2', ['-O', 'qcow2']), false);
  await checkBoth('qcow2-4k', await viaQemu('qcow2-4k', ['-O', 'qcow2', '-o', 'cluster_size=4096']), false, 4096);
  await checkBoth('vhdx', await viaQemu('vhdx', ['-O', 'vhdx']), false);
  await checkBoth('vhd', await viaQemu('vhd', ['-O', 'vpc', '-o', 'subformat=dynamic']), false);
  await checkBoth('vdi', await viaQemu('vdi', ['-O', 'vdi']), false);
  await checkBoth('vdi-static', await viaQemu('vdi-static', ['-O', 'vdi', '-o', 'static=on']), false);
});

test('qcow2 outputs with 2 MiB and 512-byte clusters (one cluster per job; many segments)', async () => {
  // 512-byte source clusters: every 256 KiB job has more pieces than a job can carry, so the
  // main thread reads those through the reader.
  const small = await viaQemu('qcow2-512', ['-O', 'qcow2', '-o', 'cluster_size=512']);
  const { maxPieces } = await checkBoth('qcow2-512', small, false, 2 * MiB);
  assert.ok(maxPieces > 8, `some jobs have more pieces than a job carries (${maxPieces})`);
  await checkBoth('qcow2-to-512', await viaQemu('qcow2', ['-O', 'qcow2']), false, 512);
});

test('compressed clusters and a vmdk backing file take the reader path inside the same copy', async () => {
  await checkBoth('qcow2-zlib', await viaQemu('qcow2-zlib', ['-O', 'qcow2', '-c']), true);
  const dir = scratch('direct-chain');
  const base = path.join(dir, 'base.vmdk');
  copyFileSync(await viaQemu('vmdk', ['-O', 'vmdk']), base);
  const mid = path.join(dir, 'mid.qcow2');
  await run('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.vmdk', '-F', 'vmdk', mid]);
  await run('qemu-io', ['-c', 'write -P 0x5a 1M 3M', '-c', 'write -z 8M 1M', '-c', 'write -P 7 39M 64k', mid]);
  const top = path.join(dir, 'top.qcow2');
  await run('qemu-img', ['create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top]);
  await run('qemu-io', ['-c', 'write -P 0x33 2M 1536k', top]);
  await checkBoth('chain-vmdk', top, true);
  // Over a raw backing file every range is direct.
  const rawBase = path.join(dir, 'base.raw');
  copyFileSync(await patternRaw(), rawBase);
  const over = path.join(dir, 'over-raw.qcow2');
  await run('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', over]);
  await run('qemu-io', ['-c', 'write -P 0x44 5M 2M', '-c', 'write -z 20M 4M', over]);
  await checkBoth('chain-raw', over, false);
  rmSync(dir, { recursive: true });
});

test('a vhd differencing child with sector-sized changes: jobs mix child and parent ranges', async () => {
  const dir = scratch('direct-vhd-diff');
  const parent = path.join(dir, 'parent.vhd');
  copyFileSync(await viaQemu('vhd', ['-O', 'vpc', '-o', 'subformat=dynamic']), parent);
  const bytes = (n: number, seed: number) => Buffer.alloc(n, seed);
  const writes = [
    { offset: 5 * 512, data: bytes(3 * 512, 1) },
    { offset: 3 * MiB + 7 * 512, data: bytes(64 * 512, 2) },
    { offset: 17 * MiB, data: bytes(2 * MiB + 512, 3) },
  ];
  const child = path.join(dir, 'child.vhd');
  writeVhdDiff(child, { parentFile: parent, locators: [{ code: 'W2ru', path: '.\\parent.vhd' }], writes });
  // qemu's vpc driver has no differencing images: the oracle is the parent (as qemu reads it) with the writes.
  const expected = path.join(dir, 'expected.raw');
  await run('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', parent, expected]);
  const fd = openSync(expected, 'r+');
  try {
    for (const w of writes) writeSync(fd, w.data, 0, w.data.length, w.offset);
  } finally {
    closeSync(fd);
  }
  const { maxPieces } = await checkBoth('vhd-diff', child, false, undefined, expected);
  assert.ok(maxPieces > 1, 'some jobs mix child and parent ranges');
  rmSync(dir, { recursive: true });
});

test('direct writes (O_DIRECT, as for a disk larger than an eighth of the memory): the same files; a full disk still fails', async () => {
  // STRATA_DIRECT_WRITE=1: what a large disk gets; the pattern disk's odd tail (not a multiple
  // of 4 KiB) is refused by O_DIRECT and written through the page cache.
  process.env.STRATA_DIRECT_WRITE = '1';
  try {
    await checkBoth('raw-dio', await patternRaw(), false);
    await checkBoth('qcow2-dio', await viaQemu('qcow2', ['-O', 'qcow2']), false);
    await checkBoth('qcow2-dio-512', await viaQemu('qcow2', ['-O', 'qcow2']), false, 512);
    const dir = scratch('direct-dio-full');
    const mnt = path.join(dir, 'mnt');
    await run('mkdir', [mnt]);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
    try {
      for (const format of ['raw', 'qcow2'] as const) {
        const out = path.join(mnt, `out.${format}`);
        await assert.rejects(
          convertWith(await patternRaw(), out, { format, directCopy: 'always' }),
          (e) => e instanceof StrataError && e.code === 'IO' && e.file === out && /ENOSPC|no space/i.test(e.message),
        );
        assert.deepEqual(readdirSync(mnt), [], 'the temporary file is removed');
      }
    } finally {
      await unmount(mnt);
    }
  } finally {
    delete process.env.STRATA_DIRECT_WRITE;
  }
});

test('a source that shrinks under the copy fails naming the file; nothing is left behind', async () => {
  const dir = scratch('direct-shrink');
  const src = path.join(dir, 'disk.raw');
  copyFileSync(await patternRaw(), src);
  const img: DiskImage = await openImage(src);
  try {
    truncateSync(src, 8 * MiB); // the image was opened at full size
    const out = path.join(dir, 'out.raw');
    await assert.rejects(
      convertImage(img, out, { format: 'raw', directCopy: 'always' }),
      (e) => e instanceof StrataError && e.code === 'TRUNCATED' && e.file === src && (e.offset ?? 0) >= 8 * MiB,
    );
  } finally {
    await closeChain(img);
  }
  assert.deepEqual(readdirSync(dir), ['disk.raw'], 'no output and no temporary file');
});

test('a full output file system fails naming the output; nothing is left behind', async () => {
  const dir = scratch('direct-full');
  const mnt = path.join(dir, 'mnt');
  await run('mkdir', [mnt]);
  await run('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
  try {
    const out = path.join(mnt, 'out.raw');
    await assert.rejects(
      convertWith(await patternRaw(), out, { format: 'raw', directCopy: 'always' }),
      (e) => e instanceof StrataError && e.code === 'IO' && e.file === out && /ENOSPC|no space/i.test(e.message),
    );
    assert.deepEqual(readdirSync(mnt), [], 'the temporary file is removed');
  } finally {
    await unmount(mnt);
  }
});

test('a source on another file system (copy_file_range refuses: EXDEV): both outputs are written from the buffer', async () => {
  const dir = scratch('direct-xdev');
  const mnt = path.join(dir, 'mnt');
  await run('mkdir', [mnt]);
  await run('mount', ['-t', 'tmpfs', '-o', 'size=128m', 'tmpfs', mnt]);
  try {
    const raw = path.join(mnt, 'disk.raw');
    copyFileSync(await patternRaw(), raw);
    const qcow2 = path.join(mnt, 'disk.qcow2');
    copyFileSync(await viaQemu('qcow2', ['-O', 'qcow2']), qcow2);
    for (const input of [raw, qcow2]) {
      for (const format of ['raw', 'qcow2'] as const) {
        const d = path.join(dir, `direct-${path.basename(input)}.${format}`);
        const p = path.join(dir, `pump-${path.basename(input)}.${format}`);
        await convertWith(input, d, { format, directCopy: 'always' });
        await convertWith(input, p, { format, directCopy: 'never' });
        assert.equal(sha(d), sha(p), `${input} -> ${format}: the copier across file systems writes the pump's file`);
        await qemuCompare(raw, undefined, d, format);
        if (format === 'qcow2') await qemuCheck(d);
      }
    }
  } finally {
    await run('umount', [mnt]);
  }
});

test('abort and progress: an aborted copy stops with no output; a whole one reports every byte', async () => {
  const dir = scratch('direct-abort');
  const src = await viaQemu('qcow2', ['-O', 'qcow2']);
  const ac = new AbortController();
  const out = path.join(dir, 'out.qcow2');
  let calls = 0;
  await assert.rejects(
    convertWith(src, out, {
      format: 'qcow2',
      directCopy: 'always',
      signal: ac.signal,
      onProgress: () => {
        if (++calls === 1) ac.abort();
      },
    }),
    (e) => e instanceof StrataError && /interrupted/.test(e.message),
  );
  assert.equal(existsSync(out), false);
  assert.deepEqual(readdirSync(dir), []);
  let last = 0;
  let total = 0;
  const size = await convertWith(src, out, {
    format: 'raw',
    directCopy: 'always',
    onProgress: (done, t) => {
      assert.ok(done >= last, 'progress never goes back');
      last = done;
      total = t;
    },
  });
  assert.equal(total, size);
  assert.equal(last, size);
});

/** Extents of `file` by `filefrag -v` (e2fsprogs: FIEMAP), with the bytes flagged shared. */
async function sharedBytes(file: string): Promise<{ data: number; shared: number }> {
  const out = await run('filefrag', ['-v', '-b4096', file]);
  let data = 0;
  let shared = 0;
  for (const line of out.split('\n')) {
    // "   0:        0..     255:      33024..     33279:    256:             shared"
    const m = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):.*$/.exec(line);
    if (!m) continue;
    const bytes = Number(m[1]) * 4096;
    data += bytes;
    if (/\bshared\b/.test(line)) shared += bytes;
  }
  return { data, shared };
}

test('on btrfs, raw and qcow2 data are reflinked into a raw output (extents shared), not copied', async () => {
  assert.ok(nativeCopyRange(), 'the native addon (native/copy.c) is built');
  const dir = scratch('direct-reflink');
  const fsImage = path.join(dir, 'fs.img');
  const fd = openSync(fsImage, 'w');
  ftruncateSync(fd, 512 * MiB); // sparse: only what btrfs writes takes disk
  closeSync(fd);
  await run('mkfs.btrfs', ['-q', fsImage]);
  const mnt = path.join(dir, 'mnt');
  await run('mkdir', [mnt]);
  await run('mount', ['-o', 'loop', fsImage, mnt]);
  try {
    const cases: Array<[string, Promise<string>]> = [
      ['raw', patternRaw()],
      ['qcow2', viaQemu('qcow2', ['-O', 'qcow2'])],
    ];
    for (const [name, made] of cases) {
      const src = path.join(mnt, `src.${name}`);
      await run('cp', ['--sparse=always', await made, src]);
      await run('sync', [src]); // delayed allocation: FIEMAP sees the extents once written
      const out = path.join(mnt, `out-${name}.raw`);
      await convertWith(src, out, { format: 'raw' });
      await qemuCompare(src, name, out, 'raw');
      await run('sync', [out]);
      const { data, shared } = await sharedBytes(out);
      assert.ok(data > 4 * MiB, `${name}: the output has data extents (${data} bytes)`);
      // The disk ends 512 bytes into a 4 KiB block: FICLONERANGE takes a partial block only at
      // the source file's end, so from inside a qcow2 file that one block is copied.
      const tail = name === 'raw' ? 0 : 4096;
      assert.ok(
        shared >= data - tail,
        `${name}: every data extent of the output (but the partial last block) is shared: ${shared} of ${data} bytes`,
      );
    }
    // The same copies with reflinks refused (tmpfs): real bytes, equal to the source.
    const tmpMnt = path.join(dir, 'tmp');
    await run('mkdir', [tmpMnt]);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=256m', 'tmpfs', tmpMnt]);
    try {
      const src = path.join(tmpMnt, 'src.qcow2');
      copyFileSync(await viaQemu('qcow2', ['-O', 'qcow2']), src);
      const out = path.join(tmpMnt, 'out.raw');
      await convertWith(src, out, { format: 'raw' });
      await qemuCompare(src, 'qcow2', out, 'raw');
    } finally {
      await unmount(tmpMnt);
    }
  } finally {
    await unmount(mnt);
  }
});
