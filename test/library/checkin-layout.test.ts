import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { test } from 'node:test';
import { closeChain } from '../../src/formats/layer.js';
import { openImage } from '../../src/formats/open.js';
import { type BlobSink, checkin, cutImage } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { encodeManifest } from '../../src/library/manifest.js';
import { mbrDisk } from '../helpers/volume-images.js';
import { baseTree, extImageOf, tempDir } from './images.js';

/**
 * Issue 22: a local check-in keeps its chunks and ranges in typed arrays and writes the layout
 * manifest's JSON straight from them (no object form, no giant string). Its bytes must be what
 * JSON.stringify of the object form gives (the remote check-in's cutImage, and every check-in
 * before), so that the same image keeps the same manifest digest. Both are cut from the same
 * image here and compared byte for byte; the layout's invariants are checked against the
 * chunks' own bytes (each chunk's digest is the sha256 of what the sink was given).
 */
class MemorySink implements BlobSink {
  readonly blobs = new Map<string, Uint8Array>();
  async put(_type: 'data' | 'tree', plain: Uint8Array, digest?: string) {
    const d = digest ?? createHash('sha256').update(plain).digest('hex');
    const added = !this.blobs.has(d);
    if (added) this.blobs.set(d, Buffer.from(plain));
    return { digest: d, added };
  }
}

async function compare(image: string, name: string): Promise<void> {
  const dir = tempDir(`checkin-layout-${name}`);
  const lib = await Library.open(path.join(dir, 'lib'));
  try {
    const r = await checkin(lib, image, { name, inspect: false });
    const stored = await lib.store.withBlob(r.manifest, (plain) => Buffer.from(plain));
    const img = await openImage(image);
    const sink = new MemorySink();
    let cut: Awaited<ReturnType<typeof cutImage>>;
    try {
      cut = await cutImage(img, image, sink);
    } finally {
      await closeChain(img);
    }
    const encoded = Buffer.from(encodeManifest(cut.layout));
    assert.equal(encoded.length, stored.length, 'layout manifest length');
    assert.ok(encoded.equals(stored), 'the written layout manifest is JSON.stringify of its object form');
    assert.equal(createHash('sha256').update(encoded).digest('hex'), r.manifest);
    const { chunks, chunkLengths, ranges } = cut.layout;
    assert.ok(chunks.length > 3 && ranges.disk.length >= chunks.length - 1, `${chunks.length} chunks`);
    assert.equal(r.chunks, chunks.length);
    let end = 0;
    let firstUse = 0;
    for (let i = 0; i < ranges.disk.length; i++) {
      assert.ok(ranges.disk[i] >= end, `range ${i} sorted, not overlapping`);
      end = ranges.disk[i] + ranges.length[i];
      const c = ranges.chunk[i];
      assert.ok(c <= firstUse, `range ${i}: chunks numbered by first use`);
      if (c === firstUse) firstUse++;
      const bytes = sink.blobs.get(chunks[c]);
      assert.ok(bytes, `chunk ${c} was given to the sink`);
      assert.ok(ranges.at[i] + ranges.length[i] <= bytes.length);
    }
    for (const [k, d] of chunks.entries()) {
      const bytes = sink.blobs.get(d) as Uint8Array;
      assert.equal(createHash('sha256').update(bytes).digest('hex'), d);
      assert.equal(chunkLengths[k], bytes.length);
    }
  } finally {
    await lib.close();
  }
}

test('layout manifest written from the compact columns equals JSON.stringify of its object form (ext4)', async () => {
  await compare(await extImageOf('ext4', await baseTree(), 'base'), 'ext');
});

test('layout manifest written from the compact columns equals JSON.stringify of its object form (MBR disk)', async () => {
  await compare((await mbrDisk()).disk, 'mbr');
});

/**
 * A layout manifest in parts (version 2): written when a layout has more chunks or ranges than
 * a part holds (here parts of 7, so a small image has dozens). Joined, the parts are exactly the
 * version 1 columns of the same image (the remote check-in's object form); checkout of the
 * version equals the image (sha256, an exact check-in); the version's disk read a part at a
 * time (what the inspection after check-in reads) equals the image at every offset; gc keeps
 * the parts (verify finds nothing missing after it) and the inspection ran.
 */
