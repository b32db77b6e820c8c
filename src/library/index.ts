/**
 * Strata's public surface: the verbs a program (the CLI, a service, your code) calls, and the
 * types they take and give. The package root (`@strata-disk/cli`) is this module; the layers
 * below have their own entry points (`@strata-disk/cli/formats`, `@strata-disk/cli/fs`, ...)
 * for code that needs their parts.
 *
 * Everything here is read-only on images: images are opened, never changed; the library (a
 * store of chunks plus a catalog of versions) is the only thing written, by `checkin`, `gc`
 * and `checkout` (which writes a new image file).
 * @module
 */

// Block maps: which file, metadata structure or volume owns each byte of the disk.
export type { KindSummary, MapVolume, Owner } from '../blockmap/block-map.js';
export { BlockMap, ownerOf } from '../blockmap/block-map.js';
export { type BuildOptions, buildBlockMap, type StreamedMap } from '../blockmap/build.js';
export { loadBlockMap, saveBlockMap } from '../blockmap/codec.js';
export { classOf, KINDS } from '../blockmap/kinds.js';
export { MapFile, type MapRecords } from '../blockmap/map-file.js';
export { blockMapOfImage } from '../blockmap/of-image.js';
export type { RecordSink } from '../blockmap/resolve.js';
export { BlockMapWriter } from '../blockmap/save-stream.js';
export {
  type ResolvedAccess,
  readTraceBatches,
  type TraceAccess,
  TraceResolver,
  type TraceSummary,
  type TraceTotals,
} from '../blockmap/trace.js';
export type { FileRow } from '../blockmap/trace-files.js';
// The library: a content-addressed store of versions with a catalog.
export type { ImageRow, VersionRow } from '../catalog/catalog.js';
// Images: open any container (raw, qcow2, VHD, VHDX, VMDK, VDI; a path or an http(s) URL).
export { closeChain } from '../formats/layer.js';
export { openImage, openImageSource } from '../formats/open.js';
export type { BackingRef, DiskImage, OpenOptions } from '../formats/types.js';
// Volumes and file systems: an address (`--part N` / `--lv VG/LV`) names one file system.
export type { DirEntry, FileExtent, FileSystem, FileType, FsInfo, Inode, Timestamp } from '../fs/types.js';
export { listDirectory, resolvePath, walk } from '../fs/walk.js';
// Inspection: the operating systems on a disk, and comparisons of trees, packages and blocks.
export { type BlockDiff, type BlockDigests, diffBlocks, volumeBlockDigests } from '../inspect/block-diff.js';
export { comparePaths, type FileRecord, type FileTree, fileSystemTree } from '../inspect/file-manifest.js';
export { type DiskInspection, inspectImage, inspectVolumes } from '../inspect/inspect.js';
export { diffPackages, type PackageChange, type PackageDiff } from '../inspect/package-diff.js';
export {
  type ContentChange,
  type DiffItem,
  diffTrees,
  type MetadataChange,
  type TreeDiff,
} from '../inspect/tree-diff.js';
export type { Group, InstalledProgram, Kernel, Mountpoint, OsInspection, Package, User } from '../inspect/types.js';
export type { ByteSource, Extent, ExtentKind } from '../io/byte-source.js';
export type { StoreFinding, VerifyReport } from '../store/store.js';
// Errors: every failure on bad input is a StrataError naming the file, structure and offset.
export { type ErrorCode, type ErrorWhere, isStrataError, StrataError } from '../util/errors.js';
export {
  budgetWithinRss,
  checkMemory,
  DEFAULT_MEMORY,
  memoryBudget,
  parseMemorySize,
  setMemoryBudget,
  YOUNG_GROWS_TO,
} from '../util/memory.js';
export type { DiscoverResult } from '../volumes/discover.js';
export type { Volume } from '../volumes/types.js';
export {
  type Address,
  describe as describeVolume,
  holdsFileSystem,
  type OpenedAddress,
  type OpenedDisk,
  openAddress,
  openDisk,
} from './address.js';
export { type CheckinOptions, type CheckinResult, checkin } from './checkin.js';
export { type CheckoutOptions, type CheckoutResult, checkout, openVersionSource } from './checkout.js';
// Convert between containers (the copy machinery: ./convert/).
export { type ConvertOptions, type ConvertResult, convertImage } from './convert/convert.js';
export { type DemoResult, type DemoStep, runDemo } from './demo.js';
export { type ApplyOptions, type ApplyResult, applyChanges, describeChanges } from './edit/apply.js';
// Editing a version's files in place (issue 24): the change-set contract, its writer, rebase.
export {
  type Attrs,
  type Change,
  type ChangeSet,
  type ContentSource,
  changeFromWire,
  changeToWire,
  parseSeconds,
  type WireChange,
} from './edit/changes.js';
export { contentChunks } from './edit/content.js';
export { type LogOptions, type LogStep, versionLog } from './edit/log.js';
export {
  type ApplyChanges,
  type Conflict,
  conflictLine,
  type MergedFile,
  type PlanInput,
  parseResolutions,
  planRebase,
  type RebaseJson,
  type RebaseOptions,
  type RebasePlan,
  type RebaseResult,
  rebaseJson,
  rebaseText,
  rebaseVersion,
  type Take,
} from './edit/rebase.js';
export { parseEditScript, parseMode, parseOwner, type ScriptOptions } from './edit/script.js';
export { type ExtractOptions, type ExtractResult, extractTree } from './extract.js';
export { type ContentSummary, type ImageInfo, imageInfo, mapImage, recognised } from './image-info.js';
export { forgetInspection, type RecordedInspection, reinspect, versionInspection } from './inspection.js';
export { Library, type LibraryPlaces } from './library.js';
export {
  describeVersion,
  fileContent,
  findEntry,
  type GcResult,
  gc,
  type LibraryFinding,
  type LibraryVerifyReport,
  listEntries,
  verifyLibrary,
  versionFiles,
} from './library-verbs.js';
// What `ls` and `stat` print, as records.
export {
  imagePath,
  isoTime,
  type LsRecord,
  longLine,
  lookupPath,
  lsRecord,
  lsRecordWith,
  modeString,
  type StatExtent,
  type StatRecord,
  statRecord,
  type WalkItem,
  type WalkOptions,
  walkBatches,
  walkNameLines,
} from './listing.js';
export { libraryLocation, MARKER } from './location.js';
export type { FileEntry, FilesManifest, LayoutManifest, LayoutVolume } from './manifest.js';
export {
  ALL_MIGRATIONS,
  type MigrateProgress,
  type MigrateResult,
  migrateCatalogDb,
  migrateLibrary,
} from './migrate.js';
export { type SearchHit, type SearchQuery, search } from './search.js';
export {
  exportIndex,
  parseStaticIndex,
  refreshIndex,
  resolveStatic,
  STATIC_INDEX,
  type StaticIndex,
  type StaticVersion,
} from './static-index.js';
// A listing of a stored version, as `ls` and `cat` read it without a checkout.
export {
  entryRecord,
  findStoredEntry,
  listStored,
  listStoredStreamed,
  openStoredFiles,
  type StoredFiles,
  type StoredListOptions,
  storedFile,
  storedFileStreamed,
} from './stored-listing.js';
export { tarOfStored } from './tar-export.js';
// A command's TARGET: an image file, an http(s) URL or a library version (NAME, NAME:TAG, NAME@N, ref:NAME).
export {
  classifyTarget,
  closeTarget,
  type OpenedTarget,
  openTargetImage,
  openTargetLibrary,
  REF_PREFIX,
  type RefTarget,
  resolveTargetVersion,
  type Target,
  type TargetOptions,
  versionPassOptions,
} from './target.js';
export { blockMapOfTarget, inspectTarget, streamBlockMapOfTarget } from './target-map.js';
export { mapFileOfTarget } from './target-map-file.js';
export { diffManifests, diffStoredTree, diffVersions, type VersionDiff } from './version-diff.js';
export { VersionSource } from './version-source.js';
