/**
 * btrfs, read-only. Modules by structure:
 * - superblock.ts   the superblock and its mirrors
 * - chunks.ts       chunk items, sys_chunk_array, the logical-to-physical map (single, DUP,
 *                   RAID0/1/1C3/1C4/10/5/6 over the devices given)
 * - tree.ts         tree-block headers, keys, leaf items and key pointers; range walks
 * - root-item.ts    root items and root refs (subvolumes, snapshots)
 * - inode.ts        inode items
 * - dir-item.ts     dir items, dir indexes and xattr items (one layout)
 * - file-extent.ts  file extent items (inline, regular, prealloc)
 * - extent-item.ts  extent items of the extent tree (reference counts)
 * - decompress.ts   zlib, LZO (btrfs segment format) and zstd extents
 * - context.ts      what the modules share
 * This file is the facade: subvolume choice, inode numbering, FileSystem.
 */
import type { ByteSource } from '../../io/byte-source.js';
import { crc32c, crc32cRaw } from '../../util/crc32c.js';
import { corrupt, type ErrorWhere, StrataError } from '../../util/errors.js';
import { GenCache } from '../../util/gen-cache.js';
import { utf8Name } from '../../util/utf8-name.js';
import type {
  ByteRange,
  DirEntry,
  ExtentOptions,
  FileExtent,
  FileSystem,
  FsDriver,
  FsInfo,
  FsOpenOptions,
  Inode,
  OwnedRange,
  SubvolumeInfo,
} from '../types.js';
import { resolvePath } from '../walk.js';
import { ChunkMap, type DeviceInfo, parseChunk, profileName } from './chunks.js';
import { BtrfsContext } from './context.js';
import { decompress } from './decompress.js';
import { dirType, parseDirItems } from './dir-item.js';
import {
  dataRefOwner,
  EXTENT_FLAG_TREE_BLOCK,
  type ExtentRefs,
  parseExtentItem,
  parseInlineRefs,
} from './extent-item.js';
import { COMPRESSION, FE_INLINE, FE_PREALLOC, type FileExtentItem, parseFileExtent } from './file-extent.js';
import { type InodeItem, parseInodeItem, splitRdev, typeOfMode } from './inode.js';
import { parseRootItem, parseRootRef, type RootItem } from './root-item.js';
import {
  COMPAT_RO_NAMES,
  CSUM_NAMES,
  INCOMPAT_NAMES,
  probeBtrfs,
  readSuperblocks,
  SUPER_OFFSETS,
  SUPER_SIZE,
  type Superblock,
  uuidString,
} from './superblock.js';
import { collect, findItem, findItems, itemRange, items, key, MAX_U64, type TreeRoot, treeBlocks } from './tree.js';
import { KT, TREE, TREE_NAMES } from './types.js';

const SLOT = 2 ** 36;
/** BTRFS_EXTENT_CSUM_OBJECTID (-10 as a u64): the checksum tree's items. */
const CSUM_OBJECTID = 0xfffffffffffffff6n;
const td = new TextDecoder('utf-8');

export interface BtrfsOpenOptions {
  /** Subvolume to present as `/`: its id, or its path from the top level ("@home", "a/b"). */
  subvol?: string | number;
  /** The file system's other devices (RAID profiles over several), in any order. */
  devices?: ByteSource[];
}

export interface Subvolume {
  id: number;
  path: string;
  parent?: number;
  uuid?: string;
  parentUuid?: string;
  readOnly: boolean;
}

/** Where a run of logical bytes lies: on the volume, or on another device (`device`). */
interface Place {
  length: number;
  volumeOffset: number;
  device?: number;
}

interface Extent {
  fileOffset: number;
  fe: FileExtentItem;
  /** Logical address of the item's data (inline extents). */
  itemLogical: number;
  itemSize: number;
  /** Tree blocks from the fs tree root to the leaf holding the item. */
  path: readonly number[];
}

export class BtrfsFileSystem implements FileSystem {
  readonly kind = 'btrfs';
  readonly blockSize: number;
  readonly warnings: string[];
  private readonly slots: bigint[] = [];
  private readonly slotOf = new Map<bigint, number>();
  private readonly rootItems = new Map<bigint, RootItem>();
  private readonly extentCache = new GenCache<number, Extent[]>(256);
  private readonly dataCache = new GenCache<string, Uint8Array>(64);
  private readonly subvolList: Subvolume[];
  readonly defaultSubvol: number;
  readonly subvol: number;

  private constructor(
    readonly ctx: BtrfsContext,
    readonly volume: ByteSource,
    private readonly mirrors: Array<{ offset: number; ok: boolean; generation?: number }>,
    rootItems: Map<bigint, RootItem>,
    subvols: Subvolume[],
    defaultSubvol: number,
    subvol: number,
  ) {
    this.blockSize = ctx.sb.sectorSize;
    this.warnings = ctx.warnings;
    this.rootItems = rootItems;
    this.subvolList = subvols;
    this.defaultSubvol = defaultSubvol;
    this.subvol = subvol;
    this.slotFor(BigInt(subvol));
  }