test('layout manifest in parts (version 2): joins to version 1, reads back, survives gc', async () => {
  const { gc, reachable, verifyLibrary } = await import('../../src/library/library-verbs.js');
  const { checkout } = await import('../../src/library/checkout.js');
  const { PartedVersionSource, VersionSource } = await import('../../src/library/version-source.js');
  const { getInspection } = await import('../../src/catalog/inspection.js');
  const { decodeLayoutV2Head, isLayoutHead, LAYOUT_PART_ENTRIES } = await import('../../src/library/manifest.js');
  const { readFileSync } = await import('node:fs');
  const image = await extImageOf('ext4', await baseTree(), 'base');
  const dir = tempDir('checkin-layout-v2');
  const lib = await Library.open(path.join(dir, 'lib'));
  try {
    const v1 = await checkin(lib, image, { name: 'one', exact: true });
    const r = await checkin(lib, image, { name: 'parts', exact: true, layoutPartEntries: 7 });
    assert.notEqual(r.manifest, v1.manifest);
    assert.equal(r.chunks, v1.chunks);
    assert.equal(r.usedBytes, v1.usedBytes);
    assert.ok(
      await lib.store.withBlob(v1.manifest, (p) => !isLayoutHead(p)),
      `below ${LAYOUT_PART_ENTRIES} chunks and ranges a layout stays version 1`,
    );
    const head = await lib.store.withBlob(r.manifest, (p) => {
      assert.ok(isLayoutHead(p), 'written as version 2');
      return decodeLayoutV2Head(Buffer.from(p), r.manifest);
    });
    assert.equal(head.partEntries, 7);
    assert.ok(head.parts.length > 10, `${head.parts.length} parts`);
    assert.equal(head.parts.length, Math.ceil(Math.max(head.chunkCount, head.rangeCount) / 7));
    // joined, the parts are the version 1 layout (which the remote check-in's object form equals)
    const joined = await lib.layout(r.manifest);
    const whole = await lib.layout(v1.manifest);
    assert.ok(JSON.stringify(joined) === JSON.stringify(whole), 'the joined parts encode as the version 1 layout');
    // read a part at a time: the image's bytes at every offset, the same status as the whole layout's
    const src = new PartedVersionSource(lib.store, head, (i) => lib.layoutPart(head, r.manifest, i), 'parts@1');
    const full = new VersionSource(lib.store, whole, 'one@1');
    const bytes = readFileSync(image);
    assert.equal(src.size, bytes.length);
    for (let off = 0, step = 4093; off < bytes.length; off += step, step = (step * 7) % 300_007 || 4093) {
      const got = await src.read(off, step);
      assert.ok(Buffer.from(got).equals(bytes.subarray(off, off + step)), `bytes at ${off} (+${step})`);
      assert.deepEqual(await src.status(off, step), await full.status(off, step), `status at ${off}`);
    }
    // describe walks the parts: the same counts and data bytes as the version 1 layout's
    const { describeVersion } = await import('../../src/library/library-verbs.js');
    const described = (await describeVersion(lib, r.ref)).layout as Record<string, unknown>;
    assert.deepEqual(described, (await describeVersion(lib, v1.ref)).layout);
    assert.equal(described.chunks, head.chunkCount);
    assert.equal(described.ranges, head.rangeCount);
    const ins = await getInspection(lib.catalog.db, 'parts', 1);
    const ins1 = await getInspection(lib.catalog.db, 'one', 1);
    assert.ok(ins && ins1, 'both versions were inspected');
    assert.deepEqual(ins.roots, ins1.roots);
    assert.deepEqual(ins.warnings, ins1.warnings);
    // the parts are reachable: gc keeps them, checkout still equals the image
    const need = new Set<string>();
    await reachable(lib, r.manifest, need);
    for (const p of head.parts) assert.ok(need.has(p), `part ${p} is reachable`);
    await lib.catalog.deleteVersion('one', 1);
    await gc(lib, { uploadGraceMs: 0 });
    const report = await verifyLibrary(lib);
    assert.deepEqual(report.missing, []);
    const out = path.join(dir, 'out.img');
    await checkout(lib, r.ref, out);
    assert.ok(readFileSync(out).equals(bytes), 'checkout equals the image');
  } finally {
    await lib.close();
  }
});

