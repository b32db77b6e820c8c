import { readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import type { ByteRange, OwnedRange } from '../types.js';
import { type BlockMap, EH, type Run, rootExtentRuns } from './block-map.js';
import { type ExtContext, groupFirstBlock, inodeTableBlocks } from './context.js';
import { BG, descPerBlock } from './group-desc.js';
import { checkInode, type ExtNode, FL, IND_BLOCK, INODE, type InodeTable, isFastSymlink } from './inode.js';
import { COMPAT, groupHasSuper, INCOMPAT, RO_COMPAT, type Superblock } from './superblock.js';

/** The resize inode (its double-indirect block lists the reserved GDT blocks). */
const RESIZE_INO = 7;

/** Push a byte range onto a sorted list, merging with the previous one when touching. */
export function pushRange(out: ByteRange[], offset: number, length: number): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.offset + last.length >= offset) {
    const end = Math.max(last.offset + last.length, offset + length);
    last.length = end - last.offset;
  } else out.push({ offset, length });
}

/**
 * The runs of set bits among the first `bits` bits of a bitmap (bit i is bit i%8 of byte
 * i/8, as ext stores block and inode bitmaps): `emit(first, end)` per run, in order.
 */
export function bitmapRuns(bm: Uint8Array, bits: number, emit: (first: number, end: number) => void): void {
  let runStart = -1;
  const nbytes = Math.ceil(bits / 8);
  for (let byte = 0; byte < nbytes; byte++) {
    const x = bm[byte];
    const base = byte * 8;
    if (x === 0xff && base + 8 <= bits) {
      if (runStart < 0) runStart = base;
      continue;
    }
    if (x === 0 && base + 8 <= bits) {
      if (runStart >= 0) {
        emit(runStart, base);
        runStart = -1;
      }
      continue;
    }
    for (let k = 0; k < 8 && base + k < bits; k++) {
      if ((x >> k) & 1) {
        if (runStart < 0) runStart = base + k;
      } else if (runStart >= 0) {
        emit(runStart, base + k);
        runStart = -1;
      }
    }
  }
  if (runStart >= 0) emit(runStart, bits);
}

/** gdt_csum or metadata_csum: the uninit flags and bg_itable_unused are to be believed. */
function groupCsum(sb: Superblock): boolean {
  return (sb.roCompat & (RO_COMPAT.GDT_CSUM | RO_COMPAT.METADATA_CSUM)) !== 0;
}

/** Blocks of group g's superblock/GDT copies (and reserved GDT), as [block, count, kind] triples. */
export function groupSuperAndGdt(ctx: ExtContext, g: number): Array<[number, number, string]> {
  const sb = ctx.sb;
  const out: Array<[number, number, string]> = [];
  const dpb = descPerBlock(sb);
  const gdtBlocks = Math.ceil(ctx.groupCount / dpb);
  const start = groupFirstBlock(sb, g);
  const metaBg = (sb.incompat & INCOMPAT.META_BG) !== 0;
  const hasSuper = groupHasSuper(sb, g);
  let blk = start;
  if (hasSuper) {
    out.push([blk, 1, 'superblock']);
    blk++;
    const old = metaBg ? Math.min(sb.firstMetaBg, gdtBlocks) : gdtBlocks;
    if (old > 0) out.push([blk, old, 'group-descriptors']);
    blk += old;
    if (sb.reservedGdtBlocks) out.push([blk, sb.reservedGdtBlocks, 'reserved-gdt']);
  }
  if (metaBg) {
    // a meta group's descriptor block sits in its first, second and last group
    const mg = Math.floor(g / dpb);
    const r = g % dpb;
    if (mg >= sb.firstMetaBg && (r === 0 || r === 1 || r === dpb - 1)) {
      out.push([start + (hasSuper ? 1 : 0), 1, 'group-descriptors']);
    }
  }
  return out;
}

/**
 * The allocated bytes of the volume: the block bitmaps' set bits (clusters with bigalloc),
 * and for BLOCK_UNINIT groups the group's own metadata, clipped to the file system's end.
 */