  static async open(volume: ByteSource, opts: BtrfsOpenOptions = {}): Promise<BtrfsFileSystem> {
    const { sb, mirrors } = await readSuperblocks(volume);
    const fsid = uuidString(sb.fsid);
    const given = new Map<number, DeviceInfo>([[sb.devid, { size: volume.size, name: volume.name }]]);
    const others: Array<{ devid: number; source: ByteSource }> = [];
    const notes: string[] = [];
    for (const dev of opts.devices ?? []) {
      const { sb: dsb } = await readSuperblocks(dev);
      const where = { file: dev.name, structure: 'btrfs superblock', offset: SUPER_OFFSETS[0] };
      if (uuidString(dsb.fsid) !== fsid)
        throw new StrataError(
          'USAGE',
          `not a device of the btrfs file system on ${volume.name} (its fsid is ${uuidString(dsb.fsid)}, that one's ${fsid})`,
          where,
        );
      const twin = given.get(dsb.devid);
      if (twin) throw new StrataError('USAGE', `device ${dsb.devid} given twice (also ${twin.name})`, where);
      if (dsb.generation !== sb.generation)
        notes.push(`${dev.name}: superblock generation ${dsb.generation}, ${volume.name}'s is ${sb.generation}`);
      given.set(dsb.devid, { size: dev.size, name: dev.name });
      others.push({ devid: dsb.devid, source: dev });
    }
    /** Every device the chunk tree lists: devid -> its uuid. */
    const devItems = new Map<number, string>();
    const missingError = (devids: number[], where: ErrorWhere) => {
      const names = devids.map((d) => `device ${d}${devItems.has(d) ? ` (uuid ${devItems.get(d)})` : ''}`);
      return new StrataError(
        'NOT_FOUND',
        `btrfs ${fsid} spans ${sb.numDevices} devices and ${names.join(', ')} ${names.length > 1 ? 'were' : 'was'} not given: name every device image of the file system (strata: --device FILE)`,
        where,
      );
    };
    const chunks = new ChunkMap(sb.devid, given, volume.name, (d, _c, where) => missingError(d, where));
    const ctx = new BtrfsContext(volume, sb, chunks, others);
    for (const m of mirrors) if (!m.ok) ctx.warn(`${volume.name}: superblock mirror at ${m.offset} is not valid`);
    for (const n of notes) ctx.warn(n);
    loadSysChunks(ctx, sb);
    const chunkRoot: TreeRoot = { logical: sb.chunkRoot, level: sb.chunkRootLevel, name: 'chunk tree' };
    for await (const it of items(ctx, chunkRoot, key(1, KT.DEV_ITEM, 0), key(256, KT.CHUNK_ITEM, MAX_U64))) {
      if (it.key.type === KT.DEV_ITEM && it.key.oid === 1n) {
        if (it.data.length >= 82) devItems.set(Number(it.key.off), uuidString(it.data.subarray(66, 82)));
        continue;
      }
      if (it.key.type !== KT.CHUNK_ITEM) continue;
      const where = ctx.where('btrfs chunk item', it.logical);
      chunks.add(parseChunk(it.data, 0, it.data.length, Number(it.key.off), where));
    }
    const absent = [...devItems.keys()].filter((d) => !given.has(d));
    if (absent.length > 0) throw missingError(absent, ctx.where('btrfs chunk tree (device items)', sb.chunkRoot));
    if (devItems.size !== sb.numDevices)
      ctx.warn(`${volume.name}: the superblock says ${sb.numDevices} devices, the chunk tree lists ${devItems.size}`);
    for (const o of others)
      if (!devItems.has(o.devid)) ctx.warn(`${o.source.name}: device ${o.devid} is not in the chunk tree`);
    if (sb.logRoot !== 0) ctx.warn(`${volume.name}: btrfs log tree present (unreplayed fsync data is not read)`);
    const rootTree = rootTreeOf(sb);
    const rootItems = new Map<bigint, RootItem>();
    for await (const it of items(ctx, rootTree, key(0, 0, 0), key(MAX_U64, 255, MAX_U64))) {
      if (it.key.type !== KT.ROOT_ITEM) continue;
      rootItems.set(it.key.oid, parseRootItem(it.data, ctx.where('btrfs root item', it.logical)));
    }
    if (!rootItems.has(TREE.FS)) throw corrupt('no fs tree root item', ctx.where('btrfs root tree', sb.root));
    // subvolumes: ROOT_BACKREF (child, parent) gives name and parent directory
    const subvols: Subvolume[] = [];
    const refs = new Map<bigint, { parent: bigint; name: string }>();
    for await (const it of items(ctx, rootTree, key(TREE.FIRST_FREE, 0, 0), key(TREE.LAST_FREE, 255, MAX_U64))) {
      if (it.key.type !== KT.ROOT_BACKREF) continue;
      const r = parseRootRef(it.data, ctx.where('btrfs root backref', it.logical));
      refs.set(it.key.oid, { parent: it.key.off, name: td.decode(r.name) });
    }
    for (const [id, ri] of rootItems) {
      if (id !== TREE.FS && (id < TREE.FIRST_FREE || id > TREE.LAST_FREE)) continue;
      const parts: string[] = [];
      let cur = id;
      for (let guard = 0; cur !== TREE.FS && guard < 256; guard++) {
        const r = refs.get(cur);
        if (!r) break;
        parts.unshift(r.name);
        cur = r.parent;
      }
      const ref = refs.get(id);
      subvols.push({
        id: Number(id),
        path: id === TREE.FS ? '/' : parts.join('/'),
        parent: ref ? Number(ref.parent) : undefined,
        uuid: ri.uuid,
        parentUuid: ri.parentUuid,
        readOnly: (ri.flags & 1) !== 0,
      });
    }
    let def = 5;
    for (const it of await collect(ctx, rootTree, TREE.ROOT_TREE_DIR, KT.DIR_ITEM)) {
      for (const d of parseDirItems(it.data, ctx.where('btrfs default dir item', it.logical))) {
        if (td.decode(d.name) === 'default') def = Number(d.location.oid);
      }
    }
    const chosen = opts.subvol !== undefined ? findSubvol(subvols, opts.subvol, volume.name).id : def === 0 ? 5 : def;
    if (!rootItems.has(BigInt(chosen)))
      throw corrupt(`default subvolume ${chosen} has no root item`, ctx.where('btrfs root tree'));
    return new BtrfsFileSystem(ctx, volume, mirrors, rootItems, subvols, def === 0 ? 5 : def, chosen);
  }

