import type { ExtFileSystem, ExtPlusGeometry } from '../../fs/ext/index.js';
import type { FileSystem, Inode } from '../../fs/types.js';
import {
  type NativeExtDirPlus,
  type NativeExtDirPlusFd,
  nativeExtDirPlus,
  nativeExtDirPlusFd,
} from '../../io/native.js';
import { ENTRY_OUT, type Validity } from './protocol.js';

/** What a native READDIRPLUS gives back: the reply, and what the session still does itself. */
export interface PlusReply {
  /** The reply's bytes (its length is what the request allowed at most). */
  out: Buffer;
  /** Entries in the listing ('.' and '..' included), and how many the reply holds from offset 0. */
  total: number;
  written: number;
  /** The entries whose inode is a directory: their fuse_direntplus's offset in `out`, and their inode. */
  dirs: Array<{ at: number; ino: number }>;
}

/** What the session tells the builder about one request. */
export interface PlusRequest {
  /** The request's size: the reply holds what fits. */
  size: number;
  /** Inode numbers of '.' and '..'. */
  self: number;
  parent: number;
  /** The root's inode: an entry naming it is refused (node id 0, no attributes). */
  root: number;
  valid: Validity;
  /** A node's id is its inode number plus this. */
  idBase: number;
}

/** Configuration slots of native/dirplus.c (its CFG_* enum, in order). */
enum Cfg {
  blockSize,
  inodeSize,
  inodesPerGroup,
  inodesCount,
  flags,
  csumSeed,
  dirSeed,
  indexed,
  self,
  parent,
  root,
  validSec,
  validNsec,
  size,
  idBase,
  pieceSize,
  blksize,
  fd,
  base,
  volumeSize,
  blocksCount,
  firstDataBlock,
  dirIno,
  count,
}
/** Inode-table pieces kept referenced here at most (64 KiB each: 16 MiB), then let go all at once. */
const MAX_PIECES = 256;
/** Slots of the fd builder's own inode-table piece cache (direct-mapped, 64 KiB each: 4 MiB). */
const FD_SLOTS = 64;

type PlusFs = Pick<ExtFileSystem, 'plusGeometry' | 'plusDirectory' | 'inodePieceNow' | 'inodePiece'>;

/**
 * READDIRPLUS of an ext directory in one native call (native/dirplus.c) on the serving thread:
 * the directory's blocks and the inode-table pieces its children need are read here, through
 * the reader's caches (every container format works), and the C parses the entries, decodes
 * and checks the inodes and writes the reply. Whatever the reader would warn about or treat
 * specially makes it answer "fall back", and the session serves that directory the TypeScript
 * way (which is the reference: the replies are byte-identical where both serve).
 */
export class ExtPlus {
  private readonly geo: ExtPlusGeometry;
  private readonly cfg = new Float64Array(Cfg.count);
  private pieces: Array<Uint8Array | undefined> = [];
  private held = 0;
  private res = new Float64Array(3 + 2 * 1024);
  /** Where replies are built (one request's size at most), then copied out at their length. */
  private scratch = Buffer.alloc(0);
  /** The fd builder (the volume is a plain window of a local file), its piece cache and tags. */
  private readonly buildFd?: NativeExtDirPlusFd;
  private fdCache?: { cache: Uint8Array; tags: Float64Array };
  /** Directories served natively, and those left to the reader, by reason (native/dirplus.c's WHY_*; 0: not offered to it). */
  served = 0;
  /** Of `served`, those the fd builder served in one call (replyNow); `fdFellBack` by reason. */
  servedFd = 0;
  readonly fdFellBack = new Map<number, number>();
  readonly fellBack = new Map<number, number>();

  private constructor(
    private readonly fs: PlusFs,
    private readonly build: NativeExtDirPlus,
    buildFd: NativeExtDirPlusFd | undefined,
  ) {
    this.geo = fs.plusGeometry();
    const g = this.geo;
    const c = this.cfg;
    c[Cfg.blockSize] = g.blockSize;
    c[Cfg.inodeSize] = g.inodeSize;
    c[Cfg.inodesPerGroup] = g.inodesPerGroup;
    c[Cfg.inodesCount] = g.inodesCount;
    c[Cfg.flags] = (g.metadataCsum ? 1 : 0) | (g.hugeFile ? 2 : 0) | (g.fileType ? 4 : 0);
    c[Cfg.csumSeed] = g.csumSeed;
    c[Cfg.pieceSize] = g.pieceSize;
    c[Cfg.blksize] = g.blockSize;
    c[Cfg.blocksCount] = g.blocksCount;
    c[Cfg.firstDataBlock] = g.firstDataBlock;
    c[Cfg.volumeSize] = g.volumeSize;
    if (g.file && buildFd) {
      c[Cfg.fd] = g.file.fd;
      c[Cfg.base] = g.file.offset;
      this.buildFd = buildFd;
    }
  }

