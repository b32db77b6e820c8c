/** The deploy layer's public surface: what the CLI and the layers above use. */
export { CACHE_DEFAULT_BYTES, ChunkCache } from './chunk-cache.js';
export { type ChunkGetter, ManifestSource } from './chunk-source.js';
export { type DeployEvent, Deployer, type DeployOptions, type DeploySource } from './deployer.js';
export { blockSignatures, differingBlocks } from './diff.js';
export { type DeployHttpOptions, DeployHttpServer, parseByteRange, parseHostPort } from './http.js';
export {
  type BootProfile,
  checkProfile,
  PROFILE_KIND,
  type ProfileEntry,
  type ProfilePlan,
  ProfileRecorder,
  type ProfileSummary,
  planProfile,
  RangeSet,
  summariseProfile,
} from './profile.js';
export {
  findProfile,
  loadProfile,
  openTraceFile,
  profileFor,
  profilePlan,
  readProfileFile,
  recordProfile,
  saveProfile,
  sourceBlockMap,
  versionBlockMap,
} from './profile-store.js';
export {
  appendDeployRequest,
  cacheRequestLog,
  type DeployRequest,
  REQUEST_LOG_NAME,
  type VersionRef,
} from './request-log.js';
export {
  type DeploySourceOptions,
  httpLibraryDeploySource,
  imageDeploySource,
  libraryDeploySource,
  openDeploySource,
  remoteDeploySource,
} from './source.js';
export { type CachedDeploySource, cachedDeploySource, type DeploySourceCacheOptions } from './source-cache.js';
export { type DeployHeader, loadState, STATE_SUFFIX } from './state.js';
