import type { ByteSource } from '../../io/byte-source.js';
import { readExact } from '../../io/byte-source.js';
import { CachedSource } from '../../io/cached-source.js';
import { type ErrorCode, StrataError } from '../../util/errors.js';
import { LIMITS } from '../../util/limits.js';
import type { ByteRange, DirEntry, FileExtent, FileSystem, FsDriver, FsInfo, Inode, OwnedRange } from '../types.js';
import { resolvePath } from '../walk.js';
import { lznt1Decode } from './lznt1.js';
import {
  ATTR,
  type Attribute,
  applyFixups,
  descriptorOwner,
  FILE_ATTR,
  type FileName,
  type IndexEntry,
  looksLikeNtfs,
  type MftRecord,
  NAMESPACE,
  type NtfsBoot,
  parseAttributeList,
  parseBoot,
  parseFileName,
  parseIndexNode,
  parseRecord,
  parseReparse,
  parseSiiNode,
  parseStandardInformation,
  REPARSE_TAG,
  type Run,
  type SiiEntry,
  u16,
  u32,
  upcaseName,
} from './structs.js';

export const NTFS_ROOT_INO = 5;
/** Not a reparse tag: marks an Interix (SFU) symlink file. */
const INTERIX_SYMLINK = -1;
/** MFT records 0..23 are reserved for the system files ($MFT ... $Extend and spares). */
const FIRST_USER_RECORD = 24;
const MAX_EXTENSION_RECORDS = 4096;
/** MFT records read (and cached) together. */
const MFT_CHUNK = 64;
const MFT_CACHE_BYTES = 16 << 20;
/** Parsed files kept (cleared when full): enough for a lookup, then a read, of recent ones; few enough to die young. */
const NODE_CACHE = 1024;
const MAX_INDEX_BYTES = 256 << 20;
const MAX_WARNINGS = 1000;
/**
 * A named $DATA stream (alternate data stream) looked up as `path:stream` gets an inode number
 * of its own: the MFT record number plus (k + 1) * 2^32, k = the stream's place among the
 * file's stream names in sorted order. Record numbers stay below 2^32 (an MFT of 4 TiB).
 */
const STREAM_INO = 2 ** 32;
const MAX_STREAMS = 2 ** 20;
/** Owner SIDs that ntfs-3g (and Windows) treat as root: SYSTEM and Administrators. */
const ROOT_SIDS = new Set(['S-1-5-18', 'S-1-5-32-544']);
/** ntfs-3g's default user mapping (no UserMapping file): uid u <-> S-1-5-21-3141592653-589793238-462843383-(10000 + 2u), gid g <-> ...-(10001 + 2g). */
const NTFS3G_DOMAIN = 'S-1-5-21-3141592653-589793238-462843383-';
const ATTR_NAMES: Record<number, string> = {
  32: '$ATTRIBUTE_LIST',
  80: '$SECURITY_DESCRIPTOR',
  192: '$REPARSE_POINT',
  208: '$EA_INFORMATION',
  224: '$EA',
  256: '$LOGGED_UTILITY_STREAM',
};
/** uid/gid for a SID with no mapping. */
const NOBODY = 65534;

/** The uid (or gid) a SID maps to: root for SYSTEM/Administrators, ntfs-3g's default mapping, else nobody. */
export function sidToId(sid: string | undefined, group: boolean): number {
  if (sid === undefined || ROOT_SIDS.has(sid)) return 0;
  if (sid.startsWith(NTFS3G_DOMAIN)) {
    const rid = Number(sid.slice(NTFS3G_DOMAIN.length));
    const base = group ? 10001 : 10000;
    if (Number.isInteger(rid) && rid >= base && (rid - base) % 2 === 0) return (rid - base) / 2;
  }
  return NOBODY;
}

export interface NtfsOpenOptions {
  /** List `$` system files ($MFT, $Bitmap, $Extend ...) in the root directory. */
  showMetadata?: boolean;
}

/** The volume, its geometry, a metadata cache and the warnings: shared by every reader. */
class NtfsContext {
  readonly meta: CachedSource;
  readonly warnings: string[] = [];
  constructor(
    readonly volume: ByteSource,
    readonly boot: NtfsBoot,
  ) {
    this.meta = new CachedSource(volume, { blockSize: 64 * 1024, capacity: 32 << 20 });
  }
  get name() {
    return this.volume.name;
  }
  warn(m: string) {
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(m);
  }
  error(code: ErrorCode, message: string, structure: string, offset?: number) {
    return new StrataError(code, message, { file: this.name, structure, offset });
  }
  read(offset: number, length: number, structure: string) {
    return readExact(this.meta, offset, length, structure);
  }
}

/** Raw MFT records read together; per record 0 = fixups not applied yet, 1 = applied, 2 = failed (errors). */
interface MftChunk {
  b: Uint8Array;
  state: Uint8Array;
  errors: Map<number, unknown>;
}

/** One stream of a file: the attribute extents (from one or more records) merged. */
interface Stream {
  attr: Attribute;
  runs: Run[];
}

interface Node {
  pub: Inode;
  rec: MftRecord;
  attrs: Attribute[];
  names: FileName[];
  reparse?: { tag: number; target?: string };
  /** Set on the inode of a named stream (`path:stream`): the $DATA attribute's name. */
  stream?: string;
}

