import type { ByteSource } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import type {
  ByteRange,
  DirEntry,
  FileExtent,
  FileSystem,
  FileType,
  FsDriver,
  FsInfo,
  Inode,
  OwnedRange,
} from '../types.js';
import { resolvePath } from '../walk.js';
import { IsoContext } from './context.js';
import {
  type BootRecord,
  FIRST_DESCRIPTOR,
  isDescriptor,
  MAX_DESCRIPTORS,
  parseBootRecord,
  parseVolumeDescriptor,
  SECTOR,
  udfStandardId,
  type VolumeDescriptor,
} from './descriptors.js';
import { type BootCatalog, parseBootCatalog } from './eltorito.js';
import { type DirRecord, FLAG, isoName, isSelfOrParent, jolietName, parseRecord } from './record.js';
import { emptyRockRidge, parseSusp, type RockRidge } from './susp.js';

/** Largest directory we read whole. */
const MAX_DIR_BYTES = 64 << 20;
/** Continuation areas followed per record, and their bytes. */
const MAX_CE = 16;
const MAX_CE_BYTES = 64 * 1024;
/** Pieces of one multi-extent file. */
const MAX_PIECES = 4096;
const NODE_CACHE = 1 << 20;
const SMALL_READ = 64 * 1024;

type Tree = 'rock-ridge' | 'joliet' | 'iso9660';

interface Piece {
  /** First sector of the data (after any extended attribute record). */
  lba: number;
  length: number;
}

interface IsoNode {
  pub: Inode;
  pieces: Piece[];
  /** Directories: the extent and its byte length. */
  dirLba: number;
  symlink?: string;
  zisofs?: string;
  structure: string;
}

interface DirListing {
  entries: DirEntry[];
  byName: Map<string, DirEntry>;
  byFold?: Map<string, DirEntry>;
}

/** File type by the S_IFMT nibble of a Rock Ridge mode (mode >> 12). */
const TYPE_BY_FMT: Array<FileType | undefined> = [
  undefined,
  'fifo',
  'char',
  undefined,
  'dir',
  undefined,
  'block',
  undefined,
  'file',
  undefined,
  'symlink',
  undefined,
  'socket',
];

const le32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
const be32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;

const isBadName = (n: string) => n === '' || n === '.' || n === '..' || n.includes('/') || n.includes('\0');

export class IsoFileSystem implements FileSystem {
  readonly kind = 'iso9660';
  readonly blockSize = SECTOR;
  readonly warnings: string[];
  private readonly nodes = new Map<number, IsoNode>();
  private readonly dirs = new Map<number, DirListing>();
  private tree: Tree = 'iso9660';
  private treeRoot!: Uint8Array;
  private spSkip = 0;
  private rootNode!: IsoNode;
  private readonly descriptors: Array<{ sector: number; what: string }> = [];
  private udf?: string[];
  private catalog?: BootCatalog;
  private ceAreas = new Map<string, ByteRange>();
  /** Sectors where some file's data starts (to tell whether the boot catalogue is a file in the tree). */
  private readonly fileStarts = new Set<number>();

  private constructor(
    private readonly ctx: IsoContext,
    private readonly pvd: VolumeDescriptor,
    private readonly joliet: VolumeDescriptor | undefined,
    private readonly boot: BootRecord | undefined,
  ) {
    this.warnings = ctx.warnings;
  }

  get volume(): ByteSource {
    return this.ctx.volume;
  }