  /** Subvolumes and snapshots (the top level, id 5, as '/'), the presented one marked current. */
  async subvolumes(): Promise<SubvolumeInfo[]> {
    return this.subvolList.map((s) => ({
      id: s.id,
      path: s.path,
      readOnly: s.readOnly,
      current: s.id === this.subvol,
    }));
  }

  /** The same file system with another subvolume (id or path from the top level) as `/`. */
  async withSubvolume(nameOrId: string | number): Promise<BtrfsFileSystem> {
    const sv = findSubvol(this.subvolList, nameOrId, this.ctx.name);
    if (sv.id === this.subvol) return this;
    if (!this.rootItems.has(BigInt(sv.id)))
      throw corrupt(`subvolume ${sv.id} has no root item`, this.ctx.where('btrfs root tree'));
    return new BtrfsFileSystem(
      this.ctx,
      this.volume,
      this.mirrors,
      this.rootItems,
      this.subvolList,
      this.defaultSubvol,
      sv.id,
    );
  }

  // ---------------------------------------------------------------- inode numbering
  private slotFor(tree: bigint): number {
    let s = this.slotOf.get(tree);
    if (s === undefined) {
      s = this.slots.length;
      this.slots.push(tree);
      this.slotOf.set(tree, s);
    }
    return s;
  }

  /** Our inode number for (tree, objectid): the objectid itself in the presented subvolume. */
  encode(tree: bigint, oid: bigint): number {
    if (oid >= BigInt(SLOT)) throw corrupt(`objectid ${oid} too large`, this.ctx.where('btrfs inode'));
    return this.slotFor(tree) * SLOT + Number(oid);
  }

  decode(ino: number): { tree: bigint; oid: bigint } {
    const s = Math.floor(ino / SLOT);
    const tree = this.slots[s];
    if (!Number.isSafeInteger(ino) || ino < 0 || tree === undefined)
      throw new StrataError('NOT_FOUND', `no inode ${ino}`, this.ctx.where('btrfs inode'));
    return { tree, oid: BigInt(ino - s * SLOT) };
  }

  private readonly fsRoots = new Map<bigint, TreeRoot>();

  private fsRoot(tree: bigint): TreeRoot {
    const hit = this.fsRoots.get(tree);
    if (hit) return hit;
    const ri = this.rootItems.get(tree);
    if (!ri) throw corrupt(`no root item for tree ${tree}`, this.ctx.where('btrfs root tree'));
    const r = { logical: ri.bytenr, level: ri.level, name: `fs tree ${tree}` };
    this.fsRoots.set(tree, r);
    return r;
  }

  // ---------------------------------------------------------------- FileSystem
  async info(): Promise<FsInfo> {
    const sb = this.ctx.sb;
    const features: string[] = [];
    for (const [bit, n] of Object.entries(INCOMPAT_NAMES)) if (sb.incompat & Number(bit)) features.push(n);
    for (const [bit, n] of Object.entries(COMPAT_RO_NAMES)) if (sb.compatRo & Number(bit)) features.push(n);
    const profiles = new Map<string, string>();
    for (const c of this.ctx.chunks.all()) {
      const t = c.type & 1 ? 'data' : c.type & 4 ? 'metadata' : 'system';
      profiles.set(t, profileName(c.type));
    }
    return {
      kind: 'btrfs',
      label: sb.label || undefined,
      uuid: uuidString(sb.fsid),
      blockSize: sb.sectorSize,
      totalBytes: sb.totalBytes,
      freeBytes: Math.max(0, sb.totalBytes - sb.bytesUsed),
      features,
      extra: {
        generation: sb.generation,
        nodeSize: sb.nodeSize,
        checksum: CSUM_NAMES[sb.csumType],
        devices: sb.numDevices,
        devicesGiven: [...this.ctx.devices.values()].map((d) => ({ devid: d.devid, file: d.source.name })),
        bytesUsed: sb.bytesUsed,
        profiles: Object.fromEntries(profiles),
        superblockMirrors: this.mirrors,
        defaultSubvolume: this.defaultSubvol,
        subvolume: this.subvol,
        subvolumes: this.subvolList,
      },
    };
  }

