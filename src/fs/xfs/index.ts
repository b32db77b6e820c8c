import type { ByteSource } from '../../io/byte-source.js';
import { readExact } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { GenCache } from '../../util/gen-cache.js';
import type {
  ByteRange,
  DirEntry,
  ExtentOptions,
  FileExtent,
  FileSystem,
  FsDriver,
  FsInfo,
  Inode,
  OwnedRange,
} from '../types.js';
import { resolvePath } from '../walk.js';
import { type AgHeaders, readAgHeaders } from './ag.js';
import { readAttrs } from './attr.js';
import { type Bmap, forkExtents } from './bmbt.js';
import { XfsContext } from './context.js';
import { blockEntries, shortformEntries } from './dir.js';
import { cntbtBlocks, freeExtents } from './freesp.js';
import { chunkInodeUsed, finobtBlocks, inodeChunks } from './inobt.js';
import { DIFLAG, DIFLAG2, FMT, parseInode, type XfsInode } from './inode.js';
import { type LogState, readLogState } from './log.js';
import { type Refcount, refcounts, rmapbtBlocks } from './refcount.js';
import {
  featureNames,
  formatUuid,
  INCOMPAT,
  INCOMPAT_SUPPORTED,
  incompatName,
  parseSuperblock,
  RO_COMPAT,
  SB_CRC_OFF,
  type Superblock,
} from './superblock.js';
import { readSymlink } from './symlink.js';

const INODE_CACHE = 8192;
const MAP_CACHE = 512;
const DIR_CACHE_ENTRIES = 400_000;
/** Inodes are read and kept in pieces of this size (an inode chunk of 64 x 512 bytes is 32 KiB). */
const PIECE = 64 * 1024;

function pushRange(out: ByteRange[], offset: number, length: number): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.offset + last.length >= offset) {
    last.length = Math.max(last.offset + last.length, offset + length) - last.offset;
  } else out.push({ offset, length });
}

/** A read-only XFS (v4 and v5) file system. */
export class XfsFileSystem implements FileSystem {
  readonly kind = 'xfs';
  readonly blockSize: number;
  readonly warnings: string[];
  private readonly ctx: XfsContext;
  private readonly sb: Superblock;
  private readonly agCache = new Map<number, Promise<AgHeaders>>();
  private readonly inodeCache = new GenCache<number, XfsInode>(INODE_CACHE / 2);
  private readonly mapCache = new GenCache<number, Bmap[]>(MAP_CACHE / 2);
  private readonly pieces = new GenCache<number, Uint8Array>(128);
  private readonly piecePending = new Map<number, Promise<Uint8Array>>();
  private readonly dirCache = new Map<number, Map<string, DirEntry>>();
  private dirCacheEntries = 0;
  private readonly refcountCache = new Map<number, Promise<Refcount[]>>();
  private log?: LogState;

  private constructor(
    readonly volume: ByteSource,
    ctx: XfsContext,
  ) {
    this.ctx = ctx;
    this.sb = ctx.sb;
    this.blockSize = ctx.bs;
    this.warnings = ctx.warnings;
  }

  static async open(volume: ByteSource): Promise<XfsFileSystem> {
    const head = await readExact(volume, 0, Math.min(512, volume.size), 'xfs superblock');
    const sect = head.length >= 0x68 ? (head[0x66] << 8) | head[0x67] : 512;
    const ss = sect >= 512 && sect <= 32768 && (sect & (sect - 1)) === 0 ? sect : 512;
    const raw = ss === 512 ? head : await readExact(volume, 0, ss, 'xfs superblock');
    const sb = parseSuperblock(raw, volume.name, 0);
    const unknown = sb.incompat & ~INCOMPAT_SUPPORTED;
    if (unknown) {
      const names: string[] = [];
      for (let b = 1; b < 2 ** 31; b *= 2) if (unknown & b) names.push(incompatName(b));
      throw new StrataError('UNSUPPORTED', `incompatible XFS feature(s) not supported: ${names.join(', ')}`, {
        file: volume.name,
        structure: 'xfs superblock',
        offset: 0xd8,
      });
    }
    const ctx = new XfsContext(volume, sb);
    const fs = new XfsFileSystem(volume, ctx);
    await fs.init();
    return fs;
  }