export class NtfsFileSystem implements FileSystem {
  readonly kind = 'ntfs';
  readonly blockSize: number;
  readonly warnings: string[];
  private mftRuns: Run[] = [];
  private mftRecords = 0;
  /** $MFT's $DATA attribute (sizes), with mftRuns its stream. */
  private mftAttr?: Attribute;
  /**
   * Raw chunks of MFT_CHUNK consecutive records, read once each (a listing's files sit in
   * neighbouring records): a record is copied out of its chunk (fixups go on the copy) with
   * no read of its own. Bounded: cleared past MFT_CACHE_BYTES.
   */
  private readonly mftChunks = new Map<number, MftChunk | Promise<MftChunk>>();
  private mftChunkBytes = 0;
  private readonly nodes = new Map<number, Node>();
  private readonly dirs = new Map<number, DirEntry[]>();
  private label?: string;
  private version?: string;
  private volFlags = 0;
  private upcase?: Promise<Uint16Array | undefined>;
  private secure?: Promise<{ sii: Map<number, SiiEntry>; sds?: Stream } | undefined>;
  private readonly owners = new Map<number, { owner?: string; group?: string }>();

  private constructor(
    private readonly ctx: NtfsContext,
    private readonly opts: NtfsOpenOptions,
  ) {
    this.blockSize = ctx.boot.clusterSize;
    this.warnings = ctx.warnings;
  }

  get volume(): ByteSource {
    return this.ctx.volume;
  }

  static async open(volume: ByteSource, opts: NtfsOpenOptions = {}): Promise<NtfsFileSystem> {
    const head = await readExact(volume, 0, 512, 'NTFS boot sector');
    const boot = parseBoot(head, volume.name);
    const ctx = new NtfsContext(volume, boot);
    if (boot.totalBytes > volume.size)
      ctx.warn(`the file system claims ${boot.totalBytes} bytes but the volume has ${volume.size}`);
    const fs = new NtfsFileSystem(ctx, opts);
    await fs.init();
    return fs;
  }

  private async init(): Promise<void> {
    const { boot } = this.ctx;
    const at = boot.mftLcn * boot.clusterSize;
    const raw = await this.ctx.read(at, boot.recordSize, 'MFT record 0 ($MFT)');
    const b = new Uint8Array(raw); // a copy: Buffer.slice would alias the cache
    applyFixups(b, 'FILE', this.ctx.name, 'MFT record 0 ($MFT)', at);
    const rec0 = parseRecord(b, 0, boot.clusters, this.ctx.name, at);
    const data = rec0.attributes.find((a) => a.type === ATTR.DATA && a.name === '' && !a.resident);
    if (!data) throw this.ctx.error('CORRUPT', 'no non-resident $DATA in $MFT', 'MFT record 0', at);
    this.mftRuns = data.runs;
    this.mftAttr = data;
    this.mftRecords = Math.floor(data.dataSize / boot.recordSize);
    // $MFT's own $DATA may continue in extension records named by its attribute list
    if (rec0.attributes.some((a) => a.type === ATTR.ATTRIBUTE_LIST)) {
      const all = await this.gather(rec0);
      const s = this.stream(all, ATTR.DATA, '', 'MFT record 0');
      if (s) this.mftRuns = s.runs;
      this.mftChunks.clear(); // chunks read with the first extent's runs only
      this.mftChunkBytes = 0;
    }
    const vol = await this.node(3);
    const vn = vol.attrs.find((a) => a.type === ATTR.VOLUME_NAME);
    if (vn?.value) this.label = new TextDecoder('utf-16le').decode(vn.value);
    const vi = vol.attrs.find((a) => a.type === ATTR.VOLUME_INFORMATION);
    if (vi?.value && vi.value.length >= 12) {
      this.version = `${vi.value[8]}.${vi.value[9]}`;
      this.volFlags = u16(vi.value, 10);
      if (this.volFlags & 1)
        this.ctx.warn('NTFS volume dirty flag set: the volume was not cleanly unmounted (chkdsk pending)');
    }
  }

  // ------------------------------------------------------------ MFT records

  private async readRecord(n: number): Promise<MftRecord> {
    const { boot } = this.ctx;
    const structure = `MFT record ${n}`;
    if (!Number.isInteger(n) || n < 0 || n >= this.mftRecords)
      throw this.ctx.error('NOT_FOUND', `record ${n} outside the MFT (${this.mftRecords} records)`, structure);
    const pos = n * boot.recordSize;
    const vcn = Math.floor(pos / boot.clusterSize);
    const run = this.mftRuns.find((r) => vcn >= r.vcn && vcn < r.vcn + r.length);
    if (!run || run.lcn < 0)
      throw this.ctx.error('CORRUPT', `MFT record ${n} is not mapped by $MFT's runlist`, structure);
    const at = (run.lcn + vcn - run.vcn) * boot.clusterSize + (pos % boot.clusterSize);
    const c = Math.floor(n / MFT_CHUNK);
    let chunk = this.mftChunks.get(c) ?? this.mftChunk(c);
    if (chunk instanceof Promise) chunk = await chunk;
    const i = n - c * MFT_CHUNK;
    const from = i * boot.recordSize;
    if (chunk.b.length < from + boot.recordSize)
      throw this.ctx.error('TRUNCATED', `short read of the MFT: ${chunk.b.length} bytes`, structure, at);
    const b = chunk.b.subarray(from, from + boot.recordSize);
    // the chunk is this reader's own copy: fixups go in place, once (a record that failed them fails again alike)
    if (chunk.state[i] === 0) {
      try {
        applyFixups(b, 'FILE', this.ctx.name, structure, at);
        chunk.state[i] = 1;
      } catch (e) {
        chunk.state[i] = 2;
        chunk.errors.set(i, e);
        throw e;
      }
    } else if (chunk.state[i] === 2) throw chunk.errors.get(i);
    return parseRecord(b, n, boot.clusters, this.ctx.name, at);
  }