  async root(): Promise<Inode> {
    const ri = this.rootItems.get(BigInt(this.subvol));
    return this.inode(this.encode(BigInt(this.subvol), BigInt(ri?.rootDirid ?? 256)));
  }

  private async inodeItem(ino: number): Promise<InodeItem> {
    const { tree, oid } = this.decode(ino);
    const it = await findItem(this.ctx, this.fsRoot(tree), key(oid, KT.INODE_ITEM, 0));
    if (!it) throw new StrataError('NOT_FOUND', `no inode ${oid} in tree ${tree}`, this.ctx.where('btrfs inode item'));
    return parseInodeItem(it.data, this.ctx.where(`btrfs inode ${oid} (tree ${tree})`, it.logical));
  }

  async inode(ino: number): Promise<Inode> {
    return this.inodeOf(ino, await this.inodeItem(ino));
  }

  private inodeOf(ino: number, x: InodeItem): Inode {
    const type = typeOfMode(x.mode);
    const out: Inode = {
      ino,
      type,
      mode: x.mode & 0o7777,
      uid: x.uid,
      gid: x.gid,
      size: x.size,
      nlink: x.nlink,
      atime: x.atime,
      mtime: x.mtime,
      ctime: x.ctime,
      crtime: x.otime,
      flags: x.flags,
      // what stat's st_blocks says: nbytes rounded up to the sector
      allocatedBytes: Math.ceil(x.nbytes / this.blockSize) * this.blockSize,
    };
    if (type === 'char' || type === 'block') out.rdev = splitRdev(x.rdev);
    return out;
  }

  /** Many inodes: their items looked up together, per tree (findItems: one descent per leaf, not per inode). */
  async inodes(inos: readonly number[]): Promise<Inode[]> {
    if (inos.length < 2) return Promise.all(inos.map((n) => this.inode(n)));
    const out: Inode[] = new Array(inos.length);
    const byTree = new Map<bigint, number[]>();
    const oids = inos.map((n) => this.decode(n));
    for (let i = 0; i < inos.length; i++) {
      const l = byTree.get(oids[i].tree);
      if (l) l.push(i);
      else byTree.set(oids[i].tree, [i]);
    }
    for (const [tree, idx] of byTree) {
      const got = await findItems(
        this.ctx,
        this.fsRoot(tree),
        idx.map((i) => key(oids[i].oid, KT.INODE_ITEM, 0)),
      );
      for (let j = 0; j < idx.length; j++) {
        const it = got[j];
        const oid = oids[idx[j]].oid;
        if (!it)
          throw new StrataError('NOT_FOUND', `no inode ${oid} in tree ${tree}`, this.ctx.where('btrfs inode item'));
        const x = parseInodeItem(it.data, () => this.ctx.where(`btrfs inode ${oid} (tree ${tree})`, it.logical));
        out[idx[j]] = this.inodeOf(inos[idx[j]], x);
      }
    }
    return out;
  }

  async lookup(path: string): Promise<Inode> {
    return resolvePath(this, path, { followLast: false });
  }

  /** The entry a dir item names, crossing into subvolumes (undefined for a snapshot's stale subvolume stub). */
  private async entryOf(
    tree: bigint,
    name: Uint8Array,
    d: ReturnType<typeof parseDirItems>[number],
  ): Promise<DirEntry | undefined> {
    const n = utf8Name(name);
    if (d.location.type === KT.ROOT_ITEM) {
      const child = d.location.oid;
      const ref = await findItem(this.ctx, rootTreeOf(this.ctx.sb), key(tree, KT.ROOT_REF, child));
      const ri = this.rootItems.get(child);
      if (!ref || !ri) {
        this.ctx.warn(`${this.ctx.name}: subvolume stub ${JSON.stringify(n)} (tree ${child}) not shown`);
        return undefined;
      }
      return { name: n, ino: this.encode(child, BigInt(ri.rootDirid)), type: 'dir' };
    }
    return { name: n, ino: this.encode(tree, d.location.oid), type: dirType(d.type) };
  }

  async *readdir(dir: Inode): AsyncIterable<DirEntry> {
    for (const e of await this.readdirAll(dir)) yield e;
  }

