/**
 * The analytics layer: what traces and request logs say about caching and pre-loading.
 * @module
 */
export {
  CACHE_POLICIES,
  type CachePolicy,
  type CacheSimOptions,
  type CacheSimResult,
  simulateCache,
} from './cache-sim.js';