  /** Records [c * MFT_CHUNK, (c + 1) * MFT_CHUNK) of the MFT, raw, read through its runlist once. */
  private mftChunk(c: number): Promise<MftChunk> {
    const rs = this.ctx.boot.recordSize;
    const first = c * MFT_CHUNK;
    const count = Math.min(MFT_CHUNK, this.mftRecords - first);
    const attr = this.mftAttr!;
    const p = this.readStream(
      { attr, runs: this.mftRuns },
      first * rs,
      count * rs,
      `MFT records ${first}..${first + count - 1}`,
    ).then(
      (b) => {
        if (this.mftChunkBytes + b.length > MFT_CACHE_BYTES) {
          this.mftChunks.clear();
          this.mftChunkBytes = 0;
        }
        const chunk: MftChunk = { b, state: new Uint8Array(count), errors: new Map() };
        this.mftChunks.set(c, chunk);
        this.mftChunkBytes += b.length;
        return chunk;
      },
      (e) => {
        this.mftChunks.delete(c);
        throw e;
      },
    );
    this.mftChunks.set(c, p);
    return p;
  }

  /** A base record's attributes, with those its $ATTRIBUTE_LIST places in extension records. */
  private async gather(rec: MftRecord): Promise<Attribute[]> {
    const list = rec.attributes.find((a) => a.type === ATTR.ATTRIBUTE_LIST);
    if (!list) return rec.attributes;
    const structure = `$ATTRIBUTE_LIST of MFT record ${rec.number}`;
    const value = list.resident
      ? list.value!
      : await this.readStream({ attr: list, runs: list.runs }, 0, list.dataSize, structure);
    const entries = parseAttributeList(value, this.ctx.name, structure);
    const others = [...new Set(entries.map((e) => e.record).filter((r) => r !== rec.number))];
    if (others.length > MAX_EXTENSION_RECORDS)
      throw this.ctx.error('LIMIT', `${others.length} extension records`, structure);
    const out = [...rec.attributes.filter((a) => a.type !== ATTR.ATTRIBUTE_LIST)];
    for (const o of others) {
      const ext = await this.readRecord(o);
      if (ext.baseRecord !== rec.number) {
        this.ctx.warn(`${structure}: record ${o} names base ${ext.baseRecord}; skipped`);
        continue;
      }
      if (ext.attributes.some((a) => a.type === ATTR.ATTRIBUTE_LIST))
        throw this.ctx.error('LOOP', `extension record ${o} holds an attribute list of its own`, structure);
      out.push(...ext.attributes);
    }
    return out;
  }

  /** The stream of (type, name): its extents joined in VCN order; sizes from the first. */
  private stream(attrs: Attribute[], type: number, name: string, structure: string): Stream | undefined {
    const parts = attrs.filter((a) => a.type === type && a.name === name).sort((a, b) => a.startVcn - b.startVcn);
    if (parts.length === 0) return undefined;
    const first = parts[0];
    if (first.resident) return { attr: first, runs: [] };
    const runs: Run[] = [];
    let next = 0;
    for (const p of parts) {
      if (p.resident) continue;
      if (p.startVcn !== next)
        throw this.ctx.error('CORRUPT', `attribute extent starts at VCN ${p.startVcn}, expected ${next}`, structure);
      runs.push(...p.runs);
      next = p.lastVcn + 1;
    }
    return { attr: first, runs };
  }

  async node(n: number): Promise<Node> {
    const have = this.nodes.get(n);
    if (have) return have;
    if (n >= STREAM_INO) return this.streamNode(n);
    const rec = await this.readRecord(n);
    const structure = `MFT record ${n}`;
    if (!(rec.flags & 1)) throw this.ctx.error('NOT_FOUND', 'record not in use', structure);
    if (rec.baseRecord !== 0)
      throw this.ctx.error('NOT_FOUND', `extension record of ${rec.baseRecord}, not a file`, structure);
    const attrs = rec.attributes.some((a) => a.type === ATTR.ATTRIBUTE_LIST) ? await this.gather(rec) : rec.attributes;
    const names = attrs
      .filter((a) => a.type === ATTR.FILE_NAME && a.value)
      .map((a) => parseFileName(a.value!, this.ctx.name, structure));
    const siAttr = attrs.find((a) => a.type === ATTR.STANDARD_INFORMATION && a.value);
    const si = siAttr ? parseStandardInformation(siAttr.value!) : undefined;
    const isDir = (rec.flags & 2) !== 0;
    const rpAttr = attrs.find((a) => a.type === ATTR.REPARSE_POINT);
    let reparse: Node['reparse'];
    if (rpAttr) {
      const v = rpAttr.resident
        ? rpAttr.value!
        : await this.readStream(
            { attr: rpAttr, runs: rpAttr.runs },
            0,
            rpAttr.dataSize,
            `$REPARSE_POINT of ${structure}`,
          );
      reparse = parseReparse(v);
    }
    // Interix symlinks (ntfs-3g's default): a SYSTEM file holding "IntxLNK\1" and the UTF-16 target
    const faEarly = si?.fileAttributes ?? 0;
    if (!reparse && !isDir && faEarly & FILE_ATTR.SYSTEM) {
      const d = this.stream(attrs, ATTR.DATA, '', structure);
      if (d && d.attr.dataSize > 8 && d.attr.dataSize <= 8 + 2 * 4096) {
        const v = await this.readStream(d, 0, d.attr.dataSize, `$DATA of ${structure}`);
        if (String.fromCharCode(...v.subarray(0, 8)) === 'IntxLNK\u0001') {
          reparse = { tag: INTERIX_SYMLINK, target: new TextDecoder('utf-16le').decode(v.subarray(8)) };
        }
      }
    }
    const isLink =
      reparse !== undefined &&
      (reparse.tag === REPARSE_TAG.SYMLINK ||
        reparse.tag === REPARSE_TAG.MOUNT_POINT ||
        reparse.tag === REPARSE_TAG.LX_SYMLINK ||
        reparse.tag === INTERIX_SYMLINK);
    const data = isDir ? undefined : this.stream(attrs, ATTR.DATA, '', structure);
    const fa = si?.fileAttributes ?? 0;
    const linkNames = names.filter((x) => x.namespace !== NAMESPACE.DOS).length;
    const pub: Inode = {
      ino: n,
      type: isLink ? 'symlink' : isDir ? 'dir' : 'file',
      mode:
        (isDir || isLink ? 0o777 : 0o666) &
        (fa & FILE_ATTR.READONLY ? ~0o222 : ~0) &
        (isLink ? ~0 : isDir ? 0o755 : 0o644),
      uid: 0,
      gid: 0,
      size: isLink ? (reparse?.target?.length ?? 0) : (data?.attr.dataSize ?? 0),
      nlink: Math.max(1, linkNames),
      flags: fa,
      allocatedBytes: data ? (data.attr.resident ? 0 : data.attr.allocatedSize) : 0,
    };
    if (si) {
      pub.crtime = si.crtime;
      pub.mtime = si.mtime;
      pub.ctime = si.ctime;
      pub.atime = si.atime;
    }
    // most files share a security id already looked up: no await for those
    const known = si?.securityId ? this.owners.get(si.securityId) : undefined;
    const sd =
      known && !attrs.some((a) => a.type === ATTR.SECURITY_DESCRIPTOR)
        ? known
        : await this.securityOf(attrs, si?.securityId, structure);
    if (sd.owner) pub.ownerSid = sd.owner;
    if (sd.group) pub.groupSid = sd.group;
    pub.uid = sidToId(sd.owner, false);
    pub.gid = sidToId(sd.group, true);
    const node: Node = { pub, rec, attrs, names, reparse };
    if (this.nodes.size >= NODE_CACHE) this.nodes.clear();
    this.nodes.set(n, node);
    return node;
  }