  async readdirAll(dir: Inode): Promise<DirEntry[]> {
    if (dir.type !== 'dir')
      throw new StrataError('USAGE', `inode ${dir.ino} is not a directory`, this.ctx.where('btrfs directory'));
    const { tree, oid } = this.decode(dir.ino);
    const out: DirEntry[] = [];
    const list = await itemRange(
      this.ctx,
      this.fsRoot(tree),
      key(oid, KT.DIR_INDEX, 0),
      key(oid, KT.DIR_INDEX, MAX_U64),
    );
    for (const it of list) {
      for (const d of parseDirItems(it.data, () => this.ctx.where(`btrfs dir index of ${oid}`, it.logical))) {
        if (d.location.type === KT.ROOT_ITEM) {
          const e = await this.entryOf(tree, d.name, d);
          if (e) out.push(e);
        } else out.push({ name: utf8Name(d.name), ino: this.encode(tree, d.location.oid), type: dirType(d.type) });
      }
    }
    return out;
  }

  async lookupChild(dir: Inode, name: string): Promise<DirEntry | undefined> {
    if (dir.type !== 'dir') return undefined;
    const { tree, oid } = this.decode(dir.ino);
    const nb = new TextEncoder().encode(name);
    const hash = crc32cRaw(0xfffffffe, nb) >>> 0;
    const it = await findItem(this.ctx, this.fsRoot(tree), key(oid, KT.DIR_ITEM, hash));
    if (!it) return undefined;
    for (const d of parseDirItems(it.data, this.ctx.where(`btrfs dir item of ${oid}`, it.logical))) {
      if (Buffer.compare(Buffer.from(d.name), Buffer.from(nb)) === 0) return this.entryOf(tree, d.name, d);
    }
    return undefined;
  }

  async xattrs(file: Inode): Promise<Map<string, Uint8Array>> {
    const { tree, oid } = this.decode(file.ino);
    const out = new Map<string, Uint8Array>();
    for (const it of await collect(this.ctx, this.fsRoot(tree), oid, KT.XATTR_ITEM)) {
      for (const d of parseDirItems(it.data, this.ctx.where(`btrfs xattr of ${oid}`, it.logical))) {
        out.set(td.decode(d.name), d.data.slice());
      }
    }
    return out;
  }