  static async open(volume: ByteSource): Promise<IsoFileSystem> {
    const ctx = new IsoContext(volume);
    let pvd: VolumeDescriptor | undefined;
    let joliet: VolumeDescriptor | undefined;
    let boot: BootRecord | undefined;
    const seen: Array<{ sector: number; what: string }> = [];
    let sector = FIRST_DESCRIPTOR;
    let terminated = false;
    for (; sector < FIRST_DESCRIPTOR + MAX_DESCRIPTORS; sector++) {
      if ((sector + 1) * SECTOR > volume.size) break;
      const b = await ctx.read(sector * SECTOR, SECTOR, `ISO 9660 volume descriptor ${sector}`);
      if (!isDescriptor(b)) {
        throw ctx.error(
          'CORRUPT',
          'no "CD001" volume descriptor before the terminator',
          'ISO 9660 volume descriptor set',
          sector * SECTOR,
        );
      }
      const type = b[0];
      if (type === 255) {
        seen.push({ sector, what: 'volume descriptor set terminator' });
        terminated = true;
        break;
      }
      if (type === 1 && !pvd) {
        pvd = parseVolumeDescriptor(b, sector);
        seen.push({ sector, what: 'primary volume descriptor' });
      } else if (type === 2) {
        const d = parseVolumeDescriptor(b, sector);
        if (d.joliet && !joliet) joliet = d;
        seen.push({
          sector,
          what: d.joliet
            ? `supplementary volume descriptor (Joliet level ${d.joliet})`
            : 'supplementary volume descriptor',
        });
      } else if (type === 0) {
        boot = parseBootRecord(b, sector);
        seen.push({ sector, what: `boot record (${boot.systemId})` });
      } else seen.push({ sector, what: `volume descriptor type ${type}` });
    }
    if (!pvd)
      throw ctx.error(
        'CORRUPT',
        'no primary volume descriptor',
        'ISO 9660 volume descriptor set',
        FIRST_DESCRIPTOR * SECTOR,
      );
    if (!terminated) ctx.warn('the volume descriptor set has no terminator');
    if (pvd.logicalBlockSize !== SECTOR) {
      throw ctx.error(
        'UNSUPPORTED',
        `logical block size ${pvd.logicalBlockSize} (only 2048 is read)`,
        'ISO 9660 primary volume descriptor',
        pvd.sector * SECTOR + 128,
      );
    }
    const fs = new IsoFileSystem(ctx, pvd, joliet, boot);
    fs.descriptors.push(...seen);
    await fs.init(sector + 1);
    return fs;
  }

  private async init(afterTerminator: number): Promise<void> {
    const ctx = this.ctx;
    // UDF bridge: an extended area (BEA01 ... TEA01) right after the ISO 9660 descriptors
    const udf: string[] = [];
    for (let s = afterTerminator; s < afterTerminator + 16 && (s + 1) * SECTOR <= this.volume.size; s++) {
      const id = udfStandardId(await ctx.read(s * SECTOR, SECTOR, 'volume recognition sequence'));
      if (!id) break;
      udf.push(id);
      this.descriptors.push({ sector: s, what: `UDF volume recognition (${id})` });
      if (id === 'TEA01') break;
    }
    if (udf.some((id) => id.startsWith('NSR'))) {
      this.udf = udf;
      const nsr = udf.find((id) => id.startsWith('NSR'))!;
      ctx.warn(
        `UDF bridge disc (${nsr === 'NSR03' ? 'UDF 2.00+' : 'UDF 1.02-1.50'}, ${nsr}): the UDF side is not read; files come from the ISO 9660 tree`,
      );
    }
    if (this.boot?.catalogSector !== undefined) {
      const at = this.boot.catalogSector * SECTOR;
      if (at + SECTOR <= this.volume.size) {
        this.catalog = parseBootCatalog(
          await ctx.read(at, SECTOR, 'El Torito boot catalogue'),
          this.boot.catalogSector,
        );
        if (!this.catalog)
          ctx.warn(`El Torito boot catalogue at sector ${this.boot.catalogSector} has no validation entry`);
        else if (!this.catalog.checksumOk) ctx.warn('El Torito validation entry checksum does not sum to 0');
      } else ctx.warn(`El Torito boot catalogue sector ${this.boot.catalogSector} lies past the end`);
    }
    // which tree: Rock Ridge on the primary when its root "." carries SUSP, else Joliet, else plain
    const pvdRoot = parseRecord(this.pvd.rootRecord, 0);
    if (!pvdRoot || pvdRoot === 'bad') {
      throw ctx.error(
        'CORRUPT',
        'bad root directory record',
        'ISO 9660 primary volume descriptor',
        this.pvd.sector * SECTOR + 156,
      );
    }
    const dot = await this.readDot(pvdRoot.extent, 'primary root directory');
    const rr = emptyRockRidge();
    parseSusp(dot.sua, rr);
    if (rr.spSkip !== undefined) {
      this.spSkip = rr.spSkip;
      this.tree = 'rock-ridge';
      this.treeRoot = this.pvd.rootRecord;
    } else if (this.joliet) {
      this.tree = 'joliet';
      this.treeRoot = this.joliet.rootRecord;
    } else {
      this.tree = 'iso9660';
      this.treeRoot = this.pvd.rootRecord;
    }
    const root = parseRecord(this.treeRoot, 0);
    if (!root || root === 'bad') {
      throw ctx.error(
        'CORRUPT',
        'bad root directory record',
        'ISO 9660 volume descriptor',
        this.pvd.sector * SECTOR + 156,
      );
    }
    this.rootNode = await this.dirNodeAt(root.extent, 'root directory');
    this.nodes.set(this.rootNode.pub.ino, this.rootNode);
  }