  /** Names of a file's named $DATA streams, sorted (their order gives the stream inode numbers). */
  private streamNames(n: Node): string[] {
    return [...new Set(n.attrs.filter((a) => a.type === ATTR.DATA && a.name !== '').map((a) => a.name))].sort();
  }

  /** The inode of a named stream: the file's facts with the stream's size and extents. */
  private async streamNode(ino: number): Promise<Node> {
    const base = await this.node(ino % STREAM_INO);
    const k = Math.floor(ino / STREAM_INO) - 1;
    const name = this.streamNames(base)[k];
    const structure = `MFT record ${ino % STREAM_INO}`;
    if (name === undefined) throw this.ctx.error('NOT_FOUND', `no stream ${k} (inode ${ino})`, structure);
    const s = this.stream(base.attrs, ATTR.DATA, name, structure)!;
    const pub: Inode = {
      ...base.pub,
      ino,
      type: 'file',
      mode: base.pub.mode & 0o666,
      nlink: 1,
      size: s.attr.dataSize,
      allocatedBytes: s.attr.resident ? 0 : s.attr.allocatedSize,
    };
    return { ...base, pub, reparse: undefined, stream: name };
  }

  /**
   * Owner and group SIDs: the security descriptor $Secure:$SDS holds for the file's security
   * id (NTFS 3.x, found through the $SII index), or the file's own $SECURITY_DESCRIPTOR (1.x).
   */
  private async securityOf(
    attrs: Attribute[],
    id: number | undefined,
    structure: string,
  ): Promise<{ owner?: string; group?: string }> {
    const own = attrs.find((a) => a.type === ATTR.SECURITY_DESCRIPTOR);
    if (own) {
      const v = own.resident
        ? own.value!
        : await this.readStream({ attr: own, runs: own.runs }, 0, Math.min(own.dataSize, 65536), structure);
      return descriptorOwner(v);
    }
    if (!id) return {};
    const have = this.owners.get(id);
    if (have) return have;
    this.secure ??= this.loadSecure().catch((e) => {
      if (!(e instanceof StrataError)) throw e;
      this.ctx.warn(`$Secure unreadable, owners unknown: ${e.message}`);
      return undefined;
    });
    const secure = await this.secure;
    const sii = secure?.sii;
    const at = sii?.get(id);
    let out: { owner?: string; group?: string } = {};
    if (sii && !at) this.ctx.warn(`${structure}: security id ${id} not in $Secure:$SII`);
    if (at) {
      const sds = secure?.sds;
      const where = `$Secure:$SDS entry of security id ${id} at ${at.offset}`;
      if (!sds || at.length < 20 || at.length > 65536 || at.offset + at.length > sds.attr.dataSize)
        throw this.ctx.error('CORRUPT', `descriptor of ${at.length} bytes outside $SDS`, where);
      const v = await this.readStream(sds, at.offset, at.length, where);
      if (u32(v, 4) !== id) throw this.ctx.error('CORRUPT', `entry names security id ${u32(v, 4)}`, where);
      out = descriptorOwner(v.subarray(20));
    }
    if (this.owners.size > 65536) this.owners.clear();
    this.owners.set(id, out);
    return out;
  }

  /** $Secure's $SII index (security id -> $SDS entry), every node read once. */
  private async loadSecure(): Promise<{ sii: Map<number, SiiEntry>; sds?: Stream }> {
    const attrs = await this.systemAttrs(9);
    const sii = new Map<number, SiiEntry>();
    for (const { b, hdr, where } of await this.indexNodes(attrs, '$SII', '$Secure:$SII'))
      for (const e of parseSiiNode(b, hdr, this.ctx.name, where)) sii.set(e.securityId, e);
    return { sii, sds: this.stream(attrs, ATTR.DATA, '$SDS', '$Secure') };
  }

