import { openAddress } from '../../library/address.js';
import { layoutFiles } from '../../library/library-verbs.js';
import { classifyTarget, openTargetLibrary, resolveTargetVersion } from '../../library/target.js';
import { FsTree } from './fs-tree.js';
import { ManifestTree } from './manifest-tree.js';
import type { OpenMountOptions } from './mount-options.js';
import type { MountTree } from './tree.js';

export { FsTree } from './fs-tree.js';
export { type BlobGetter, ManifestTree } from './manifest-tree.js';
export type { OpenMountOptions } from './mount-options.js';
export { isWritable, OverlayTree, type WritableTree } from './overlay.js';
export {
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
    const lib = await openTargetLibrary(target);
    try {
      const v = await resolveTargetVersion(lib, target);
      const files = await layoutFiles(lib, v, await lib.layoutHead(v.manifest), opts.address?.part ?? opts.address?.lv);
      const tree = new ManifestTree(lib.store, files, `${v.image}@${v.number}`, () => lib.close());
      return {
        tree,
        warnings: [],
        kind: 'version',
        version: { library: target.library, ref: `${v.image}@${v.number}` },
      };
    } catch (e) {
      await lib.close();
      throw e;
    }
  }
  const at = await openAddress(arg, opts.address, opts.open, opts.target);
  return { tree: new FsTree(at.fs, at.name, () => at.close()), warnings: at.warnings, kind: 'image' };
}