  /** The "." record of the directory at `lba`. */
  private async readDot(lba: number, what: string): Promise<DirRecord> {
    const at = lba * SECTOR;
    if (at + SECTOR > this.volume.size) {
      throw this.ctx.error('CORRUPT', `directory extent at sector ${lba} lies past the end`, what, at);
    }
    const b = await this.ctx.read(at, SECTOR, what);
    const r = parseRecord(b, 0);
    if (!r || r === 'bad' || !isSelfOrParent(r) || r.ident[0] !== 0 || !(r.flags & FLAG.DIRECTORY)) {
      throw this.ctx.error('CORRUPT', 'directory does not start with its "." record', what, at);
    }
    return r;
  }

  /** A directory's node from its own "." record (root, relocated directories, lookups by id). */
  private async dirNodeAt(lba: number, what: string): Promise<IsoNode> {
    const dot = await this.readDot(lba, what);
    const rr = this.tree === 'rock-ridge' ? await this.rockRidge(dot, lba * SECTOR) : undefined;
    return this.makeNode(lba * SECTOR, [dot], rr, what);
  }

  /** Rock Ridge fields of a record, following continuation areas. */
  private async rockRidge(r: DirRecord, recordAt: number): Promise<RockRidge> {
    const rr = emptyRockRidge();
    let sl = parseSusp(r.sua.subarray(Math.min(this.spSkip, r.sua.length)), rr);
    let hops = 0;
    let bytes = 0;
    while (rr.ce) {
      const { sector, offset, length } = rr.ce;
      if (++hops > MAX_CE || (bytes += length) > MAX_CE_BYTES) {
        this.ctx.warn(`record at ${recordAt}: more than ${MAX_CE} Rock Ridge continuation areas; the rest ignored`);
        break;
      }
      const at = sector * SECTOR + offset;
      if (length === 0 || at + length > this.volume.size) {
        this.ctx.warn(`record at ${recordAt}: Rock Ridge continuation area at ${at} (${length} bytes) out of range`);
        break;
      }
      this.noteCe(at, length);
      sl = parseSusp(await this.ctx.read(at, length, 'Rock Ridge continuation area'), rr, sl);
    }
    return rr;
  }

  private noteCe(offset: number, length: number): void {
    if (this.ceAreas.size < 100_000) this.ceAreas.set(`${offset}+${length}`, { offset, length });
  }

  private makeNode(ino: number, recs: DirRecord[], rr: RockRidge | undefined, structure: string): IsoNode {
    const r = recs[recs.length - 1];
    const isDir = (r.flags & FLAG.DIRECTORY) !== 0;
    let type: FileType = isDir ? 'dir' : 'file';
    let mode = isDir ? 0o555 : 0o444;
    if (rr?.mode !== undefined) {
      type = TYPE_BY_FMT[(rr.mode >>> 12) & 15] ?? type;
      mode = rr.mode & 0o7777;
      if (isDir && type !== 'dir') type = 'dir'; // the directory flag wins: it decides how the extent is read
    }
    const pieces: Piece[] = [];
    let size = 0;
    for (const p of recs) {
      pieces.push({ lba: p.extent + p.extAttrLength, length: p.dataLength });
      size += p.dataLength;
    }
    const pub: Inode = {
      ino,
      type,
      mode,
      uid: rr?.uid ?? 0,
      gid: rr?.gid ?? 0,
      size,
      nlink: rr?.nlink ?? 1,
      mtime: rr?.mtime ?? r.time,
      ctime: rr?.ctime ?? rr?.mtime ?? r.time,
      atime: rr?.atime ?? r.time,
      crtime: rr?.crtime,
      flags: r.flags,
      allocatedBytes: pieces.reduce((a, p) => a + Math.ceil(p.length / SECTOR) * SECTOR, 0),
    };
    if (rr?.rdev && (type === 'char' || type === 'block')) pub.rdev = rr.rdev;
    const node: IsoNode = { pub, pieces, dirLba: isDir ? r.extent : 0, structure };
    if (!isDir && pieces.length > 0 && this.fileStarts.size < 1_000_000) this.fileStarts.add(pieces[0].lba);
    if (type === 'symlink') {
      node.symlink = rr?.symlink ?? '';
      pub.size = new TextEncoder().encode(node.symlink).length;
      pub.allocatedBytes = 0;
      node.pieces = [];
    }
    if (rr?.zf) {
      node.zisofs = rr.zf.algorithm;
      pub.size = rr.zf.size;
      this.ctx.warn(
        `${structure}: zisofs-compressed file (Rock Ridge ZF, algorithm ${JSON.stringify(rr.zf.algorithm)}): reading it is not supported`,
      );
    }
    return node;
  }