export async function allocation(ctx: ExtContext): Promise<ByteRange[]> {
  const sb = ctx.sb;
  const bs = sb.blockSize;
  const ratio = sb.clusterSize / bs;
  const csum = groupCsum(sb);
  const out: ByteRange[] = [];
  const fsEnd = sb.blocksCount * bs;
  pushRange(out, 0, sb.firstDataBlock * bs);
  // where each group's own bitmaps and inode table sit, bucketed by the group that holds them
  const itBlocks = inodeTableBlocks(sb);
  const placed = new Map<number, Array<[number, number]>>();
  const place = (blk: number, count: number) => {
    const g = Math.floor((blk - sb.firstDataBlock) / sb.blocksPerGroup);
    const gEnd = Math.floor((blk + count - 1 - sb.firstDataBlock) / sb.blocksPerGroup);
    for (let h = g; h <= gEnd; h++) {
      let l = placed.get(h);
      if (!l) placed.set(h, (l = []));
      l.push([blk, count]);
    }
  };
  for (const d of ctx.groups) {
    place(d.blockBitmap, 1);
    place(d.inodeBitmap, 1);
    place(d.inodeTable, itBlocks);
  }
  const cpg = sb.clustersPerGroup;
  for (let g = 0; g < ctx.groupCount; g++) {
    const d = ctx.groups[g];
    const gStart = groupFirstBlock(sb, g);
    const gEnd = Math.min(sb.blocksCount, gStart + sb.blocksPerGroup);
    if (csum && d.flags & BG.BLOCK_UNINIT) {
      const blocks: Array<[number, number]> = [];
      for (const [b, c] of groupSuperAndGdt(ctx, g)) blocks.push([b, c]);
      for (const [b, c] of placed.get(g) ?? []) blocks.push([b, c]);
      blocks.sort((a, b) => a[0] - b[0]);
      for (const [b, c] of blocks) {
        // round to clusters
        const s = Math.max(gStart, Math.floor(b / ratio) * ratio);
        const e = Math.min(gEnd, Math.ceil((b + c) / ratio) * ratio);
        if (e > s) pushRange(out, s * bs, (e - s) * bs);
      }
      continue;
    }
    const structure = `ext block bitmap of group ${g}`;
    const bm = await readExact(ctx.meta, d.blockBitmap * bs, bs, structure);
    const bits = Math.min(cpg, Math.ceil((gEnd - gStart) / ratio));
    bitmapRuns(bm, bits, (i0, i1) => {
      const s = (gStart + i0 * ratio) * bs;
      const e = Math.min((gStart + i1 * ratio) * bs, gEnd * bs);
      pushRange(out, s, e - s);
    });
  }
  // never claim bytes past the file system's end
  const clipped: ByteRange[] = [];
  for (const r of out) {
    const e = Math.min(r.offset + r.length, fsEnd);
    if (e > r.offset) clipped.push({ offset: r.offset, length: e - r.offset });
  }
  return clipped;
}

/** A regular file mapped by extents whose tree is all in i_block (depth 0), from its on-disk bytes. */
function isRootMappedFile(raw: Uint8Array): boolean {
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const flags = v.getUint32(INODE.flags, true);
  return (
    (v.getUint16(INODE.mode, true) & 0xf000) === 0x8000 &&
    (flags & FL.EXTENTS) !== 0 &&
    (flags & FL.INLINE_DATA) === 0 &&
    v.getUint16(INODE.block + EH.depth, true) === 0
  );
}

function mergeBlocks(sorted: number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const b of sorted) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === b) last[1]++;
    else out.push([b, 1]);
  }
  return out;
}

/**
 * Every metadata structure with its owner: boot sector, superblocks, descriptor tables,
 * bitmaps and inode tables per group; then, per in-use inode (inode bitmaps, bg_itable_unused
 * believed where checksummed), its xattr block, extent-tree or indirect blocks, and the data
 * of directories, the journal and the other reserved inodes. Inodes that fail to parse are
 * a warning, not an end.
 */
