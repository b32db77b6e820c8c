import { DigestSet } from '../../library/digest-set.js';
import type { Library } from '../../library/library.js';
import { reachable } from '../../library/library-verbs.js';
import { memoryShare } from '../../util/memory.js';

/**
 * The blobs each version's manifest reaches (its layout, parts, chunks and file manifests),
 * as the service asks for them: which blobs a caller holds (through the versions it may
 * read), what a commit adds that no other version needs, the storage figures. A manifest is
 * content-addressed, so its set never goes stale; what bounds the cache is memory: sets
 * are kept least recently used first out, weighed by their bytes (~40 a blob), within
 * `maxBytes` (by default a quarter of the memory budget, 8 MiB to 512 MiB). A set larger
 * than the whole cache is computed for the request that asked and not kept. A miss walks
 * the manifest again (`reachable`); callers asking for the same manifest meanwhile share
 * that walk.
 */
export class ReachCache {
  private readonly map = new Map<string, DigestSet>();
  private readonly pending = new Map<string, Promise<DigestSet>>();
  private held = 0;
  /** Counters for /metrics (and the tests). */
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(
    private readonly lib: Library,
    readonly maxBytes = memoryShare(1 / 4, 8 << 20, 512 << 20),
  ) {}

  /** Bytes of the sets kept. */
  get bytes(): number {
    return this.held;
  }

  get entries(): number {
    return this.map.size;
  }

  /** The blobs `manifest` reaches (a set callers only read). */
  get(manifest: string): Promise<DigestSet> {
    const s = this.map.get(manifest);
    if (s) {
      this.hits++;
      this.map.delete(manifest);
      this.map.set(manifest, s); // most recent last
      return Promise.resolve(s);
    }
    let p = this.pending.get(manifest);
    if (!p) {
      this.misses++;
      p = this.walk(manifest).finally(() => this.pending.delete(manifest));
      this.pending.set(manifest, p);
    }
    return p;
  }

  private async walk(manifest: string): Promise<DigestSet> {
    const s = new DigestSet();
    await reachable(this.lib, manifest, s);
    s.trim();
    const n = s.byteLength;
    if (n > this.maxBytes) return s;
    for (const [k, v] of this.map) {
      if (this.held + n <= this.maxBytes) break;
      this.map.delete(k);
      this.held -= v.byteLength;
      this.evictions++;
    }
    this.map.set(manifest, s);
    this.held += n;
    return s;
  }

  metricLines(): string[] {
    return [
      '# HELP strata_reach_cache_bytes Bytes of the reachable-blob sets the service keeps.',
      '# TYPE strata_reach_cache_bytes gauge',
      `strata_reach_cache_bytes ${this.held}`,
      '# HELP strata_reach_cache_entries Manifests whose reachable-blob sets are kept.',
      '# TYPE strata_reach_cache_entries gauge',
      `strata_reach_cache_entries ${this.map.size}`,
      '# HELP strata_reach_cache_misses_total Reachable-blob sets walked from their manifest.',
      '# TYPE strata_reach_cache_misses_total counter',
      `strata_reach_cache_misses_total ${this.misses}`,
      '# HELP strata_reach_cache_evictions_total Reachable-blob sets dropped to stay within the cache.',
      '# TYPE strata_reach_cache_evictions_total counter',
      `strata_reach_cache_evictions_total ${this.evictions}`,
    ];
  }
}