  private remember(n: IsoNode): void {
    if (this.nodes.size >= NODE_CACHE) {
      this.nodes.clear();
      this.nodes.set(this.rootNode.pub.ino, this.rootNode);
    }
    this.nodes.set(n.pub.ino, n);
  }

  private async listing(dir: IsoNode): Promise<DirListing> {
    const have = this.dirs.get(dir.pub.ino);
    if (have) return have;
    const size = dir.pieces[0]?.length ?? 0;
    const base = dir.dirLba * SECTOR;
    if (size > MAX_DIR_BYTES) throw this.ctx.error('LIMIT', `directory of ${size} bytes`, dir.structure, base);
    if (base + size > this.volume.size) {
      throw this.ctx.error(
        'CORRUPT',
        `directory extent (${size} bytes) runs past the end of the volume`,
        dir.structure,
        base,
      );
    }
    const b = await this.ctx.read(base, size, `directory ${dir.structure}`);
    const entries: DirEntry[] = [];
    const byName = new Map<string, DirEntry>();
    let group: DirRecord[] = [];
    for (let sec = 0; sec < size; sec += SECTOR) {
      const end = Math.min(size, sec + SECTOR);
      const s = b.subarray(0, end);
      for (let at = sec; at < end; ) {
        const r = parseRecord(s, at);
        if (r === undefined) break; // padding to the next sector
        if (r === 'bad') {
          this.ctx.warn(`${dir.structure}: bad directory record at ${base + at}; the rest of the sector is skipped`);
          break;
        }
        at += r.length;
        if (isSelfOrParent(r)) continue;
        if (r.flags & FLAG.ASSOCIATED) continue;
        group.push(r);
        if (r.flags & FLAG.MULTI_EXTENT && !(r.flags & FLAG.DIRECTORY)) {
          if (group.length > MAX_PIECES) {
            throw this.ctx.error(
              'LIMIT',
              `multi-extent file of more than ${MAX_PIECES} pieces`,
              dir.structure,
              base + r.at,
            );
          }
          continue;
        }
        const recs = group;
        group = [];
        const e = await this.entryFor(dir, recs, base);
        if (!e) continue;
        entries.push(e);
        if (!byName.has(e.name)) byName.set(e.name, e);
      }
    }
    if (group.length > 0) this.ctx.warn(`${dir.structure}: multi-extent file without its last record`);
    const l = { entries, byName };
    if (this.dirs.size > 4096) this.dirs.clear();
    this.dirs.set(dir.pub.ino, l);
    return l;
  }

  private async entryFor(dir: IsoNode, recs: DirRecord[], base: number): Promise<DirEntry | undefined> {
    const first = recs[0];
    const last = recs[recs.length - 1];
    const recordAt = base + first.at;
    let name = this.tree === 'joliet' ? jolietName(first.ident) : isoName(first.ident);
    let node: IsoNode;
    if (this.tree === 'rock-ridge') {
      const rr = await this.rockRidge(last, recordAt);
      if (rr.relocated) return undefined; // shown where its CL placeholder is
      if (rr.name !== undefined) name = rr.name;
      if (rr.childLink !== undefined) {
        try {
          node = await this.dirNodeAt(rr.childLink, `relocated directory at sector ${rr.childLink}`);
        } catch (e) {
          if (!(e instanceof StrataError)) throw e;
          this.ctx.warn(`${dir.structure}: ${name}: ${e.message}`);
          return undefined;
        }
      } else if (last.flags & FLAG.DIRECTORY) {
        node = this.makeNode(last.extent * SECTOR, [last], rr, `directory at sector ${last.extent}`);
      } else node = this.makeNode(recordAt, recs, rr, `record at ${recordAt}`);
    } else if (last.flags & FLAG.DIRECTORY) {
      node = this.makeNode(last.extent * SECTOR, [last], undefined, `directory at sector ${last.extent}`);
    } else node = this.makeNode(recordAt, recs, undefined, `record at ${recordAt}`);
    if (isBadName(name)) {
      this.ctx.warn(`${dir.structure}: record at ${recordAt} has an unusable name ${JSON.stringify(name)}; skipped`);
      return undefined;
    }
    this.remember(node);
    return { name, ino: node.pub.ino, type: node.pub.type };
  }

