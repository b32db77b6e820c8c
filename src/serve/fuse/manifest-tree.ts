import type { FileEntry, FilesManifest } from '../../library/manifest.js';
import { StrataError } from '../../util/errors.js';
import type { PlusReply, PlusRequest } from './ext-plus.js';
import { ManifestIndex, TYPE_CODES } from './manifest-index.js';
import { direntSize, ENTRY_OUT, type StatfsInfo, TYPE_BITS, words, writeDirent, writeEntry } from './protocol.js';
import type { MountChild, MountNode, MountTree } from './tree.js';

export { parseIsoTime } from './manifest-index.js';

/** Where a version's blobs come from: a library's store, or a library service (each checked against its digest). */
export interface BlobGetter {
  get(digest: string): Promise<Uint8Array>;
}

/** A file manifest to serve: its chunk size, and its entries (in walk order, as check-in writes them), read as often as asked. */
export interface ManifestSource {
  fileChunkSize: number;
  entries(): AsyncIterable<FileEntry> | Iterable<FileEntry>;
}

interface IndexNode extends MountNode {
  heap: number;
  kidsAt: number;
  kids: number;
}

const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

/**
 * A MountTree over a library version's file manifest: the tree is the manifest's paths, a
 * file's bytes are its chunks read from the store (verified against their digests there),
 * so nothing is checked out. Hard links (entries sharing an inode number, not directories)
 * are one node. The manifest keeps no entry for the root directory: it is shown as
 * root-owned 0755 with the times of the epoch.
 *
 * The manifest is read once, streamed, into an index on disk (manifest-index.ts): nothing per
 * entry stays in memory, whatever the number of files. A node's key is its slot in the index,
 * so the session can give out node ids without keeping a node for each (nodeByKey), and a
 * READDIRPLUS at offset 0 is built here in one go (plusReplyNow) as the session would.
 */
export class ManifestTree implements MountTree {
  private constructor(
    private readonly blobs: BlobGetter,
    private readonly index: ManifestIndex,
    readonly name: string,
    readonly readBlock: number,
    private readonly onClose: () => Promise<void>,
  ) {}

  /**
   * The tree of `files` (a whole manifest in memory, or a source that streams one) read into
   * an index on disk; `onClose` runs when the tree is closed.
   */
  static async open(
    blobs: BlobGetter,
    files: FilesManifest | ManifestSource,
    name: string,
    onClose: () => Promise<void> = async () => {},
  ): Promise<ManifestTree> {
    const C = files.fileChunkSize;
    if (!Number.isSafeInteger(C) || C <= 0 || C > 64 << 20) {
      throw new StrataError('CORRUPT', `file chunk size ${C} is out of range`, {
        file: name,
        structure: 'file manifest',
      });
    }
    const source = 'kind' in files ? () => files.entries : () => (files as ManifestSource).entries();
    const index = await ManifestIndex.build(source, `${name} file manifest`);
    return new ManifestTree(blobs, index, name, C, onClose);
  }

  private node(key: number): IndexNode {
    const r = this.index.record(key);
    if (!r) throw new StrataError('CORRUPT', `no node ${key} in the mount index`, { file: this.name });
    return { key, type: r.type, attr: r.attr, heap: r.heap, kidsAt: r.kidsAt, kids: r.kids };
  }

  async root(): Promise<MountNode> {
    return this.node(0);
  }

  async nodeByKey(key: number): Promise<MountNode> {
    return this.node(key);
  }

  async lookup(dir: MountNode, name: string): Promise<MountNode | undefined> {
    const d = dir as IndexNode;
    if (d.type !== 'dir' || d.kids === 0) return undefined;
    const slot = this.index.find(d.kidsAt, d.kids, name);
    return slot === undefined ? undefined : this.node(this.index.keyOf(slot));
  }

  async list(dir: MountNode): Promise<MountChild[]> {
    const d = dir as IndexNode;
    const out: MountChild[] = [];
    if (d.type !== 'dir') return out;
    for (let i = 0; i < d.kids; i++) {
      const c = this.index.child(d.kidsAt, d.kids, i);
      const name = c.name.toString('utf8');
      out.push({ name, key: this.index.keyOf(c.slot), type: TYPE_CODES[c.type] ?? 'unknown' });
    }
    return out;
  }

  async nodes(_dir: MountNode, children: readonly MountChild[]): Promise<MountNode[]> {
    return children.map((c) => this.node(c.key));
  }