  private async fileExtents(file: Inode): Promise<Extent[]> {
    const hit = this.extentCache.get(file.ino);
    if (hit) return hit;
    const { tree, oid } = this.decode(file.ino);
    const out: Extent[] = [];
    for (const it of await collect(this.ctx, this.fsRoot(tree), oid, KT.EXTENT_DATA)) {
      const where = this.ctx.where(`btrfs file extent of ${oid} at ${it.key.off}`, it.logical);
      const fe = parseFileExtent(it.data, where);
      if (fe.encryption !== 0 || fe.otherEncoding !== 0)
        throw new StrataError('UNSUPPORTED', 'encrypted or encoded extent', where);
      if (fe.compression >= COMPRESSION.length)
        throw new StrataError('UNSUPPORTED', `compression type ${fe.compression}`, where);
      if (it.key.off > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt('file offset too large', where);
      out.push({
        fileOffset: Number(it.key.off),
        fe,
        itemLogical: it.logical,
        itemSize: it.data.length,
        path: it.path,
      });
    }
    this.extentCache.set(file.ino, out);
    return out;
  }

  /** The decoded bytes of a compressed extent (whole ram_bytes), cached. */
  private async decoded(e: Extent): Promise<Uint8Array> {
    const fe = e.fe;
    const k = `${fe.diskBytenr}:${fe.diskNumBytes}:${e.itemLogical}`;
    const hit = this.dataCache.get(k);
    if (hit) return hit;
    const where = this.ctx.where('btrfs compressed extent', fe.type === FE_INLINE ? e.itemLogical : fe.diskBytenr);
    if (fe.ramBytes > 128 * 1024 * 1024) throw new StrataError('LIMIT', `ram_bytes ${fe.ramBytes} too large`, where);
    const src = fe.type === FE_INLINE ? (fe.inline as Uint8Array) : await this.readData(fe.diskBytenr, fe.diskNumBytes);
    let out: Uint8Array;
    try {
      out = decompress(fe.compression, src, fe.ramBytes, this.ctx.sb.sectorSize);
    } catch (err) {
      throw new StrataError(
        'CORRUPT',
        `${COMPRESSION[fe.compression]} data does not decode: ${(err as Error).message}`,
        where,
      );
    }
    this.dataCache.set(k, out);
    return out;
  }

  async read(file: Inode, offset: number, length: number): Promise<Uint8Array> {
    if (offset >= file.size || length <= 0) return new Uint8Array(0);
    const len = Math.min(length, file.size - offset);
    const out = new Uint8Array(len);
    const end = offset + len;
    for (const e of await this.fileExtents(file)) {
      const fe = e.fe;
      const eLen = fe.type === FE_INLINE ? fe.ramBytes : fe.numBytes;
      const a = Math.max(offset, e.fileOffset);
      const b = Math.min(end, e.fileOffset + eLen);
      if (a >= b) continue;
      if (fe.type === FE_PREALLOC || (fe.type !== FE_INLINE && fe.diskBytenr === 0)) continue;
      if (fe.compression !== 0) {
        const d = await this.decoded(e);
        const s = (fe.type === FE_INLINE ? 0 : fe.offset) + (a - e.fileOffset);
        out.set(d.subarray(s, s + (b - a)), a - offset);
      } else if (fe.type === FE_INLINE) {
        const d = fe.inline as Uint8Array;
        out.set(d.subarray(a - e.fileOffset, b - e.fileOffset), a - offset);
      } else {
        const bytes = await this.readData(fe.diskBytenr + fe.offset + (a - e.fileOffset), b - a);
        out.set(bytes.subarray(0, b - a), a - offset);
      }
    }
    return out;
  }

  /**
   * Data bytes at a logical address. Where there are several copies (RAID1/10, DUP) and the
   * checksums are crc32c, the sectors read are checked against the checksum tree and a copy
   * that fails is replaced by the next one (a warning names it); one copy is read unchecked.
   */
  private async readData(logical: number, length: number): Promise<Uint8Array> {
    const ctx = this.ctx;
    const ss = ctx.sb.sectorSize;
    const s = Math.floor(logical / ss) * ss;
    const e = Math.ceil((logical + length) / ss) * ss;
    const n = ctx.sb.csumType === 0 ? ctx.mirrors(s, e - s, 'btrfs data extent') : 1;
    if (n < 2) return ctx.readLogical(logical, length, 'btrfs data extent');
    const sums = await this.dataCsums(s, e);
    if (sums.size === 0) return ctx.readLogical(logical, length, 'btrfs data extent');
    let first: Uint8Array | undefined;
    const bad: number[] = [];
    for (let m = 0; m < n; m++) {
      const b = await ctx.readLogical(s, e - s, 'btrfs data extent', m);
      first ??= b;
      let wrong = -1;
      for (let at = 0; at + ss <= b.length && wrong < 0; at += ss) {
        const want = sums.get(s + at);
        if (want !== undefined && crc32c(b.subarray(at, at + ss)) !== want) wrong = s + at;
      }
      if (wrong < 0) {
        if (m > 0)
          ctx.warn(`${ctx.name}: btrfs data at ${bad.join(', ')}: checksum mismatch in copy 1; read copy ${m + 1}`);
        return b.subarray(logical - s, logical - s + length);
      }
      bad.push(wrong);
    }
    ctx.warn(`${ctx.name}: btrfs data at ${bad[0]}: checksum mismatch in every copy (${n})`);
    return (first as Uint8Array).subarray(logical - s, logical - s + length);
  }

  /** crc32c of each data sector in [start, end) that has one (the checksum tree), by logical address. */
  private async dataCsums(start: number, end: number): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    const ri = this.rootItems.get(TREE.CSUM);
    if (!ri) return out;
    const root: TreeRoot = { logical: ri.bytenr, level: ri.level, name: 'checksum tree' };
    const ss = this.ctx.sb.sectorSize;
    // one item covers at most a leaf's worth of 4-byte sums
    const span = (this.ctx.sb.nodeSize / 4) * ss;
    const lo = key(CSUM_OBJECTID, KT.EXTENT_CSUM, Math.max(0, start - span));
    const hi = key(CSUM_OBJECTID, KT.EXTENT_CSUM, end - 1);
    for await (const it of items(this.ctx, root, lo, hi)) {
      const at = Number(it.key.off);
      const dv = new DataView(it.data.buffer, it.data.byteOffset, it.data.byteLength);
      for (let j = 0; j * 4 + 4 <= it.data.length; j++) {
        const sector = at + j * ss;
        if (sector >= start && sector < end) out.set(sector, dv.getUint32(j * 4, true));
      }
    }
    return out;
  }

  async readlink(link: Inode): Promise<string> {
    if (link.type !== 'symlink')
      throw new StrataError('USAGE', `inode ${link.ino} is not a symlink`, this.ctx.where('btrfs symlink'));
    return td.decode(await this.read(link, 0, link.size));
  }

  /**
   * May other files map this data extent? Yes when its back references name more than one
   * (root, inode), or a full (shared-leaf) backref; or when a tree block on the path to the
   * file extent item is referenced more than once (a snapshot shares it).
   */
  private async isShared(fe: FileExtentItem, path: readonly number[]): Promise<boolean> {
    const refs: ExtentRefs = { owners: new Set(), sharedParents: 0 };
    const lo = key(fe.diskBytenr, KT.EXTENT_ITEM, 0);
    const hi = key(fe.diskBytenr, 184, MAX_U64);
    for await (const it of items(this.ctx, this.extentRoot(), lo, hi)) {
      const where = this.ctx.where('btrfs extent item', it.logical);
      if (it.key.type === KT.EXTENT_ITEM) {
        const head = parseExtentItem(it.data, where);
        parseInlineRefs(it.data, refs, where, (head.flags & EXTENT_FLAG_TREE_BLOCK) !== 0);
      } else if (it.key.type === 178) refs.owners.add(dataRefOwner(it.data, where));
      else if (it.key.type === 184) refs.sharedParents++;
    }
    if (refs.owners.size > 1 || refs.sharedParents > 0) return true;
    for (const node of path) if (await this.blockShared(node)) return true;
    return false;
  }

