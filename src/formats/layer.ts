import { type ByteSource, clampStatus, type Extent, pushExtent, statusOf } from '../io/byte-source.js';
import { StrataError } from '../util/errors.js';
import type { DirectPiece, DiskImage } from './types.js';

/**
 * Fill `out[at, at+length)` with what lies beneath this layer at virtual `offset`: the
 * backing image's bytes (zeros past its end), or zeros when there is no backing.
 */
export async function readBelow(
  backing: ByteSource | undefined,
  offset: number,
  length: number,
  out: Uint8Array,
  at: number,
): Promise<void> {
  if (!backing || offset >= backing.size) {
    out.fill(0, at, at + length);
    return;
  }
  const n = Math.min(length, backing.size - offset);
  let got: number;
  if (backing.readInto) {
    // Straight into the caller's buffer: no fresh buffer (and its page faults) per read.
    got = await backing.readInto(offset, out.subarray(at, at + n));
  } else {
    const b = await backing.read(offset, n);
    got = Math.min(n, b.length);
    out.set(b.subarray(0, got), at);
  }
  if (got < length) out.fill(0, at + got, at + length);
}

/**
 * Push the status of `length` bytes of a host file at `host` (a format's data cluster or
 * flat extent), placed at virtual `virt`: `data` where the file holds bytes, `zero` over
 * its holes (SEEK_HOLE, see io/native.ts) and past its end, both of which read as zeros.
 */
export async function pushHostStatus(
  out: Extent[],
  file: ByteSource,
  host: number,
  length: number,
  virt: number,
): Promise<void> {
  const inFile = Math.max(0, Math.min(length, file.size - host));
  if (inFile > 0) {
    for (const e of await statusOf(file, host, inFile)) {
      pushExtent(out, virt + (e.offset - host), e.length, e.kind === 'data' ? 'data' : 'zero');
    }
  }
  pushExtent(out, virt + inFile, length - inFile, 'zero');
}

/**
 * Status through the whole chain: 'unallocated' ranges are asked of the backing image;
 * what nothing holds is 'zero'. The result only has 'data' and 'zero' kinds.
 */
export async function resolvedStatus(img: DiskImage, offset: number, length: number, depth = 0): Promise<Extent[]> {
  if (depth > 64) throw new StrataError('LOOP', 'backing chain deeper than 64', { file: img.name });
  const n = clampStatus(img, offset, length);
  const out: Extent[] = [];
  for (const e of await img.status(offset, n)) {
    if (e.kind !== 'unallocated') {
      pushExtent(out, e.offset, e.length, e.kind);
      continue;
    }
    const b = img.backing;
    const inB = b ? Math.max(0, Math.min(e.length, b.size - e.offset)) : 0;
    if (b && inB > 0) {
      for (const s of await resolvedStatus(b, e.offset, inB, depth + 1)) pushExtent(out, s.offset, s.length, s.kind);
    }
    pushExtent(out, e.offset + inB, e.length - inB, 'zero');
  }
  return out;
}

/** Walk the chain from top to bottom. */
export function* chain(img: DiskImage): Generator<DiskImage> {
  let cur: DiskImage | undefined = img;
  let n = 0;
  while (cur && n++ < 1000) {
    yield cur;
    cur = cur.backing;
  }
}

/** Close an image and everything below it. */
export async function closeChain(img: DiskImage): Promise<void> {
  for (const layer of [...chain(img)]) await layer.close();
}

/** Append a piece, merged with the last one when they continue each other. */
export function pushDirect(out: DirectPiece[], p: DirectPiece): void {
  if (p.length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.kind === p.kind && last.offset + last.length === p.offset) {
    if (last.kind !== 'file') {
      last.length += p.length;
      return;
    }
    if (p.kind === 'file' && last.fd === p.fd && last.host + last.length === p.host) {
      last.length += p.length;
      return;
    }
  }
  out.push({ ...p });
}

/**
 * The pieces of [offset, offset+length) beneath a layer, appended to `out`: the backing
 * image's (zeros past its end), zeros without a backing image, and 'other' where the
 * backing image cannot say.
 */
export async function directBelow(
  backing: DiskImage | undefined,
  offset: number,
  length: number,
  out: DirectPiece[],
): Promise<void> {
  const inB = backing ? Math.max(0, Math.min(length, backing.size - offset)) : 0;
  if (backing && inB > 0) {
    if (backing.direct) for (const p of await backing.direct(offset, inB)) pushDirect(out, p);
    else pushDirect(out, { kind: 'other', offset, length: inB });
  }
  pushDirect(out, { kind: 'zero', offset: offset + inB, length: length - inB });
}
