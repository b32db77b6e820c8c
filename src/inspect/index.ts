/** The inspect layer's API: OS facts from a disk, and comparisons of trees, packages and blocks. */
export { type BlockDiff, type BlockDigests, diffBlocks, volumeBlockDigests } from './block-diff.js';
export { comparePaths, type FileRecord, type FileTree, fileSystemTree } from './file-manifest.js';
export { Hive, type HiveKey, type HiveValue, valueNumber, valueText } from './hive.js';
export { type DiskInspection, inspectImage, inspectVolumes } from './inspect.js';
export { diffPackages, type PackageChange, type PackageDiff } from './package-diff.js';
export { type ContentChange, type DiffItem, diffTrees, type MetadataChange, type TreeDiff } from './tree-diff.js';
export type * from './types.js';
export { compareApk, compareDpkg, compareRpm, compareVersions, fullVersion, type PackageFormat } from './version.js';
