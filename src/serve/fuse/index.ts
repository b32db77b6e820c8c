import { openAddress } from '../../library/address.js';
import { openStoredFiles } from '../../library/stored-listing.js';
import { classifyTarget } from '../../library/target.js';
import { FsTree } from './fs-tree.js';
import { ManifestTree } from './manifest-tree.js';
import type { OpenMountOptions } from './mount-options.js';
import type { MountTree } from './tree.js';

export { FsTree } from './fs-tree.js';
export { type BlobGetter, type ManifestSource, ManifestTree } from './manifest-tree.js';
export type { OpenMountOptions } from './mount-options.js';
export { isWritable, OverlayTree, type WritableTree } from './overlay.js';
export {
  fileEntriesFromBlobs,
  filesFromBlobs,
  type LocalChunkCache,
  openRemoteMountTree,
  type RemoteBlobStats,
  RemoteBlobs,
} from './remote-tree.js';
export { type FuseMountOptions, FuseSession, type ReaderTree } from './session.js';
export type { MountChild, MountNode, MountTree } from './tree.js';
export { changeSetDigest, checkUpperState, type UpperState, upperToChangeSet } from './upper.js';

/**
 * The tree a mount serves for TARGET: a library version straight from its file manifest
 * (`--part` picks the volume when it has several), else the file system an image file's
 * address names, read by Strata's own reader. Warnings of opening go to `warnings`.
 */
export async function openMountTree(
  arg: string,
  opts: OpenMountOptions = {},
): Promise<{
  tree: MountTree;
  warnings: string[];
  kind: 'version' | 'image';
  /** A version's library folder and NAME@N. */
  version?: { library: string; ref: string };
}> {
  const target = classifyTarget(arg, opts.target);
  if (target.kind === 'ref') {
    // the file manifest streamed into the mount's index (never all of it in memory)
    const sf = await openStoredFiles(target, opts.address?.part ?? opts.address?.lv);
    try {
      const { lib, digest, head } = sf;
      const tree = await ManifestTree.open(
        lib.store,
        { fileChunkSize: head.fileChunkSize, entries: () => lib.fileEntries(digest, head) },
        sf.name,
        () => sf.close(),
      );
      return { tree, warnings: [], kind: 'version', version: { library: target.library, ref: sf.name } };
    } catch (e) {
      await sf.close();
      throw e;
    }
  }
  const at = await openAddress(arg, opts.address, opts.open, opts.target);
  return { tree: new FsTree(at.fs, at.name, () => at.close()), warnings: at.warnings, kind: 'image' };
}