  private async node(ino: number): Promise<IsoNode> {
    const have = this.nodes.get(ino);
    if (have) return have;
    const bad = () =>
      this.ctx.error('NOT_FOUND', `no directory or record with id ${ino}`, `iso9660 object ${ino}`, ino);
    if (!Number.isSafeInteger(ino) || ino <= 0 || ino >= this.volume.size) throw bad();
    let node: IsoNode;
    if (ino % SECTOR === 0) {
      try {
        node = await this.dirNodeAt(ino / SECTOR, `directory at sector ${ino / SECTOR}`);
      } catch (e) {
        if (e instanceof StrataError) throw bad();
        throw e;
      }
    } else {
      // a record outside any listing seen so far: one record (a multi-extent file needs its directory listed)
      const sectorStart = ino - (ino % SECTOR);
      const b = await this.ctx.read(sectorStart, SECTOR, `directory record at ${ino}`);
      const r = parseRecord(b, ino - sectorStart);
      if (!r || r === 'bad' || r.flags & (FLAG.DIRECTORY | FLAG.MULTI_EXTENT)) throw bad();
      const rr = this.tree === 'rock-ridge' ? await this.rockRidge(r, ino) : undefined;
      node = this.makeNode(ino, [r], rr, `record at ${ino}`);
    }
    this.remember(node);
    return node;
  }

  async info(): Promise<FsInfo> {
    const pvd = this.pvd;
    const features: string[] = [];
    if (this.tree === 'rock-ridge') features.push('rock-ridge');
    if (this.joliet) features.push(`joliet-level-${this.joliet.joliet}`);
    if (this.catalog) features.push('el-torito');
    if (this.udf) features.push('udf-bridge');
    const extra: Record<string, unknown> = {
      tree: this.tree === 'rock-ridge' ? 'Rock Ridge' : this.tree === 'joliet' ? 'Joliet' : 'ISO 9660',
      systemId: pvd.systemId,
      publisher: pvd.publisher || undefined,
      preparer: pvd.preparer || undefined,
      application: pvd.application || undefined,
      created: pvd.created ? new Date(pvd.created.sec * 1000).toISOString() : undefined,
      modified: pvd.modified ? new Date(pvd.modified.sec * 1000).toISOString() : undefined,
      descriptors: this.descriptors.map((d) => `${d.sector}: ${d.what}`),
      timeZone: 'ISO 9660 times carry their UTC offset (honoured)',
    };
    if (this.joliet && this.joliet.volumeId !== pvd.volumeId) extra.jolietVolumeId = this.joliet.volumeId;
    if (this.udf) extra.udfBridge = this.udf.join(', ');
    if (this.catalog) {
      extra.bootCatalog = {
        sector: this.catalog.sector,
        id: this.catalog.validationId,
        entries: this.catalog.entries.map((e) => ({
          platform: e.platform,
          bootable: e.bootable,
          media: e.media,
          loadSegment: e.loadSegment,
          sectors: e.sectorCount,
          imageSector: e.loadRba,
        })),
      };
    }
    for (const k of Object.keys(extra)) if (extra[k] === undefined) delete extra[k];
    const total = pvd.volumeSpaceSize * SECTOR;
    return {
      kind: this.kind,
      label: pvd.volumeId || undefined,
      uuid: pvd.modifiedId,
      blockSize: SECTOR,
      totalBytes: total,
      freeBytes: 0,
      features,
      extra,
    };
  }

  async root(): Promise<Inode> {
    return this.rootNode.pub;
  }

  async inode(ino: number): Promise<Inode> {
    return (await this.node(ino)).pub;
  }