  /**
   * READDIRPLUS of `dir` at offset 0, the bytes the session's own listing writes: '.' and '..'
   * without a node, then each child that fits with its node id (its key plus req.idBase) and
   * attributes; its directories are listed in `dirs` for the session to hand out.
   */
  readonly plusReplyNow = (dir: MountNode, req: PlusRequest): PlusReply | undefined => {
    if (dir.type !== 'dir') return undefined;
    try {
      // the session may know the directory by its key only (a stub it handed out)
      const d = (dir as IndexNode).heap === undefined ? this.node(dir.key) : (dir as IndexNode);
      return this.plus(d, req);
    } catch {
      return undefined; // the session's own listing meets the error and says it
    }
  };

  private plus(d: IndexNode, req: PlusRequest): PlusReply {
    const total = 2 + d.kids;
    const out = Buffer.allocUnsafe(req.size);
    const u = words(out);
    const dirs: PlusReply['dirs'] = [];
    let at = 0;
    let written = 0;
    const dt = TYPE_BITS.dir.dt;
    for (const [name, ino] of [
      [DOT, req.self],
      [DOTDOT, req.parent],
    ] as const) {
      if (at + direntSize(name.length, true) > req.size) return { out: out.subarray(0, at), total, written, dirs };
      writeEntry(u, at, 0, undefined, req.valid);
      at = writeDirent(out, u, at + ENTRY_OUT, ino, ++written, dt, name);
    }
    for (let i = 0; i < d.kids; i++) {
      const c = this.index.child(d.kidsAt, d.kids, i);
      if (at + direntSize(c.name.length, true) > req.size) break;
      const name = Buffer.from(c.name);
      const type = TYPE_CODES[c.type] ?? 'unknown';
      const key = this.index.keyOf(c.slot);
      const node = this.index.record(key);
      if (!node) throw new StrataError('CORRUPT', `no node ${key} in the mount index`, { file: this.name });
      if (key === req.root) writeEntry(u, at, 0, undefined, req.valid);
      else writeEntry(u, at, key + req.idBase, node.attr, req.valid);
      if (type === 'dir' && key !== req.root) dirs.push({ at, ino: key });
      at = writeDirent(
        out,
        u,
        at + ENTRY_OUT,
        node.attr.ino,
        ++written,
        (TYPE_BITS[type] ?? TYPE_BITS.unknown).dt,
        name,
      );
    }
    return { out: Buffer.from(out.subarray(0, at)), total, written, dirs };
  }

  async read(node: MountNode, offset: number, length: number): Promise<Uint8Array> {
    const n = node as IndexNode;
    const size = n.attr.size;
    const end = Math.min(size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    const C = this.readBlock;
    const h = this.index.heapHead(n.heap);
    const out = new Uint8Array(end - offset);
    for (let i = Math.floor(offset / C); i * C < end; i++) {
      const d = i < h.chunks ? this.index.chunk(h, i) : undefined;
      const want = Math.min(C, size - i * C);
      if (d === undefined || d === false) {
        const what = d === undefined ? `lacks chunk ${i} of` : `names no digest for chunk ${i} of`;
        throw new StrataError('CORRUPT', `file manifest ${what} ${this.index.pathOf(n.key)}`, {
          file: this.name,
          structure: 'file manifest',
          offset: i * C,
        });
      }
      if (d === null) continue; // zeros
      const b = await this.blobs.get(d);
      if (b.length !== want) {
        throw new StrataError(
          'CORRUPT',
          `chunk ${i} of ${this.index.pathOf(n.key)} has ${b.length} bytes, not ${want}`,
          {
            file: this.name,
            structure: 'file manifest',
            offset: i * C,
          },
        );
      }
      const from = Math.max(offset, i * C);
      const to = Math.min(end, (i + 1) * C);
      out.set(b.subarray(from - i * C, to - i * C), from - offset);
    }
    return out;
  }

  async readlink(node: MountNode): Promise<Uint8Array> {
    return this.index.target(this.index.heapHead((node as IndexNode).heap));
  }

  async xattrs(node: MountNode): Promise<Map<string, Uint8Array>> {
    const json = this.index.xattrs(this.index.heapHead((node as IndexNode).heap));
    const x = (json ? JSON.parse(json) : {}) as Record<string, string>;
    return new Map(Object.entries(x).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
  }

  async statfs(): Promise<StatfsInfo> {
    const f = this.index.facts;
    return {
      blocks: f.blocks,
      bfree: 0,
      bavail: 0,
      files: f.nodes,
      ffree: 0,
      bsize: 4096,
      namelen: 255,
      frsize: 4096,
    };
  }

  async close(): Promise<void> {
    this.index.close();
    await this.onClose();
  }
}