/**
 * A version 2 layout read a part at a time checks what one part can tell (its ranges in order,
 * inside its part of the disk, naming chunks that exist) when the part is loaded, and a range
 * that runs past the end of its chunk (whose length may sit in another part) when the chunk
 * is read: CORRUPT naming the chunk, never bytes of a neighbour or of an old buffer.
 */
test('a layout in parts read part by part: bad parts and ranges past a chunk fail with CORRUPT', async () => {
  const { PartedVersionSource } = await import('../../src/library/version-source.js');
  const { decodeLayoutPart, LAYOUT_KIND, LAYOUT_PART_KIND } = await import('../../src/library/manifest.js');
  const { createHash } = await import('node:crypto');
  const { StrataError } = await import('../../src/util/errors.js');
  const chunkA = Buffer.alloc(4096, 0xaa);
  const chunkB = Buffer.alloc(4096, 0xbb);
  const hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const blobs = new Map([
    [hex(chunkA), chunkA],
    [hex(chunkB), chunkB],
  ]);
  const store = {
    withBlob: async <T>(d: string, use: (p: Uint8Array) => T) => use(blobs.get(d) as Uint8Array),
  };
  const head = {
    kind: LAYOUT_KIND as typeof LAYOUT_KIND,
    version: 2 as const,
    virtualSize: 1 << 20,
    sourceName: 'x.img',
    sourceFormat: 'raw',
    scheme: 'none',
    exact: true,
    fileChunkSize: 1 << 20,
    diskChunkSize: 65536,
    volumes: [],
    chunkCount: 2,
    rangeCount: 3,
    partEntries: 2,
    parts: ['a'.repeat(64), 'b'.repeat(64)],
    partDisk: [0, 65536],
    warnings: [],
  };
  const part = (chunks: string[], disk: number[], length: number[], chunk: number[], at: number[]) => ({
    kind: LAYOUT_PART_KIND,
    version: 1 as const,
    chunks,
    chunkLengths: chunks.map(() => 4096),
    ranges: { disk, length, chunk, at },
  });
  const good = [
    part([hex(chunkA), hex(chunkB)], [0, 8192], [4096, 4096], [0, 1], [0, 0]),
    part([], [65536], [4096], [0], [0]),
  ];
  const open = (parts: typeof good) =>
    new PartedVersionSource(
      store,
      head,
      async (i) => decodeLayoutPart(Buffer.from(JSON.stringify(parts[i])), head, i, `part ${i}`),
      'x@1',
    );
  const src = open(good);
  const all = Buffer.from(await src.read(0, 70_000));
  assert.ok(all.subarray(0, 4096).equals(chunkA));
  assert.ok(all.subarray(4096, 8192).equals(Buffer.alloc(4096)));
  assert.ok(all.subarray(8192, 12288).equals(chunkB));
  assert.ok(all.subarray(65536, 65536 + 4096).equals(chunkA), 'a later part names an earlier part`s chunk');
  assert.equal(await src.dataBytes(), 3 * 4096);
  const corrupt = (e: unknown) => e instanceof StrataError && e.code === 'CORRUPT';
  // a range past its chunk's end: found when the chunk is read
  const past = open([good[0], part([], [65536], [4096], [0], [1])]);
  await assert.rejects(past.read(65536, 4096), corrupt);
  assert.ok(Buffer.from(await past.read(0, 4096)).equals(chunkA), 'the good part still reads');
  // a range reaching into the next part's disk, out of order, or naming no chunk: found at load
  for (const bad of [
    part([hex(chunkA), hex(chunkB)], [0, 65000], [4096, 4096], [0, 1], [0, 0]),
    part([hex(chunkA), hex(chunkB)], [8192, 0], [4096, 4096], [0, 1], [0, 0]),
    part([hex(chunkA), hex(chunkB)], [0, 8192], [4096, 4096], [0, 2], [0, 0]),
    part([hex(chunkA), 'zz'.repeat(32)], [0, 8192], [4096, 4096], [0, 1], [0, 0]),
  ]) {
    await assert.rejects(open([bad, good[1]]).read(0, 16384), corrupt);
  }
});