  /** A system file's attributes without its owner (which $Secure gives: no cycle through node()). */
  private async systemAttrs(n: number): Promise<Attribute[]> {
    const rec = await this.readRecord(n);
    if (!(rec.flags & 1)) throw this.ctx.error('CORRUPT', 'system file record not in use', `MFT record ${n}`);
    return this.gather(rec);
  }

  /** The volume's $UpCase table (MFT record 10), for Windows' case-insensitive name matching. */
  private upcaseTable(): Promise<Uint16Array | undefined> {
    this.upcase ??= (async () => {
      const s = this.stream(await this.systemAttrs(10), ATTR.DATA, '', '$UpCase');
      const size = s?.attr.dataSize ?? 0;
      if (size !== 131072 || !s)
        throw this.ctx.error('CORRUPT', `$UpCase of ${size} bytes, not 131072`, 'MFT record 10');
      const b = await this.readStream(s, 0, 131072, '$UpCase');
      const t = new Uint16Array(65536);
      for (let i = 0; i < 65536; i++) t[i] = u16(b, 2 * i);
      return t;
    })().catch((e) => {
      if (!(e instanceof StrataError)) throw e;
      this.ctx.warn(`${e.message}; names compared with ASCII case folding`);
      return undefined;
    });
    return this.upcase;
  }

  // ------------------------------------------------------------ stream reading

  /** Read bytes [off, off+len) of a stream (resident, plain, sparse or LZNT1-compressed). */
  private async readStream(s: Stream, off: number, len: number, structure: string): Promise<Uint8Array> {
    const a = s.attr;
    const end = Math.min(off + len, a.dataSize);
    if (end <= off) return new Uint8Array(0);
    if (end - off > LIMITS.maxReadBytes) throw this.ctx.error('LIMIT', `read of ${end - off} bytes`, structure);
    if (a.resident) return a.value!.slice(off, end);
    const out = new Uint8Array(end - off);
    const cs = this.ctx.boot.clusterSize;
    const valid = Math.min(end, a.initializedSize);
    if (a.compressionUnit && a.flags & 1) {
      const unit = cs << a.compressionUnit;
      for (let u = Math.floor(off / unit) * unit; u < valid; u += unit) {
        const plain = await this.compressionUnit(s, u / cs, 1 << a.compressionUnit, structure);
        const from = Math.max(u, off);
        const to = Math.min(u + unit, valid);
        out.set(plain.subarray(from - u, to - u), from - off);
      }
      return out;
    }
    for (const r of s.runs) {
      const rs = r.vcn * cs;
      const re = rs + r.length * cs;
      const from = Math.max(rs, off);
      const to = Math.min(re, valid);
      if (from >= to || r.lcn < 0) continue;
      out.set(
        await this.ctx.volume
          .read(r.lcn * cs + (from - rs), to - from)
          .then((b) => this.full(b, to - from, structure, r.lcn * cs)),
        from - off,
      );
    }
    return out;
  }

  private full(b: Uint8Array, n: number, structure: string, at: number): Uint8Array {
    if (b.length !== n) throw this.ctx.error('TRUNCATED', `short read: ${b.length} of ${n} bytes`, structure, at);
    return b;
  }

  /** Clusters [vcn, vcn+count) as (lcn|-1) per cluster. */
  private mapClusters(runs: Run[], vcn: number, count: number): number[] {
    const out: number[] = new Array(count).fill(-1);
    for (const r of runs) {
      const from = Math.max(r.vcn, vcn);
      const to = Math.min(r.vcn + r.length, vcn + count);
      for (let c = from; c < to; c++) out[c - vcn] = r.lcn < 0 ? -1 : r.lcn + (c - r.vcn);
    }
    return out;
  }

  private async compressionUnit(s: Stream, vcn: number, count: number, structure: string): Promise<Uint8Array> {
    const cs = this.ctx.boot.clusterSize;
    const map = this.mapClusters(s.runs, vcn, count);
    const real = map.filter((c) => c >= 0);
    const out = new Uint8Array(count * cs);
    if (real.length === 0) return out;
    const raw = new Uint8Array(real.length * cs);
    for (let i = 0; i < real.length; i++)
      raw.set(this.full(await this.ctx.volume.read(real[i] * cs, cs), cs, structure, real[i] * cs), i * cs);
    if (real.length === count) return raw; // stored uncompressed
    lznt1Decode(raw, out, this.ctx.name, `${structure}, compression unit at VCN ${vcn}`);
    return out;
  }

  // ------------------------------------------------------------ directories

  private async index(dir: Node): Promise<IndexEntry[]> {
    const out: IndexEntry[] = [];
    for (const { b, hdr, where } of await this.indexNodes(
      dir.attrs,
      '$I30',
      `directory index of MFT record ${dir.pub.ino}`,
    ))
      out.push(...parseIndexNode(b, hdr, this.ctx.name, where, 0));
    return out;
  }

