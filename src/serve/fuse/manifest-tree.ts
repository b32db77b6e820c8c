import type { FileType, Timestamp } from '../../fs/types.js';
import type { FileEntry, FilesManifest } from '../../library/manifest.js';
import { StrataError } from '../../util/errors.js';
import type { StatfsInfo } from './protocol.js';
import { type MountChild, type MountNode, type MountTree, makeAttr } from './tree.js';

/** Where a version's blobs come from: a library's store, or a library service (each checked against its digest). */
export interface BlobGetter {
  get(digest: string): Promise<Uint8Array>;
}

interface EntryNode extends MountNode {
  entry: FileEntry;
}

/** `2024-01-02T03:04:05.123456789Z` (as isoTime writes it) as seconds and nanoseconds. */
export function parseIsoTime(s: string | null | undefined): Timestamp | undefined {
  if (!s) return undefined;
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/.exec(s);
  if (!m) return undefined;
  const ms = Date.parse(`${m[1]}Z`);
  if (Number.isNaN(ms)) return undefined;
  return { sec: Math.floor(ms / 1000), nsec: m[2] ? Number(m[2].padEnd(9, '0')) : 0 };
}

const FILE_TYPES = new Set(['file', 'dir', 'symlink', 'char', 'block', 'fifo', 'socket']);

/**
 * A MountTree over a library version's file manifest: the tree is the manifest's paths, a
 * file's bytes are its chunks read from the store (verified against their digests there),
 * so nothing is checked out. Hard links (entries sharing an inode number, not directories)
 * are one node. The manifest keeps no entry for the root directory: it is shown as
 * root-owned 0755 with the times of the epoch.
 */
export class ManifestTree implements MountTree {
  readonly readBlock: number;
  private readonly byKey: EntryNode[] = [];
  private readonly children = new Map<number, Array<{ name: string; node: EntryNode }>>();
  private readonly byName = new Map<number, Map<string, EntryNode>>();
  private readonly rootNode: EntryNode;

  constructor(
    private readonly blobs: BlobGetter,
    private readonly files: FilesManifest,
    readonly name: string,
    private readonly onClose: () => Promise<void> = async () => {},
  ) {
    const C = files.fileChunkSize;
    if (!Number.isSafeInteger(C) || C <= 0 || C > 64 << 20) {
      throw new StrataError('CORRUPT', `file chunk size ${C} is out of range`, {
        file: name,
        structure: 'file manifest',
      });
    }
    this.readBlock = C;
    const rootEntry: FileEntry = files.entries.find((e) => e.path === '/') ?? {
      path: '/',
      type: 'dir',
      mode: 0o755,
      uid: 0,
      gid: 0,
      size: 0,
      nlink: 2,
      ino: 0,
      mtime: null,
    };
    this.rootNode = this.add(rootEntry);
    const byPath = new Map<string, EntryNode>([['/', this.rootNode]]);
    const links = new Map<number, EntryNode>();
    // parents come before children in a pre-order walk; sort by depth so any order works
    const sorted = files.entries
      .filter((e) => e.path !== '/')
      .map((e) => ({ e, depth: e.path.split('/').length }))
      .sort((a, b) => a.depth - b.depth);
    for (const { e } of sorted) {
      const cut = e.path.lastIndexOf('/');
      const parent = byPath.get(cut === 0 ? '/' : e.path.slice(0, cut));
      const leaf = e.path.slice(cut + 1);
      if (parent?.type !== 'dir' || leaf === '' || leaf === '.' || leaf === '..' || !e.path.startsWith('/')) continue;
      if (this.byName.get(parent.key)?.has(leaf)) continue;
      let node = e.type !== 'dir' && e.nlink > 1 ? links.get(e.ino) : undefined;
      if (!node || node.entry.type !== e.type) {
        node = this.add(e);
        if (e.type !== 'dir' && e.nlink > 1) links.set(e.ino, node);
      }
      if (e.type === 'dir') byPath.set(e.path, node);
      let list = this.children.get(parent.key);
      if (!list) {
        list = [];
        this.children.set(parent.key, list);
        this.byName.set(parent.key, new Map());
      }
      list.push({ name: leaf, node });
      this.byName.get(parent.key)?.set(leaf, node);
    }
  }

  private add(e: FileEntry): EntryNode {
    const type = (FILE_TYPES.has(e.type) ? e.type : 'unknown') as FileType;
    const node: EntryNode = {
      key: this.byKey.length,
      type,
      entry: e,
      attr: makeAttr({
        ino: e.ino,
        type,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        nlink: e.nlink,
        atime: parseIsoTime(e.atime),
        mtime: parseIsoTime(e.mtime),
        ctime: parseIsoTime(e.ctime),
        crtime: parseIsoTime(e.crtime),
        rdev: e.rdev,
      }),
    };
    this.byKey.push(node);
    return node;
  }

  async root(): Promise<MountNode> {
    return this.rootNode;
  }

  async lookup(dir: MountNode, name: string): Promise<MountNode | undefined> {
    return this.byName.get(dir.key)?.get(name);
  }

  async list(dir: MountNode): Promise<MountChild[]> {
    return (this.children.get(dir.key) ?? []).map((c) => ({ name: c.name, key: c.node.key, type: c.node.type }));
  }

  async nodes(_dir: MountNode, children: readonly MountChild[]): Promise<MountNode[]> {
    return children.map((c) => this.byKey[c.key]);
  }

  async read(node: MountNode, offset: number, length: number): Promise<Uint8Array> {
    const e = (node as EntryNode).entry;
    const end = Math.min(e.size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    const C = this.files.fileChunkSize;
    const out = new Uint8Array(end - offset);
    for (let i = Math.floor(offset / C); i * C < end; i++) {
      const d = e.chunks?.[i];
      const want = Math.min(C, e.size - i * C);
      if (d === undefined) {
        throw new StrataError('CORRUPT', `file manifest lacks chunk ${i} of ${e.path}`, {
          file: this.name,
          structure: 'file manifest',
          offset: i * C,
        });
      }
      if (d === null) continue; // zeros
      const b = await this.blobs.get(d);
      if (b.length !== want) {
        throw new StrataError('CORRUPT', `chunk ${i} of ${e.path} has ${b.length} bytes, not ${want}`, {
          file: this.name,
          structure: 'file manifest',
          offset: i * C,
        });
      }
      const from = Math.max(offset, i * C);
      const to = Math.min(end, (i + 1) * C);
      out.set(b.subarray(from - i * C, to - i * C), from - offset);
    }
    return out;
  }

  async readlink(node: MountNode): Promise<Uint8Array> {
    return Buffer.from((node as EntryNode).entry.target ?? '', 'utf8');
  }

  async xattrs(node: MountNode): Promise<Map<string, Uint8Array>> {
    const x = (node as EntryNode).entry.xattrs ?? {};
    return new Map(Object.entries(x).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
  }

  async statfs(): Promise<StatfsInfo> {
    let blocks = 0;
    for (const n of this.byKey) blocks += Math.ceil(n.attr.size / 4096);
    return {
      blocks,
      bfree: 0,
      bavail: 0,
      files: this.byKey.length,
      ffree: 0,
      bsize: 4096,
      namelen: 255,
      frsize: 4096,
    };
  }

  async close(): Promise<void> {
    await this.onClose();
  }
}
