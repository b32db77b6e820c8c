import { readExact } from '../../io/byte-source.js';
import type { FileExtent } from '../types.js';
import type { BlockMap, Run } from './block-map.js';
import type { ExtContext } from './context.js';
import { type ExtNode, FL, I_BLOCK_SIZE, INODE, type InodeTable, isFastSymlink } from './inode.js';
import { inlineData, systemDataLocation } from './xattr.js';

/** File reads up to this size go through the metadata block cache. */
const SMALL_READ = 32 * 1024;
/** Reads in flight per request. */
const READS_IN_FLIGHT = 16;

/**
 * Bytes [offset, offset+length) of a file, cut at its size: inline data, a fast symlink's
 * i_block, or its runs (holes and unwritten extents read as zeros).
 */
export async function readData(
  ctx: ExtContext,
  map: BlockMap,
  n: ExtNode,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  const end = Math.min(n.size, offset + length);
  if (offset >= end) return new Uint8Array(0);
  if (n.flags & FL.INLINE_DATA) {
    const all = inlineData(ctx, n);
    const out = new Uint8Array(end - offset);
    out.set(all.subarray(Math.min(offset, all.length), Math.min(end, all.length)));
    return out;
  }
  if (isFastSymlink(ctx, n)) {
    const out = new Uint8Array(end - offset);
    out.set(n.raw.subarray(INODE.block + offset, INODE.block + end));
    return out;
  }
  const runs = await map.runs(n);
  const bs = ctx.blockSize;
  const out = new Uint8Array(end - offset);
  // binary search the first run that ends after `offset`
  const firstBlk = Math.floor(offset / bs);
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (runs[mid].lblk + runs[mid].len <= firstBlk) lo = mid + 1;
    else hi = mid;
  }
  const reads: Promise<void>[] = [];
  for (let i = lo; i < runs.length; i++) {
    const r = runs[i];
    const rs = r.lblk * bs;
    if (rs >= end) break;
    if (r.unwritten) continue;
    const s = Math.max(rs, offset);
    const e = Math.min(rs + r.len * bs, end);
    if (e <= s) continue;
    const vol = r.pblk * bs + (s - rs);
    // small pieces go through the block cache (neighbouring small files share its blocks)
    const via = e - s <= SMALL_READ ? ctx.meta : ctx.volume;
    reads.push(
      readExact(via, vol, e - s, `ext inode ${n.ino} data`).then((b) => {
        out.set(b, s - offset);
      }),
    );
    if (reads.length >= READS_IN_FLIGHT) {
      await Promise.all(reads);
      reads.length = 0;
    }
  }
  await Promise.all(reads);
  return out;
}

/**
 * Where a file's bytes lie on the volume: runs merged where contiguous, unwritten ones
 * marked; inline data and fast symlinks as `inline` pieces of the inode.
 */
export async function* fileExtents(
  ctx: ExtContext,
  map: BlockMap,
  table: InodeTable,
  ino: number,
): AsyncGenerator<FileExtent> {
  const n = await table.node(ino);
  yield* extentsOf(ctx, n, needsRuns(ctx, n) ? await map.runs(n) : []);
}

/**
 * fileExtents without I/O or awaits, when the inode and its runs are at hand (a cached
 * inode-table piece, a depth-0 extent tree: nearly every file of a walk); else undefined.
 */
export function fileExtentsNow(
  ctx: ExtContext,
  map: BlockMap,
  table: InodeTable,
  ino: number,
): FileExtent[] | undefined {
  const n = table.nodeNow(ino);
  if (!n) return undefined;
  if (!needsRuns(ctx, n)) return extentsOf(ctx, n, []);
  const runs = map.runsNow(n);
  return runs && extentsOf(ctx, n, runs);
}

/** Whether a file's extents come from its runs (not inline data, a fast symlink or a device). */
function needsRuns(ctx: ExtContext, n: ExtNode): boolean {
  if (n.size === 0 || n.flags & FL.INLINE_DATA || isFastSymlink(ctx, n)) return false;
  return n.pub.type !== 'char' && n.pub.type !== 'block';
}

function extentsOf(ctx: ExtContext, n: ExtNode, runs: readonly Run[]): FileExtent[] {
  const out: FileExtent[] = [];
  if (n.size === 0) return out;
  if (n.flags & FL.INLINE_DATA || isFastSymlink(ctx, n)) {
    const inBody = Math.min(n.size, I_BLOCK_SIZE);
    out.push({ fileOffset: 0, length: inBody, volumeOffset: n.at + INODE.block, inline: true });
    if (n.size > I_BLOCK_SIZE) {
      // the rest lives in the system.data xattr of the inode body
      const loc = systemDataLocation(n);
      out.push({ fileOffset: I_BLOCK_SIZE, length: n.size - I_BLOCK_SIZE, volumeOffset: loc ?? n.at, inline: true });
    }
    return out;
  }
  if (n.pub.type === 'char' || n.pub.type === 'block') return out;
  const bs = ctx.blockSize;
  let cur: FileExtent | undefined;
  for (const r of runs) {
    const fo = r.lblk * bs;
    if (fo >= n.size) break;
    const len = Math.min(r.len * bs, n.size - fo);
    const vo = r.pblk * bs;
    if (
      cur &&
      !!cur.unwritten === r.unwritten &&
      cur.fileOffset + cur.length === fo &&
      cur.volumeOffset + cur.length === vo
    ) {
      cur.length += len;
      continue;
    }
    if (cur) out.push(cur);
    cur = { fileOffset: fo, length: len, volumeOffset: vo };
    if (r.unwritten) cur.unwritten = true;
  }
  if (cur) out.push(cur);
  return out;
}