  /**
   * Every node of index `name` of a record: its $INDEX_ROOT (node header at 16) and each
   * in-use INDX block of its $INDEX_ALLOCATION (fixups applied, node header at 24).
   */
  private async indexNodes(
    attrs: Attribute[],
    name: string,
    structure: string,
  ): Promise<Array<{ b: Uint8Array; hdr: number; where: string }>> {
    const root = attrs.find((a) => a.type === ATTR.INDEX_ROOT && a.name === name);
    if (!root?.value || root.value.length < 32) throw this.ctx.error('CORRUPT', `no $INDEX_ROOT ${name}`, structure);
    const out = [{ b: root.value, hdr: 16, where: structure }];
    const alloc = this.stream(attrs, ATTR.INDEX_ALLOCATION, name, structure);
    if (!alloc || alloc.attr.resident) return out;
    const bs = u32(root.value, 8) || this.ctx.boot.indexBlockSize;
    if (bs < 512 || bs > 65536 || bs & (bs - 1)) throw this.ctx.error('CORRUPT', `index block size ${bs}`, structure);
    if (alloc.attr.dataSize > MAX_INDEX_BYTES)
      throw this.ctx.error('LIMIT', `index of ${alloc.attr.dataSize} bytes`, structure);
    const bmAttr = attrs.find((a) => a.type === ATTR.BITMAP && a.name === name);
    let bitmap: Uint8Array | undefined;
    if (bmAttr)
      bitmap = bmAttr.resident
        ? bmAttr.value!
        : await this.readStream({ attr: bmAttr, runs: bmAttr.runs }, 0, bmAttr.dataSize, structure);
    const all = await this.readStream(alloc, 0, alloc.attr.dataSize, structure);
    for (let i = 0; (i + 1) * bs <= all.length; i++) {
      if (bitmap && !(bitmap[i >> 3] & (1 << (i & 7)))) continue;
      const blk = all.subarray(i * bs, (i + 1) * bs); // `all` is this call's own copy: fixups may go in place
      const where = `${structure}, INDX block ${i}`;
      applyFixups(blk, 'INDX', this.ctx.name, where, i * bs);
      out.push({ b: blk, hdr: 24, where });
    }
    return out;
  }

  private async listing(dir: Inode): Promise<DirEntry[]> {
    const have = this.dirs.get(dir.ino);
    if (have) return have;
    const n = await this.node(dir.ino);
    if (n.pub.type !== 'dir') throw this.ctx.error('USAGE', 'not a directory', `MFT record ${dir.ino}`);
    const seen = new Set<string>();
    const out: DirEntry[] = [];
    for (const e of await this.index(n)) {
      if (!e.key || e.key.namespace === NAMESPACE.DOS) continue;
      const name = e.key.name;
      if (
        e.ref === dir.ino ||
        name === '' ||
        name === '.' ||
        name === '..' ||
        name.includes('/') ||
        name.includes('\0')
      )
        continue;
      const k = `${e.ref}/${name}`;
      if (seen.has(k)) continue;
      seen.add(k);
      const isDir = (e.key.flags & 0x10000000) !== 0;
      const isReparse = (e.key.flags & FILE_ATTR.REPARSE) !== 0;
      out.push({ name, ino: e.ref, type: isReparse ? (await this.node(e.ref)).pub.type : isDir ? 'dir' : 'file' });
    }
    out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (this.dirs.size > 4096) this.dirs.clear();
    this.dirs.set(dir.ino, out);
    return out;
  }

  // ------------------------------------------------------------ FileSystem

  async info(): Promise<FsInfo> {
    const b = this.ctx.boot;
    const used = (await this.allocation()).reduce((s, r) => s + r.length, 0);
    return {
      kind: 'ntfs',
      label: this.label,
      uuid: b.serial,
      blockSize: b.clusterSize,
      totalBytes: b.totalBytes,
      freeBytes: Math.max(0, b.clusters * b.clusterSize - used),
      totalInodes: this.mftRecords,
      extra: {
        version: this.version,
        dirty: (this.volFlags & 1) !== 0,
        mftRecordSize: b.recordSize,
        indexBlockSize: b.indexBlockSize,
      },
    };
  }

  async root(): Promise<Inode> {
    return (await this.node(NTFS_ROOT_INO)).pub;
  }

  async inode(ino: number): Promise<Inode> {
    return (await this.node(ino)).pub;
  }

  /**
   * Many inodes (a listing's): one after another, in record order so each 64-record MFT chunk
   * is read once, rather than 32 loads in flight (walk.ts's default), which only add promises:
   * the I/O is one chunk read per 64 records.
   */
  async inodes(inos: readonly number[]): Promise<Inode[]> {
    const order = inos.map((_, i) => i).sort((a, b) => inos[a] - inos[b]);
    const out = new Array<Inode>(inos.length);
    for (const i of order) out[i] = (await this.node(inos[i])).pub;
    return out;
  }

  lookup(path: string): Promise<Inode> {
    return resolvePath(this, path);
  }

  /** A listing as readdir gives it: the root's `$` system files only with `showMetadata`. */
  private async visible(dir: Inode): Promise<DirEntry[]> {
    const l = await this.listing(dir);
    if (dir.ino !== NTFS_ROOT_INO || this.opts.showMetadata) return l;
    return l.filter((e) => !(e.ino < FIRST_USER_RECORD && e.name.startsWith('$')));
  }

  async *readdir(dir: Inode): AsyncIterable<DirEntry> {
    yield* await this.visible(dir);
  }

  readdirAll(dir: Inode): Promise<DirEntry[]> {
    return this.visible(dir);
  }

  /**
   * One name in a directory, as Windows finds it: the exact name first (POSIX-namespace names
   * may differ only in case), then the first name equal under the volume's $UpCase table.
   * Hidden `$` system files are found when named (`/$MFT`). `name:stream` (also
   * `name:stream:$DATA`) is the named $DATA stream of `name`, with an inode number of its own;
   * `name::$DATA` is `name`. A real name holding ':' (POSIX namespace) wins.
   */
  async lookupChild(dir: Inode, name: string): Promise<DirEntry | undefined> {
    const l = await this.listing(dir);
    const exact = l.find((e) => e.name === name);
    if (exact) return exact;
    const up = await this.upcaseTable();
    const key = upcaseName(name, up);
    const folded = l.find((e) => upcaseName(e.name, up) === key);
    if (folded || !name.includes(':')) return folded;
    const colon = name.indexOf(':');
    const base = await this.lookupChild(dir, name.slice(0, colon));
    if (!base || base.ino >= STREAM_INO) return undefined;
    let stream = name.slice(colon + 1);
    const typed = /^(.*):\$DATA$/i.exec(stream);
    if (typed) stream = typed[1];
    else if (stream.includes(':')) return undefined;
    if (stream === '') return base;
    const names = this.streamNames(await this.node(base.ino));
    let k = names.indexOf(stream);
    if (k < 0) k = names.findIndex((x) => upcaseName(x, up) === upcaseName(stream, up));
    if (k < 0 || k >= MAX_STREAMS || base.ino >= STREAM_INO) return undefined;
    return { name, ino: base.ino + (k + 1) * STREAM_INO, type: 'file' };
  }