  /** A builder for `fs` when it is an ext reader and the addon is built, else undefined. */
  static for(fs: FileSystem): ExtPlus | undefined {
    const build = nativeExtDirPlus();
    const f = fs as Partial<PlusFs>;
    if (!build || !f.plusGeometry || !f.plusDirectory || !f.inodePieceNow || !f.inodePiece) return undefined;
    const p = new ExtPlus(f as PlusFs, build, nativeExtDirPlusFd());
    return p.geo.fileType ? p : undefined;
  }

  /** The fd builder is there: replyNow can answer (the volume is a plain window of a local file). */
  get now(): boolean {
    return this.buildFd !== undefined;
  }

  /** The request's slots of the configuration, and a result array and scratch big enough for it. */
  private prepare(req: PlusRequest): { res: Float64Array; out: Buffer } {
    const c = this.cfg;
    c[Cfg.self] = req.self;
    c[Cfg.parent] = req.parent;
    c[Cfg.root] = req.root;
    c[Cfg.validSec] = req.valid.sec;
    c[Cfg.validNsec] = req.valid.nsec;
    c[Cfg.size] = req.size;
    c[Cfg.idBase] = req.idBase;
    const maxEntries = Math.floor(req.size / ENTRY_OUT);
    if (this.res.length < 3 + 2 * maxEntries) this.res = new Float64Array(3 + 2 * maxEntries);
    if (this.scratch.length < req.size) this.scratch = Buffer.allocUnsafe(req.size);
    return { res: this.res, out: this.scratch };
  }

  /** A built reply copied out of the scratch (the next call's) at its length. */
  private done(r: number, out: Buffer, res: Float64Array): PlusReply {
    const dirs: PlusReply['dirs'] = [];
    for (let k = 0; k < res[2]; k++) dirs.push({ at: res[3 + 2 * k], ino: res[4 + 2 * k] });
    this.served++;
    const reply = Buffer.allocUnsafe(r);
    out.copy(reply, 0, 0, r);
    return { out: reply, total: res[0], written: res[1], dirs };
  }

  /**
   * The reply for directory inode `ino` at offset 0 in one native call that reads the image
   * file itself (no await, no reader cache: the page cache serves it), or undefined: reply()
   * (the reader brings the bytes) or the TypeScript path serve it. Only where `now` is true.
   */
  replyNow(ino: number, req: PlusRequest): PlusReply | undefined {
    const buildFd = this.buildFd;
    if (!buildFd) return undefined;
    if (!this.fdCache) {
      const tags = new Float64Array(2 * FD_SLOTS).fill(-1);
      this.fdCache = { cache: new Uint8Array(FD_SLOTS * this.geo.pieceSize), tags };
    }
    const { res, out } = this.prepare(req);
    this.cfg[Cfg.dirIno] = ino;
    const r = buildFd(this.cfg, this.geo.inodeTables, this.fdCache.cache, this.fdCache.tags, out, res);
    if (r < 0) {
      this.fdFellBack.set(res[0], (this.fdFellBack.get(res[0]) ?? 0) + 1);
      return undefined;
    }
    this.servedFd++;
    return this.done(r, out, res);
  }

  /** The reply for `dir` at offset 0, or undefined: the session serves it the TypeScript way. */
  async reply(dir: Inode, req: PlusRequest): Promise<PlusReply | undefined> {
    let d: Awaited<ReturnType<PlusFs['plusDirectory']>>;
    try {
      d = await this.fs.plusDirectory(dir);
    } catch {
      d = undefined; // the reader meets the same error and says it
    }
    if (!d) return this.fallBack(0);
    if (this.held > MAX_PIECES) {
      this.pieces = [];
      this.held = 0;
    }
    // each round brings in every piece the last one missed: two rounds, or three when a reset intervened
    for (let round = 0; round < 8; round++) {
      // set again each round: another request may have used them while this one awaited
      const c = this.cfg;
      c[Cfg.dirSeed] = d.seed;
      c[Cfg.indexed] = d.indexed ? 1 : 0;
      const { res, out } = this.prepare(req);
      const r = this.build(c, this.geo.inodeTables, d.blocks, this.pieces, out, res);
      if (r === -1) return this.fallBack(res[0]);
      // copied out before any await: the scratch is the next call's
      if (r >= 0) return this.done(r, out, res);
      // -2: inode-table pieces to bring in (from the reader's cache, else read), then again
      const want: number[] = [];
      for (let k = 1; k <= res[0]; k++) want.push(res[k]);
      let got: Uint8Array[];
      try {
        got = await Promise.all(want.map((k) => this.fs.inodePieceNow(k) ?? this.fs.inodePiece(k)));
      } catch {
        return this.fallBack(0);
      }
      for (let i = 0; i < want.length; i++) {
        if (this.pieces[want[i]] === undefined) this.held++;
        this.pieces[want[i]] = got[i];
      }
    }
    return this.fallBack(0);
  }

  private fallBack(why: number): undefined {
    this.fellBack.set(why, (this.fellBack.get(why) ?? 0) + 1);
    return undefined;
  }
}
