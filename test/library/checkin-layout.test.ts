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