  async read(file: Inode, offset: number, length: number): Promise<Uint8Array> {
    const n = await this.node(file.ino);
    if (n.pub.type === 'dir') throw this.ctx.error('USAGE', 'read of a directory', `MFT record ${file.ino}`);
    const where = `$DATA${n.stream ? `:${n.stream}` : ''} of MFT record ${file.ino % STREAM_INO}`;
    const s = this.stream(n.attrs, ATTR.DATA, n.stream ?? '', where);
    if (!s) return new Uint8Array(0);
    return this.readStream(s, offset, length, where);
  }

  async readlink(link: Inode): Promise<string> {
    const n = await this.node(link.ino);
    if (!n.reparse?.target) throw this.ctx.error('USAGE', 'not a symbolic link or junction', `MFT record ${link.ino}`);
    return n.reparse.target.replaceAll('\\', '/');
  }

  /** Named $DATA streams (alternate data streams) as `ntfs.stream.NAME`. */
  async xattrs(file: Inode): Promise<Map<string, Uint8Array>> {
    const n = await this.node(file.ino);
    const out = new Map<string, Uint8Array>();
    if (n.stream) return out;
    for (const name of this.streamNames(n)) {
      const s = this.stream(n.attrs, ATTR.DATA, name, `MFT record ${file.ino}`)!;
      out.set(
        `ntfs.stream.${name}`,
        await this.readStream(s, 0, s.attr.dataSize, `$DATA:${name} of MFT record ${file.ino}`),
      );
    }
    if (n.reparse && !n.reparse.target && n.reparse.tag >= 0)
      out.set('ntfs.reparse_tag', new TextEncoder().encode(`0x${n.reparse.tag.toString(16)}`));
    return out;
  }

  /**
   * Where a file's bytes lie (a named stream's, for a `path:stream` inode); a directory's
   * extents are its $I30 index allocation (the INDX blocks), as ext's are its blocks.
   */
  async *extents(file: Inode): AsyncIterable<FileExtent> {
    const n = await this.node(file.ino);
    if (n.pub.type === 'dir') {
      const a = this.stream(n.attrs, ATTR.INDEX_ALLOCATION, '$I30', `MFT record ${file.ino}`);
      if (a && !a.attr.resident) yield* this.plain(a.runs, 0, Number.MAX_SAFE_INTEGER, a.attr.dataSize);
      return;
    }
    const s = this.stream(n.attrs, ATTR.DATA, n.stream ?? '', `MFT record ${file.ino % STREAM_INO}`);
    if (!s || s.attr.dataSize === 0) return;
    const a = s.attr;
    if (a.resident) {
      yield { fileOffset: 0, length: a.dataSize, volumeOffset: a.valueVolumeOffset ?? 0, inline: true };
      return;
    }
    const cs = this.ctx.boot.clusterSize;
    if (a.compressionUnit && a.flags & 1) {
      const count = 1 << a.compressionUnit;
      for (let vcn = 0; vcn * cs < a.dataSize; vcn += count) {
        const map = this.mapClusters(s.runs, vcn, count);
        const real = map.filter((c) => c >= 0);
        const length = Math.min(count * cs, a.dataSize - vcn * cs);
        if (real.length === 0) continue;
        if (real.length === count) {
          for (const e of this.plain(s.runs, vcn, count, a.dataSize)) yield e;
          continue;
        }
        yield {
          fileOffset: vcn * cs,
          length,
          volumeOffset: real[0] * cs,
          diskLength: real.length * cs,
          encoded: 'lznt1',
        };
      }
      return;
    }
    for (const e of this.plain(s.runs, 0, Number.MAX_SAFE_INTEGER, a.dataSize)) {
      if (e.fileOffset >= a.initializedSize) e.unwritten = true;
      yield e;
    }
  }

  private *plain(runs: Run[], vcn: number, count: number, size: number): Generator<FileExtent> {
    const cs = this.ctx.boot.clusterSize;
    for (const r of runs) {
      const from = Math.max(r.vcn, vcn);
      const to = Math.min(r.vcn + r.length, vcn + count);
      if (from >= to || r.lcn < 0 || from * cs >= size) continue;
      yield {
        fileOffset: from * cs,
        length: Math.min(to * cs, size) - from * cs,
        volumeOffset: (r.lcn + from - r.vcn) * cs,
      };
    }
  }

  /** In-use clusters from $Bitmap (MFT record 6). */
  async allocation(): Promise<ByteRange[]> {
    const n = await this.node(6);
    const s = this.stream(n.attrs, ATTR.DATA, '', '$Bitmap');
    if (!s) throw this.ctx.error('CORRUPT', 'no $DATA in $Bitmap', 'MFT record 6');
    const { clusters, clusterSize } = this.ctx.boot;
    const bm = await this.readStream(s, 0, Math.min(s.attr.dataSize, Math.ceil(clusters / 8)), '$Bitmap');
    const out: ByteRange[] = [];
    let start = -1;
    const limit = Math.min(clusters, bm.length * 8);
    for (let c = 0; c <= limit; c++) {
      const used = c < limit && (bm[c >> 3] & (1 << (c & 7))) !== 0;
      if (used && start < 0) start = c;
      else if (!used && start >= 0) {
        out.push({ offset: start * clusterSize, length: (c - start) * clusterSize });
        start = -1;
      }
    }
    return out;
  }

