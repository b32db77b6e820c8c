import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { DiskImage } from '../../src/formats/types.js';

const MiB = 1024 * 1024;

/**
 * sha256 of a whole virtual disk read through Strata in 4 MiB requests (every read must be
 * full length), checked against the same disk read through readInto.
 */
export async function imageSha(img: DiskImage): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < img.size; off += 4 * MiB) {
    const n = Math.min(4 * MiB, img.size - off);
    const b = await img.read(off, n);
    assert.equal(b.length, n, `short read at ${off}`);
    h.update(b);
  }
  const sha = h.digest('hex');
  assert.equal(await readIntoSha(img), sha, 'readInto into a junk-filled buffer equals read');
  return sha;
}

/**
 * sha256 of the whole disk through readInto, one reused buffer full of junk and an odd
 * size (unaligned reads), as convert uses it: it must equal what read() gives.
 */
export async function readIntoSha(img: DiskImage, bufferSize = 3 * MiB + 512): Promise<string> {
  assert.ok(img.readInto, `${img.format} offers readInto`);
  const h = createHash('sha256');
  const buf = Buffer.alloc(bufferSize, 0xee);
  for (let off = 0; off < img.size; ) {
    buf.fill(0xee);
    const n = await img.readInto(off, buf);
    assert.equal(n, Math.min(buf.length, img.size - off), `readInto at ${off}`);
    h.update(buf.subarray(0, n));
    off += n;
  }
  return h.digest('hex');
}
