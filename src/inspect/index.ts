/** The inspect layer's API: OS facts from a disk, and comparisons of trees, packages and blocks. */
export { type BlockDiff, type BlockDigests, diffBlocks, volumeBlockDigests } from './block-diff.js';
export { type FileRecord, type FileTree, fileSystemTree } from './file-manifest.js';
export { Hive, valueNumber, valueText } from './hive.js';
export { type DiskInspection, inspectImage, inspectVolumes } from './inspect.js';
export { diffPackages, type PackageDiff } from './package-diff.js';
export { diffTrees, type TreeDiff } from './tree-diff.js';
export type * from './types.js';
export { compareApk, compareDpkg, compareRpm, compareVersions, fullVersion, type PackageFormat } from './version.js';