  private readonly blockRefs = new GenCache<number, boolean>(4096);

  private async blockShared(logical: number): Promise<boolean> {
    const hit = this.blockRefs.get(logical);
    if (hit !== undefined) return hit;
    let shared = false;
    for await (const it of items(
      this.ctx,
      this.extentRoot(),
      key(logical, KT.EXTENT_ITEM, 0),
      key(logical, KT.METADATA_ITEM, MAX_U64),
    )) {
      const head = parseExtentItem(it.data, this.ctx.where('btrfs extent item', it.logical));
      if (head.refs > 1) shared = true;
    }
    this.blockRefs.set(logical, shared);
    return shared;
  }

  private extentRoot(): TreeRoot {
    const ri = this.rootItems.get(TREE.EXTENT);
    if (!ri) throw corrupt('no extent tree root item', this.ctx.where('btrfs root tree'));
    return { logical: ri.bytenr, level: ri.level, name: 'extent tree' };
  }

  /**
   * Where logical bytes lie, as volume offsets: on the primary device (the volume) when a copy
   * is there, else on another device (`device`); pieces contiguous on one device merged.
   */
  private place(logical: number, length: number, structure: string): Place[] {
    const out: Place[] = [];
    const primary = this.ctx.sb.devid;
    for (const p of this.ctx.chunks.pieces(logical, length, structure)) {
      const c = p.copies.find((x) => x.devid === primary) ?? p.copies[0];
      const last = out[out.length - 1];
      const device = c.devid === primary ? undefined : c.devid;
      if (last && last.device === device && last.volumeOffset + last.length === c.physical) last.length += p.length;
      else out.push({ length: p.length, volumeOffset: c.physical, device });
    }
    return out;
  }

  async *extents(file: Inode, opts: ExtentOptions = {}): AsyncIterable<FileExtent> {
    const wantShared = opts.shared !== false;
    for (const e of await this.fileExtents(file)) {
      const fe = e.fe;
      if (fe.type === FE_INLINE) {
        const [at] = this.place(e.itemLogical + 21, (fe.inline as Uint8Array).length, 'btrfs inline extent');
        const x: FileExtent = {
          fileOffset: e.fileOffset,
          length: Math.min(fe.ramBytes, Math.max(0, file.size - e.fileOffset)),
          volumeOffset: at.volumeOffset,
          inline: true,
        };
        if (at.device !== undefined) x.device = at.device;
        if (fe.compression) {
          x.encoded = COMPRESSION[fe.compression];
          x.diskLength = (fe.inline as Uint8Array).length;
        }
        yield x;
        continue;
      }
      if (fe.diskBytenr === 0) continue;
      const shared = wantShared && (await this.isShared(fe, e.path));
      if (fe.compression) {
        const ps = this.place(fe.diskBytenr, fe.diskNumBytes, 'btrfs data extent');
        const x: FileExtent = {
          fileOffset: e.fileOffset,
          length: fe.numBytes,
          volumeOffset: ps[0].volumeOffset,
          diskLength: fe.diskNumBytes,
          encoded: COMPRESSION[fe.compression],
        };
        // striped disk bytes are not one range of any device: named by their first piece's device
        if (ps.length > 1 || ps[0].device !== undefined) x.device = ps[0].device ?? this.ctx.sb.devid;
        if (fe.type === FE_PREALLOC) x.unwritten = true;
        if (shared) x.shared = true;
        yield x;
        continue;
      }
      let fileOffset = e.fileOffset;
      for (const p of this.place(fe.diskBytenr + fe.offset, fe.numBytes, 'btrfs data extent')) {
        const x: FileExtent = { fileOffset, length: p.length, volumeOffset: p.volumeOffset };
        if (p.device !== undefined) x.device = p.device;
        if (fe.type === FE_PREALLOC) x.unwritten = true;
        if (shared) x.shared = true;
        fileOffset += p.length;
        yield x;
      }
    }
  }

  /** Volume ranges (primary device) of every copy of logical bytes. */
  private onVolume(logical: number, length: number, structure: string): ByteRange[] {
    const out: ByteRange[] = [];
    const primary = this.ctx.sb.devid;
    for (const p of this.ctx.chunks.pieces(logical, length, structure))
      for (const c of p.copies) if (c.devid === primary) out.push({ offset: c.physical, length: p.length });
    return out;
  }