  private async init(): Promise<void> {
    const sb = this.sb;
    const ctx = this.ctx;
    if (ctx.crc) ctx.verify(sb.raw, SB_CRC_OFF, 'xfs superblock', 0);
    if (sb.inProgress) this.ctx.warn('the superblock says mkfs did not finish (sb_inprogress)');
    if (sb.incompat & INCOMPAT.NEEDSREPAIR) this.ctx.warn('the file system is marked as needing xfs_repair');
    if (sb.dblocks * sb.blockSize > this.volume.size) {
      this.ctx.warn(
        `the file system claims ${sb.dblocks * sb.blockSize} bytes but the volume has ${this.volume.size}; reads past the end will fail`,
      );
    }
    if (sb.rblocks > 0) this.ctx.warn('the file system has a realtime device, which this reader does not read');
    // the root inode must be a directory
    await this.root();
    this.log = await readLogState(ctx).catch((e: unknown) => {
      if (!(e instanceof StrataError)) throw e;
      ctx.warn(`the log could not be read: ${e.message}`);
      return undefined;
    });
    if (this.log?.state === 'dirty') {
      ctx.warn('the log is dirty: it holds transactions that were not replayed, recent changes may be missing');
    }
    if (!this.log?.internal && sb.logStart === 0) ctx.warn('the log is on an external device, which was not given');
  }

  private ag(agno: number): Promise<AgHeaders> {
    let p = this.agCache.get(agno);
    if (!p) {
      p = readAgHeaders(this.ctx, agno);
      this.agCache.set(agno, p);
    }
    return p;
  }

  // ---------------------------------------------------------------- inodes

  /** Volume offset of an inode (NOT_FOUND when the number points outside the AGs). */
  private inodeAt(ino: number): number {
    const sb = this.sb;
    const where = this.ctx.where('xfs inode');
    if (!Number.isSafeInteger(ino) || ino < 0) throw new StrataError('NOT_FOUND', `inode ${ino} is invalid`, where);
    const agno = Math.floor(ino / 2 ** this.ctx.inoAgShift);
    const agino = ino - agno * 2 ** this.ctx.inoAgShift;
    const agbno = Math.floor(agino / sb.inopBlock);
    const idx = agino % sb.inopBlock;
    if (agno >= sb.agCount || agbno >= sb.agBlocks || agno * sb.agBlocks + agbno >= sb.dblocks) {
      throw new StrataError('NOT_FOUND', `inode ${ino} lies outside the file system`, where);
    }
    return this.ctx.agbOffset(agno, agbno) + idx * sb.inodeSize;
  }

  /**
   * The inode when it is cached or its 64 KiB piece of inode chunk is in memory (no I/O, no
   * await), else undefined. Throws like node() for bad numbers and bad inodes.
   */
  private nodeNow(ino: number): XfsInode | undefined {
    const hit = this.inodeCache.get(ino);
    if (hit) return hit;
    const at = this.inodeAt(ino);
    const ps = at - (at % PIECE);
    const piece = this.pieces.get(ps);
    if (!piece) return undefined;
    if (at + this.sb.inodeSize > ps + piece.length) {
      throw new StrataError(
        'TRUNCATED',
        'the inode lies past the end of the volume',
        this.ctx.where(`xfs inode ${ino}`, at),
      );
    }
    const n = parseInode(this.ctx, ino, piece.slice(at - ps, at - ps + this.sb.inodeSize), at);
    this.inodeCache.set(ino, n);
    return n;
  }

  /** A 64 KiB piece of the volume holding inodes; concurrent loads of one piece share a read. */
  private loadPiece(ps: number, structure: string): Promise<Uint8Array> {
    const pending = this.piecePending.get(ps);
    if (pending) return pending;
    const len = Math.max(0, Math.min(PIECE, this.volume.size - ps));
    const p = readExact(this.volume, ps, len, structure).then(
      (b) => {
        this.pieces.set(ps, b);
        this.piecePending.delete(ps);
        return b;
      },
      (e: unknown) => {
        this.piecePending.delete(ps);
        throw e;
      },
    );
    this.piecePending.set(ps, p);
    return p;
  }

  private async node(ino: number): Promise<XfsInode> {
    const now = this.nodeNow(ino);
    if (now) return now;
    const at = this.inodeAt(ino);
    await this.loadPiece(at - (at % PIECE), `xfs inode ${ino}`);
    return this.nodeNow(ino)!;
  }