export async function* metadataRegions(ctx: ExtContext, inodes: InodeTable, map: BlockMap): AsyncIterable<OwnedRange> {
  const sb = ctx.sb;
  const bs = sb.blockSize;
  yield { offset: 0, length: 1024, kind: 'reserved', detail: 'boot sector' };
  yield { offset: 1024, length: Math.max(1024, bs - 1024), kind: 'superblock', detail: 'primary' };
  const itBlocks = inodeTableBlocks(sb);
  for (let g = 0; g < ctx.groupCount; g++) {
    for (const [b, c, kind] of groupSuperAndGdt(ctx, g)) {
      if (g === 0 && kind === 'superblock') continue;
      yield { offset: b * bs, length: c * bs, kind, detail: `group ${g}` };
    }
    const d = ctx.groups[g];
    yield { offset: d.blockBitmap * bs, length: bs, kind: 'block-bitmap', detail: `group ${g}` };
    yield { offset: d.inodeBitmap * bs, length: bs, kind: 'inode-bitmap', detail: `group ${g}` };
    yield {
      offset: d.inodeTable * bs,
      length: itBlocks * bs,
      kind: 'inode-table',
      detail: `group ${g}`,
      inodes: { first: g * sb.inodesPerGroup + 1, size: sb.inodeSize },
    };
  }
  // per-inode structures
  const xattrBlocks = new Set<number>();
  const journal = sb.compat & COMPAT.HAS_JOURNAL ? sb.journalInum : 0;
  const csum = groupCsum(sb);
  for (let g = 0; g < ctx.groupCount; g++) {
    const d = ctx.groups[g];
    if (csum && d.flags & BG.INODE_UNINIT) continue;
    const bm = await readExact(ctx.meta, d.inodeBitmap * bs, bs, `ext inode bitmap of group ${g}`);
    let used = sb.inodesPerGroup;
    if (csum) used = Math.max(0, sb.inodesPerGroup - d.itableUnused);
    for (let i = 0; i < used; i++) {
      if (bm[i >> 3] === 0 && (i & 7) === 0) {
        i += 7;
        continue;
      }
      if (!((bm[i >> 3] >> (i & 7)) & 1)) continue;
      const ino = g * sb.inodesPerGroup + i + 1;
      if (ino > sb.inodesCount) break;
      // most inodes are regular files whose extent tree sits whole in i_block: they own no
      // metadata here but an xattr block, and are read from their inode-table piece as it is
      // (the walk decodes them; a second decode and map was ~14 KB allocated an inode)
      const quick = ino >= sb.firstIno && ino !== journal ? inodes.rawNow(ino) : undefined;
      if (quick && isRootMappedFile(quick.raw)) {
        const { raw, at } = quick;
        const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
        try {
          checkInode(ctx, ino, raw, at, v); // the checks (and warnings) of a decode
        } catch (e) {
          if (e instanceof StrataError) {
            ctx.warn(`metadata scan: ${e.message}`);
            continue;
          }
          throw e;
        }
        if (v.getUint16(INODE.linksCount, true) === 0) continue;
        const fileAcl = v.getUint32(INODE.fileAclLo, true) + v.getUint16(INODE.fileAclHigh, true) * 2 ** 32;
        if (fileAcl && !xattrBlocks.has(fileAcl) && fileAcl < sb.blocksCount) {
          xattrBlocks.add(fileAcl);
          yield { offset: fileAcl * bs, length: bs, kind: 'xattr-block', detail: `inode ${ino}`, ino };
        }
        try {
          rootExtentRuns(ctx, ino, raw, at); // the checks (and errors) of its map
        } catch (e) {
          if (e instanceof StrataError) ctx.warn(`metadata scan: ${e.message}`);
          else throw e;
        }
        continue;
      }
      let n: ExtNode;
      try {
        n = await inodes.node(ino);
      } catch (e) {
        if (e instanceof StrataError) {
          ctx.warn(`metadata scan: ${e.message}`);
          continue;
        }
        throw e;
      }
      if (n.links === 0 && ino >= sb.firstIno) continue;
      if (n.fileAcl && !xattrBlocks.has(n.fileAcl) && n.fileAcl < sb.blocksCount) {
        xattrBlocks.add(n.fileAcl);
        yield { offset: n.fileAcl * bs, length: bs, kind: 'xattr-block', detail: `inode ${ino}`, ino };
      }
      if (ino === RESIZE_INO) {
        // resize inode: its double-indirect block (the reserved GDT blocks are listed per group)
        const dind = new DataView(n.raw.buffer, n.raw.byteOffset).getUint32(INODE.block + (IND_BLOCK + 1) * 4, true);
        if (dind && dind < sb.blocksCount) yield { offset: dind * bs, length: bs, kind: 'resize-inode', ino };
        continue;
      }
      if (n.flags & FL.INLINE_DATA || n.pub.type === 'char' || n.pub.type === 'block') continue;
      if (n.pub.type === 'fifo' || n.pub.type === 'socket' || isFastSymlink(ctx, n)) continue;
      const tree: number[] = [];
      let runs: Run[];
      try {
        runs = await map.runs(n, tree);
      } catch (e) {
        if (e instanceof StrataError) {
          ctx.warn(`metadata scan: ${e.message}`);
          continue;
        }
        throw e;
      }
      const treeKind = n.flags & FL.EXTENTS ? 'extent-tree' : 'indirect-block';
      tree.sort((a, b) => a - b);
      for (const r of mergeBlocks(tree)) {
        yield { offset: r[0] * bs, length: r[1] * bs, kind: treeKind, detail: `inode ${ino}`, ino };
      }
      let kind: string | undefined;
      if (ino === journal) kind = 'journal';
      else if (n.pub.type === 'dir') kind = 'directory';
      else if (ino < sb.firstIno && ino !== 2) kind = 'reserved-inode';
      if (kind) {
        for (const r of runs) {
          yield { offset: r.pblk * bs, length: r.len * bs, kind, detail: `inode ${ino}`, ino };
        }
      }
    }
  }
}
