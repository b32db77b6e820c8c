/**
 * The analytics layer: what traces and request logs say about caching and pre-loading.
 * @module
 */

export {
  type BenchRunOptions,
  type BenchRunResult,
  type FlowopStats,
  imageSetChoice,
  runWorkload,
} from './bench-run.js';
export {
  CACHE_POLICIES,
  type CachePolicy,
  type CacheSimOptions,
  type CacheSimResult,
  simulateCache,
} from './cache-sim.js';
export { GENERATE_DEFAULTS, type GenerateOptions, generateLog, generateRequests, Rng, Zipf } from './generate.js';
export { dedupFromLibrary, type SimilarityReport, similarity } from './library-reports.js';
export { dedupSvg, lifespanSvg, orgsSvg, popularitySvg, similaritySvg, workingSetSvg } from './plots.js';
export {
  DEFAULT_FACILITY,
  type DedupReport,
  dedupFromLog,
  type FacilityRule,
  fitTail,
  isFacility,
  type LifespanReport,
  lifespan,
  orgs,
  type PopularityReport,
  popularity,
  type TailFit,
  type WorkingSetReport,
  workingSet,
} from './reports.js';
export {
  applyFilter,
  exportVersion,
  formatJsonl,
  type ImageRequest,
  type LogFilter,
  parseRequestLog,
  parseTime,
  readCatalogLog,
  readRequestLog,
  type TraceOptions,
} from './request-log.js';
export { openRequestLog, RequestRuns } from './request-runs.js';
export {
  type PreloadPlanEntry,
  type PreloadPlanOptions,
  planPreload,
  preloadChoice,
  SIM_POLICIES,
  type SimPolicy,
  type SimulateOptions,
  type SimulateResult,
  selectPreload,
  simulate,
} from './simulate.js';
export {
  FLOWOPS,
  type Flowop,
  type FlowopKind,
  type ImageSetDef,
  type ProcessDef,
  parseWml,
  type ThreadDef,
  type Workload,
} from './wml.js';