  async inodes(inos: readonly number[]): Promise<Inode[]> {
    const out: Inode[] = [];
    for (const i of inos) out.push((await this.node(i)).pub);
    return out;
  }

  lookup(path: string): Promise<Inode> {
    return resolvePath(this, path);
  }

  private async dirNode(dir: Inode): Promise<IsoNode> {
    const n = await this.node(dir.ino);
    if (n.pub.type !== 'dir') throw this.ctx.error('USAGE', `not a directory: ${dir.ino}`, `iso9660 object ${dir.ino}`);
    return n;
  }

  async *readdir(dir: Inode): AsyncIterable<DirEntry> {
    yield* await this.readdirAll(dir);
  }

  async readdirAll(dir: Inode): Promise<DirEntry[]> {
    return (await this.listing(await this.dirNode(dir))).entries.slice();
  }

  /** Exact name; on Joliet and plain ISO 9660 trees (upper-case d-characters) also a case-folded match. */
  async lookupChild(dir: Inode, name: string): Promise<DirEntry | undefined> {
    const l = await this.listing(await this.dirNode(dir));
    const e = l.byName.get(name);
    if (e || this.tree === 'rock-ridge') return e;
    if (!l.byFold) {
      l.byFold = new Map();
      for (const x of l.entries) if (!l.byFold.has(x.name.toUpperCase())) l.byFold.set(x.name.toUpperCase(), x);
    }
    return l.byFold.get(name.toUpperCase());
  }

  async read(file: Inode, offset: number, length: number): Promise<Uint8Array> {
    const n = await this.node(file.ino);
    if (n.zisofs !== undefined) {
      throw this.ctx.error(
        'UNSUPPORTED',
        `zisofs-compressed file (Rock Ridge ZF ${JSON.stringify(n.zisofs)}) cannot be read`,
        n.structure,
        n.pub.ino,
      );
    }
    if (n.pub.type === 'symlink')
      throw this.ctx.error('USAGE', 'a symbolic link has no data to read (readlink)', n.structure);
    const end = Math.min(n.pub.size, offset + length);
    if (offset >= end) return new Uint8Array(0);
    const out = new Uint8Array(end - offset);
    let pos = 0;
    for (const p of n.pieces) {
      const pEnd = pos + p.length;
      const from = Math.max(pos, offset);
      const to = Math.min(pEnd, end);
      if (from < to) {
        const at = p.lba * SECTOR + (from - pos);
        const src = to - from <= SMALL_READ ? this.ctx.meta : this.volume;
        const b = await src.read(at, to - from);
        if (b.length !== to - from) {
          throw this.ctx.error(
            'CORRUPT',
            `file data at ${at} lies past the end of the volume`,
            `${n.structure} data`,
            at,
          );
        }
        out.set(b, from - offset);
      }
      pos = pEnd;
      if (pos >= end) break;
    }
    return out;
  }

  async readlink(link: Inode): Promise<string> {
    const n = await this.node(link.ino);
    if (n.pub.type !== 'symlink') throw this.ctx.error('USAGE', 'not a symbolic link', n.structure, n.pub.ino);
    return n.symlink ?? '';
  }

  async xattrs(_file: Inode): Promise<Map<string, Uint8Array>> {
    return new Map();
  }

  async *extents(file: Inode): AsyncIterable<FileExtent> {
    const n = await this.node(file.ino);
    if (n.zisofs !== undefined) {
      let disk = 0;
      for (const p of n.pieces) disk += p.length;
      const at = n.pieces[0]?.lba ?? 0;
      if (disk > 0)
        yield { fileOffset: 0, length: n.pub.size, volumeOffset: at * SECTOR, diskLength: disk, encoded: 'zisofs' };
      return;
    }
    let pos = 0;
    for (const p of n.pieces) {
      if (p.length > 0) yield { fileOffset: pos, length: p.length, volumeOffset: p.lba * SECTOR };
      pos += p.length;
    }
  }

  /** ISO 9660 has no free space: every sector of the volume space is in use. */
  async allocation(): Promise<ByteRange[]> {
    const n = Math.min(this.pvd.volumeSpaceSize * SECTOR, this.volume.size);
    return n > 0 ? [{ offset: 0, length: n }] : [];
  }