  /**
   * The boot sector; $MFT (as records), $MFTMirr, $LogFile and $Bitmap; then, from one pass
   * over the MFT, every index allocation (INDX blocks) by the record that owns it — a
   * directory's $I30 as `directory` (with its MFT record, so a block map names the folder),
   * the view indexes ($Secure:$SII/$SDH, $Extend's $ObjId:$O, $Quota:$O/$Q, $Reparse:$R) as
   * `index` — and the other system files' streams ($Secure:$SDS, $UpCase, $AttrDef,
   * $Extend's files, records 0-23) as `reserved`.
   */
  async *metadataRegions(): AsyncIterable<OwnedRange> {
    const cs = this.ctx.boot.clusterSize;
    yield { offset: 0, length: Math.max(cs, 8192), kind: 'boot-sector', detail: '$Boot' }; // $Boot: 8 KiB
    // the backup boot sector: the volume's last sector, just past the sectors the boot sector counts
    const { totalBytes, bytesPerSector } = this.ctx.boot;
    if (totalBytes + bytesPerSector <= this.ctx.volume.size)
      yield { offset: totalBytes, length: bytesPerSector, kind: 'boot-sector', detail: 'backup boot sector' };
    const sys: Array<[number, string, string]> = [
      [0, 'inode-table', '$MFT'],
      [1, 'reserved', '$MFTMirr'],
      [2, 'journal', '$LogFile'],
      [6, 'bitmap', '$Bitmap'],
    ];
    const runsOf = (s: Stream | undefined) => (s && !s.attr.resident ? s.runs.filter((r) => r.lcn >= 0) : []);
    for (const [rec, kind, detail] of sys) {
      const n = await this.node(rec);
      for (const r of runsOf(this.stream(n.attrs, ATTR.DATA, '', detail))) {
        const o: OwnedRange = { offset: r.lcn * cs, length: r.length * cs, kind, detail, ino: rec };
        if (rec === 0)
          o.inodes = { first: Math.floor((r.vcn * cs) / this.ctx.boot.recordSize), size: this.ctx.boot.recordSize };
        yield o;
      }
    }
    const extend = new Set<number>([11]);
    for (let n = 0; n < this.mftRecords; n++) {
      let rec: MftRecord;
      try {
        rec = await this.readRecord(n);
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        this.ctx.warn(`metadata regions: ${e.message}`);
        continue;
      }
      if (!(rec.flags & 1) || rec.baseRecord !== 0) continue;
      const names = rec.attributes
        .filter((a) => a.type === ATTR.FILE_NAME && a.value)
        .map((a) => parseFileName(a.value!, this.ctx.name, `MFT record ${n}`));
      const underExtend = names.some((f) => extend.has(f.parent) && f.parent !== n);
      const system = n < FIRST_USER_RECORD || underExtend;
      if (underExtend && rec.flags & 2) extend.add(n); // folders under $Extend ($RmMetadata ...) hold system files too
      const wanted = (a: Attribute) =>
        a.type === ATTR.ATTRIBUTE_LIST || (!a.resident && (a.type !== ATTR.DATA || system || a.name !== ''));
      if (!rec.attributes.some(wanted)) continue;
      let node: Node;
      try {
        node = await this.node(n);
      } catch (e) {
        if (!(e instanceof StrataError)) throw e;
        this.ctx.warn(`metadata regions: ${e.message}`);
        continue;
      }
      const fileName = names.find((f) => f.namespace !== NAMESPACE.DOS)?.name ?? `MFT record ${n}`;
      const seen = new Set<string>();
      const list = rec.attributes.filter((a) => a.type === ATTR.ATTRIBUTE_LIST);
      for (const a of [...list, ...node.attrs]) {
        const key = `${a.type}:${a.name}`;
        if (seen.has(key) || a.resident) continue;
        seen.add(key);
        let kind: string;
        let detail: string;
        if (a.type === ATTR.INDEX_ALLOCATION) {
          kind = a.name === '$I30' ? 'directory' : 'index';
          detail = a.name === '$I30' ? `$I30 index of ${fileName}` : `${fileName}:${a.name}`;
        } else if (a.type === ATTR.BITMAP) {
          kind = a.name === '$I30' ? 'directory' : 'bitmap';
          detail = `${fileName}:${a.name || '$BITMAP'}`;
        } else if (a.type === ATTR.DATA && !system) {
          if (a.name === '') continue; // the file's own data: its extents
          kind = 'xattr'; // an alternate data stream: read as the xattr ntfs.stream.NAME
          detail = `${fileName}:${a.name}`;
        } else if (a.type === ATTR.DATA) {
          if (a.name === '' && (n <= 2 || n === 6 || n === 7)) continue; // above; $Boot is the boot sector
          kind = 'reserved';
          detail = a.name ? `${fileName}:${a.name}` : fileName;
        } else {
          // $ATTRIBUTE_LIST, $SECURITY_DESCRIPTOR (mkntfs makes the root's non-resident), $REPARSE_POINT, $EA ...
          kind = 'reserved';
          detail = `${fileName}:${ATTR_NAMES[a.type] ?? `attribute 0x${a.type.toString(16)}`}`;
        }
        const s =
          a.type === ATTR.ATTRIBUTE_LIST
            ? { attr: a, runs: a.runs }
            : this.stream(node.attrs, a.type, a.name, `MFT record ${n}`);
        for (const r of runsOf(s)) yield { offset: r.lcn * cs, length: r.length * cs, kind, detail, ino: n };
      }
    }
  }
}

export const ntfsDriver: FsDriver = {
  kind: 'ntfs',
  probe: (head) => looksLikeNtfs(head),
  open: (volume) => NtfsFileSystem.open(volume),
};
