import type { ByteSource } from '../../io/byte-source.js';
import { StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import type { ByteRange, DirEntry, FileExtent, FileSystem, FsDriver, FsInfo, Inode, OwnedRange } from '../types.js';
import { resolvePath } from '../walk.js';
import {
  exfatBootChecksum,
  type FatGeometry,
  looksLikeExfat,
  looksLikeFat,
  parseExfatBoot,
  parseFatBoot,
  u32,
} from './boot.js';
import { FatContext } from './context.js';
import { ATTR, parseFatDirectory, parseShortEntry } from './dirent.js';
import { EXFAT_ATTR_DIRECTORY, type ExfatFile, parseExfatDirectory, parseSet } from './exfat-entries.js';
import { parseFsInfo } from './fsinfo.js';
import { type ClusterRun, FatTable } from './table.js';
import { EXFAT_TIME_ZONE_NOTE, FAT_TIME_ZONE_NOTE } from './times.js';
import { nameHash, UpcaseTable, upcaseChecksum } from './upcase.js';

/** The root directory has no entry of its own; every other object's id is the volume offset of its (first) entry. */
export const FAT_ROOT_INO = 1;
/** FAT directories hold at most 65,536 entries; exFAT directories at most 256 MiB. */
const FAT_DIR_MAX = 65536 * 32;
const EXFAT_DIR_MAX = 256 << 20;
const NODE_CACHE = 1 << 20;
/** File reads up to this size go through the metadata cache. */
const SMALL_READ = 64 * 1024;

interface FatNode {
  pub: Inode;
  attr: number;
  firstCluster: number;
  /** Bytes of the stream (exFAT DataLength; FAT file size; a FAT directory's chain length). */
  size: number;
  /** exFAT ValidDataLength: bytes past it read as zeros. */
  validSize: number;
  noFatChain: boolean;
  /** The FAT12/16 root directory region. */
  fixedRoot: boolean;
  /** Where the entry (set) is: volume offset, for errors. */
  structure: string;
  /** A directory whose cluster chain is broken: listing it fails with this. */
  broken?: StrataError;
}

interface DirListing {
  entries: DirEntry[];
  byName: Map<string, DirEntry>;
  byFold?: Map<string, DirEntry>;
}

const isBadName = (n: string) => n === '' || n === '.' || n === '..' || n.includes('/') || n.includes('\0');

export class FatFileSystem implements FileSystem {
  readonly kind: string;
  readonly blockSize: number;
  readonly warnings: string[];
  private readonly nodes = new Map<number, FatNode>();
  private readonly dirs = new Map<number, DirListing>();
  private readonly runCache = new Map<number, ClusterRun[]>();
  private label?: string;
  private upcase = UpcaseTable.ascii();
  /** exFAT allocation bitmap (bit per cluster, cluster 2 = bit 0). */
  private bitmap?: Uint8Array;
  private specials: Array<{ kind: string; detail: string; offset: number; length: number }> = [];
  private fsInfoFree?: number;
  private rootNode!: FatNode;

  private constructor(
    private readonly ctx: FatContext,
    private readonly fat: FatTable,
  ) {
    this.kind = ctx.geo.variant === 'exfat' ? 'exfat' : 'vfat';
    this.blockSize = ctx.geo.clusterSize;
    this.warnings = ctx.warnings;
  }

  get volume(): ByteSource {
    return this.ctx.volume;
  }

  get geometry(): FatGeometry {
    return this.ctx.geo;
  }

  static async open(volume: ByteSource): Promise<FatFileSystem> {
    const head = await readHead(volume);
    const exfat = looksLikeExfat(head);
    const geo = exfat ? parseExfatBoot(head, volume.name) : parseFatBoot(head, volume.name, volume.size);
    const ctx = new FatContext(volume, geo);
    if (geo.totalBytes > volume.size) {
      ctx.warn(
        `the file system claims ${geo.totalBytes} bytes but the volume has ${volume.size}; reads past the end will fail`,
      );
    }
    if (geo.fatBytes > LIMITS.maxTableBytes) {
      throw ctx.error('LIMIT', `FAT of ${geo.fatBytes} bytes`, `${geo.variant} boot sector`, 0);
    }
    let active = 0;
    if (geo.variant === 'fat32' && geo.flags & 0x80) active = geo.flags & 15;
    if (exfat && geo.flags & 1 && geo.numFats === 2) active = 1;
    if (active >= geo.numFats)
      throw ctx.error('CORRUPT', `active FAT ${active} of ${geo.numFats}`, `${geo.variant} boot sector`, 40);
    const fatAt = geo.fatOffset + active * geo.fatBytes;
    const need =
      geo.variant === 'fat12'
        ? Math.ceil(((geo.clusterCount + 2) * 3) / 2) + 1
        : (geo.clusterCount + 2) * (geo.variant === 'fat16' ? 2 : 4);
    const raw = await ctx.read(fatAt, Math.min(geo.fatBytes, need), `${geo.variant} FAT ${active + 1}`);
    const fat = new FatTable(raw, geo, volume.name, fatAt);
    const fs = new FatFileSystem(ctx, fat);
    await fs.init(head, raw);
    return fs;
  }

  private async init(head: Uint8Array, fatRaw: Uint8Array): Promise<void> {
    const { ctx, fat } = this;
    const geo = ctx.geo;
    const root: FatNode = {
      pub: {
        ino: FAT_ROOT_INO,
        type: 'dir',
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: geo.rootDirBytes,
        nlink: 1,
      },
      attr: ATTR.DIRECTORY,
      firstCluster: geo.rootCluster,
      size: geo.rootDirBytes,
      validSize: geo.rootDirBytes,
      noFatChain: false,
      fixedRoot: geo.variant === 'fat12' || geo.variant === 'fat16',
      structure: 'root directory',
    };
    if (!root.fixedRoot) {
      const { clusters } = fat.chain(geo.rootCluster, this.dirMaxClusters(), 'root directory');
      root.size = root.validSize = root.pub.size = clusters * geo.clusterSize;
    }
    root.pub.allocatedBytes = root.size;
    this.rootNode = root;
    this.nodes.set(FAT_ROOT_INO, root);
    if (geo.variant === 'exfat') await this.initExfat(head);
    else await this.initFat(fatRaw);
    // the root listing gives the label (and, on exFAT, the bitmap and up-case table)
    await this.listing(root);
  }

  private async initFat(fatRaw: Uint8Array): Promise<void> {
    const { ctx, fat } = this;
    const geo = ctx.geo;
    const e1 = fat.entry(1);
    if (geo.variant === 'fat16' && e1 !== 0 && !(e1 & 0x8000))
      ctx.warn('FAT16 dirty flag set: the volume was not cleanly unmounted');
    if (geo.variant === 'fat32' && e1 !== 0 && !(e1 & 0x08000000))
      ctx.warn('FAT32 dirty flag set: the volume was not cleanly unmounted');
    if (geo.variant === 'fat32' && geo.fsInfoSector > 0 && geo.fsInfoSector < geo.reservedSectors) {
      const at = geo.fsInfoSector * geo.bytesPerSector;
      const info = parseFsInfo(await ctx.read(at, 512, 'FAT32 FSInfo sector'));
      if (!info.valid) ctx.warn(`FAT32 FSInfo sector ${geo.fsInfoSector}: bad signatures`);
      else if (info.freeCount !== 0xffffffff) this.fsInfoFree = info.freeCount;
    }
    if (geo.numFats > 1 && !(geo.variant === 'fat32' && geo.flags & 0x80)) {
      // mirrored FATs should agree (the spare copy is what repair tools fall back on)
      for (let k = 1; k < geo.numFats; k++) {
        const other = await ctx.read(geo.fatOffset + k * geo.fatBytes, fatRaw.length, `${geo.variant} FAT ${k + 1}`);
        if (Buffer.compare(other, fatRaw) !== 0) ctx.warn(`FAT ${k + 1} differs from FAT 1`);
      }
    }
  }

  private async initExfat(head: Uint8Array): Promise<void> {
    const ctx = this.ctx;
    const geo = ctx.geo;
    const bps = geo.bytesPerSector;
    const region = await ctx.read(0, 12 * bps, 'exFAT main boot region');
    region.set(head.subarray(0, Math.min(head.length, bps)));
    const sum = exfatBootChecksum(region, bps);
    for (let i = 0; i < bps; i += 4) {
      if (u32(region, 11 * bps + i) !== sum) {
        ctx.warn(
          `exFAT boot region checksum: sector 11 holds ${u32(region, 11 * bps + i)}, sectors 0-10 sum to ${sum}`,
        );
        break;
      }
    }
    if (geo.flags & 2) ctx.warn('exFAT VolumeDirty flag set: the volume was not cleanly unmounted');
    if (geo.flags & 4) ctx.warn('exFAT MediaFailure flag set');
    // critical entries of the root directory
    const { bytes } = await this.dirContent(this.rootNode);
    const { specials } = parseExfatDirectory(bytes, () => {});
    const bm = specials.find((s) => s.type === 'bitmap' && s.value === (geo.flags & 1 && geo.numFats === 2 ? 1 : 0));
    if (!bm)
      throw ctx.error(
        'CORRUPT',
        'no allocation bitmap entry in the root directory',
        'exFAT root directory',
        ctx.clusterOffset(geo.rootCluster),
      );
    const need = Math.ceil(geo.clusterCount / 8);
    if (bm.size < need || bm.firstCluster < 2 || bm.firstCluster > this.fat.maxCluster) {
      throw ctx.error(
        'CORRUPT',
        `allocation bitmap of ${bm.size} bytes at cluster ${bm.firstCluster} (needs ${need})`,
        'exFAT allocation bitmap entry',
        ctx.clusterOffset(geo.rootCluster) + bm.dirOffset,
      );
    }
    const bmRuns = this.fat.chain(
      bm.firstCluster,
      Math.ceil(bm.size / geo.clusterSize),
      'exFAT allocation bitmap',
    ).runs;
    this.bitmap = await this.readRuns(bmRuns, need, 'exFAT allocation bitmap');
    for (const r of ctx.ranges(bmRuns)) this.specials.push({ kind: 'bitmap', detail: 'allocation bitmap', ...r });
    const up = specials.find((s) => s.type === 'upcase');
    if (!up || up.size === 0 || up.size > 128 * 1024 || up.firstCluster < 2 || up.firstCluster > this.fat.maxCluster) {
      ctx.warn('exFAT up-case table entry missing or out of range: names compared in ASCII case only');
    } else {
      const upRuns = this.fat.chain(up.firstCluster, Math.ceil(up.size / geo.clusterSize), 'exFAT up-case table').runs;
      const table = await this.readRuns(upRuns, up.size, 'exFAT up-case table');
      const sum = upcaseChecksum(table);
      if (sum !== up.value) ctx.warn(`exFAT up-case table checksum ${sum} does not match its entry (${up.value})`);
      this.upcase = UpcaseTable.parse(table);
      for (const r of ctx.ranges(upRuns)) this.specials.push({ kind: 'reserved', detail: 'up-case table', ...r });
    }
  }

  private dirMaxClusters(): number {
    const max = this.ctx.geo.variant === 'exfat' ? EXFAT_DIR_MAX : FAT_DIR_MAX;
    return Math.max(1, Math.ceil(max / this.ctx.geo.clusterSize));
  }

  private async readRuns(runs: ClusterRun[], length: number, structure: string): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    let pos = 0;
    for (const r of this.ctx.ranges(runs)) {
      if (pos >= length) break;
      const n = Math.min(r.length, length - pos);
      out.set(await this.ctx.read(r.offset, n, structure), pos);
      pos += n;
    }
    if (pos < length) throw this.ctx.error('CORRUPT', `cluster chain holds ${pos} of ${length} bytes`, structure);
    return out;
  }

  /** The clusters of a node's stream, as runs (FAT chain, or contiguous for exFAT NoFatChain). */
  private runs(n: FatNode): ClusterRun[] {
    if (n.broken) throw n.broken;
    const cached = this.runCache.get(n.pub.ino);
    if (cached) return cached;
    const geo = this.ctx.geo;
    const cs = geo.clusterSize;
    const what = `${n.structure} (${n.pub.type === 'dir' ? 'directory' : 'file'})`;
    let runs: ClusterRun[];
    if (n.size === 0 && n.pub.type !== 'dir') runs = [];
    else if (n.firstCluster < 2 || n.firstCluster > this.fat.maxCluster) {
      throw this.ctx.error(
        'CORRUPT',
        `first cluster ${n.firstCluster} outside the heap (2..${this.fat.maxCluster})`,
        n.structure,
        entryOffset(n),
      );
    } else if (n.noFatChain) {
      const count = Math.ceil(n.size / cs);
      if (n.firstCluster + count - 1 > this.fat.maxCluster) {
        throw this.ctx.error(
          'CORRUPT',
          `contiguous stream of ${count} clusters from ${n.firstCluster} runs past the heap`,
          n.structure,
          entryOffset(n),
        );
      }
      runs = [{ first: n.firstCluster, count }];
    } else {
      const want = n.pub.type === 'dir' && geo.variant !== 'exfat' ? this.dirMaxClusters() : Math.ceil(n.size / cs);
      const c = this.fat.chain(n.firstCluster, want, what);
      if (n.pub.type !== 'dir' || geo.variant === 'exfat') {
        if (c.clusters < want) {
          throw this.ctx.error(
            'CORRUPT',
            `cluster chain of ${c.clusters} clusters is shorter than the size (${n.size} bytes)`,
            n.structure,
            entryOffset(n),
          );
        }
      }
      runs = c.runs;
    }
    if (this.runCache.size > NODE_CACHE) this.runCache.clear();
    this.runCache.set(n.pub.ino, runs);
    return runs;
  }

  /** A directory's content and the volume ranges it came from. */
  private async dirContent(n: FatNode): Promise<{ bytes: Uint8Array; ranges: ByteRange[] }> {
    if (n.fixedRoot) {
      const g = this.ctx.geo;
      const ranges = [{ offset: g.rootDirOffset, length: g.rootDirBytes }];
      return { bytes: await this.ctx.read(g.rootDirOffset, g.rootDirBytes, 'root directory region'), ranges };
    }
    const runs = this.runs(n);
    const ranges = this.ctx.ranges(runs);
    let total = 0;
    for (const r of ranges) total += r.length;
    if (this.ctx.geo.variant === 'exfat') total = Math.min(total, n.size);
    const bytes = await this.readRuns(runs, total, `directory ${n.structure}`);
    return { bytes, ranges };
  }

  private async listing(n: FatNode): Promise<DirListing> {
    const have = this.dirs.get(n.pub.ino);
    if (have) return have;
    const { bytes, ranges } = await this.dirContent(n);
    const at = (dirOffset: number): number => {
      let pos = dirOffset;
      for (const r of ranges) {
        if (pos < r.length) return r.offset + pos;
        pos -= r.length;
      }
      return -1;
    };
    const where = n.pub.ino === FAT_ROOT_INO ? 'root directory' : `directory ${n.structure}`;
    const warn = (msg: string, off: number) => this.ctx.warn(`${where}, entry at volume offset ${at(off)}: ${msg}`);
    const entries: DirEntry[] = [];
    const byName = new Map<string, DirEntry>();
    const add = (node: FatNode, name: string) => {
      if (isBadName(name)) {
        this.ctx.warn(`${where}: entry ${JSON.stringify(name)} at ${node.pub.ino} is not a usable name; skipped`);
        return;
      }
      this.remember(node);
      const e: DirEntry = { name, ino: node.pub.ino, type: node.pub.type };
      entries.push(e);
      if (!byName.has(name)) byName.set(name, e);
    };
    if (this.ctx.geo.variant === 'exfat') {
      const { files, label } = parseExfatDirectory(bytes, warn);
      if (n === this.rootNode) this.label = label;
      for (const f of files) {
        const ino = at(f.dirOffset);
        if (ino < 0) continue;
        const h = nameHash(f.name, this.upcase);
        if (h !== f.nameHash)
          warn(`name hash ${f.nameHash} of ${JSON.stringify(f.name)} does not match the name (${h})`, f.dirOffset);
        add(this.exfatNode(f, ino), f.name);
      }
    } else {
      const { entries: raw, label } = parseFatDirectory(bytes, warn);
      if (n === this.rootNode) this.label = label ?? this.ctx.geo.bpbLabel;
      for (const f of raw) {
        const ino = at(f.dirOffset);
        if (ino < 0) continue;
        const node = this.fatNode(f, ino);
        if (node) add(node, f.name);
      }
    }
    const listing = { entries, byName };
    if (this.dirs.size > 4096) this.dirs.clear();
    this.dirs.set(n.pub.ino, listing);
    return listing;
  }

  private remember(n: FatNode): void {
    if (this.nodes.size >= NODE_CACHE) {
      this.nodes.clear();
      this.nodes.set(FAT_ROOT_INO, this.rootNode);
    }
    this.nodes.set(n.pub.ino, n);
  }

  private fatNode(f: ReturnType<typeof parseShortEntry> & object, ino: number): FatNode | undefined {
    const geo = this.ctx.geo;
    const dir = (f.attr & ATTR.DIRECTORY) !== 0;
    const first = geo.variant === 'fat32' ? f.firstCluster : f.firstCluster & 0xffff;
    const node: FatNode = {
      pub: {
        ino,
        type: dir ? 'dir' : 'file',
        mode: (dir ? 0o755 : 0o644) & (f.attr & ATTR.READ_ONLY ? ~0o222 : ~0),
        uid: 0,
        gid: 0,
        size: dir ? 0 : f.size,
        nlink: 1,
        mtime: f.mtime,
        ctime: f.mtime,
        atime: f.atime,
        crtime: f.ctime,
        flags: f.attr,
      },
      attr: f.attr,
      firstCluster: first,
      size: dir ? 0 : f.size,
      validSize: dir ? 0 : f.size,
      noFatChain: false,
      fixedRoot: false,
      structure: `entry at ${ino}`,
    };
    if (dir && first === 0) {
      // a ".." style pointer to the root, or an empty directory with no cluster: treat as empty
      node.size = node.validSize = 0;
      node.pub.allocatedBytes = 0;
      return node;
    }
    if (dir) {
      try {
        const c = this.fat.chain(first, this.dirMaxClusters(), `directory entry at ${ino}`);
        node.size = node.validSize = node.pub.size = c.clusters * geo.clusterSize;
        this.runCache.set(ino, c.runs);
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        node.broken = e;
      }
    }
    node.pub.allocatedBytes = Math.ceil(node.size / geo.clusterSize) * geo.clusterSize;
    return node;
  }

  private exfatNode(f: ExfatFile, ino: number): FatNode {
    const dir = (f.attr & EXFAT_ATTR_DIRECTORY) !== 0;
    const cs = this.ctx.geo.clusterSize;
    return {
      pub: {
        ino,
        type: dir ? 'dir' : 'file',
        mode: (dir ? 0o755 : 0o644) & (f.attr & ATTR.READ_ONLY ? ~0o222 : ~0),
        uid: 0,
        gid: 0,
        size: f.size,
        nlink: 1,
        mtime: f.mtime,
        ctime: f.mtime,
        atime: f.atime,
        crtime: f.ctime,
        flags: f.attr,
        allocatedBytes: Math.ceil(f.size / cs) * cs,
      },
      attr: f.attr,
      firstCluster: f.firstCluster,
      size: f.size,
      validSize: Math.min(f.validSize, f.size),
      noFatChain: f.noFatChain,
      fixedRoot: false,
      structure: `entry set at ${ino}`,
    };
  }

  private async node(ino: number): Promise<FatNode> {
    const have = this.nodes.get(ino);
    if (have) return have;
    // not listed yet (or evicted): parse the entry at that offset
    const geo = this.ctx.geo;
    const bad = () => this.ctx.error('NOT_FOUND', `no directory entry at ${ino}`, `${this.kind} object ${ino}`, ino);
    if (
      !Number.isSafeInteger(ino) ||
      ino % 32 !== 0 ||
      ino < geo.fatOffset ||
      ino + 32 > Math.min(geo.totalBytes, this.volume.size)
    )
      throw bad();
    let node: FatNode | undefined;
    if (geo.variant === 'exfat') {
      const n = Math.min(19 * 32, this.volume.size - ino);
      const b = await this.ctx.read(ino, n, `exFAT entry set at ${ino}`);
      const f = b[0] === 0x85 ? parseSet(b, 0, b[1] + 1, () => {}) : undefined;
      if (f) node = this.exfatNode(f, ino);
    } else {
      const f = parseShortEntry(await this.ctx.read(ino, 32, `FAT directory entry at ${ino}`), 0);
      if (f) node = this.fatNode(f, ino);
    }
    if (!node) throw bad();
    this.remember(node);
    return node;
  }

  async info(): Promise<FsInfo> {
    const geo = this.ctx.geo;
    const free = this.freeClusters();
    const serial = geo.volumeId.toString(16).toUpperCase().padStart(8, '0');
    const extra: Record<string, unknown> = {
      variant: geo.variant.toUpperCase(),
      oemName: geo.oemName,
      clusterSize: geo.clusterSize,
      clusters: geo.clusterCount,
      sectorSize: geo.bytesPerSector,
      fats: geo.numFats,
      timeZone: geo.variant === 'exfat' ? EXFAT_TIME_ZONE_NOTE : FAT_TIME_ZONE_NOTE,
    };
    if (geo.variant === 'fat32') {
      extra.fsInfoFreeClusters = this.fsInfoFree;
      extra.backupBootSector = geo.backupBootSector;
    }
    if (geo.variant === 'exfat') {
      extra.revision = geo.revision;
      extra.volumeFlags = geo.flags;
      if (geo.percentInUse !== 0xff) extra.percentInUse = geo.percentInUse;
    }
    return {
      kind: this.kind,
      label: this.label,
      uuid: `${serial.slice(0, 4)}-${serial.slice(4)}`,
      blockSize: geo.clusterSize,
      totalBytes: geo.totalBytes,
      freeBytes: free * geo.clusterSize,
      features: [geo.variant],
      extra,
    };
  }

  private freeClusters(): number {
    if (!this.bitmap) return this.fat.freeClusters();
    let used = 0;
    const n = this.ctx.geo.clusterCount;
    for (let c = 0; c < n; c++) if (this.bitmap[c >> 3] & (1 << (c & 7))) used++;
    return n - used;
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

  private async dirNode(dir: Inode): Promise<FatNode> {
    const n = await this.node(dir.ino);
    if (n.pub.type !== 'dir') {
      throw this.ctx.error('USAGE', `not a directory: ${dir.ino}`, `${this.kind} object ${dir.ino}`);
    }
    return n;
  }

  async *readdir(dir: Inode): AsyncIterable<DirEntry> {
    yield* await this.readdirAll(dir);
  }

  async readdirAll(dir: Inode): Promise<DirEntry[]> {
    const n = await this.dirNode(dir);
    if (n.broken) throw n.broken;
    if (n.size === 0 && !n.fixedRoot) return [];
    return (await this.listing(n)).entries.slice();
  }

  /** Exact name first; FAT names are case-insensitive, so then a case-folded match. */
  async lookupChild(dir: Inode, name: string): Promise<DirEntry | undefined> {
    const n = await this.dirNode(dir);
    if (n.broken) throw n.broken;
    if (n.size === 0 && !n.fixedRoot) return undefined;
    const l = await this.listing(n);
    const e = l.byName.get(name);
    if (e) return e;
    if (!l.byFold) {
      l.byFold = new Map();
      for (const x of l.entries) {
        const k = this.fold(x.name);
        if (!l.byFold.has(k)) l.byFold.set(k, x);
      }
    }
    return l.byFold.get(this.fold(name));
  }

  private fold(s: string): string {
    if (!this.bitmap) return s.toUpperCase();
    let o = '';
    for (let i = 0; i < s.length; i++) o += String.fromCharCode(this.upcase.upper(s.charCodeAt(i)));
    return o;
  }

  async read(file: Inode, offset: number, length: number): Promise<Uint8Array> {
    const n = await this.node(file.ino);
    const end = Math.min(n.size, offset + length);
    if (offset >= end) return new Uint8Array(0);
    const out = new Uint8Array(end - offset);
    if (n.fixedRoot) {
      out.set(await this.ctx.read(this.ctx.geo.rootDirOffset + offset, end - offset, 'root directory region'));
      return out;
    }
    const cs = this.ctx.geo.clusterSize;
    const valid = Math.min(end, n.validSize);
    let pos = 0; // file offset of the current run
    for (const r of this.runs(n)) {
      const runEnd = pos + r.count * cs;
      const from = Math.max(pos, offset);
      const to = Math.min(runEnd, valid);
      if (from < to) {
        const at = this.ctx.clusterOffset(r.first) + (from - pos);
        const src = to - from <= SMALL_READ ? this.ctx.meta : this.volume;
        const b = await src.read(at, to - from);
        if (b.length !== to - from) {
          throw this.ctx.error('CORRUPT', `data at ${at} lies past the end of the volume`, `${n.structure} data`, at);
        }
        out.set(b, from - offset);
      }
      pos = runEnd;
      if (pos >= valid) break;
    }
    return out;
  }

  async readlink(link: Inode): Promise<string> {
    throw this.ctx.error(
      'USAGE',
      `object ${link.ino} is not a symbolic link (FAT has none)`,
      `${this.kind} object ${link.ino}`,
    );
  }

  async xattrs(_file: Inode): Promise<Map<string, Uint8Array>> {
    return new Map();
  }

  async *extents(file: Inode): AsyncIterable<FileExtent> {
    const n = await this.node(file.ino);
    if (n.fixedRoot) {
      yield { fileOffset: 0, length: n.size, volumeOffset: this.ctx.geo.rootDirOffset };
      return;
    }
    const cs = this.ctx.geo.clusterSize;
    let pos = 0;
    for (const r of this.runs(n)) {
      if (pos >= n.size) break;
      const len = Math.min(r.count * cs, n.size - pos);
      const at = this.ctx.clusterOffset(r.first);
      if (pos + len <= n.validSize) yield { fileOffset: pos, length: len, volumeOffset: at };
      else if (pos >= n.validSize) yield { fileOffset: pos, length: len, volumeOffset: at, unwritten: true };
      else {
        const v = n.validSize - pos;
        yield { fileOffset: pos, length: v, volumeOffset: at };
        yield { fileOffset: pos + v, length: len - v, volumeOffset: at + v, unwritten: true };
      }
      pos += len;
    }
  }

  async allocation(): Promise<ByteRange[]> {
    const geo = this.ctx.geo;
    const out: ByteRange[] = [{ offset: 0, length: geo.heapOffset }];
    let used: ByteRange[];
    if (this.bitmap) {
      used = [];
      let start = -1;
      for (let c = 0; c <= geo.clusterCount; c++) {
        const bit = c < geo.clusterCount && (this.bitmap[c >> 3] & (1 << (c & 7))) !== 0;
        if (bit && start < 0) start = c;
        else if (!bit && start >= 0) {
          used.push({ offset: geo.heapOffset + start * geo.clusterSize, length: (c - start) * geo.clusterSize });
          start = -1;
        }
      }
    } else used = this.fat.usedRanges();
    for (const r of used) {
      const last = out[out.length - 1];
      if (last.offset + last.length >= r.offset) last.length = Math.max(last.length, r.offset + r.length - last.offset);
      else out.push({ ...r });
    }
    return out;
  }

  async *metadataRegions(): AsyncIterable<OwnedRange> {
    const geo = this.ctx.geo;
    const bps = geo.bytesPerSector;
    // the reserved area: its structures, and what lies between them as 'reserved sectors'
    const head: OwnedRange[] = [];
    if (geo.variant === 'exfat') {
      head.push({ offset: 0, length: 12 * bps, kind: 'boot-sector', detail: 'main boot region' });
      head.push({ offset: 12 * bps, length: 12 * bps, kind: 'boot-sector', detail: 'backup boot region' });
    } else {
      head.push({ offset: 0, length: bps, kind: 'boot-sector', detail: 'boot sector' });
      if (geo.fsInfoSector > 0 && geo.fsInfoSector < geo.reservedSectors) {
        head.push({ offset: geo.fsInfoSector * bps, length: bps, kind: 'superblock', detail: 'FSInfo' });
      }
      if (geo.backupBootSector > 0 && geo.backupBootSector < geo.reservedSectors) {
        head.push({
          offset: geo.backupBootSector * bps,
          length: bps,
          kind: 'boot-sector',
          detail: 'backup boot sector',
        });
      }
    }
    head.sort((x, y) => x.offset - y.offset);
    let pos = 0;
    for (const h of head) {
      if (h.offset < pos) continue; // overlapping (a corrupt BPB): the first claim stands
      if (h.offset > pos) yield { offset: pos, length: h.offset - pos, kind: 'reserved', detail: 'reserved sectors' };
      yield h;
      pos = h.offset + h.length;
    }
    if (geo.fatOffset > pos)
      yield { offset: pos, length: geo.fatOffset - pos, kind: 'reserved', detail: 'reserved sectors' };
    // alignment between the FATs and the data area (exFAT); FAT12/16 keep their root directory there
    const fatsEnd = geo.fatOffset + geo.numFats * geo.fatBytes;
    const gapEnd = this.rootNode.fixedRoot ? geo.rootDirOffset : geo.heapOffset;
    if (gapEnd > fatsEnd)
      yield { offset: fatsEnd, length: gapEnd - fatsEnd, kind: 'reserved', detail: 'before the data area' };
    for (let k = 0; k < geo.numFats; k++) {
      yield { offset: geo.fatOffset + k * geo.fatBytes, length: geo.fatBytes, kind: 'bitmap', detail: `FAT ${k + 1}` };
    }
    for (const s of this.specials) yield { offset: s.offset, length: s.length, kind: s.kind, detail: s.detail };
    if (this.rootNode.fixedRoot) {
      yield {
        offset: geo.rootDirOffset,
        length: geo.rootDirBytes,
        kind: 'directory',
        ino: FAT_ROOT_INO,
        detail: 'root directory region',
      };
    }
    // every directory's clusters, walking the tree (each directory once)
    const seen = new Set<number>();
    const todo: FatNode[] = [this.rootNode];
    while (todo.length > 0) {
      const d = todo.pop()!;
      if (seen.has(d.pub.ino)) continue;
      seen.add(d.pub.ino);
      if (!d.fixedRoot) {
        if (d.size === 0) continue;
        let runs: ClusterRun[];
        try {
          runs = this.runs(d);
        } catch (e) {
          if (!(e instanceof StrataError)) throw e;
          continue;
        }
        for (const r of this.ctx.ranges(runs)) yield { ...r, kind: 'directory', ino: d.pub.ino };
      }
      let l: DirListing;
      try {
        l = await this.listing(d);
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        continue;
      }
      for (const e of l.entries) if (e.type === 'dir') todo.push(await this.node(e.ino));
    }
  }
}

function entryOffset(n: FatNode): number | undefined {
  return n.pub.ino === FAT_ROOT_INO ? undefined : n.pub.ino;
}

async function readHead(volume: ByteSource): Promise<Uint8Array> {
  if (volume.size < 512) {
    throw new StrataError('TRUNCATED', `volume of ${volume.size} bytes is smaller than a boot sector`, {
      file: volume.name,
      structure: 'FAT boot sector',
      offset: 0,
    });
  }
  const b = await volume.read(0, 512);
  return new Uint8Array(b);
}

export const fatDriver: FsDriver = {
  kind: 'vfat',
  probe(head: Uint8Array): boolean {
    return looksLikeFat(head);
  },
  open(volume: ByteSource): Promise<FileSystem> {
    return FatFileSystem.open(volume);
  },
};

export const exfatDriver: FsDriver = {
  kind: 'exfat',
  probe(head: Uint8Array): boolean {
    return looksLikeExfat(head);
  },
  open(volume: ByteSource): Promise<FileSystem> {
    return FatFileSystem.open(volume);
  },
};