  async *metadataRegions(): AsyncIterable<OwnedRange> {
    yield { offset: 0, length: FIRST_DESCRIPTOR * SECTOR, kind: 'boot-sector', detail: 'system area' };
    for (const d of this.descriptors)
      yield { offset: d.sector * SECTOR, length: SECTOR, kind: 'superblock', detail: d.what };
    for (const d of [this.pvd, this.joliet]) {
      if (!d) continue;
      const raw = await this.ctx.read(d.sector * SECTOR, SECTOR, 'ISO 9660 volume descriptor');
      const ptLen = Math.ceil(le32(raw, 132) / SECTOR) * SECTOR;
      const which = d === this.pvd ? '' : ' (Joliet)';
      for (const [at, name] of [
        [le32(raw, 140), 'L path table'],
        [be32(raw, 148), 'M path table'],
      ] as const) {
        if (at > 0 && ptLen > 0 && at * SECTOR + ptLen <= this.volume.size) {
          yield { offset: at * SECTOR, length: ptLen, kind: 'path-table', detail: `${name}${which}` };
        }
      }
    }
    // directories of the tree we read (by id, claimed through their extents too) and of the other trees
    const seen = new Set<number>();
    const todo: IsoNode[] = [this.rootNode];
    while (todo.length > 0) {
      const d = todo.pop()!;
      if (seen.has(d.pub.ino)) continue;
      seen.add(d.pub.ino);
      const len = Math.ceil((d.pieces[0]?.length ?? 0) / SECTOR) * SECTOR;
      if (len > 0) yield { offset: d.dirLba * SECTOR, length: len, kind: 'directory', ino: d.pub.ino };
      let l: DirListing;
      try {
        l = await this.listing(d);
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        continue;
      }
      for (const e of l.entries) if (e.type === 'dir') todo.push(await this.node(e.ino));
    }
    if (this.catalog && !this.fileStarts.has(this.catalog.sector)) {
      yield {
        offset: this.catalog.sector * SECTOR,
        length: SECTOR,
        kind: 'boot-catalog',
        detail: 'El Torito boot catalogue',
      };
    }
    for (const c of this.ceAreas.values()) yield { ...c, kind: 'reserved', detail: 'Rock Ridge continuation area' };
    const other = this.tree === 'joliet' ? this.pvd.rootRecord : this.joliet?.rootRecord;
    if (other) yield* this.otherTree(other, this.tree === 'joliet' ? 'ISO 9660 directory' : 'Joliet directory', seen);
  }

  /** Directory extents of the tree we do not read (Joliet beside Rock Ridge, or the reverse). */
  private async *otherTree(rootRecord: Uint8Array, detail: string, seen: Set<number>): AsyncIterable<OwnedRange> {
    const root = parseRecord(rootRecord, 0);
    if (!root || root === 'bad') return;
    const todo: Array<{ lba: number; size: number }> = [{ lba: root.extent, size: root.dataLength }];
    const done = new Set<number>();
    while (todo.length > 0 && done.size < 1_000_000) {
      const d = todo.pop()!;
      if (done.has(d.lba) || seen.has(d.lba * SECTOR)) continue;
      done.add(d.lba);
      const base = d.lba * SECTOR;
      if (d.size > MAX_DIR_BYTES || base + d.size > this.volume.size) continue;
      yield { offset: base, length: Math.ceil(d.size / SECTOR) * SECTOR, kind: 'directory', detail };
      const b = await this.ctx.read(base, d.size, detail);
      for (let sec = 0; sec < d.size; sec += SECTOR) {
        const s = b.subarray(0, Math.min(d.size, sec + SECTOR));
        for (let at = sec; at < s.length; ) {
          const r = parseRecord(s, at);
          if (!r || r === 'bad') break;
          at += r.length;
          if (!isSelfOrParent(r) && r.flags & FLAG.DIRECTORY) todo.push({ lba: r.extent, size: r.dataLength });
        }
      }
    }
  }
}

export const isoDriver: FsDriver = {
  kind: 'iso9660',
  probe(head: Uint8Array, size: number): boolean {
    const at = FIRST_DESCRIPTOR * SECTOR;
    return (
      size >= at + SECTOR && head.length >= at + 6 && String.fromCharCode(...head.subarray(at + 1, at + 6)) === 'CD001'
    );
  },
  open(volume: ByteSource): Promise<FileSystem> {
    return IsoFileSystem.open(volume);
  },
};
