import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Deployer } from '../../src/deploy/deployer.js';
import { planProfile } from '../../src/deploy/profile.js';
import {
  profileFor,
  profilePlan,
  readProfileFile,
  recordProfile,
  versionBlockMap,
} from '../../src/deploy/profile-store.js';
import { libraryDeploySource } from '../../src/deploy/source.js';
import { Library } from '../../src/library/library.js';
import { isStrataError } from '../../src/util/errors.js';
import { bytesOf, canLoopMount } from '../helpers/ext-tree.js';
import { mutate, prng } from '../helpers/fuzz.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { sameAs } from './helpers.js';
import {
  BOOT_FILES,
  debugfsBlocks,
  icheck,
  inodeOf,
  kernelReads,
  profileLibrary,
  qemuIoReads,
  runsOf,
  strataNbd,
} from './profile-helpers.js';

/**
 * Boot working-set profiles (issue 16 item 4): a real NBD trace of reads of some files of
 * version N (qemu-io through `strata nbd --trace`) recorded as a profile of N; deployed on
 * N+1, where a kernel mount rewrote those files (new blocks), the first blocks fetched are
 * exactly the files' blocks in N+1 as debugfs lists them, in the order the trace read them.
 */
const BS = 4096;
let dir: string;
let lib: Library;
let fx: Awaited<ReturnType<typeof profileLibrary>>;

/** What the trace reads, in this order: [path, first block index, blocks (undefined: to the end)]. */
const READS: Array<[string, number, number | undefined]> = [
  ['/etc/fstab', 0, undefined],
  ['/boot/vmlinuz', 0, undefined],
  ['/usr/lib/libc.so', 128, undefined], // the second half only
  ['/boot/initrd.img', 0, 100], // the first 400 KiB only
  ['/sbin/init', 0, undefined],
];

/** Blocks of each read in image `img`, in the order of READS (debugfs the oracle). */
async function readBlocks(img: string): Promise<number[][]> {
  const out: number[][] = [];
  for (const [p, from, count] of READS) {
    const all = await debugfsBlocks(img, p);
    out.push(all.slice(from, count === undefined ? undefined : from + count));
  }
  return out;
}

let trace: string;

before(async () => {
  dir = tempDir('deploy-profile');
  fx = await profileLibrary(dir);
  lib = await Library.open(fx.lib, { create: false });
  // the trace: qemu-io reads, through `strata nbd --trace`, of the files' blocks in N, run by run
  trace = path.join(dir, 'boot.trace');
  const nbd = await strataNbd(['ref:disk@1', '--library', fx.lib, '--trace', trace]);
  try {
    const ranges: Array<[number, number]> = [];
    for (const blocks of await readBlocks(fx.n)) {
      for (const [b, n] of runsOf(blocks)) ranges.push([b * BS, n * BS]);
    }
    await qemuIoReads(nbd.uri, ranges);
  } finally {
    assert.equal(await nbd.stop(), 0);
  }
});
after(async () => {
  await lib?.close();
});