  async allocation(): Promise<ByteRange[]> {
    const rs: ByteRange[] = [];
    for (const off of SUPER_OFFSETS)
      if (off + SUPER_SIZE <= this.volume.size) rs.push({ offset: off, length: SUPER_SIZE });
    const ns = this.ctx.sb.nodeSize;
    for await (const it of items(this.ctx, this.extentRoot(), key(0, 0, 0), key(MAX_U64, 255, MAX_U64))) {
      let len: number;
      if (it.key.type === KT.EXTENT_ITEM) len = Number(it.key.off);
      else if (it.key.type === KT.METADATA_ITEM) len = ns;
      else continue;
      rs.push(...this.onVolume(Number(it.key.oid), len, 'btrfs extent item'));
    }
    return merge(rs);
  }

  async *metadataRegions(): AsyncIterable<OwnedRange> {
    const sb = this.ctx.sb;
    for (const off of SUPER_OFFSETS) {
      if (off + SUPER_SIZE <= this.volume.size)
        yield {
          offset: off,
          length: SUPER_SIZE,
          kind: 'superblock',
          detail: off === SUPER_OFFSETS[0] ? 'primary' : 'mirror',
        };
    }
    const trees: Array<{ root: TreeRoot; kind: string }> = [
      { root: { logical: sb.chunkRoot, level: sb.chunkRootLevel, name: 'chunk tree' }, kind: 'reserved' },
      { root: rootTreeOf(sb), kind: 'reserved' },
    ];
    for (const [id, ri] of this.rootItems) {
      const name = TREE_NAMES[String(id)] ?? (id >= TREE.FIRST_FREE ? `fs tree ${id}` : `tree ${id}`);
      trees.push({ root: { logical: ri.bytenr, level: ri.level, name }, kind: 'reserved' });
    }
    if (sb.logRoot)
      trees.push({ root: { logical: sb.logRoot, level: sb.logRootLevel, name: 'log tree' }, kind: 'journal' });
    const seen = new Set<number>();
    for (const t of trees) {
      for await (const n of treeBlocks(this.ctx, t.root)) {
        if (seen.has(n.logical)) continue;
        seen.add(n.logical);
        for (const r of this.onVolume(n.logical, sb.nodeSize, `btrfs ${t.root.name} node`)) {
          yield { ...r, kind: t.kind, detail: t.root.name };
        }
      }
    }
  }
}

/** A subvolume by id ("256", 256) or path from the top level ("@home", "/a/b/"); '/' or 5 is the top level. */
function findSubvol(subvols: readonly Subvolume[], want: string | number, file: string): Subvolume {
  const w = String(want).trim();
  const p = w.replace(/^\/+|\/+$/g, '');
  const sv =
    subvols.find((s) => /^\d+$/.test(w) && s.id === Number(w)) ??
    subvols.find((s) => (p === '' ? s.id === 5 : s.path === p));
  if (!sv) {
    const have = subvols.map((s) => `${s.id} ${s.path}`).join(', ');
    throw new StrataError('NOT_FOUND', `no subvolume ${JSON.stringify(want)} (subvolumes: ${have})`, {
      file,
      structure: 'btrfs root tree',
    });
  }
  return sv;
}

function rootTreeOf(sb: Superblock): TreeRoot {
  return { logical: sb.root, level: sb.rootLevel, name: 'root tree' };
}

function loadSysChunks(ctx: BtrfsContext, sb: Superblock): void {
  const a = sb.sysChunkArray;
  const dv = new DataView(a.buffer, a.byteOffset, a.byteLength);
  let p = 0;
  while (p < a.length) {
    const where = ctx.where('btrfs sys_chunk_array', SUPER_OFFSETS[0] + 0x32b + p);
    if (p + 17 + 48 > a.length) throw corrupt('chunk entry cut short', where);
    if (a[p + 8] !== KT.CHUNK_ITEM) throw corrupt(`key type ${a[p + 8]} in sys_chunk_array`, where);
    const logical = Number(dv.getBigUint64(p + 9, true));
    const n = dv.getUint16(p + 17 + 44, true);
    const end = p + 17 + 48 + n * 32;
    ctx.chunks.add(parseChunk(a, p + 17, Math.min(end, a.length), logical, where));
    p = end;
  }
  if (ctx.chunks.all().length === 0)
    throw corrupt('empty sys_chunk_array', ctx.where('btrfs superblock', SUPER_OFFSETS[0]));
}

function merge(rs: ByteRange[]): ByteRange[] {
  rs.sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of rs) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else out.push({ ...r });
  }
  return out;
}

export function openBtrfs(volume: ByteSource, opts: BtrfsOpenOptions = {}): Promise<BtrfsFileSystem> {
  return BtrfsFileSystem.open(volume, opts);
}

export const btrfsDriver: FsDriver = {
  kind: 'btrfs',
  options: ['subvol', 'devices'],
  probe(head: Uint8Array): boolean {
    return probeBtrfs(head);
  },
  open(volume: ByteSource, options: FsOpenOptions = {}): Promise<FileSystem> {
    const o: BtrfsOpenOptions = {};
    if (options.subvol !== undefined) o.subvol = options.subvol;
    if (options.devices !== undefined && options.devices.length > 0) o.devices = options.devices;
    return BtrfsFileSystem.open(volume, o);
  },
};
