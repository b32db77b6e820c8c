import type { DirEntry, FileSystem, Inode } from '../../fs/types.js';
import { listDirectory, loadInodes } from '../../fs/walk.js';
import { safeName } from '../../library/listing.js';
import { ExtPlus, type PlusReply, type PlusRequest } from './ext-plus.js';
import type { StatfsInfo } from './protocol.js';
import { type MountChild, type MountNode, type MountTree, makeAttr } from './tree.js';

/** A node of an image's file system: the reader's inode rides along. */
interface FsNode extends MountNode {
  inode: Inode;
}

/**
 * A MountTree over a FileSystem reader (an image file's partition or logical volume). Keys
 * are the file system's inode numbers, so hard links are one node and `stat` shows the
 * image's own inode numbers. Listings of recently looked-up directories are kept (bounded)
 * so a lookup of each name of a big directory does not list it again.
 */
export class FsTree implements MountTree {
  readonly readBlock = 128 << 10;
  private readonly listings = new Map<number, Map<string, DirEntry>>();
  private static readonly LISTINGS = 64;
  /** Native READDIRPLUS replies (ext, with the addon built): undefined otherwise. */
  readonly plus?: ExtPlus;

  constructor(
    private readonly fs: FileSystem,
    readonly name: string,
    private readonly onClose: () => Promise<void> = async () => {},
    /** Build READDIRPLUS replies natively where the reader and the addon allow (default true). */
    native = true,
  ) {
    if (native) this.plus = ExtPlus.for(fs);
    const plus = this.plus;
    if (plus) this.plusReply = (dir, req) => plus.reply((dir as FsNode).inode, req);
    if (plus?.now) this.plusReplyNow = (dir, req) => plus.replyNow(dir.key, req);
  }

  /** Native READDIRPLUS replies in one call, by the directory's key (the image is a local file). */
  readonly plusReplyNow?: (dir: MountNode, req: PlusRequest) => PlusReply | undefined;

  /** Native READDIRPLUS replies: only where the builder is (the session serves the rest itself). */
  readonly plusReply?: (dir: MountNode, req: PlusRequest) => Promise<PlusReply | undefined>;

  private node(inode: Inode): FsNode {
    return {
      key: inode.ino,
      type: inode.type,
      inode,
      attr: makeAttr(inode, this.fs.blockSize),
    };
  }

  async root(): Promise<MountNode> {
    return this.node(await this.fs.root());
  }

  private async listing(dir: FsNode): Promise<Map<string, DirEntry>> {
    const have = this.listings.get(dir.key);
    if (have) {
      this.listings.delete(dir.key);
      this.listings.set(dir.key, have);
      return have;
    }
    const m = new Map<string, DirEntry>();
    for (const e of await listDirectory(this.fs, dir.inode)) if (safeName(e.name)) m.set(e.name, e);
    this.listings.set(dir.key, m);
    if (this.listings.size > FsTree.LISTINGS) this.listings.delete(this.listings.keys().next().value as number);
    return m;
  }

  async nodeByKey(key: number): Promise<MountNode> {
    return this.node(await this.fs.inode(key));
  }

  async lookup(dir: MountNode, name: string): Promise<MountNode | undefined> {
    const d = dir as FsNode;
    if (!safeName(name)) return undefined;
    const e = this.fs.lookupChild ? await this.fs.lookupChild(d.inode, name) : (await this.listing(d)).get(name);
    if (!e) return undefined;
    return this.node(await this.fs.inode(e.ino));
  }

  async list(dir: MountNode): Promise<MountChild[]> {
    const m = await this.listing(dir as FsNode);
    return [...m.values()].map((e) => ({ name: e.name, key: e.ino, type: e.type }));
  }

  async nodes(_dir: MountNode, children: readonly MountChild[]): Promise<MountNode[]> {
    const inodes = await loadInodes(
      this.fs,
      children.map((c) => c.key),
      32,
    );
    return inodes.map((i) => this.node(i));
  }

  async read(node: MountNode, offset: number, length: number): Promise<Uint8Array> {
    const ino = (node as FsNode).inode;
    const n = Math.max(0, Math.min(length, ino.size - offset));
    if (n === 0) return new Uint8Array(0);
    return this.fs.read(ino, offset, n);
  }

  async readlink(node: MountNode): Promise<Uint8Array> {
    return Buffer.from(await this.fs.readlink((node as FsNode).inode), 'utf8');
  }

  xattrs(node: MountNode): Promise<Map<string, Uint8Array>> {
    return this.fs.xattrs((node as FsNode).inode);
  }

  async statfs(): Promise<StatfsInfo> {
    const i = await this.fs.info();
    const bs = i.blockSize || 4096;
    return {
      blocks: i.totalBytes / bs,
      bfree: i.freeBytes / bs,
      bavail: i.freeBytes / bs,
      files: i.totalInodes ?? 0,
      ffree: i.freeInodes ?? 0,
      bsize: bs,
      namelen: 255,
      frsize: bs,
    };
  }

  async close(): Promise<void> {
    this.listings.clear();
    await this.onClose();
  }
}