describe('boot profiles', () => {
  test('the fixture moved the files: every read file has other blocks in N+1 than in N', async () => {
    const a = await readBlocks(fx.n);
    const b = await readBlocks(fx.n1);
    READS.forEach(([p], i) => {
      const same = a[i].filter((x) => b[i].includes(x));
      assert.equal(same.length, 0, `${p} kept ${same.length} blocks`);
    });
  });

  test('record: the trace resolves to file entries in first-access order, file offsets as read', async () => {
    const p = await recordProfile(lib, 'disk@1', trace);
    const records = readFileSync(trace, 'utf8').trim().split('\n').length;
    assert.equal(p.records, records);
    assert.ok(p.reads > 0 && p.reads <= records);
    const kinds = new Set(p.entries.map((e) => e.kind));
    assert.deepEqual([...kinds], ['file'], 'qemu-io read only file blocks');
    // bytes per file, in order of first access, equal to what the trace read (debugfs on N)
    const order: string[] = [];
    const bytes = new Map<string, number>();
    for (const e of p.entries) {
      if (!order.includes(e.path!)) order.push(e.path!);
      bytes.set(e.path!, (bytes.get(e.path!) ?? 0) + e.length);
    }
    assert.deepEqual(
      order,
      READS.map((r) => r[0]),
    );
    const blocksN = await readBlocks(fx.n);
    READS.forEach(([f], i) => {
      assert.equal(bytes.get(f), blocksN[i].length * BS, f);
    });
    // file offsets: libc.so's entries start at block 128 of the file
    const libc = p.entries.filter((e) => e.path === '/usr/lib/libc.so');
    assert.equal(libc[0].fileOffset, 128 * BS);
    assert.equal(
      libc.reduce((n, e) => n + e.length, 0),
      BOOT_FILES['/usr/lib/libc.so'] - 128 * BS,
    );
  });

  test('the profile of N on N replays the trace: the same disk ranges in the same order', async () => {
    const p = (await profileFor(lib, 'disk@1'))!;
    const map = await versionBlockMap(lib, (await lib.catalog.resolve('disk@1')).manifest, 'disk@1');
    const plan = planProfile(p, map);
    const want = (await readBlocks(fx.n)).flat();
    const got: number[] = [];
    for (const r of plan.ranges) for (let o = r.offset; o < r.offset + r.length; o += BS) got.push(o / BS);
    assert.deepEqual(got, want);
    assert.equal(plan.moved, 0);
    assert.equal(plan.missing, 0);
  });

  test('deploy of N+1 fetches first exactly the files’ new blocks (debugfs on N+1), in the recorded order', async () => {
    const p = await profileFor(lib, 'disk@2');
    assert.ok(p, 'N+1 falls back to the profile of N');
    assert.equal(p.number, 1);
    const target = path.join(dir, 'n1.raw');
    const source = await libraryDeploySource(lib, 'disk@2');
    const plan = profilePlan(p, source);
    const d = await Deployer.open(source, target, {
      blockSize: BS,
      concurrency: 1,
      first: plan.then((x) => x.ranges),
    });
    d.start();
    await d.complete;
    await d.close();
    const want: number[] = [];
    for (const b of (await readBlocks(fx.n1)).flat()) if (!want.includes(b)) want.push(b);
    assert.deepEqual(d.fetchedBlocks.slice(0, want.length), want);
    const old = new Set((await readBlocks(fx.n)).flat());
    assert.ok(
      want.every((b) => !old.has(b)),
      'a block-level profile (the old offsets) would have fetched none of these',
    );
    const pl = await plan;
    assert.equal(pl.missing, 0);
    assert.equal(pl.moved, p.entries.length);
    assert.equal(await sameAs(fx.v2, target), true, 'TARGET holds N+1');
  });

  test('a file that N+1 lacks is counted missing, not fetched', async () => {
    const p = structuredClone((await profileFor(lib, 'disk@1'))!);
    p.entries.unshift({
      kind: 'file',
      volume: p.entries[0].volume,
      path: '/no/such/file',
      fileOffset: 0,
      disk: 0,
      length: BS,
    });
    const map = await versionBlockMap(lib, (await lib.catalog.resolve('disk@2')).manifest, 'disk@2');
    const plan = planProfile(p, map);
    assert.equal(plan.missing, 1);
    assert.deepEqual(plan.missingPaths, ['/no/such/file']);
    const want = (await readBlocks(fx.n1)).flat();
    assert.equal(plan.bytes, new Set(want).size * BS);
  });

  test('fuzz: mutated profiles (fields set to odd values, bytes flipped) are refused with a StrataError or plan inside the disk', async () => {
    const good = await recordProfile(lib, 'disk@1', trace, { save: false });
    const map = await versionBlockMap(lib, (await lib.catalog.resolve('disk@2')).manifest, 'disk@2');
    const file = path.join(dir, 'fuzz.profile');
    const rand = prng(20261206);
    const odd: unknown[] = [-1, 0, 2 ** 53, 1e300, 'x', null, {}, [], 1.5, map.diskSize * 10, '/boot/vmlinuz'];
    const fields = ['kind', 'disk', 'length', 'fileOffset', 'path', 'volume', 'inode', 'detail'];
    let refused = 0;
    let planned = 0;
    const text = Buffer.from(JSON.stringify(good));
    for (let i = 0; i < 400; i++) {
      if (i % 2 === 0) {
        const p = structuredClone(good) as unknown as { entries: Array<Record<string, unknown>> } & Record<
          string,
          unknown
        >;
        for (let k = 1 + (rand() % 3); k > 0; k--) {
          const target =
            rand() % 8 === 0 || !Array.isArray(p.entries) || p.entries.length === 0
              ? p
              : (p.entries[rand() % p.entries.length] ?? p);
          target[rand() % 8 === 0 ? 'entries' : fields[rand() % fields.length]] = odd[rand() % odd.length];
        }
        writeFileSync(file, JSON.stringify(p));
      } else writeFileSync(file, mutate(text, [[0, text.length]], rand));
      let prof: ReturnType<typeof readProfileFile>;
      try {
        prof = readProfileFile(file);
      } catch (e) {
        assert.ok(isStrataError(e), `case ${i}: ${(e as Error).message}`);
        assert.match(e.message, /fuzz\.profile|profile|entry/);
        refused++;
        continue;
      }
      const plan = planProfile(prof, map);
      for (const r of plan.ranges)
        assert.ok(r.offset >= 0 && r.length > 0 && r.offset + r.length <= map.diskSize, `case ${i}`);
      assert.ok(plan.bytes <= map.diskSize);
      planned++;
    }
    assert.ok(refused > 0 && planned > 0, `${refused} refused, ${planned} planned`);
  });

  test('bad traces: a malformed line is named by file and line; a trace without reads is refused', async () => {
    const bad = path.join(dir, 'bad.trace');
    writeFileSync(bad, '{"op":"read","offset":0,"length":4096}\n{"op":"read","offset":-5,"length":1}\n');
    await assert.rejects(recordProfile(lib, 'disk@1', bad, { save: false }), (e: unknown) => {
      assert.ok(isStrataError(e));
      assert.match(e.message, /line 2/);
      assert.match(e.message, /bad\.trace/);
      return true;
    });
    const writes = path.join(dir, 'writes.trace');
    writeFileSync(writes, '{"op":"write","offset":0,"length":4096}\n{"op":"flush","offset":0,"length":0}\n');
    await assert.rejects(recordProfile(lib, 'disk@1', writes, { save: false }), /no reads/);
    await assert.rejects(
      recordProfile(lib, 'disk@1', path.join(dir, 'missing.trace'), { save: false }),
      /cannot read the trace/,
    );
  });

  test('a real kernel mount of N (nbdfuse, loop, ext4) reading three files: on N+1 the plan holds exactly those files’ new blocks, in read order', async () => {
    assert.ok(canLoopMount(), 'root and a loop driver are needed (the kernel is the guest here)');
    const files = ['/etc/fstab', '/boot/vmlinuz', '/sbin/init'];
    const ktrace = path.join(dir, 'kernel.trace');
    const got = await kernelReads(['ref:disk@1', '--library', fx.lib, '--trace', ktrace], files);
    files.forEach((f, i) => {
      assert.ok(got[i].equals(bytesOf(`profile:${f}`, BOOT_FILES[f])), `${f} read through the kernel`);
    });
    const p = await recordProfile(lib, 'disk@1', ktrace, { save: false });
    const kinds = new Set(p.entries.map((e) => e.kind));
    for (const k of ['superblock', 'group-desc', 'inode-table', 'directory', 'file']) assert.ok(kinds.has(k), k);
    // the data read: exactly the three files, whole (debugfs blocks on N), first read in cat order
    const fileOrder: string[] = [];
    const bytes = new Map<string, number>();
    for (const e of p.entries.filter((x) => x.kind === 'file')) {
      if (!fileOrder.includes(e.path!)) fileOrder.push(e.path!);
      bytes.set(e.path!, (bytes.get(e.path!) ?? 0) + e.length);
    }
    assert.deepEqual(fileOrder, files);
    for (const f of files) assert.equal(bytes.get(f), (await debugfsBlocks(fx.n, f)).length * BS, f);

    const map = await versionBlockMap(lib, (await lib.catalog.resolve('disk@2')).manifest, 'disk@2');
    const plan = planProfile(p, map);
    const planned: number[] = [];
    for (const r of plan.ranges) {
      for (let b = Math.floor(r.offset / BS); b * BS < r.offset + r.length; b++) planned.push(b);
    }
    // oracle: debugfs icheck on N+1 names the inode of every planned block; the regular files among them
    const owners = await icheck(fx.n1, planned);
    const wantInodes = new Map<number, string>();
    for (const f of files) wantInodes.set(await inodeOf(fx.n1, f), f);
    const fileInodes = new Set<number>();
    for (const ino of owners.values()) {
      if (ino === undefined) continue;
      const type = /Type: (\w+)/.exec(await run('debugfs', ['-R', `stat <${ino}>`, fx.n1]))?.[1];
      // inodes below 11 are ext4's reserved ones (7 the resize inode's GDT blocks, 8 the journal)
      if (type === 'regular' && ino >= 11) fileInodes.add(ino);
    }
    assert.deepEqual(
      [...fileInodes].sort(),
      [...wantInodes.keys()].sort(),
      'the only files prefetched are the three read',
    );
    // every block of each file in N+1 is planned, and the files come in the order they were read
    const firstAt = [];
    for (const f of files) {
      const blocks = await debugfsBlocks(fx.n1, f);
      for (const b of blocks) assert.ok(planned.includes(b), `${f}: block ${b} planned`);
      firstAt.push(planned.indexOf(blocks[0]));
    }
    assert.deepEqual(
      [...firstAt].sort((a, b) => a - b),
      firstAt,
      `files planned in read order (${firstAt})`,
    );
    assert.equal(plan.missing, 0);
  });
});