/**
 * Issue 22: past a number of ranges (a run) and of chunks held, a check-in sorts its ranges
 * into runs in a scratch file and keeps its chunks' digests there, merging the runs when the
 * layout is written. With runs of 5 ranges and 5 chunk records in memory (dozens of runs and
 * records read back from the file on this small image) the layout manifest is the same, byte
 * for byte, as the check-in that kept everything in memory, in version 1 and in parts; and
 * no scratch file is to be seen in the temp dir, during the check-in (they are unlinked once
 * open, so a killed check-in leaves none) or after it.
 */
test('columns spilled to a scratch file (runs of 5 ranges): the same layout manifest, scratch removed', async () => {
  const { mkdirSync, readdirSync } = await import('node:fs');
  const image = await extImageOf('ext4', await baseTree(), 'base');
  const dir = tempDir('checkin-layout-spill');
  const tmp = path.join(dir, 'tmp');
  mkdirSync(tmp);
  const before = process.env.TMPDIR;
  process.env.TMPDIR = tmp;
  const lib = await Library.open(path.join(dir, 'lib'));
  try {
    for (const layoutPartEntries of [undefined, 7]) {
      const kept = await checkin(lib, image, { name: 'kept', exact: true, layoutPartEntries, inspect: false });
      assert.deepEqual(readdirSync(tmp), [], 'nothing spilled at the default sizes');
      // the scratch files are unlinked once open: a check-in killed mid-way leaves nothing behind
      const seen = new Set<string>();
      const spilled = await checkin(lib, image, {
        name: 'spilled',
        exact: true,
        layoutPartEntries,
        spillEntries: 5,
        inspect: false,
        onProgress: () => {
          for (const f of readdirSync(tmp)) seen.add(f);
        },
      });
      assert.deepEqual([...seen], [], 'no scratch file is visible while the check-in runs');
      assert.ok(kept.chunks > 20, `${kept.chunks} chunks`);
      assert.equal(spilled.manifest, kept.manifest, `layout (parts of ${layoutPartEntries ?? 'default'})`);
      assert.equal(spilled.storedBytes, kept.storedBytes);
      assert.equal(spilled.usedBytes, kept.usedBytes);
      assert.deepEqual(readdirSync(tmp), [], 'the scratch directory is removed');
    }
    // the remote check-in's object form, from spilled columns, encodes as the stored manifest
    const img = await openImage(image);
    try {
      const cut = await cutImage(img, image, new MemorySink(), { exact: true, spillEntries: 5 });
      const r = await checkin(lib, image, { name: 'kept', exact: true, inspect: false });
      const stored = await lib.store.withBlob(r.manifest, (plain) => Buffer.from(plain));
      assert.ok(Buffer.from(encodeManifest(cut.layout)).equals(stored), 'object form from spilled columns');
    } finally {
      await closeChain(img);
    }
    assert.deepEqual(readdirSync(tmp), [], 'the scratch directory is removed');
  } finally {
    if (before === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = before;
    await lib.close();
  }
});

/**
 * Issue 22: the check-in's LIMIT estimate counts what it holds whatever the tree's size (the
 * file system's caches, the store's write buffers, the planned reads' windows) beside what
 * grows with the tree. At a budget of 16 MiB the shares sized from it (~12 MiB) leave room for
 * a small image, whose layout is then the default budget's; a 16 MiB metadata cache asked for
 * on top cannot be kept within 16 MiB: a LIMIT error naming the image, not a check-in that
 * runs past its budget.
 */
test('a check-in whose fixed shares exceed its memory budget is a LIMIT error; a small budget that fits cuts the same layout', async () => {
  const image = await extImageOf('ext4', await baseTree(), 'base');
  const cut = async (opts: Parameters<typeof cutImage>[3]) => {
    const img = await openImage(image);
    try {
      return await cutImage(img, image, new MemorySink(), { exact: true, ...opts });
    } finally {
      await closeChain(img);
    }
  };
  const whole = await cut({});
  const small = await cut({ memoryBytes: 16 << 20 });
  assert.ok(whole.layout.chunks.length > 3, `${whole.layout.chunks.length} chunks`);
  assert.equal(encodeManifest(small.layout).length, encodeManifest(whole.layout).length);
  assert.ok(Buffer.from(encodeManifest(small.layout)).equals(Buffer.from(encodeManifest(whole.layout))));
  await assert.rejects(cut({ memoryBytes: 16 << 20, fsOptions: { metadataCacheBytes: 16 << 20 } }), (e: unknown) => {
    const err = e as { code?: string; message?: string; file?: string };
    assert.equal(err.code, 'LIMIT', String(err.message));
    assert.equal(err.file, image);
    // 16 MiB of metadata cache, 1 of inode tables, the store's 1 MiB frame, 1 MiB queue, two 2 MiB packs, 4 windows of 256 KiB
    assert.match(String(err.message), /memory budget of 16 MiB .*caches and write buffers 24 MiB/);
    return true;
  });
});

/**
 * The Builder's index in a check-in: a tree whose files repeat 3 contents far apart (each
 * repeat dozens of chunks after the last), cut with a hash table of 3 chunks (so nearly every
 * repeat is found in the sorted index file, not the table) gives the same layout manifest as
 * the default table, and every chunk is given to the sink once.
 */
test('chunks seen long before are found in the sorted index: same layout, each chunk stored once', async () => {
  const { mkdirSync, writeFileSync } = await import('node:fs');
  const { run } = await import('../helpers/tools.js');
  const { bytesOf } = await import('../helpers/ext-tree.js');
  const dir = tempDir('checkin-layout-repeats');
  const tree = path.join(dir, 'tree');
  for (let d = 0; d < 6; d++) {
    mkdirSync(path.join(tree, `d${d}`), { recursive: true });
    for (let f = 0; f < 20; f++) {
      const body = f % 5 === 0 ? bytesOf(`repeat ${f % 3}`, 6000) : bytesOf(`unique ${d} ${f}`, 3000 + f * 100);
      writeFileSync(path.join(tree, `d${d}`, `f${f}`), body);
    }
  }
  const image = path.join(dir, 'repeats.img');
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, image, '16M']);
  class CountingSink extends MemorySink {
    readonly puts = new Map<string, number>();
    override async put(type: 'data' | 'tree', plain: Uint8Array, digest?: string) {
      const r = await super.put(type, plain, digest);
      if (type === 'data') this.puts.set(r.digest, (this.puts.get(r.digest) ?? 0) + 1);
      return r;
    }
  }
  const cut = async (spillEntries?: number) => {
    const img = await openImage(image);
    const sink = new CountingSink();
    try {
      return { cut: await cutImage(img, image, sink, { spillEntries }), sink };
    } finally {
      await closeChain(img);
    }
  };
  const whole = await cut();
  const small = await cut(3);
  assert.ok(whole.sink.puts.size > 0);
  assert.ok(whole.cut.layout.chunks.length > 60, `${whole.cut.layout.chunks.length} chunks`);
  assert.ok(Buffer.from(encodeManifest(small.cut.layout)).equals(Buffer.from(encodeManifest(whole.cut.layout))));
  assert.equal(new Set(small.cut.layout.chunks).size, small.cut.layout.chunks.length, 'each digest once in the layout');
  for (const [d, n] of small.sink.puts) assert.equal(n, 1, `chunk ${d} given to the sink ${n} times`);
  // the repeats (each file one extent): 12, 6 and 6 files of one chunk each
  const uses = (r: number) => {
    const k = small.cut.layout.chunks.indexOf(
      createHash('sha256')
        .update(bytesOf(`repeat ${r}`, 6000))
        .digest('hex'),
    );
    assert.ok(k >= 0, `repeat ${r} in the layout`);
    return small.cut.layout.ranges.chunk.filter((c) => c === k).length;
  };
  assert.deepEqual([uses(0), uses(1), uses(2)], [12, 6, 6]);
});