  async root(): Promise<Inode> {
    const n = await this.node(this.sb.rootIno);
    if (n.pub.type !== 'dir') {
      throw new StrataError('CORRUPT', 'the root inode is not a directory', this.ctx.where(`xfs inode ${n.ino}`, n.at));
    }
    return n.pub;
  }

  inode(ino: number): Promise<Inode> {
    // most loads of a walk find their piece in memory: answer without an async frame
    try {
      const n = this.nodeNow(ino);
      if (n) return Promise.resolve(n.pub);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.node(ino).then((n) => n.pub);
  }

  async inodes(inos: readonly number[]): Promise<Inode[]> {
    const out = new Array<Inode>(inos.length);
    const missing: number[] = [];
    for (let i = 0; i < inos.length; i++) {
      const n = this.nodeNow(inos[i]);
      if (n) out[i] = n.pub;
      else missing.push(i);
    }
    if (missing.length === 0) return out;
    // one read per missing piece, in parallel, then parse without awaits
    const pieces = new Map<number, number>();
    for (const i of missing) {
      const at = this.inodeAt(inos[i]);
      if (!pieces.has(at - (at % PIECE))) pieces.set(at - (at % PIECE), inos[i]);
    }
    await Promise.all([...pieces].map(([ps, ino]) => this.loadPiece(ps, `xfs inode ${ino}`)));
    for (const i of missing) out[i] = (await this.node(inos[i])).pub;
    return out;
  }

  lookup(path: string): Promise<Inode> {
    return resolvePath(this, path);
  }

  // ---------------------------------------------------------------- directories

  private async dirMap(dir: Inode): Promise<Map<string, DirEntry>> {
    const hit = this.dirCache.get(dir.ino);
    if (hit) return hit;
    const n = await this.node(dir.ino);
    if (n.pub.type !== 'dir') {
      throw new StrataError('USAGE', `inode ${dir.ino} is not a directory`, this.ctx.where(`xfs inode ${dir.ino}`));
    }
    const raw =
      n.format === FMT.LOCAL
        ? shortformEntries(this.ctx, n).entries
        : await blockEntries(this.ctx, n, await this.map(n));
    if (!this.ctx.ftype) {
      const inos = await this.inodes(raw.map((e) => e.ino));
      for (let i = 0; i < raw.length; i++) raw[i].type = inos[i].type;
    }
    const m = new Map<string, DirEntry>();
    for (const e of raw) {
      if (m.has(e.name)) {
        throw new StrataError(
          'CORRUPT',
          `the name ${JSON.stringify(e.name)} appears twice`,
          this.ctx.where(`xfs directory inode ${dir.ino}`),
        );
      }
      m.set(e.name, e);
    }
    if (this.dirCacheEntries + m.size > DIR_CACHE_ENTRIES) {
      this.dirCache.clear();
      this.dirCacheEntries = 0;
    }
    this.dirCache.set(dir.ino, m);
    this.dirCacheEntries += m.size;
    return m;
  }

  async readdirAll(dir: Inode): Promise<DirEntry[]> {
    return [...(await this.dirMap(dir)).values()].map((e) => ({ ...e }));
  }

  async *readdir(dir: Inode): AsyncIterable<DirEntry> {
    for (const e of await this.readdirAll(dir)) yield e;
  }

  async lookupChild(dir: Inode, name: string): Promise<DirEntry | undefined> {
    const e = (await this.dirMap(dir)).get(name);
    return e ? { ...e } : undefined;
  }

  // ---------------------------------------------------------------- file data

  private async map(n: XfsInode): Promise<Bmap[]> {
    const hit = this.mapCache.get(n.ino);
    if (hit) return hit;
    const m = await forkExtents(this.ctx, n, false);
    this.mapCache.set(n.ino, m);
    return m;
  }

  private realtimeCheck(n: XfsInode): void {
    if (n.flags & DIFLAG.REALTIME) {
      throw new StrataError(
        'UNSUPPORTED',
        'the file lives on the realtime device, which this reader does not read',
        this.ctx.where(`xfs inode ${n.ino}`, n.at),
      );
    }
  }

  async read(file: Inode, offset: number, length: number): Promise<Uint8Array> {
    const n = await this.node(file.ino);
    if (n.pub.type === 'dir') {
      throw new StrataError('USAGE', `inode ${file.ino} is a directory`, this.ctx.where(`xfs inode ${file.ino}`));
    }
    const size = n.pub.size;
    if (offset >= size || length <= 0) return new Uint8Array(0);
    const len = Math.min(length, size - offset);
    if (n.format === FMT.LOCAL) return n.dataFork.slice(offset, offset + Math.min(len, n.dataFork.length - offset));
    if (n.format !== FMT.EXTENTS && n.format !== FMT.BTREE) return new Uint8Array(len);
    this.realtimeCheck(n);
    const out = new Uint8Array(len);
    const bs = this.blockSize;
    const map = await this.map(n);
    const end = offset + len;
    const structure = `xfs inode ${n.ino} data`;
    const reads: Promise<void>[] = [];
    // first extent that may overlap: binary search on the end
    let lo = 0;
    let hi = map.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((map[mid].off + map[mid].len) * bs <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < map.length; i++) {
      const e = map[i];
      const es = e.off * bs;
      if (es >= end) break;
      if (e.unwritten) continue;
      const s = Math.max(es, offset);
      const t = Math.min((e.off + e.len) * bs, end);
      const at = this.ctx.fsbOffset(e.fsb, structure) + (s - es);
      reads.push(
        readExact(this.volume, at, t - s, structure).then((b) => {
          out.set(b, s - offset);
        }),
      );
    }
    await Promise.all(reads);
    return out;
  }

  async readlink(link: Inode): Promise<string> {
    const n = await this.node(link.ino);
    if (n.pub.type !== 'symlink') {
      throw new StrataError('USAGE', `inode ${link.ino} is not a symlink`, this.ctx.where(`xfs inode ${link.ino}`));
    }
    return readSymlink(this.ctx, n);
  }

  async xattrs(file: Inode): Promise<Map<string, Uint8Array>> {
    return readAttrs(this.ctx, await this.node(file.ino));
  }

  private refcounts(agno: number): Promise<Refcount[]> {
    let p = this.refcountCache.get(agno);
    if (!p) {
      p = this.ag(agno).then((ag) => refcounts(this.ctx, ag));
      this.refcountCache.set(agno, p);
    }
    return p;
  }

  /** A file's extents, pieces that continue each other with the same flags merged. */
  async *extents(file: Inode, opts: ExtentOptions = {}): AsyncIterable<FileExtent> {
    let cur: FileExtent | undefined;
    for await (const e of this.extentPieces(file, opts.shared !== false)) {
      if (
        cur &&
        !e.inline &&
        !cur.inline &&
        cur.fileOffset + cur.length === e.fileOffset &&
        cur.volumeOffset + cur.length === e.volumeOffset &&
        !!cur.unwritten === !!e.unwritten &&
        !!cur.shared === !!e.shared
      ) {
        cur.length += e.length;
        continue;
      }
      if (cur) yield cur;
      cur = e;
    }
    if (cur) yield cur;
  }

  private async *extentPieces(file: Inode, wantShared = true): AsyncIterable<FileExtent> {
    const n = await this.node(file.ino);
    if (n.format === FMT.LOCAL) {
      if (n.size > 0) {
        yield { fileOffset: 0, length: Math.min(n.size, n.dataFork.length), volumeOffset: n.dataForkAt, inline: true };
      }
      return;
    }
    if (n.format !== FMT.EXTENTS && n.format !== FMT.BTREE) return;
    this.realtimeCheck(n);
    const bs = this.blockSize;
    // directories (hash index above 32 GiB) and v5 remote symlinks (a header in each block)
    // keep whole blocks past their size
    const isDir = n.pub.type === 'dir' || n.pub.type === 'symlink';
    const reflinked = wantShared && (this.sb.roCompat & RO_COMPAT.REFLINK) !== 0 && (n.flags2 & DIFLAG2.REFLINK) !== 0;
    for (const e of await this.map(n)) {
      const fo = e.off * bs;
      if (!isDir && fo >= n.size) break;
      const len = isDir ? e.len * bs : Math.min(e.len * bs, n.size - fo);
      const vo = this.ctx.fsbOffset(e.fsb, `xfs inode ${n.ino} data fork`);
      if (!reflinked) {
        yield e.unwritten
          ? { fileOffset: fo, length: len, volumeOffset: vo, unwritten: true }
          : { fileOffset: fo, length: len, volumeOffset: vo };
        continue;
      }
      // split at the reference-count records: ranges referenced more than once are shared
      const agno = Math.floor(e.fsb / 2 ** this.sb.agBlkLog);
      const agbno = e.fsb - agno * 2 ** this.sb.agBlkLog;
      const rc = await this.refcounts(agno);
      const lenBlocks = Math.ceil(len / bs);
      let b = 0;
      while (b < lenBlocks) {
        const cur = agbno + b;
        let shared = false;
        let next = agbno + lenBlocks;
        for (const r of rc) {
          if (r.start + r.len <= cur) continue;
          if (r.start > cur) {
            next = Math.min(next, r.start);
            break;
          }
          shared = r.refcount > 1;
          next = Math.min(next, r.start + r.len);
          break;
        }
        const piece = next - cur;
        const pfo = fo + b * bs;
        const plen = Math.min(piece * bs, fo + len - pfo);
        const x: FileExtent = { fileOffset: pfo, length: plen, volumeOffset: vo + b * bs };
        if (e.unwritten) x.unwritten = true;
        if (shared) x.shared = true;
        yield x;
        b += piece;
      }
    }
  }

  // ---------------------------------------------------------------- volume-wide

  private agLength(agno: number): number {
    const sb = this.sb;
    return agno === sb.agCount - 1 ? sb.dblocks - agno * sb.agBlocks : sb.agBlocks;
  }

  async allocation(): Promise<ByteRange[]> {
    const out: ByteRange[] = [];
    const bs = this.blockSize;
    for (let agno = 0; agno < this.sb.agCount; agno++) {
      const ag = await this.ag(agno);
      const free = await freeExtents(this.ctx, ag);
      let pos = 0;
      for (const [s, l] of free) {
        pushRange(out, this.ctx.agbOffset(agno, pos), (s - pos) * bs);
        pos = s + l;
      }
      pushRange(out, this.ctx.agbOffset(agno, pos), (this.agLength(agno) - pos) * bs);
    }
    return out;
  }

  async *metadataRegions(): AsyncIterable<OwnedRange> {
    const sb = this.sb;
    const bs = this.blockSize;
    const ss = sb.sectSize;
    const ctx = this.ctx;
    const headerEnd = Math.ceil((4 * ss) / bs) * bs;
    for (let agno = 0; agno < sb.agCount; agno++) {
      const base = ctx.agbOffset(agno, 0);
      const ag = await this.ag(agno);
      yield { offset: base, length: ss, kind: 'superblock', detail: agno === 0 ? 'primary' : `AG ${agno} backup` };
      yield { offset: base + ss, length: ss, kind: 'group-desc', detail: `AGF ${agno}` };
      yield { offset: base + 2 * ss, length: ss, kind: 'group-desc', detail: `AGI ${agno}` };
      yield { offset: base + 3 * ss, length: headerEnd - 3 * ss, kind: 'group-desc', detail: `AGFL ${agno}` };
      const blocks: OwnedRange[] = [];
      const tree = (kind: string, name: string) => (agbno: number) => {
        blocks.push({ offset: ctx.agbOffset(agno, agbno), length: bs, kind, detail: `${name} AG ${agno}` });
      };
      await freeExtents(ctx, ag, tree('bitmap', 'bnobt'));
      await cntbtBlocks(ctx, ag, tree('bitmap', 'cntbt'));
      const chunks = await inodeChunks(ctx, ag, tree('bitmap', 'inobt'));
      if (sb.roCompat & RO_COMPAT.FINOBT) await finobtBlocks(ctx, ag, tree('bitmap', 'finobt'));
      if (sb.roCompat & RO_COMPAT.RMAPBT) await rmapbtBlocks(ctx, ag, tree('reserved', 'rmapbt'));
      if (sb.roCompat & RO_COMPAT.REFLINK) await refcounts(ctx, ag, tree('reserved', 'refcountbt'));
      for (const b of ag.agfl) tree('reserved', 'free list')(b);
      yield* blocks;
      // inode chunks: runs of 4-inode groups that are not holes (sparse inodes)
      const agFirstIno = agno * 2 ** ctx.inoAgShift;
      for (const c of chunks) {
        let i = 0;
        while (i < 64) {
          if ((c.holeMask >>> (i >> 2)) & 1) {
            i += 4;
            continue;
          }
          let j = i;
          while (j < 64 && !((c.holeMask >>> (j >> 2)) & 1)) j += 4;
          const first = agFirstIno + c.startIno + i;
          yield {
            offset: this.inodeAt(first),
            length: (j - i) * sb.inodeSize,
            kind: 'inode-table',
            detail: `AG ${agno} inode chunk`,
            inodes: { first, size: sb.inodeSize },
          };
          i = j;
        }
      }
      // per-inode structures: B+tree blocks of the forks and attribute blocks
      for (const c of chunks) {
        for (let i = 0; i < 64; i++) {
          if (!chunkInodeUsed(c, i)) continue;
          const ino = agFirstIno + c.startIno + i;
          let n: XfsInode;
          try {
            n = await this.node(ino);
          } catch (e) {
            if (e instanceof StrataError && e.code === 'NOT_FOUND') continue;
            throw e;
          }
          if (n.format === FMT.BTREE) {
            const tb: number[] = [];
            await forkExtents(ctx, n, false, tb);
            for (const b of tb) yield { offset: ctx.fsbOffset(b, 'bmbt'), length: bs, kind: 'extent-tree', ino };
          }
          if (n.attrFork && (n.aformat === FMT.EXTENTS || n.aformat === FMT.BTREE)) {
            const tb: number[] = [];
            const am = await forkExtents(ctx, n, true, tb);
            for (const b of tb)
              yield {
                offset: ctx.fsbOffset(b, 'bmbt'),
                length: bs,
                kind: 'extent-tree',
                ino,
                detail: 'attribute fork',
              };
            for (const e of am) yield { offset: ctx.fsbOffset(e.fsb, 'attr'), length: e.len * bs, kind: 'xattr', ino };
          }
          const special =
            ino === sb.rbmIno ||
            ino === sb.rsumIno ||
            ino === sb.uquotIno ||
            ino === sb.gquotIno ||
            ino === sb.pquotIno;
          if (special && ino !== 0 && (n.format === FMT.EXTENTS || n.format === FMT.BTREE)) {
            const what = ino === sb.rbmIno ? 'realtime bitmap' : ino === sb.rsumIno ? 'realtime summary' : 'quota';
            for (const e of await this.map(n)) {
              yield { offset: ctx.fsbOffset(e.fsb, what), length: e.len * bs, kind: 'reserved', ino, detail: what };
            }
          }
        }
      }
    }
    if (sb.logStart !== 0) {
      yield {
        offset: ctx.fsbOffset(sb.logStart, 'xfs log'),
        length: sb.logBlocks * bs,
        kind: 'journal',
        detail: 'internal log',
      };
    }
  }

  async info(): Promise<FsInfo> {
    const sb = this.sb;
    const log = this.log;
    return {
      kind: 'xfs',
      label: sb.label || undefined,
      uuid: formatUuid(sb.uuid),
      blockSize: sb.blockSize,
      totalBytes: sb.dblocks * sb.blockSize,
      freeBytes: sb.fdblocks * sb.blockSize,
      totalInodes: sb.icount,
      freeInodes: sb.ifree,
      features: featureNames(sb),
      extra: {
        version: sb.version,
        agCount: sb.agCount,
        agBlocks: sb.agBlocks,
        blockCount: sb.dblocks,
        freeBlocks: sb.fdblocks,
        sectorSize: sb.sectSize,
        inodeSize: sb.inodeSize,
        dirBlockSize: this.ctx.dirBlkSize,
        rootInode: sb.rootIno,
        log: log ? (log.internal ? `internal, ${sb.logBlocks} blocks, ${log.state}` : 'external') : 'unreadable',
        realtimeBlocks: sb.rblocks || undefined,
        metaUuid: sb.incompat & INCOMPAT.META_UUID ? formatUuid(sb.metaUuid) : undefined,
        warnings: this.warnings.length,
      },
    };
  }
}

export const xfsDriver: FsDriver = {
  kind: 'xfs',
  probe(head: Uint8Array): boolean {
    return head.length >= 0x68 && head[0] === 0x58 && head[1] === 0x46 && head[2] === 0x53 && head[3] === 0x42;
  },
  open: (volume) => XfsFileSystem.open(volume),
};
